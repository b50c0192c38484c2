import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initialMachine, step, type UlEffect, type UlEvent, type UlMachine } from './state-machine.ts';
import { DicomApplicationContext, type AssociateAcPdu, type AssociateRqPdu } from '../../codec/pdu.ts';

const rq: AssociateRqPdu = {
  type: 'associateRq',
  protocolVersion: 1,
  calledAeTitle: 'A',
  callingAeTitle: 'B',
  applicationContextName: DicomApplicationContext,
  presentationContexts: [],
  userInformation: { maxPduLength: 16384, implementationClassUid: '1.2', roleSelections: [] },
};
const ac: AssociateAcPdu = { ...rq, type: 'associateAc', presentationContexts: [] };

function run(machine: UlMachine, ...events: UlEvent[]): { machine: UlMachine; effects: UlEffect[] } {
  let effects: UlEffect[] = [];
  for (const event of events) {
    const next = step(machine, event);
    machine = next.machine;
    effects = next.effects;
  }
  return { machine, effects };
}

const kinds = (effects: UlEffect[]) =>
  effects.map((e) => (e.type === 'sendPdu' ? `send:${e.pdu instanceof Uint8Array ? 'bytes' : e.pdu.type}` : e.type === 'indicate' ? `indicate:${e.indication.type}` : e.type));

test('acceptor: transport open -> A-ASSOCIATE-RQ -> accept -> data -> release (Sta1-2-3-6-8-13-1)', () => {
  let m = initialMachine(false);
  let r = run(m, { type: 'transportIndication' });
  assert.equal(r.machine.state, 'Sta2');
  assert.deepEqual(kinds(r.effects), ['startArtim']); // AE-5
  r = run(r.machine, { type: 'pduReceived', pdu: rq });
  assert.equal(r.machine.state, 'Sta3');
  assert.deepEqual(kinds(r.effects), ['stopArtim', 'indicate:associateRequested']); // AE-6
  r = run(r.machine, { type: 'associateAccept', ac });
  assert.equal(r.machine.state, 'Sta6');
  assert.deepEqual(kinds(r.effects), ['send:associateAc']); // AE-7
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'pData', values: [] } });
  assert.deepEqual(kinds(r.effects), ['indicate:pData']); // DT-2
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'releaseRq' } });
  assert.equal(r.machine.state, 'Sta8'); // AR-2
  r = run(r.machine, { type: 'releaseResponse' });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['send:releaseRp', 'startArtim']); // AR-4
  r = run(r.machine, { type: 'transportClosed' });
  assert.equal(r.machine.state, 'Sta1'); // AR-5
  m = r.machine;
  assert.equal(m.state, 'Sta1');
});

test('acceptor: rejecting an association ends in Sta13 and ARTIM closes it', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateReject', rj: { type: 'associateRj', result: 1, source: 1, reason: 7 } });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['send:associateRj', 'startArtim']); // AE-8
  const expired = step(r.machine, { type: 'artimExpired' });
  assert.equal(expired.machine.state, 'Sta1');
  assert.deepEqual(kinds(expired.effects), ['closeTransport']); // AA-2
});

test('acceptor: an unsupported protocol version is rejected by the provider', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: { ...rq, protocolVersion: 2 } });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['stopArtim', 'send:associateRj', 'startArtim']);
});

test('Sta2: silence until ARTIM expires closes the transport', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'artimExpired' });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['closeTransport']);
});

test('unexpected PDUs: before association (AA-1) and during it (AA-8)', () => {
  let r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: { type: 'pData', values: [] } });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['send:abort', 'startArtim']);
  // AA-1 is a service-user abort (PS3.8 Table 9-10), its reason not significant; AA-8 below is the provider's.
  assert.deepEqual(r.effects[0], { type: 'sendPdu', pdu: { type: 'abort', source: 0, reason: 0 } });
  const invalid = run(initialMachine(false), { type: 'transportIndication' }, { type: 'invalidPdu', reason: 1, detail: 'x' });
  assert.deepEqual(invalid.effects, [{ type: 'sendPdu', pdu: { type: 'abort', source: 0, reason: 0 } }, { type: 'startArtim' }]);
  r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'pduReceived', pdu: rq });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['send:abort', 'indicate:providerAborted', 'startArtim']);
});

test('invalid PDU while established: A-ABORT from the provider (AA-8)', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'invalidPdu', reason: 6, detail: 'x' });
  assert.equal(r.machine.state, 'Sta13');
  assert.deepEqual(kinds(r.effects), ['send:abort', 'indicate:providerAborted', 'startArtim']);
});

test('A-ABORT received while established: indicate and close (AA-3)', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'pduReceived', pdu: { type: 'abort', source: 0, reason: 0 } });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['indicate:aborted', 'closeTransport']);
});

test('transport lost while established: provider abort indication (AA-4)', () => {
  const r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'transportClosed' });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['stopArtim', 'indicate:providerAborted']);
});

test('requestor: connect, A-ASSOCIATE-AC, release (Sta1-4-5-6-7-1)', () => {
  let r = run(initialMachine(true), { type: 'associateRequest', rq });
  assert.equal(r.machine.state, 'Sta4');
  assert.deepEqual(kinds(r.effects), ['connectTransport']); // AE-1
  r = run(r.machine, { type: 'transportConnected' });
  assert.equal(r.machine.state, 'Sta5');
  assert.deepEqual(kinds(r.effects), ['send:associateRq']); // AE-2
  r = run(r.machine, { type: 'pduReceived', pdu: ac });
  assert.equal(r.machine.state, 'Sta6'); // AE-3
  r = run(r.machine, { type: 'pDataRequest', pdu: new Uint8Array(4) });
  assert.deepEqual(kinds(r.effects), ['send:bytes']); // DT-1
  r = run(r.machine, { type: 'releaseRequest' });
  assert.equal(r.machine.state, 'Sta7'); // AR-1
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'pData', values: [] } });
  assert.equal(r.machine.state, 'Sta7'); // AR-6: data may still arrive
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'releaseRp' } });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['indicate:releaseConfirmed', 'closeTransport']); // AR-3
});

test('requestor: A-ASSOCIATE-RJ closes the transport (AE-4)', () => {
  const r = run(initialMachine(true), { type: 'associateRequest', rq }, { type: 'transportConnected' }, { type: 'pduReceived', pdu: { type: 'associateRj', result: 1, source: 1, reason: 3 } });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['indicate:associateRejected', 'closeTransport']);
});

test('release collision, both roles (AR-8, AR-9, AR-10, AR-3, AR-4)', () => {
  // Requestor side: Sta7 -> Sta9 -> Sta11 -> Sta1
  let r = run(initialMachine(true), { type: 'associateRequest', rq }, { type: 'transportConnected' }, { type: 'pduReceived', pdu: ac }, { type: 'releaseRequest' }, { type: 'pduReceived', pdu: { type: 'releaseRq' } });
  assert.equal(r.machine.state, 'Sta9');
  r = run(r.machine, { type: 'releaseResponse' });
  assert.equal(r.machine.state, 'Sta11');
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'releaseRp' } });
  assert.equal(r.machine.state, 'Sta1');
  // Acceptor side: Sta7 -> Sta10 -> Sta12 -> Sta13
  r = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'releaseRequest' }, { type: 'pduReceived', pdu: { type: 'releaseRq' } });
  assert.equal(r.machine.state, 'Sta10');
  r = run(r.machine, { type: 'pduReceived', pdu: { type: 'releaseRp' } });
  assert.equal(r.machine.state, 'Sta12');
  r = run(r.machine, { type: 'releaseResponse' });
  assert.equal(r.machine.state, 'Sta13');
});

test('local primitives in the wrong state are refused, not acted on', () => {
  const r = step(initialMachine(false), { type: 'pDataRequest', pdu: new Uint8Array(1) });
  assert.equal(r.machine.state, 'Sta1');
  assert.deepEqual(kinds(r.effects), ['primitiveRefused']);
  const afterAbort = run(initialMachine(false), { type: 'transportIndication' }, { type: 'pduReceived', pdu: rq }, { type: 'associateAccept', ac }, { type: 'abortRequest' }, { type: 'pDataRequest', pdu: new Uint8Array(1) });
  assert.equal(afterAbort.machine.state, 'Sta13');
  assert.deepEqual(kinds(afterAbort.effects), ['primitiveRefused']);
});

test('Sta13 ignores late PDUs (AA-6) and answers a new A-ASSOCIATE-RQ with A-ABORT (AA-7)', () => {
  const inSta13 = run(initialMachine(false), { type: 'transportIndication' }, { type: 'artimExpired' }).machine;
  const closing: UlMachine = { ...inSta13, state: 'Sta13' };
  assert.deepEqual(kinds(step(closing, { type: 'pduReceived', pdu: { type: 'pData', values: [] } }).effects), []);
  assert.deepEqual(kinds(step(closing, { type: 'pduReceived', pdu: rq }).effects), ['send:abort']);
});
