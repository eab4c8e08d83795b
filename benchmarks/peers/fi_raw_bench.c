// fi_raw_bench: the provider's ceiling for kvfabric's transfer pattern, written against libfabric directly.
//
// Two processes on one host: the initiator forks the target and the two swap endpoint names, MR keys
// and pool addresses over a socketpair. Each side opens its rails the way native/core/agent.cc and
// rail.cc do (FI_EP_RDM; caps FI_MSG|FI_RMA; mode FI_CONTEXT|FI_CONTEXT2; mr_mode hints
// FI_MR_LOCAL|FI_MR_VIRT_ADDR|FI_MR_ALLOCATED|FI_MR_PROV_KEY|FI_MR_ENDPOINT; FI_THREAD_SAFE;
// tcp bound to --addr (127.0.0.1 by default) with FI_SOURCE; one fabric + domain + CQ + AV + endpoint per rail; every
// rail registers the whole pool) and drives manual progress by polling its CQs, the target included.
// WRITEs go out with fi_writemsg(FI_COMPLETION | FI_DELIVERY_COMPLETE) unless --no-delivery-complete.
//
// Across two network namespaces (benchmarks/veth.ts: two simulated hosts joined by veths): run it inside the
// initiator's namespace with --addr <its IP> --target-netns /run/netns/<other> --target-addr <other IP>; the
// forked target enters the other namespace (setns) before it opens its rails, so every byte of the transfers
// crosses the link between them. The socketpair and the shared stop flag still join the two processes: they
// carry the setup and the stop, never the data.
//
//   fi_raw_bench --mode bw   --op write|read --provider tcp|shm --block 1048576 --depth 64 --rails 1
//   fi_raw_bench --mode lat  --op read --block 4096                 (depth 1: per-op latency p50/p99)
//   fi_raw_bench --mode post --op write --block 4096 --batch 1024   (ns spent inside fi_write/fi_read)
//
// One JSON line per run on stdout, a human line on stderr.
#define _GNU_SOURCE
#include <rdma/fabric.h>

#include "pool_alloc.h"
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_RAILS 16
#define MAX_ADDR 256
#define CQ_BATCH 64

enum mode { MODE_BW, MODE_LAT, MODE_POST };
enum target_wait { TW_AUTO, TW_SPIN, TW_YIELD, TW_SREAD };

struct options {
  enum mode mode;
  bool read;
  const char *provider;  // alias as given: tcp | shm | full libfabric name
  size_t block;
  size_t pool;
  size_t depth;
  unsigned rails;
  double duration;
  uint64_t iters;  // 0: use duration
  size_t batch;
  bool delivery_complete;
  bool thread_domain;
  enum target_wait target_wait;
  int initiator_yield;  // -1: auto
  const char *addr;         // tcp: the address the initiator's rails bind (default 127.0.0.1)
  const char *target_addr;  // tcp: the target's (default: addr)
  const char *target_netns; // a network namespace (/run/netns/NAME) the target enters before opening its rails
};

struct rail {
  struct fi_info *info;
  struct fid_fabric *fabric;
  struct fid_domain *domain;
  struct fid_cq *cq;
  struct fid_av *av;
  struct fid_ep *ep;
  struct fid_mr *mr;
  void *desc;
  uint64_t key;
  bool virt_addr;
  bool cq_can_wait;
  char addr[MAX_ADDR];
  size_t addrlen;
  fi_addr_t peer;
  // What the peer told us about its pool on this rail.
  uint64_t remote_key;
  uint64_t remote_base;  // added to offsets: the peer's virtual address if its rail is FI_MR_VIRT_ADDR, else 0
};

struct wire_rail {
  uint64_t key;
  uint64_t base;
  uint32_t addrlen;
  char addr[MAX_ADDR];
};

struct wire {
  uint32_t rails;
  struct wire_rail r[MAX_RAILS];
};

static struct options opt;
static struct rail rails[MAX_RAILS];
static uint8_t *pool;
static volatile int *shared_stop;  // MAP_SHARED between initiator and target

static void die(const char *what, int rc) {
  fprintf(stderr, "fi_raw_bench[%d]: %s: %s (%d)\n", (int)getpid(), what, rc < 0 ? fi_strerror(-rc) : strerror(rc), rc);
  if (shared_stop) *shared_stop = 2;
  exit(1);
}
#define CHECK(call)                   \
  do {                                \
    int rc_ = (int)(call);            \
    if (rc_ != 0) die(#call, rc_);    \
  } while (0)

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t parse_size(const char *s) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s) {
    fprintf(stderr, "bad size '%s'\n", s);
    exit(2);
  }
  switch (*end) {
    case 'k': case 'K': v *= 1024; break;
    case 'm': case 'M': v *= 1024 * 1024; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
    default: break;
  }
  return (size_t)v;
}

static const char *provider_name(void) {
  if (strcmp(opt.provider, "tcp") == 0) return "tcp;ofi_rxm";
  return opt.provider;
}
static bool is_tcp(void) { return strncmp(provider_name(), "tcp", 3) == 0; }

static void open_rails(const char *role, const char *addr) {
  struct fi_info *hints = fi_allocinfo();
  if (!hints) die("fi_allocinfo", -FI_ENOMEM);
  hints->caps = FI_MSG | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE | FI_SEND | FI_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
  hints->domain_attr->threading = opt.thread_domain ? FI_THREAD_DOMAIN : FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(provider_name());
  const char *node = is_tcp() ? addr : NULL;
  struct fi_info *list = NULL;
  int rc = fi_getinfo(FI_VERSION(1, 9), node, NULL, node ? FI_SOURCE : 0, hints, &list);
  fi_freeinfo(hints);
  if (rc != 0 || !list) die("fi_getinfo", rc ? rc : -FI_ENODATA);

  for (unsigned r = 0; r < opt.rails; ++r) {
    struct rail *R = &rails[r];
    R->info = fi_dupinfo(list);  // every rail on the first (for tcp: the lo) domain, like kvfabric on one NIC
    if (strcmp(provider_name(), "shm") == 0) {
      char name[96];
      snprintf(name, sizeof name, "fi_shm://rawb_%s_%d_%u", role, (int)getpid(), r);
      free(R->info->src_addr);
      R->info->src_addr = strdup(name);
      R->info->src_addrlen = strlen(name) + 1;
    }
    CHECK(fi_fabric(R->info->fabric_attr, &R->fabric, NULL));
    CHECK(fi_domain(R->fabric, R->info, &R->domain, NULL));
    struct fi_cq_attr cq_attr = {0};
    cq_attr.format = FI_CQ_FORMAT_DATA;
    cq_attr.size = R->info->tx_attr->size + R->info->rx_attr->size;
    if (cq_attr.size < 1024) cq_attr.size = 1024;
    cq_attr.wait_obj = FI_WAIT_UNSPEC;
    if (fi_cq_open(R->domain, &cq_attr, &R->cq, NULL) == 0) {
      R->cq_can_wait = true;
    } else {
      cq_attr.wait_obj = FI_WAIT_NONE;
      CHECK(fi_cq_open(R->domain, &cq_attr, &R->cq, NULL));
    }
    struct fi_av_attr av_attr = {0};
    av_attr.type = FI_AV_TABLE;
    CHECK(fi_av_open(R->domain, &av_attr, &R->av, NULL));
    CHECK(fi_endpoint(R->domain, R->info, &R->ep, NULL));
    CHECK(fi_ep_bind(R->ep, &R->cq->fid, FI_TRANSMIT | FI_RECV));
    CHECK(fi_ep_bind(R->ep, &R->av->fid, 0));
    CHECK(fi_enable(R->ep));
    R->addrlen = sizeof R->addr;
    CHECK(fi_getname(&R->ep->fid, R->addr, &R->addrlen));

    const uint64_t access = FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE | FI_SEND | FI_RECV;
    CHECK(fi_mr_reg(R->domain, pool, opt.pool, access, 0, /*requested_key=*/1 + r, 0, &R->mr, NULL));
    if (R->info->domain_attr->mr_mode & FI_MR_ENDPOINT) {
      CHECK(fi_mr_bind(R->mr, &R->ep->fid, 0));
      CHECK(fi_mr_enable(R->mr));
    }
    R->desc = fi_mr_desc(R->mr);
    R->key = fi_mr_key(R->mr);
    R->virt_addr = (R->info->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0;
  }
  fi_freeinfo(list);
}

static void close_rails(void) {
  for (unsigned r = 0; r < opt.rails; ++r) {
    struct rail *R = &rails[r];
    fi_close(&R->ep->fid);
    fi_close(&R->mr->fid);
    fi_close(&R->av->fid);
    fi_close(&R->cq->fid);
    fi_close(&R->domain->fid);
    fi_close(&R->fabric->fid);
    fi_freeinfo(R->info);
  }
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("write(socketpair)", errno);
    p += n;
    len -= (size_t)n;
  }
}

static void read_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read(socketpair)", n == 0 ? EPIPE : errno);
    p += n;
    len -= (size_t)n;
  }
}

static void exchange(int fd) {
  struct wire mine;
  memset(&mine, 0, sizeof mine);
  mine.rails = opt.rails;
  for (unsigned r = 0; r < opt.rails; ++r) {
    mine.r[r].key = rails[r].key;
    mine.r[r].base = rails[r].virt_addr ? (uint64_t)(uintptr_t)pool : 0;
    mine.r[r].addrlen = (uint32_t)rails[r].addrlen;
    memcpy(mine.r[r].addr, rails[r].addr, rails[r].addrlen);
  }
  write_all(fd, &mine, sizeof mine);
  struct wire theirs;
  read_all(fd, &theirs, sizeof theirs);
  if (theirs.rails != opt.rails) die("peer rail count differs", EINVAL);
  for (unsigned r = 0; r < opt.rails; ++r) {
    struct rail *R = &rails[r];
    R->remote_key = theirs.r[r].key;
    R->remote_base = theirs.r[r].base;
    int n = fi_av_insert(R->av, theirs.r[r].addr, 1, &R->peer, 0, NULL);
    if (n != 1) die("fi_av_insert", n < 0 ? n : -FI_EINVAL);
  }
}

// ---- target: keeps its CQs polled (manual progress) until the initiator says stop. One thread per rail,
// as kvfabric runs one progress thread per rail: a thread blocked in fi_cq_sread drives only its own
// domain's progress.
static void *target_rail(void *arg) {
  struct rail *R = arg;
  struct fi_cq_data_entry entries[CQ_BATCH];
  while (*shared_stop == 0) {
    if (opt.target_wait == TW_SREAD && R->cq_can_wait) {
      // What kvfabric's idle rail does: block in fi_cq_sread, which drives progress while it waits.
      fi_cq_sread(R->cq, entries, CQ_BATCH, NULL, 100);
    } else {
      fi_cq_read(R->cq, entries, CQ_BATCH);
      if (opt.target_wait == TW_YIELD) sched_yield();
    }
  }
  return NULL;
}

static void run_target(int fd) {
  exchange(fd);
  char ready = 'r';
  write_all(fd, &ready, 1);
  pthread_t threads[MAX_RAILS];
  for (unsigned r = 1; r < opt.rails; ++r) pthread_create(&threads[r], NULL, target_rail, &rails[r]);
  target_rail(&rails[0]);
  for (unsigned r = 1; r < opt.rails; ++r) pthread_join(threads[r], NULL);
  char done;
  read_all(fd, &done, 1);  // the initiator's verification request (or EOF)
  // In a WRITE run the initiator's pool held 0x5a everywhere: check every byte landed here.
  uint8_t ok = 1;
  if (!opt.read && opt.mode == MODE_BW) {
    for (size_t i = 0; i < opt.pool; ++i)
      if (pool[i] != 0x5a) { ok = 0; break; }
  }
  write_all(fd, &ok, 1);
  close_rails();
  _exit(0);
}

// ---- initiator
struct opctx {
  struct fi_context2 ctx;  // FI_CONTEXT2: the provider owns this while the op is in flight
  unsigned rail;
  uint64_t start_ns;
};

static struct opctx *ctxs;
static size_t *free_ctx;
static size_t free_top;

static inline ssize_t post_one(unsigned r, struct opctx *c, size_t offset, size_t len) {
  struct rail *R = &rails[r];
  void *local = pool + offset;
  uint64_t raddr = R->remote_base + offset;
  if (opt.read) return fi_read(R->ep, local, len, R->desc, R->peer, raddr, R->remote_key, &c->ctx);
  if (!opt.delivery_complete) return fi_write(R->ep, local, len, R->desc, R->peer, raddr, R->remote_key, &c->ctx);
  struct iovec iov = {local, len};
  struct fi_rma_iov rma = {raddr, len, R->remote_key};
  struct fi_msg_rma msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.desc = &R->desc;
  msg.iov_count = 1;
  msg.addr = R->peer;
  msg.rma_iov = &rma;
  msg.rma_iov_count = 1;
  msg.context = &c->ctx;
  return fi_writemsg(R->ep, &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE);
}

static void cq_fail(unsigned r) {
  struct fi_cq_err_entry err;
  memset(&err, 0, sizeof err);
  fi_cq_readerr(rails[r].cq, &err, 0);
  fprintf(stderr, "fi_raw_bench: completion error on rail %u: %s (%s)\n", r, fi_strerror(err.err),
          fi_cq_strerror(rails[r].cq, err.prov_errno, err.err_data, NULL, 0));
  *shared_stop = 2;
  exit(1);
}

// Polls every rail once; returns completions seen. `lat` collects per-op latencies when non-null.
static size_t poll_all(uint64_t *lat, size_t *nlat, size_t maxlat) {
  struct fi_cq_data_entry entries[CQ_BATCH];
  size_t seen = 0;
  for (unsigned r = 0; r < opt.rails; ++r) {
    ssize_t n = fi_cq_read(rails[r].cq, entries, CQ_BATCH);
    if (n == -FI_EAVAIL) cq_fail(r);
    if (n <= 0) continue;
    uint64_t t = lat ? now_ns() : 0;
    for (ssize_t i = 0; i < n; ++i) {
      struct opctx *c = (struct opctx *)entries[i].op_context;
      if (lat && *nlat < maxlat) lat[(*nlat)++] = t - c->start_ns;
      free_ctx[free_top++] = (size_t)(c - ctxs);
    }
    seen += (size_t)n;
  }
  return seen;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

struct result {
  uint64_t ops;
  uint64_t bytes;
  uint64_t elapsed_ns;
  uint64_t eagain;
  double p50_us, p99_us, min_us;
  double post_ns_per_desc;        // time inside successful fi_read/fi_write calls / descriptors
  double batch_wall_ns_per_desc;  // wall time of the whole posting loop (retries + CQ reaping) / descriptors
  double batch_complete_us;       // post + wait for all completions, per batch
  double post_p50_ns, post_p99_ns;  // per-call distribution (robust to preemption on a busy host)
};

// Moves blocks until the duration (or iteration count) is spent, `depth` in flight, round-robin over rails.
static struct result run_stream(size_t depth, size_t block, double duration, uint64_t iters, uint64_t *lat,
                                size_t maxlat, size_t *nlat) {
  struct result res;
  memset(&res, 0, sizeof res);
  const size_t blocks_in_pool = opt.pool / block;
  size_t inflight = 0, next_block = 0;
  unsigned next_rail = 0;
  const uint64_t t0 = now_ns();
  const uint64_t deadline = t0 + (uint64_t)(duration * 1e9);
  bool stop_posting = false;
  uint64_t first_try = 0;  // latency counts from the first attempt, -FI_EAGAIN retries included
  for (;;) {
    while (!stop_posting && inflight < depth) {
      struct opctx *c = &ctxs[free_ctx[--free_top]];
      c->rail = next_rail;
      if (lat) {
        if (first_try == 0) first_try = now_ns();
        c->start_ns = first_try;
      }
      ssize_t rc = post_one(next_rail, c, (next_block % blocks_in_pool) * block, block);
      if (rc == -FI_EAGAIN) {
        ++free_top;
        ++res.eagain;
        break;
      }
      if (rc != 0) die("post", (int)rc);
      first_try = 0;
      ++inflight;
      ++res.ops;
      ++next_block;
      next_rail = (next_rail + 1) % opt.rails;
      if (iters ? res.ops >= iters : (res.ops % 16 == 0 && now_ns() >= deadline)) stop_posting = true;
    }
    size_t n = poll_all(lat, nlat, maxlat);
    inflight -= n;
    if (stop_posting && inflight == 0) break;
    if (n == 0 && opt.initiator_yield) sched_yield();
    if (!stop_posting && !iters && depth == 1 && now_ns() >= deadline) stop_posting = true;
  }
  res.elapsed_ns = now_ns() - t0;
  res.bytes = res.ops * block;
  return res;
}

// Posting cost: a prepared list of `batch` descriptors, posted back to back; time inside the post calls.
static struct result run_post(void) {
  struct result res;
  memset(&res, 0, sizeof res);
  const size_t blocks_in_pool = opt.pool / opt.block;
  size_t *offsets = malloc(opt.batch * sizeof *offsets);
  unsigned *rail_of = malloc(opt.batch * sizeof *rail_of);
  size_t ncall = 0, maxcall = 1u << 22;
  uint64_t *calls = malloc(maxcall * sizeof *calls);
  uint64_t inside = 0, wall = 0, complete = 0, posted = 0, batches = 0, base = 0;
  const uint64_t t_end = now_ns() + (uint64_t)(opt.duration * 1e9);
  do {
    for (size_t i = 0; i < opt.batch; ++i) {
      offsets[i] = ((base + i) % blocks_in_pool) * opt.block;
      rail_of[i] = (unsigned)(i % opt.rails);
    }
    base += opt.batch;
    size_t inflight = 0;
    const uint64_t w0 = now_ns();
    for (size_t i = 0; i < opt.batch;) {
      struct opctx *c = &ctxs[free_ctx[--free_top]];
      c->rail = rail_of[i];
      const uint64_t a = now_ns();
      ssize_t rc = post_one(rail_of[i], c, offsets[i], opt.block);
      const uint64_t b = now_ns();
      if (rc == -FI_EAGAIN) {
        ++free_top;
        ++res.eagain;
        inflight -= poll_all(NULL, NULL, 0);
        continue;
      }
      if (rc != 0) die("post", (int)rc);
      inside += b - a;
      if (ncall < maxcall) calls[ncall++] = b - a;
      ++inflight;
      ++i;
    }
    const uint64_t w1 = now_ns();
    while (inflight > 0) inflight -= poll_all(NULL, NULL, 0);
    const uint64_t w2 = now_ns();
    wall += w1 - w0;
    complete += w2 - w0;
    posted += opt.batch;
    ++batches;
  } while (opt.iters ? batches < opt.iters : now_ns() < t_end);
  // clock_gettime itself (vDSO) sits inside each timed window once; measure it and take it out.
  uint64_t c0 = now_ns();
  for (int i = 0; i < 100000; ++i) (void)now_ns();
  double clock_ns = (double)(now_ns() - c0) / 100000.0;
  res.ops = posted;
  res.bytes = posted * opt.block;
  res.elapsed_ns = complete;
  res.post_ns_per_desc = (double)inside / (double)posted - clock_ns;
  res.batch_wall_ns_per_desc = (double)wall / (double)posted;
  res.batch_complete_us = (double)complete / (double)batches / 1e3;
  qsort(calls, ncall, sizeof *calls, cmp_u64);
  res.post_p50_ns = ncall ? (double)calls[ncall / 2] - clock_ns : 0;
  res.post_p99_ns = ncall ? (double)calls[(size_t)((double)ncall * 0.99)] - clock_ns : 0;
  free(calls);
  free(offsets);
  free(rail_of);
  return res;
}

static const char *mode_name(void) { return opt.mode == MODE_BW ? "bw" : opt.mode == MODE_LAT ? "lat" : "post"; }

static void usage(void) {
  fprintf(stderr,
          "usage: fi_raw_bench [--mode bw|lat|post] [--op write|read] [--provider tcp|shm] [--block BYTES]\n"
          "                    [--pool BYTES] [--depth N] [--rails N] [--duration S | --iters N] [--batch N]\n"
          "                    [--no-delivery-complete] [--thread-domain] [--target-wait auto|spin|yield|sread]\n"
          "                    [--initiator-wait auto|spin|yield] [--addr IP] [--target-addr IP]\n"
          "                    [--target-netns /run/netns/NAME]\n");
  exit(2);
}

int main(int argc, char **argv) {
  opt = (struct options){.mode = MODE_BW, .read = false, .provider = "tcp", .block = 1 << 20, .pool = 256u << 20,
                         .depth = 64, .rails = 1, .duration = 3.0, .iters = 0, .batch = 1024,
                         .delivery_complete = true, .thread_domain = false, .target_wait = TW_AUTO,
                         .initiator_yield = -1, .addr = "127.0.0.1", .target_addr = NULL, .target_netns = NULL};
  bool block_set = false;
  static struct option long_opts[] = {
      {"mode", required_argument, 0, 'm'},      {"op", required_argument, 0, 'o'},
      {"provider", required_argument, 0, 'p'},  {"block", required_argument, 0, 'b'},
      {"pool", required_argument, 0, 'P'},      {"depth", required_argument, 0, 'd'},
      {"rails", required_argument, 0, 'r'},     {"duration", required_argument, 0, 't'},
      {"iters", required_argument, 0, 'i'},     {"batch", required_argument, 0, 'B'},
      {"no-delivery-complete", no_argument, 0, 'D'}, {"thread-domain", no_argument, 0, 'T'},
      {"target-wait", required_argument, 0, 'w'}, {"initiator-wait", required_argument, 0, 'y'},
      {"addr", required_argument, 0, 'a'},      {"target-addr", required_argument, 0, 'A'},
      {"target-netns", required_argument, 0, 'N'},
      {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
    switch (c) {
      case 'm':
        if (strcmp(optarg, "bw") == 0) opt.mode = MODE_BW;
        else if (strcmp(optarg, "lat") == 0) opt.mode = MODE_LAT;
        else if (strcmp(optarg, "post") == 0) opt.mode = MODE_POST;
        else usage();
        break;
      case 'o':
        if (strcmp(optarg, "write") && strcmp(optarg, "read")) usage();
        opt.read = strcmp(optarg, "read") == 0;
        break;
      case 'p': opt.provider = optarg; break;
      case 'b': opt.block = parse_size(optarg); block_set = true; break;
      case 'P': opt.pool = parse_size(optarg); break;
      case 'd': opt.depth = (size_t)atol(optarg); break;
      case 'r': opt.rails = (unsigned)atoi(optarg); break;
      case 't': opt.duration = atof(optarg); break;
      case 'i': opt.iters = (uint64_t)atoll(optarg); break;
      case 'B': opt.batch = (size_t)atol(optarg); break;
      case 'D': opt.delivery_complete = false; break;
      case 'T': opt.thread_domain = true; break;
      case 'w':
        if (strcmp(optarg, "spin") == 0) opt.target_wait = TW_SPIN;
        else if (strcmp(optarg, "yield") == 0) opt.target_wait = TW_YIELD;
        else if (strcmp(optarg, "sread") == 0) opt.target_wait = TW_SREAD;
        else if (strcmp(optarg, "auto") == 0) opt.target_wait = TW_AUTO;
        else usage();
        break;
      case 'y':
        if (strcmp(optarg, "spin") == 0) opt.initiator_yield = 0;
        else if (strcmp(optarg, "yield") == 0) opt.initiator_yield = 1;
        else usage();
        break;
      case 'a': opt.addr = optarg; break;
      case 'A': opt.target_addr = optarg; break;
      case 'N': opt.target_netns = optarg; break;
      default: usage();
    }
  }
  if (!opt.target_addr) opt.target_addr = opt.addr;
  if (opt.mode == MODE_LAT) {
    opt.depth = 1;
    if (!block_set) opt.block = 4096;
  }
  if (opt.mode == MODE_POST && !block_set) opt.block = 4096;
  // 'auto' picks what measured fastest on a 2-core host (see benchmarks/PEERS.md): for latency both sides
  // spin; for bandwidth and posting the initiator yields when its CQ is empty, and the tcp target blocks
  // in fi_cq_sread (it wakes on socket activity and leaves the core to the kernel's TCP work) while the
  // shm target polls with sched_yield.
  if (opt.target_wait == TW_AUTO)
    opt.target_wait = opt.mode == MODE_LAT ? TW_SPIN : (is_tcp() ? TW_SREAD : TW_YIELD);
  if (opt.initiator_yield < 0) opt.initiator_yield = opt.mode == MODE_LAT ? 0 : 1;
  if (opt.rails < 1 || opt.rails > MAX_RAILS || opt.block == 0 || opt.block > opt.pool || opt.depth == 0) usage();

  shared_stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared_stop == MAP_FAILED) die("mmap(shared)", errno);
  *shared_stop = 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair", errno);

  pool = alloc_pool(opt.pool);
  if (!pool) die("alloc_pool", ENOMEM);

  pid_t child = fork();
  if (child < 0) die("fork", errno);
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the initiator (a timeout kills only the parent)
    if (getppid() == 1) _exit(1);
    close(sv[0]);
    if (opt.target_netns) {
      // The other simulated host: libfabric is not loaded yet (nothing before the fork calls it), so the
      // tcp provider binds and dials from inside that namespace.
      int fd = open(opt.target_netns, O_RDONLY | O_CLOEXEC);
      if (fd < 0) die(opt.target_netns, errno);
      if (setns(fd, CLONE_NEWNET) != 0) die("setns(target netns)", errno);
      close(fd);
    }
    memset(pool, opt.read ? 0xa5 : 0x00, opt.pool);  // touch every page before registering
    open_rails("t", opt.target_addr);
    run_target(sv[1]);
  }
  close(sv[1]);
  memset(pool, opt.read ? 0x00 : 0x5a, opt.pool);
  open_rails("i", opt.addr);
  exchange(sv[0]);
  char ready;
  read_all(sv[0], &ready, 1);

  const size_t nctx = (opt.mode == MODE_POST ? opt.batch : opt.depth) + 16;
  ctxs = calloc(nctx, sizeof *ctxs);
  free_ctx = malloc(nctx * sizeof *free_ctx);
  for (size_t i = 0; i < nctx; ++i) free_ctx[free_top++] = i;

  // Warm-up: connect every rail (rxm connects lazily) and fault in the provider's buffers.
  {
    size_t warm = opt.mode == MODE_POST ? opt.batch : (opt.depth < 64 ? 64 : opt.depth);
    size_t wblock = opt.block;
    struct result w = run_stream(opt.mode == MODE_LAT ? 1 : (opt.mode == MODE_POST ? 64 : opt.depth), wblock, 0, warm,
                                 NULL, 0, NULL);
    (void)w;
  }

  struct result res;
  uint64_t *lat = NULL;
  size_t nlat = 0;
  if (opt.mode == MODE_BW) {
    if (opt.iters == 0 && opt.duration <= 0) usage();
    res = run_stream(opt.depth, opt.block, opt.duration, opt.iters, NULL, 0, NULL);
  } else if (opt.mode == MODE_LAT) {
    size_t maxlat = opt.iters ? opt.iters : 4000000;
    lat = malloc(maxlat * sizeof *lat);
    res = run_stream(1, opt.block, opt.duration, opt.iters, lat, maxlat, &nlat);
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    res.p50_us = nlat ? (double)lat[nlat / 2] / 1e3 : 0;
    res.p99_us = nlat ? (double)lat[(size_t)((double)nlat * 0.99)] / 1e3 : 0;
    res.min_us = nlat ? (double)lat[0] / 1e3 : 0;
  } else {
    res = run_post();
  }

  // Stop the target, then have it check what our WRITEs left there (or check what our READs brought).
  *shared_stop = 1;
  char verify = 'v';
  write_all(sv[0], &verify, 1);
  uint8_t target_ok = 0;
  read_all(sv[0], &target_ok, 1);
  bool verified;
  if (opt.mode != MODE_BW) {
    verified = true;  // lat/post runs do not cover the whole pool
  } else if (opt.read) {
    size_t covered = res.ops * opt.block < opt.pool ? res.ops * opt.block : opt.pool;
    verified = true;
    for (size_t i = 0; i < covered; ++i)
      if (pool[i] != 0xa5) { verified = false; break; }
  } else {
    verified = target_ok == 1 || res.ops * opt.block < opt.pool;
  }
  int status = 0;
  waitpid(child, &status, 0);

  const double secs = (double)res.elapsed_ns / 1e9;
  const double gbps = (double)res.bytes / (double)res.elapsed_ns;  // bytes per ns = GB/s (decimal)
  const char *tw[] = {"auto", "spin", "yield", "sread"};
  printf("{\"tool\":\"fi_raw_bench\",\"mode\":\"%s\",\"op\":\"%s\",\"provider\":\"%s\",\"fabric\":\"%s\",\"domain\":\"%s\","
         "\"block\":%zu,\"pool\":%zu,\"depth\":%zu,\"rails\":%u,\"deliveryComplete\":%s,\"threading\":\"%s\","
         "\"targetWait\":\"%s\",\"initiatorWait\":\"%s\",\"ops\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"seconds\":%.6f,\"gbps\":%.4f,\"opsPerSec\":%.1f,"
         "\"eagain\":%" PRIu64,
         mode_name(), opt.read ? "read" : "write", rails[0].info->fabric_attr->prov_name,
         rails[0].info->fabric_attr->name, rails[0].info->domain_attr->name, opt.block, opt.pool,
         opt.mode == MODE_POST ? opt.batch : opt.depth, opt.rails,
         (!opt.read && opt.delivery_complete) ? "true" : "false", opt.thread_domain ? "domain" : "safe",
         tw[opt.target_wait], opt.initiator_yield ? "yield" : "spin", res.ops, res.bytes, secs, gbps, (double)res.ops / secs, res.eagain);
  if (opt.mode == MODE_LAT) printf(",\"samples\":%zu,\"p50Us\":%.3f,\"p99Us\":%.3f,\"minUs\":%.3f", nlat, res.p50_us, res.p99_us, res.min_us);
  if (opt.mode == MODE_POST)
    printf(",\"batch\":%zu,\"postNsPerDesc\":%.1f,\"postLoopNsPerDesc\":%.1f,\"batchCompleteUs\":%.1f,\"postP50Ns\":%.1f,\"postP99Ns\":%.1f",
           opt.batch, res.post_ns_per_desc, res.batch_wall_ns_per_desc, res.batch_complete_us, res.post_p50_ns,
           res.post_p99_ns);
  printf(",\"verified\":%s,\"targetExit\":%d}\n", verified ? "true" : "false", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  fflush(stdout);

  if (opt.mode == MODE_BW)
    fprintf(stderr, "raw %s %s %s block=%zu depth=%zu rails=%u: %.3f GB/s, %.0f ops/s%s\n", provider_name(),
            opt.read ? "READ" : "WRITE", mode_name(), opt.block, opt.depth, opt.rails, gbps, (double)res.ops / secs,
            verified ? "" : " (VERIFY FAILED)");
  else if (opt.mode == MODE_LAT)
    fprintf(stderr, "raw %s %s latency block=%zu: p50 %.2f us, p99 %.2f us, min %.2f us (%zu samples)\n",
            provider_name(), opt.read ? "READ" : "WRITE", opt.block, res.p50_us, res.p99_us, res.min_us, nlat);
  else
    fprintf(stderr, "raw %s %s posting block=%zu batch=%zu: %.1f ns/descriptor inside post calls, %.1f ns loop, %.1f us per batch to completion\n",
            provider_name(), opt.read ? "READ" : "WRITE", opt.block, opt.batch, res.post_ns_per_desc,
            res.batch_wall_ns_per_desc, res.batch_complete_us);

  close_rails();
  free(pool);
  free(lat);
  return verified ? 0 : 1;
}
