// Process-wide registry of open agents (see live_agents.cc for why it exists).
#pragma once

#include <memory>
#include <vector>

#include "core/rail.h"

namespace kvf {

class Agent;

// Registering the first agent installs the exit handler that halts every agent's rails.
void RegisterLiveAgent(Agent* agent);
void UnregisterLiveAgent(Agent* agent);
bool OtherShmAgentRunning(const Agent* self);
// Keeps shm endpoints (and their MRs) open until CloseParkedShmEndpoints, once no shm agent runs.
void ParkShmEndpoints(std::vector<std::unique_ptr<Rail>> rails, std::vector<RailMr> mrs);
void CloseParkedShmEndpoints();

}  // namespace kvf
