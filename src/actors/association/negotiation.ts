/**
 * Association negotiation as an acceptor (PS3.8 annex 7, PS3.7 D.3.3): which AE titles we answer,
 * which presentation contexts we accept and with which transfer syntax, and SCP/SCU role selection.
 */
import {
  DicomApplicationContext,
  PresentationContextResult,
  RejectReason,
  RejectResult,
  RejectSource,
  type AcceptedPresentationContext,
  type AssociateAcPdu,
  type AssociateRjPdu,
  type AssociateRqPdu,
  type RoleSelection,
} from '../../codec/pdu.ts';
import { TransferSyntax } from '../../codec/dicom-types.ts';
import { isAcceptableUid } from '../../codec/uid.ts';
import { StorageCommitment } from '../commitment/messages.ts';

export const SopClass = {
  Verification: '1.2.840.10008.1.1',
  PatientRootFind: '1.2.840.10008.5.1.4.1.2.1.1',
  PatientRootMove: '1.2.840.10008.5.1.4.1.2.1.2',
  PatientRootGet: '1.2.840.10008.5.1.4.1.2.1.3',
  StudyRootFind: '1.2.840.10008.5.1.4.1.2.2.1',
  StudyRootMove: '1.2.840.10008.5.1.4.1.2.2.2',
  StudyRootGet: '1.2.840.10008.5.1.4.1.2.2.3',
} as const;

export type ServiceKind = 'verification' | 'find' | 'get' | 'move' | 'storage' | 'commitment';

const queryRetrieveClasses: Record<string, { kind: ServiceKind; root: 'PATIENT' | 'STUDY' }> = {
  [SopClass.PatientRootFind]: { kind: 'find', root: 'PATIENT' },
  [SopClass.PatientRootMove]: { kind: 'move', root: 'PATIENT' },
  [SopClass.PatientRootGet]: { kind: 'get', root: 'PATIENT' },
  [SopClass.StudyRootFind]: { kind: 'find', root: 'STUDY' },
  [SopClass.StudyRootMove]: { kind: 'move', root: 'STUDY' },
  [SopClass.StudyRootGet]: { kind: 'get', root: 'STUDY' },
};

/** Storage SOP classes live under this root (PS3.4 annex B.5), including SR, RT, waveforms and presentation states. */
const storageSopClassRoot = '1.2.840.10008.5.1.4.1.1.';

export function serviceOf(abstractSyntaxUid: string): { kind: ServiceKind; root?: 'PATIENT' | 'STUDY' } | undefined {
  if (abstractSyntaxUid === SopClass.Verification) return { kind: 'verification' };
  if (abstractSyntaxUid === StorageCommitment.sopClassUid) return { kind: 'commitment' };
  const qr = queryRetrieveClasses[abstractSyntaxUid];
  if (qr) return qr;
  if (isStorageSopClass(abstractSyntaxUid)) return { kind: 'storage' };
  return undefined;
}

/**
 * Patient-level storage classes PS3.4 B.5 lists outside that root (storescp accepts them; helper 47). The
 * other classes there (Hanging Protocol, Color Palette, implant templates) describe no patient and no
 * study, which this archive files every instance under: they are not accepted.
 */
const storageSopClassesOutsideRoot: ReadonlySet<string> = new Set([
  '1.2.840.10008.5.1.4.34.7', // RT Beams Delivery Instruction Storage
  '1.2.840.10008.5.1.4.34.10', // RT Brachy Application Setup Delivery Instruction Storage
]);

/**
 * Classes under the storage root that store no patient's study (defined protocols, protocol approvals,
 * inventories) or are no storage at all (their query/retrieve models): accepted, every C-STORE of theirs failed
 * 0xC001 for want of a Study Instance UID (hunt 195). A class not yet known is still accepted (next year's modality).
 */
const notStorableUnderRoot: ReadonlySet<string> = new Set(
  [
    '200.1', // CT Defined Procedure Protocol Storage
    '200.3', // Protocol Approval Storage
    '200.4', // Protocol Approval Information Model FIND
    '200.5', // Protocol Approval Information Model MOVE
    '200.6', // Protocol Approval Information Model GET
    '200.7', // XA Defined Procedure Protocol Storage
    '201.1', // Inventory Storage
    '201.2', // Inventory FIND
    '201.3', // Inventory MOVE
    '201.4', // Inventory GET
    '201.5', // Inventory Creation
  ].map((suffix) => `${storageSopClassRoot}${suffix}`),
);

export function isStorageSopClass(uid: string): boolean {
  if (storageSopClassesOutsideRoot.has(uid)) return true;
  return uid.startsWith(storageSopClassRoot) && isAcceptableUid(uid) && !notStorableUnderRoot.has(uid);
}

const uncompressedTransferSyntaxes: readonly string[] = [
  TransferSyntax.ExplicitVrLittleEndian,
  TransferSyntax.ImplicitVrLittleEndian,
  TransferSyntax.ExplicitVrBigEndian,
  TransferSyntax.DeflatedExplicitVrLittleEndian,
];

/**
 * 1.2.840.10008.1.2.4.n: JPEG (50-66, retired ones included), JPEG lossless (70), JPEG-LS (80, 81), JPEG 2000
 * and JPIP (90-95), MPEG-2/4 and HEVC (100-108), JPEG XL (110-112), HTJ2K and its JPIP (201-205).
 */
const encapsulatedSyntaxNumbers: ReadonlySet<number> = new Set([
  ...numbersFrom(50, 66), 70, 80, 81, ...numbersFrom(90, 95), ...numbersFrom(100, 108), 110, 111, 112, ...numbersFrom(201, 205),
]);

/** Transfer syntaxes whose dataset encoding we can parse to index: uncompressed, deflated, and encapsulated pixel data. */
export function isStorableTransferSyntax(uid: string): boolean {
  if (uncompressedTransferSyntaxes.includes(uid)) return true;
  if (uid === '1.2.840.10008.1.2.5') return true; // RLE
  // The encapsulated syntaxes PS3.6 defines under 1.2.840.10008.1.2.4 (all explicit VR LE), not any number there:
  // `.4.1000` and `.4.050` (no UID) were stored with Success and then answered 406 by every conversion, while
  // the fragmentable MPEG syntaxes (`.4.100.1`) were refused (hunt 195).
  const match = /^1\.2\.840\.10008\.1\.2\.4\.([1-9]\d{1,2})(\.1)?$/.exec(uid);
  if (match === null) return false;
  const number = Number(match[1]);
  return match[2] === undefined ? encapsulatedSyntaxNumbers.has(number) : number >= 100 && number <= 106;
}

function numbersFrom(first: number, last: number): number[] {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}

export interface AcceptorConfig {
  aeTitle: string;
  /** When set, only these calling AE titles may associate. */
  allowedCallingAeTitles?: readonly string[];
  /** The maximum P-DATA-TF length we announce and accept. */
  maxPduLength: number;
  implementationClassUid: string;
  implementationVersionName: string;
}

export interface NegotiatedContext {
  id: number;
  abstractSyntaxUid: string;
  transferSyntaxUid: string;
  service: ServiceKind;
  root?: 'PATIENT' | 'STUDY';
  /** The requestor took the SCP role for this (storage) class: we may send it C-STORE (C-GET sub-operations). */
  requestorIsScp: boolean;
}

export type NegotiationResult =
  | { outcome: 'accept'; ac: AssociateAcPdu; contexts: Map<number, NegotiatedContext>; peerMaxPduLength: number }
  | { outcome: 'reject'; rj: AssociateRjPdu; why: string };

const reject = (result: number, source: number, reason: number, why: string): NegotiationResult => ({
  outcome: 'reject',
  rj: { type: 'associateRj', result, source, reason },
  why,
});

export function negotiate(rq: AssociateRqPdu, config: AcceptorConfig): NegotiationResult {
  if (rq.applicationContextName !== DicomApplicationContext) {
    return reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.ApplicationContextNotSupported, `application context ${rq.applicationContextName}`);
  }
  if (rq.calledAeTitle !== config.aeTitle) {
    return reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CalledAeNotRecognized, `called AE title "${rq.calledAeTitle}" is not "${config.aeTitle}"`);
  }
  if (config.allowedCallingAeTitles && config.allowedCallingAeTitles.length > 0 && !config.allowedCallingAeTitles.includes(rq.callingAeTitle)) {
    return reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CallingAeNotRecognized, `calling AE title "${rq.callingAeTitle}" is not allowed`);
  }
  if (rq.presentationContexts.length === 0) {
    // PS3.8 9.3.2: an A-ASSOCIATE-RQ carries one or more presentation context items; without any there is
    // nothing to accept (a request whose contexts are all refused is still accepted, each with its reason).
    return reject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.NoReasonGiven, 'no presentation context proposed');
  }
  const proposedRoles = new Map(rq.userInformation.roleSelections.map((r) => [r.sopClassUid, r]));
  const acceptedRoles: RoleSelection[] = [];
  const contexts = new Map<number, NegotiatedContext>();
  const answers: AcceptedPresentationContext[] = [];
  const seenIds = new Set<number>();
  for (const pc of rq.presentationContexts) {
    // PS3.8 9.3.2.2: IDs are odd and unique. A repeated one gets no second answer (two items with one ID
    // leave the requestor unable to tell which is which: helper 42); an even one is answered as rejected
    // rather than aborting all.
    if (seenIds.has(pc.id)) continue;
    seenIds.add(pc.id);
    const badId = pc.id % 2 === 0;
    const service = serviceOf(pc.abstractSyntaxUid);
    if (badId || !service) {
      answers.push({ id: pc.id, result: badId ? PresentationContextResult.NoReason : PresentationContextResult.AbstractSyntaxNotSupported, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
      continue;
    }
    const transferSyntaxUid = chooseTransferSyntax(service.kind, pc.transferSyntaxUids);
    if (!transferSyntaxUid) {
      answers.push({ id: pc.id, result: PresentationContextResult.TransferSyntaxesNotSupported, transferSyntaxUid: TransferSyntax.ImplicitVrLittleEndian });
      continue;
    }
    const role = proposedRoles.get(pc.abstractSyntaxUid);
    const requestorIsScp = service.kind === 'storage' && role !== undefined && role.scpRole;
    contexts.set(pc.id, { id: pc.id, abstractSyntaxUid: pc.abstractSyntaxUid, transferSyntaxUid, service: service.kind, root: service.root, requestorIsScp });
    answers.push({ id: pc.id, result: PresentationContextResult.Acceptance, transferSyntaxUid });
  }
  const acceptedClasses = new Set([...contexts.values()].map((c) => c.abstractSyntaxUid));
  for (const role of proposedRoles.values()) {
    // We accept the roles proposed for storage classes (C-GET needs the requestor as storage SCP), and
    // answer only for classes of an accepted context (PS3.7 D.3.3.4).
    if (isStorageSopClass(role.sopClassUid) && acceptedClasses.has(role.sopClassUid)) acceptedRoles.push({ sopClassUid: role.sopClassUid, scuRole: role.scuRole, scpRole: role.scpRole });
  }
  const ac: AssociateAcPdu = {
    type: 'associateAc',
    protocolVersion: 1,
    calledAeTitle: rq.calledAeTitle,
    callingAeTitle: rq.callingAeTitle,
    ...(rq.aeTitleFields === undefined ? {} : { aeTitleFieldsOfRequest: rq.aeTitleFields }),
    applicationContextName: DicomApplicationContext,
    presentationContexts: answers,
    userInformation: {
      maxPduLength: config.maxPduLength,
      implementationClassUid: config.implementationClassUid,
      implementationVersionName: config.implementationVersionName,
      roleSelections: acceptedRoles,
    },
  };
  return { outcome: 'accept', ac, contexts, peerMaxPduLength: rq.userInformation.maxPduLength };
}

/**
 * Storage: the first syntax the requestor proposes that we can index, so the instance is stored as the
 * modality prefers to send it. Everything else: explicit VR little endian first, then implicit.
 */
function chooseTransferSyntax(kind: ServiceKind, proposed: readonly string[]): string | undefined {
  if (kind === 'storage') return proposed.find(isStorableTransferSyntax);
  for (const preferred of [TransferSyntax.ExplicitVrLittleEndian, TransferSyntax.ImplicitVrLittleEndian, TransferSyntax.ExplicitVrBigEndian]) {
    if (proposed.includes(preferred)) return preferred;
  }
  return undefined;
}
