// The benchmarks describe their machine the way `kvfabric bench` does (one implementation, in src/).
export { describeMachine, type MachineDescription } from '../../src/bench/machine.js';
