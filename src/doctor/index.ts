// `kvfabric doctor` as a library: run the checks, render the table.
export { runDoctor, CHECKS } from './run.js';
export { renderTable } from './render.js';
export type { CheckResult, DoctorOptions, DoctorReport, Status } from './types.js';
export { isKnownEnv, KVFABRIC_ENV, LIBFABRIC_ENV, NIXL_ENV, RDMA_CORE_ENV, MISTAKEN_ENV } from './known-env.js';
