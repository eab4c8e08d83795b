// The CUDA driver API opened with dlopen (see cuda.h): one table of the entry points kvfabric uses, resolved by
// their versioned names (cuMemAlloc_v2 and so on: the names cuda.h's macros map the plain ones to), and the few
// operations the addon needs on top of it.
#include "core/cuda.h"

#include <dlfcn.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/error.h"

namespace kvf {
namespace {

// The driver's constants we use (cuda.h values).
constexpr CUresult kSuccess = 0;
constexpr CUresult kErrorInvalidValue = 1;
constexpr CUresult kErrorOutOfMemory = 2;
constexpr CUresult kErrorNoDevice = 100;
constexpr int kPointerAttrMemoryType = 2;
constexpr int kPointerAttrDeviceOrdinal = 9;
constexpr int kPointerAttrRangeStartAddr = 11;
constexpr int kPointerAttrRangeSize = 12;
constexpr unsigned kMemoryTypeDevice = 2;
constexpr unsigned kIpcLazyEnablePeerAccess = 1;
constexpr CUresult kErrorHostMemoryAlreadyRegistered = 712;
constexpr CUresult kErrorNotReady = 600;
constexpr unsigned kStreamNonBlocking = 1;
constexpr unsigned kEventDisableTiming = 2;

struct Api {
  CUresult (*Init)(unsigned) = nullptr;
  CUresult (*DriverGetVersion)(int*) = nullptr;
  CUresult (*DeviceGetCount)(int*) = nullptr;
  CUresult (*DeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*DeviceGetName)(char*, int, CUdevice) = nullptr;
  CUresult (*DeviceGetPCIBusId)(char*, int, CUdevice) = nullptr;
  CUresult (*DeviceTotalMem)(size_t*, CUdevice) = nullptr;
  CUresult (*DevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*DevicePrimaryCtxRelease)(CUdevice) = nullptr;
  CUresult (*CtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*MemAlloc)(CUdeviceptr*, size_t) = nullptr;
  CUresult (*MemFree)(CUdeviceptr) = nullptr;
  CUresult (*MemcpyHtoD)(CUdeviceptr, const void*, size_t) = nullptr;
  CUresult (*MemcpyDtoH)(void*, CUdeviceptr, size_t) = nullptr;
  CUresult (*MemcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t) = nullptr;
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void*, size_t, CUstream) = nullptr;
  CUresult (*MemcpyDtoHAsync)(void*, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*MemsetD8)(CUdeviceptr, unsigned char, size_t) = nullptr;
  CUresult (*MemHostRegister)(void*, size_t, unsigned) = nullptr;
  CUresult (*MemHostUnregister)(void*) = nullptr;
  CUresult (*PointerGetAttribute)(void*, int, CUdeviceptr) = nullptr;
  CUresult (*GetErrorString)(CUresult, const char**) = nullptr;
  CUresult (*IpcGetMemHandle)(CUipcMemHandle*, CUdeviceptr) = nullptr;
  CUresult (*IpcOpenMemHandle)(CUdeviceptr*, CUipcMemHandle, unsigned) = nullptr;
  CUresult (*IpcCloseMemHandle)(CUdeviceptr) = nullptr;
  CUresult (*StreamCreate)(CUstream*, unsigned) = nullptr;
  CUresult (*StreamDestroy)(CUstream) = nullptr;
  CUresult (*StreamSynchronize)(CUstream) = nullptr;
  CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*EventCreate)(CUevent*, unsigned) = nullptr;
  CUresult (*EventRecord)(CUevent, CUstream) = nullptr;
  CUresult (*EventQuery)(CUevent) = nullptr;
  CUresult (*EventDestroy)(CUevent) = nullptr;

  std::string error;                // why CUDA cannot be used; empty when it can
  int version = 0;                  // cuDriverGetVersion, when the library loaded
  int count = 0;                    // devices, after cuInit
  std::mutex mutex;                 // guards contexts
  std::vector<CUcontext> contexts;  // per device: its primary context, retained once for the process's life
  std::vector<CUstream> streams;    // per device: the stream asynchronous copies go on, made on first use
};

// Every entry point, by the symbol the driver exports, and where it goes.
struct Symbol {
  const char* name;
  void** slot;
};

template <typename F>
void** Slot(F*& f) {
  return reinterpret_cast<void**>(&f);
}

void Load(Api& api) {
  const Symbol table[] = {
      {"cuInit", Slot(api.Init)},
      {"cuDriverGetVersion", Slot(api.DriverGetVersion)},
      {"cuDeviceGetCount", Slot(api.DeviceGetCount)},
      {"cuDeviceGet", Slot(api.DeviceGet)},
      {"cuDeviceGetName", Slot(api.DeviceGetName)},
      {"cuDeviceGetPCIBusId", Slot(api.DeviceGetPCIBusId)},
      {"cuDeviceTotalMem_v2", Slot(api.DeviceTotalMem)},
      {"cuDevicePrimaryCtxRetain", Slot(api.DevicePrimaryCtxRetain)},
      {"cuDevicePrimaryCtxRelease_v2", Slot(api.DevicePrimaryCtxRelease)},
      {"cuCtxSetCurrent", Slot(api.CtxSetCurrent)},
      {"cuMemAlloc_v2", Slot(api.MemAlloc)},
      {"cuMemFree_v2", Slot(api.MemFree)},
      {"cuMemcpyHtoD_v2", Slot(api.MemcpyHtoD)},
      {"cuMemcpyDtoH_v2", Slot(api.MemcpyDtoH)},
      {"cuMemcpyDtoD_v2", Slot(api.MemcpyDtoD)},
      {"cuMemcpyHtoDAsync_v2", Slot(api.MemcpyHtoDAsync)},
      {"cuMemcpyDtoHAsync_v2", Slot(api.MemcpyDtoHAsync)},
      {"cuMemsetD8_v2", Slot(api.MemsetD8)},
      {"cuMemHostRegister_v2", Slot(api.MemHostRegister)},
      {"cuMemHostUnregister", Slot(api.MemHostUnregister)},
      {"cuPointerGetAttribute", Slot(api.PointerGetAttribute)},
      {"cuGetErrorString", Slot(api.GetErrorString)},
      {"cuIpcGetMemHandle", Slot(api.IpcGetMemHandle)},
      {"cuIpcOpenMemHandle_v2", Slot(api.IpcOpenMemHandle)},
      {"cuIpcCloseMemHandle", Slot(api.IpcCloseMemHandle)},
      {"cuStreamCreate", Slot(api.StreamCreate)},
      {"cuStreamDestroy_v2", Slot(api.StreamDestroy)},
      {"cuStreamSynchronize", Slot(api.StreamSynchronize)},
      {"cuMemcpyDtoDAsync_v2", Slot(api.MemcpyDtoDAsync)},
      {"cuEventCreate", Slot(api.EventCreate)},
      {"cuEventRecord", Slot(api.EventRecord)},
      {"cuEventQuery", Slot(api.EventQuery)},
      {"cuEventDestroy_v2", Slot(api.EventDestroy)},
  };
  const char* path = std::getenv("KVF_LIBCUDA");
  if (path == nullptr || *path == '\0') path = "libcuda.so.1";
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* e = dlerror();
    api.error = std::string("no CUDA driver: ") + (e != nullptr ? e : path);
    return;
  }
  for (const Symbol& s : table) {
    *s.slot = dlsym(lib, s.name);
    if (*s.slot == nullptr) {
      for (const Symbol& t : table) *t.slot = nullptr;
      api.error =
          std::string("no CUDA driver: ") + path + " lacks " + s.name + " (not the CUDA driver, or one too old)";
      return;
    }
  }
  if (api.DriverGetVersion(&api.version) != kSuccess) api.version = 0;
  CUresult rc = api.Init(0);
  if (rc == kErrorNoDevice) {
    api.error = "no CUDA device";
    return;
  }
  if (rc != kSuccess) {
    const char* text = nullptr;
    if (api.GetErrorString(rc, &text) != kSuccess || text == nullptr) text = "unknown error";
    api.error = std::string("no CUDA device: cuInit failed: ") + text + " (CUresult " + std::to_string(rc) + ")";
    return;
  }
  if (api.DeviceGetCount(&api.count) != kSuccess || api.count <= 0) {
    api.count = 0;
    api.error = "no CUDA device";
    return;
  }
  api.contexts.assign(static_cast<size_t>(api.count), nullptr);
  api.streams.assign(static_cast<size_t>(api.count), nullptr);
}

Api& Cu() {
  static std::once_flag once;
  static Api api;
  std::call_once(once, [] { Load(api); });
  return api;
}

// The driver, or KVF_ERR_NO_GPU saying why there is none.
Api& Driver() {
  Api& api = Cu();
  if (!api.error.empty()) throw Error(code::kNoGpu, api.error);
  return api;
}

std::string ErrorText(Api& api, CUresult rc) {
  const char* text = nullptr;
  if (api.GetErrorString == nullptr || api.GetErrorString(rc, &text) != kSuccess || text == nullptr)
    text = "unknown error";
  return text;
}

// Throws KVF_ERR_CUDA (or `code`) with the driver's text when a call failed.
void Check(Api& api, CUresult rc, const std::string& what, const char* code = code::kCuda) {
  if (rc == kSuccess) return;
  std::string text = ErrorText(api, rc);
  throw Error(code, what + ": " + text + " (CUresult " + std::to_string(rc) + ")", 0, text);
}

void CheckDevice(Api& api, int device) {
  if (device < 0 || device >= api.count) {
    throw Error(code::kInvalidArgument, "no CUDA device " + std::to_string(device) + ": this host has " +
                                            std::to_string(api.count) +
                                            " (cuda:0 to cuda:" + std::to_string(api.count - 1) + ")");
  }
}

// Makes the device's primary context current on this thread, retaining it the first time.
void MakeCurrent(Api& api, int device) {
  CheckDevice(api, device);
  CUcontext ctx;
  {
    std::lock_guard<std::mutex> lock(api.mutex);
    CUcontext& slot = api.contexts[static_cast<size_t>(device)];
    if (slot == nullptr) {
      CUdevice dev = 0;
      Check(api, api.DeviceGet(&dev, device), "cuDeviceGet(" + std::to_string(device) + ")");
      Check(api, api.DevicePrimaryCtxRetain(&slot, dev),
            "cuDevicePrimaryCtxRetain(cuda:" + std::to_string(device) + ")");
    }
    ctx = slot;
  }
  Check(api, api.CtxSetCurrent(ctx), "cuCtxSetCurrent(cuda:" + std::to_string(device) + ")");
}

std::string Hex(CUdeviceptr p) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, p);
  return buf;
}

}  // namespace

std::string CudaUnavailableReason() { return Cu().error; }

CudaStatus GetCudaStatus() {
  Api& api = Cu();
  CudaStatus status;
  status.driver_version = api.version;
  if (!api.error.empty()) {
    status.reason = api.error;
    return status;
  }
  status.available = true;
  for (int i = 0; i < api.count; ++i) {
    CudaDevice d;
    d.index = i;
    CUdevice dev = 0;
    if (api.DeviceGet(&dev, i) != kSuccess) continue;
    char buf[256] = {0};
    if (api.DeviceGetName(buf, sizeof buf - 1, dev) == kSuccess) d.name = buf;
    char bus[32] = {0};
    if (api.DeviceGetPCIBusId(bus, sizeof bus - 1, dev) == kSuccess) d.pci_bus_id = bus;
    size_t total = 0;
    if (api.DeviceTotalMem(&total, dev) == kSuccess) d.total_memory = total;
    status.devices.push_back(std::move(d));
  }
  return status;
}

DeviceAllocation AllocateDevice(int device, size_t bytes) {
  Api& api = Driver();
  if (bytes == 0) throw Error(code::kZeroLength, "a device allocation needs at least 1 byte");
  MakeCurrent(api, device);
  DeviceAllocation a;
  CUresult rc = api.MemAlloc(&a.ptr, bytes);
  Check(api, rc, "cuMemAlloc(" + std::to_string(bytes) + " bytes on cuda:" + std::to_string(device) + ")",
        rc == kErrorOutOfMemory ? code::kAlloc : code::kCuda);
  a.bytes = bytes;
  a.device = device;
  return a;
}

void FreeDevice(const DeviceAllocation& a) {
  if (a.ptr == 0) return;
  Api& api = Driver();
  MakeCurrent(api, a.device);
  Check(api, api.MemFree(a.ptr), "cuMemFree(" + Hex(a.ptr) + " on cuda:" + std::to_string(a.device) + ")");
}

DeviceRange CheckDeviceRange(CUdeviceptr ptr, size_t length) {
  Api& api = Driver();
  if (length == 0) throw Error(code::kZeroLength, "a device range needs at least 1 byte");
  if (ptr == 0) throw Error(code::kInvalidArgument, "device pointer 0x0 is null");
  // Pointer attributes need some context current (unified addressing makes any one do).
  MakeCurrent(api, 0);
  unsigned type = 0;
  CUresult rc = api.PointerGetAttribute(&type, kPointerAttrMemoryType, ptr);
  if (rc == kErrorInvalidValue) {
    throw Error(code::kInvalidArgument, Hex(ptr) + " is not memory the CUDA driver knows (freed, or never allocated)");
  }
  Check(api, rc, "cuPointerGetAttribute(MEMORY_TYPE, " + Hex(ptr) + ")");
  if (type != kMemoryTypeDevice) {
    throw Error(code::kInvalidArgument, Hex(ptr) + " is host memory known to CUDA, not device memory");
  }
  DeviceRange r;
  Check(api, api.PointerGetAttribute(&r.device, kPointerAttrDeviceOrdinal, ptr),
        "cuPointerGetAttribute(DEVICE_ORDINAL, " + Hex(ptr) + ")");
  Check(api, api.PointerGetAttribute(&r.base, kPointerAttrRangeStartAddr, ptr),
        "cuPointerGetAttribute(RANGE_START_ADDR, " + Hex(ptr) + ")");
  Check(api, api.PointerGetAttribute(&r.size, kPointerAttrRangeSize, ptr),
        "cuPointerGetAttribute(RANGE_SIZE, " + Hex(ptr) + ")");
  uint64_t offset = ptr - r.base;
  if (ptr < r.base || offset >= r.size || length > r.size - offset) {
    throw Error(code::kOutOfRange, "device range [" + Hex(ptr) + ", +" + std::to_string(length) +
                                       ") runs past its allocation [" + Hex(r.base) + ", +" + std::to_string(r.size) +
                                       ") on cuda:" + std::to_string(r.device));
  }
  return r;
}

void CopyToDevice(CUdeviceptr dst, const void* src, size_t bytes) {
  DeviceRange r = CheckDeviceRange(dst, bytes);
  Api& api = Driver();
  MakeCurrent(api, r.device);
  Check(api, api.MemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD(" + Hex(dst) + ", " + std::to_string(bytes) + " bytes)");
}

void CopyFromDevice(void* dst, CUdeviceptr src, size_t bytes) {
  DeviceRange r = CheckDeviceRange(src, bytes);
  Api& api = Driver();
  MakeCurrent(api, r.device);
  Check(api, api.MemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH(" + Hex(src) + ", " + std::to_string(bytes) + " bytes)");
}

void CopyDeviceToDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
  DeviceRange to = CheckDeviceRange(dst, bytes);
  CheckDeviceRange(src, bytes);
  Api& api = Driver();
  MakeCurrent(api, to.device);
  Check(api, api.MemcpyDtoD(dst, src, bytes),
        "cuMemcpyDtoD(" + Hex(dst) + ", " + Hex(src) + ", " + std::to_string(bytes) + " bytes)");
  // A device-to-device cuMemcpy returns before the copy is done: done means the bytes are there.
  Check(api, api.StreamSynchronize(nullptr), "cuStreamSynchronize after cuMemcpyDtoD");
}

IpcExport ExportIpc(CUdeviceptr ptr, size_t length) {
  DeviceRange r = CheckDeviceRange(ptr, length);
  Api& api = Driver();
  MakeCurrent(api, r.device);
  IpcExport out;
  Check(api, api.IpcGetMemHandle(&out.handle, r.base), "cuIpcGetMemHandle(" + Hex(r.base) + ")");
  out.offset = ptr - r.base;
  out.device = r.device;
  return out;
}

CUdeviceptr OpenIpc(int device, const CUipcMemHandle& handle) {
  Api& api = Driver();
  MakeCurrent(api, device);
  CUdeviceptr mapped = 0;
  Check(api, api.IpcOpenMemHandle(&mapped, handle, kIpcLazyEnablePeerAccess),
        "cuIpcOpenMemHandle(on cuda:" + std::to_string(device) + ")");
  return mapped;
}

void CloseIpc(int device, CUdeviceptr mapped) {
  Api& api = Driver();
  MakeCurrent(api, device);
  Check(api, api.IpcCloseMemHandle(mapped), "cuIpcCloseMemHandle(" + Hex(mapped) + ")");
}

void PinHost(void* p, size_t bytes) {
  Api& api = Driver();
  MakeCurrent(api, 0);
  CUresult rc = api.MemHostRegister(p, bytes, 0);
  if (rc == kErrorHostMemoryAlreadyRegistered) return;
  Check(api, rc, "cuMemHostRegister(" + std::to_string(bytes) + " bytes)");
}

void UnpinHost(void* p) {
  Api& api = Driver();
  MakeCurrent(api, 0);
  Check(api, api.MemHostUnregister(p), "cuMemHostUnregister");
}

namespace {
// The device's copy stream, made on first use (non-blocking: it does not wait on the legacy default stream).
CUstream CopyStream(Api& api, int device) {
  std::lock_guard<std::mutex> lock(api.mutex);
  CUstream& slot = api.streams[static_cast<size_t>(device)];
  if (slot == nullptr)
    Check(api, api.StreamCreate(&slot, kStreamNonBlocking), "cuStreamCreate(cuda:" + std::to_string(device) + ")");
  return slot;
}
}  // namespace

CUevent CopyDeviceToDeviceAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
  DeviceRange to = CheckDeviceRange(dst, bytes);
  CheckDeviceRange(src, bytes);
  Api& api = Driver();
  MakeCurrent(api, to.device);
  CUstream stream = CopyStream(api, to.device);
  Check(api, api.MemcpyDtoDAsync(dst, src, bytes, stream),
        "cuMemcpyDtoDAsync(" + Hex(dst) + ", " + Hex(src) + ", " + std::to_string(bytes) + " bytes)");
  CUevent done = nullptr;
  Check(api, api.EventCreate(&done, kEventDisableTiming), "cuEventCreate");
  CUresult rc = api.EventRecord(done, stream);
  if (rc != kSuccess) {
    api.EventDestroy(done);
    Check(api, rc, "cuEventRecord");
  }
  return done;
}

bool CopyFinished(CUevent done) {
  Api& api = Driver();
  CUresult rc = api.EventQuery(done);
  if (rc == kErrorNotReady) return false;
  api.EventDestroy(done);
  Check(api, rc, "an asynchronous device copy");
  return true;
}

}  // namespace kvf
