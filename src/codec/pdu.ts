/**
 * DICOM Upper Layer PDUs (PS3.8 section 9.3): encoding, and decoding with explicit limits so that a
 * length field from the network never makes us allocate more than we chose to accept.
 */

export const PduType = {
  AssociateRq: 0x01,
  AssociateAc: 0x02,
  AssociateRj: 0x03,
  PData: 0x04,
  ReleaseRq: 0x05,
  ReleaseRp: 0x06,
  Abort: 0x07,
} as const;

const ItemType = {
  ApplicationContext: 0x10,
  PresentationContextRq: 0x20,
  PresentationContextAc: 0x21,
  AbstractSyntax: 0x30,
  TransferSyntax: 0x40,
  UserInformation: 0x50,
  MaxLength: 0x51,
  ImplementationClassUid: 0x52,
  AsyncOpsWindow: 0x53,
  RoleSelection: 0x54,
  ImplementationVersionName: 0x55,
} as const;

export const DicomApplicationContext = '1.2.840.10008.3.1.1.1';

/** A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2). */
export const PresentationContextResult = {
  Acceptance: 0,
  UserRejection: 1,
  NoReason: 2,
  AbstractSyntaxNotSupported: 3,
  TransferSyntaxesNotSupported: 4,
} as const;

/** A-ASSOCIATE-RJ fields (PS3.8 9.3.4). */
export const RejectResult = { Permanent: 1, Transient: 2 } as const;
export const RejectSource = { ServiceUser: 1, ServiceProviderAcse: 2, ServiceProviderPresentation: 3 } as const;
export const RejectReason = {
  NoReasonGiven: 1,
  ApplicationContextNotSupported: 2,
  CallingAeNotRecognized: 3,
  CalledAeNotRecognized: 7,
  // source 2
  ProtocolVersionNotSupported: 2,
  // source 3
  TemporaryCongestion: 1,
  LocalLimitExceeded: 2,
} as const;

/** An A-ASSOCIATE-RJ in words (PS3.8 9.3.4), for operators' logs. */
export function describeRejection(rj: { result: number; source: number; reason: number }): string {
  const result = rj.result === RejectResult.Permanent ? 'permanent' : rj.result === RejectResult.Transient ? 'transient' : `result ${rj.result}`;
  const reasons: Record<number, Record<number, string>> = {
    [RejectSource.ServiceUser]: { 1: 'no reason given', 2: 'application context not supported', 3: 'calling AE title not recognized', 7: 'called AE title not recognized' },
    [RejectSource.ServiceProviderAcse]: { 1: 'no reason given', 2: 'protocol version not supported' },
    [RejectSource.ServiceProviderPresentation]: { 1: 'temporary congestion', 2: 'local limit exceeded' },
  };
  const source = rj.source === RejectSource.ServiceUser ? 'by the service user' : rj.source === RejectSource.ServiceProviderAcse ? 'by the ACSE provider' : rj.source === RejectSource.ServiceProviderPresentation ? 'by the presentation provider' : `source ${rj.source}`;
  return `${result}, ${source}: ${reasons[rj.source]?.[rj.reason] ?? `reason ${rj.reason}`}`;
}

/** A-ABORT fields (PS3.8 9.3.8). */
export const AbortSource = { ServiceUser: 0, ServiceProvider: 2 } as const;
export const AbortReason = {
  NotSpecified: 0,
  UnrecognizedPdu: 1,
  UnexpectedPdu: 2,
  UnrecognizedPduParameter: 4,
  UnexpectedPduParameter: 5,
  InvalidPduParameterValue: 6,
} as const;

export interface ProposedPresentationContext {
  id: number;
  abstractSyntaxUid: string;
  transferSyntaxUids: string[];
}

export interface AcceptedPresentationContext {
  id: number;
  result: number;
  /** Present (and meaningful) only when result is Acceptance. */
  transferSyntaxUid: string;
}

export interface RoleSelection {
  sopClassUid: string;
  scuRole: boolean;
  scpRole: boolean;
}

export interface UserInformation {
  maxPduLength: number;
  implementationClassUid: string;
  implementationVersionName?: string;
  roleSelections: RoleSelection[];
  asyncOps?: { invoked: number; performed: number };
}

export interface AssociateRqPdu {
  type: 'associateRq';
  protocolVersion: number;
  calledAeTitle: string;
  callingAeTitle: string;
  /** The called and calling AE title fields as received (32 bytes), for the AC to echo; absent when built here. */
  aeTitleFields?: Uint8Array;
  applicationContextName: string;
  presentationContexts: ProposedPresentationContext[];
  userInformation: UserInformation;
}

export interface AssociateAcPdu {
  type: 'associateAc';
  protocolVersion: number;
  calledAeTitle: string;
  callingAeTitle: string;
  /**
   * The request's two 16-byte AE title fields as received: PS3.8 9.3.3.2 has the AC send them back
   * identical (padding and case included), which the trimmed titles cannot restore. Encoded instead of
   * the two titles when present.
   */
  aeTitleFieldsOfRequest?: Uint8Array;
  applicationContextName: string;
  presentationContexts: AcceptedPresentationContext[];
  userInformation: UserInformation;
}

export interface AssociateRjPdu {
  type: 'associateRj';
  result: number;
  source: number;
  reason: number;
}

export interface PresentationDataValue {
  presentationContextId: number;
  isCommand: boolean;
  isLast: boolean;
  /** A view into the received PDU: copy it if it must outlive the current event. */
  data: Uint8Array;
}

export interface PDataPdu {
  type: 'pData';
  values: PresentationDataValue[];
}

export interface ReleaseRqPdu {
  type: 'releaseRq';
}
export interface ReleaseRpPdu {
  type: 'releaseRp';
}
export interface AbortPdu {
  type: 'abort';
  source: number;
  reason: number;
}

export type Pdu =
  | AssociateRqPdu
  | AssociateAcPdu
  | AssociateRjPdu
  | PDataPdu
  | ReleaseRqPdu
  | ReleaseRpPdu
  | AbortPdu;

export type PduErrorCode =
  | 'ERR_PDU_UNRECOGNIZED'
  | 'ERR_PDU_TOO_LARGE'
  | 'ERR_PDU_MALFORMED'
  | 'ERR_PDU_INVALID_VALUE';

export class PduError extends Error {
  override readonly name = 'PduError';
  readonly code: PduErrorCode;
  /** The A-ABORT reason to send for this error (PS3.8 9.3.8). */
  readonly abortReason: number;
  constructor(code: PduErrorCode, message: string) {
    super(message);
    this.code = code;
    this.abortReason =
      code === 'ERR_PDU_UNRECOGNIZED'
        ? AbortReason.UnrecognizedPdu
        : code === 'ERR_PDU_MALFORMED'
          ? AbortReason.UnrecognizedPduParameter
          : AbortReason.InvalidPduParameterValue;
  }
}

export interface PduLimits {
  /** Largest P-DATA-TF PDU body we accept: what we announced as our maximum length, plus slack. */
  maxPDataBytes: number;
  /** Largest association negotiation PDU we accept (they carry only UIDs). */
  maxAssociateBytes: number;
}

/**
 * PS3.8 bounds an A-ASSOCIATE-RQ by its 4-byte length only. 128 contexts of 40 transfer syntaxes each take
 * ~360 KB; 128 KiB aborted requests of ~136 KB that DCMTK's storescp accepts (hunt 89). Bounded all the
 * same: each connection not yet associated may hold one, for ARTIM's 30 s.
 */
export const associateBytesMax = 512 * 1024;

export const defaultPduLimits: PduLimits = { maxPDataBytes: 1024 * 1024 + 64, maxAssociateBytes: associateBytesMax };

const pduHeaderBytes = 6;

/** Peeks a PDU header; returns the full PDU length (header included) or undefined if more bytes are needed. */
export function peekPduLength(buffer: Uint8Array, offset: number, available: number, limits: PduLimits): number | undefined {
  if (available < pduHeaderBytes) return undefined;
  const type = buffer[offset]!;
  const view = new DataView(buffer.buffer, buffer.byteOffset + offset, pduHeaderBytes);
  const length = view.getUint32(2);
  if (type < PduType.AssociateRq || type > PduType.Abort) {
    throw new PduError('ERR_PDU_UNRECOGNIZED', `unrecognized PDU type 0x${type.toString(16).padStart(2, '0')}`);
  }
  const limit = type === PduType.PData ? limits.maxPDataBytes : limits.maxAssociateBytes;
  if (length > limit) {
    throw new PduError('ERR_PDU_TOO_LARGE', `PDU type ${type} announces ${length} bytes, limit is ${limit}`);
  }
  return pduHeaderBytes + length;
}

/**
 * Incremental PDU framer: feed socket chunks, get whole PDUs. It buffers at most one PDU, which the
 * limits bound, so a peer cannot make it grow.
 */
export class PduFramer {
  private buffer = new Uint8Array(0);
  private used = 0;
  /**
   * The framing error, thrown from then on. Met after PDUs that the same chunk completed, those are returned
   * first, as they would be had the bad bytes come in a later chunk (see `failure`).
   */
  private deferredError: unknown;
  constructor(private readonly limits: PduLimits = defaultPduLimits) {}

  /** The framing error met so far (after the PDUs a push returned, or thrown by it); nothing more is framed after it. */
  get failure(): unknown {
    return this.deferredError;
  }

  /** Returns the PDUs completed by this chunk; throws PduError on a malformed stream. */
  push(chunk: Uint8Array): Pdu[] {
    if (this.deferredError !== undefined) throw this.deferredError;
    const pdus: Pdu[] = [];
    let data: Uint8Array;
    let offset = 0;
    let available: number;
    if (this.used === 0) {
      data = chunk;
      available = chunk.length;
    } else {
      this.append(chunk);
      data = this.buffer;
      available = this.used;
    }
    for (;;) {
      try {
        const length = peekPduLength(data, offset, available - offset, this.limits);
        if (length === undefined || available - offset < length) break;
        pdus.push(decodePdu(data.subarray(offset, offset + length)));
        offset += length;
      } catch (error) {
        // Whether valid PDUs are handled before the bad bytes must not depend on where TCP split the stream.
        this.deferredError = error;
        if (pdus.length === 0) throw error;
        return pdus;
      }
    }
    const rest = available - offset;
    if (data === chunk) {
      // Keep a copy of the tail: the chunk's memory belongs to the socket.
      this.used = 0;
      if (rest > 0) this.append(chunk.subarray(offset));
    } else if (offset > 0) {
      // The PDUs just returned are views into this buffer and are handled later: never write over them.
      const tail = data.subarray(offset, available);
      this.buffer = new Uint8Array(0);
      this.used = 0;
      if (rest > 0) this.append(tail);
    }
    return pdus;
  }

  get bufferedBytes(): number {
    return this.used;
  }

  private append(chunk: Uint8Array): void {
    const needed = this.used + chunk.length;
    if (needed > this.buffer.length) {
      // Size the buffer for the whole PDU once its header is known: growing by doubling copies it again and again.
      // Capped: the length is not validated yet (push checks it right after appending).
      const pduLength = this.used + chunk.length >= pduHeaderBytes ? Math.min(this.pduLengthOf(chunk), pduHeaderBytes + Math.max(this.limits.maxPDataBytes, this.limits.maxAssociateBytes)) : 0;
      const grown = new Uint8Array(Math.max(needed, pduLength, Math.min(this.buffer.length * 2, this.limits.maxPDataBytes + pduHeaderBytes), 4096));
      grown.set(this.buffer.subarray(0, this.used));
      this.buffer = grown;
    }
    this.buffer.set(chunk, this.used);
    this.used = needed;
  }

  /** Length of the PDU being buffered (header included), read from the buffered bytes followed by `chunk`. */
  private pduLengthOf(chunk: Uint8Array): number {
    const header = new Uint8Array(pduHeaderBytes);
    const fromBuffer = Math.min(this.used, pduHeaderBytes);
    header.set(this.buffer.subarray(0, fromBuffer));
    header.set(chunk.subarray(0, pduHeaderBytes - fromBuffer), fromBuffer);
    return pduHeaderBytes + new DataView(header.buffer).getUint32(2);
  }
}

class Reader {
  offset: number;
  private readonly view: DataView;
  constructor(
    readonly bytes: Uint8Array,
    offset = 0,
    readonly end = bytes.length,
  ) {
    this.offset = offset;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  need(n: number, what: string): void {
    if (this.offset + n > this.end) throw new PduError('ERR_PDU_MALFORMED', `${what} runs past the end of its PDU`);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.offset++]!;
  }
  u16(what: string): number {
    this.need(2, what);
    const value = this.view.getUint16(this.offset);
    this.offset += 2;
    return value;
  }
  u32(what: string): number {
    this.need(4, what);
    const value = this.view.getUint32(this.offset);
    this.offset += 4;
    return value;
  }
  slice(n: number, what: string): Uint8Array {
    this.need(n, what);
    const value = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return value;
  }
  text(n: number, what: string): string {
    return trimUid(Buffer.from(this.slice(n, what)).toString('latin1'));
  }
}

function trimUid(s: string): string {
  return s.replace(/[\0 ]+$/, '').replace(/^ +/, '');
}

/** Decodes one whole PDU (header included). */
export function decodePdu(bytes: Uint8Array): Pdu {
  const r = new Reader(bytes);
  const type = r.u8('PDU type');
  r.u8('reserved');
  const length = r.u32('PDU length');
  if (length !== bytes.length - pduHeaderBytes) throw new PduError('ERR_PDU_MALFORMED', 'PDU length mismatch');
  switch (type) {
    case PduType.AssociateRq:
    case PduType.AssociateAc:
      return decodeAssociate(r, type === PduType.AssociateRq);
    case PduType.AssociateRj: {
      if (length < 4) throw new PduError('ERR_PDU_MALFORMED', 'A-ASSOCIATE-RJ is shorter than 4 bytes');
      r.u8('reserved');
      return { type: 'associateRj', result: r.u8('result'), source: r.u8('source'), reason: r.u8('reason') };
    }
    case PduType.PData:
      return decodePData(r);
    case PduType.ReleaseRq:
    case PduType.ReleaseRp:
      if (length !== 4) throw new PduError('ERR_PDU_INVALID_VALUE', `A-RELEASE PDU of length ${length}, expected 4`);
      return { type: type === PduType.ReleaseRq ? 'releaseRq' : 'releaseRp' };
    case PduType.Abort: {
      if (length !== 4) throw new PduError('ERR_PDU_INVALID_VALUE', `A-ABORT PDU of length ${length}, expected 4`);
      r.u16('reserved');
      return { type: 'abort', source: r.u8('source'), reason: r.u8('reason') };
    }
    default:
      throw new PduError('ERR_PDU_UNRECOGNIZED', `unrecognized PDU type ${type}`);
  }
}

function decodePData(r: Reader): PDataPdu {
  const values: PresentationDataValue[] = [];
  while (r.offset < r.end) {
    const itemLength = r.u32('PDV item length');
    if (itemLength < 2) throw new PduError('ERR_PDU_INVALID_VALUE', `PDV item of length ${itemLength}`);
    const presentationContextId = r.u8('presentation context ID');
    const control = r.u8('message control header');
    const data = r.slice(itemLength - 2, 'PDV data');
    values.push({ presentationContextId, isCommand: (control & 1) === 1, isLast: (control & 2) === 2, data });
  }
  if (values.length === 0) throw new PduError('ERR_PDU_INVALID_VALUE', 'P-DATA-TF without any PDV item');
  return { type: 'pData', values };
}

function decodeAssociate(r: Reader, isRequest: boolean): AssociateRqPdu | AssociateAcPdu {
  const protocolVersion = r.u16('protocol version');
  r.u16('reserved');
  const aeTitleFields = Uint8Array.prototype.slice.call(r.bytes, r.offset, r.offset + 32);
  const calledAeTitle = r.text(16, 'called AE title');
  const callingAeTitle = r.text(16, 'calling AE title');
  r.slice(32, 'reserved');
  let applicationContextName = '';
  const proposed: ProposedPresentationContext[] = [];
  const accepted: AcceptedPresentationContext[] = [];
  let userInformation: UserInformation | undefined;
  while (r.offset < r.end) {
    const itemType = r.u8('item type');
    r.u8('reserved');
    const itemLength = r.u16('item length');
    r.need(itemLength, `item 0x${itemType.toString(16)}`);
    const item = new Reader(r.bytes, r.offset, r.offset + itemLength);
    r.offset += itemLength;
    switch (itemType) {
      case ItemType.ApplicationContext:
        applicationContextName = item.text(itemLength, 'application context name');
        break;
      case ItemType.PresentationContextRq:
        if (!isRequest) throw new PduError('ERR_PDU_MALFORMED', 'request presentation context item in A-ASSOCIATE-AC');
        proposed.push(decodeProposedContext(item));
        break;
      case ItemType.PresentationContextAc:
        if (isRequest) throw new PduError('ERR_PDU_MALFORMED', 'accept presentation context item in A-ASSOCIATE-RQ');
        accepted.push(decodeAcceptedContext(item));
        break;
      case ItemType.UserInformation:
        userInformation = decodeUserInformation(item);
        break;
      default:
        // PS3.8 9.3.2: unknown items are ignored.
        break;
    }
  }
  if (!applicationContextName) throw new PduError('ERR_PDU_MALFORMED', 'no application context item');
  if (!userInformation) throw new PduError('ERR_PDU_MALFORMED', 'no user information item');
  const common = { protocolVersion, calledAeTitle, callingAeTitle, applicationContextName, userInformation };
  return isRequest
    ? { type: 'associateRq', ...common, aeTitleFields, presentationContexts: proposed }
    : { type: 'associateAc', ...common, presentationContexts: accepted };
}

function readSubItemHeader(r: Reader): { type: number; body: Reader } {
  const type = r.u8('sub-item type');
  r.u8('reserved');
  const length = r.u16('sub-item length');
  r.need(length, `sub-item 0x${type.toString(16)}`);
  const body = new Reader(r.bytes, r.offset, r.offset + length);
  r.offset += length;
  return { type, body };
}

function decodeProposedContext(r: Reader): ProposedPresentationContext {
  const id = r.u8('presentation context ID');
  r.slice(3, 'reserved');
  let abstractSyntaxUid = '';
  const transferSyntaxUids: string[] = [];
  while (r.offset < r.end) {
    const { type, body } = readSubItemHeader(r);
    const value = body.text(body.end - body.offset, 'syntax name');
    if (type === ItemType.AbstractSyntax) abstractSyntaxUid = value;
    else if (type === ItemType.TransferSyntax) transferSyntaxUids.push(value);
  }
  return { id, abstractSyntaxUid, transferSyntaxUids };
}

function decodeAcceptedContext(r: Reader): AcceptedPresentationContext {
  const id = r.u8('presentation context ID');
  r.u8('reserved');
  const result = r.u8('result');
  r.u8('reserved');
  let transferSyntaxUid = '';
  while (r.offset < r.end) {
    const { type, body } = readSubItemHeader(r);
    if (type === ItemType.TransferSyntax) transferSyntaxUid = body.text(body.end - body.offset, 'transfer syntax');
  }
  return { id, result, transferSyntaxUid };
}

function decodeUserInformation(r: Reader): UserInformation {
  const info: UserInformation = { maxPduLength: 0, implementationClassUid: '', roleSelections: [] };
  while (r.offset < r.end) {
    const { type, body } = readSubItemHeader(r);
    switch (type) {
      case ItemType.MaxLength:
        info.maxPduLength = body.u32('maximum length');
        break;
      case ItemType.ImplementationClassUid:
        info.implementationClassUid = body.text(body.end - body.offset, 'implementation class UID');
        break;
      case ItemType.ImplementationVersionName:
        info.implementationVersionName = body.text(body.end - body.offset, 'implementation version name');
        break;
      case ItemType.AsyncOpsWindow:
        info.asyncOps = { invoked: body.u16('max operations invoked'), performed: body.u16('max operations performed') };
        break;
      case ItemType.RoleSelection: {
        const uidLength = body.u16('role selection UID length');
        const sopClassUid = body.text(uidLength, 'role selection SOP class');
        info.roleSelections.push({ sopClassUid, scuRole: body.u8('SCU role') === 1, scpRole: body.u8('SCP role') === 1 });
        break;
      }
      default:
        // Extended negotiation and user identity are optional: not negotiated, so ignored.
        break;
    }
  }
  return info;
}

// ---------- encoding ----------

class Writer {
  private chunks: Uint8Array[] = [];
  length = 0;
  u8(v: number): this {
    return this.bytes(Uint8Array.of(v & 0xff));
  }
  u16(v: number): this {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, v);
    return this.bytes(b);
  }
  u32(v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v);
    return this.bytes(b);
  }
  bytes(b: Uint8Array): this {
    this.chunks.push(b);
    this.length += b.length;
    return this;
  }
  text(s: string): this {
    return this.bytes(Buffer.from(s, 'latin1'));
  }
  item(type: number, body: Writer | Uint8Array): this {
    const content = body instanceof Writer ? body.finish() : body;
    return this.u8(type).u8(0).u16(content.length).bytes(content);
  }
  finish(): Uint8Array {
    return Buffer.concat(this.chunks, this.length);
  }
}

function aeField(title: string): Uint8Array {
  const field = Buffer.alloc(16, 0x20);
  field.write(title.slice(0, 16), 'latin1');
  return field;
}

function encodeUserInformation(info: UserInformation): Writer {
  const w = new Writer().item(ItemType.MaxLength, new Writer().u32(info.maxPduLength));
  w.item(ItemType.ImplementationClassUid, Buffer.from(info.implementationClassUid, 'latin1'));
  if (info.asyncOps) w.item(ItemType.AsyncOpsWindow, new Writer().u16(info.asyncOps.invoked).u16(info.asyncOps.performed));
  for (const role of info.roleSelections) {
    w.item(
      ItemType.RoleSelection,
      new Writer()
        .u16(role.sopClassUid.length)
        .text(role.sopClassUid)
        .u8(role.scuRole ? 1 : 0)
        .u8(role.scpRole ? 1 : 0),
    );
  }
  if (info.implementationVersionName) {
    w.item(ItemType.ImplementationVersionName, Buffer.from(info.implementationVersionName.slice(0, 16), 'latin1'));
  }
  return w;
}

function withHeader(type: number, body: Writer | Uint8Array): Uint8Array {
  const content = body instanceof Writer ? body.finish() : body;
  const out = new Uint8Array(pduHeaderBytes + content.length);
  out[0] = type;
  new DataView(out.buffer).setUint32(2, content.length);
  out.set(content, pduHeaderBytes);
  return out;
}

export function encodePdu(pdu: Pdu): Uint8Array {
  switch (pdu.type) {
    case 'associateRq':
    case 'associateAc': {
      const w = new Writer()
        .u16(pdu.protocolVersion)
        .u16(0)
        .bytes(pdu.type === 'associateAc' && pdu.aeTitleFieldsOfRequest?.length === 32 ? pdu.aeTitleFieldsOfRequest : Buffer.concat([aeField(pdu.calledAeTitle), aeField(pdu.callingAeTitle)]))
        .bytes(new Uint8Array(32))
        .item(ItemType.ApplicationContext, Buffer.from(pdu.applicationContextName, 'latin1'));
      if (pdu.type === 'associateRq') {
        for (const pc of pdu.presentationContexts) {
          const body = new Writer().u8(pc.id).u8(0).u8(0).u8(0);
          body.item(ItemType.AbstractSyntax, Buffer.from(pc.abstractSyntaxUid, 'latin1'));
          for (const ts of pc.transferSyntaxUids) body.item(ItemType.TransferSyntax, Buffer.from(ts, 'latin1'));
          w.item(ItemType.PresentationContextRq, body);
        }
      } else {
        for (const pc of pdu.presentationContexts) {
          const body = new Writer().u8(pc.id).u8(0).u8(pc.result).u8(0);
          // PS3.8 9.3.3.2: the transfer syntax sub-item is present but not significant when rejected.
          body.item(ItemType.TransferSyntax, Buffer.from(pc.transferSyntaxUid, 'latin1'));
          w.item(ItemType.PresentationContextAc, body);
        }
      }
      w.item(ItemType.UserInformation, encodeUserInformation(pdu.userInformation));
      return withHeader(pdu.type === 'associateRq' ? PduType.AssociateRq : PduType.AssociateAc, w);
    }
    case 'associateRj':
      return withHeader(PduType.AssociateRj, Uint8Array.of(0, pdu.result, pdu.source, pdu.reason));
    case 'pData': {
      const w = new Writer();
      for (const pdv of pdu.values) {
        w.u32(pdv.data.length + 2)
          .u8(pdv.presentationContextId)
          .u8((pdv.isCommand ? 1 : 0) | (pdv.isLast ? 2 : 0))
          .bytes(pdv.data);
      }
      return withHeader(PduType.PData, w);
    }
    case 'releaseRq':
      return withHeader(PduType.ReleaseRq, new Uint8Array(4));
    case 'releaseRp':
      return withHeader(PduType.ReleaseRp, new Uint8Array(4));
    case 'abort':
      return withHeader(PduType.Abort, Uint8Array.of(0, 0, pdu.source, pdu.reason));
    default: {
      const unreachable: never = pdu;
      throw new Error(`unknown PDU ${String(unreachable)}`);
    }
  }
}

/** Bytes of P-DATA-TF overhead around one PDV: PDU header (6) + item length (4) + context ID and control (2). */
export const pDataOverheadBytes = 12;

/**
 * Splits a message part into P-DATA-TF PDUs that fit the receiver's maximum length (0 means unlimited).
 * Returns encoded PDUs; the data is copied once, into the PDUs.
 */
/**
 * A data set's chunks re-cut so that each has an even length (only the last can be odd, if the whole
 * is): every chunk becomes its own P-DATA fragments, DCMTK refuses a fragment of odd length (0006:020d),
 * and a stored copy's chunks follow whatever pieces it arrived in (replicas come off a byte stream).
 * An odd chunk's last byte moves to the front of the next one (one copy of that chunk).
 */
export async function* evenChunks(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let carried: number | undefined;
  for await (const chunk of chunks) {
    let piece = chunk;
    if (carried !== undefined) {
      piece = new Uint8Array(chunk.length + 1);
      piece[0] = carried;
      piece.set(chunk, 1);
      carried = undefined;
    }
    if (piece.length % 2 === 1) {
      carried = piece[piece.length - 1];
      piece = piece.subarray(0, piece.length - 1);
    }
    if (piece.length > 0) yield piece;
  }
  if (carried !== undefined) yield Uint8Array.of(carried);
}

/**
 * One P-DATA-TF PDU carrying a whole command set and its whole (small) data set as two PDVs (PS3.8 9.3.5:
 * a P-DATA-TF holds one or more PDV items), or undefined when they do not fit in the peer's maximum PDU
 * length. PixelMed 20220618 reads a final C-GET-RSP's command from one PDU and, when that PDU does not end
 * with the last data fragment, stops reading ("stop anyway unless pending"): the Failed SOP Instance UID
 * List in the next PDU then arrives after its A-RELEASE-RQ and it aborts the association.
 */
export function encodePDataCommandAndDataSet(presentationContextId: number, command: Uint8Array, dataSet: Uint8Array, peerMaxPduLength: number): Uint8Array | undefined {
  // The PDU's variable field: two PDV items of a 4-byte length, a context ID and a control header each.
  const length = 6 + command.length + 6 + dataSet.length;
  if (length > (peerMaxPduLength > 0 ? peerMaxPduLength : 1024 * 1024)) return undefined;
  return encodePdu({
    type: 'pData',
    values: [
      { presentationContextId, isCommand: true, isLast: true, data: command },
      { presentationContextId, isCommand: false, isLast: true, data: dataSet },
    ],
  });
}

/**
 * The command's P-DATA-TF PDUs, then its data set's, back to back in one buffer (one write), or undefined
 * when they would take more than one batch (pDataBatchBytes). On the wire as DCMTK sends a message, each part
 * in PDUs of its own (GDCM reads a data set only from the PDUs after its command's: hunt 155); in one write,
 * since two writes per C-FIND match (a system call and a TCP segment each, Nagle off) cost its send ~45% more
 * CPU (~3% of the whole C-FIND's: hunt 157, docs/performance.md).
 */
export function encodePDataCommandThenDataSet(presentationContextId: number, command: Uint8Array, dataSet: Uint8Array, peerMaxPduLength: number): Uint8Array | undefined {
  if (pDataPdusBytes(command.length, peerMaxPduLength) + pDataPdusBytes(dataSet.length, peerMaxPduLength) > pDataBatchBytes) return undefined;
  const whole = Number.POSITIVE_INFINITY;
  return Buffer.concat([
    ...pDataFragmentBatches(presentationContextId, true, command, peerMaxPduLength, true, whole),
    ...pDataFragmentBatches(presentationContextId, false, dataSet, peerMaxPduLength, true, whole),
  ]);
}

/** The bytes of the P-DATA-TF PDUs pDataFragmentBatches makes of `length` bytes (one PDU at least). */
function pDataPdusBytes(length: number, peerMaxPduLength: number): number {
  return Math.max(1, Math.ceil(length / maxPDataFragment(peerMaxPduLength))) * pDataOverheadBytes + length;
}

/**
 * The largest fragment a PDV may carry: the maximum length counts the PDU's variable field, PDV item header
 * (4 + 2) plus the fragment. Kept even (a peer may announce an odd maximum): DCMTK refuses data set fragments
 * of odd length (0006:020d).
 */
function maxPDataFragment(peerMaxPduLength: number): number {
  // A maximum over 1 MiB (up to 2^32 - 1, PS3.8 D.1.1) is sent 1 MiB fragments, as "no maximum" (0) is: bounded
  // buffers. Bitwise operators read 32-bit signed numbers, so a maximum of 2^31 + 6 or more made 2-byte fragments
  // (1,966,279 PDUs of 8 bytes for a 3.9 MB instance: hunt 195).
  return peerMaxPduLength > 0 ? Math.max(Math.min(peerMaxPduLength - 6, pDataFragmentMax) & ~1, 2) : pDataFragmentMax;
}

/** The largest fragment sent, whatever maximum the peer announces. */
const pDataFragmentMax = 1024 * 1024;

export function encodePDataFragments(
  presentationContextId: number,
  isCommand: boolean,
  data: Uint8Array,
  peerMaxPduLength: number,
  isLastPart = true,
): Uint8Array[] {
  const pdus: Uint8Array[] = [];
  for (const batch of pDataFragmentBatches(presentationContextId, isCommand, data, peerMaxPduLength, isLastPart, 0)) pdus.push(batch);
  return pdus;
}

/** What one batch of pDataFragmentBatches holds at most (unless a single PDU is larger). */
export const pDataBatchBytes = 256 * 1024;

/**
 * The P-DATA-TF PDUs of encodePDataFragments, made lazily and packed back to back into buffers of up to
 * `batchBytes` (0: one PDU a buffer). A requestor may announce any maximum length, 8 bytes say: its PDUs
 * then carry 2 bytes each, and made all at once a 2 MB data set became a million 14-byte buffers (~400 MB)
 * written one by one, each write a system call, while the event loop served no one else for 30 s.
 */
export function* pDataFragmentBatches(
  presentationContextId: number,
  isCommand: boolean,
  data: Uint8Array,
  peerMaxPduLength: number,
  isLastPart = true,
  batchBytes = pDataBatchBytes,
): Generator<Uint8Array> {
  const maxFragment = maxPDataFragment(peerMaxPduLength);
  let offset = 0;
  do {
    // Whole PDUs that fit in the batch (at least one).
    const fullPduBytes = pDataOverheadBytes + maxFragment;
    const count = Math.max(1, Math.min(Math.floor(batchBytes / fullPduBytes), Math.ceil((data.length - offset) / maxFragment)));
    let batchLength = 0;
    for (let i = 0, at = offset; i < count; i++) {
      const end = Math.min(at + maxFragment, data.length);
      batchLength += pDataOverheadBytes + (end - at);
      at = end;
    }
    const batch = new Uint8Array(batchLength);
    const view = new DataView(batch.buffer);
    let position = 0;
    for (let i = 0; i < count; i++) {
      const end = Math.min(offset + maxFragment, data.length);
      const isLast = isLastPart && end === data.length;
      batch[position] = PduType.PData;
      view.setUint32(position + 2, 6 + (end - offset));
      view.setUint32(position + 6, 2 + (end - offset));
      batch[position + 10] = presentationContextId;
      batch[position + 11] = (isCommand ? 1 : 0) | (isLast ? 2 : 0);
      batch.set(data.subarray(offset, end), position + 12);
      position += pDataOverheadBytes + (end - offset);
      offset = end;
    }
    yield batch;
  } while (offset < data.length);
}
