// The remote-staging protocol, carried on the agents' notification channel. A peer cannot reach a device
// region with the fabric, so it asks the owner: for a READ, to copy a range into one of the owner's pinned
// chunks and grant it (OUT); for a WRITE, to lend a chunk (IN), which the requester writes and then commits
// with the write's own notification, so the commit arrives after the bytes; the owner copies the chunk into
// the device range and answers DONE. Messages start with a magic that user notifications are not expected to
// start with; the agent keeps such messages to itself. Every message arrives from the network: decodeStage
// checks every field and returns undefined for anything malformed (the owner then ignores it).

/** "KVFS" + protocol version 1. */
const MAGIC = Buffer.from([0x4b, 0x56, 0x46, 0x53, 0x01]);

export const STAGE = Object.freeze({
  /** requester → owner: copy ranges of a region, one after another, into a chunk and grant it for reading. */
  out: 1,
  /** requester → owner: lend a chunk for writing ranges of a region (laid out one after another in the chunk). */
  in: 2,
  /** owner → requester: the chunk's grant bytes. */
  granted: 3,
  /** requester → owner (the WRITE's notification): the chunk is written, copy it in. */
  commit: 4,
  /** requester → owner: done with the chunk (read, or abandoned). */
  release: 5,
  /** owner → requester: the committed chunk is in the device range. */
  done: 6,
  /** owner → requester: refused or failed, with a kvfabric error code. */
  error: 7,
});

/** A range of the owner's region; a request's ranges follow each other in the chunk. */
export interface StageRange {
  offset: number;
  length: number;
}

/** Ranges one request may carry: KV blocks of a chunk (a 1 MiB chunk holds 64 blocks of 16 KiB). */
export const MAX_STAGE_RANGES = 256;

export type StageMessage =
  | { type: typeof STAGE.out | typeof STAGE.in; req: number; region: number; token: Uint8Array; ranges: StageRange[] }
  | { type: typeof STAGE.granted; req: number; grant: Uint8Array }
  | { type: typeof STAGE.commit | typeof STAGE.release | typeof STAGE.done; req: number }
  | { type: typeof STAGE.error; req: number; code: string; message: string };

const HEADER = MAGIC.length + 1 + 4; // magic, type, u32 request id
/** A request's fixed part: u32 region, the token, u16 range count (then u64 offset, u64 length per range). */
const REQUEST_FIXED = 4 + 16 + 2;
const TOKEN_BYTES = 16;
const MAX_TEXT = 1024;

export function isStageMessage(data: Uint8Array): boolean {
  return data.length >= HEADER && Buffer.from(data.buffer, data.byteOffset, MAGIC.length).equals(MAGIC);
}

export function encodeStage(m: StageMessage): Buffer {
  const body = bodyOf(m);
  const buf = Buffer.alloc(HEADER + body.length);
  MAGIC.copy(buf, 0);
  buf.writeUInt8(m.type, MAGIC.length);
  buf.writeUInt32LE(m.req, MAGIC.length + 1);
  body.copy(buf, HEADER);
  return buf;
}

function bodyOf(m: StageMessage): Buffer {
  switch (m.type) {
    case STAGE.out:
    case STAGE.in: {
      const b = Buffer.alloc(REQUEST_FIXED + 16 * m.ranges.length);
      b.writeUInt32LE(m.region, 0);
      b.set(m.token, 4);
      b.writeUInt16LE(m.ranges.length, 4 + TOKEN_BYTES);
      let at = REQUEST_FIXED;
      for (const r of m.ranges) {
        at = b.writeBigUInt64LE(BigInt(r.offset), at);
        at = b.writeBigUInt64LE(BigInt(r.length), at);
      }
      return b;
    }
    case STAGE.granted:
      return Buffer.from(m.grant);
    case STAGE.error: {
      const code = Buffer.from(m.code.slice(0, 64));
      const text = Buffer.from(m.message.slice(0, MAX_TEXT));
      return Buffer.concat([Buffer.from([code.length]), code, text]);
    }
    default:
      return Buffer.alloc(0);
  }
}

/** The message in `data`, or undefined when it is not a well-formed one. */
export function decodeStage(data: Uint8Array): StageMessage | undefined {
  if (!isStageMessage(data)) return undefined;
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const type = buf.readUInt8(MAGIC.length);
  const req = buf.readUInt32LE(MAGIC.length + 1);
  const body = buf.subarray(HEADER);
  switch (type) {
    case STAGE.out:
    case STAGE.in: {
      if (body.length < REQUEST_FIXED) return undefined;
      const count = body.readUInt16LE(4 + TOKEN_BYTES);
      if (count === 0 || count > MAX_STAGE_RANGES || body.length !== REQUEST_FIXED + 16 * count) return undefined;
      const ranges: StageRange[] = [];
      for (let i = 0, at = REQUEST_FIXED; i < count; i++, at += 16) {
        const offset = body.readBigUInt64LE(at);
        const length = body.readBigUInt64LE(at + 8);
        if (offset > BigInt(Number.MAX_SAFE_INTEGER) || length === 0n || length > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
        ranges.push({ offset: Number(offset), length: Number(length) });
      }
      const token = new Uint8Array(body.subarray(4, 4 + TOKEN_BYTES));
      return { type, req, region: body.readUInt32LE(0), token, ranges };
    }
    case STAGE.granted:
      return body.length > 0 && body.length <= 4096 ? { type, req, grant: new Uint8Array(body) } : undefined;
    case STAGE.commit:
    case STAGE.release:
    case STAGE.done:
      return body.length === 0 ? { type, req } : undefined;
    case STAGE.error: {
      if (body.length < 1 || body.length > 1 + 64 + MAX_TEXT) return undefined;
      const n = body.readUInt8(0);
      if (1 + n > body.length) return undefined;
      const code = body.toString('latin1', 1, 1 + n);
      if (!/^KVF_ERR_[A-Z_]+$/.test(code)) return undefined;
      return { type, req, code, message: body.toString('utf8', 1 + n) };
    }
    default:
      return undefined;
  }
}
