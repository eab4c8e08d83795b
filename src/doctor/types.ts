// What a doctor check reports. Reports are data, never exceptions: one broken probe must not hide the rest.

/** ok: fine; warn: works but not as intended (or slower); fail: kvfabric will not work so; skip: does not apply here. */
export type Status = 'ok' | 'warn' | 'fail' | 'skip';

export interface CheckResult {
  /** Check group: efa, providers, fi-env, address, memlock, hugepages, nixl, gpu. */
  group: string;
  /** What was checked, e.g. "/dev/infiniband" or "FI_HMEM_DISABLE_P2P". */
  name: string;
  status: Status;
  /** What was found. */
  detail: string;
  /** How to fix it (warn and fail only). */
  fix?: string;
}

export interface DoctorReport {
  /** False when any check failed. */
  ok: boolean;
  checks: CheckResult[];
}

export interface DoctorOptions {
  env?: NodeJS.ProcessEnv;
  /** Filesystem root that /dev, /proc and /sys are read under (default '/'): a container's root, or a test's temp dir. */
  root?: string;
  /** Overrides of the three trees, each defaulting to <root>/dev, <root>/proc, <root>/sys. */
  devRoot?: string;
  procRoot?: string;
  sysRoot?: string;
  /** The provider a worker would be started with (--provider); default FI_PROVIDER / KVF_PROVIDER, else automatic. */
  provider?: string;
  /**
   * Open a libfabric agent as a worker would (default true). False also skips the other probes that load the
   * addon (the CUDA driver and FI_HMEM), unless `cuda` is given.
   */
  openAgent?: boolean;
  /** What the CUDA and FI_HMEM checks ask; default the addon's cudaStatus() and libfabricHmem() (tests pass stand-ins). */
  cuda?: CudaProbe;
}

/** The addon's GPU probes (src/fabric/gpu-native.ts), as the doctor uses them. */
export interface CudaProbe {
  status(): {
    available: boolean;
    reason?: string;
    driverVersion?: number;
    devices: { index: number; name: string; totalMemory: number; pciBusId: string }[];
  };
  /** fi_getinfo for the provider with FI_HMEM; `library` is the libfabric file that answered. */
  hmem(provider: string): { hmem: boolean; library?: string; error?: string };
}
