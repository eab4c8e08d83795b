// Versioned binary codec for an agent's metadata blob: what one agent tells its peers about itself
// (libfabric provider, endpoint address per rail, registered memory regions and their keys, where it runs).
// The module the rest of kvfabric imports; split by purpose: the format, its limits and the CRC in
// metadata-format.ts (the layout is documented there), encoding in metadata-encode.ts, and the strict
// decoding of blobs from the network in metadata-decode.ts.
export {
  METADATA_LIMITS,
  METADATA_VERSION,
  crc32,
  type AgentDescription,
  type DeviceKind,
  type DeviceRegionDescription,
  type FabricRegistration,
  type HostDescription,
  type RegionDescription,
  type ShareDescription,
  type TableDescription,
} from './metadata-format.js';
export { encodeMetadata } from './metadata-encode.js';
export { decodeMetadata } from './metadata-decode.js';
