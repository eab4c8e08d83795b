// /dev/shm hygiene: the shm provider's endpoint files outlive a process killed with SIGKILL (16 MiB each, in a
// /dev/shm that containers size at 64 MiB). A new shm agent reclaims the files of processes that are gone
// (their marker lock is free) and never touches those of a live process; a process that exits without
// closing its agents removes its own.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Agent } from '../src/index.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

/** Starts test/fixtures/lifecycle/shm-holder.ts; resolves with the child once its endpoints exist. */
function startHolder(mode: 'stay' | 'exit'): Promise<{ child: ChildProcess; pid: number; exited: Promise<void> }> {
  const file = fileURLToPath(new URL('./fixtures/lifecycle/shm-holder.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', file, mode], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  const exited = new Promise<void>((resolve) => child.once('close', () => (children.delete(child), resolve())));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /READY (\d+)/.exec(out);
      if (m) resolve({ child, pid: Number(m[1]), exited });
    });
    child.once('close', (code) => {
      if (!/READY/.test(out)) reject(new Error(`holder exited with ${code} before READY`));
    });
  });
}

function filesOf(pid: number): string[] {
  return readdirSync('/dev/shm').filter((f) => f.startsWith(`kvf_${pid}_`));
}

async function openShmAgent(name: string): Promise<void> {
  const a = await Agent.create({ name, provider: 'shm', logger: false });
  await a.close();
}

test('a new shm agent reclaims the /dev/shm files of a SIGKILLed process and keeps those of a live one', { timeout: 60_000 }, async () => {
  const dead = await startHolder('stay');
  const deadFiles = filesOf(dead.pid);
  assert.ok(deadFiles.filter((f) => f.endsWith('.live')).length === 1 && deadFiles.length >= 3, `holder's files: ${deadFiles.join(' ')}`);
  dead.child.kill('SIGKILL');
  await dead.exited;
  assert.deepEqual(filesOf(dead.pid), deadFiles, 'SIGKILL leaves the files behind');

  const alive = await startHolder('stay');
  const aliveFiles = filesOf(alive.pid);
  await openShmAgent('reclaimer-1');
  assert.deepEqual(filesOf(dead.pid), [], 'the dead process’s files are gone');
  assert.deepEqual(filesOf(alive.pid), aliveFiles, 'the live process’s files are untouched');

  alive.child.kill('SIGKILL');
  await alive.exited;
  await openShmAgent('reclaimer-2');
  assert.deepEqual(filesOf(alive.pid), []);
});

test('a process that exits without closing its shm agent leaves no files behind', { timeout: 60_000 }, async () => {
  const h = await startHolder('exit');
  await h.exited;
  assert.deepEqual(filesOf(h.pid), []);
});
