//! `corefocus serve` and `corefocus loadgen` through the real binary and real HTTP on a
//! loopback port: the answers equal `corefocus predict`'s, the error statuses and JSON
//! bodies, the limits (413, 429), dynamic batching of concurrent requests, and graceful
//! shutdown on SIGTERM with a request in flight.
//!
//! The checkpoint is the test model (all-MiniLM-L6-v2) with a random 3-class head and
//! fuzzy pruning (keep ratio 0.5), written by the library without training.

use corefocus::data::tokenize::TextTokenizer;
use corefocus::model::checkpoint::load_hf_checkpoint;
use corefocus::model::{MethodConfig, Model, Variant};
use corefocus::train::{save_checkpoint, CheckpointMeta};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use common::doc_errors::expect;
use common::{corefocus, Scratch};

const LABELS: [&str; 3] = ["business", "sport", "tech"];

/// A PF checkpoint of the test model with a random head (max_len 64).
fn make_checkpoint(dir: &Path) {
    let model_dir = common::test_model_dir();
    let (bert, params) = load_hf_checkpoint(&model_dir).unwrap();
    let tokenizer = TextTokenizer::from_dir(&model_dir).unwrap();
    let mut method = MethodConfig::new(Variant::Pf, bert.num_hidden_layers);
    method.keep_ratio = 0.5;
    let model = Model::from_bert_params(bert, params, method.clone(), LABELS.len(), 7).unwrap();
    let labels = LABELS.iter().map(|s| s.to_string()).collect();
    let meta = CheckpointMeta::new(labels, method, 64, None, None, None);
    save_checkpoint(dir, &model, &tokenizer, &meta).unwrap();
}

/// A running `corefocus serve`, killed when dropped (unless it already exited).
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(checkpoint: &Path, extra: &[&str]) -> Server {
        let mut child = common::corefocus_command()
            .args(["serve", "--checkpoint", checkpoint.to_str().unwrap()])
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first stdout line names the bound address; read it off-thread with a deadline.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("serve printed no address within 120 s");
            }
        };
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("unexpected first line {line:?}; stderr:\n{err}");
        };
        Server {
            addr: addr.to_string(),
            child,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, path: &str) -> (u16, Value) {
        http(&self.addr, "GET", path, b"")
    }

    fn post(&self, body: &Value) -> (u16, Value) {
        http(
            &self.addr,
            "POST",
            "/v1/classify",
            body.to_string().as_bytes(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (Connection: close); the status and the body parsed as JSON.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A server refusing an oversize body may close before reading all of it (the write
    // or the end of the read may then fail): keep whatever response arrived.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{method} {path}: not JSON:\n{head}"
    );
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

/// `corefocus predict` on `texts` (one per line): its JSON lines.
fn predict(checkpoint: &Path, texts: &[&str]) -> Vec<Value> {
    let input = texts.join("\n") + "\n";
    let out = common::corefocus_with_input(
        &["predict", "--checkpoint", checkpoint.to_str().unwrap()],
        input.as_bytes(),
    );
    common::succeeded(&out, "predict")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that a serve result and a predict line agree: the same label and the same
/// probabilities (up to float noise from different batch shapes).
fn assert_same(served: &Value, predicted: &Value, what: &str) {
    assert_eq!(served["label"], predicted["label"], "{what}");
    let label = served["label"].as_str().unwrap();
    let id = served["label_id"].as_u64().unwrap() as usize;
    assert_eq!(LABELS[id], label, "{what}: label_id");
    for l in LABELS {
        let a = served["probabilities"][l].as_f64().unwrap();
        let b = predicted["probabilities"][l].as_f64().unwrap();
        assert!((a - b).abs() < 1e-5, "{what}: p({l}) {a} vs predict {b}");
    }
}

const TEXTS: [&str; 5] = [
    "Shares rose sharply after the company reported record quarterly profits.",
    "The striker scored twice in the second half to win the cup final.",
    "A new smartphone with a folding screen goes on sale in the spring.",
    "ok",
    "Central banks kept interest rates unchanged despite rising inflation, while markets \
     expect cuts later in the year as growth slows in several large economies.",
];

#[test]
fn serve_answers_like_predict_enforces_limits_and_batches() {
    let scratch = Scratch::new("main");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    let server = Server::start(
        &ckpt,
        &["--max-texts-per-request", "8", "--max-body-bytes", "4096"],
    );

    // Health and model description.
    let (status, health) = server.get("/healthz");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, info) = server.get("/v1/model");
    assert_eq!(status, 200);
    assert_eq!(info["labels"], json!(LABELS));
    assert_eq!(info["variant"], "pf");
    assert_eq!(info["max_len"], 64);
    assert_eq!(info["num_layers"], 6);
    assert_eq!(info["precision"], "f32");
    assert_eq!(info["model"], "ckpt");
    // Issue 16 item 10: the name only, never the checkpoint's path (failed before).
    assert!(info.get("checkpoint").is_none(), "{info}");
    assert!(
        !info.to_string().contains(&*ckpt.to_string_lossy()),
        "{info}"
    );
    assert_eq!(info["limits"]["max_texts_per_request"], 8);
    assert_eq!(info["limits"]["max_batch"], 32);
    assert!((info["method"]["keep_ratio"].as_f64().unwrap() - 0.5).abs() < 1e-6);

    // A batch of texts: the same answers as `predict`, in order.
    let expected = predict(&ckpt, &TEXTS);
    assert_eq!(expected.len(), TEXTS.len());
    let (status, answer) = server.post(&json!({ "texts": TEXTS }));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "ckpt");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), TEXTS.len());
    for (i, (served, predicted)) in results.iter().zip(&expected).enumerate() {
        assert_same(served, predicted, &format!("text {i}"));
        assert!(
            served.get("kept_tokens").is_none(),
            "kept_tokens only on request"
        );
    }
    // A single text, with the kept tokens.
    let (status, answer) = server.post(&json!({ "text": TEXTS[4], "explain": true }));
    assert_eq!(status, 200, "{answer}");
    let one = &answer["results"][0];
    assert_same(one, &expected[4], "single text");
    let kept: Vec<&str> = one["kept_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let tokenizer = TextTokenizer::from_dir(&ckpt).unwrap();
    let ids = tokenizer.encode(TEXTS[4], 64).unwrap();
    // Pruning at keep ratio 0.5 over five decisions leaves a strict subset.
    assert!(
        !kept.is_empty() && kept.len() < ids.len(),
        "{} kept of {}: {kept:?}",
        kept.len(),
        ids.len()
    );
    let tokens: Vec<String> = ids.iter().map(|&i| tokenizer.id_to_token(i)).collect();
    assert!(
        kept.iter().all(|k| tokens.iter().any(|t| t == k)),
        "{kept:?}"
    );

    // Errors: JSON bodies with the right status.
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{\"texts\": [\"a\",", 400, "malformed JSON"),
        (b"not json", 400, "malformed JSON"),
        (b"{\"texts\": []}", 400, "is empty"),
        (b"{\"texts\": [1, 2]}", 400, "invalid request"),
        (b"{\"txts\": [\"a\"]}", 400, "unknown field"),
        (b"{}", 400, "missing field"),
        (b"{\"text\": \"a\", \"texts\": [\"b\"]}", 400, "not both"),
        // Issue 16 item 7 (failed before: a blank text got a confident label).
        (
            b"{\"texts\": [\"a\", \" \\n\\t\"]}",
            400,
            "\"texts\"[1]: empty or whitespace-only text",
        ),
        (
            b"{\"text\": \"\"}",
            400,
            "\"text\": empty or whitespace-only text",
        ),
    ];
    for (body, want, message) in cases {
        let (status, err) = http(&server.addr, "POST", "/v1/classify", body);
        let text = err["error"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{}: {err}", String::from_utf8_lossy(body));
        assert!(text.contains(message), "{text}");
    }
    let nine = vec!["a"; 9];
    let (status, err) = server.post(&json!({ "texts": nine }));
    assert_eq!(status, 413);
    assert!(err["error"]
        .as_str()
        .unwrap()
        .contains("9 texts in one request; the limit is 8"));
    let big = "word ".repeat(2000);
    let (status, err) = server.post(&json!({ "text": big }));
    assert_eq!(status, 413);
    assert!(
        err["error"].as_str().unwrap().contains("--max-body-bytes"),
        "{err}"
    );
    let (status, err) = server.get("/v2/nothing");
    assert_eq!(status, 404, "{err}");
    let (status, err) = server.get("/v1/classify");
    assert_eq!(status, 405, "{err}");

    // Concurrent requests (one text each): every answer is its own text's.
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let text = TEXTS[i % TEXTS.len()];
                let body = json!({ "texts": [text] }).to_string();
                (i, http(&addr, "POST", "/v1/classify", body.as_bytes()))
            })
        })
        .collect();
    for t in threads {
        let (i, (status, answer)) = t.join().unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_same(
            &answer["results"][0],
            &expected[i % TEXTS.len()],
            &format!("concurrent request {i}"),
        );
    }
    let (_, health) = server.get("/healthz");
    // 5 + 1 + 12 texts served, in at most as many batches.
    assert_eq!(health["texts"], 18, "{health}");
    assert!(health["batches"].as_u64().unwrap() <= 18, "{health}");

    // The load generator against this server.
    let out = Command::new(env!("CARGO_BIN_EXE_corefocus"))
        .args(["loadgen", "--url", &server.url(), "--json"])
        .args(["--concurrency", "4", "--requests", "24"])
        .args(["--texts-per-request", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], 24, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["requests_per_s"].as_f64().unwrap() > 0.0);
    let lat = &report["latency_ms"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
    let (_, health) = server.get("/healthz");
    assert_eq!(health["texts"], 18 + 48, "{health}");

    // With a pause after each answer, one connection's 4 requests take at least 4 pauses.
    let out = Command::new(env!("CARGO_BIN_EXE_corefocus"))
        .args(["loadgen", "--url", &server.url(), "--json"])
        .args(["--concurrency", "1", "--requests", "4", "--pause-ms", "30"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&report["ok"], &report["pause_ms"]),
        (&4.into(), &30.into()),
        "{report}"
    );
    assert!(report["seconds"].as_f64().unwrap() >= 0.12, "{report}");
    let (_, health) = server.get("/healthz");
    assert_eq!(health["texts"], 18 + 48 + 4, "{health}");
    drop(server);
}

#[test]
fn serve_and_loadgen_option_errors() {
    let scratch = Scratch::new("errors");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    let c = ckpt.to_str().unwrap();
    for flag in [
        "--max-batch",
        "--max-texts-per-request",
        "--queue-limit",
        "--max-connections",
    ] {
        let out = corefocus(&["serve", "--checkpoint", c, flag, "0"]);
        if flag == "--max-batch" {
            expect(&out, "S01", &[]);
        } else {
            expect_message(&out, &format!("{flag} must be at least 1"));
        }
    }
    // Issue 16 item 9: the timeouts are bounded (failed before: no such settings).
    expect(
        &corefocus(&["serve", "--checkpoint", c, "--header-timeout-ms", "0"]),
        "S06",
        &["--header-timeout-ms 0"],
    );
    for flag in ["--body-timeout-ms", "--idle-timeout-ms"] {
        expect_message(
            &corefocus(&["serve", "--checkpoint", c, flag, "3600001"]),
            &format!("{flag} 3600001 is out of range"),
        );
    }
    // A port already taken, and no address at all.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    expect(
        &corefocus(&["serve", "--checkpoint", c, "--addr", &addr]),
        "S02",
        &[&addr],
    );
    expect(
        &corefocus(&["serve", "--checkpoint", c, "--addr", "nowhere"]),
        "S02",
        &["nowhere"],
    );
    expect(
        &corefocus(&["serve", "--checkpoint", c, "--max-len", "600"]),
        "S03",
        &[],
    );
    // Not a checkpoint: the inference commands' message.
    expect(
        &corefocus(&["serve", "--checkpoint", root.to_str().unwrap()]),
        "C01",
        &[root.to_str().unwrap()],
    );
    // Nothing listens on the discard port.
    let out = corefocus(&["loadgen", "--url", "http://127.0.0.1:9", "--requests", "2"]);
    expect(&out, "S04", &["127.0.0.1:9"]);
    let out = corefocus(&["loadgen", "--url", "https://example.com"]);
    expect(&out, "S05", &[]);
}

/// Exit status 1 with one `error:` line holding `message`.
fn expect_message(out: &std::process::Output, message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(message), "{stderr}");
}

#[test]
fn a_full_queue_answers_429() {
    let scratch = Scratch::new("queue");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    // One queued request at most; batches of 8 texts start at once (no waiting to fill).
    let server = Server::start(
        &ckpt,
        &["--queue-limit", "1", "--max-batch", "8", "--max-len", "256"],
    );
    // A slow request: 8 long texts with explain (8 extra traced forward passes).
    let long = "the markets moved sharply today as traders weighed the latest figures ".repeat(24);
    let heavy = json!({ "texts": vec![long.as_str(); 8], "explain": true }).to_string();
    let addr = server.addr.clone();
    let slow = std::thread::spawn(move || http(&addr, "POST", "/v1/classify", heavy.as_bytes()));
    // Let the inference thread take it; then one request fits the queue, the next does not.
    std::thread::sleep(Duration::from_millis(300));
    // Four light requests at once: one fits the queue, the others are refused.
    let light: Vec<_> = (0..4)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let body = json!({ "text": format!("light request {i}") }).to_string();
                http(&addr, "POST", "/v1/classify", body.as_bytes())
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = light.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .map(|(_, body)| body)
        .collect();
    assert!(
        !refused.is_empty(),
        "no 429 while the queue was full: {answers:?}"
    );
    for (status, body) in &answers {
        assert!(*status == 200 || *status == 429, "{status}: {body}");
    }
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{}",
        refused[0]
    );
    let (status, answer) = slow.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"].as_array().unwrap().len(), 8);
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_exits_0() {
    let scratch = Scratch::new("shutdown");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    // The inference thread holds a lone request for up to 1.5 s hoping to fill a batch,
    // so requests are in flight when the signal comes.
    let mut server = Server::start(&ckpt, &["--batch-wait-ms", "1500"]);

    // Concurrent requests within one window are batched together.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let body = json!({ "text": TEXTS[i % TEXTS.len()] }).to_string();
                http(&addr, "POST", "/v1/classify", body.as_bytes())
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().0, 200);
    }
    let (_, health) = server.get("/healthz");
    assert_eq!(health["texts"], 8, "{health}");
    assert!(
        health["batches"].as_u64().unwrap() < 8,
        "8 concurrent requests within a 1.5 s window ran unbatched: {health}"
    );

    let addr = server.addr.clone();
    let start = Instant::now();
    let in_flight = std::thread::spawn(move || {
        let r = http(&addr, "POST", "/v1/classify", b"{\"text\": \"in flight\"}");
        (r, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let ((status, answer), took) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(
        took >= Duration::from_millis(400),
        "the request finished before the signal ({took:?}); the test proves nothing"
    );
    // The process exits by itself, with status 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert!(stderr.contains("stopped after 9 requests"), "{stderr}");
    // No longer listening.
    assert!(TcpStream::connect(&server.addr).is_err());
}

/// Reads from `stream` until the server closes it (or `limit` passes): the bytes read and
/// how long after `since` the close came (None: still open at the limit).
fn read_until_closed(
    stream: &mut TcpStream,
    since: Instant,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(since.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, None)
            }
            // A reset is a close too.
            Err(_) => return (got, Some(since.elapsed())),
        }
    }
}

/// The status and JSON body of one raw HTTP response.
fn parse_response(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Issue 16 item 9 (failed before: no such settings, and slow clients were never cut off):
/// header, body and idle timeouts and the connection cap, over real sockets.
#[test]
fn slow_and_idle_connections_are_cut_off_and_connections_capped() {
    let scratch = Scratch::new("timeouts");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    let server = Server::start(
        &ckpt,
        &[
            "--header-timeout-ms",
            "600",
            "--body-timeout-ms",
            "600",
            "--idle-timeout-ms",
            "900",
        ],
    );
    let (_, info) = server.get("/v1/model");
    assert_eq!(info["limits"]["header_timeout_ms"], 600, "{info}");
    assert_eq!(info["limits"]["max_connections"], 512, "{info}");

    // 50 clients trickling header lines (one every 150 ms, never finishing): each is
    // disconnected about 600 ms after its first byte, while still sending.
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                let start = Instant::now();
                s.write_all(b"POST /v1/classify HTTP/1.1\r\n").unwrap();
                let mut reader = s.try_clone().unwrap();
                let watcher = std::thread::spawn(move || {
                    read_until_closed(&mut reader, start, Duration::from_secs(10))
                });
                for i in 0.. {
                    if watcher.is_finished() || start.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(150));
                    if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                        .is_err()
                    {
                        break;
                    }
                }
                watcher.join().unwrap()
            })
        })
        .collect();
    for t in slow {
        let (got, closed) = t.join().unwrap();
        let closed = closed.expect("a slow-header connection stayed open for 10 s");
        assert!(
            closed >= Duration::from_millis(500) && closed < Duration::from_secs(5),
            "closed after {closed:?}"
        );
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }

    // Connecting and sending nothing: closed after the header timeout too.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let (_, closed) = read_until_closed(&mut silent, Instant::now(), Duration::from_secs(10));
    assert!(
        closed.is_some_and(|c| c < Duration::from_secs(5)),
        "{closed:?}"
    );

    // A body that stalls: 408 with a JSON error, and the connection closed.
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled
        .write_all(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"text\": ",
        )
        .unwrap();
    let (got, closed) = read_until_closed(&mut stalled, Instant::now(), Duration::from_secs(10));
    assert!(closed.is_some(), "the stalled-body connection stayed open");
    let (status, body) = parse_response(&got);
    assert_eq!(status, 408, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("did not arrive within 600 ms (--body-timeout-ms)"),
        "{body}"
    );

    // Keep-alive: a second request on the same connection is answered; then the idle
    // connection is closed after the idle timeout (not the shorter header timeout).
    let mut kept = TcpStream::connect(&server.addr).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        kept.write_all(request).unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = kept.read(&mut buf).unwrap();
        let (status, health) = parse_response(&buf[..n]);
        assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
        std::thread::sleep(Duration::from_millis(400));
    }
    let idle_since = Instant::now() - Duration::from_millis(400);
    let (_, closed) = read_until_closed(&mut kept, idle_since, Duration::from_secs(10));
    let closed = closed.expect("an idle keep-alive connection stayed open for 10 s");
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(5),
        "idle connection closed after {closed:?}"
    );
    drop(server);

    // The connection cap: two open connections, the third is answered 503 and closed;
    // once one closes, requests are served again.
    let server = Server::start(&ckpt, &["--max-connections", "2"]);
    let first = TcpStream::connect(&server.addr).unwrap();
    let second = TcpStream::connect(&server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&server.addr).unwrap();
    let _ = third.write_all(request);
    let (got, closed) = read_until_closed(&mut third, Instant::now(), Duration::from_secs(10));
    assert!(closed.is_some(), "the connection over the cap stayed open");
    let (status, body) = parse_response(&got);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many open connections: the limit is 2 (--max-connections)"),
        "{body}"
    );
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
    drop(second);
}

/// Issue 16 item 9 (failed before: shutdown waited the full 30 s grace): a client stalled
/// mid-headers does not hold up shutdown.
#[test]
fn a_stalled_client_does_not_delay_shutdown() {
    let scratch = Scratch::new("stalled-shutdown");
    let root = scratch.dir();
    let ckpt = root.join("ckpt");
    make_checkpoint(&ckpt);
    // Default timeouts (10 s for headers): shutdown must not wait for them either.
    let mut server = Server::start(&ckpt, &[]);
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    stalled
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "serve still running 5 s after SIGTERM with a stalled client"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    let (_, closed) = read_until_closed(&mut stalled, start, Duration::from_secs(5));
    assert!(closed.is_some(), "the stalled connection was not closed");
}
