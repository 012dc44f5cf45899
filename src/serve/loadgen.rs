//! `corefocus loadgen`: a small load generator for `corefocus serve`. `--concurrency`
//! connections (HTTP/1.1 keep-alive over tokio TCP streams, no HTTP library) send
//! `--requests` classify requests in total, as fast as answers come (or each after a
//! pause, `--pause-ms`, as a service's users send them); the report gives requests/s,
//! texts/s and latency percentiles.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `corefocus loadgen` options.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadgenArgs {
    /// The server: `http://HOST:PORT` (POSTs to /v1/classify) or a full URL with a path.
    #[arg(long)]
    pub url: String,
    /// Connections sending requests at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Requests in total.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Texts in each request.
    #[arg(long, default_value_t = 1)]
    pub texts_per_request: usize,
    /// Texts to send, used in turn (repeatable) [default: a built-in set of news-like
    /// sentences of different lengths].
    #[arg(long)]
    pub text: Vec<String>,
    /// Ask for the kept tokens too (`"explain": true`).
    #[arg(long)]
    pub explain: bool,
    /// Print the report as JSON instead of a line of text.
    #[arg(long)]
    pub json: bool,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    /// Each connection waits this long after an answer before its next request (the
    /// server then sees requests apart, with idle time between them, as from users).
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

/// Latencies of the successful requests, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub requests: usize,
    /// Requests answered 200 with a `results` list of the right length.
    pub ok: usize,
    pub failed: usize,
    /// Failures by HTTP status (0 = no answer: connection or protocol error).
    pub failures_by_status: std::collections::BTreeMap<u16, usize>,
    pub first_error: Option<String>,
    pub concurrency: usize,
    pub texts_per_request: usize,
    pub pause_ms: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub texts_per_s: f64,
    pub latency_ms: Option<Latency>,
}

impl LoadReport {
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "{} requests ({} ok, {} failed) to {}, concurrency {}, {} text(s) per request, \
             {} ms pause, {:.2} s: {:.1} requests/s, {:.1} texts/s",
            self.requests,
            self.ok,
            self.failed,
            self.url,
            self.concurrency,
            self.texts_per_request,
            self.pause_ms,
            self.seconds,
            self.requests_per_s,
            self.texts_per_s
        );
        if let Some(l) = &self.latency_ms {
            line += &format!(
                "; latency ms: mean {:.1}, p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
                l.mean, l.p50, l.p90, l.p99, l.max
            );
        }
        if let Some(e) = &self.first_error {
            line += &format!("; first error: {e}");
        }
        line
    }
}

/// Sentences of different lengths, used in turn when no `--text` is given.
const SAMPLE_TEXTS: [&str; 6] = [
    "Shares rose sharply after the company reported record quarterly profits.",
    "The striker scored twice in the second half to win the cup final.",
    "Parliament will vote next week on the new budget proposals.",
    "A new smartphone with a folding screen goes on sale in the spring, the firm said, \
     after years of delays and several prototypes shown at trade fairs.",
    "The film won best picture.",
    "Central banks kept interest rates unchanged despite rising inflation, while markets \
     expect cuts later in the year as growth slows in several large economies and \
     unemployment edges up.",
];

/// Where requests go.
#[derive(Clone, Debug)]
struct Target {
    /// `host:port` to connect to.
    addr: String,
    /// Host header value.
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url {url:?}: expected http://HOST:PORT[/PATH] (no https)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    ensure!(!authority.is_empty(), "--url {url:?}: no host");
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let path = if path.is_empty() || path == "/" {
        "/v1/classify".to_string()
    } else {
        path.to_string()
    };
    Ok(Target {
        addr,
        host: authority.to_string(),
        path,
    })
}

/// One HTTP/1.1 keep-alive connection.
struct Connection {
    stream: BufReader<TcpStream>,
}

/// Largest response body accepted (a guard against a wrong URL streaming forever).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

impl Connection {
    async fn open(target: &Target) -> Result<Connection> {
        let stream = TcpStream::connect(&target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream: BufReader::new(stream),
        })
    }

    /// POSTs `body`; returns the status, the body and whether the server keeps the
    /// connection open.
    async fn post(&mut self, target: &Target, body: &[u8]) -> Result<(u16, Vec<u8>, bool)> {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            target.path,
            target.host,
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;

        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        ensure!(!line.is_empty(), "the server closed the connection");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP status line: {:?}", line.trim_end()))?;
        let mut content_length = None;
        let mut keep_alive = true;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                bail!("malformed header line {header:?}");
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => content_length = value.parse::<usize>().ok(),
                "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => bail!("chunked responses are not supported"),
                _ => {}
            }
        }
        let length = content_length.context("response without Content-Length")?;
        ensure!(
            length <= MAX_RESPONSE_BYTES,
            "response of {length} bytes is too large"
        );
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body, keep_alive))
    }
}

/// What one request came to.
enum Outcome {
    Ok(Duration),
    Failed { status: u16, message: String },
}

/// Sends one request over `conn` (opened or reopened as needed).
async fn send_one(
    conn: &mut Option<Connection>,
    target: &Target,
    body: &[u8],
    texts: usize,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let attempt = async {
        if conn.is_none() {
            *conn = Some(Connection::open(target).await?);
        }
        let c = conn.as_mut().expect("opened above");
        c.post(target, body).await
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("no answer within {} s", timeout.as_secs())),
    };
    let elapsed = start.elapsed();
    match result {
        Ok((status, body, keep_alive)) => {
            if !keep_alive {
                *conn = None;
            }
            if status != 200 {
                let message = String::from_utf8_lossy(&body).into_owned();
                return Outcome::Failed {
                    status,
                    message: format!("HTTP {status}: {message}"),
                };
            }
            let results = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["results"].as_array().map(|r| r.len()));
            if results != Some(texts) {
                return Outcome::Failed {
                    status,
                    message: format!(
                        "HTTP 200 without {texts} results: {}",
                        String::from_utf8_lossy(&body)
                    ),
                };
            }
            Outcome::Ok(elapsed)
        }
        Err(e) => {
            *conn = None;
            Outcome::Failed {
                status: 0,
                message: format!("{e:#}"),
            }
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the load and returns the report (printing nothing).
pub async fn generate_load(args: &LoadgenArgs) -> Result<LoadReport> {
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    ensure!(args.requests >= 1, "--requests must be at least 1");
    ensure!(
        args.texts_per_request >= 1,
        "--texts-per-request must be at least 1"
    );
    let target = parse_url(&args.url)?;
    let texts: Vec<String> = if args.text.is_empty() {
        SAMPLE_TEXTS.iter().map(|s| s.to_string()).collect()
    } else {
        args.text.clone()
    };
    // Request bodies built up front, so the clients time the server, not serde.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.requests)
            .map(|r| {
                let batch: Vec<&str> = (0..args.texts_per_request)
                    .map(|k| texts[(r * args.texts_per_request + k) % texts.len()].as_str())
                    .collect();
                serde_json::to_vec(&serde_json::json!({ "texts": batch, "explain": args.explain }))
            })
            .collect::<std::result::Result<_, _>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_secs(args.timeout_s.max(1));
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.requests) {
        let (target, bodies, next) = (target.clone(), bodies.clone(), next.clone());
        let texts = args.texts_per_request;
        let pause = Duration::from_millis(args.pause_ms);
        clients.spawn(async move {
            let mut conn = None;
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                outcomes.push(send_one(&mut conn, &target, body, texts, timeout).await);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            outcomes
        });
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut failures_by_status = std::collections::BTreeMap::new();
    let mut first_error = None;
    while let Some(outcomes) = clients.join_next().await {
        for outcome in outcomes.context("a load client task failed")? {
            match outcome {
                Outcome::Ok(d) => latencies.push(d.as_secs_f64() * 1e3),
                Outcome::Failed { status, message } => {
                    *failures_by_status.entry(status).or_insert(0) += 1;
                    first_error.get_or_insert(message);
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    let latency_ms = (!latencies.is_empty()).then(|| Latency {
        mean: latencies.iter().sum::<f64>() / ok as f64,
        p50: percentile(&latencies, 50.0),
        p90: percentile(&latencies, 90.0),
        p99: percentile(&latencies, 99.0),
        max: latencies[ok - 1],
    });
    Ok(LoadReport {
        url: args.url.clone(),
        requests: args.requests,
        ok,
        failed: args.requests - ok,
        failures_by_status,
        first_error,
        concurrency: args.concurrency,
        texts_per_request: args.texts_per_request,
        pause_ms: args.pause_ms,
        seconds,
        requests_per_s: ok as f64 / seconds,
        texts_per_s: (ok * args.texts_per_request) as f64 / seconds,
        latency_ms,
    })
}

/// `corefocus loadgen`: prints the report; fails when no request succeeded.
pub fn run_loadgen(args: &LoadgenArgs) -> Result<LoadReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(generate_load(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.to_line());
    }
    if report.ok == 0 {
        bail!(
            "no request succeeded: {}",
            report.first_error.as_deref().unwrap_or("no answer")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_the_classify_path_by_default() {
        let t = parse_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/v1/classify")
        );
        let t = parse_url("http://localhost/custom/path").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.path.as_str()),
            ("localhost:80", "/custom/path")
        );
        assert!(parse_url("https://x").is_err());
        assert!(parse_url("http:///v1").is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
