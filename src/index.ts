export { Agent, type AgentOptions, type TransferOptions, type TransferReport, type TransferOp } from './fabric/agent.js';
export { MemoryRegion, type MemoryInput } from './fabric/memory.js';
export { RemotePeer, type RemoteRegionInfo } from './fabric/peer.js';
export type { TransferDescriptor } from './fabric/descriptors.js';
export type { Notification } from './fabric/notifications.js';
export { KvfError, ERROR_CODES, type ErrorCode } from './fabric/errors.js';
export { METADATA_VERSION, decodeMetadata, encodeMetadata, type AgentDescription } from './fabric/metadata.js';
export { SUPPORTED_BACKENDS, type Backend } from './fabric/config.js';
