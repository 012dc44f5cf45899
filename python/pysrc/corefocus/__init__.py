"""corefocus from Python: BERT document classifiers with fuzzy token pruning and token
combining, on the corefocus Rust engine.

    import corefocus
    clf = corefocus.Classifier.load("runs/pfc")
    labels, probs = clf.predict(["a text", "another"])

Everything runs in the Rust library (the code of the ``corefocus`` CLI): ``predict`` is
``corefocus predict``, ``explain`` is ``corefocus explain --json``, ``train`` is
``corefocus train`` with its keyword arguments passed as the CLI's flags. The GIL is
released while the engine computes. Failures raise :class:`CorefocusError` carrying the
CLI's ``error:`` message; flags the CLI's parser rejects raise ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _corefocus
from ._corefocus import CorefocusError, __version__

__all__ = ["Classifier", "CorefocusError", "train", "train_options", "__version__"]

#: ``predict``'s default batch size: the CLI's ``--eval-batch`` default.
DEFAULT_BATCH_SIZE = 64


def _texts(texts: Iterable[str]) -> List[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "texts must be a sequence of strings, not a single string; wrap it in a list"
        )
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    return out


class Classifier:
    """A fine-tuned corefocus checkpoint (a directory written by ``corefocus train``)."""

    def __init__(self, native: "_corefocus.NativeClassifier", path: Path):
        self._native = native
        self.path = path

    @classmethod
    def load(
        cls, path: Union[str, os.PathLike], max_len: Optional[int] = None, precision: str = "f32"
    ) -> "Classifier":
        """Loads the checkpoint in ``path``; ``max_len`` overrides its truncation length;
        ``precision`` "bf16" multiplies the linear layers in bf16 (needs Intel AMX or AVX512-BF16; as
        ``corefocus predict --precision bf16``), "int8" in int8 (needs AVX512-VNNI; as
        ``corefocus predict --precision int8``)."""
        native = _corefocus.NativeClassifier.load(os.fspath(path), max_len, precision)
        return cls(native, Path(path))

    @property
    def labels(self) -> List[str]:
        """Class names; column i of the probabilities is ``labels[i]``."""
        return self._native.labels

    @property
    def max_len(self) -> int:
        """Tokens per text ([CLS] and [SEP] included); longer texts are truncated."""
        return self._native.max_len

    @property
    def config(self) -> dict:
        """The checkpoint's ``corefocus.json``: labels, method settings, max_len, the
        training run's options."""
        return json.loads(self._native.config_json())

    def predict_proba(self, texts: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Class probabilities, a float32 array ``[len(texts), len(labels)]`` (the numbers
        ``corefocus predict`` prints)."""
        texts = _texts(texts)
        raw = self._native.probabilities(texts, int(batch_size))
        return np.frombuffer(raw, dtype=np.float32).reshape(len(texts), len(self.labels)).copy()

    def predict(
        self, texts: Iterable[str], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Tuple[List[str], np.ndarray]:
        """``(labels, probabilities)``: the most probable label of each text and the
        probabilities of :meth:`predict_proba`."""
        probs = self.predict_proba(texts, batch_size)
        names = self.labels
        return [names[i] for i in probs.argmax(axis=1)], probs

    def explain(self, text: str) -> dict:
        """What pruning and combining did with ``text``: ``corefocus explain --json``."""
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}, not str")
        return json.loads(self._native.explain_json(text))

    def __repr__(self) -> str:
        return f"corefocus.Classifier({str(self.path)!r}, labels={self.labels!r})"


# ----------------------------------------------------------------------------- training


def train_options() -> dict:
    """``corefocus train``'s options as keyword arguments of :func:`train`:
    ``{name: (default or None, help)}``, from the CLI's own parser."""
    out = {}
    for flag, _takes_value, defaults, help_text in _corefocus.train_flags():
        default = ",".join(defaults) if defaults else None
        out[flag.replace("-", "_")] = (default, help_text)
    return out


def _flag_args(options: dict) -> List[str]:
    """Keyword arguments as ``corefocus train`` flags: ``epochs=2`` -> ``--epochs 2``; a
    switch (``overwrite=True``) -> ``--overwrite``; lists comma-joined; None omitted."""
    flags = {f: takes_value for f, takes_value, _, _ in _corefocus.train_flags()}
    args: List[str] = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        if flag not in flags:
            raise TypeError(
                f"train() got an unexpected keyword argument {key!r} "
                f"(corefocus train has no --{flag}; see corefocus.train_options())"
            )
        if value is None:
            continue
        if not flags[flag]:
            if not isinstance(value, bool):
                raise TypeError(f"{key} is a switch: pass True or False, not {value!r}")
            if value:
                args.append(f"--{flag}")
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, os.PathLike):
            text = os.fspath(value)
        else:
            text = str(value)
        args += [f"--{flag}", text]
    return args


def _column_default(flag: str) -> str:
    for f, _, defaults, _ in _corefocus.train_flags():
        if f == flag:
            return defaults[0]
    raise KeyError(flag)


def _split_rows(split: Any, text_column: str, label_column: str) -> List[dict]:
    """One split given in memory as rows of JSON objects."""
    if hasattr(split, "to_dict") and hasattr(split, "columns"):  # a pandas DataFrame
        return split.to_dict(orient="records")
    if isinstance(split, tuple) and len(split) == 2:
        texts, labels = (list(x) for x in split)
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        return [{text_column: t, label_column: lab} for t, lab in zip(texts, labels)]
    raise TypeError(
        "a split must be a pandas DataFrame or a (texts, labels) tuple, "
        f"not {type(split).__name__}"
    )


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _write_dataset(data: Any, labels: Optional[Sequence[str]], text_column: str, label_column: str) -> Path:
    """Writes in-memory data as a JSON Lines dataset directory (train/dev/test.jsonl and,
    when ``labels`` is given, labels.txt) under the temporary directory. The directory is
    named by a hash of its content, so a ``resume=True`` run with the same data finds the
    same path (``--resume`` requires the same ``--data``)."""
    splits = data if isinstance(data, dict) else {"train": data}
    unknown = set(splits) - {"train", "dev", "validation", "valid", "test"}
    if unknown or "train" not in splits:
        raise ValueError(
            "in-memory data: give a DataFrame or (texts, labels) for training, or a dict "
            f"with 'train' and optionally 'dev' and 'test'; got keys {sorted(splits)}"
        )
    files = {}
    for name, split in splits.items():
        rows = _split_rows(split, text_column, label_column)
        lines = [
            json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False)
            for row in rows
        ]
        files[f"{name}.jsonl"] = ("\n".join(lines) + "\n").encode("utf-8")
    if labels is not None:
        files["labels.txt"] = "".join(f"{label}\n" for label in labels).encode("utf-8")
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    final = Path(tempfile.gettempdir()) / f"corefocus-data-{digest.hexdigest()[:20]}"
    if not final.is_dir():
        work = Path(tempfile.mkdtemp(prefix=".corefocus-data-", dir=final.parent))
        for name, content in files.items():
            (work / name).write_bytes(content)
        try:
            work.rename(final)
        except OSError:  # another process wrote the same content first
            shutil.rmtree(work, ignore_errors=True)
    return final


def train(
    model: Union[str, os.PathLike],
    data: Any,
    out: Union[str, os.PathLike],
    variant: str = "pfc",
    *,
    labels: Optional[Sequence[str]] = None,
    **options: Any,
) -> dict:
    """Fine-tunes a classifier: ``corefocus train --model MODEL --data DATA --out OUT
    --variant VARIANT`` plus ``options`` as flags (``epochs=2`` is ``--epochs 2``,
    ``lr=1e-4`` is ``--lr 1e-4``, ``overwrite=True`` is ``--overwrite``), with the CLI's
    defaults and checks; see :func:`train_options`.

    ``data`` is a dataset directory (as for the CLI) or in-memory data: a pandas
    DataFrame or a ``(texts, labels)`` tuple for the training split, or a dict of them
    with keys ``train`` and optionally ``dev`` and ``test`` (without ``dev``, the library
    holds out part of train, as the CLI does). ``labels`` fixes the label order of
    in-memory data (its labels.txt); otherwise the CLI's rule applies (sorted).

    Progress goes to standard error as the CLI's does. Ctrl-C stops after the current
    optimizer step, saves the resume state in ``OUT/resume`` (continue with the same
    arguments and ``resume=True``) and raises ``KeyboardInterrupt``; the best checkpoint
    so far stays intact. Returns the outcome: the learning rate, the best epoch and its
    validation loss, the test metrics (when there is a test split), the epoch records.
    """
    in_memory = not isinstance(data, (str, os.PathLike))
    if in_memory:
        text_column = options.get("text_column") or _column_default("text-column")
        label_column = options.get("label_column") or _column_default("label-column")
        data_dir = _write_dataset(data, labels, text_column, label_column)
    else:
        if labels is not None:
            raise TypeError("labels= is for in-memory data; a dataset directory has labels.txt")
        data_dir = Path(data)
    args = ["--model", os.fspath(model), "--data", os.fspath(data_dir), "--out", os.fspath(out)]
    args += ["--variant", str(variant)]
    args += _flag_args(options)
    outcome = json.loads(_corefocus.train(args))
    if in_memory:
        # Finished: nothing will resume from it.
        shutil.rmtree(data_dir, ignore_errors=True)
    return outcome
