/**
 * What a C-STORE receiver we open an association to (a C-MOVE destination) can actually read, when its
 * A-ASSOCIATE-AC promises more than that. Pure: decided from the accepted contexts and the acceptor's
 * Implementation Class UID / Version Name (PS3.7 D.3.3.2, D.3.3.3).
 */

/** The acceptor's identity, as its A-ASSOCIATE-AC names it. */
export interface AcceptorImplementation {
  classUid: string;
  versionName?: string;
}

export interface ReceiverContext {
  id: number;
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
}

/**
 * GDCM's Implementation Class UID is its registered root, then ".107.104.103.115." and its version
 * (gdcmscu 3.0.21 sends 1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.21 and "GDCM 3.0.21").
 */
const gdcmClassUidPrefix = '1.2.826.0.1.3680043.2.1143.107.104.103.115.';

export function isGdcm(implementation: AcceptorImplementation | undefined): boolean {
  if (implementation === undefined) return false;
  return implementation.classUid.startsWith(gdcmClassUidPrefix) || /^GDCM\b/.test(implementation.versionName ?? '');
}

/**
 * The accepted contexts a C-STORE may be sent on so that the receiver reads it as what it is.
 *
 * GDCM's C-STORE receiver (gdcmscu --move, and ITK-based tools on GDCM's network code, up to 3.0.x at
 * least) accepts each context in implicit VR LE when proposed, else explicit VR LE, but keeps one syntax
 * per association, that of the last context it accepted, and reads every data set in it whatever context
 * carries it (PS3.8 9.3.5 says the context decides): an explicit VR instance sent on the context it
 * accepted in explicit VR was read as implicit and gdcmscu aborted (hunt 155). For such a receiver only
 * the contexts in that last syntax are usable; every other receiver gets all of them.
 */
export function contextsReceiverReads<C extends ReceiverContext>(contexts: readonly C[], implementation: AcceptorImplementation | undefined): C[] {
  if (!isGdcm(implementation) || contexts.length === 0) return [...contexts];
  // Context IDs follow the order of our proposal, which is the order GDCM went through them in.
  const last = contexts.reduce((a, b) => (b.id > a.id ? b : a));
  return contexts.filter((c) => c.transferSyntaxUid === last.transferSyntaxUid);
}
