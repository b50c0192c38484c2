/**
 * The storedAtMs of the newest instance of each recent patient, remembered between C-STOREs: every store
 * asks for its patient's (the hybrid logical clock of IncomingStore.storedAtMs), and the catalog read behind
 * it (an iterator opened, read and closed: three native calls) cost its main thread ~0.2 ms per instance in
 * a one-site ingest, where a series brings the same patient hundreds of times.
 *
 * Never lower than the catalog: a remembered date only rises (commits raise it), a read's answer is kept
 * only when no commit's catalog write landed during the read (it may have missed it), and everything is forgotten when
 * the catalog is reloaded (an open or a reopening, whose recovery may add entries). A date may be higher than
 * the catalog's once an instance is deleted, which only dates the next store later: still after everything
 * it could have seen.
 */

/** What `read` answers for a patient with no instance held here. */
const NONE = Number.NEGATIVE_INFINITY;

export class NewestOfPatientCache {
  private readonly newestMs = new Map<string, number>();
  /** Counts commits and reloads: a read that saw it change may predate one, and is not kept. */
  private generation = 0;

  /** @param patientsMax how many patients are remembered; the least recently asked for is forgotten first. */
  constructor(private readonly patientsMax = 4096) {}

  /** The newest storedAtMs of `patientId`, from memory or from `readCatalog` (whose answer is then kept). */
  async newestStoredAtMs(patientId: string, readCatalog: () => Promise<number | undefined>): Promise<number | undefined> {
    const known = this.newestMs.get(patientId);
    if (known !== undefined) {
      // Asked for again: the most recent in the eviction order.
      this.newestMs.delete(patientId);
      this.newestMs.set(patientId, known);
      return known === NONE ? undefined : known;
    }
    const generation = this.generation;
    const read = await readCatalog();
    if (generation === this.generation && !this.newestMs.has(patientId)) {
      this.newestMs.set(patientId, read ?? NONE);
      if (this.newestMs.size > this.patientsMax) this.newestMs.delete(this.newestMs.keys().next().value!);
    }
    return read;
  }

  /**
   * An instance of `patientId` dated `storedAtMs` is in the catalog: called once its catalog write has landed,
   * so that a read begun before, which may have missed it, is not kept (see `generation`).
   */
  committed(patientId: string, storedAtMs: number): void {
    this.generation++;
    const known = this.newestMs.get(patientId);
    // A patient not remembered stays so: the catalog may hold a later date than this one (a replica's).
    if (known !== undefined && storedAtMs > known) this.newestMs.set(patientId, storedAtMs);
  }

  /** The catalog was reloaded (opened, or reopened with a recovery): nothing remembered holds any more. */
  forget(): void {
    this.generation++;
    this.newestMs.clear();
  }
}
