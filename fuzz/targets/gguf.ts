// GGUF model metadata as the frontend reads it (Frontend.start): header and key/values
// (src/engine/gguf-metadata.ts), then the tokenizer, the chat template and the context length built from
// them, and one encode through each. A model file is untrusted: any bytes must give a model or a KvfError
// (KVF_ERR_BAD_MODEL), never a RangeError, TypeError, hang or huge allocation.
import { ChatTemplate } from '../../src/engine/chat-template.js';
import { parseGgufMetadata } from '../../src/engine/gguf-metadata.js';
import { Tokenizer } from '../../src/engine/tokenizer.js';
import { guarded } from './common.js';

export function check(data: Buffer): void {
  const meta = parseGgufMetadata(data, 'fuzz input');
  const tokenizer = Tokenizer.fromGguf(meta);
  meta.getInt(`${meta.getString('general.architecture')}.context_length`);
  const ids = tokenizer.encode('Hello, world! <|im_start|>user\nWhat is 2+2?<|im_end|>');
  tokenizer.decode(ids);
  if (meta.has('tokenizer.chat_template')) {
    ChatTemplate.fromGguf(meta).encode(tokenizer, [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
    ]);
  }
}

export const fuzz = guarded(check);
