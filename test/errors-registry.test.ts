// Keeps the error-code registry (src/common/error-registry.ts), its documentation (docs/errors.md), the native
// header of codes (native/core/error_codes.h) and the codes actually raised in native/ and src/ in sync, and
// checks the KvfError / fromNative contract.

import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';

import { KvfError, fromNative } from '../src/common/errors.js';
import { ERROR_CODES, ERROR_REGISTRY, isErrorCode, type ErrorCode } from '../src/common/error-registry.js';
import { toServiceError } from '../src/serve/grpc-errors.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const codes = Object.keys(ERROR_REGISTRY) as ErrorCode[];
const HEADER = join('native', 'core', 'error_codes.h');

/** Files under dir (recursively) whose names end with one of exts; [] if dir does not exist. */
function sourceFiles(dir: string, exts: readonly string[]): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    // Skip dependencies and hidden folders, should any end up in the tree.
    if (entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path, exts));
    else if (entry.isFile() && exts.some((ext) => entry.name.endsWith(ext))) out.push(path);
  }
  return out;
}

/**
 * Every KVF_ERR_ code written as a complete string literal ("…", '…' or `…`). Digits are matched too, so a
 * typo such as "KVF_ERR_TIMEOUT2" is caught rather than skipped. A bare prefix like "KVF_ERR_" (used to build
 * names) does not match.
 */
function codeLiterals(source: string): string[] {
  return [...source.matchAll(/(["'`])(KVF_ERR_[A-Z0-9_]+)\1/g)].map((m) => m[2]!);
}

/** Rows of the markdown table: first cell (the code, backticks removed) and the remaining cells. */
function docTableRows(markdown: string): { code: string; cells: string[] }[] {
  const rows: { code: string; cells: string[] }[] = [];
  for (const line of markdown.split('\n')) {
    const m = /^\|\s*`?(KVF_ERR_[A-Z0-9_]+)`?\s*\|(.*)\|\s*$/.exec(line);
    if (m) rows.push({ code: m[1]!, cells: m[2]!.split(/(?<!\\)\|/).map((c) => c.trim()) });
  }
  return rows;
}

describe('error registry', () => {
  const docsPath = join(root, 'docs', 'errors.md');
  const docs = readFileSync(docsPath, 'utf8');

  test('codes are well-formed and their descriptions non-empty', () => {
    for (const code of codes) {
      assert.match(code, /^KVF_ERR_[A-Z0-9_]+$/);
      assert.ok(ERROR_CODES[code].length > 0, `${code} has an empty description`);
      assert.ok(isErrorCode(code));
    }
    assert.equal(isErrorCode('KVF_ERR_NOPE'), false);
    assert.equal(isErrorCode('toString'), false); // inherited properties are not codes
    assert.equal(isErrorCode(42), false);
  });

  test('every entry has an HTTP error status and a gRPC status name; ERROR_CODES repeats the messages', () => {
    assert.deepStrictEqual(Object.keys(ERROR_CODES), codes);
    for (const code of codes) {
      const { message, http, grpc: status } = ERROR_REGISTRY[code];
      assert.equal(ERROR_CODES[code], message);
      assert.ok(Number.isInteger(http) && http >= 400 && http <= 599, `${code}: HTTP ${http} is not an error status`);
      assert.equal(typeof grpc.status[status], 'number', `${code}: ${status} is not a gRPC status`);
      assert.notEqual(status, 'OK', `${code}: an error cannot be gRPC OK`);
    }
  });

  test("a worker's error carries its code's gRPC status from the registry", () => {
    for (const code of codes) {
      const err = toServiceError(new KvfError(code, 'x'));
      assert.equal(err.code, grpc.status[ERROR_REGISTRY[code].grpc], code);
      assert.deepStrictEqual(err.metadata?.get('kvf-code'), [code]);
    }
  });

  test('docs/errors.md has exactly one table row per registered code, with the registry meaning and statuses', () => {
    const rows = docTableRows(docs);
    const documented = rows.map((r) => r.code);
    for (const code of codes) {
      const matching = rows.filter((r) => r.code === code);
      assert.equal(matching.length, 1, `${code} must have exactly one row in docs/errors.md, found ${matching.length}`);
      const [meaning, http, status, advice] = matching[0]!.cells;
      assert.equal(meaning, ERROR_CODES[code], `${code}: the Meaning column must repeat ERROR_CODES' text verbatim`);
      assert.equal(http, String(ERROR_REGISTRY[code].http), `${code}: the HTTP column must match the registry`);
      assert.equal(status, `\`${ERROR_REGISTRY[code].grpc}\``, `${code}: the gRPC column must match the registry`);
      assert.ok((advice ?? '').length > 40, `${code}: the "what to do" column is missing or too terse`);
    }
    assert.equal(new Set(documented).size, documented.length, 'duplicate rows in docs/errors.md');
  });

  test('every KVF_ERR_ code mentioned in docs/errors.md is registered', () => {
    const mentioned = new Set(docs.match(/KVF_ERR_[A-Z0-9_]+/g) ?? []);
    const unknown = [...mentioned].filter((c) => !isErrorCode(c));
    assert.deepStrictEqual(unknown, [], `docs/errors.md mentions unregistered codes`);
  });

  test('every KVF_ERR_ string literal in native/ and src/ is registered', () => {
    const files = [...sourceFiles(join(root, 'native'), ['.cc', '.h', '.cpp', '.hpp']), ...sourceFiles(join(root, 'src'), ['.ts'])];
    assert.ok(files.length > 0, 'found no source files to scan');
    const unknown: string[] = [];
    for (const file of files) {
      for (const code of codeLiterals(readFileSync(file, 'utf8'))) {
        if (!isErrorCode(code)) unknown.push(`${relative(root, file)}: ${code}`);
      }
    }
    assert.deepStrictEqual(unknown, [], 'unregistered error codes in sources (add them to ERROR_CODES and docs/errors.md)');
  });

  test('native/core/error_codes.h names registered codes, once each, and native/ spells codes only there', () => {
    const header = readFileSync(join(root, HEADER), 'utf8');
    const defined = [...header.matchAll(/inline constexpr char (k[A-Za-z0-9]+)\[\] = "(KVF_ERR_[A-Z0-9_]+)";/g)].map((m) => ({ name: m[1]!, code: m[2]! }));
    assert.ok(defined.length > 0, `no codes found in ${HEADER}`);
    assert.deepStrictEqual(
      codeLiterals(header),
      defined.map((d) => d.code),
      `${HEADER} holds a code outside the constant declarations`,
    );
    assert.deepStrictEqual(
      defined.filter((d) => !isErrorCode(d.code)).map((d) => d.code),
      [],
      `${HEADER} names codes missing from the registry`,
    );
    assert.equal(new Set(defined.map((d) => d.code)).size, defined.length, `a code is declared twice in ${HEADER}`);
    const names = new Set(defined.map((d) => d.name));
    const bare: string[] = [];
    const undeclared: string[] = [];
    for (const file of sourceFiles(join(root, 'native'), ['.cc', '.h', '.cpp', '.hpp'])) {
      const path = relative(root, file);
      if (path === HEADER) continue;
      const source = readFileSync(file, 'utf8');
      for (const code of codeLiterals(source)) bare.push(`${path}: "${code}"`);
      // What the native code can raise is what it names through code::; each such name must be in the header.
      for (const m of source.matchAll(/\bcode::(k[A-Za-z0-9]+)/g)) if (!names.has(m[1]!)) undeclared.push(`${path}: code::${m[1]!}`);
    }
    assert.deepStrictEqual(bare, [], `bare KVF_ERR_ string literals in native/ (use the constants of ${HEADER})`);
    assert.deepStrictEqual(undeclared, [], `codes used in native/ but not declared in ${HEADER}`);
  });

  test('the literal scanner finds codes in C++ and TypeScript syntax', () => {
    const cpp = `
      ThrowKvf(env, "KVF_ERR_TIMEOUT", "timed out");
      static constexpr const char* kBusy = "KVF_ERR_BUSY";
      std::string prefix = "KVF_ERR_";   // a prefix, not a code
      // KVF_ERR_IN_A_COMMENT without quotes is not a literal
    `;
    assert.deepStrictEqual(codeLiterals(cpp), ['KVF_ERR_TIMEOUT', 'KVF_ERR_BUSY']);
    const ts = `throw new KvfError('KVF_ERR_CLOSED', \`closed\`); const c = \`KVF_ERR_TYPO1\`;`;
    assert.deepStrictEqual(codeLiterals(ts), ['KVF_ERR_CLOSED', 'KVF_ERR_TYPO1']);
  });
});

describe('KvfError', () => {
  test('carries code, name, message and details', () => {
    const cause = new Error('root cause');
    const err = new KvfError('KVF_ERR_TIMEOUT', 'read timed out after 5000 ms', {
      errno: 110,
      providerMessage: 'Connection timed out',
      peer: 'decode-0',
      region: 3,
      provider: 'efa',
      cause,
    });
    assert.ok(err instanceof Error);
    assert.ok(err instanceof KvfError);
    assert.equal(err.name, 'KvfError');
    assert.equal(err.code, 'KVF_ERR_TIMEOUT');
    assert.equal(err.message, 'read timed out after 5000 ms');
    assert.equal(err.errno, 110);
    assert.equal(err.providerMessage, 'Connection timed out');
    assert.equal(err.peer, 'decode-0');
    assert.equal(err.region, 3);
    assert.equal(err.provider, 'efa');
    assert.equal(err.cause, cause);
    assert.match(String(err), /^KvfError: read timed out/);
    assert.ok(err.stack?.includes('read timed out'));
  });

  test('omits details that were not given', () => {
    const err = new KvfError('KVF_ERR_CLOSED', 'agent closed');
    assert.equal(err.code, 'KVF_ERR_CLOSED');
    for (const key of ['errno', 'providerMessage', 'peer', 'region', 'provider', 'cause'] as const) {
      assert.equal(err[key], undefined, `${key} should be unset`);
    }
  });
});

describe('fromNative', () => {
  test('maps a plain object from the addon, preserving code, message, errno and providerMessage', () => {
    const err = fromNative({
      code: 'KVF_ERR_PROVIDER_UNAVAILABLE',
      message: 'fi_getinfo found no provider "efa"',
      errno: 61,
      providerMessage: 'No data available',
    });
    assert.ok(err instanceof KvfError);
    assert.equal(err.name, 'KvfError');
    assert.equal(err.code, 'KVF_ERR_PROVIDER_UNAVAILABLE');
    assert.equal(err.message, 'fi_getinfo found no provider "efa"');
    assert.equal(err.errno, 61);
    assert.equal(err.providerMessage, 'No data available');
  });

  test('maps an Error thrown by the addon and merges extra details', () => {
    const thrown = Object.assign(new Error('remote write failed'), { code: 'KVF_ERR_PROVIDER', errno: 13, region: 4 });
    const err = fromNative(thrown, { peer: 'decode-1', provider: 'tcp;ofi_rxm' });
    assert.equal(err.code, 'KVF_ERR_PROVIDER');
    assert.equal(err.message, 'remote write failed');
    assert.equal(err.errno, 13);
    assert.equal(err.region, 4);
    assert.equal(err.peer, 'decode-1');
    assert.equal(err.provider, 'tcp;ofi_rxm');
  });

  test('maps unknown or missing codes to KVF_ERR_PROVIDER, keeping the message', () => {
    for (const code of ['KVF_ERR_FROM_THE_FUTURE', 'EPIPE', undefined, 7, 'toString']) {
      const err = fromNative({ code, message: 'something broke', errno: 32, providerMessage: 'Broken pipe' });
      assert.equal(err.code, 'KVF_ERR_PROVIDER', `code ${String(code)}`);
      assert.equal(err.message, 'something broke');
      assert.equal(err.errno, 32);
      assert.equal(err.providerMessage, 'Broken pipe');
    }
  });

  test('returns KvfError instances unchanged and tolerates non-objects', () => {
    const original = new KvfError('KVF_ERR_BUSY', 'in flight');
    assert.equal(fromNative(original), original);
    const fromString = fromNative('plain failure');
    assert.equal(fromString.code, 'KVF_ERR_PROVIDER');
    assert.equal(fromString.message, 'plain failure');
    for (const v of [null, undefined, 0]) assert.equal(fromNative(v).code, 'KVF_ERR_PROVIDER');
  });

  test('ignores detail fields of the wrong type', () => {
    const err = fromNative({ code: 'KVF_ERR_TIMEOUT', message: 'late', errno: '110', providerMessage: 5 });
    assert.equal(err.code, 'KVF_ERR_TIMEOUT');
    assert.equal(err.errno, undefined);
    assert.equal(err.providerMessage, undefined);
  });
});
