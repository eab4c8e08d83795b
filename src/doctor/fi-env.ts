// FI_* (and KVF_/NIXL_/RDMAV_) variables: names nobody reads, values libfabric cannot parse, and the seed's
// settings that quietly defeat the point of EFA (FI_HMEM_DISABLE_P2P=1 turns GPUDirect off; FI_EFA_ENABLE_SHM
// is not a libfabric variable, so shm stays on).
import type { Context } from './context.js';
import { parseBool } from './context.js';
import { isKnownEnv, MISTAKEN_ENV, POLICED_PREFIXES } from './known-env.js';
import type { CheckResult } from './types.js';

const BOOLEANS = ['FI_EFA_USE_DEVICE_RDMA', 'FI_EFA_ENABLE_SHM_TRANSFER', 'FI_EFA_FORK_SAFE', 'FI_HMEM_DISABLE_P2P', 'RDMAV_FORK_SAFE', 'FI_EFA_USE_HUGE_PAGE'];
const INTEGERS = [
  'FI_EFA_TX_SIZE',
  'FI_EFA_RX_SIZE',
  'FI_EFA_CQ_SIZE',
  'FI_EFA_TX_QUEUE_SIZE',
  'FI_MR_CACHE_MAX_COUNT',
  'FI_MR_CACHE_MAX_SIZE',
  'FI_UNIVERSE_SIZE',
];
const MONITORS = ['userfaultfd', 'uffd', 'memhooks', 'kdreg2', 'cuda', 'rocm', 'ze', 'disabled'];

export async function checkFiEnv(ctx: Context): Promise<CheckResult[]> {
  const group = 'fi-env';
  const env = ctx.env;
  const out: CheckResult[] = [];
  const fromLib = (await ctx.fiInfo()).vars;

  for (const name of Object.keys(env).sort()) {
    if (!POLICED_PREFIXES.some((p) => name.startsWith(p))) continue;
    const meant = MISTAKEN_ENV[name];
    if (meant) {
      const value = env[name]!;
      out.push({
        group,
        name,
        status: 'warn',
        detail: `not a libfabric variable: it is ignored, so what ${name}=${value} meant to do does not happen`,
        fix: `use ${meant}=${value} instead`,
      });
    } else if (!isKnownEnv(name, fromLib)) {
      out.push({
        group,
        name,
        status: 'warn',
        detail: 'neither kvfabric nor libfabric reads this variable (a typo?)',
        fix: "remove it or correct the name (`fi_info -e` lists libfabric's)",
      });
    }
  }
  for (const name of BOOLEANS) {
    const v = env[name];
    if (v !== undefined && parseBool(v) === undefined)
      out.push({ group, name, status: 'fail', detail: `${name}=${v} is not a boolean`, fix: `set ${name}=1 or 0` });
  }
  for (const name of INTEGERS) {
    const v = env[name];
    if (v !== undefined && !/^\d+$/.test(v.trim()))
      out.push({ group, name, status: 'fail', detail: `${name}=${v} is not a non-negative integer`, fix: `set ${name} to a number` });
  }
  const monitor = env.FI_MR_CACHE_MONITOR;
  if (monitor !== undefined && !MONITORS.includes(monitor.trim())) {
    out.push({ group, name: 'FI_MR_CACHE_MONITOR', status: 'fail', detail: `${monitor} is not a memory monitor`, fix: `one of ${MONITORS.join(', ')}` });
  }

  const p2p = parseBool(env.FI_HMEM_DISABLE_P2P);
  if (p2p === true) {
    const gpus = ctx.gpus().length;
    out.push({
      group,
      name: 'FI_HMEM_DISABLE_P2P',
      // With GPUs, KV in GPU memory loses GPUDirect RDMA (NIC <-> GPU peer-to-peer): it is bounced through host
      // memory or its registration fails. Without GPUs it does nothing yet, but it would on the GPU nodes.
      status: gpus > 0 ? 'fail' : 'warn',
      detail: `=1 disables GPUDirect RDMA (peer-to-peer NIC <-> GPU)${gpus > 0 ? ` on a node with ${gpus} GPU(s)` : '; no GPU here, so it does not bite yet'}`,
      fix: 'unset it (the seed calls it "required for EFA"; it is not)',
    });
  } else if (env.FI_HMEM_DISABLE_P2P !== undefined && p2p === false) {
    out.push({ group, name: 'FI_HMEM_DISABLE_P2P', status: 'ok', detail: '=0: GPUDirect RDMA allowed' });
  }

  if (ctx.usesEfa()) {
    const rdma = parseBool(env.FI_EFA_USE_DEVICE_RDMA);
    if (rdma === true) out.push({ group, name: 'FI_EFA_USE_DEVICE_RDMA', status: 'ok', detail: '=1: RDMA read/write in the NIC' });
    else if (rdma === false)
      out.push({
        group,
        name: 'FI_EFA_USE_DEVICE_RDMA',
        status: 'warn',
        detail: '=0: KV pulls (RDMA READ) are emulated with messages, at a fraction of the bandwidth',
        fix: 'set FI_EFA_USE_DEVICE_RDMA=1 (p4d, p5 and later support device RDMA)',
      });
    else if (env.FI_EFA_USE_DEVICE_RDMA === undefined)
      out.push({
        group,
        name: 'FI_EFA_USE_DEVICE_RDMA',
        status: 'warn',
        detail: 'unset: older libfabric releases leave device RDMA off',
        fix: 'set FI_EFA_USE_DEVICE_RDMA=1 (kubernetes/common/configmap.yaml does)',
      });
    // Serving workers revoke each request's grant before its blocks are reused; with the MR cache on, efa may keep
    // a closed registration (and its key) alive in the NIC, so a revoked grant could still be read (docs/security.md).
    if (env.FI_MR_CACHE_MAX_COUNT?.trim() === '0')
      out.push({ group, name: 'FI_MR_CACHE_MAX_COUNT', status: 'ok', detail: '=0: a revoked grant ends in the NIC at once' });
    else
      out.push({
        group,
        name: 'FI_MR_CACHE_MAX_COUNT',
        status: 'warn',
        detail: `${env.FI_MR_CACHE_MAX_COUNT === undefined ? 'unset' : `=${env.FI_MR_CACHE_MAX_COUNT}`}: efa's MR cache may keep a revoked grant's registration (and key) alive`,
        fix: 'set FI_MR_CACHE_MAX_COUNT=0 (kubernetes/common/configmap.yaml does)',
      });
    const shm = parseBool(env.FI_EFA_ENABLE_SHM_TRANSFER);
    if (shm === false)
      out.push({ group, name: 'FI_EFA_ENABLE_SHM_TRANSFER', status: 'ok', detail: "=0: efa carries intra-node traffic too (the seed's intent)" });
  }
  if (out.length === 0) out.push({ group, name: 'FI_* variables', status: 'ok', detail: 'nothing unknown, misspelt or harmful' });
  return out;
}
