import { test } from 'node:test';
import assert from 'node:assert/strict';
import { contextsReceiverReads, isGdcm } from './destination-quirks.ts';

const ct = '1.2.840.10008.5.1.4.1.1.2';
const mr = '1.2.840.10008.5.1.4.1.1.4';
const explicitLe = '1.2.840.10008.1.2.1';
const implicitLe = '1.2.840.10008.1.2';
const gdcm = { classUid: '1.2.826.0.1.3680043.2.1143.107.104.103.115.3.0.21', versionName: 'GDCM 3.0.21' };
const dcmtk = { classUid: '1.2.276.0.7230010.3.0.3.6.7', versionName: 'OFFIS_DCMTK_367' };

// What gdcmscu 3.0.21 accepted of a C-MOVE's proposal (a CT stored in explicit VR LE, an MR in implicit):
// each context in implicit VR LE when proposed, else explicit; the compressed ones refused.
const acceptedByGdcm = [
  { id: 1, abstractSyntaxUid: ct, transferSyntaxUid: explicitLe },
  { id: 3, abstractSyntaxUid: ct, transferSyntaxUid: implicitLe },
  { id: 7, abstractSyntaxUid: mr, transferSyntaxUid: implicitLe },
  { id: 9, abstractSyntaxUid: mr, transferSyntaxUid: implicitLe },
];

test('GDCM is known by its Implementation Class UID root, or its Version Name', () => {
  assert.equal(isGdcm(gdcm), true);
  assert.equal(isGdcm({ classUid: '1.2.826.0.1.3680043.2.1143.107.104.103.115.2.8.4' }), true);
  assert.equal(isGdcm({ classUid: '1.2.3', versionName: 'GDCM 3.2.0' }), true);
  assert.equal(isGdcm(dcmtk), false);
  // Other software under the same registered root (1.2.826.0.1.3680043.2.1143) is not GDCM's network code.
  assert.equal(isGdcm({ classUid: '1.2.826.0.1.3680043.2.1143.1' }), false);
  assert.equal(isGdcm(undefined), false);
});

test('a GDCM receiver is sent only on contexts of the syntax of the last one it accepted; any other receiver on all', () => {
  assert.deepEqual(contextsReceiverReads(acceptedByGdcm, gdcm).map((c) => c.id), [3, 7, 9]);
  assert.deepEqual(contextsReceiverReads(acceptedByGdcm, dcmtk), acceptedByGdcm);
  assert.deepEqual(contextsReceiverReads(acceptedByGdcm, undefined), acceptedByGdcm);
  // Last by context ID (the order of our proposal), whatever order the A-ASSOCIATE-AC listed them in.
  const onlyExplicitLast = [{ id: 5, abstractSyntaxUid: mr, transferSyntaxUid: explicitLe }, { id: 3, abstractSyntaxUid: ct, transferSyntaxUid: implicitLe }];
  assert.deepEqual(contextsReceiverReads(onlyExplicitLast, gdcm).map((c) => c.id), [5]);
  assert.deepEqual(contextsReceiverReads([], gdcm), []);
});
