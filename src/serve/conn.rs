//! The connection loop of `corefocus serve`: accepts TCP connections up to a cap and runs
//! each through hyper's HTTP/1.1 connection with the router as its service, under three
//! deadlines that hyper alone does not give:
//!
//! - **header timeout**: a request's head must be complete this long after the
//!   connection opened or after the request's first byte (a client trickling header
//!   lines, or connecting and sending nothing, is disconnected without an answer);
//! - **idle timeout**: a keep-alive connection that sends nothing for this long after an
//!   answer is closed;
//! - **body timeout**: enforced by the classify handler (408), see `super::classify`.
//!
//! Over `--max-connections` open connections, a new one is answered
//! `503 {"error": "too many open connections ..."}` and closed. At shutdown the listener
//! closes, connections waiting for a request (idle, or with a request head still
//! incomplete) are closed at once, and those with a request in flight finish it.

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The connection settings of `serve`.
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Where a connection stands, for its deadline.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request: since `since` (the connection's opening, or the end of the
    /// previous request), with the first byte of the next request seen at `first_byte`.
    Waiting {
        since: Instant,
        first_byte: Option<Instant>,
        fresh: bool,
    },
    /// A request's head is in: the handler runs (the body timeout is the handler's).
    Busy,
}

/// A connection's phase and a signal that it changed.
struct Clock {
    phase: Mutex<Phase>,
    changed: Notify,
    settings: ConnSettings,
}

impl Clock {
    fn new(settings: ConnSettings) -> Clock {
        Clock {
            phase: Mutex::new(Phase::Waiting {
                since: Instant::now(),
                first_byte: None,
                fresh: true,
            }),
            changed: Notify::new(),
            settings,
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection is to be closed, if nothing changes first.
    fn deadline(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Waiting {
                first_byte: Some(t),
                ..
            } => Some(t + self.settings.header_timeout),
            Phase::Waiting {
                since, fresh: true, ..
            } => Some(since + self.settings.header_timeout),
            Phase::Waiting { since, .. } => Some(since + self.settings.idle_timeout),
            Phase::Busy => None,
        }
    }

    fn is_waiting(&self) -> bool {
        matches!(*self.phase(), Phase::Waiting { .. })
    }

    /// Bytes arrived: the first of a request starts its header deadline.
    fn received(&self) {
        let mut phase = self.phase();
        if let Phase::Waiting {
            first_byte: first @ None,
            ..
        } = &mut *phase
        {
            *first = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn busy(&self) {
        *self.phase() = Phase::Busy;
        self.changed.notify_one();
    }

    fn idle(&self) {
        *self.phase() = Phase::Waiting {
            since: Instant::now(),
            first_byte: None,
            fresh: false,
        };
        self.changed.notify_one();
    }
}

/// A TCP stream that reports arriving bytes to its connection's clock.
struct Watched {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.received();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Sleeps until `deadline`, forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Serves one connection until the client closes it, a deadline passes, or shutdown
/// finds it without a request in flight.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    settings: ConnSettings,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(Clock::new(settings));
    let io = TokioIo::new(Watched {
        stream,
        clock: clock.clone(),
    });
    let tower = TowerToHyperService::new(app);
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        service_clock.busy();
        let answer = tower.call(request);
        let clock = service_clock.clone();
        async move {
            let response = answer.await;
            clock.idle();
            response
        }
    });
    let mut builder = http1::Builder::new();
    // Our clock keeps the header deadline (hyper's would also cut idle connections short).
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        if !draining && *shutdown.borrow() {
            if clock.is_waiting() {
                return;
            }
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        let deadline = clock.deadline();
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed(), if !draining => {
                if *shutdown.borrow() {
                    continue;
                }
                // The sender is gone: treat as shutdown too.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = clock.changed.notified() => {}
            _ = sleep_until(deadline) => {
                if clock.deadline().is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse_connection(mut stream: TcpStream, max_connections: usize) {
    let body = serde_json::json!({
        "error": format!(
            "too many open connections: the limit is {max_connections} (--max-connections); \
             retry shortly"
        )
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sends until it closes, so that closing the socket with
        // unread data does not reset the connection before the answer arrives.
        let mut sink = [0u8; 4096];
        loop {
            use tokio::io::AsyncReadExt;
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Accepts connections on `listener` until `stop` resolves, then closes the listener, tells
/// every connection to finish, and waits up to `grace` for them. Returns whether every
/// connection finished within the grace.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ConnSettings,
    stop: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> bool {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        eprintln!("corefocus serve: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_connection(
                            stream,
                            app.clone(),
                            settings,
                            shutdown_rx.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        tokio::spawn(refuse_connection(stream, settings.max_connections));
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    // Every connection holds a slot until it ends: all slots back means all done.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let finished = tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_ok();
    finished
}
