// jazzer.js 4.0.0 ships one prebuilt fuzzer addon per platform, built against glibc 2.38 and libstdc++ 13
// (GLIBC_2.38: __isoc23_strtol/strtoul; GLIBCXX_3.4.32: std::ios_base_library_init). On older hosts
// (Debian bookworm, this project's Docker base) it fails to load, and building it from source needs LLVM
// sources from the network. So: if the addon does not load, patch its ELF version tables so those three
// references are unversioned and their versions optional (VER_FLG_WEAK), and build tools/compat.cc, which
// run.mjs preloads to define them. Nothing else of the addon changes; the original is kept as *.orig.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const MISSING_VERSIONS = new Set(['GLIBC_2.38', 'GLIBCXX_3.4.32']);
const SHT_DYNSYM = 11;
const SHT_GNU_VERNEED = 0x6ffffffe;
const SHT_GNU_VERSYM = 0x6fffffff;
const VER_FLG_WEAK = 2;
const VER_NDX_GLOBAL = 1;

/** Rewrites an ELF64 little-endian shared object in place; returns the symbols it unversioned. */
export function relaxVersions(path) {
  const b = readFileSync(path);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  const sections = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * shentsize;
    sections.push({
      type: b.readUInt32LE(o + 4),
      offset: Number(b.readBigUInt64LE(o + 24)),
      size: Number(b.readBigUInt64LE(o + 32)),
      link: b.readUInt32LE(o + 40),
      info: b.readUInt32LE(o + 44),
    });
  }
  const str = (sec, off) => {
    const start = sec.offset + off;
    return b.toString('latin1', start, b.indexOf(0, start));
  };
  const verneed = sections.find((s) => s.type === SHT_GNU_VERNEED);
  const versym = sections.find((s) => s.type === SHT_GNU_VERSYM);
  const dynsym = sections.find((s) => s.type === SHT_DYNSYM);
  if (!verneed || !versym || !dynsym) throw new Error(`${path}: no symbol version tables`);
  const indices = new Set();
  // Elf64_Verneed: u16 version, u16 cnt, u32 file, u32 aux, u32 next; Elf64_Vernaux: u32 hash, u16 flags, u16 other, u32 name, u32 next.
  for (let vn = verneed.offset, n = 0; n < verneed.info; n++) {
    for (let aux = vn + b.readUInt32LE(vn + 8), a = 0; a < b.readUInt16LE(vn + 2); a++) {
      if (MISSING_VERSIONS.has(str(sections[verneed.link], b.readUInt32LE(aux + 8)))) {
        b.writeUInt16LE(b.readUInt16LE(aux + 4) | VER_FLG_WEAK, aux + 4);
        indices.add(b.readUInt16LE(aux + 6));
      }
      aux += b.readUInt32LE(aux + 12);
    }
    vn += b.readUInt32LE(vn + 12);
  }
  const changed = [];
  for (let i = 0; i < dynsym.size / 24; i++) {
    const at = versym.offset + 2 * i;
    if (indices.has(b.readUInt16LE(at) & 0x7fff)) {
      b.writeUInt16LE(VER_NDX_GLOBAL, at);
      changed.push(str(sections[dynsym.link], b.readUInt32LE(dynsym.offset + 24 * i)));
    }
  }
  writeFileSync(path, b);
  return changed;
}

function loads(fuzzDir, preload) {
  // LD_BIND_NOW: resolve every symbol at load; lazily bound ones would only fail once the fuzzer calls them.
  const env = { ...process.env, LD_BIND_NOW: '1' };
  if (preload) env.LD_PRELOAD = preload;
  const r = spawnSync(process.execPath, ['-e', "require('@jazzer.js/fuzzer')"], { cwd: fuzzDir, env, encoding: 'utf8' });
  return { ok: r.status === 0, stderr: r.stderr };
}

/**
 * Makes jazzer.js's addon loadable here. Returns the LD_PRELOAD value the fuzzer needs ('' when none), or
 * throws with the loader's message.
 */
export function ensureJazzerLoads(fuzzDir, buildDir) {
  if (loads(fuzzDir).ok) return '';
  const shim = join(buildDir, 'jazzer-compat.so');
  if (!existsSync(shim)) execFileSync('g++', ['-std=c++17', '-O2', '-shared', '-fPIC', '-o', shim, join(fuzzDir, 'tools', 'compat.cc')], { stdio: 'inherit' });
  if (loads(fuzzDir, shim).ok) return shim;
  const addon = join(fuzzDir, 'node_modules', '@jazzer.js', 'fuzzer', 'prebuilds', `fuzzer-${process.platform}-${process.arch}.node`);
  if (!existsSync(`${addon}.orig`)) copyFileSync(addon, `${addon}.orig`);
  copyFileSync(`${addon}.orig`, addon);
  const symbols = relaxVersions(addon);
  console.log(`jazzer-compat: unversioned ${symbols.join(', ')} in ${addon} (original kept as .orig)`);
  const again = loads(fuzzDir, shim);
  if (!again.ok) throw new Error(`jazzer.js's fuzzer addon does not load, even patched:\n${again.stderr}`);
  return shim;
}
