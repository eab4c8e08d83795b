// Teacher-forced top-1 agreement between kvfabric's ReferenceEngine and llama.cpp (through node-llama-cpp)
// on the same GGUF, fed the same token ids.
//
// For each prompt: render it with the model's chat template and tokenize it with OUR tokenizer; llama.cpp
// generates a greedy continuation (up to --tokens, stopping after an end-of-turn token) and reports the full
// next-token distribution at every step. Our engine is then teacher-forced along llama.cpp's tokens (prefill
// the prompt, decode each llama.cpp token in turn) and at every step we compare our argmax with llama.cpp's,
// and our log-softmax with log(llama.cpp probability) (= the logits with the per-position constant removed).
// Our own free-running greedy continuation is generated too, to show both texts.
// Also compares our tokenizer with llama.cpp's model.tokenize on a few strings.
//
//   node --import tsx benchmarks/crosscheck/llama-cpp/crosscheck.ts [--model PATH] [--tokens 64] [--threads 2]
//        [--long-prompt N] [--out FILE]
import { mkdirSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';

import { getLlama, LlamaLogLevel, type Token } from 'node-llama-cpp';

import { ChatTemplate } from '../../../src/engine/chat-template.js';
import { ReferenceEngine } from '../../../src/engine/engine.js';
import { readGgufMetadata } from '../../../src/engine/gguf-metadata.js';
import { argmax } from '../../../src/engine/sampling.js';
import { Tokenizer } from '../../../src/engine/tokenizer.js';

const here = dirname(new URL(import.meta.url).pathname);
const repoRoot = resolve(here, '../../..');

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: join(process.env.KVF_MODEL_CACHE ?? join(homedir(), '.cache', 'kvfabric', 'models'), 'SmolLM2-135M-Instruct.Q4_1.gguf') },
    tokens: { type: 'string', default: '64' },
    threads: { type: 'string', default: '2' },
    // A seventh prompt of about this many tokens (a passage repeated, then a question about it), for the
    // agreement on a long context; 0: none.
    'long-prompt': { type: 'string', default: '0' },
    out: { type: 'string', default: join(repoRoot, 'benchmarks', 'out', 'crosscheck-llama-cpp.json') },
  },
});
const modelPath = args.model!;
const maxNew = Number(args.tokens);
const threads = Number(args.threads);
const longPrompt = Number(args['long-prompt']);

const PROMPTS = [
  'What is the capital of France?',
  'Write a short story about a robot who learns to paint.',
  'Explain how photosynthesis works in simple terms.',
  'Give me three tips for writing clean Python code.',
  'List the planets of the solar system in order from the Sun.',
  'Why is the sky blue?',
];

const PASSAGE =
  'The history of computing is a story of abstraction layered upon abstraction. Early machines were programmed by ' +
  'rewiring panels and flipping switches; later, stored programs let the same hardware run different tasks. ' +
  'Assembly languages gave names to instructions, compilers translated high-level languages into machine code, ' +
  'and operating systems shared one machine among many users. ';

const TOKENIZE_STRINGS = [
  'Hello, world!',
  'The quick brown fox jumps over the lazy dog.',
  "  leading spaces, trailing spaces   \n\n\tand tabs\ttoo  ",
  'Numbers: 1234567890 3.14159 1,000,000 and 42nd',
  "I'm sure you've heard they'll say it's John's, we'd DON'T",
  'def f(x):\n    return {"a": [x, x**2]}  # comment',
  'Ünïcödé: naïve café, 日本語のテキスト, русский текст, emoji 🚀🎉👍🏽',
  'https://example.com/path?query=1&b=two#frag',
  '<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n',
  '\n\n\n   \r\n',
];

// ----------------------------------------------------------------------------------------------------------

const meta = await readGgufMetadata(modelPath);
const tokenizer = Tokenizer.fromGguf(meta);
const template = ChatTemplate.fromGguf(meta);

const nlcVersion = (JSON.parse(readFileSync(join(here, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')) as { version: string }).version;
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const lmodel = await llama.loadModel({ modelPath });
if (longPrompt > 0) {
  const perPassage = tokenizer.encode(PASSAGE, { addBos: false }).length;
  PROMPTS.push(PASSAGE.repeat(Math.max(1, Math.round(longPrompt / perPassage))) + '\nWhat is this text about?');
}
// Room for the longest prompt (chat template included) and its continuation.
const contextSize = Math.min(
  meta.getInt('llama.context_length'),
  Math.max(1024, Math.ceil((Math.max(...PROMPTS.map((q) => template.encode(tokenizer, [{ role: 'user', content: q }]).length)) + maxNew) / 32) * 32),
);
const lctx = await lmodel.createContext({ contextSize, threads, sequences: 1 });
const seq = lctx.getSequence();

const tokensPerBlock = 32;
const blockBytes = ReferenceEngine.blockBytes(modelPath, { tokensPerBlock });
const numBlocks = contextSize / tokensPerBlock;
const engine = new ReferenceEngine({ modelPath, pool: new Uint8Array(numBlocks * blockBytes), tokensPerBlock, threads });
const blocks = engine.allocateBlocks(numBlocks);

const ends = new Set<number>(
  [tokenizer.eosId, tokenizer.eotId, lmodel.tokens.eos ?? undefined, lmodel.tokens.eot ?? undefined].filter((t): t is number => t !== undefined),
);

console.log(`model: ${modelPath}`);
console.log(`node-llama-cpp ${nlcVersion} (llama.cpp ${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}, build ${llama.buildType}, gpu ${String(llama.gpu)}), threads ${threads}`);
console.log(`end tokens: ${[...ends].join(', ')}`);

// --- tokenizer comparison ---------------------------------------------------------------------------------
interface TokCase {
  text: string;
  parseSpecial: boolean;
  ours: number[];
  llama: number[];
  match: boolean;
}
const tokCases: TokCase[] = [];
for (const text of TOKENIZE_STRINGS) {
  for (const parseSpecial of [false, true]) {
    const ours = tokenizer.encode(text, { addBos: false, addEos: false, parseSpecial });
    const theirs = Array.from(lmodel.tokenize(text, parseSpecial)) as number[];
    const match = ours.length === theirs.length && ours.every((t, i) => t === theirs[i]);
    tokCases.push({ text, parseSpecial, ours, llama: theirs, match });
  }
}
const tokMismatches = tokCases.filter((c) => !c.match);
console.log(`\ntokenization: ${tokCases.length - tokMismatches.length}/${tokCases.length} strings identical (each string with and without special-token parsing)`);
for (const m of tokMismatches) {
  console.log(`  MISMATCH parseSpecial=${m.parseSpecial} ${JSON.stringify(m.text)}\n    ours  ${JSON.stringify(m.ours)}\n    llama ${JSON.stringify(m.llama)}`);
}

// --- teacher-forced agreement ----------------------------------------------------------------------------
function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! - lse;
  return out;
}

interface StepCompare {
  llamaTop: number;
  oursTop: number;
  maxAbs: number; // over tokens with llama p > 1e-30
  meanAbs: number;
  llamaTopProb: number;
  oursTopProb: number;
}

function compare(ours: Float32Array, probs: Map<Token, number>, llamaTop: number): StepCompare {
  const ls = logSoftmax(ours);
  let maxAbs = 0;
  let sumAbs = 0;
  let n = 0;
  for (const [tok, p] of probs) {
    if (!(p > 1e-30)) continue;
    const d = Math.abs(Math.log(p) - ls[tok as number]!);
    if (d > maxAbs) maxAbs = d;
    sumAbs += d;
    n++;
  }
  const oursTop = argmax(ours);
  return { llamaTop, oursTop, maxAbs, meanAbs: sumAbs / n, llamaTopProb: probs.get(llamaTop as Token) ?? 0, oursTopProb: Math.exp(ls[oursTop]!) };
}

interface PromptResult {
  prompt: string;
  promptTokens: number;
  positions: number;
  agree: number;
  agreement: number;
  maxAbsLogprobDiff: number;
  meanAbsLogprobDiff: number;
  mismatches: { step: number; llamaTop: number; oursTop: number; llamaTopProb: number; llamaProbOfOurs: number; oursTopProb: number }[];
  llamaGreedy: string;
  oursGreedy: string;
  greedyIdenticalTokens: number; // length of the common prefix of the two free-running continuations
  greedyBothLength: [number, number];
}

const results: PromptResult[] = [];
for (const question of PROMPTS) {
  const prompt = template.encode(tokenizer, [{ role: 'user', content: question }]);

  // llama.cpp: greedy continuation with the full distribution at each step.
  await seq.clearHistory();
  const gen = { generateNext: { token: true, probabilities: true, options: { temperature: 0 } } } as const;
  const llamaTokens: number[] = [];
  const llamaProbs: Map<Token, number>[] = [];
  let input: Parameters<typeof seq.controlledEvaluate>[0] = prompt.map((t, i) => (i === prompt.length - 1 ? [t as Token, gen] : (t as Token)));
  for (let step = 0; step < maxNew; step++) {
    const out = await seq.controlledEvaluate(input);
    const next = out[input.length - 1]?.next;
    if (next?.token == null || next.probabilities == null) throw new Error(`llama.cpp returned no token at step ${step}`);
    llamaTokens.push(next.token);
    llamaProbs.push(next.probabilities);
    if (ends.has(next.token)) break;
    input = [[next.token, gen]];
  }

  // Ours, teacher-forced along llama.cpp's tokens.
  const steps: StepCompare[] = [];
  let logits = await engine.prefill(prompt, blocks, 0);
  for (let k = 0; k < llamaTokens.length; k++) {
    steps.push(compare(logits, llamaProbs[k]!, llamaTokens[k]!));
    if (k + 1 < llamaTokens.length) logits = await engine.decode(llamaTokens[k]!, blocks, prompt.length + k);
  }

  // Ours, free-running greedy.
  const oursTokens: number[] = [];
  logits = await engine.prefill(prompt, blocks, 0);
  for (let k = 0; k < maxNew; k++) {
    const t = argmax(logits);
    oursTokens.push(t);
    if (ends.has(t)) break;
    logits = await engine.decode(t, blocks, prompt.length + k);
  }
  let common = 0;
  while (common < oursTokens.length && common < llamaTokens.length && oursTokens[common] === llamaTokens[common]) common++;

  const agree = steps.filter((s) => s.llamaTop === s.oursTop).length;
  const r: PromptResult = {
    prompt: question,
    promptTokens: prompt.length,
    positions: steps.length,
    agree,
    agreement: agree / steps.length,
    maxAbsLogprobDiff: Math.max(...steps.map((s) => s.maxAbs)),
    meanAbsLogprobDiff: steps.reduce((a, s) => a + s.meanAbs, 0) / steps.length,
    mismatches: steps
      .map((s, step) => ({ s, step }))
      .filter(({ s }) => s.llamaTop !== s.oursTop)
      .map(({ s, step }) => ({
        step,
        llamaTop: s.llamaTop,
        oursTop: s.oursTop,
        llamaTopProb: s.llamaTopProb,
        llamaProbOfOurs: llamaProbs[step]!.get(s.oursTop as Token) ?? 0,
        oursTopProb: s.oursTopProb,
      })),
    llamaGreedy: tokenizer.decode(llamaTokens),
    oursGreedy: tokenizer.decode(oursTokens),
    greedyIdenticalTokens: common,
    greedyBothLength: [llamaTokens.length, oursTokens.length],
  };
  results.push(r);
  const shown = question.length > 100 ? `${question.slice(0, 60)}…${question.slice(-30)}` : question;
  console.log(`\n### ${JSON.stringify(shown)} (${prompt.length} prompt tokens)`);
  console.log(`  teacher-forced top-1 agreement: ${agree}/${steps.length} = ${(100 * r.agreement).toFixed(1)}%`);
  console.log(`  |log-softmax diff|: max ${r.maxAbsLogprobDiff.toExponential(3)}, mean ${r.meanAbsLogprobDiff.toExponential(3)}`);
  for (const m of r.mismatches) {
    console.log(
      `  step ${m.step}: llama.cpp ${m.llamaTop} ${JSON.stringify(tokenizer.decode([m.llamaTop]))} p=${m.llamaTopProb.toFixed(4)}, ours ${m.oursTop} ${JSON.stringify(tokenizer.decode([m.oursTop]))} (llama.cpp p=${m.llamaProbOfOurs.toFixed(4)})`,
    );
  }
  console.log(`  free-running greedy: identical for the first ${common} tokens (lengths llama.cpp ${llamaTokens.length}, ours ${oursTokens.length})`);
  console.log(`  llama.cpp: ${JSON.stringify(r.llamaGreedy)}`);
  console.log(`  ours     : ${JSON.stringify(r.oursGreedy)}`);
}

const totalPos = results.reduce((a, r) => a + r.positions, 0);
const totalAgree = results.reduce((a, r) => a + r.agree, 0);
const overall = {
  positions: totalPos,
  agree: totalAgree,
  agreement: totalAgree / totalPos,
  maxAbsLogprobDiff: Math.max(...results.map((r) => r.maxAbsLogprobDiff)),
  meanAbsLogprobDiff: results.reduce((a, r) => a + r.meanAbsLogprobDiff * r.positions, 0) / totalPos,
  greedyIdenticalPrompts: results.filter((r) => r.greedyIdenticalTokens === r.greedyBothLength[0] && r.greedyBothLength[0] === r.greedyBothLength[1]).length,
};
console.log(`\n## overall: teacher-forced top-1 agreement ${totalAgree}/${totalPos} = ${(100 * overall.agreement).toFixed(2)}%`);
console.log(`   |log-softmax diff| max ${overall.maxAbsLogprobDiff.toExponential(3)}, mean ${overall.meanAbsLogprobDiff.toExponential(3)}`);
console.log(`   free-running greedy continuations identical: ${overall.greedyIdenticalPrompts}/${results.length} prompts`);
console.log(`   tokenization: ${tokMismatches.length} mismatches out of ${tokCases.length}`);

mkdirSync(dirname(args.out!), { recursive: true });
writeFileSync(
  args.out!,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      model: modelPath,
      nodeLlamaCpp: nlcVersion,
      llamaCpp: llama.llamaCppRelease,
      threads,
      contextSize,
      maxNewTokens: maxNew,
      kvDtype: { ours: engine.layout.dtype },
      tokenization: { cases: tokCases.length, mismatches: tokMismatches },
      prompts: results,
      overall,
    },
    null,
    2,
  ) + '\n',
);
console.log(`wrote ${args.out}`);

await engine.close();
await lctx.dispose();
await lmodel.dispose();
await llama.dispose();
