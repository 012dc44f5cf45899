//! `corefocus serve`: an HTTP JSON API over a checkpoint, with dynamic batching.
//!
//! Endpoints: `POST /v1/classify` (`{"texts": [...]}` or `{"text": "..."}`, optional
//! `"explain": true`), `GET /healthz`, `GET /v1/model`. Every error is JSON,
//! `{"error": "..."}`, with status 400 (malformed request, or an empty text), 404/405,
//! 408 (body slower than `--body-timeout-ms`), 413 (body or text count over the limits),
//! 429 (queue full), 500 or 503 (shutting down, or over `--max-connections`).
//!
//! Connections (`conn`): at most `--max-connections` open; a request's headers must
//! arrive within `--header-timeout-ms`, a keep-alive connection idle for
//! `--idle-timeout-ms` is closed.
//!
//! Inference runs on ONE dedicated thread (the engine parallelises with rayon; tokio's
//! worker threads only parse, queue and answer). Requests wait in a bounded queue; the
//! inference thread takes the first waiting request, then every request that arrives
//! within `--batch-wait-ms` or is already waiting, up to `--max-batch` texts, and runs them
//! as one batched forward pass through the path `predict` uses
//! ([`Classifier::probabilities`]). SIGINT/SIGTERM stop accepting connections, let the
//! queued and in-flight requests finish, and exit with status 0.

mod conn;
pub mod loadgen;

use crate::explain::explain_text;
use crate::infer::{argmax, is_blank, Classifier, LabelProbabilities, BLANK_TEXT};
use crate::kernels::matmul::Precision;
use anyhow::{bail, ensure, Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// `corefocus serve` options.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// A checkpoint directory written by `corefocus train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Address to listen on; port 0 picks a free port. The first line on standard output
    /// is `listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Most texts per forward pass (dynamic batching across requests).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// How long the inference thread waits for more requests to fill a batch.
    #[arg(long, default_value_t = 2)]
    pub batch_wait_ms: u64,
    /// Most texts in one request (more: 413).
    #[arg(long, default_value_t = 64)]
    pub max_texts_per_request: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most requests waiting for the inference thread (more: 429).
    #[arg(long, default_value_t = 256)]
    pub queue_limit: usize,
    /// Truncation length in tokens [default: the checkpoint's max_len].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Arithmetic of the linear layers' products: f32; bf16 (operands rounded to bf16,
    /// sums in f32; needs Intel AMX or AVX512-BF16); or int8 (weights per column and
    /// activations per row quantised to int8, exact integer sums; needs AVX512-VNNI):
    /// faster, less exact (docs/results.md measures each).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Most open connections; one more is answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// A request's headers must be complete this long after the connection opened or the
    /// request's first byte arrived; a slower client is disconnected without an answer.
    #[arg(long, default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// A request's body must be complete this long after its headers (slower: 408 and the
    /// connection is closed).
    #[arg(long, default_value_t = 30_000)]
    pub body_timeout_ms: u64,
    /// A keep-alive connection idle this long between requests is closed.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
}

/// The longest any of the `--*-timeout-ms` settings may be (an hour).
const MAX_TIMEOUT_MS: u64 = 3_600_000;

impl ServeArgs {
    fn validate(&self) -> Result<()> {
        ensure!(self.max_batch >= 1, "--max-batch must be at least 1");
        ensure!(
            self.max_texts_per_request >= 1,
            "--max-texts-per-request must be at least 1"
        );
        ensure!(self.queue_limit >= 1, "--queue-limit must be at least 1");
        ensure!(
            self.max_body_bytes >= 64,
            "--max-body-bytes {} is too small (at least 64)",
            self.max_body_bytes
        );
        ensure!(
            self.batch_wait_ms <= 10_000,
            "--batch-wait-ms {} is too long (at most 10000)",
            self.batch_wait_ms
        );
        ensure!(
            (1..=1_000_000).contains(&self.max_connections),
            "--max-connections must be at least 1 (and at most 1000000)"
        );
        for (flag, ms) in [
            ("--header-timeout-ms", self.header_timeout_ms),
            ("--body-timeout-ms", self.body_timeout_ms),
            ("--idle-timeout-ms", self.idle_timeout_ms),
        ] {
            ensure!(
                (1..=MAX_TIMEOUT_MS).contains(&ms),
                "{flag} {ms} is out of range: give 1 to {MAX_TIMEOUT_MS} milliseconds"
            );
        }
        Ok(())
    }
}

// --------------------------------------------------------------------- the classifier

/// The answer for one text.
#[derive(Clone, Debug)]
pub struct TextResult {
    pub label_id: usize,
    /// Every label's probability, in the checkpoint's label order.
    pub probabilities: Vec<f32>,
    /// With `explain`: the tokens used as keys/values in the last layer that ran on the
    /// document's tokens (all tokens without pruning), in document order.
    pub kept_tokens: Option<Vec<String>>,
}

/// Classifies `texts` in batches of `batch_size` (the `predict` path); for the texts
/// whose `explain` flag is set, also runs the traced forward pass of `explain` to list the
/// kept tokens.
pub fn classify_batch(
    classifier: &Classifier,
    texts: &[&str],
    explain: &[bool],
    batch_size: usize,
) -> Result<Vec<TextResult>> {
    assert_eq!(texts.len(), explain.len(), "one explain flag per text");
    let classes = classifier.labels().len();
    let probs = classifier.probabilities(texts, batch_size)?;
    if let Some(i) = crate::infer::first_non_finite_row(&probs, classes) {
        bail!(
            "the model's output for text {i} of the batch is not finite (NaN or infinity); \
             is the checkpoint damaged?"
        );
    }
    let mut results = Vec::with_capacity(texts.len());
    for (i, row) in probs.chunks(classes).enumerate() {
        let kept_tokens = if explain[i] {
            let e = explain_text(
                &classifier.model,
                &classifier.tokenizer,
                classifier.labels(),
                classifier.max_len,
                texts[i],
            )?;
            let last = e.layers.len();
            Some(
                e.tokens
                    .into_iter()
                    .filter(|t| last == 0 || t.last_kept_layer == last)
                    .map(|t| t.text)
                    .collect(),
            )
        } else {
            None
        };
        results.push(TextResult {
            label_id: argmax(row),
            probabilities: row.to_vec(),
            kept_tokens,
        });
    }
    Ok(results)
}

// ------------------------------------------------------------- queue and inference thread

/// One request's texts on their way to the inference thread.
struct Job {
    texts: Vec<String>,
    explain: bool,
    reply: oneshot::Sender<std::result::Result<Vec<TextResult>, String>>,
}

/// Batching settings of the inference thread.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    pub max_batch: usize,
    pub batch_wait: Duration,
}

/// Counters shared by the handlers and the inference thread.
#[derive(Default)]
struct Stats {
    /// Requests in the queue (sent, not yet taken by the inference thread).
    queued: AtomicUsize,
    requests: AtomicU64,
    texts: AtomicU64,
    batches: AtomicU64,
}

/// Collects the next batch: blocks for a first job, then takes jobs that arrive within
/// the wait or are already queued while the texts fit in `max_batch`. A job that would
/// overflow the batch is carried over to the next one. None once the queue is closed
/// and empty.
fn next_batch(
    rx: &Receiver<Job>,
    carry: &mut Option<Job>,
    settings: BatchSettings,
    stats: &Stats,
) -> Option<Vec<Job>> {
    let first = match carry.take() {
        Some(job) => job,
        None => {
            let job = rx.recv().ok()?;
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            job
        }
    };
    let mut count = first.texts.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + settings.batch_wait;
    while count < settings.max_batch {
        let now = Instant::now();
        let next = if now >= deadline {
            rx.try_recv().ok()
        } else {
            match rx.recv_timeout(deadline - now) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => rx.try_recv().ok(),
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        let Some(job) = next else { break };
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        if count + job.texts.len() > settings.max_batch {
            *carry = Some(job);
            break;
        }
        count += job.texts.len();
        jobs.push(job);
    }
    Some(jobs)
}

/// The inference thread: batches until the queue closes, answering every job.
fn inference_loop(
    classifier: Arc<Classifier>,
    rx: Receiver<Job>,
    settings: BatchSettings,
    stats: Arc<Stats>,
) {
    let mut carry = None;
    while let Some(jobs) = next_batch(&rx, &mut carry, settings, &stats) {
        // Skip requests whose client has gone away.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs
            .iter()
            .flat_map(|j| j.texts.iter().map(String::as_str))
            .collect();
        let explain: Vec<bool> = jobs
            .iter()
            .flat_map(|j| std::iter::repeat_n(j.explain, j.texts.len()))
            .collect();
        // A panic here is a bug; answer 500 and keep serving rather than hang every client.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            classify_batch(&classifier, &texts, &explain, settings.max_batch)
        }));
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.texts.fetch_add(texts.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok(Ok(results)) => {
                let mut results = results.into_iter();
                for job in jobs {
                    let mine: Vec<TextResult> = results.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Ok(Err(e)) => {
                let message = format!("inference failed: {e:#}");
                for job in jobs {
                    let _ = job.reply.send(Err(message.clone()));
                }
            }
            Err(_) => {
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err("inference panicked (a bug)".to_string()));
                }
            }
        }
    }
}

// ------------------------------------------------------------------------ HTTP layer

struct AppState {
    classifier: Arc<Classifier>,
    /// Taken (closed) at shutdown, after the last connection has finished.
    queue: Mutex<Option<SyncSender<Job>>>,
    stats: Arc<Stats>,
    /// Name reported as `model`: the checkpoint directory's name.
    model_name: String,
    /// The `GET /v1/model` body.
    model_info: Bytes,
    max_texts_per_request: usize,
    max_body_bytes: usize,
    /// How long a request's body may take to arrive once its headers are in.
    body_timeout: Duration,
}

/// A JSON error response: `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyRequest {
    #[serde(default)]
    texts: Option<Vec<String>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    explain: bool,
}

/// The `POST /v1/classify` answer.
#[derive(Serialize)]
struct ClassifyResponse<'a> {
    results: Vec<ResultView<'a>>,
    model: &'a str,
}

/// One result in the response, labels by name, probabilities in label order.
struct ResultView<'a> {
    labels: &'a [String],
    result: &'a TextResult,
}

impl Serialize for ResultView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let r = self.result;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("label", &self.labels[r.label_id])?;
        map.serialize_entry("label_id", &r.label_id)?;
        map.serialize_entry(
            "probabilities",
            &LabelProbabilities(self.labels, &r.probabilities),
        )?;
        if let Some(kept) = &r.kept_tokens {
            map.serialize_entry("kept_tokens", kept)?;
        }
        map.end()
    }
}

async fn classify(State(state): State<Arc<AppState>>, request: Request) -> Response {
    // The body must arrive within --body-timeout-ms of the headers; a client that stalls
    // mid-body gets 408 and the connection is closed (its remaining bytes are unread).
    let body =
        match tokio::time::timeout(state.body_timeout, Bytes::from_request(request, &())).await {
            Ok(body) => body,
            Err(_) => {
                let mut response = error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} ms (--body-timeout-ms)",
                        state.body_timeout.as_millis()
                    ),
                );
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                return response;
            }
        };
    let (texts, explain) = match read_request(&state, body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let count = texts.len();
    let (reply, answer) = oneshot::channel();
    let job = Job {
        texts,
        explain,
        reply,
    };
    if let Err(response) = enqueue(&state, job) {
        return response;
    }
    match answer.await {
        Ok(Ok(results)) => {
            state.stats.requests.fetch_add(1, Ordering::Relaxed);
            debug_assert_eq!(results.len(), count);
            let labels = state.classifier.labels();
            let views: Vec<ResultView> = results
                .iter()
                .map(|result| ResultView { labels, result })
                .collect();
            // Serialised directly (not through `Value`): probabilities print as f32,
            // fields in the documented order.
            Json(ClassifyResponse {
                results: views,
                model: &state.model_name,
            })
            .into_response()
        }
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the inference thread stopped before answering",
        ),
    }
}

/// The texts of a classify request and its `explain` flag, or the error response.
#[allow(clippy::result_large_err)]
fn read_request(
    state: &AppState,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<(Vec<String>, bool), Response> {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body too large: the limit is {} bytes (--max-body-bytes)",
                    state.max_body_bytes
                ),
            ))
        }
        Err(rejection) => {
            return Err(error(
                rejection.status(),
                format!("cannot read the request body: {}", rejection.body_text()),
            ))
        }
    };
    let request: ClassifyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let what = match e.classify() {
                serde_json::error::Category::Data => "invalid request",
                _ => "malformed JSON",
            };
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{what}: {e}; expected {{\"texts\": [\"...\"]}} or {{\"text\": \"...\"}}, \
                     optionally with \"explain\": true"
                ),
            ));
        }
    };
    let (texts, single) = match (request.texts, request.text) {
        (Some(texts), None) => (texts, false),
        (None, Some(text)) => (vec![text], true),
        (Some(_), Some(_)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "give either \"texts\" (a list) or \"text\", not both",
            ))
        }
        (None, None) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "missing field \"texts\" (a list of strings) or \"text\" (a string)",
            ))
        }
    };
    if texts.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "\"texts\" is empty: give at least one text",
        ));
    }
    if texts.len() > state.max_texts_per_request {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts in one request; the limit is {} (--max-texts-per-request)",
                texts.len(),
                state.max_texts_per_request
            ),
        ));
    }
    if let Some(i) = texts.iter().position(|t| is_blank(t)) {
        let which = if single {
            "\"text\"".to_string()
        } else {
            format!("\"texts\"[{i}]")
        };
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{which}: {BLANK_TEXT}"),
        ));
    }
    Ok((texts, request.explain))
}

/// Queues `job` for the inference thread, or answers 429 (queue full) / 503 (shutting down).
#[allow(clippy::result_large_err)]
fn enqueue(state: &AppState, job: Job) -> std::result::Result<(), Response> {
    let sent = {
        let queue = state.queue.lock().unwrap_or_else(|e| e.into_inner());
        match queue.as_ref() {
            Some(tx) => {
                // Count before sending: the inference thread decrements on receipt.
                state.stats.queued.fetch_add(1, Ordering::Relaxed);
                let r = tx.try_send(job);
                if r.is_err() {
                    state.stats.queued.fetch_sub(1, Ordering::Relaxed);
                }
                r
            }
            None => Err(TrySendError::Disconnected(job)),
        }
    };
    match sent {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "the request queue is full (--queue-limit); retry shortly",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            Err(response)
        }
        Err(TrySendError::Disconnected(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.stats;
    Json(serde_json::json!({
        "status": "ok",
        "queued": s.queued.load(Ordering::Relaxed),
        "requests": s.requests.load(Ordering::Relaxed),
        "texts": s.texts.load(Ordering::Relaxed),
        "batches": s.batches.load(Ordering::Relaxed),
    }))
    .into_response()
}

async fn model_info(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.model_info.clone(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; try POST /v1/classify, GET /v1/model or GET /healthz",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: /v1/classify takes POST, /v1/model and /healthz take GET",
    )
}

/// Server limits, as `GET /v1/model` reports them.
#[derive(Serialize)]
struct Limits {
    max_batch: usize,
    batch_wait_ms: u64,
    max_texts_per_request: usize,
    max_body_bytes: usize,
    queue_limit: usize,
    max_connections: usize,
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    idle_timeout_ms: u64,
}

/// What `GET /v1/model` answers: the checkpoint's name, its labels and settings, the limits.
#[derive(Serialize)]
struct ModelInfo<'a> {
    /// The checkpoint directory's name only: the absolute path is no client's business.
    model: &'a str,
    labels: &'a [String],
    variant: &'static str,
    method: &'a crate::model::MethodConfig,
    max_len: usize,
    num_layers: usize,
    hidden_size: usize,
    /// Of the linear layers' products (`--precision`).
    precision: Precision,
    corefocus_version: &'static str,
    limits: Limits,
}

/// The `GET /v1/model` body, serialised once (directly, so f32 settings print as f32).
fn describe(c: &Classifier, name: &str, args: &ServeArgs) -> Result<Bytes> {
    let info = ModelInfo {
        model: name,
        labels: &c.meta.labels,
        variant: c.meta.method.variant.name(),
        method: &c.meta.method,
        max_len: c.max_len,
        num_layers: c.model.bert.num_hidden_layers,
        hidden_size: c.model.bert.hidden_size,
        precision: args.precision,
        corefocus_version: env!("CARGO_PKG_VERSION"),
        limits: Limits {
            max_batch: args.max_batch,
            batch_wait_ms: args.batch_wait_ms,
            max_texts_per_request: args.max_texts_per_request,
            max_body_bytes: args.max_body_bytes,
            queue_limit: args.queue_limit,
            max_connections: args.max_connections,
            header_timeout_ms: args.header_timeout_ms,
            body_timeout_ms: args.body_timeout_ms,
            idle_timeout_ms: args.idle_timeout_ms,
        },
    };
    Ok(Bytes::from(serde_json::to_vec(&info)?))
}

/// The router over a shared state (the tests of this module drive it directly).
fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// How long shutdown waits for requests in flight after the signal (connections without
/// one are closed at once; a stalled body ends at --body-timeout-ms).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `corefocus serve`: loads the checkpoint, prints `listening on http://ADDR`, serves
/// until SIGINT/SIGTERM, then drains the queue and returns.
pub fn run_serve(args: &ServeArgs) -> Result<()> {
    args.validate()?;
    let classifier = Arc::new(Classifier::load_with(
        &args.checkpoint,
        args.max_len,
        args.precision,
    )?);
    let checkpoint = std::fs::canonicalize(&args.checkpoint).unwrap_or(args.checkpoint.clone());
    let model_name = checkpoint
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| checkpoint.display().to_string());
    let model_info = describe(&classifier, &model_name, args)?;

    let stats = Arc::new(Stats::default());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(args.queue_limit);
    let settings = BatchSettings {
        max_batch: args.max_batch,
        batch_wait: Duration::from_millis(args.batch_wait_ms),
    };
    let worker = {
        let (classifier, stats) = (classifier.clone(), stats.clone());
        std::thread::Builder::new()
            .name("corefocus-inference".into())
            .spawn(move || inference_loop(classifier, rx, settings, stats))
            .context("cannot start the inference thread")?
    };
    let state = Arc::new(AppState {
        classifier: classifier.clone(),
        queue: Mutex::new(Some(tx)),
        stats,
        model_name,
        model_info,
        max_texts_per_request: args.max_texts_per_request,
        max_body_bytes: args.max_body_bytes,
        body_timeout: Duration::from_millis(args.body_timeout_ms),
    });

    // Two I/O threads are plenty: the handlers only parse, queue and serialise.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("corefocus-http")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.addr)
            .await
            .with_context(|| format!("--addr {}: cannot listen", args.addr))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("--addr {}", args.addr))?;
        // The first stdout line, which scripts and tests read for the port.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{local}")?;
            out.flush()?;
        }
        eprintln!(
            "corefocus serve: checkpoint {} ({} variant, {} labels, max_len {}); max batch {}, \
             queue limit {}; SIGINT/SIGTERM stops",
            checkpoint.display(),
            classifier.meta.method.variant.name(),
            classifier.labels().len(),
            classifier.max_len,
            args.max_batch,
            args.queue_limit
        );
        let app = router(state.clone(), args.max_body_bytes);
        let settings = conn::ConnSettings {
            header_timeout: Duration::from_millis(args.header_timeout_ms),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms),
            max_connections: args.max_connections,
        };
        let stop = async {
            shutdown_signal().await;
            eprintln!("corefocus serve: shutting down, finishing queued requests");
        };
        if !conn::serve(listener, app, settings, stop, SHUTDOWN_GRACE).await {
            eprintln!(
                "corefocus serve: connections still open {}s after the signal; closing",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        anyhow::Ok(())
    });
    // Close the queue: the inference thread answers what is left, then ends.
    drop(state.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
    runtime.shutdown_timeout(Duration::from_secs(1));
    if worker.join().is_err() {
        bail!("the inference thread panicked");
    }
    served?;
    eprintln!(
        "corefocus serve: stopped after {} requests ({} texts in {} batches)",
        state.stats.requests.load(Ordering::Relaxed),
        state.stats.texts.load(Ordering::Relaxed),
        state.stats.batches.load(Ordering::Relaxed)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        n: usize,
    ) -> (
        Job,
        oneshot::Receiver<std::result::Result<Vec<TextResult>, String>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                texts: vec!["x".to_string(); n],
                explain: false,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn batches_take_what_waits_up_to_max_batch_and_carry_the_rest() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let stats = Stats::default();
        let mut receivers = Vec::new();
        for n in [3, 4, 2, 5, 1] {
            let (j, r) = job(n);
            tx.send(j).unwrap();
            stats.queued.fetch_add(1, Ordering::Relaxed);
            receivers.push(r);
        }
        let settings = BatchSettings {
            max_batch: 8,
            batch_wait: Duration::from_millis(0),
        };
        let mut carry = None;
        let sizes = |jobs: Vec<Job>| jobs.iter().map(|j| j.texts.len()).collect::<Vec<_>>();
        // 3 + 4 fit; 2 would make 9 > 8 and is carried over.
        let b = next_batch(&rx, &mut carry, settings, &stats).unwrap();
        assert_eq!(sizes(b), vec![3, 4]);
        assert_eq!(carry.as_ref().map(|j| j.texts.len()), Some(2));
        let b = next_batch(&rx, &mut carry, settings, &stats).unwrap();
        assert_eq!(sizes(b), vec![2, 5, 1]);
        assert_eq!(stats.queued.load(Ordering::Relaxed), 0);
        // A job larger than max_batch still goes, alone.
        let (big, _r) = job(20);
        tx.send(big).unwrap();
        stats.queued.fetch_add(1, Ordering::Relaxed);
        drop(tx);
        let b = next_batch(&rx, &mut carry, settings, &stats).unwrap();
        assert_eq!(sizes(b), vec![20]);
        // Closed and empty: the loop ends.
        assert!(next_batch(&rx, &mut carry, settings, &stats).is_none());
    }

    #[test]
    fn batching_waits_for_late_requests_within_the_window() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let stats = Stats::default();
        let (first, _r1) = job(1);
        tx.send(first).unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let (late, r) = job(1);
            tx.send(late).unwrap();
            r
        });
        let settings = BatchSettings {
            max_batch: 4,
            batch_wait: Duration::from_millis(2000),
        };
        let mut carry = None;
        let b = next_batch(&rx, &mut carry, settings, &stats).unwrap();
        // The window closes when the sender hangs up; both requests are in one batch.
        assert_eq!(b.len(), 2);
        let _ = sender.join();
    }
}
