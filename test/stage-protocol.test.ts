// The remote-staging messages (src/fabric/stage-protocol.ts) arrive from the network: every well-formed message
// round-trips, and anything else decodes to undefined (the owner then ignores it) rather than throwing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MAX_STAGE_RANGES, STAGE, decodeStage, encodeStage, isStageMessage, type StageMessage } from '../src/fabric/stage-protocol.js';
import { prng } from './helpers/random.js';

const token = Uint8Array.from({ length: 16 }, (_, i) => i * 7);
const messages: StageMessage[] = [
  { type: STAGE.out, req: 1, region: 0x8000_0001, token, ranges: [{ offset: 0, length: 1 }] },
  { type: STAGE.in, req: 0xffff_ffff, region: 7, token, ranges: Array.from({ length: MAX_STAGE_RANGES }, (_, i) => ({ offset: i * 4096, length: 4095 })) },
  { type: STAGE.granted, req: 3, grant: new Uint8Array([1, 2, 3]) },
  { type: STAGE.commit, req: 4 },
  { type: STAGE.release, req: 5 },
  { type: STAGE.done, req: 6 },
  { type: STAGE.error, req: 7, code: 'KVF_ERR_OUT_OF_RANGE', message: 'past the end' },
];

test('every message round-trips', () => {
  for (const m of messages) {
    const bytes = encodeStage(m);
    assert.ok(isStageMessage(bytes));
    assert.deepEqual(decodeStage(bytes), m);
  }
});

test('malformed messages decode to undefined', () => {
  const out = encodeStage(messages[0]!);
  const bad: Uint8Array[] = [
    new Uint8Array(0),
    Buffer.from('hello'),
    out.subarray(0, out.length - 1), // a range cut short
    Buffer.concat([out, Buffer.from([0])]), // a byte too many
    Buffer.from(out).fill(0, out.length - 8), // a zero-length range
    encodeStage({ type: STAGE.commit, req: 1 }).subarray(0, 9), // no request id
    Buffer.concat([encodeStage({ type: STAGE.done, req: 1 }), Buffer.from([1])]),
    encodeStage({ type: STAGE.error, req: 1, code: 'not a code', message: '' }),
  ];
  const count0 = Buffer.from(out);
  count0.writeUInt16LE(0, 10 + 4 + 16);
  bad.push(count0);
  const tooMany = Buffer.from(encodeStage(messages[1]!));
  tooMany.writeUInt16LE(MAX_STAGE_RANGES + 1, 10 + 4 + 16);
  bad.push(tooMany);
  const huge = Buffer.from(out);
  huge.writeBigUInt64LE(2n ** 60n, huge.length - 16); // an offset past 2^53
  bad.push(huge);
  const unknown = Buffer.from(encodeStage({ type: STAGE.done, req: 1 }));
  unknown[5] = 99; // no such type
  bad.push(unknown);
  for (const b of bad) assert.equal(decodeStage(b), undefined, Buffer.from(b).toString('hex'));
});

test('random bytes after the magic never throw', () => {
  const rng = prng(0x57a6e);
  const magic = encodeStage({ type: STAGE.done, req: 0 }).subarray(0, 5);
  for (let i = 0; i < 5000; i++) {
    const body = Buffer.alloc(Math.floor(rng() * 120));
    for (let k = 0; k < body.length; k++) body[k] = Math.floor(rng() * 256);
    const m = decodeStage(Buffer.concat([magic, body]));
    if (m !== undefined) assert.deepEqual(decodeStage(encodeStage(m)), m);
  }
});
