// A standalone check of native/core/cuda.cc on a machine with a GPU and no Node: loads the driver, lists the
// devices, allocates, copies byte-exact at odd sizes and offsets (also from a second thread), and checks that bad
// pointers and lengths give coded errors. Build: cmake -S . -B build-smoke -DKVF_BUILD_CUDA_SMOKE=ON &&
// cmake --build build-smoke --target cuda_smoke. Prints one line per check; exits 1 if any failed.
#include <sys/random.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"

// The static libstdc++ (GCC 12) refers to arc4random, which glibc has only since 2.36, through std::random_device,
// which nothing here uses; defining it keeps the program loadable beside an older glibc (Ubuntu 22.04 has 2.35).
extern "C" uint32_t arc4random(void) {
  uint32_t v = 0;
  if (getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) v = 0;
  return v;
}

namespace {

int failures = 0;

void Report(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// Runs f, which must throw kvf::Error with `code`; reports the code and message it got.
void ExpectCode(const char* code, const std::string& what, const std::function<void()>& f) {
  try {
    f();
    Report(false, what + ": no error");
  } catch (const kvf::Error& e) {
    Report(e.code() == code, what + ": " + e.code() + " (" + e.what() + ")");
  }
}

// xorshift64: no <random>, whose library part would need a newer glibc (arc4random) than the GPU machine's.
std::vector<unsigned char> Random(size_t n, uint32_t seed) {
  uint64_t x = 0x9E3779B97F4A7C15ull ^ seed;
  std::vector<unsigned char> v(n);
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<unsigned char>(x >> 32);
  }
  return v;
}

}  // namespace

int main() {
  kvf::CudaStatus s = kvf::GetCudaStatus();
  std::printf("available=%d driverVersion=%d reason='%s'\n", s.available ? 1 : 0, s.driver_version, s.reason.c_str());
  for (const auto& d : s.devices) {
    std::printf("device cuda:%d name='%s' totalMemory=%llu pciBusId=%s\n", d.index, d.name.c_str(),
                static_cast<unsigned long long>(d.total_memory), d.pci_bus_id.c_str());
  }
  if (!s.available) {
    ExpectCode(kvf::code::kNoGpu, "AllocateDevice without a GPU", [] { kvf::AllocateDevice(0, 16); });
    return failures == 0 ? 0 : 1;
  }

  for (size_t size : {size_t{1}, size_t{4095}, size_t{131073}, size_t{7 * 1048576 + 3}}) {
    try {
      kvf::DeviceAllocation a = kvf::AllocateDevice(0, size);
      kvf::DeviceRange r = kvf::CheckDeviceRange(a.ptr, size);
      std::printf("alloc %zu: ptr=0x%llx range base=0x%llx size=%zu device=%d\n", size,
                  static_cast<unsigned long long>(a.ptr), static_cast<unsigned long long>(r.base), r.size, r.device);
      Report(r.base == a.ptr && r.size >= size && r.device == 0, "CheckDeviceRange of a fresh allocation");
      std::vector<unsigned char> data = Random(size, static_cast<uint32_t>(size));
      std::vector<unsigned char> back(size, 0);
      kvf::CopyToDevice(a.ptr, data.data(), size);
      kvf::CopyFromDevice(back.data(), a.ptr, size);
      Report(back == data, "round trip of " + std::to_string(size) + " bytes");
      if (size > 8) {
        std::vector<unsigned char> part = Random(size - 8, 7);
        kvf::CopyToDevice(a.ptr + 3, part.data(), part.size());
        std::vector<unsigned char> got(part.size());
        kvf::CopyFromDevice(got.data(), a.ptr + 3, got.size());
        std::vector<unsigned char> head(3);
        kvf::CopyFromDevice(head.data(), a.ptr, 3);
        Report(got == part && std::memcmp(head.data(), data.data(), 3) == 0,
               "round trip of " + std::to_string(part.size()) + " bytes at offset 3");
        // From another thread: the primary context is made current there too.
        bool thread_ok = false;
        std::thread t([&] {
          try {
            std::vector<unsigned char> again(part.size());
            kvf::CopyFromDevice(again.data(), a.ptr + 3, again.size());
            thread_ok = again == part;
          } catch (const kvf::Error& e) {
            std::printf("thread: %s %s\n", e.code().c_str(), e.what());
          }
        });
        t.join();
        Report(thread_ok, "copy from a second thread");
      }
      ExpectCode(kvf::code::kOutOfRange, "length beyond the allocation",
                 [&] { kvf::CheckDeviceRange(a.ptr, r.size + 1); });
      ExpectCode(kvf::code::kOutOfRange, "copy running past the end",
                 [&] {
                   unsigned char two[2];
                   kvf::CopyFromDevice(two, a.ptr + r.size - 1, 2);
                 });
      try {
        kvf::CheckDeviceRange(a.ptr + r.size, 1);
        Report(false, "pointer past the end: accepted");
      } catch (const kvf::Error& e) {
        Report(e.code() == kvf::code::kInvalidArgument || e.code() == kvf::code::kOutOfRange,
               std::string("pointer past the end: ") + e.code() + " (" + e.what() + ")");
      }
      kvf::FreeDevice(a);
      ExpectCode(kvf::code::kInvalidArgument, "use after free",
                 [&] { kvf::CheckDeviceRange(a.ptr, 1); });
    } catch (const kvf::Error& e) {
      Report(false, "size " + std::to_string(size) + ": " + e.code() + " " + e.what());
    }
  }

  int host_value = 0;
  ExpectCode(kvf::code::kInvalidArgument, "a host (stack) pointer",
             [&] { kvf::CheckDeviceRange(reinterpret_cast<uintptr_t>(&host_value), 4); });
  ExpectCode(kvf::code::kInvalidArgument, "a made-up address", [] { kvf::CheckDeviceRange(0x1000, 1); });
  ExpectCode(kvf::code::kInvalidArgument, "device 99", [] { kvf::AllocateDevice(99, 16); });
  ExpectCode(kvf::code::kZeroLength, "zero bytes", [] { kvf::AllocateDevice(0, 0); });
  ExpectCode(kvf::code::kAlloc, "1 PiB", [] { kvf::AllocateDevice(0, size_t{1} << 50); });

  // A rough figure for the synchronous pageable copies (not a benchmark).
  try {
    const size_t n = size_t{256} << 20;
    kvf::DeviceAllocation a = kvf::AllocateDevice(0, n);
    std::vector<unsigned char> host(n, 1);
    kvf::CopyToDevice(a.ptr, host.data(), n);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) kvf::CopyToDevice(a.ptr, host.data(), n);
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) kvf::CopyFromDevice(host.data(), a.ptr, n);
    auto t2 = std::chrono::steady_clock::now();
    double htod = 4.0 * n / std::chrono::duration<double>(t1 - t0).count() / 1e9;
    double dtoh = 4.0 * n / std::chrono::duration<double>(t2 - t1).count() / 1e9;
    std::printf("pageable 256 MiB copies: HtoD %.1f GB/s, DtoH %.1f GB/s\n", htod, dtoh);
    kvf::FreeDevice(a);
  } catch (const kvf::Error& e) {
    Report(false, std::string("256 MiB copies: ") + e.code() + " " + e.what());
  }
  std::printf("%s: %d failure(s)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
