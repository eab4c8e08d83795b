// The overload benchmark's short variant (npm run bench:load runs the full one): the stack as separate
// processes, 4 clients at the frontend's --max-inflight, then 16. Whatever the machine's speed, admission must
// answer every request it cannot take with 429 and Retry-After, and every request it takes must complete: no
// 5xx, no error event, no timeout, pools back to baseline. Goodput is measured and recorded, not asserted.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import type { PhaseResult } from '../benchmarks/lib/overload.js';
import { ROOT, tinyModel } from './helpers/serve.js';

test('bench:load, 2 × 12 s: under 4× the admitted concurrency, refusals are 429s and every accepted request completes', { timeout: 180_000 }, async () => {
  const out = join(mkdtempSync(join(tmpdir(), 'kvf-load-')), 'load.json');
  const args = [
    '--import',
    'tsx',
    join(ROOT, 'benchmarks', 'load.ts'),
    '--model',
    tinyModel(),
    '--duration',
    '12',
    '--concurrency',
    '4',
    '--factor',
    '4',
    '--out',
    out,
  ];
  const stdout = await new Promise<string>((resolve) => execFile(process.execPath, args, { cwd: ROOT, maxBuffer: 16 << 20 }, (_err, so) => resolve(so)));
  const report = JSON.parse(readFileSync(out, 'utf8')) as { phases: { name: string; result: PhaseResult }[]; checks: Record<string, boolean> };
  const [sized, overload] = report.phases;
  assert.ok(sized!.result.completed > 0 && overload!.result.completed > 0, stdout);
  assert.ok(overload!.result.refused > 0, 'four times the admitted clients meet the limit');
  for (const { result } of report.phases) assert.deepEqual(result.errorCodes, {}, stdout);
  assert.equal(report.checks['no 5xx, error event or timeout in any phase'], true, stdout);
  assert.equal(report.checks['every refusal is a 429 with Retry-After'], true, stdout);
  assert.equal(report.checks['no refusal at the sized concurrency'], true, stdout);
  assert.equal(report.checks['pools back to baseline'], true, stdout);
});
