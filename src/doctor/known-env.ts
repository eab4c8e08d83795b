// Environment variables a kvfabric pod may carry, by who reads them. Used by `kvfabric doctor` (a name nobody
// reads is usually a typo, or a name from a guide that never existed — the seed's FI_EFA_ENABLE_SHM) and by
// the manifest tests (every variable in the ConfigMap must be one of these).
import { configEnvNames } from '../serve/config.js';

/**
 * kvfabric's own: every serving config key as KVF_<KEY>, derived from the config schema (src/serve/config-schema.ts) so
 * a key added there is never reported as a typo, plus the process-level ones nobody's schema holds.
 */
export const KVFABRIC_ENV: readonly string[] = [
  ...configEnvNames(),
  // (the control-plane credentials, KVF_CLUSTER_TOKEN, KVF_TLS_* and KVF_HANDLE_KEY*, are config keys too)
  // process level (README "Configuration")
  'KVF_ADDRESS',
  'KVF_LIBFABRIC',
  'KVF_LIBCUDA',
  'KVF_LOG_LEVEL',
  'KVF_ADDON',
  'KVF_MODEL_CACHE',
  // kvfabric serve: no download of the default model
  'KVF_OFFLINE',
  'KVF_FAST_PATH',
  // native/engine/qdot.cc: caps the engine's instruction set (scalar|avx2)
  'KVF_ENGINE_ISA',
  // scripts and test tooling (fetch-model, test-inference.sh, the suites), so a developer's shell is not flagged
  'KVF_PYTHON',
  'KVF_REQUIRE_GPU',
  'KVF_URL',
  'KVF_TEST_LOG',
  'KVF_TEST_SEED',
  'KVF_REAL_MODEL',
  'KVF_TINY_MODEL',
  'KVF_TINY_MODEL_PATH',
  'KVF_SANITIZE',
  'KVF_SANITIZE_ENGINE',
];

/** The seed's NIXL variables: kvfabric honours NIXL_BACKEND; the plugin dir matters only where NIXL itself runs. */
export const NIXL_ENV = ['NIXL_BACKEND', 'NIXL_PLUGIN_DIR', 'NIXL_LOG_LEVEL'] as const;

/** libfabric core and the providers kvfabric uses (fi_provider(7), fi_efa(7), fi_tcp(7), fi_shm(7), fi_rxm(7)). */
export const LIBFABRIC_ENV = [
  'FI_PROVIDER',
  'FI_PROVIDER_PATH',
  'FI_LOG_LEVEL',
  'FI_LOG_PROV',
  'FI_LOG_SUBSYS',
  'FI_LOG_INTERVAL',
  'FI_UNIVERSE_SIZE',
  'FI_HMEM',
  'FI_HMEM_DISABLE_P2P',
  'FI_HMEM_CUDA_ENABLE_XFER',
  'FI_HMEM_CUDA_USE_GDRCOPY',
  'FI_HMEM_CUDA_USE_DMABUF',
  'FI_MR_CACHE_MAX_SIZE',
  'FI_MR_CACHE_MAX_COUNT',
  'FI_MR_CACHE_MONITOR',
  'FI_MR_CUDA_CACHE_MONITOR_ENABLED',
  'FI_EFA_CQ_SIZE',
  'FI_EFA_ENABLE_SHM_TRANSFER',
  'FI_EFA_FORK_SAFE',
  'FI_EFA_INTER_MAX_MEDIUM_MESSAGE_SIZE',
  'FI_EFA_INTER_MIN_READ_MESSAGE_SIZE',
  'FI_EFA_INTER_MIN_READ_WRITE_SIZE',
  'FI_EFA_INTER_READ_SEGMENT_SIZE',
  'FI_EFA_MAX_MEMCPY_SIZE',
  'FI_EFA_MAX_TIMEOUT',
  'FI_EFA_MR_CACHE_ENABLE',
  'FI_EFA_MR_MAX_CACHED_COUNT',
  'FI_EFA_MR_MAX_CACHED_SIZE',
  'FI_EFA_MTU_SIZE',
  'FI_EFA_RECVWIN_SIZE',
  'FI_EFA_RUNT_SIZE',
  'FI_EFA_RX_COPY_OOO',
  'FI_EFA_RX_COPY_UNEXP',
  'FI_EFA_RX_IOV_LIMIT',
  'FI_EFA_RX_SIZE',
  'FI_EFA_RX_WINDOW_SIZE',
  'FI_EFA_SET_CUDA_SYNC_MEMOPS',
  'FI_EFA_SHM_AV_SIZE',
  'FI_EFA_SHM_MAX_MEDIUM_SIZE',
  'FI_EFA_TIMEOUT_INTERVAL',
  'FI_EFA_TX_IOV_LIMIT',
  'FI_EFA_TX_QUEUE_SIZE',
  'FI_EFA_TX_SIZE',
  'FI_EFA_USE_DEVICE_RDMA',
  'FI_EFA_USE_HUGE_PAGE',
  'FI_EFA_USE_ZCPY_RX',
  'FI_TCP_IFACE',
  'FI_TCP_PORT_LOW_RANGE',
  'FI_TCP_PORT_HIGH_RANGE',
  'FI_OFI_RXM_BUFFER_SIZE',
  'FI_OFI_RXM_USE_SRX',
  'FI_SHM_DISABLE_CMA',
  'FI_SHM_SAR_THRESHOLD',
  'FI_SHM_TX_SIZE',
  'FI_SHM_RX_SIZE',
] as const;

/** rdma-core (libibverbs), read under libfabric's efa provider. */
export const RDMA_CORE_ENV = ['RDMAV_FORK_SAFE', 'IBV_FORK_SAFE'] as const;

/**
 * Names that look right and are not: what each was meant to be. Setting one silently does nothing, so the
 * setting the author wanted never happens.
 */
export const MISTAKEN_ENV: Readonly<Record<string, string>> = {
  FI_EFA_ENABLE_SHM: 'FI_EFA_ENABLE_SHM_TRANSFER',
};

const KNOWN = new Set<string>([...KVFABRIC_ENV, ...NIXL_ENV, ...LIBFABRIC_ENV, ...RDMA_CORE_ENV]);

/** Whether anything in a kvfabric pod reads `name`. `extra` adds names the loaded libfabric reports (`fi_info -e`). */
export function isKnownEnv(name: string, extra: ReadonlySet<string> = new Set()): boolean {
  return KNOWN.has(name) || extra.has(name);
}

/** The prefixes whose names doctor and the manifest tests police (anything else is the application's business). */
export const POLICED_PREFIXES = ['KVF_', 'FI_', 'NIXL_', 'RDMAV_'] as const;
