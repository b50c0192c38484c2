/**
 * DIMSE command sets (PS3.7 section 9 and annex E): always implicit VR little endian, group 0000 only.
 * Decoding is strict about structure and lenient about unknown command elements.
 */

export const CommandField = {
  CStoreRq: 0x0001,
  CStoreRsp: 0x8001,
  CGetRq: 0x0010,
  CGetRsp: 0x8010,
  CFindRq: 0x0020,
  CFindRsp: 0x8020,
  CMoveRq: 0x0021,
  CMoveRsp: 0x8021,
  CEchoRq: 0x0030,
  CEchoRsp: 0x8030,
  NEventReportRq: 0x0100,
  NEventReportRsp: 0x8100,
  NGetRq: 0x0110,
  NSetRq: 0x0120,
  NActionRq: 0x0130,
  NActionRsp: 0x8130,
  NCreateRq: 0x0140,
  NDeleteRq: 0x0150,
  CCancelRq: 0x0fff,
} as const;

/** CommandDataSetType value meaning "no data set follows" (PS3.7 E.1). */
export const NoDataSet = 0x0101;

/**
 * The CommandDataSetType we send when a data set follows. PS3.7 E.1 allows any value but 0101H; DCMTK
 * (DIMSE_DATASET_PRESENT) and GDCM send 0001H, and gdcmscu 3.0.21 asserts that a C-MOVE response says 0101H
 * or 0001H: a final response carrying the Failed SOP Instance UID List with our 0000H made it abort (hunt 160).
 */
export const DataSetPresent = 0x0001;

export const Status = {
  Success: 0x0000,
  Pending: 0xff00,
  PendingWarning: 0xff01,
  Cancel: 0xfe00,
  SopClassNotSupported: 0x0122,
  UnrecognizedOperation: 0x0211,
  DuplicateInvocation: 0x0210,
  MistypedArgument: 0x0212,
  OutOfResources: 0xa700,
  /** C-GET/C-MOVE: out of resources, unable to calculate the number of matches (PS3.4 C.4.2.1.5, C.4.3.1.4). */
  OutOfResourcesMatches: 0xa701,
  OutOfResourcesSubOps: 0xa702,
  MoveDestinationUnknown: 0xa801,
  IdentifierDoesNotMatchSopClass: 0xa900,
  CannotUnderstand: 0xc000,
  UnableToProcess: 0xc001,
  SubOpsCompleteWithFailures: 0xb000,
  /** DIMSE-N failures (PS3.7 C.4): the N-ACTION statuses a Storage Commitment SCP gives. */
  ProcessingFailure: 0x0110,
  NoSuchSopInstance: 0x0112,
  InvalidArgumentValue: 0x0115,
  NoSuchSopClass: 0x0118,
  NoSuchAction: 0x0123,
  ResourceLimitation: 0x0213,
} as const;

/**
 * Whether a status is of the Warning class (PS3.7 Annex C: 0001, 0107, 0116 and Bxxx): the operation was
 * done, with a remark. A C-STORE sub-operation so answered counts as a warning, not a failure (PS3.4 C.4.2.3.1).
 */
export function isWarningStatus(status: number): boolean {
  return status === 0x0001 || status === 0x0107 || status === 0x0116 || (status >= 0xb000 && status <= 0xbfff);
}

const commandVr: Record<number, 'UL' | 'US' | 'UI' | 'AE' | 'LO' | 'AT'> = {
  0x00000000: 'UL',
  0x00000002: 'UI',
  0x00000003: 'UI',
  0x00000100: 'US',
  0x00000110: 'US',
  0x00000120: 'US',
  0x00000600: 'AE',
  0x00000700: 'US',
  0x00000800: 'US',
  0x00000900: 'US',
  0x00000901: 'AT',
  0x00000902: 'LO',
  0x00000903: 'US',
  0x00001000: 'UI',
  0x00001001: 'UI',
  0x00001002: 'US',
  0x00001008: 'US',
  0x00001020: 'US',
  0x00001021: 'US',
  0x00001022: 'US',
  0x00001023: 'US',
  0x00001030: 'AE',
  0x00001031: 'US',
};

export interface DimseCommand {
  commandField: number;
  messageId?: number;
  messageIdBeingRespondedTo?: number;
  affectedSopClassUid?: string;
  requestedSopClassUid?: string;
  affectedSopInstanceUid?: string;
  requestedSopInstanceUid?: string;
  priority?: number;
  hasDataSet: boolean;
  status?: number;
  errorComment?: string;
  /** Offending Element (0000,0901): the data set attributes a failure names (AT, one tag per value). */
  offendingElements?: readonly number[];
  moveDestination?: string;
  remainingSubOperations?: number;
  completedSubOperations?: number;
  failedSubOperations?: number;
  warningSubOperations?: number;
  moveOriginatorAeTitle?: string;
  moveOriginatorMessageId?: number;
  /** N-EVENT-REPORT: which event (PS3.7 10.1.1.1.8). */
  eventTypeId?: number;
  /** N-ACTION: which action (PS3.7 10.1.4.1.9). */
  actionTypeId?: number;
}

export class DimseError extends Error {
  override readonly name = 'DimseError';
  constructor(
    readonly code: 'ERR_DIMSE_MALFORMED' | 'ERR_DIMSE_MISSING_FIELD',
    message: string,
  ) {
    super(message);
  }
}

const field = {
  groupLength: 0x00000000,
  affectedSopClassUid: 0x00000002,
  requestedSopClassUid: 0x00000003,
  commandField: 0x00000100,
  messageId: 0x00000110,
  messageIdBeingRespondedTo: 0x00000120,
  moveDestination: 0x00000600,
  priority: 0x00000700,
  commandDataSetType: 0x00000800,
  status: 0x00000900,
  offendingElements: 0x00000901,
  errorComment: 0x00000902,
  affectedSopInstanceUid: 0x00001000,
  requestedSopInstanceUid: 0x00001001,
  eventTypeId: 0x00001002,
  actionTypeId: 0x00001008,
  remaining: 0x00001020,
  completed: 0x00001021,
  failed: 0x00001022,
  warning: 0x00001023,
  moveOriginatorAeTitle: 0x00001030,
  moveOriginatorMessageId: 0x00001031,
} as const;

/** Command sets are small; anything bigger is garbage, not a command. */
export const maxCommandBytes = 64 * 1024;

export function decodeCommand(bytes: Uint8Array): DimseCommand {
  if (bytes.length > maxCommandBytes) throw new DimseError('ERR_DIMSE_MALFORMED', 'command set is too large');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const values = new Map<number, string | number>();
  let offendingElements: number[] | undefined;
  let offset = 0;
  while (offset < bytes.length) {
    if (offset + 8 > bytes.length) throw new DimseError('ERR_DIMSE_MALFORMED', 'command element header truncated');
    const tag = ((view.getUint16(offset, true) << 16) | view.getUint16(offset + 2, true)) >>> 0;
    const length = view.getUint32(offset + 4, true);
    offset += 8;
    if (tag >>> 16 !== 0) throw new DimseError('ERR_DIMSE_MALFORMED', `element outside group 0000 in command set`);
    if (length > bytes.length - offset) throw new DimseError('ERR_DIMSE_MALFORMED', 'command element value truncated');
    const vr = commandVr[tag];
    if (vr === 'US') {
      if (length !== 2) throw new DimseError('ERR_DIMSE_MALFORMED', `US command element of length ${length}`);
      values.set(tag, view.getUint16(offset, true));
    } else if (vr === 'UL') {
      if (length !== 4) throw new DimseError('ERR_DIMSE_MALFORMED', `UL command element of length ${length}`);
      values.set(tag, view.getUint32(offset, true));
    } else if (vr === 'AT') {
      if (length % 4 !== 0) throw new DimseError('ERR_DIMSE_MALFORMED', `AT command element of length ${length}`);
      offendingElements = [];
      for (let at = offset; at < offset + length; at += 4) offendingElements.push(((view.getUint16(at, true) << 16) | view.getUint16(at + 2, true)) >>> 0);
    } else if (vr !== undefined) {
      values.set(tag, Buffer.from(bytes.subarray(offset, offset + length)).toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, ''));
    }
    offset += length;
  }
  const commandField = values.get(field.commandField);
  if (typeof commandField !== 'number') throw new DimseError('ERR_DIMSE_MISSING_FIELD', 'command set has no CommandField');
  const dataSetType = values.get(field.commandDataSetType);
  if (typeof dataSetType !== 'number') throw new DimseError('ERR_DIMSE_MISSING_FIELD', 'command set has no CommandDataSetType');
  const num = (tag: number) => {
    const v = values.get(tag);
    return typeof v === 'number' ? v : undefined;
  };
  const str = (tag: number) => {
    const v = values.get(tag);
    return typeof v === 'string' ? v : undefined;
  };
  return {
    commandField,
    hasDataSet: dataSetType !== NoDataSet,
    messageId: num(field.messageId),
    messageIdBeingRespondedTo: num(field.messageIdBeingRespondedTo),
    affectedSopClassUid: str(field.affectedSopClassUid),
    requestedSopClassUid: str(field.requestedSopClassUid),
    affectedSopInstanceUid: str(field.affectedSopInstanceUid),
    requestedSopInstanceUid: str(field.requestedSopInstanceUid),
    priority: num(field.priority),
    status: num(field.status),
    errorComment: str(field.errorComment),
    offendingElements,
    moveDestination: str(field.moveDestination),
    remainingSubOperations: num(field.remaining),
    completedSubOperations: num(field.completed),
    failedSubOperations: num(field.failed),
    warningSubOperations: num(field.warning),
    moveOriginatorAeTitle: str(field.moveOriginatorAeTitle),
    moveOriginatorMessageId: num(field.moveOriginatorMessageId),
    eventTypeId: num(field.eventTypeId),
    actionTypeId: num(field.actionTypeId),
  };
}

export function encodeCommand(command: DimseCommand): Uint8Array {
  const elements: Array<[number, Uint8Array]> = [];
  const putUs = (tag: number, v: number | undefined) => {
    if (v === undefined) return;
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v & 0xffff);
    elements.push([tag, b]);
  };
  const putText = (tag: number, v: string | undefined, pad: 0 | 0x20) => {
    if (v === undefined) return;
    const b = Buffer.from(v.length % 2 === 1 ? v + String.fromCharCode(pad) : v, 'latin1');
    elements.push([tag, b]);
  };
  putText(field.affectedSopClassUid, command.affectedSopClassUid, 0);
  putText(field.requestedSopClassUid, command.requestedSopClassUid, 0);
  putUs(field.commandField, command.commandField);
  putUs(field.messageId, command.messageId);
  putUs(field.messageIdBeingRespondedTo, command.messageIdBeingRespondedTo);
  putText(field.moveDestination, command.moveDestination === undefined ? undefined : command.moveDestination.padEnd(16, ' '), 0x20);
  putUs(field.priority, command.priority);
  putUs(field.commandDataSetType, command.hasDataSet ? DataSetPresent : NoDataSet);
  putUs(field.status, command.status);
  if (command.offendingElements !== undefined && command.offendingElements.length > 0) {
    // AT: each tag as its group then its element number, both little endian (PS3.5 6.2).
    const b = Buffer.alloc(4 * command.offendingElements.length);
    command.offendingElements.forEach((tag, i) => {
      b.writeUInt16LE(tag >>> 16, 4 * i);
      b.writeUInt16LE(tag & 0xffff, 4 * i + 2);
    });
    elements.push([field.offendingElements, b]);
  }
  putText(field.errorComment, command.errorComment === undefined ? undefined : errorCommentValue(command.errorComment), 0x20);
  putText(field.affectedSopInstanceUid, command.affectedSopInstanceUid, 0);
  putText(field.requestedSopInstanceUid, command.requestedSopInstanceUid, 0);
  putUs(field.eventTypeId, command.eventTypeId);
  putUs(field.actionTypeId, command.actionTypeId);
  putUs(field.remaining, command.remainingSubOperations);
  putUs(field.completed, command.completedSubOperations);
  putUs(field.failed, command.failedSubOperations);
  putUs(field.warning, command.warningSubOperations);
  putText(field.moveOriginatorAeTitle, command.moveOriginatorAeTitle, 0x20);
  putUs(field.moveOriginatorMessageId, command.moveOriginatorMessageId);
  let bodyLength = 0;
  for (const [, value] of elements) bodyLength += 8 + value.length;
  const out = Buffer.alloc(12 + bodyLength);
  let offset = 0;
  const writeHeader = (tag: number, length: number) => {
    out.writeUInt16LE(tag >>> 16, offset);
    out.writeUInt16LE(tag & 0xffff, offset + 2);
    out.writeUInt32LE(length, offset + 4);
    offset += 8;
  };
  writeHeader(field.groupLength, 4);
  out.writeUInt32LE(bodyLength, offset);
  offset += 4;
  for (const [tag, value] of elements) {
    writeHeader(tag, value.length);
    out.set(value, offset);
    offset += value.length;
  }
  return out;
}

/**
 * Error Comment is one LO value in the default repertoire (the command set has no character set): a
 * backslash from a request (`STUDY\SERIES`) would split it into two values, and other bytes would be
 * read as whatever the receiver guesses. Both become stand-ins, and the value keeps LO's 64 characters:
 * a longer text ends in "..." so that a UID cut short does not read as a whole (other) UID.
 */
export function errorCommentValue(text: string): string {
  const value = text.replace(/\\/g, '/').replace(/[^\x20-\x7e]/g, '?');
  return value.length <= errorCommentMaxChars ? value : `${value.slice(0, errorCommentMaxChars - 3)}...`;
}

/** LO's length (PS3.5 6.2). */
const errorCommentMaxChars = 64;

/** The response command field for a request command field (bit 15 set, PS3.7 E.1). */
export function responseFieldFor(requestField: number): number {
  return requestField | 0x8000;
}

/** Whether a command field is a response's (bit 15 set, PS3.7 E.1). */
export function isResponseField(commandField: number): boolean {
  return (commandField & 0x8000) !== 0;
}

export function isPendingStatus(status: number): boolean {
  return status === Status.Pending || status === Status.PendingWarning;
}
