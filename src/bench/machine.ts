// Describes the machine a benchmark ran on, so that every number in a JSON result says where it came from.
// benchmarks/ re-exports this one.
import { cpus, hostname, release, totalmem } from 'node:os';

import { addon } from '../fabric/native.js';

export interface MachineDescription {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  libfabric: string;
  host: string;
}

export function describeMachine(): MachineDescription {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    libfabric: addon.libfabricVersion(),
    host: hostname(),
  };
}
