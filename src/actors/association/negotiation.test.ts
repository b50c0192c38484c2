import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DicomApplicationContext, type AssociateRqPdu } from '../../codec/pdu.ts';
import { negotiate, SopClass } from './negotiation.ts';

const ct = '1.2.840.10008.5.1.4.1.1.2';
const mr = '1.2.840.10008.5.1.4.1.1.4';
const explicitLe = '1.2.840.10008.1.2.1';
const config = { aeTitle: 'PACSMESH', maxPduLength: 262144, implementationClassUid: '1.2.3', implementationVersionName: 'TEST' };

function request(presentationContexts: AssociateRqPdu['presentationContexts'], roleSelections: AssociateRqPdu['userInformation']['roleSelections'] = []): AssociateRqPdu {
  return {
    type: 'associateRq',
    protocolVersion: 1,
    calledAeTitle: 'PACSMESH',
    callingAeTitle: 'VIEWER',
    applicationContextName: DicomApplicationContext,
    presentationContexts,
    userInformation: { maxPduLength: 16384, implementationClassUid: '1.2.3.4', roleSelections },
  };
}

test('a repeated presentation context ID is answered once (the first proposal), an even one as rejected', () => {
  const result = negotiate(
    request([
      { id: 1, abstractSyntaxUid: SopClass.Verification, transferSyntaxUids: [explicitLe] },
      { id: 1, abstractSyntaxUid: ct, transferSyntaxUids: [explicitLe] },
      { id: 2, abstractSyntaxUid: ct, transferSyntaxUids: [explicitLe] },
      { id: 3, abstractSyntaxUid: ct, transferSyntaxUids: [explicitLe] },
    ]),
    config,
  );
  assert.equal(result.outcome, 'accept');
  if (result.outcome !== 'accept') return;
  assert.deepEqual(result.ac.presentationContexts.map((pc) => [pc.id, pc.result]), [[1, 0], [2, 2], [3, 0]]);
  assert.deepEqual([...result.contexts.values()].map((c) => [c.id, c.service]), [[1, 'verification'], [3, 'storage']]);
});

test('role selections are answered only for storage classes of an accepted context', () => {
  const result = negotiate(
    request(
      [
        { id: 1, abstractSyntaxUid: SopClass.StudyRootGet, transferSyntaxUids: [explicitLe] },
        { id: 3, abstractSyntaxUid: ct, transferSyntaxUids: [explicitLe] },
      ],
      [
        { sopClassUid: ct, scuRole: false, scpRole: true },
        { sopClassUid: mr, scuRole: false, scpRole: true },
      ],
    ),
    config,
  );
  assert.equal(result.outcome, 'accept');
  if (result.outcome !== 'accept') return;
  assert.deepEqual(result.ac.userInformation.roleSelections, [{ sopClassUid: ct, scuRole: false, scpRole: true }]);
  assert.equal(result.contexts.get(3)?.requestorIsScp, true);
});

test('storage classes: every UID under the storage root, and the patient-level ones PS3.4 B.5 lists outside it', () => {
  const result = negotiate(
    request([
      { id: 1, abstractSyntaxUid: ct, transferSyntaxUids: [explicitLe] },
      { id: 3, abstractSyntaxUid: '1.2.840.10008.5.1.4.34.7', transferSyntaxUids: [explicitLe] }, // RT Beams Delivery Instruction
      { id: 5, abstractSyntaxUid: '1.2.840.10008.5.1.4.34.10', transferSyntaxUids: [explicitLe] }, // RT Brachy Application Setup Delivery Instruction
      { id: 7, abstractSyntaxUid: '1.2.840.10008.5.1.4.38.1', transferSyntaxUids: [explicitLe] }, // Hanging Protocol: no patient, no study
      // Not UIDs (helper 66: accepted as storage classes): a trailing dot, an empty component.
      { id: 9, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.', transferSyntaxUids: [explicitLe] },
      { id: 11, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1..2', transferSyntaxUids: [explicitLe] },
      // Under the root but with no patient's study (hunt 195: accepted, then every C-STORE 0xC001), or no storage class.
      { id: 13, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.200.1', transferSyntaxUids: [explicitLe] }, // CT Defined Procedure Protocol
      { id: 15, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.201.1', transferSyntaxUids: [explicitLe] }, // Inventory
      { id: 17, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.201.2', transferSyntaxUids: [explicitLe] }, // Inventory FIND
      // A performed protocol belongs to a patient's study; a class not known yet is taken.
      { id: 19, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.200.2', transferSyntaxUids: [explicitLe] }, // CT Performed Procedure Protocol
      { id: 21, abstractSyntaxUid: '1.2.840.10008.5.1.4.1.1.9999', transferSyntaxUids: [explicitLe] },
    ]),
    config,
  );
  assert.equal(result.outcome, 'accept');
  if (result.outcome !== 'accept') return;
  assert.deepEqual(result.ac.presentationContexts.map((pc) => [pc.id, pc.result]), [[1, 0], [3, 0], [5, 0], [7, 3], [9, 3], [11, 3], [13, 3], [15, 3], [17, 3], [19, 0], [21, 0]]);
});

test('storage contexts take the encapsulated syntaxes PS3.6 defines, fragmentable MPEG included, and no other number under 1.2.840.10008.1.2.4 (hunt 195)', () => {
  const syntaxes = ['1.2.840.10008.1.2.4.1000', '1.2.840.10008.1.2.4.050', '1.2.840.10008.1.2.4.999999999999999999999', '1.2.840.10008.1.2.4.67', '1.2.840.10008.1.2.4.107.1', '1.2.840.10008.1.2.4.100.1', '1.2.840.10008.1.2.4.106.1', '1.2.840.10008.1.2.4.70', '1.2.840.10008.1.2.4.203', '1.2.840.10008.1.2.5'];
  const result = negotiate(request(syntaxes.map((syntax, i) => ({ id: 2 * i + 1, abstractSyntaxUid: ct, transferSyntaxUids: [syntax] }))), config);
  assert.equal(result.outcome, 'accept');
  if (result.outcome !== 'accept') return;
  assert.deepEqual(result.ac.presentationContexts.map((pc) => pc.result), [4, 4, 4, 4, 4, 0, 0, 0, 0, 0]);
});
