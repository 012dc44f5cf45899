"""Fixtures of the Python package's tests: the test checkpoint (all-MiniLM-L6-v2, fetched
by scripts/fetch-test-model.sh), the CLI binary (built by `cargo build --release`), a toy
two-class dataset, and one small pfc classifier trained through `corefocus.train`."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _must_exist(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how}")  # fail loudly, never skip
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = Path(os.environ.get("COREFOCUS_TEST_MODEL", REPO / "target/models/all-MiniLM-L6-v2"))
    return _must_exist(path / "model.safetensors", "run scripts/fetch-test-model.sh").parent


@pytest.fixture(scope="session")
def cli() -> Path:
    path = Path(os.environ.get("COREFOCUS_BIN", REPO / "target/release/corefocus"))
    return _must_exist(path, "run cargo build --release (or set COREFOCUS_BIN)")


def run_cli(cli: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cli), *args], input=stdin, capture_output=True, text=True, timeout=600
    )


def toy_rows(n: int):
    """n rows of a two-class toy task: texts with positive or negative words."""
    pos = ["good", "great", "fine", "nice"]
    neg = ["bad", "awful", "poor", "dull"]
    rows = []
    for i in range(n):
        words, label = (pos, "pos") if i % 2 == 0 else (neg, "neg")
        rows.append({"text": f"the film was {words[i % 4]} and {words[(i + 1) % 4]}", "label": label})
    return rows


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


#: The options of the small training runs: quick, fixed learning rate (no --lr auto).
QUICK = dict(epochs=1, batch_size=8, max_len=32, lr=1e-4, eval_batch=16)


@pytest.fixture(scope="session")
def trained(model_dir, tmp_path_factory):
    """A pfc classifier trained from a pandas DataFrame: (checkpoint dir, outcome)."""
    import pandas as pd

    import corefocus

    rows = toy_rows(40)
    frames = {
        "train": pd.DataFrame(rows[:24]),
        "dev": pd.DataFrame(rows[24:32]),
        "test": pd.DataFrame(rows[32:]),
    }
    out = tmp_path_factory.mktemp("run") / "pfc"
    outcome = corefocus.train(model=model_dir, data=frames, out=out, variant="pfc", **QUICK)
    return out, outcome
