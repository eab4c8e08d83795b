// Process-wide registry of open agents (see live_agents.cc for why it exists).
#pragma once

#include <memory>
#include <vector>

#include "core/rail.h"

namespace kvf {

// What the registry needs of an agent (core/agent.h).
class LiveAgent {
 public:
  // Stops and joins the agent's rail threads without releasing anything (at process exit).
  virtual void HaltRails() = 0;
  // Whether it runs on the shm provider and has not closed yet.
  virtual bool RunningOnShm() const = 0;

 protected:
  ~LiveAgent() = default;
};

// Registering the first agent installs the exit handler that halts every agent's rails.
void RegisterLiveAgent(LiveAgent* agent);
void UnregisterLiveAgent(LiveAgent* agent);
bool OtherShmAgentRunning(const LiveAgent* self);
// Keeps shm endpoints (and their MRs) open until CloseParkedShmEndpoints, once no shm agent runs.
void ParkShmEndpoints(std::vector<std::unique_ptr<Rail>> rails, std::vector<RailMr> mrs);
void CloseParkedShmEndpoints();

}  // namespace kvf
