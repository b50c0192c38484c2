import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CommandField, Status, decodeCommand, encodeCommand, errorCommentValue } from './dimse.ts';

test('a response command round-trips, its error comment one 64-character LO value in the default repertoire', () => {
  const comment = 'missing or invalid QueryRetrieveLevel "STUDY\\SERIES" from Müller, and then some more text';
  const decoded = decodeCommand(
    encodeCommand({ commandField: 0x8020, messageIdBeingRespondedTo: 7, hasDataSet: false, status: Status.IdentifierDoesNotMatchSopClass, errorComment: comment }),
  );
  assert.equal(decoded.commandField, 0x8020);
  assert.equal(decoded.messageIdBeingRespondedTo, 7);
  assert.equal(decoded.status, Status.IdentifierDoesNotMatchSopClass);
  assert.equal(decoded.errorComment, 'missing or invalid QueryRetrieveLevel "STUDY/SERIES" from M?l...');
  assert.equal(decoded.errorComment!.length, 64, 'cut to LO length, the cut shown');
  assert.equal(errorCommentValue('x'.repeat(64)), 'x'.repeat(64), 'a text of 64 characters is kept whole');
  assert.ok(!decoded.errorComment!.includes('\\'), 'one value, not two');
  assert.equal(errorCommentValue('plain'), 'plain');
  assert.equal(CommandField.CFindRq, 0x0020);
});

test('Offending Element (0000,0901) round-trips as AT values, group then element; a command without it decodes none', () => {
  const tags = [0x00080052, 0x0020000d];
  const encoded = encodeCommand({ commandField: 0x8020, messageIdBeingRespondedTo: 2, hasDataSet: false, status: 0xa900, offendingElements: tags });
  assert.deepEqual(decodeCommand(encoded).offendingElements, tags);
  // The AT value's bytes: (0008,0052) then (0020,000D), each group and element little endian.
  const at = Buffer.from(encoded).indexOf(Buffer.from([0x00, 0x00, 0x01, 0x09, 0x08, 0x00, 0x00, 0x00]));
  assert.ok(at >= 0, 'tag (0000,0901) with length 8');
  assert.deepEqual([...encoded.subarray(at + 8, at + 16)], [0x08, 0x00, 0x52, 0x00, 0x20, 0x00, 0x0d, 0x00]);
  assert.equal(decodeCommand(encodeCommand({ commandField: 0x8020, hasDataSet: false, status: 0 })).offendingElements, undefined);
  const torn = Buffer.from(encodeCommand({ commandField: 0x8020, hasDataSet: false, status: 0xa900, offendingElements: [0x00080052] }));
  torn.writeUInt32LE(3, torn.indexOf(Buffer.from([0x00, 0x00, 0x01, 0x09])) + 4);
  assert.throws(() => decodeCommand(torn), /AT command element of length 3|truncated/);
});

test('CommandDataSetType (0000,0800) is 0001H when a data set follows, 0101H when none does (gdcmscu aborted on a C-MOVE response saying 0000H, which PS3.7 E.1 allows; hunt 160)', () => {
  const dataSetType = (hasDataSet: boolean) => {
    const bytes = Buffer.from(encodeCommand({ commandField: CommandField.CMoveRsp, messageIdBeingRespondedTo: 1, hasDataSet, status: 0xa702 }));
    // Implicit VR LE elements: tag, 4-byte length, value; (0000,0800) is a US.
    for (let offset = 0; offset < bytes.length; offset += 8 + bytes.readUInt32LE(offset + 4)) {
      if (bytes.readUInt16LE(offset) === 0 && bytes.readUInt16LE(offset + 2) === 0x0800) return bytes.readUInt16LE(offset + 8);
    }
    return undefined;
  };
  assert.equal(dataSetType(true), 0x0001);
  assert.equal(dataSetType(false), 0x0101);
  assert.equal(decodeCommand(encodeCommand({ commandField: CommandField.CMoveRsp, hasDataSet: true, status: 0xa702 })).hasDataSet, true);
});
