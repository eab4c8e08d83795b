#include "core/hmem_probe.h"

#include <dlfcn.h>
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

#include <cstring>

namespace kvf {

const std::string& LibfabricLoadError();  // libfabric_loader.cc
const char* LibfabricPath();              // libfabric_loader.cc

HmemProbe ProbeHmem(const std::string& provider) {
  HmemProbe out;
  if (!LibfabricLoadError().empty()) {
    out.error = LibfabricLoadError();
    return out;
  }
  if (const char* path = LibfabricPath()) out.library = path;
  fi_info* hints = fi_allocinfo();
  if (hints == nullptr) {
    out.error = "fi_allocinfo failed";
    return out;
  }
  hints->caps = FI_HMEM | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode =
      FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT | FI_MR_HMEM;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  fi_info* list = nullptr;
  int rc = fi_getinfo(FI_VERSION(1, 9), nullptr, nullptr, 0, hints, &list);
  fi_freeinfo(hints);
  if (rc == 0 && list != nullptr) {
    out.hmem = true;
  } else {
    out.error = std::string("fi_getinfo(") + provider + ", FI_HMEM): " + fi_strerror(rc < 0 ? -rc : rc);
  }
  if (list != nullptr) fi_freeinfo(list);
  return out;
}

}  // namespace kvf
