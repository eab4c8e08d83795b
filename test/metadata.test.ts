import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { KvfError } from '../src/common/errors.js';
import type { ErrorCode } from '../src/common/error-registry.js';
import {
  METADATA_LIMITS,
  METADATA_VERSION,
  crc32,
  decodeMetadata,
  encodeMetadata,
  type AgentDescription,
  type RegionDescription,
} from '../src/fabric/metadata.js';
import { prng } from './helpers/random.js';

// ---------------------------------------------------------------------------------------------
// Helpers

type Rng = ReturnType<typeof prng>;
const int = (rng: Rng, lo: number, hi: number): number => lo + Math.floor(rng() * (hi - lo + 1));
const randomBytes = (rng: Rng, n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(rng, 0, 255));
const randomU64 = (rng: Rng): bigint => (BigInt(int(rng, 0, 0xffffffff)) << 32n) | BigInt(int(rng, 0, 0xffffffff));

function expectCode(fn: () => unknown, code: ErrorCode, message?: RegExp, label = ''): void {
  let threw = false;
  try {
    fn();
  } catch (err) {
    threw = true;
    if (!(err instanceof KvfError)) assert.fail(`${label}: expected KvfError ${code}, got ${String(err)}`);
    if (err.code !== code) assert.fail(`${label}: expected ${code}, got ${err.code}: ${err.message}`);
    if (message !== undefined) assert.match(err.message, message, label);
  }
  if (!threw) assert.fail(`${label}: expected ${code}, but nothing was thrown`);
}

const expectBad = (blob: unknown, message?: RegExp, label = ''): void =>
  expectCode(() => decodeMetadata(blob as Uint8Array), 'KVF_ERR_BAD_METADATA', message, label);

const expectInvalid = (desc: unknown, message?: RegExp): void =>
  expectCode(() => encodeMetadata(desc as AgentDescription), 'KVF_ERR_INVALID_ARGUMENT', message, JSON.stringify(message));

/** decodeMetadata returns plain Uint8Array rails; normalize inputs (which may be Buffers) to compare. */
function normalized(desc: AgentDescription): AgentDescription {
  return {
    ...desc,
    rails: desc.rails.map((r) => new Uint8Array(r)),
    regions: desc.regions.map((r) => ({ id: r.id, length: r.length, base: r.base, keys: [...r.keys] })),
    host: desc.host ?? { id: '', pid: 0 },
  };
}

function roundTrip(desc: AgentDescription): Buffer {
  const blob = encodeMetadata(desc);
  assert.deepStrictEqual(decodeMetadata(blob), normalized(desc));
  return blob;
}

/** Rewrites the trailing CRC of a (copied) blob so that edits reach the field checks. */
function withCrc(blob: Uint8Array): Buffer {
  const out = Buffer.from(blob);
  out.writeUInt32LE(crc32(out, 0, out.length - 4), out.length - 4);
  return out;
}

/** Writes raw fields; finish() adds the header (with a correct total length) and the CRC. */
class BlobBuilder {
  private parts: Buffer[] = [];
  constructor(
    private readonly version = METADATA_VERSION,
    private readonly flags = 0,
  ) {}
  u8(v: number): this {
    this.parts.push(Buffer.from([v]));
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    this.parts.push(b);
    return this;
  }
  bytes(v: Uint8Array | string): this {
    this.parts.push(Buffer.from(v));
    return this;
  }
  /**
   * The host section's tail when the agent publishes no region table (fd 0xffffffff, inode 0, zero nonce),
   * then an empty device section (staging chunk size 0, no device regions): the end of a host-only blob.
   */
  noTable(): this {
    return this.u32(0xffffffff).u64(0n).bytes(new Uint8Array(16)).u32(0).u32(0);
  }
  /** u8 length + bytes */
  str(v: Uint8Array | string): this {
    return this.u8(Buffer.from(v).length).bytes(v);
  }
  finish(): Buffer {
    const body = Buffer.concat(this.parts);
    const blob = Buffer.alloc(12 + body.length + 4);
    blob.write('KVFM', 0, 'latin1');
    blob.writeUInt16LE(this.version, 4);
    blob.writeUInt16LE(this.flags, 6);
    blob.writeUInt32LE(blob.length, 8);
    body.copy(blob, 12);
    return withCrc(blob);
  }
}

/** name "a", provider "shm", one 4-byte rail: the common prefix of hand-crafted blobs. */
const craftPrefix = (rails = 1): BlobBuilder => {
  const b = new BlobBuilder().str('a').str('shm').u8(rails);
  for (let r = 0; r < rails; r++) b.str(new Uint8Array([1, 2, 3, r]));
  return b;
};

function region(id: number, rails: number, length = 4096): RegionDescription {
  return {
    id,
    length,
    base: 0x7f00_0000_0000n + BigInt(id) * 0x10_0000n,
    keys: Array.from({ length: rails }, (_, k) => BigInt(id) * 1000n + BigInt(k)),
  };
}

function sampleDesc(rails: number, regions: number, virtAddr = true, addrBytes = 32): AgentDescription {
  return {
    name: `prefill-${rails}`,
    provider: rails > 1 ? 'efa' : 'tcp;ofi_rxm',
    virtAddr,
    rails: Array.from({ length: rails }, (_, r) => Uint8Array.from({ length: addrBytes }, (_, i) => (r * 31 + i) & 0xff)),
    regions: Array.from({ length: regions }, (_, i) => region(i * 3 + 1, rails)),
  };
}

/** Random, valid description: exercises the whole value range of every field. */
function randomDesc(rng: Rng): AgentDescription {
  const alphabet = ['a', 'Z', '0', '-', ';', 'é', 'ß', '€', '日', '本', '🚀', '\u{feff}', '\0'];
  const randomString = (): string => {
    let s = '';
    const n = int(rng, 1, 40);
    for (let i = 0; i < n; i++) s += alphabet[int(rng, 0, alphabet.length - 1)];
    return s;
  };
  const railCount = rng() < 0.1 ? METADATA_LIMITS.maxRails : int(rng, 1, 8);
  const regionCount = rng() < 0.2 ? 0 : int(rng, 1, 40);
  const ids = new Set<number>();
  while (ids.size < regionCount) ids.add(rng() < 0.1 ? 0xffffffff - int(rng, 0, 3) : int(rng, 0, 0xffffffff));
  return {
    name: randomString(),
    provider: randomString(),
    virtAddr: rng() < 0.5,
    rails: Array.from({ length: railCount }, () => randomBytes(rng, rng() < 0.1 ? 255 : int(rng, 1, 64))),
    regions: [...ids].map((id) => {
      const length = rng() < 0.1 ? Number.MAX_SAFE_INTEGER : int(rng, 1, 2 ** 40);
      // Keep base + length within 2^64 (the codec rejects regions that wrap the address space).
      let base = rng() < 0.5 ? BigInt(int(rng, 0, 2 ** 48)) : randomU64(rng);
      if (base + BigInt(length) > 1n << 64n) base = (1n << 64n) - BigInt(length);
      return { id, length, base, keys: Array.from({ length: railCount }, () => randomU64(rng)) };
    }),
  };
}

// ---------------------------------------------------------------------------------------------

describe('crc32', () => {
  test('matches the IEEE/zlib check values', () => {
    assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
    assert.equal(crc32(new Uint8Array(0)), 0);
    assert.equal(crc32(Buffer.from('The quick brown fox jumps over the lazy dog')), 0x414fa339);
    assert.equal(crc32(Buffer.from('xx123456789yy'), 2, 11), 0xcbf43926);
  });
});

describe('metadata wire format', () => {
  test('the layout is pinned byte for byte', () => {
    const blob = encodeMetadata({
      name: 'a',
      provider: 'shm',
      virtAddr: true,
      rails: [new Uint8Array([1, 2, 3, 4])],
      regions: [
        { id: 7, length: 4096, base: 0x1000n, keys: [0xabn] },
        { id: 8, length: 16, base: 0x2000n, keys: [0xacn], share: { fd: 21, inode: 0x99n, offset: 0x1000 } },
      ],
      host: { id: 'h', pid: 0x1234 },
    });
    // prettier-ignore
    const body = [
      0x4b, 0x56, 0x46, 0x4d, // "KVFM"
      0x06, 0x00,             // version 6
      0x01, 0x00,             // flags: virtAddr
      170, 0, 0, 0,           // total length
      1, 0x61,                // name "a"
      3, 0x73, 0x68, 0x6d,    // provider "shm"
      1, 4, 1, 2, 3, 4,       // 1 rail, 4-byte address
      2, 0, 0, 0,             // 2 regions
      7, 0, 0, 0,             // id
      0x00, 0x10, 0, 0, 0, 0, 0, 0, // length 4096
      0x00, 0x10, 0, 0, 0, 0, 0, 0, // base 0x1000
      0xff, 0xff, 0xff, 0xff,       // not shared
      0, 0, 0, 0, 0, 0, 0, 0,       // share inode
      0, 0, 0, 0, 0, 0, 0, 0,       // share offset
      0xab, 0, 0, 0, 0, 0, 0, 0,    // key
      8, 0, 0, 0,             // id
      16, 0, 0, 0, 0, 0, 0, 0,      // length 16
      0x00, 0x20, 0, 0, 0, 0, 0, 0, // base 0x2000
      21, 0, 0, 0,                  // share fd
      0x99, 0, 0, 0, 0, 0, 0, 0,    // share inode
      0x00, 0x10, 0, 0, 0, 0, 0, 0, // share offset
      0xac, 0, 0, 0, 0, 0, 0, 0,    // key
      1, 0x68,                // host id "h"
      0x34, 0x12, 0, 0,       // pid 0x1234
      0xff, 0xff, 0xff, 0xff, // no region table
      0, 0, 0, 0, 0, 0, 0, 0, // table inode
      ...new Array<number>(16).fill(0), // table nonce
      0, 0, 0, 0,             // staging chunk size: none
      0, 0, 0, 0,             // no device regions
    ];
    const expected = Buffer.alloc(body.length + 4);
    expected.set(body);
    expected.writeUInt32LE(crc32(expected, 0, body.length), body.length);
    assert.equal(expected.length, 170);
    assert.deepStrictEqual(blob, expected);
    assert.deepEqual(decodeMetadata(blob).regions[1]!.share, { fd: 21, inode: 0x99n, offset: 0x1000 });
    assert.equal(decodeMetadata(blob).regions[0]!.share, undefined);
  });
});

describe('metadata round trip', () => {
  test('1 rail, virtAddr true and false', () => {
    roundTrip(sampleDesc(1, 3, true, 16));
    const blob = roundTrip(sampleDesc(1, 3, false, 16));
    assert.equal(decodeMetadata(blob).virtAddr, false);
    assert.equal(decodeMetadata(roundTrip(sampleDesc(1, 3, true))).virtAddr, true);
  });

  test('8 rails', () => {
    roundTrip(sampleDesc(8, 5));
  });

  test('64 rails with 255-byte addresses', () => {
    roundTrip(sampleDesc(64, 4, true, 255));
  });

  test('0 regions', () => {
    const blob = roundTrip(sampleDesc(2, 0));
    assert.deepStrictEqual(decodeMetadata(blob).regions, []);
  });

  test('many regions', () => {
    roundTrip(sampleDesc(2, 20_000));
  });

  test('limits of every field', () => {
    roundTrip({
      name: 'n'.repeat(255),
      provider: '€'.repeat(85), // 255 UTF-8 bytes
      virtAddr: false,
      rails: [new Uint8Array(255).fill(0xff)],
      regions: [
        { id: 0xffffffff, length: Number.MAX_SAFE_INTEGER, base: 0n, keys: [(1n << 64n) - 1n] },
        { id: 0, length: 1, base: (1n << 64n) - 1n, keys: [0n] }, // ends exactly at 2^64
      ],
    });
  });

  test('non-ASCII names, a leading BOM and NUL survive exactly', () => {
    roundTrip({ ...sampleDesc(1, 1), name: '\u{feff}décodeur-日本-🚀', provider: 'tcp;ofi_rxm\0' });
  });

  test('rails given as Buffers decode to independent Uint8Arrays', () => {
    const desc = { ...sampleDesc(2, 1), rails: [Buffer.from([9, 8, 7]), Buffer.from([6])] };
    const blob = roundTrip(desc);
    const decoded = decodeMetadata(blob);
    for (const rail of decoded.rails) assert.equal(Object.getPrototypeOf(rail), Uint8Array.prototype);
    blob.fill(0); // decoded addresses must not alias the blob
    assert.deepStrictEqual(decoded.rails, [new Uint8Array([9, 8, 7]), new Uint8Array([6])]);
  });

  test('a blob inside a larger, unaligned buffer decodes', () => {
    const desc = sampleDesc(3, 4);
    const blob = encodeMetadata(desc);
    const outer = new Uint8Array(blob.length + 10).fill(0xee);
    outer.set(blob, 3);
    assert.deepStrictEqual(decodeMetadata(outer.subarray(3, 3 + blob.length)), normalized(desc));
  });

  test('property: random valid descriptions round-trip exactly', () => {
    const rng = prng(0x5eed_0001);
    for (let i = 0; i < 300; i++) {
      const desc = randomDesc(rng);
      const blob = encodeMetadata(desc);
      assert.deepStrictEqual(decodeMetadata(blob), normalized(desc), `iteration ${i}`);
      // The format is canonical: decoding and re-encoding gives back the same bytes.
      assert.deepStrictEqual(encodeMetadata(decodeMetadata(blob)), blob, `iteration ${i}`);
    }
  });
});

describe('decodeMetadata rejects', () => {
  const small = encodeMetadata(sampleDesc(1, 1, true, 4));
  const medium = encodeMetadata(sampleDesc(8, 3, false, 20));

  test('anything that is not a Uint8Array', () => {
    for (const v of [undefined, null, 42, 'KVFM', [0x4b, 0x56], {}, small.buffer, new DataView(small.buffer)]) {
      expectBad(v, /expected a Uint8Array/, String(v));
    }
    expectBad(new Uint16Array(20), /expected a Uint8Array, got \[object Uint16Array\]/);
  });

  test('truncation at every byte length', () => {
    for (const blob of [small, medium]) {
      for (let n = 0; n < blob.length; n++) expectBad(blob.subarray(0, n), undefined, `length ${n}`);
    }
    expectBad(medium.subarray(0, 5), /blob is 5 bytes, shorter than the 12-byte header/);
    expectBad(medium.subarray(0, 100), /total length field at offset 8 says \d+ bytes, but the blob is 100 bytes/);
  });

  test('truncation of the body behind a consistent header and CRC', () => {
    // Re-frames each prefix of the body so the length and CRC checks pass and the field bounds must catch it.
    const body = medium.subarray(12, medium.length - 4);
    for (let n = 0; n < body.length; n++) {
      const blob = new BlobBuilder(METADATA_VERSION, 0).bytes(body.subarray(0, n)).finish();
      expectBad(blob, undefined, `body length ${n}`);
    }
  });

  test('a single flipped bit anywhere', () => {
    for (let bit = 0; bit < small.length * 8; bit++) {
      const blob = Buffer.from(small);
      blob[bit >> 3]! ^= 1 << (bit & 7);
      expectBad(blob, undefined, `bit ${bit}`);
    }
  });

  test('random buffers', () => {
    const rng = prng(0x5eed_0002);
    for (let i = 0; i < 2000; i++) expectBad(randomBytes(rng, int(rng, 0, 300)), undefined, `buffer ${i}`);
    // Random buffers behind a valid magic: a few happen to carry a plausible version or length.
    for (let i = 0; i < 1000; i++) {
      const blob = randomBytes(rng, int(rng, 12, 300));
      blob.set([0x4b, 0x56, 0x46, 0x4d]);
      if (rng() < 0.5) blob.set([1, 0], 4);
      if (rng() < 0.5) new DataView(blob.buffer).setUint32(8, blob.length, true);
      expectBad(blob, undefined, `framed buffer ${i}`);
    }
  });

  test('random bodies and random edits behind a valid header and CRC', () => {
    // These reach the field parser. A blob that does decode must be canonical: re-encoding reproduces it.
    const rng = prng(0x5eed_0003);
    const decodesOrBad = (blob: Buffer, label: string): void => {
      let desc: AgentDescription;
      try {
        desc = decodeMetadata(blob);
      } catch (err) {
        if (!(err instanceof KvfError) || err.code !== 'KVF_ERR_BAD_METADATA') assert.fail(`${label}: ${String(err)}`);
        return;
      }
      assert.deepStrictEqual(encodeMetadata(desc), blob, label);
    };
    for (let i = 0; i < 1000; i++) {
      decodesOrBad(new BlobBuilder(METADATA_VERSION, int(rng, 0, 1)).bytes(randomBytes(rng, int(rng, 0, 200))).finish(), `body ${i}`);
    }
    for (let i = 0; i < 2000; i++) {
      const blob = Buffer.from(medium);
      for (let e = int(rng, 1, 4); e > 0; e--) blob[int(rng, 12, blob.length - 5)] = int(rng, 0, 255);
      decodesOrBad(withCrc(blob), `edit ${i}`);
    }
  });

  test('wrong magic', () => {
    const blob = Buffer.from(small);
    blob.write('KVFX', 0, 'latin1');
    expectBad(withCrc(blob), /magic at offset 0 is \[4b 56 46 58\], expected \[4b 56 46 4d\]/);
  });

  test('wrong version', () => {
    for (const version of [0, 1, 2, 3, 4, 5, 7, 0xffff]) {
      const blob = Buffer.from(small);
      blob.writeUInt16LE(version, 4);
      expectBad(withCrc(blob), new RegExp(`unsupported metadata version ${version} \\(this build reads 6\\)`));
    }
    // A future version is reported as such even if its layout differs entirely.
    expectBad(new BlobBuilder(7).bytes('whatever v7 holds').finish(), /unsupported metadata version 7 \(this build reads 6\)/);
  });

  test('a corrupted CRC', () => {
    const blob = Buffer.from(small);
    blob[blob.length - 1]! ^= 0x80;
    expectBad(blob, /CRC-32 at offset \d+ is 0x[0-9a-f]{8}, but the preceding bytes hash to 0x[0-9a-f]{8}/);
  });

  test('a total length below the smallest blob', () => {
    const blob = Buffer.alloc(20);
    blob.write('KVFM', 0, 'latin1');
    blob.writeUInt16LE(METADATA_VERSION, 4);
    blob.writeUInt32LE(20, 8);
    expectBad(withCrc(blob), /blob is 20 bytes, shorter than the smallest valid v6 blob \(68 bytes\)/);
  });

  test('unknown flag bits', () => {
    const blob = Buffer.from(small);
    blob.writeUInt16LE(0x0003, 6);
    expectBad(withCrc(blob), /flags at offset 6 are 0x0003/);
  });

  test('bytes appended after the CRC, or trailing bytes before it', () => {
    expectBad(Buffer.concat([small, Buffer.from([0])]), /says \d+ bytes, but the blob is \d+ bytes/);
    const trailing = craftPrefix()
      .u32(0)
      .u8(0)
      .u32(0)
      .noTable()
      .bytes(new Uint8Array([0, 0, 0]))
      .finish();
    expectBad(trailing, /3 unexpected trailing byte\(s\) at offset 69/);
  });

  test('duplicate region ids (with a correct CRC)', () => {
    const desc = sampleDesc(2, 3); // ids 1, 4, 7
    const blob = encodeMetadata(desc);
    const regionBytes = 40 + 8 * 2;
    const firstRegion = blob.length - 4 - 8 - 33 - 3 * regionBytes; // CRC, empty device section, empty host section (id, pid, no table)
    blob.writeUInt32LE(1, firstRegion + 2 * regionBytes); // region[2].id := region[0].id
    expectBad(withCrc(blob), new RegExp(`region\\[2\\] at offset ${firstRegion + 2 * regionBytes} repeats id 1 of region\\[0\\]`));
  });

  test('a key count that disagrees with the rail count', () => {
    // Six regions, so that the missing keys (8 bytes each) outweigh the 41-byte host and device sections after them.
    const region = (keys: number) => {
      const b = craftPrefix(2).u32(6);
      for (let i = 0; i < 6; i++) {
        b.u32(5 + i)
          .u64(4096n)
          .u64(0n)
          .u32(0xffffffff)
          .u64(0n)
          .u64(0n);
        for (let k = 0; k < keys; k++) b.u64(BigInt(k));
      }
      return b.u8(0).u32(0).noTable().finish();
    };
    assert.doesNotThrow(() => decodeMetadata(region(2)));
    expectBad(region(1), /region table at offset \d+ needs 6 x 56 = 336 bytes \(id, length, base, share and 2 key\(s\) each\), but only 329 remain/);
    const threeKeys = craftPrefix(2).u32(1).u32(5).u64(4096n).u64(0n).u32(0xffffffff).u64(0n).u64(0n).u64(0n).u64(1n).u64(2n);
    expectBad(threeKeys.u8(0).u32(0).noTable().finish(), /unexpected trailing byte\(s\)/);
  });

  test('a zero-length, oversized or wrapping region', () => {
    const oneRegion = (length: bigint, base = 0n) =>
      craftPrefix().u32(1).u32(9).u64(length).u64(base).u32(0xffffffff).u64(0n).u64(0n).u64(1n).u8(0).u32(0).noTable().finish();
    assert.doesNotThrow(() => decodeMetadata(oneRegion(1n)));
    expectBad(oneRegion(0n), /region\[0\] \(id 9\) length at offset 32 is 0, expected > 0/);
    expectBad(oneRegion(2n ** 53n), /length at offset 32 is 9007199254740992, expected at most 2\^53-1/);
    expectBad(oneRegion(2n ** 64n - 1n), /expected at most 2\^53-1/);
    expectBad(oneRegion(16n, 2n ** 64n - 8n), /base 0xfffffffffffffff8 \+ length 16 wraps past 2\^64/);
  });

  test('a region count beyond the limit, or beyond the bytes present', () => {
    expectBad(
      craftPrefix()
        .u32(METADATA_LIMITS.maxRegions + 1)
        .u8(0)
        .u32(0)
        .noTable()
        .finish(),
      /region count at offset 24 is 1048577, expected at most 1048576/,
    );
    expectBad(craftPrefix().u32(0xffffffff).u8(0).u32(0).noTable().finish(), /region count .* is 4294967295/);
    expectBad(craftPrefix().u32(1000).u8(0).u32(0).noTable().finish(), /region table at offset 28 needs 1000 x 48 = 48000 bytes/);
  });

  test('a share that is out of range, or share fields on a region that is not shared', () => {
    const shared = (fd: number, inode: bigint, offset: bigint) =>
      craftPrefix().u32(1).u32(9).u64(4096n).u64(0n).u32(fd).u64(inode).u64(offset).u64(1n).u8(0).u32(0).noTable().finish();
    assert.deepEqual(decodeMetadata(shared(3, 5n, 4096n)).regions[0]!.share, { fd: 3, inode: 5n, offset: 4096 });
    expectBad(shared(0x80000000, 5n, 0n), /region\[0\] \(id 9\) share fd at offset 48 is 2147483648/);
    expectBad(shared(3, 5n, 2n ** 53n), /share offset at offset 60 is 9007199254740992, expected at most 2\^53-1/);
    expectBad(shared(0xffffffff, 5n, 0n), /region\[0\] \(id 9\) at offset 48 is not shared but carries a share inode or offset/);
    const desc = sampleDesc(1, 1);
    expectInvalid({ ...desc, regions: [{ ...desc.regions[0]!, share: { fd: -1, inode: 1n, offset: 0 } }] }, /regions\[0\]\.share\.fd must be an integer/);
    expectInvalid({ ...desc, regions: [{ ...desc.regions[0]!, share: { fd: 1, inode: 1n, offset: 0.5 } }] }, /regions\[0\]\.share\.offset must be an integer/);
    expectInvalid({ ...desc, regions: [{ ...desc.regions[0]!, share: { fd: 1, inode: -1n, offset: 0 } }] }, /regions\[0\]\.share\.inode/);
  });

  test('bad string and rail fields', () => {
    const b = () => new BlobBuilder();
    expectBad(b().u8(0).str('shm').u8(1).str('xxxx').u32(0).u8(0).u32(0).noTable().finish(), /name length at offset 12 is 0 \(expected 1..255\)/);
    expectBad(b().str('a').u8(0).u8(1).str('xxxx').u32(0).u8(0).u32(0).noTable().finish(), /provider length at offset 14 is 0/);
    expectBad(b().str('a').str('shm').u8(0).u32(0).u8(0).u32(0).noTable().finish(), /rail count at offset 18 is 0, expected 1..64/);
    expectBad(b().str('a').str('shm').u8(65).str('x').u32(0).u8(0).u32(0).noTable().finish(), /rail count at offset 18 is 65, expected 1..64/);
    expectBad(b().str('a').str('shm').u8(1).u8(0).u32(0).u8(0).u32(0).noTable().finish(), /rail\[0\] address length at offset 19 is 0/);
    expectBad(
      b()
        .str('a')
        .str('shm')
        .u8(2)
        .str('x')
        .bytes(new Uint8Array([200, 1, 2]))
        .u8(0)
        .u32(0)
        .noTable()
        .finish(),
      /rail\[1\] address needs 200 byte\(s\) at offset 22/,
    );
    expectBad(
      b()
        .str(new Uint8Array([0x61, 0xff]))
        .str('shm')
        .u8(1)
        .str('xxxx')
        .u32(0)
        .u8(0)
        .u32(0)
        .noTable()
        .finish(),
      /name at offset 13 \(2 bytes\) is not valid UTF-8/,
    );
    expectBad(
      b()
        .str('a')
        .str(new Uint8Array([0xed, 0xa0, 0x80]))
        .u8(1)
        .str('xxxx')
        .u32(0)
        .u8(0)
        .u32(0)
        .noTable()
        .finish(),
      /provider at offset 15 .* not valid UTF-8/,
    ); // encoded surrogate
  });
});

describe('device regions (v5, v6)', () => {
  const token = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
  const handle = Uint8Array.from({ length: 64 }, (_, i) => i);
  const devices = [
    { id: 0x8000_0000, length: 7 * 1024 * 1024 + 3, kind: 'cuda' as const, device: 3, token, ipc: { handle, offset: 4096 } },
    { id: 0x8000_0001, length: 1, kind: 'stand-in' as const, device: 0, token },
  ];
  const withDevices = { ...sampleDesc(2, 2), devices, stagingChunkBytes: 1 << 20 };

  test('round-trip with and without an IPC handle; none is the default', () => {
    roundTrip(withDevices);
    const plain = decodeMetadata(encodeMetadata(sampleDesc(1, 1)));
    assert.equal(plain.devices, undefined);
    assert.equal(plain.stagingChunkBytes, undefined);
  });

  test('hostile device sections are refused with the field named', () => {
    const blob = encodeMetadata(withDevices);
    // The last device region (stand-in, no IPC) ends just before the CRC: id, length, kind, flags, device, token.
    const last = blob.length - 4 - 32;
    const patched = (at: number, write: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(blob);
      write(b.subarray(at));
      return withCrc(b);
    };
    expectBad(
      patched(last + 12, (b) => b.writeUInt8(9)),
      /device\[1\] \(id 2147483649\) kind is 9/,
    );
    expectBad(
      patched(last + 13, (b) => b.writeUInt8(4)),
      /flags are 0x04/,
    );
    expectBad(
      patched(last + 13, (b) => b.writeUInt8(2)),
      /fabric registration runs past the blob/,
    );
    expectBad(
      patched(last + 13, (b) => b.writeUInt8(1)),
      /stand-in memory but carries a CUDA IPC handle|needs 64 byte/,
    );
    expectBad(
      patched(last + 4, (b) => b.writeBigUInt64LE(0n)),
      /length is 0/,
    );
    expectBad(
      patched(last, (b) => b.writeUInt32LE(withDevices.regions[0]!.id)),
      /repeats region id/,
    );
    expectBad(
      patched(last, (b) => b.writeUInt32LE(0x8000_0000)),
      /repeats region id/,
    );
    const countAt = last - (32 + 72) - 4;
    expectBad(
      patched(countAt, (b) => b.writeUInt32LE(70_000)),
      /device region count .* is 70000/,
    );
    expectBad(
      patched(countAt, (b) => b.writeUInt32LE(60_000)),
      /need at least/,
    );
    expectBad(
      patched(countAt - 4, (b) => b.writeUInt32LE(0)),
      /staging chunk size is 0/,
    );
  });

  test('a fabric registration (v6) round-trips, with the IPC handle or without; hostile ones are refused', () => {
    const fabric = { id: 77, base: 0x7f00_0000_1000n, keys: [0x11n, 0x22n] };
    const registered = {
      ...withDevices,
      devices: [
        { ...devices[0]!, fabric },
        { ...devices[1]!, fabric: { ...fabric, id: 78 } },
      ],
    };
    roundTrip(registered);
    const blob = encodeMetadata(registered);
    // The last device region ends with its fabric part (u32 id, u64 base, two keys) just before the CRC.
    const fabricAt = blob.length - 4 - (4 + 8 + 16);
    const patched = (write: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(blob);
      write(b.subarray(fabricAt));
      return withCrc(b);
    };
    expectBad(
      patched((b) => b.writeUInt32LE(77)),
      /fabric id 77 repeats a region id/,
    );
    expectBad(
      patched((b) => b.writeUInt32LE(registered.regions[0]!.id)),
      /repeats a region id/,
    );
    expectBad(withCrc(Buffer.concat([blob.subarray(0, blob.length - 12), blob.subarray(blob.length - 4)])), /total length|past the blob|truncated|need/);
    expectInvalid({ ...registered, devices: [{ ...devices[0]!, fabric: { ...fabric, keys: [1n] } }] }, /one key per rail/);
    expectInvalid({ ...registered, devices: [{ ...devices[0]!, fabric: { ...fabric, id: registered.regions[0]!.id } }] }, /fabric\.id .* repeats/);
    expectInvalid({ ...registered, devices: [{ ...devices[0]!, fabric: { ...fabric, base: -1n } }] }, /fabric\.base/);
  });

  test('encodeMetadata refuses what it cannot represent', () => {
    expectInvalid({ ...withDevices, devices: [{ ...devices[0]!, token: new Uint8Array(15) }] }, /devices\[0\]\.token must be 16 bytes/);
    expectInvalid({ ...withDevices, devices: [{ ...devices[0]!, kind: 'rocm' }] }, /kind must be 'cuda' or 'stand-in'/);
    expectInvalid({ ...withDevices, devices: [{ ...devices[0]!, ipc: { handle: new Uint8Array(63), offset: 0 } }] }, /ipc\.handle must be 64 bytes/);
    expectInvalid({ ...withDevices, devices: [devices[0]!, devices[0]!] }, /repeats another region's id/);
    expectInvalid({ ...withDevices, devices: [{ ...devices[1]!, id: withDevices.regions[0]!.id }] }, /repeats another region's id/);
  });
});

describe('host section (v2)', () => {
  test('the region table location round-trips; absent is the default; a half-absent one is refused', () => {
    const table = { fd: 42, inode: 0xdead_beef_cafen, nonce: Uint8Array.from({ length: 16 }, (_, i) => i + 1) };
    const desc = { ...sampleDesc(1, 1), host: { id: 'h', pid: 7, table } };
    assert.deepEqual(decodeMetadata(encodeMetadata(desc)).host, { id: 'h', pid: 7, table });
    assert.equal(decodeMetadata(encodeMetadata(sampleDesc(1, 0))).host?.table, undefined);
    expectBad(
      craftPrefix().u32(0).u8(0).u32(0).u32(0xffffffff).u64(5n).bytes(new Uint8Array(16)).u32(0).u32(0).finish(),
      /region table at offset \d+ is absent but carries an inode or nonce/,
    );
    expectBad(
      craftPrefix().u32(0).u8(0).u32(0).u32(0x80000000).u64(5n).bytes(new Uint8Array(16)).u32(0).u32(0).finish(),
      /region table fd at offset \d+ is 2147483648/,
    );
    expectInvalid({ ...desc, host: { id: 'h', pid: 7, table: { ...table, nonce: new Uint8Array(15) } } }, /host.table.nonce must be 16 bytes/);
    expectInvalid({ ...desc, host: { id: 'h', pid: 7, table: { ...table, fd: -1 } } }, /host.table.fd must be an integer/);
  });

  test('host identity and pid round-trip; unknown is the default', () => {
    const desc = { ...sampleDesc(2, 2), host: { id: 'b5c7e9f0-boot:pid:[4026531836]', pid: 4_000_000_000 } };
    assert.deepEqual(decodeMetadata(encodeMetadata(desc)).host, desc.host);
    assert.deepEqual(decodeMetadata(encodeMetadata(sampleDesc(1, 0))).host, { id: '', pid: 0 });
  });

  test('bad host fields are refused on both sides', () => {
    expectInvalid({ ...sampleDesc(1, 0), host: { id: 'x', pid: -1 } }, /host.pid must be a u32/);
    expectInvalid({ ...sampleDesc(1, 0), host: { id: 'x'.repeat(256), pid: 1 } }, /host.id must be 1..255 UTF-8 bytes/);
    expectBad(
      craftPrefix()
        .u32(0)
        .u8(2)
        .bytes(new Uint8Array([0xc3, 0x28]))
        .u32(0)
        .noTable()
        .finish(),
      /host id at offset 29 \(2 bytes\) is not valid UTF-8/,
    );
    expectBad(craftPrefix().u32(0).u8(40).bytes('abc').noTable().finish(), /host id needs 40 byte\(s\)/);
  });
});

describe('encodeMetadata rejects', () => {
  const ok = sampleDesc(2, 2);
  const withRegion = (patch: Partial<RegionDescription>): AgentDescription => ({
    ...ok,
    regions: [{ ...ok.regions[0]!, ...patch }],
  });

  test('bad top-level fields', () => {
    expectInvalid(null, /description must be an object/);
    expectInvalid({ ...ok, name: '' }, /name must be 1..255 UTF-8 bytes, got 0/);
    expectInvalid({ ...ok, name: 'x'.repeat(256) }, /name must be 1..255 UTF-8 bytes, got 256/);
    expectInvalid({ ...ok, name: 'é'.repeat(128) }, /got 256/);
    expectInvalid({ ...ok, name: 'a\ud800b' }, /name contains a lone UTF-16 surrogate/);
    expectInvalid({ ...ok, provider: 7 }, /provider must be a string, got number/);
    expectInvalid({ ...ok, virtAddr: 1 }, /virtAddr must be a boolean/);
  });

  test('bad rails', () => {
    expectInvalid({ ...ok, rails: 'x' }, /rails must be an array/);
    expectInvalid({ ...ok, rails: [], regions: [] }, /rails must hold 1..64 addresses, got 0/);
    expectInvalid({ ...ok, rails: Array.from({ length: 65 }, () => new Uint8Array(1)) }, /got 65/);
    expectInvalid({ ...ok, rails: [new Uint8Array(1), [1, 2]] }, /rails\[1\] must be a Uint8Array/);
    expectInvalid({ ...ok, rails: [new Uint8Array(0), new Uint8Array(1)] }, /rails\[0\] must be 1..255 bytes, got 0/);
    expectInvalid({ ...ok, rails: [new Uint8Array(1), new Uint8Array(256)] }, /rails\[1\] must be 1..255 bytes, got 256/);
  });

  test('bad regions', () => {
    expectInvalid({ ...ok, regions: new Array(METADATA_LIMITS.maxRegions + 1) }, /at most 1048576 regions/);
    expectInvalid({ ...ok, regions: [null] }, /regions\[0\] must be an object/);
    expectInvalid(withRegion({ id: -1 }), /regions\[0\]\.id must be an integer/);
    expectInvalid(withRegion({ id: 1.5 }), /regions\[0\]\.id must be an integer/);
    expectInvalid(withRegion({ id: 2 ** 32 }), /regions\[0\]\.id must be an integer/);
    expectInvalid({ ...ok, regions: [region(5, 2), region(6, 2), region(5, 2)] }, /regions\[2\]\.id 5 duplicates regions\[0\]\.id/);
    expectInvalid(withRegion({ length: 0 }), /regions\[0\]\.length must be an integer in 1..9007199254740991, got 0/);
    expectInvalid(withRegion({ length: 2 ** 53 }), /regions\[0\]\.length/);
    expectInvalid(withRegion({ length: 10n as unknown as number }), /regions\[0\]\.length/);
    expectInvalid(withRegion({ base: 5 as unknown as bigint }), /regions\[0\]\.base must be a bigint, got number/);
    expectInvalid(withRegion({ base: -1n }), /regions\[0\]\.base -1 is outside the u64 range/);
    expectInvalid(withRegion({ base: 1n << 64n }), /outside the u64 range/);
    expectInvalid(withRegion({ base: (1n << 64n) - 1n, length: 2 }), /wraps past the end of the 64-bit address space/);
    expectInvalid(withRegion({ keys: [1n] }), /regions\[0\]\.keys must hold one key per rail \(2\), got 1/);
    expectInvalid(withRegion({ keys: [1n, 2n, 3n] }), /got 3/);
    expectInvalid(withRegion({ keys: [1n, -2n] }), /regions\[0\]\.keys\[1\] -2 is outside the u64 range/);
    expectInvalid(withRegion({ keys: [1n, 2] as unknown as bigint[] }), /regions\[0\]\.keys\[1\] must be a bigint/);
    expectInvalid(withRegion({ keys: new Array(2) }), /regions\[0\]\.keys\[0\] must be a bigint, got undefined/);
  });
});
