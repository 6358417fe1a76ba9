#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/seed-*) from the test
fixtures. Deterministic; rerun after a fixture changes. Inputs the fuzzer finds later are added
next to them by `fuzz/run.sh` (minimized)."""
import glob
import json
import os
import random
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def st(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def small_safetensors(path, keep):
    """The first `keep` tensors of a fixture file (by offset), with their real bytes."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    out, data = {}, b""
    if meta is not None:
        out["__metadata__"] = meta
    for name, e in items:
        lo, hi = e["data_offsets"]
        if hi - lo > 2048:
            continue
        out[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [len(data), len(data) + hi - lo]}
        data += b[8 + n + lo : 8 + n + hi]
        if len(out) > keep:
            break
    return st(out, data)


def main():
    fixtures = sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/models/*/hf")))
    variants = sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/variants/*/hf")))
    for d in fixtures + variants:
        name = os.path.basename(os.path.dirname(d))
        put("config_json", name, open(os.path.join(d, "config.json")).read())
        cfg = json.load(open(os.path.join(d, "config.json")))
        if "quantization_config" in cfg:
            put("quant_config", name + "-quantization_config", json.dumps(cfg["quantization_config"]))
        for f, target in [("hf_quant_config.json", "quant_config"), ("generation_config.json", "generation_config")]:
            p = os.path.join(d, f)
            if os.path.exists(p):
                put(target, name, open(p).read())
    for d in fixtures:
        name = os.path.basename(os.path.dirname(d))
        put("safetensors_file", name, small_safetensors(os.path.join(d, "model.safetensors"), 6))
    put("safetensors_file", "nvfp4_codec", small_safetensors(os.path.join(ROOT, "tests/fixtures/nvfp4_codec.safetensors"), 8))
    put("safetensors_file", "scalar-f32", st({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, struct.pack("<f", 0.5)))
    put("tokenizer_json", "fixture", open(os.path.join(ROOT, "tests/fixtures/tokenizer/tokenizer.json"), "rb").read())
    put("tokenizer_json", "tiny_grouped", open(os.path.join(fixtures[0], "tokenizer.json"), "rb").read())

    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    good = {"a.weight": shards[0], "b.weight": shards[0], "c.weight": shards[1], "d.bias": shards[1]}
    put("sharded_index", "valid", json.dumps({"metadata": {"total_size": 32}, "weight_map": good}))
    put("sharded_index", "one-shard", json.dumps({"weight_map": {"a.weight": shards[0], "b.weight": shards[0]}}))
    put("sharded_index", "wrong-shard", json.dumps({"weight_map": dict(good, **{"c.weight": shards[0]})}))
    put("sharded_index", "missing-shard", json.dumps({"weight_map": {"a.weight": "model-00003-of-00003.safetensors"}}))
    put("sharded_index", "path", json.dumps({"weight_map": {"a.weight": "../" + shards[0]}}))

    # The structured target reads its input with `arbitrary`: any bytes are a valid input, so
    # seed it with a few deterministic random ones of different lengths.
    rng = random.Random(18)
    for i, n in enumerate([0, 4, 16, 48, 96, 160, 256, 400]):
        put("model_load", f"random-{i}", bytes(rng.randrange(256) for _ in range(n)))


if __name__ == "__main__":
    main()
