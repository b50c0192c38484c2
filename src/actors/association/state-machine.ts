/**
 * The DICOM Upper Layer association state machine of PS3.8 section 9.2 (states Sta1-Sta13, events
 * Evt1-Evt19, actions AE/DT/AR/AA), as a pure reducer: `step(state, event) -> { state, effects }`.
 * The caller owns the socket and the ARTIM timer and carries out the effects in order.
 */
import {
  AbortReason,
  AbortSource,
  RejectReason,
  RejectResult,
  RejectSource,
  type AssociateAcPdu,
  type AssociateRjPdu,
  type AssociateRqPdu,
  type PDataPdu,
  type Pdu,
} from '../../codec/pdu.ts';

export type UlState =
  | 'Sta1' // idle
  | 'Sta2' // transport open, awaiting A-ASSOCIATE-RQ
  | 'Sta3' // awaiting local A-ASSOCIATE response
  | 'Sta4' // awaiting transport connect to complete
  | 'Sta5' // awaiting A-ASSOCIATE-AC or -RJ
  | 'Sta6' // established
  | 'Sta7' // awaiting A-RELEASE-RP
  | 'Sta8' // awaiting local A-RELEASE response
  | 'Sta9' // release collision, requestor: awaiting local A-RELEASE response
  | 'Sta10' // release collision, acceptor: awaiting A-RELEASE-RP
  | 'Sta11' // release collision, requestor: awaiting A-RELEASE-RP
  | 'Sta12' // release collision, acceptor: awaiting local A-RELEASE response
  | 'Sta13'; // awaiting transport close

export interface UlMachine {
  state: UlState;
  /** Whether this end sent the A-ASSOCIATE-RQ; decides the release-collision branch (AR-8). */
  isRequestor: boolean;
  /** The A-ASSOCIATE-RQ to send once the transport is connected (AE-2). */
  pendingRq?: AssociateRqPdu;
}

/** Events of PS3.8 table 9-10. Local primitives come from our code; PDU events from the framer. */
export type UlEvent =
  | { type: 'associateRequest'; rq: AssociateRqPdu } // Evt1
  | { type: 'transportConnected' } // Evt2
  | { type: 'pduReceived'; pdu: Pdu } // Evt3, 4, 6, 10, 12, 13, 16
  | { type: 'transportIndication' } // Evt5
  | { type: 'associateAccept'; ac: AssociateAcPdu } // Evt7
  | { type: 'associateReject'; rj: AssociateRjPdu } // Evt8
  | { type: 'pDataRequest'; pdu: PDataPdu | Uint8Array } // Evt9 (pre-encoded bytes allowed on the hot path)
  | { type: 'releaseRequest' } // Evt11
  | { type: 'releaseResponse' } // Evt14
  | { type: 'abortRequest'; reason?: number } // Evt15
  | { type: 'transportClosed' } // Evt17
  | { type: 'artimExpired' } // Evt18
  | { type: 'invalidPdu'; reason: number; detail: string }; // Evt19

export type UlIndication =
  | { type: 'associateRequested'; rq: AssociateRqPdu }
  | { type: 'associateAccepted'; ac: AssociateAcPdu }
  | { type: 'associateRejected'; rj: AssociateRjPdu }
  | { type: 'pData'; pdu: PDataPdu }
  | { type: 'releaseRequested' }
  | { type: 'releaseConfirmed' }
  | { type: 'aborted'; source: number; reason: number }
  | { type: 'providerAborted'; detail: string };

export type UlEffect =
  | { type: 'connectTransport' }
  | { type: 'sendPdu'; pdu: Pdu | Uint8Array }
  | { type: 'startArtim' }
  | { type: 'stopArtim' }
  | { type: 'closeTransport' }
  | { type: 'indicate'; indication: UlIndication }
  /** A local primitive that the current state does not allow: a bug in our code, reported, not acted on. */
  | { type: 'primitiveRefused'; event: UlEvent['type']; state: UlState };

export interface UlStep {
  machine: UlMachine;
  effects: UlEffect[];
}

export function initialMachine(isRequestor: boolean): UlMachine {
  return { state: 'Sta1', isRequestor };
}

const providerAbort = (reason: number): Pdu => ({ type: 'abort', source: AbortSource.ServiceProvider, reason });

/** Protocol version bit 0 is the only one defined (PS3.8 9.3.2). */
function protocolVersionSupported(rq: AssociateRqPdu): boolean {
  return (rq.protocolVersion & 1) === 1;
}

export function step(machine: UlMachine, event: UlEvent): UlStep {
  const s = machine.state;
  const to = (state: UlState, ...effects: UlEffect[]): UlStep => ({ machine: { ...machine, state }, effects });
  // AA-8: send A-ABORT (provider), indicate A-P-ABORT, start ARTIM.
  const aa8 = (detail: string, reason: number = AbortReason.UnexpectedPdu): UlStep =>
    to(
      'Sta13',
      { type: 'sendPdu', pdu: providerAbort(reason) },
      { type: 'indicate', indication: { type: 'providerAborted', detail } },
      { type: 'startArtim' },
    );
  // AA-1 (Sta2: a PDU other than a valid A-ASSOCIATE-RQ): PS3.8 Table 9-10 sends the A-ABORT with
  // service-user source, whose reason is not significant (0), and (re)starts ARTIM.
  const aa1 = (): UlStep =>
    to('Sta13', { type: 'sendPdu', pdu: { type: 'abort', source: AbortSource.ServiceUser, reason: AbortReason.NotSpecified } }, { type: 'startArtim' });
  const refused = (): UlStep => ({ machine, effects: [{ type: 'primitiveRefused', event: event.type, state: s }] });
  const established = (st: UlState) => st === 'Sta6' || st === 'Sta7' || st === 'Sta8' || st === 'Sta9' || st === 'Sta10' || st === 'Sta11' || st === 'Sta12';

  switch (event.type) {
    case 'associateRequest':
      if (s !== 'Sta1') return refused();
      return { machine: { ...machine, state: 'Sta4', isRequestor: true, pendingRq: event.rq }, effects: [{ type: 'connectTransport' }] };
    case 'transportConnected':
      if (s !== 'Sta4' || !machine.pendingRq) return refused();
      return { machine: { state: 'Sta5', isRequestor: true }, effects: [{ type: 'sendPdu', pdu: machine.pendingRq }] };
    case 'transportIndication':
      return s === 'Sta1' ? to('Sta2', { type: 'startArtim' }) : refused();
    case 'associateAccept':
      return s === 'Sta3' ? to('Sta6', { type: 'sendPdu', pdu: event.ac }) : refused();
    case 'associateReject':
      return s === 'Sta3' ? to('Sta13', { type: 'sendPdu', pdu: event.rj }, { type: 'startArtim' }) : refused();
    case 'pDataRequest':
      if (s === 'Sta6' || s === 'Sta8') return to(s, { type: 'sendPdu', pdu: event.pdu });
      return refused();
    case 'releaseRequest':
      return s === 'Sta6' ? to('Sta7', { type: 'sendPdu', pdu: { type: 'releaseRq' } }) : refused();
    case 'releaseResponse':
      if (s === 'Sta8' || s === 'Sta12') return to('Sta13', { type: 'sendPdu', pdu: { type: 'releaseRp' } }, { type: 'startArtim' });
      if (s === 'Sta9') return to('Sta11', { type: 'sendPdu', pdu: { type: 'releaseRp' } });
      return refused();
    case 'abortRequest':
      if (s === 'Sta4') return to('Sta1', { type: 'closeTransport' });
      if (s === 'Sta3' || s === 'Sta5' || established(s)) {
        return to(
          'Sta13',
          { type: 'sendPdu', pdu: { type: 'abort', source: AbortSource.ServiceUser, reason: event.reason ?? AbortReason.NotSpecified } },
          { type: 'startArtim' },
        );
      }
      return refused();
    case 'transportClosed':
      if (s === 'Sta1') return to('Sta1');
      if (s === 'Sta2') return to('Sta1', { type: 'stopArtim' }); // AA-5
      if (s === 'Sta13') return to('Sta1', { type: 'stopArtim' }); // AR-5
      // AA-4: the peer vanished without a proper close.
      return to('Sta1', { type: 'stopArtim' }, { type: 'indicate', indication: { type: 'providerAborted', detail: 'transport connection closed' } });
    case 'artimExpired':
      if (s === 'Sta2' || s === 'Sta13') return to('Sta1', { type: 'closeTransport' }); // AA-2
      return to(s);
    case 'invalidPdu':
      if (s === 'Sta2') return aa1();
      if (s === 'Sta13') return to('Sta13'); // AA-7 would answer an abort; the transport is closing anyway
      if (s === 'Sta1' || s === 'Sta4') return to(s);
      return aa8(event.detail, event.reason);
    case 'pduReceived':
      return onPdu(machine, event.pdu, to, aa1, aa8);
    default: {
      const unreachable: never = event;
      throw new Error(`unhandled event ${JSON.stringify(unreachable)}`);
    }
  }
}

function onPdu(
  machine: UlMachine,
  pdu: Pdu,
  to: (state: UlState, ...effects: UlEffect[]) => UlStep,
  aa1: () => UlStep,
  aa8: (detail: string, reason?: number) => UlStep,
): UlStep {
  const s = machine.state;
  const unexpected = () => {
    if (s === 'Sta2') return aa1();
    if (s === 'Sta13') return to('Sta13'); // AA-6: ignore
    return aa8(`unexpected ${pdu.type} PDU in ${s}`);
  };
  switch (pdu.type) {
    case 'associateRq':
      if (s === 'Sta2') {
        if (!protocolVersionSupported(pdu)) {
          const rj: AssociateRjPdu = {
            type: 'associateRj',
            result: RejectResult.Permanent,
            source: RejectSource.ServiceProviderAcse,
            reason: RejectReason.ProtocolVersionNotSupported,
          };
          return to('Sta13', { type: 'stopArtim' }, { type: 'sendPdu', pdu: rj }, { type: 'startArtim' });
        }
        return to('Sta3', { type: 'stopArtim' }, { type: 'indicate', indication: { type: 'associateRequested', rq: pdu } });
      }
      if (s === 'Sta13') return to('Sta13', { type: 'sendPdu', pdu: providerAbort(AbortReason.UnexpectedPdu) }); // AA-7
      return unexpected();
    case 'associateAc':
      if (s === 'Sta5') return to('Sta6', { type: 'indicate', indication: { type: 'associateAccepted', ac: pdu } });
      return unexpected();
    case 'associateRj':
      if (s === 'Sta5') return to('Sta1', { type: 'indicate', indication: { type: 'associateRejected', rj: pdu } }, { type: 'closeTransport' });
      return unexpected();
    case 'pData':
      if (s === 'Sta6' || s === 'Sta7') return to(s, { type: 'indicate', indication: { type: 'pData', pdu } }); // DT-2, AR-6
      return unexpected();
    case 'releaseRq':
      if (s === 'Sta6') return to('Sta8', { type: 'indicate', indication: { type: 'releaseRequested' } }); // AR-2
      if (s === 'Sta7') {
        // AR-8: release collision.
        return to(machine.isRequestor ? 'Sta9' : 'Sta10', { type: 'indicate', indication: { type: 'releaseRequested' } });
      }
      return unexpected();
    case 'releaseRp':
      if (s === 'Sta7' || s === 'Sta11') {
        return to('Sta1', { type: 'indicate', indication: { type: 'releaseConfirmed' } }, { type: 'closeTransport' }); // AR-3
      }
      if (s === 'Sta10') return to('Sta12', { type: 'indicate', indication: { type: 'releaseConfirmed' } }); // AR-10
      return unexpected();
    case 'abort':
      if (s === 'Sta2' || s === 'Sta13') return to('Sta1', { type: 'stopArtim' }, { type: 'closeTransport' }); // AA-2
      if (s === 'Sta1' || s === 'Sta4') return to(s);
      return to(
        'Sta1',
        { type: 'indicate', indication: { type: 'aborted', source: pdu.source, reason: pdu.reason } },
        { type: 'closeTransport' },
      ); // AA-3
    default: {
      const unreachable: never = pdu;
      throw new Error(`unhandled PDU ${JSON.stringify(unreachable)}`);
    }
  }
}
