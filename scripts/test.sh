#!/usr/bin/env bash
# The whole test suite: checks formatting, lints and the API docs' links (cargo fmt
# --check, clippy and rustdoc with warnings as errors), fetches the test checkpoint
# (cached), then runs every unit and integration test in release mode (the numeric tests
# need optimised code), then the Python package's: its crate's fmt and clippy, `pip install
# ./python` into a virtual environment (target/py-venv, made once with maturin, numpy,
# pandas and pytest from PyPI) and its pytest suite, which compares it with the CLI built
# by `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --quiet
scripts/fetch-test-model.sh
cargo test --release --locked "$@"

venv="$root/target/py-venv"
if [ ! -x "$venv/bin/pytest" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet maturin numpy pandas pytest
fi
# The Python crate shares target/ (same dependency versions and release profile), so only
# the corefocus library and the binding itself compile again.
export CARGO_TARGET_DIR="$root/target" PYO3_PYTHON="$venv/bin/python" PATH="$venv/bin:$PATH"
(cd python && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings)
cargo build --release --locked --bin corefocus
"$venv/bin/pip" install --quiet --no-build-isolation --force-reinstall --no-deps ./python
# From python/tests, not the repository root, so `import corefocus` is the installed package.
(cd python/tests && "$venv/bin/python" -m pytest -q -p no:cacheprovider .)
