#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpora/<target>/) from the test fixtures.

Seeds are small on purpose: libFuzzer mutates them, and a 2 MB tokenizer.json per execution would keep a
target far from 10^6 executions. Run from the repository root; the output is committed.
"""
import glob
import gzip
import hashlib
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(ROOT, "fuzz", "corpora")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None, pad_to=8):
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text) - 8) % pad_to)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


# ---- safetensors: crafted files covering every dtype, 0-dim, empty and metadata; one fixture header.
put("fuzz_safetensors", safetensors({"w": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("F32", [2], f32(0, 1))}))
put("fuzz_safetensors", safetensors({"x": ("BF16", [3], b"\x80\x3f" * 3), "y": ("F16", [1, 1], b"\x00\x3c")},
                                    metadata={"format": "pt"}))
put("fuzz_safetensors", safetensors({"s": ("F64", [], struct.pack("<d", 2.5)), "e": ("I64", [0, 4], b"")}))
put("fuzz_safetensors", safetensors({"i": ("I32", [2], b"\x01\0\0\0\x02\0\0\0"), "u": ("U8", [3], b"abc"),
                                     "t": ("BOOL", [2], b"\x01\x00"), "h": ("I16", [1], b"\x07\x00"),
                                     "c": ("I8", [2], b"\xff\x01")}))
with open(os.path.join(DATA, "models", "gpt2-tiny", "model.safetensors"), "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    head = json.loads(f.read(n))
small = {k: v for k, v in head.items() if k != "__metadata__" and len(v["shape"]) == 1 and v["shape"][0] <= 64}
put("fuzz_safetensors", safetensors({k: (v["dtype"], v["shape"], b"\0" * (4 * v["shape"][0]))
                                     for k, v in list(small.items())[:6]}))
put("fuzz_safetensors", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\0" * 16)  # a renamed torch.save zip

# ---- checkpoint index, model config, experiment TOML: the fixtures themselves.
for path in glob.glob(os.path.join(DATA, "models", "*", "model.safetensors.index.json")):
    put("fuzz_checkpoint_index", open(path, "rb").read())
for path in sorted(glob.glob(os.path.join(DATA, "models", "*", "config.json"))):
    put("fuzz_model_config", open(path, "rb").read())
for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "*.toml"))):
    put("fuzz_experiment_toml", open(path, "rb").read())


# ---- tokenizers: each fixture's pipeline with its vocabulary cut to a few hundred entries.
def load_tokenizer_json(name):
    d = os.path.join(DATA, "tokenizers", name)
    if os.path.exists(os.path.join(d, "tokenizer.json")):
        return json.load(open(os.path.join(d, "tokenizer.json"), encoding="utf-8"))
    return json.load(gzip.open(os.path.join(d, "tokenizer.json.gz"), "rt", encoding="utf-8"))


def escape_random_length(data):
    """FuzzedDataProvider::ConsumeRandomLengthString: '\\\\' is one backslash, '\\' + other byte ends it."""
    return data.replace(b"\\", b"\\\\") + b"\\n"


def sample_texts(name, count=3):
    texts = []
    for line in open(os.path.join(DATA, "tokenizers", name, "cases.jsonl"), encoding="utf-8"):
        t = json.loads(line).get("text", "")
        if t and len(t.encode()) < 200:
            texts.append(t)
        if len(texts) == count:
            break
    return texts


for name in ["gpt2", "pythia", "phi-2", "gemma"]:
    tok = load_tokenizer_json(name)
    model = tok["model"]
    keep = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1])[:300])
    merges = []
    for m in model.get("merges", []):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in keep and b in keep and a + b in keep:
            merges.append(m)
    model["vocab"], model["merges"] = keep, merges[:200]
    tok["added_tokens"] = [a for a in tok.get("added_tokens", []) if a["id"] < 300]
    small = json.dumps(tok, ensure_ascii=False).encode()
    for text in sample_texts(name):
        put("fuzz_tokenizer_load", escape_random_length(small) + text.encode() + b"\x00")  # last byte: bool 0
        for selector, tname in enumerate(["gpt2", "pythia", "phi-2", "gemma"]):
            if tname == name:
                put("fuzz_tokenizer_encode", bytes([selector]) + text.encode())
# The vocab.json + merges.txt pair (bool 1): GPT-2's, cut the same way.
vocab = json.load(open(os.path.join(DATA, "tokenizers", "gpt2", "vocab.json"), encoding="utf-8"))
keep = {k: v for k, v in vocab.items() if v < 300}
lines = open(os.path.join(DATA, "tokenizers", "gpt2", "merges.txt"), encoding="utf-8").read().splitlines()
pair_merges = [lines[0]] + [l for l in lines[1:] if len(l.split(" ")) == 2 and all(p in keep for p in l.split(" "))
                            and "".join(l.split(" ")) in keep][:200]
put("fuzz_tokenizer_load", escape_random_length(json.dumps(keep, ensure_ascii=False).encode())
    + escape_random_length("\n".join(pair_merges).encode()) + "Hello world".encode() + b"\x01")

# ---- store meta.json, matching the store fuzz_store_meta writes (10 rows of width 4 in shards of 4, 4, 2).
base = "m_layer1_activations"
meta = {"rows": 10, "dim": 4, "store_dtype": "f32",
        "shards": ["%s-%05d-of-00003.safetensors" % (base, i) for i in (1, 2, 3)], "shard_rows": [4, 4, 2],
        "mean": [18.0, 19.0, 20.0, 21.0], "std": [11.5, 11.5, 11.5, 11.5], "mean_norm": 40.0, "nonfinite_count": 0}
put("fuzz_store_meta", json.dumps(meta, indent=1))
put("fuzz_store_meta", json.dumps({"rows": 10, "shards": meta["shards"]}))

# ---- SAE cfg.json, matching the weights fuzz_sae_cfg writes (d_in 4, d_sae 8).
put("fuzz_sae_cfg", json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8, "hook_name": "blocks.0.hook_resid_post",
                                "training": {"l1_coefficient": 1e-4}}, indent=2))
put("fuzz_sae_cfg", json.dumps({"architecture": "topk", "d_in": 4, "d_sae": 8, "k": 2}))
print("corpora written to", OUT, file=sys.stderr)
