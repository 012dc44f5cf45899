//! `corefocus._corefocus`: the native half of the Python package. Thin on purpose: every
//! call goes to the corefocus library (the code paths of `corefocus predict`, `explain`
//! and `train`); the Python half (pysrc/corefocus) only adapts arguments and results.
//!
//! Errors: a library error raises `corefocus.CorefocusError` whose message is the CLI's
//! `error:` line (`{:#}`, the whole context chain); a `train` flag clap rejects raises
//! `ValueError` with clap's message. The GIL is released while the library computes.

use corefocus::alloc::CountingAlloc;
use corefocus::bench::timed::TimedModel;
use corefocus::infer::{first_non_finite_row, is_blank, Classifier, BLANK_TEXT};
use corefocus::kernels::matmul::Precision;
use corefocus::train::{
    clear_stop_request, is_stopped_on_request, request_stop, run_train, TrainCommand, TrainOutcome,
};
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// The binary's allocator (for the Rust side of the module): tensors start on a cache
/// line, which the products and elementwise kernels are faster with (src/alloc.rs).
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

pyo3::create_exception!(
    corefocus,
    CorefocusError,
    PyRuntimeError,
    "A corefocus failure; the message is what the CLI prints after `error:`."
);

fn py_err(e: anyhow::Error) -> PyErr {
    CorefocusError::new_err(format!("{e:#}"))
}

/// A loaded checkpoint (`corefocus.Classifier` wraps it).
#[pyclass(module = "corefocus._corefocus", frozen)]
struct NativeClassifier {
    inner: Classifier,
}

/// "f32", "bf16" or "int8" (else ValueError).
fn parse_precision(s: &str) -> PyResult<Precision> {
    s.parse()
        .map_err(|e: String| pyo3::exceptions::PyValueError::new_err(e))
}

#[pymethods]
impl NativeClassifier {
    /// Loads a `corefocus train` checkpoint; `max_len` overrides its truncation length;
    /// the linear layers multiply at `precision` ("f32", "bf16" or "int8").
    #[staticmethod]
    #[pyo3(signature = (path, max_len=None, precision="f32"))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        max_len: Option<usize>,
        precision: &str,
    ) -> PyResult<Self> {
        let precision = parse_precision(precision)?;
        let inner = py
            .allow_threads(|| Classifier::load_with(&path, max_len, precision))
            .map_err(py_err)?;
        Ok(NativeClassifier { inner })
    }

    #[getter]
    fn labels(&self) -> Vec<String> {
        self.inner.labels().to_vec()
    }

    #[getter]
    fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// The checkpoint's `corefocus.json` (labels, method, max_len, training options), as JSON.
    fn config_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.meta).map_err(|e| py_err(e.into()))
    }

    /// Class probabilities of `texts`, `[n, classes]` row-major native-endian f32 bytes:
    /// `corefocus predict`'s computation (`Classifier::probabilities`), batch size
    /// `batch_size` (its `--eval-batch`).
    fn probabilities<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        batch_size: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let classifier = &self.inner;
        let probs = py.allow_threads(|| {
            // As `predict`, `serve` and `explain`: no label for an empty text.
            if let Some(i) = texts.iter().position(|t| is_blank(t)) {
                anyhow::bail!("texts[{i}]: {BLANK_TEXT}");
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let probs = classifier.probabilities(&refs, batch_size)?;
            if let Some(row) = first_non_finite_row(&probs, classifier.labels().len()) {
                anyhow::bail!(
                    "text {row}: the model's output is not finite (NaN or infinity); no \
                     prediction is returned for it (is the checkpoint damaged?)"
                );
            }
            Ok(probs)
        });
        let probs = probs.map_err(py_err)?;
        let bytes: Vec<u8> = probs.iter().flat_map(|p| p.to_ne_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// `corefocus explain --json` for one text, as a JSON string.
    fn explain_json(&self, py: Python<'_>, text: String) -> PyResult<String> {
        let c = &self.inner;
        py.allow_threads(|| {
            if text.trim().is_empty() {
                anyhow::bail!("the text to explain: {BLANK_TEXT}");
            }
            let e = corefocus::explain::explain_text(
                &c.model,
                &c.tokenizer,
                c.labels(),
                c.max_len,
                &text,
            )?;
            Ok(serde_json::to_string(&e.to_json())?)
        })
        .map_err(py_err)
    }
}

/// `corefocus train`'s flags: (name without `--`, takes a value, default values, help),
/// from the CLI's own parser definition.
#[pyfunction]
fn train_flags() -> Vec<(String, bool, Vec<String>, String)> {
    use clap::CommandFactory;
    TrainCommand::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?.to_string();
            let takes_value = arg.get_action().takes_values();
            let defaults = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().to_string())
                .collect();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            Some((long, takes_value, defaults, help))
        })
        .collect()
}

/// `corefocus train` with `args` as its command-line flags (`["--model", "m", ...]`),
/// parsed by the CLI's parser. Runs on a worker thread with the GIL released; a Ctrl-C
/// (SIGINT) in the meantime asks the loop to stop after its current step, saving the
/// resume state, and then raises `KeyboardInterrupt`. Returns the outcome as JSON.
#[pyfunction]
fn train(py: Python<'_>, args: Vec<String>) -> PyResult<String> {
    let opts =
        TrainCommand::parse_flags(&args).map_err(|e| PyValueError::new_err(clap_message(&e)))?;
    clear_stop_request();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("corefocus-train".into())
        .spawn(move || {
            let result = run_train(&opts).map(|outcome| outcome_json(&opts.out, &outcome));
            // The receiver only goes away if this function unwound; nothing to report then.
            let _ = tx.send(result);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the training thread: {e}")))?;
    let mut interrupt: Option<PyErr> = None;
    let mut rx = rx;
    let result = loop {
        // (The receiver is Send, not Sync: it moves to the GIL-free closure and back.)
        let (received, back) = py.allow_threads(move || {
            let received = rx.recv_timeout(Duration::from_millis(100));
            (received, rx)
        });
        rx = back;
        match received {
            Ok(result) => break Some(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if interrupt.is_none() {
                    if let Err(e) = py.check_signals() {
                        request_stop();
                        interrupt = Some(e);
                    }
                }
            }
        }
    };
    let panicked = py.allow_threads(|| worker.join()).is_err();
    clear_stop_request();
    match (result, interrupt) {
        (Some(Err(e)), Some(_)) if is_stopped_on_request(&e) => {
            Err(PyKeyboardInterrupt::new_err(format!("{e:#}")))
        }
        // A signal handler's own exception (or a Ctrl-C after the last step) wins.
        (_, Some(signal)) => Err(signal),
        (Some(Ok(json)), None) => json.map_err(|e| py_err(e.into())),
        (Some(Err(e)), None) => Err(py_err(e)),
        (None, None) => Err(PyRuntimeError::new_err(if panicked {
            "corefocus train panicked (see the message above)"
        } else {
            "corefocus train ended without a result"
        })),
    }
}

/// clap's message without its `error: ` prefix and usage/help footer.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let body = rendered.split("\n\n").next().unwrap_or(&rendered).trim();
    body.strip_prefix("error: ").unwrap_or(body).to_string()
}

fn outcome_json(out: &std::path::Path, o: &TrainOutcome) -> serde_json::Result<String> {
    let test = o.test.map(|(loss, accuracy, macro_f1)| {
        serde_json::json!({"loss": loss, "accuracy": accuracy, "macro_f1": macro_f1})
    });
    serde_json::to_string(&serde_json::json!({
        "out": out,
        "lr": o.lr,
        "best_epoch": o.best_epoch,
        "best_val_loss": o.best_val_loss,
        "test": test,
        "epochs": o.records,
    }))
}

/// A backbone checkpoint as a variant with a fresh head, for timing against other
/// engines in one process (`scripts/bench-peers.py`): `corefocus bench`'s forward pass
/// and training step on given token ids.
#[pyclass(module = "corefocus._corefocus")]
struct NativeTimedModel {
    inner: TimedModel,
}

#[pymethods]
impl NativeTimedModel {
    /// The HF-format BERT checkpoint in `model_dir` as `variant` (`bench --variant`'s
    /// grammar: bert, pf, pfc@5, ...) with a `num_labels`-class head; forward passes
    /// (and, for f32 and bf16, training steps) multiply at `precision` ("f32", "bf16" or
    /// "int8").
    #[staticmethod]
    #[pyo3(signature = (model_dir, variant, num_labels, precision="f32"))]
    fn load(
        py: Python<'_>,
        model_dir: PathBuf,
        variant: String,
        num_labels: usize,
        precision: &str,
    ) -> PyResult<Self> {
        let precision = parse_precision(precision)?;
        let inner = py
            .allow_threads(|| TimedModel::load(&model_dir, &variant, num_labels, precision))
            .map_err(py_err)?;
        Ok(NativeTimedModel { inner })
    }

    /// Evaluation-mode logits of token-id sequences (padded with id 0), `[batch, labels]`
    /// row-major native-endian f32 bytes.
    fn forward<'py>(&self, py: Python<'py>, ids: Vec<Vec<u32>>) -> PyResult<Bound<'py, PyBytes>> {
        let logits = py
            .allow_threads(|| self.inner.forward(&ids))
            .map_err(py_err)?;
        let bytes: Vec<u8> = logits.iter().flat_map(|p| p.to_ne_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// One AdamW training step on `ids` with classes `labels`, the linear layers at the
    /// model's precision (f32 or bf16; int8 models do not train); returns the loss.
    fn train_step(
        &mut self,
        py: Python<'_>,
        ids: Vec<Vec<u32>>,
        labels: Vec<usize>,
    ) -> PyResult<f32> {
        let inner = &mut self.inner;
        py.allow_threads(|| inner.train_step(&ids, &labels))
            .map_err(py_err)
    }
}

/// Whether the engine's pool threads run pinned one per CPU (decided at the first model
/// pass; see `corefocus::kernels::affinity`).
#[pyfunction]
fn threads_pinned() -> bool {
    corefocus::kernels::affinity::pool_threads_pinned()
}

#[pymodule]
fn _corefocus(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CorefocusError", m.py().get_type::<CorefocusError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<NativeClassifier>()?;
    m.add_class::<NativeTimedModel>()?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(train_flags, m)?)?;
    m.add_function(wrap_pyfunction!(threads_pinned, m)?)?;
    Ok(())
}
