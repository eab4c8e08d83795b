// The stable error codes the native code raises, spelt once, so that a misspelt code does not compile. Each is
// a code of the TypeScript registry (src/common/error-registry.ts), which holds its meaning and its HTTP and gRPC
// statuses; test/errors-registry.test.ts fails if a code here is not registered there, or if a bare "KVF_ERR_..."
// string literal appears in native/ outside this file.
#pragma once

namespace kvf::code {

inline constexpr char kInvalidArgument[] = "KVF_ERR_INVALID_ARGUMENT";
inline constexpr char kOutOfRange[] = "KVF_ERR_OUT_OF_RANGE";
inline constexpr char kZeroLength[] = "KVF_ERR_ZERO_LENGTH";
inline constexpr char kOverlap[] = "KVF_ERR_OVERLAP";
inline constexpr char kUnknownRegion[] = "KVF_ERR_UNKNOWN_REGION";
inline constexpr char kUnknownPeer[] = "KVF_ERR_UNKNOWN_PEER";
inline constexpr char kClosed[] = "KVF_ERR_CLOSED";
inline constexpr char kBusy[] = "KVF_ERR_BUSY";
inline constexpr char kDetached[] = "KVF_ERR_DETACHED";
inline constexpr char kBadMetadata[] = "KVF_ERR_BAD_METADATA";
inline constexpr char kProviderMismatch[] = "KVF_ERR_PROVIDER_MISMATCH";
inline constexpr char kTooLarge[] = "KVF_ERR_TOO_LARGE";
inline constexpr char kProviderUnavailable[] = "KVF_ERR_PROVIDER_UNAVAILABLE";
inline constexpr char kProvider[] = "KVF_ERR_PROVIDER";
inline constexpr char kAlloc[] = "KVF_ERR_ALLOC";
inline constexpr char kRemoteAccess[] = "KVF_ERR_REMOTE_ACCESS";
inline constexpr char kFastPath[] = "KVF_ERR_FAST_PATH";
inline constexpr char kBadModel[] = "KVF_ERR_BAD_MODEL";
inline constexpr char kUnsupportedTensorType[] = "KVF_ERR_UNSUPPORTED_TENSOR_TYPE";
inline constexpr char kPoolExhausted[] = "KVF_ERR_POOL_EXHAUSTED";
inline constexpr char kContextOverflow[] = "KVF_ERR_CONTEXT_OVERFLOW";
inline constexpr char kCancelled[] = "KVF_ERR_CANCELLED";
inline constexpr char kNoGpu[] = "KVF_ERR_NO_GPU";
inline constexpr char kCuda[] = "KVF_ERR_CUDA";

}  // namespace kvf::code
