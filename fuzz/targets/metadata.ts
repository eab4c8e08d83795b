// Agent metadata and grant bytes (src/fabric/metadata.ts, grants.ts): what a peer sends about itself, and the
// per-request windows it hands out. Both come from the network and both end in a CRC-32, which random bytes
// never match; so the first input byte picks a mode, and in the "fixed" modes the target rewrites the length
// field and CRC before decoding, letting the fuzzer reach the field checks behind them.
//   byte0 % 4: 0 raw metadata, 1 metadata with length+CRC fixed, 2 raw grant, 3 grant with CRC fixed.
// A blob that decodes must encode back to the same bytes (the format has exactly one encoding).
import { decodeGrant, encodeGrant } from '../../src/fabric/grants.js';
import { crc32, decodeMetadata, encodeMetadata } from '../../src/fabric/metadata.js';
import { guarded, invariant } from './common.js';

function fixCrc(bytes: Buffer): void {
  if (bytes.length >= 4) bytes.writeUInt32LE(crc32(bytes, 0, bytes.length - 4), bytes.length - 4);
}

export function check(data: Buffer): void {
  if (data.length === 0) return;
  const mode = data[0]! % 4;
  const blob = Buffer.from(data.subarray(1));
  if (mode === 1 && blob.length >= 12) blob.writeUInt32LE(blob.length, 8);
  if (mode === 1 || mode === 3) fixCrc(blob);
  if (mode < 2) {
    const desc = decodeMetadata(blob);
    invariant(encodeMetadata(desc).equals(blob), 'decoded metadata does not encode back to the same bytes');
  } else {
    const grant = decodeGrant(blob);
    invariant(Buffer.from(encodeGrant(grant)).equals(blob), 'decoded grant does not encode back to the same bytes');
  }
}

export const fuzz = guarded(check);
