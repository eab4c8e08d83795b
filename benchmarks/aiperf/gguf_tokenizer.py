# Builds a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) from a GGUF file's GPT-2 style
# BPE vocabulary, so that AIPerf counts tokens offline as the served model does. Usage: gguf_tokenizer.py MODEL.gguf OUTDIR
import json, sys
from gguf import GGUFReader
path, out = sys.argv[1], sys.argv[2]
r = GGUFReader(path)
def field(name):
    f = r.fields[name]
    return [bytes(f.parts[i]).decode('utf-8') for i in f.data]
def scalar(name):
    f = r.fields[name]
    return int(f.parts[f.data[0]][0])
tokens = field('tokenizer.ggml.tokens')
merges = field('tokenizer.ggml.merges')
bos, eos = tokens[scalar('tokenizer.ggml.bos_token_id')], tokens[scalar('tokenizer.ggml.eos_token_id')]
tok = {
  'version': '1.0', 'truncation': None, 'padding': None,
  'added_tokens': [{'id': i, 'content': t, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False, 'special': True}
                   for i, t in enumerate(tokens) if t.startswith('<|') and t.endswith('|>')],
  'normalizer': None,
  'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
  'post_processor': None,
  'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
  'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None, 'end_of_word_suffix': None,
            'fuse_unk': False, 'byte_fallback': False, 'vocab': {t: i for i, t in enumerate(tokens)}, 'merges': merges},
}
json.dump(tok, open(f'{out}/tokenizer.json', 'w'))
json.dump({'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': bos, 'eos_token': eos, 'model_max_length': 8192}, open(f'{out}/tokenizer_config.json', 'w'))
