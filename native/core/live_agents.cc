// Process-wide bookkeeping of agents: what must happen at process exit, and the shm endpoints that
// cannot be closed while another agent of this process still runs.
#include "core/live_agents.h"

#include <cstdlib>
#include <mutex>
#include <set>

#include "core/shm_regions.h"

namespace kvf {

namespace {

// Agents still open at process exit are halted before libfabric's own destructors run: atexit handlers
// registered after libfabric was loaded run before the loader's library destructors.
std::mutex g_live_mu;
std::set<LiveAgent*> g_live;
std::once_flag g_atexit_once;

// Endpoints of shm agents closed while another shm agent of this process was still running. libfabric's shm
// provider lets an in-process peer use the closed endpoint's region directly, so unmapping it under that
// peer's progress thread crashes; parked endpoints are closed once no shm agent of the process is running.
std::vector<std::unique_ptr<Rail>> g_parked_rails;
std::vector<RailMr> g_parked_mrs;

}  // namespace

void CloseParkedShmEndpoints() {
  std::vector<std::unique_ptr<Rail>> rails;
  std::vector<RailMr> mrs;
  {
    std::lock_guard<std::mutex> lock(g_live_mu);
    rails.swap(g_parked_rails);
    mrs.swap(g_parked_mrs);
  }
  for (auto& rail : rails) rail->CloseEndpoint();
  for (auto& mr : mrs) Rail::CloseMr(mr);
}

// At process exit (process.exit(), an uncaught exception: paths where Node runs no cleanup hooks) the rail
// threads must stop before libfabric's library destructors run, or they would run inside a library being
// torn down. Endpoints are not closed here: closing endpoints of several agents with traffic in flight
// crashed inside providers, and there is nothing to gain: the kernel reclaims sockets and devices, and
// libfabric's own destructor unlinks shm regions.
namespace {

void HaltLiveAgentsAtExit() {
  std::vector<LiveAgent*> live;
  {
    std::lock_guard<std::mutex> lock(g_live_mu);
    live.assign(g_live.begin(), g_live.end());
  }
  for (LiveAgent* a : live) a->HaltRails();
  // Without fi_close the shm provider leaves its regions in /dev/shm behind.
  UnlinkOwnShmRegions();
}

}  // namespace

void RegisterLiveAgent(LiveAgent* agent) {
  std::call_once(g_atexit_once, [] { std::atexit(HaltLiveAgentsAtExit); });
  std::lock_guard<std::mutex> lock(g_live_mu);
  g_live.insert(agent);
}

void UnregisterLiveAgent(LiveAgent* agent) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  g_live.erase(agent);
}

bool OtherShmAgentRunning(const LiveAgent* self) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  for (LiveAgent* a : g_live) {
    if (a != self && a->RunningOnShm()) return true;
  }
  return false;
}

void ParkShmEndpoints(std::vector<std::unique_ptr<Rail>> rails, std::vector<RailMr> mrs) {
  std::lock_guard<std::mutex> lock(g_live_mu);
  for (auto& rail : rails) g_parked_rails.push_back(std::move(rail));
  g_parked_mrs.insert(g_parked_mrs.end(), mrs.begin(), mrs.end());
}

}  // namespace kvf
