export {
  Agent,
  type AgentOptions,
  type AllocateOptions,
  type PostOptions,
  type TransferOptions,
  type TransferReport,
  type TransferOp,
} from './fabric/agent.js';
export { PreparedTransfer } from './fabric/prepared.js';
export { MemoryRegion, type MemoryInput, type DeviceMemoryInput } from './fabric/memory.js';
export { DeviceRegion } from './fabric/device-region.js';
export type { StagingOptions } from './fabric/staging-options.js';
export { DeviceBuffer, cudaStatus, parseDevice, type CudaDevice, type CudaStatus } from './fabric/gpu.js';
export { RemotePeer, type RemoteRegionInfo } from './fabric/peer.js';
export { Grant, GRANT_VERSION, decodeGrant, encodeGrant, type GrantAccess, type GrantDescription } from './fabric/grants.js';
export type { GrantOptions } from './fabric/grant-book.js';
export type { TransferDescriptor } from './fabric/descriptors.js';
export type { Notification } from './fabric/notifications.js';
export { KvfError } from './common/errors.js';
export { ERROR_CODES, type ErrorCode } from './common/error-registry.js';
export { METADATA_VERSION, decodeMetadata, encodeMetadata, type AgentDescription } from './fabric/metadata.js';
export { SUPPORTED_BACKENDS, type Backend } from './fabric/config.js';
export { ReferenceEngine, type BatchStats, type Engine, type ModelInfo, type ReferenceEngineOptions, type StepEntry } from './engine/engine.js';
export type { KvLayout } from './kv/layout.js';
export { generate, type GenerateOptions, type Generation } from './engine/generate.js';
export { Sampler, type SamplingOptions } from './engine/sampling.js';
export { Tokenizer, loadTokenizer } from './engine/tokenizer.js';
export { ChatTemplate, type ChatMessage } from './engine/chat-template.js';
export { readGgufMetadata } from './engine/gguf-metadata.js';
