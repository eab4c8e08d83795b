// JSON schemas of the OpenAI-compatible request bodies, validated by fastify (ajv) before a handler runs.
// Fields kvfabric does not implement are refused rather than ignored (n > 1, logprobs, tools, …): a client
// must not believe it got what it asked for. `top_k` is an extension (llama.cpp and vLLM accept it too).

const nullable = <T extends object>(schema: T) => ({ anyOf: [schema, { type: 'null' }] });

const sampling = {
  model: { type: 'string', minLength: 1 },
  max_tokens: nullable({ type: 'integer', minimum: 1 }),
  temperature: nullable({ type: 'number', minimum: 0, maximum: 2 }),
  top_p: nullable({ type: 'number', exclusiveMinimum: 0, maximum: 1 }),
  top_k: nullable({ type: 'integer', minimum: 0 }),
  seed: nullable({ type: 'integer' }),
  stop: nullable({ anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, maxItems: 4 }] }),
  stream: nullable({ type: 'boolean' }),
  stream_options: nullable({ type: 'object', additionalProperties: false, properties: { include_usage: { type: 'boolean' } } }),
  n: nullable({ type: 'integer', minimum: 1, maximum: 1 }),
  user: { type: 'string' },
  presence_penalty: nullable({ type: 'number', minimum: 0, maximum: 0 }),
  frequency_penalty: nullable({ type: 'number', minimum: 0, maximum: 0 }),
} as const;

export const completionBody = {
  type: 'object',
  additionalProperties: false,
  required: ['model', 'prompt'],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: 'string' },
        { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 1 },
        { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 1 },
      ],
    },
    echo: nullable({ type: 'boolean', const: false }),
  },
} as const;

const textPart = { type: 'object', additionalProperties: false, required: ['type', 'text'], properties: { type: { const: 'text' }, text: { type: 'string' } } };

export const chatBody = {
  type: 'object',
  additionalProperties: false,
  required: ['model', 'messages'],
  properties: {
    ...sampling,
    max_completion_tokens: nullable({ type: 'integer', minimum: 1 }),
    messages: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['role', 'content'],
        properties: {
          role: { enum: ['system', 'developer', 'user', 'assistant'] },
          content: { anyOf: [{ type: 'string' }, { type: 'array', items: textPart }] },
          name: { type: 'string' },
        },
      },
    },
  },
} as const;

export interface SamplingBody {
  model: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
}

export interface CompletionBody extends SamplingBody {
  prompt: string | string[] | number[];
}

export interface ChatBody extends SamplingBody {
  max_completion_tokens?: number | null;
  messages: { role: string; content: string | { type: 'text'; text: string }[]; name?: string }[];
}
