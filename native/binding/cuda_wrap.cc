// Device memory for JS. Ownership: cudaAllocate returns a plain object { ptr: bigint, bytes, device } that owns
// the allocation: cudaFree(ptr) frees it at once, and the object's finalizer frees it if that never happened.
// Live allocations are kept in one table keyed by pointer, each with a serial number, so that a finalizer never
// frees a later allocation that the driver placed at the same address, and a second cudaFree is refused.
#include "binding/cuda_wrap.h"

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>

#include "binding/js_error.h"
#include "binding/js_number.h"
#include "core/cuda.h"
#include "core/error_codes.h"
#include "core/hmem_probe.h"

namespace kvf {
namespace {

struct Live {
  DeviceAllocation allocation;
  uint64_t serial;
};

std::mutex live_mutex;
std::map<CUdeviceptr, Live> live;  // every allocation made by cudaAllocate and not yet freed
uint64_t next_serial = 1;

// Removes the allocation at ptr from the table if it is the one numbered `serial` (any, when 0) and frees it.
// Returns false when there was none.
bool Release(CUdeviceptr ptr, uint64_t serial) {
  DeviceAllocation a;
  {
    std::lock_guard<std::mutex> lock(live_mutex);
    auto it = live.find(ptr);
    if (it == live.end() || (serial != 0 && it->second.serial != serial)) return false;
    a = it->second.allocation;
    live.erase(it);
  }
  FreeDevice(a);
  return true;
}

CUdeviceptr PointerArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBigInt())
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": ptr must be a bigint");
  bool lossless = false;
  uint64_t v = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless)
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": ptr must be a bigint from 0 to 2^64-1");
  return v;
}

size_t LengthArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber())
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": length must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > kMaxSafeInteger || v != static_cast<double>(static_cast<uint64_t>(v))) {
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": length must be an integer from 0 to 2^53-1");
  }
  return static_cast<size_t>(v);
}

Napi::Uint8Array BytesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": host memory must be a Uint8Array");
  }
  return info[i].As<Napi::Uint8Array>();
}

int DeviceArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  double v = info.Length() > i && info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1;
  if (!(v >= 0) || v > 1024 || v != static_cast<double>(static_cast<int>(v)))
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + ": device must be an integer ≥ 0");
  return static_cast<int>(v);
}

Napi::Value Status(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CudaStatus s = GetCudaStatus();
  Napi::Object out = Napi::Object::New(env);
  out.Set("available", s.available);
  if (!s.available) out.Set("reason", s.reason);
  if (s.driver_version != 0) out.Set("driverVersion", s.driver_version);
  Napi::Array devices = Napi::Array::New(env, s.devices.size());
  for (size_t i = 0; i < s.devices.size(); ++i) {
    const CudaDevice& d = s.devices[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", d.index);
    o.Set("name", d.name);
    o.Set("totalMemory", static_cast<double>(d.total_memory));
    o.Set("pciBusId", d.pci_bus_id);
    devices.Set(static_cast<uint32_t>(i), o);
  }
  out.Set("devices", devices);
  return out;
}

// cudaAllocate(device, bytes) -> { ptr: bigint, bytes, device }
Napi::Value Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int device = DeviceArg(info, 0, "cudaAllocate");
  size_t bytes = LengthArg(info, 1, "cudaAllocate");
  Live entry;
  try {
    entry.allocation = AllocateDevice(device, bytes);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  {
    std::lock_guard<std::mutex> lock(live_mutex);
    entry.serial = next_serial++;
    live[entry.allocation.ptr] = entry;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("ptr", Napi::BigInt::New(env, static_cast<uint64_t>(entry.allocation.ptr)));
  out.Set("bytes", static_cast<double>(bytes));
  out.Set("device", entry.allocation.device);
  auto* hold = new Live(entry);
  out.AddFinalizer(
      [](Napi::Env, Live* h) {
        try {
          Release(h->allocation.ptr, h->serial);
        } catch (...) {
          // A finalizer cannot throw; the driver refusing a free leaves nothing to do.
        }
        delete h;
      },
      hold);
  return out;
}

// cudaFree(ptr): frees an allocation of cudaAllocate; KVF_ERR_INVALID_ARGUMENT when ptr is not a live one.
Napi::Value Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr ptr = PointerArg(info, 0, "cudaFree");
  bool freed = false;
  try {
    freed = Release(ptr, 0);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  if (!freed)
    ThrowCoded(env, code::kInvalidArgument,
               "cudaFree: the pointer is not a live allocation of cudaAllocate (freed already?)");
  return env.Undefined();
}

// Runs `f` and turns a coded core error into a JS exception.
template <typename F>
void Guard(Napi::Env env, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    Rethrow(env, e);
  }
}

// cudaCopyToDevice(ptr, bytes: Uint8Array): the whole array to [ptr, ptr + length).
Napi::Value CopyTo(const Napi::CallbackInfo& info) {
  CUdeviceptr ptr = PointerArg(info, 0, "cudaCopyToDevice");
  Napi::Uint8Array bytes = BytesArg(info, 1, "cudaCopyToDevice");
  if (bytes.ByteLength() > 0) Guard(info.Env(), [&] { CopyToDevice(ptr, bytes.Data(), bytes.ByteLength()); });
  return info.Env().Undefined();
}

// cudaCopyFromDevice(ptr, bytes: Uint8Array): [ptr, ptr + length) into the whole array.
Napi::Value CopyFrom(const Napi::CallbackInfo& info) {
  CUdeviceptr ptr = PointerArg(info, 0, "cudaCopyFromDevice");
  Napi::Uint8Array bytes = BytesArg(info, 1, "cudaCopyFromDevice");
  if (bytes.ByteLength() > 0) Guard(info.Env(), [&] { CopyFromDevice(bytes.Data(), ptr, bytes.ByteLength()); });
  return info.Env().Undefined();
}

// cudaCopyDeviceToDevice(dst, src, length)
Napi::Value CopyDevice(const Napi::CallbackInfo& info) {
  CUdeviceptr dst = PointerArg(info, 0, "cudaCopyDeviceToDevice");
  CUdeviceptr src = PointerArg(info, 1, "cudaCopyDeviceToDevice");
  size_t length = LengthArg(info, 2, "cudaCopyDeviceToDevice");
  if (length > 0) Guard(info.Env(), [&] { CopyDeviceToDevice(dst, src, length); });
  return info.Env().Undefined();
}

// Asynchronous copies in flight, by the number JS holds (never a pointer JS could forge).
std::mutex copies_mutex;
std::map<uint32_t, CUevent> copies;
uint32_t next_copy = 1;

// cudaCopyDeviceAsync(dst, src, length) -> number: a copy queued on the destination's copy stream.
Napi::Value CopyDeviceAsync(const Napi::CallbackInfo& info) {
  CUdeviceptr dst = PointerArg(info, 0, "cudaCopyDeviceAsync");
  CUdeviceptr src = PointerArg(info, 1, "cudaCopyDeviceAsync");
  size_t length = LengthArg(info, 2, "cudaCopyDeviceAsync");
  if (length == 0) ThrowCoded(info.Env(), code::kZeroLength, "cudaCopyDeviceAsync: length is 0");
  CUevent done = nullptr;
  Guard(info.Env(), [&] { done = CopyDeviceToDeviceAsync(dst, src, length); });
  std::lock_guard<std::mutex> lock(copies_mutex);
  uint32_t id = next_copy++;
  if (next_copy == 0) next_copy = 1;
  copies[id] = done;
  return Napi::Number::New(info.Env(), id);
}

// cudaCopyFinished(id) -> boolean; true once (the copy is done and forgotten), or throws the copy's error.
Napi::Value CopyFinishedJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  double v = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  uint32_t id = v >= 1 && v <= 4294967295.0 ? static_cast<uint32_t>(v) : 0;
  CUevent done = nullptr;
  {
    std::lock_guard<std::mutex> lock(copies_mutex);
    auto it = copies.find(id);
    if (it == copies.end()) ThrowCoded(env, code::kInvalidArgument, "cudaCopyFinished: no such copy in flight");
    done = it->second;
  }
  bool finished = false;
  try {
    finished = CopyFinished(done);
  } catch (const Error& e) {
    std::lock_guard<std::mutex> lock(copies_mutex);
    copies.erase(id);
    Rethrow(env, e);
  }
  if (finished) {
    std::lock_guard<std::mutex> lock(copies_mutex);
    copies.erase(id);
  }
  return Napi::Boolean::New(env, finished);
}

// cudaIpcExport(ptr, length) -> { handle: Buffer(64), offset, device }
Napi::Value IpcExportJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr ptr = PointerArg(info, 0, "cudaIpcExport");
  size_t length = LengthArg(info, 1, "cudaIpcExport");
  IpcExport x;
  Guard(env, [&] { x = ExportIpc(ptr, length); });
  Napi::Object out = Napi::Object::New(env);
  out.Set("handle", Napi::Buffer<char>::Copy(env, x.handle.reserved, sizeof x.handle.reserved));
  out.Set("offset", static_cast<double>(x.offset));
  out.Set("device", x.device);
  return out;
}

// cudaIpcOpen(device, handle: Uint8Array(64)) -> bigint, the mapping's base
Napi::Value IpcOpenJs(const Napi::CallbackInfo& info) {
  int device = DeviceArg(info, 0, "cudaIpcOpen");
  Napi::Uint8Array bytes = BytesArg(info, 1, "cudaIpcOpen");
  CUipcMemHandle handle;
  if (bytes.ByteLength() != sizeof handle.reserved)
    ThrowCoded(info.Env(), code::kInvalidArgument, "cudaIpcOpen: an IPC handle is 64 bytes");
  std::memcpy(handle.reserved, bytes.Data(), sizeof handle.reserved);
  CUdeviceptr mapped = 0;
  Guard(info.Env(), [&] { mapped = OpenIpc(device, handle); });
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(mapped));
}

// cudaIpcClose(device, mapped)
Napi::Value IpcCloseJs(const Napi::CallbackInfo& info) {
  int device = DeviceArg(info, 0, "cudaIpcClose");
  CUdeviceptr mapped = PointerArg(info, 1, "cudaIpcClose");
  Guard(info.Env(), [&] { CloseIpc(device, mapped); });
  return info.Env().Undefined();
}

// cudaPinHost(bytes: Uint8Array) / cudaUnpinHost(bytes)
Napi::Value PinHostJs(const Napi::CallbackInfo& info) {
  Napi::Uint8Array bytes = BytesArg(info, 0, "cudaPinHost");
  if (bytes.ByteLength() > 0) Guard(info.Env(), [&] { PinHost(bytes.Data(), bytes.ByteLength()); });
  return info.Env().Undefined();
}

Napi::Value UnpinHostJs(const Napi::CallbackInfo& info) {
  Napi::Uint8Array bytes = BytesArg(info, 0, "cudaUnpinHost");
  if (bytes.ByteLength() > 0) Guard(info.Env(), [&] { UnpinHost(bytes.Data()); });
  return info.Env().Undefined();
}

// cudaCheckRange(ptr, length) -> { device, base: bigint, size }
Napi::Value CheckRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CUdeviceptr ptr = PointerArg(info, 0, "cudaCheckRange");
  size_t length = LengthArg(info, 1, "cudaCheckRange");
  DeviceRange r;
  Guard(env, [&] { r = CheckDeviceRange(ptr, length); });
  Napi::Object out = Napi::Object::New(env);
  out.Set("device", r.device);
  out.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(r.base)));
  out.Set("size", static_cast<double>(r.size));
  return out;
}

// libfabricHmem(provider) -> { hmem: boolean, library?: string, error?: string }
Napi::Value LibfabricHmem(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    ThrowCoded(env, code::kInvalidArgument, "libfabricHmem(provider): provider must be a string");
  HmemProbe p = ProbeHmem(info[0].As<Napi::String>().Utf8Value());
  Napi::Object out = Napi::Object::New(env);
  out.Set("hmem", p.hmem);
  if (!p.library.empty()) out.Set("library", p.library);
  if (!p.error.empty()) out.Set("error", p.error);
  return out;
}

}  // namespace

void InitCuda(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaStatus", Napi::Function::New(env, Status));
  exports.Set("cudaAllocate", Napi::Function::New(env, Allocate));
  exports.Set("cudaFree", Napi::Function::New(env, Free));
  exports.Set("cudaCopyToDevice", Napi::Function::New(env, CopyTo));
  exports.Set("cudaCopyFromDevice", Napi::Function::New(env, CopyFrom));
  exports.Set("cudaCheckRange", Napi::Function::New(env, CheckRange));
  exports.Set("cudaCopyDeviceToDevice", Napi::Function::New(env, CopyDevice));
  exports.Set("cudaCopyDeviceAsync", Napi::Function::New(env, CopyDeviceAsync));
  exports.Set("cudaCopyFinished", Napi::Function::New(env, CopyFinishedJs));
  exports.Set("cudaIpcExport", Napi::Function::New(env, IpcExportJs));
  exports.Set("cudaIpcOpen", Napi::Function::New(env, IpcOpenJs));
  exports.Set("cudaIpcClose", Napi::Function::New(env, IpcCloseJs));
  exports.Set("cudaPinHost", Napi::Function::New(env, PinHostJs));
  exports.Set("cudaUnpinHost", Napi::Function::New(env, UnpinHostJs));
  exports.Set("libfabricHmem", Napi::Function::New(env, LibfabricHmem));
}

}  // namespace kvf
