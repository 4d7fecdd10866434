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


# ---- model config, experiment TOML: the fixtures themselves.
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

print("corpora written to", OUT, file=sys.stderr)
