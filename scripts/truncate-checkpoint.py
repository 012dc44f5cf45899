#!/usr/bin/env python3
"""Copies an HF BERT checkpoint folder keeping only its first N encoder layers (standard
library only): model.safetensors without the tensors of `encoder.layer.K.*` for K >= N,
config.json with num_hidden_layers = N, the other files (tokenizer, vocabulary) copied.
A probe for issue 15 (scripts/depth-20ng.sh): BERT at the depth C@5 keeps. DST must not
exist; it is written as DST.tmp and renamed when complete.

Usage: scripts/truncate-checkpoint.py SRC DST LAYERS
"""
import json
import os
import re
import shutil
import struct
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    src, dst, layers = sys.argv[1], sys.argv[2], sys.argv[3]
    if not layers.isdigit():
        sys.exit(f"LAYERS {layers!r} is not a whole number")
    layers = int(layers)
    if os.path.exists(dst):
        sys.exit(f"{dst} already exists: remove it first")
    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(src, name)):
            sys.exit(f"{os.path.join(src, name)}: not found (SRC must be an HF checkpoint folder)")
    try:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
        depth = int(config["num_hidden_layers"])
    except (ValueError, KeyError, TypeError) as e:
        sys.exit(f"{src}/config.json: no usable field num_hidden_layers ({e})")
    if not 1 <= layers <= depth:
        sys.exit(f"{src}/config.json: LAYERS must be 1..{depth}, not {layers}")
    tmp = dst + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if os.path.isfile(path) and name not in ("config.json", "model.safetensors"):
            shutil.copy(path, tmp)
    config["num_hidden_layers"] = layers
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    weights = os.path.join(src, "model.safetensors")
    with open(weights, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except (struct.error, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"{weights}: not a safetensors file ({e})")
        data = f.read()
    layer = re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.")
    out_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__":
            out_header[name] = info
            continue
        m = layer.search(name)
        if m and int(m.group(1)) >= layers:
            continue
        try:
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(f"{weights}: tensor {name!r} has no usable data_offsets")
        chunks.append(data[start:end])
        out_header[name] = dict(info, data_offsets=[offset, offset + end - start])
        offset += end - start
    text = json.dumps(out_header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    os.rename(tmp, dst)
    print(f"{dst}: the first {layers} of {depth} layers")


if __name__ == "__main__":
    main()
