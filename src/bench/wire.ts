// How a bench initiator and its target talk outside the fabric: the target's hello (metadata blob, pool
// region, machine) and the initiator's "done". Over IPC when the target is a forked child; over a TCP
// socket with 4-byte big-endian length-prefixed JSON frames when it runs on another host (--listen).
import type { Socket } from 'node:net';

import type { MachineDescription } from './machine.js';

export interface TargetHello {
  /** Agent metadata, base64. */
  metadata: string;
  region: number;
  poolBytes: number;
  provider: string;
  rails: number;
  machine: MachineDescription;
}

export interface DoneMessage {
  cmd: 'done';
}

/** The initiator's metadata, for a target that must answer it (a device pool is staged on request). */
export interface PeerMessage {
  cmd: 'peer';
  metadata: string;
}

export interface IntroducedMessage {
  cmd: 'introduced';
  error?: string;
}

export function isPeerMessage(m: unknown): m is PeerMessage {
  const p = m as Partial<PeerMessage> | null;
  return typeof p === 'object' && p !== null && p.cmd === 'peer' && typeof p.metadata === 'string';
}

export function isIntroduced(m: unknown): m is IntroducedMessage {
  const p = m as Partial<IntroducedMessage> | null;
  return typeof p === 'object' && p !== null && p.cmd === 'introduced';
}

// Metadata blobs are kilobytes; anything this large is not a bench peer talking.
const MAX_FRAME = 16 << 20;

export function writeFrame(socket: Socket, message: object): void {
  const body = Buffer.from(JSON.stringify(message), 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  socket.write(Buffer.concat([head, body]));
}

/** Calls onMessage for every complete frame; a frame that is too large or not JSON destroys the socket. */
export function readFrames(socket: Socket, onMessage: (message: unknown) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    while (pending.length >= 4) {
      const len = pending.readUInt32BE(0);
      if (len > MAX_FRAME) {
        socket.destroy(new Error(`bench: frame of ${len} bytes from ${socket.remoteAddress} refused`));
        return;
      }
      if (pending.length < 4 + len) break;
      const body = pending.subarray(4, 4 + len);
      pending = pending.subarray(4 + len);
      let message: unknown;
      try {
        message = JSON.parse(body.toString('utf8'));
      } catch {
        socket.destroy(new Error(`bench: malformed frame from ${socket.remoteAddress}`));
        return;
      }
      onMessage(message);
    }
  });
}

/** Checks the shape of a hello that came over the network (loadRemoteMetadata checks the blob itself). */
export function isTargetHello(m: unknown): m is TargetHello {
  const h = m as Partial<TargetHello> | null;
  return (
    typeof h === 'object' &&
    h !== null &&
    typeof h.metadata === 'string' &&
    Number.isSafeInteger(h.region) &&
    Number.isSafeInteger(h.poolBytes) &&
    (h.poolBytes ?? 0) > 0 &&
    typeof h.provider === 'string' &&
    typeof h.machine === 'object' &&
    h.machine !== null
  );
}
