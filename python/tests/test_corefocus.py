"""The Python package: load, predict (equal to `corefocus predict`), explain, train from
in-memory data, Ctrl-C, and the exceptions bad input raises."""

import json
import os
import signal
import threading

import numpy as np
import pytest

import corefocus
from conftest import QUICK, run_cli, toy_rows, write_jsonl

TEXTS = [
    "the film was good and great",
    "the film was awful and dull",
    "a long text " * 40,  # truncated at max_len
    "nice",
    "Ünïcödé text — with punctuation!?",
]


def test_train_from_a_dataframe_writes_a_checkpoint(trained):
    out, outcome = trained
    assert (out / "corefocus.json").is_file()
    assert (out / "metrics.jsonl").is_file()
    assert outcome["best_epoch"] == 1 and outcome["lr"] == pytest.approx(1e-4)
    assert set(outcome["test"]) == {"loss", "accuracy", "macro_f1"}
    assert len(outcome["epochs"]) == 1 and np.isfinite(outcome["best_val_loss"])
    assert not (out / "resume").exists()


def test_load_labels_and_config(trained):
    clf = corefocus.Classifier.load(trained[0])
    assert clf.labels == ["neg", "pos"]  # the CLI's rule without labels.txt: sorted
    assert clf.max_len == 32
    config = clf.config
    assert config["labels"] == clf.labels and config["max_len"] == 32
    assert config["method"]["variant"].lower() == "pfc"
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 8


def test_predict_equals_the_cli(trained, cli, tmp_path):
    out = trained[0]
    clf = corefocus.Classifier.load(out)
    labels, probs = clf.predict(TEXTS, batch_size=4)
    assert probs.shape == (len(TEXTS), 2) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs, clf.predict_proba(TEXTS))

    path = tmp_path / "texts.txt"
    path.write_text("".join(t + "\n" for t in TEXTS))
    result = run_cli(cli, "predict", "--checkpoint", str(out), "--eval-batch", "4", str(path))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["label"] for line in lines] == labels
    cli_probs = np.array([[line["probabilities"][k] for k in clf.labels] for line in lines])
    np.testing.assert_allclose(probs, cli_probs, rtol=0, atol=1e-6)


def test_explain_is_the_cli_json(trained, cli):
    out = trained[0]
    clf = corefocus.Classifier.load(out)
    text = "the film was good and great"
    explanation = clf.explain(text)
    result = run_cli(cli, "explain", "--checkpoint", str(out), "--json", "--text", text)
    assert result.returncode == 0, result.stderr
    assert explanation == json.loads(result.stdout)
    assert explanation["prediction"]["label"] == clf.predict([text])[0][0]


def cli_error(result) -> str:
    """The message of the CLI's `error:` line."""
    assert result.returncode != 0
    line = [l for l in result.stderr.splitlines() if l.startswith("error: ")][0]
    return line[len("error: "):]


def test_errors_carry_the_cli_messages(trained, cli, model_dir, tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(corefocus.CorefocusError) as e:
        corefocus.Classifier.load(missing)
    assert str(e.value) == cli_error(run_cli(cli, "predict", "--checkpoint", str(missing)))
    assert isinstance(e.value, RuntimeError)

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", toy_rows(8))
    flags = ["--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "o")]
    with pytest.raises(corefocus.CorefocusError) as e:
        corefocus.train(model_dir, data, tmp_path / "o", variant="bert", warmup=2)
    assert str(e.value) == cli_error(run_cli(cli, "train", *flags, "--warmup", "2"))
    assert "--warmup 2 must be in [0, 1]" in str(e.value)
    with pytest.raises(corefocus.CorefocusError, match="applies only to variants"):
        corefocus.train(model_dir, data, tmp_path / "o", variant="bert", keep_ratio=0.5)


def test_bad_arguments_raise_value_and_type_errors(trained, model_dir, tmp_path):
    clf = corefocus.Classifier.load(trained[0])
    with pytest.raises(TypeError, match="single string"):
        clf.predict("one text")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        clf.predict(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        clf.predict(["ok"], batch_size=0)
    with pytest.raises(ValueError, match="unknown precision `f16`"):
        corefocus.Classifier.load(trained[0], precision="f16")
    with pytest.raises(corefocus.CorefocusError, match="empty"):
        clf.explain("   ")
    # One behaviour for empty input, as the CLI's predict (I08), serve and explain.
    with pytest.raises(corefocus.CorefocusError, match=r"texts\[1\]: empty or whitespace-only"):
        clf.predict(["ok", "  "])
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="--epochs"):
        corefocus.train(model_dir, tmp_path, out, epochs="many")
    with pytest.raises(ValueError, match="unknown|invalid"):
        corefocus.train(model_dir, tmp_path, out, variant="xyz")
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        corefocus.train(model_dir, tmp_path, out, epoch=2)
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        corefocus.train(model_dir, (["a", "b", "c"], ["x", "y"]), out)
    assert not out.exists()


def test_lists_and_labels_and_ctrl_c_stops_with_a_resume_state(model_dir, tmp_path):
    rows = toy_rows(24)
    data = ([r["text"] for r in rows], [r["label"] for r in rows])
    out = tmp_path / "long"
    # Python turns SIGINT into KeyboardInterrupt only where it installed its handler, which
    # it does not when the process starts with SIGINT ignored, as every job started with `&`
    # from a script does (CI, `nohup`): the signal would then be dropped and the 1000
    # epochs run to the end. So the test installs the handler a terminal gives Python.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as e:
            corefocus.train(
                model_dir, data, out, variant="pf", labels=["pos", "neg"],
                **{**QUICK, "epochs": 1000},
            )
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert "interrupted after optimizer step" in str(e.value)
    assert "continue with --resume" in str(e.value)
    assert (out / "resume").is_dir()


def test_the_gil_is_released_while_predicting(trained):
    import time

    clf = corefocus.Classifier.load(trained[0])
    texts = ["the film was good and great and fine " * 3] * 150
    done = threading.Event()
    worker = threading.Thread(target=lambda: (clf.predict_proba(texts), done.set()))
    ticks = 0
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.002)
    worker.join()
    seconds = time.perf_counter() - start
    # With the GIL held for the whole call this thread could not run at all meanwhile.
    assert ticks >= min(10, seconds / 0.004), (ticks, seconds)
