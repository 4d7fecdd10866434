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


# ---- safetensors headers: each fixture's 8-byte length and JSON header, without the tensor data. The
# target reads 8 bytes first: how many bytes the file holds beyond the input (here, its data section).
def safetensors_seed(path):
    with open(path, "rb") as f:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head)
        header = f.read(n)
    data_bytes = os.path.getsize(path) - 8 - n
    return struct.pack("<Q", data_bytes) + head + header


for path in sorted(glob.glob(os.path.join(DATA, "models", "*", "*.safetensors"))):
    put("fuzz_safetensors_header", safetensors_seed(path))
# A one-tensor file padded to a 640-byte header (its first bytes read like a pickle's PROTO 2).
padded = b'{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.ljust(640)
put("fuzz_safetensors_header", struct.pack("<Q", 4) + struct.pack("<Q", len(padded)) + padded)
for path in sorted(glob.glob(os.path.join(DATA, "models", "*", "model.safetensors.index.json"))):
    put("fuzz_safetensors_index", open(path, "rb").read())


# ---- activation store meta.json: what ActivationStoreWriter::finish and capture write (tests/data has no
# store; these are the fields of a capture of gpt2-tiny, layer 2, 3 shards, dim 8).
def store_meta(shards, dim, layer, dtype):
    rows = [4] * (shards - 1) + [2]
    names = (["m_layer%d_activations.safetensors" % layer] if shards == 1 else
             ["m_layer%d_activations-%05d-of-%05d.safetensors" % (layer, i + 1, shards) for i in range(shards)])
    return {"model": "gpt2-tiny", "checkpoint": "tests/data/models/gpt2-tiny", "checkpoint_sha256": "0" * 64,
            "model_type": "gpt2", "layer": layer, "n_layers": 4, "relative_depth": layer / 4,
            "hook": "resid_post.%d" % (layer - 1) if layer else "embed", "hidden_size": dim, "compute_dtype": "f32",
            "dataset": "text:tests/data/tiny.jsonl", "dataset_sha256": "1" * 64, "seq_len": 16, "packing": "none",
            "mask_policy": {"exclude_special": True, "norm_outlier_factor": 50.0, "padding": "excluded",
                            "special_excluded": 3, "norm_outliers_excluded": 0},
            "rows": sum(rows), "dim": dim, "store_dtype": dtype, "shards": names, "shard_rows": rows,
            "mean": [0.25 * i for i in range(dim)], "std": [1.0 + 0.5 * i for i in range(dim)], "mean_norm": 3.5,
            "nonfinite_count": 0, "nonfinite_rows": 0}


put("fuzz_store_meta", json.dumps(store_meta(3, 8, 2, "f32"), indent=1))
put("fuzz_store_meta", json.dumps(store_meta(1, 4, 0, "bf16")))
put("fuzz_store_meta", json.dumps({"shards": ["a.safetensors"], "rows": 10, "dim": 4}))

# ---- SAE cfg.json: strata's own (Sae::save / train_sae, the SAELens layout with provenance), SAELens
# 6.x and pre-6.0 spellings, and sparsify's (tests/data has no SAE; test_sae_formats writes these fields).
sae_cfgs = [
    {"architecture": "standard", "d_in": 8, "d_sae": 32, "apply_b_dec_to_input": True,
     "normalize_activations": "none", "model": "gpt2-tiny", "layer": 2, "hook_name": "blocks.1.hook_resid_post",
     "seed": 1, "metrics": {"converged": True, "l0": 5.5, "dead_fraction": 0.0}, "training": {"lr": 0.0003}},
    {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4, "apply_b_dec_to_input": True,
     "normalize_activations": "none", "hook_name": "hook_embed"},
    {"architecture": "jumprelu", "d_in": 12, "d_sae": 40, "apply_b_dec_to_input": True, "dtype": "float32",
     "normalize_activations": "constant_norm_rescale", "metadata": {"hook_name": "blocks.3.hook_resid_pre",
                                                                    "model_name": "gpt2"}},
    {"d_in": 12, "d_sae": 40, "dtype": "bfloat16", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6},
     "hook_point": "blocks.2.hook_resid_post", "normalize_activations": True, "hook_point_head_index": None},
    {"architecture": "standard", "d_in": 12, "d_sae": 40, "normalize_activations": "layer_norm",
     "finetuning_scaling_factor": False, "reshape_activations": "none", "meta": {"hook_name": "blocks.0.hook_resid_pre"}},
    {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": 0, "k": 32,
     "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 768},
    {"activation": "topk", "expansion_factor": 1, "normalize_decoder": False, "num_latents": 24, "k": 4,
     "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 12},
]
for cfg in sae_cfgs:
    put("fuzz_sae_cfg", json.dumps(cfg, indent=2))
for hook in ["layers.6", "gpt_neox.layers.3", "transformer.h.11", "blocks.3.hook_mlp_out"]:
    put("fuzz_sae_cfg", hook)

print("corpora written to", OUT, file=sys.stderr)
