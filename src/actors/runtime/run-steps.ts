/** Feeds inputs through a reducer in order; returns the last state and every effect in order (reducer tests). */
export function runSteps<State, Input, Effect>(
  step: (state: State, input: Input) => { state: State; effects: readonly Effect[] },
  state: State,
  inputs: readonly Input[],
): { state: State; effects: Effect[] } {
  const effects: Effect[] = [];
  for (const input of inputs) {
    const next = step(state, input);
    state = next.state;
    effects.push(...next.effects);
  }
  return { state, effects };
}
