// The CUDA driver API, opened at run time (cuda.cc), as libfabric is (libfabric_loader.cc): the addon needs no
// CUDA headers or libraries to build, and a host without the driver or without a GPU keeps working. There, every
// call below throws KVF_ERR_NO_GPU; a driver call that fails throws KVF_ERR_CUDA with cuGetErrorString's text.
// KVF_LIBCUDA names another library than libcuda.so.1.
//
// Every call makes the device's primary context current on the calling thread first, so any thread may call;
// a device's primary context is retained the first time it is used and kept for the process's life.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvf {

// The driver API's own types, declared here (cuda.h's definitions, ABI-stable since CUDA 3.2).
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = uint64_t;
using CUcontext = struct CUctx_st*;
using CUstream = struct CUstream_st*;
using CUevent = struct CUevent_st*;
struct CUipcMemHandle {
  char reserved[64];
};

struct CudaDevice {
  int index = 0;
  std::string name;
  uint64_t total_memory = 0;
  std::string pci_bus_id;  // "0000:3b:00.0"
};

struct CudaStatus {
  bool available = false;
  std::string reason;      // why not, when !available
  int driver_version = 0;  // 13000 = CUDA 13.0; 0 when the driver did not load
  std::vector<CudaDevice> devices;
};

// Loads the driver (once) and lists the devices; never throws.
CudaStatus GetCudaStatus();

// Empty when the driver loaded and cuInit succeeded with at least one device; otherwise why not.
std::string CudaUnavailableReason();

struct DeviceAllocation {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
  int device = -1;
};

// cuMemAlloc on the device's primary context. bytes > 0; KVF_ERR_ALLOC when the device is out of memory.
DeviceAllocation AllocateDevice(int device, size_t bytes);
// Frees what AllocateDevice returned; a zero ptr is a no-op.
void FreeDevice(const DeviceAllocation& allocation);

// Synchronous copies between host memory and device memory (for tests and tools). The device range is checked
// with CheckDeviceRange first, so a bad pointer gives a coded error rather than a fault.
void CopyToDevice(CUdeviceptr dst, const void* src, size_t bytes);
void CopyFromDevice(void* dst, CUdeviceptr src, size_t bytes);

struct DeviceRange {
  int device = -1;
  CUdeviceptr base = 0;  // the allocation's first byte
  size_t size = 0;       // the allocation's length
};

// Whether [ptr, ptr + length) lies inside one device allocation: KVF_ERR_INVALID_ARGUMENT when ptr is not device
// memory the driver knows (host memory, freed memory, a made-up address), KVF_ERR_OUT_OF_RANGE when the length
// runs past the allocation's end, KVF_ERR_ZERO_LENGTH for length 0. Returns the allocation that holds it.
DeviceRange CheckDeviceRange(CUdeviceptr ptr, size_t length);

// A device-to-device copy, returning once it is done; both ranges are checked first. Either may be an IPC mapping.
void CopyDeviceToDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes);

// A device-to-device copy queued on the destination device's copy stream; returns the event that marks its end.
// Poll it with CopyFinished, which frees the event once it reports true (or throws the copy's error).
CUevent CopyDeviceToDeviceAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes);
bool CopyFinished(CUevent done);

// The IPC handle of the allocation that holds ptr, and ptr's offset in it (an IPC handle names an allocation).
struct IpcExport {
  CUipcMemHandle handle{};
  uint64_t offset = 0;
  int device = -1;
};
IpcExport ExportIpc(CUdeviceptr ptr, size_t length);
// Maps another process's allocation here (cuIpcOpenMemHandle, peer access enabled lazily); the mapping's base.
CUdeviceptr OpenIpc(int device, const CUipcMemHandle& handle);
void CloseIpc(int device, CUdeviceptr mapped);

// Page-locks host memory for fast, asynchronous-capable copies (cuMemHostRegister) and undoes it.
void PinHost(void* p, size_t bytes);
void UnpinHost(void* p);

}  // namespace kvf
