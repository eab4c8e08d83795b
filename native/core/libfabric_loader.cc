// libfabric is opened with dlopen rather than linked, for two reasons:
//  - Deployments choose the library at run time: KVF_LIBFABRIC=/opt/amazon/efa/lib/libfabric.so.1 on EFA
//    nodes (the EFA installer's build has the efa provider), the distribution's libfabric.so.1 elsewhere.
//  - Debian's libfabric pulls in libinfinipath (psm provider), whose load-time constructor replaces the
//    process's SIGSEGV/SIGBUS/SIGILL/SIGABRT handlers with ones that call exit(). That breaks Node's
//    WebAssembly trap handler and turns crashes into deadlocks. We save every handler before dlopen and
//    put them back after it.
// Only six libfabric entry points are real exported functions; everything else in its API is an inline
// call through the fid's ops table. We define those six here and forward them to the loaded library.
#include <dlfcn.h>
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace {

struct Api {
  int (*getinfo)(uint32_t, const char*, const char*, uint64_t, const fi_info*, fi_info**) = nullptr;
  void (*freeinfo)(fi_info*) = nullptr;
  fi_info* (*dupinfo)(const fi_info*) = nullptr;
  int (*fabric)(fi_fabric_attr*, fid_fabric**, void*) = nullptr;
  const char* (*strerror)(int) = nullptr;
  uint32_t (*version)() = nullptr;
  std::string error;
  std::string path;  // the file fi_getinfo came from (dladdr), when it loaded
};

Api LoadApi() {
  Api api;
  const char* path = std::getenv("KVF_LIBFABRIC");
  if (path == nullptr || *path == '\0') path = "libfabric.so.1";
  struct sigaction saved[NSIG];
  for (int s = 1; s < NSIG; ++s) sigaction(s, nullptr, &saved[s]);
  void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  for (int s = 1; s < NSIG; ++s) {
    if (s != SIGKILL && s != SIGSTOP) sigaction(s, &saved[s], nullptr);
  }
  if (lib == nullptr) {
    const char* e = dlerror();
    api.error = std::string("cannot load libfabric (") + path + "): " + (e != nullptr ? e : "unknown error");
    return api;
  }
  api.getinfo = reinterpret_cast<decltype(api.getinfo)>(dlsym(lib, "fi_getinfo"));
  api.freeinfo = reinterpret_cast<decltype(api.freeinfo)>(dlsym(lib, "fi_freeinfo"));
  api.dupinfo = reinterpret_cast<decltype(api.dupinfo)>(dlsym(lib, "fi_dupinfo"));
  api.fabric = reinterpret_cast<decltype(api.fabric)>(dlsym(lib, "fi_fabric"));
  api.strerror = reinterpret_cast<decltype(api.strerror)>(dlsym(lib, "fi_strerror"));
  api.version = reinterpret_cast<decltype(api.version)>(dlsym(lib, "fi_version"));
  if (!api.getinfo || !api.freeinfo || !api.dupinfo || !api.fabric || !api.strerror || !api.version) {
    api = Api{};
    api.error = std::string(path) + " lacks libfabric's entry points";
    return api;
  }
  Dl_info where;
  if (dladdr(reinterpret_cast<void*>(api.getinfo), &where) != 0 && where.dli_fname != nullptr)
    api.path = where.dli_fname;
  return api;
}

const Api& Fi() {
  static std::once_flag once;
  static Api api;
  std::call_once(once, [] { api = LoadApi(); });
  return api;
}

}  // namespace

namespace kvf {
// Empty when libfabric loaded; otherwise why not (shown in KVF_ERR_PROVIDER_UNAVAILABLE).
const std::string& LibfabricLoadError() { return Fi().error; }
// The loaded library's file (e.g. /opt/amazon/efa/lib/libfabric.so.1), or nullptr when unknown.
const char* LibfabricPath() { return Fi().path.empty() ? nullptr : Fi().path.c_str(); }
}  // namespace kvf

extern "C" {

int fi_getinfo(uint32_t version, const char* node, const char* service, uint64_t flags, const struct fi_info* hints,
               struct fi_info** info) {
  return Fi().getinfo ? Fi().getinfo(version, node, service, flags, hints, info) : -FI_ENOSYS;
}

void fi_freeinfo(struct fi_info* info) {
  if (Fi().freeinfo) Fi().freeinfo(info);
}

struct fi_info* fi_dupinfo(const struct fi_info* info) {
  return Fi().dupinfo ? Fi().dupinfo(info) : nullptr;
}

int fi_fabric(struct fi_fabric_attr* attr, struct fid_fabric** fabric, void* context) {
  return Fi().fabric ? Fi().fabric(attr, fabric, context) : -FI_ENOSYS;
}

const char* fi_strerror(int errnum) { return Fi().strerror ? Fi().strerror(errnum) : std::strerror(errnum); }

uint32_t fi_version(void) { return Fi().version ? Fi().version() : 0; }

}  // extern "C"
