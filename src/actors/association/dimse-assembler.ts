/**
 * Turns the PDVs of P-DATA-TF PDUs into DIMSE messages (PS3.7 section 8, PS3.8 annex E): a command set,
 * then, when the command says so, a data set whose fragments are handed on as they arrive so that a
 * large instance never has to be held in memory.
 */
import { decodeCommand, maxCommandBytes, type DimseCommand } from '../../codec/dimse.ts';
import type { PresentationDataValue } from '../../codec/pdu.ts';

export type DimseEvent =
  | { type: 'command'; presentationContextId: number; command: DimseCommand }
  | { type: 'dataFragment'; presentationContextId: number; data: Uint8Array; isLast: boolean };

export class DimseProtocolError extends Error {
  override readonly name = 'DimseProtocolError';
  constructor(
    readonly code: 'ERR_DIMSE_SEQUENCE' | 'ERR_DIMSE_COMMAND_TOO_LARGE' | 'ERR_DIMSE_CONTEXT' | 'ERR_DIMSE_UNEXPECTED_RESPONSE',
    message: string,
  ) {
    super(message);
  }
}

type AssemblerState =
  | { phase: 'idle' }
  | { phase: 'command'; presentationContextId: number; parts: Uint8Array[]; bytes: number }
  | { phase: 'data'; presentationContextId: number };

export class DimseAssembler {
  private state: AssemblerState = { phase: 'idle' };

  constructor(private readonly isKnownContext: (presentationContextId: number) => boolean) {}

  /** True while a data set is expected or arriving. */
  get inDataSet(): boolean {
    return this.state.phase === 'data';
  }

  /** Consumes one PDV; returns the events it completes. Throws DimseProtocolError on a broken sequence. */
  push(pdv: PresentationDataValue): DimseEvent[] {
    if (!this.isKnownContext(pdv.presentationContextId)) {
      throw new DimseProtocolError('ERR_DIMSE_CONTEXT', `PDV on presentation context ${pdv.presentationContextId}, which was not accepted`);
    }
    const state = this.state;
    if (pdv.isCommand) {
      if (state.phase === 'data') throw new DimseProtocolError('ERR_DIMSE_SEQUENCE', 'command fragment while a data set was expected');
      if (state.phase === 'command' && state.presentationContextId !== pdv.presentationContextId) {
        throw new DimseProtocolError('ERR_DIMSE_SEQUENCE', 'command fragments on two presentation contexts');
      }
      const parts = state.phase === 'command' ? state.parts : [];
      const bytes = (state.phase === 'command' ? state.bytes : 0) + pdv.data.length;
      if (bytes > maxCommandBytes) throw new DimseProtocolError('ERR_DIMSE_COMMAND_TOO_LARGE', `command set over ${maxCommandBytes} bytes`);
      // Empty fragments add nothing, and kept they would grow the list without bound under the byte limit (hunt 79).
      if (pdv.data.length > 0) parts.push(Uint8Array.from(pdv.data));
      if (!pdv.isLast) {
        this.state = { phase: 'command', presentationContextId: pdv.presentationContextId, parts, bytes };
        return [];
      }
      const command = decodeCommand(parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes));
      this.state = command.hasDataSet ? { phase: 'data', presentationContextId: pdv.presentationContextId } : { phase: 'idle' };
      return [{ type: 'command', presentationContextId: pdv.presentationContextId, command }];
    }
    if (state.phase !== 'data') throw new DimseProtocolError('ERR_DIMSE_SEQUENCE', 'data set fragment without a command announcing it');
    if (state.presentationContextId !== pdv.presentationContextId) {
      throw new DimseProtocolError('ERR_DIMSE_SEQUENCE', 'data set on a different presentation context than its command');
    }
    if (pdv.isLast) this.state = { phase: 'idle' };
    return [{ type: 'dataFragment', presentationContextId: pdv.presentationContextId, data: pdv.data, isLast: pdv.isLast }];
  }
}
