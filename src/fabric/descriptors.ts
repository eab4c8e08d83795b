// Descriptors name what moves: a range of a local region and a range of a peer's region of equal length.
import { KvfError } from '../common/errors.js';
import { MemoryRegion } from './memory.js';
import type { DeviceRegion } from './device-region.js';

export interface TransferDescriptor {
  /** Local region (or its id): host memory, or a device region (agent.allocate with `device`). */
  local: MemoryRegion | DeviceRegion | number;
  localOffset: number;
  /** The peer's region id, as listed in RemotePeer.regions. */
  remote: number | { id: number };
  remoteOffset: number;
  length: number;
}

/** Five doubles per descriptor, the layout the addon reads without per-descriptor JS calls. */
export const DESCRIPTOR_FIELDS = 5;

/**
 * Packs descriptors for the addon. `owned` maps this agent's region ids to its regions: a MemoryRegion of
 * another agent is refused (ids are per agent, so it would silently name one of ours).
 */
export function packDescriptors(descriptors: readonly TransferDescriptor[], owned: ReadonlyMap<number, MemoryRegion>): Float64Array {
  if (!Array.isArray(descriptors)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'descriptors must be an array');
  }
  const out = new Float64Array(descriptors.length * DESCRIPTOR_FIELDS);
  for (let i = 0; i < descriptors.length; i++) {
    const d = descriptors[i];
    if (d === null || typeof d !== 'object') {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `descriptor ${i} is not an object`);
    }
    if (d.local instanceof MemoryRegion && owned.get(d.local.id) !== d.local) {
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `descriptor ${i}: local region ${d.local.id} is not registered with this agent`);
    }
    const local = typeof d.local === 'number' ? d.local : d.local?.id;
    const remote = typeof d.remote === 'number' ? d.remote : d.remote?.id;
    const o = i * DESCRIPTOR_FIELDS;
    // Type errors become NaN here; the addon rejects every non-integer field with the descriptor index.
    out[o] = typeof local === 'number' ? local : NaN;
    out[o + 1] = typeof d.localOffset === 'number' ? d.localOffset : NaN;
    out[o + 2] = typeof remote === 'number' ? remote : NaN;
    out[o + 3] = typeof d.remoteOffset === 'number' ? d.remoteOffset : NaN;
    out[o + 4] = typeof d.length === 'number' ? d.length : NaN;
  }
  return out;
}
