// Serving configuration: defaults < JSON file (--config) < environment < flags, validated by one JSON schema
// per process kind (ajv). Unknown keys are refused — a misspelt key must not silently leave a default in
// place. Environment: every key as KVF_<KEY> (KVF_TOKENS_PER_BLOCK, lists comma-separated), plus the
// seed deployment's own variables: NIXL_BACKEND (the KV backend) and FI_PROVIDER (the libfabric provider).
// Flags: every key but a few (NO_FLAG) as --<key> (--tokens-per-block), named, described and defaulted by its
// schema (configFlags in config-schema.ts, which src/cli/main.ts declares), so a new key gets its flag by itself.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

import { Ajv, type ErrorObject } from 'ajv';

import { KvfError } from '../common/errors.js';
import { resolveBackend } from '../fabric/config.js';
import { frontendSchema, workerSchema, type FrontendConfig, type WorkerConfig } from './config-schema.js';
import { defaultModelPath } from './default-model.js';

export type { FrontendConfig, Role, ServeMode, WorkerConfig } from './config-schema.js';

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: true });
const validators = { worker: ajv.compile(workerSchema), frontend: ajv.compile(frontendSchema) };
/** Keys that hold lists (etcd, prefill, decode): comma-separated in env and flags. */
const ARRAY_KEYS = new Set(
  [workerSchema, frontendSchema].flatMap((schema) =>
    Object.entries(schema.properties as Record<string, { type?: string }>)
      .filter(([, p]) => p.type === 'array')
      .map(([key]) => key),
  ),
);

export interface ConfigSources {
  /** Parsed flags (undefined values are ignored). */
  flags?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** Path of a JSON config file. */
  file?: string;
}

export function workerConfig(sources: ConfigSources): WorkerConfig {
  const merged = merge(Object.keys(workerSchema.properties), sources);
  merged.id ??= `${String(merged.role ?? 'worker')}-${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64);
  return validate('worker', merged) as WorkerConfig;
}

export function frontendConfig(sources: ConfigSources): FrontendConfig {
  return validate('frontend', merge(Object.keys(frontendSchema.properties), sources)) as FrontendConfig;
}

/** The environment variable of a config key: tokensPerBlock → KVF_TOKENS_PER_BLOCK. */
export function envName(key: string): string {
  return `KVF_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** Every variable the serving config reads (workers and frontend): what `kvfabric doctor` knows as kvfabric's own. */
export function configEnvNames(): string[] {
  const keys = new Set([...Object.keys(workerSchema.properties), ...Object.keys(frontendSchema.properties)]);
  return [...keys].map(envName);
}

function merge(keys: string[], { flags = {}, env = process.env, file }: ConfigSources): Record<string, unknown> {
  const fromFile = file ? readJson(file) : {};
  const fromEnv: Record<string, unknown> = {};
  for (const key of keys) {
    const value = env[envName(key)];
    if (value !== undefined && value !== '') fromEnv[key] = ARRAY_KEYS.has(key) ? splitList(value) : value;
  }
  if (env.FI_PROVIDER && keys.includes('provider')) fromEnv.provider = env.FI_PROVIDER;
  // NIXL_BACKEND is checked here with the fabric's own rule, so a wrong backend fails at start-up with the same code.
  fromEnv.backend = resolveBackend(undefined, env);
  const fromFlags = Object.fromEntries(
    Object.entries(flags)
      .map(([k, v]) => [k, ARRAY_KEYS.has(k) && typeof v === 'string' ? splitList(v) : v])
      .filter(([, v]) => v !== undefined),
  );
  const merged: Record<string, unknown> = { ...fromFile, ...fromEnv, ...fromFlags };
  merged.model ??= defaultModelPath(env);
  return merged;
}

function validate(kind: keyof typeof validators, config: Record<string, unknown>): unknown {
  const check = validators[kind];
  if (!check(config)) throw new KvfError('KVF_ERR_BAD_CONFIG', `invalid ${kind} configuration: ${describe(check.errors ?? [])}`);
  return config;
}

function describe(errors: ErrorObject[]): string {
  return errors
    .map((e) => {
      if (e.keyword === 'additionalProperties') return `unknown key '${String(e.params.additionalProperty)}'`;
      const key = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || '(root)';
      return `${key} ${e.message ?? 'is invalid'}${e.keyword === 'enum' ? ` (${(e.params.allowedValues as unknown[]).join(', ')})` : ''}`;
    })
    .join('; ');
}

function readJson(path: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new KvfError('KVF_ERR_BAD_CONFIG', `cannot read config file ${path}: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new KvfError('KVF_ERR_BAD_CONFIG', `${path} must hold a JSON object`);
  return parsed as Record<string, unknown>;
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}
