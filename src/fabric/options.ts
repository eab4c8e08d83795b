// Options objects refuse keys they do not know: a misspelt or unsupported option (`{ devcie: 'cuda:0' }`, or
// `{ device }` where it does not apply) must not silently fall back to a default.
import { KvfError } from '../common/errors.js';

/**
 * Throws KVF_ERR_INVALID_ARGUMENT naming the first own key of `options` not in `known`, and when `options`
 * is not an object at all. `undefined` passes (every option at its default), and so does a key whose value is
 * `undefined` (it asks for nothing; callers spread optional settings that way).
 */
export function checkOptionKeys(options: unknown, known: readonly string[], where: string): void {
  if (options === undefined) return;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `${where}: options must be an object`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key) && (options as Record<string, unknown>)[key] !== undefined) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `${where}: unknown option '${key}' (known: ${known.join(', ')})`);
    }
  }
}
