import sys, json
from gguf import GGUFReader
from transformers.integrations.gguf.gguf_tokenizer_mapping import byte_level_tokenizer, add_gguf_special_tokens
r = GGUFReader(sys.argv[1])
f = r.fields
d = {"tokenizer_type": f["tokenizer.ggml.model"].contents(),
     "tokens": f["tokenizer.ggml.tokens"].contents(),
     "token_type": f["tokenizer.ggml.token_type"].contents(),
     "merges": f["tokenizer.ggml.merges"].contents()}
tok = add_gguf_special_tokens(byte_level_tokenizer(d), d)
for s in json.loads(sys.argv[2]):
    ids = tok.encode(s, add_special_tokens=False)
    print(json.dumps([s, ids, tok.decode(ids)], ensure_ascii=False))
