// The seeded PRNG tests use for layouts and fuzz cases: the sampler's own.
export { mulberry32 as prng } from '../../src/engine/sampling.js';
