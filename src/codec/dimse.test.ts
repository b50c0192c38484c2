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
