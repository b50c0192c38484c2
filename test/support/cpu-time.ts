/**
 * Milliseconds of CPU this process (all its threads) used since the call: a cost bound in a test holds on a
 * loaded machine, where the wall clock also counts the time other processes had the CPU.
 */
export function cpuStopwatch(): () => number {
  const start = process.cpuUsage();
  return () => {
    const used = process.cpuUsage(start);
    return (used.user + used.system) / 1000;
  };
}
