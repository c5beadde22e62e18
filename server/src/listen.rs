//! The accept loop [`crate::serve`] and [`crate::serve_tls`] share (SPEC §1.9).
//!
//! `axum::serve` sets no header timer and has no connection cap, so connections are
//! served here with hyper's HTTP/1 builder directly:
//! - a semaphore caps open connections (`--max-connections`); while it is full nothing
//!   more is accepted and new clients wait in the kernel's listen backlog;
//! - request headers (and, with TLS, the handshake) must arrive within the header
//!   timeout; hyper's timer also closes keep-alive connections that stay idle that long;
//! - [`MinRateBody`] fails a request body that stops arriving, and [`StallGuard`] closes
//!   a connection whose client stops taking the response: while a transfer is under way
//!   it must move `min_rate` bytes/s averaged over each `stall_timeout` window. This is
//!   what bounds the long requests (bundle uploads and downloads, the event stream) that
//!   the router's per-request budget leaves out.
//!
//! HTTP/1.1 only: hyper's HTTP/2 server has no header timer, and no Kernex client
//! speaks HTTP/2.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::settings::ConnLimits;

/// How long a shutdown waits for open requests before it closes their connections.
const DRAIN: Duration = Duration::from_secs(30);

/// Accept connections on `listener` until `shutdown` resolves, then let open requests
/// finish (up to 30 s).
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.map_err(io::Error::other)?,
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let http = http.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let io = StallGuard::new(stream, limits);
            let result = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(io), service(app, limits));
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let io = match tokio::time::timeout(limits.header_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(io)) => io,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = http.serve_connection(TokioIo::new(io), service(app, limits));
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open {DRAIN:?} after shutdown began; closing them");
    }
    Ok(())
}

/// The router as hyper calls it: every request body wrapped in a [`MinRateBody`], with
/// its [`BodyStall`] flag in the request's extensions for the router's limits layer.
fn service(
    app: Router,
    limits: ConnLimits,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = Oneshot<Router, Request<axum::body::Body>>,
> {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let stall = BodyStall::default();
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(stall.clone());
        let body = axum::body::Body::new(MinRateBody::new(body, limits, stall));
        app.clone().oneshot(Request::from_parts(parts, body))
    })
}

/// Set when a request's body was cut off for moving too slowly (the router answers 408).
#[derive(Debug, Clone, Default)]
pub struct BodyStall(Arc<AtomicBool>);

impl BodyStall {
    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes a transfer must move per window.
fn min_bytes(limits: &ConnLimits) -> u64 {
    ((limits.min_rate as f64) * limits.stall_timeout.as_secs_f64()).max(1.0) as u64
}

/// A window of the minimum transfer rate: armed when the transfer has to wait, cleared
/// once enough bytes moved; firing while it still waits is a stall.
struct RateWindow {
    length: Duration,
    min_bytes: u64,
    timer: Option<Pin<Box<Sleep>>>,
    moved: u64,
}

impl RateWindow {
    fn new(limits: &ConnLimits) -> Self {
        RateWindow {
            length: limits.stall_timeout,
            min_bytes: min_bytes(limits),
            timer: None,
            moved: 0,
        }
    }

    fn progress(&mut self, n: usize) {
        if let Some(timer) = &self.timer {
            self.moved += n as u64;
            if self.moved >= self.min_bytes || timer.is_elapsed() {
                self.timer = None;
            }
        }
    }

    /// The transfer has to wait: true when the window ran out first.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let length = self.length;
        let timer = self.timer.get_or_insert_with(|| {
            self.moved = 0;
            Box::pin(tokio::time::sleep(length))
        });
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A request body that fails when it stops arriving (SPEC §1.9: no slowloris).
pub struct MinRateBody {
    inner: Incoming,
    window: RateWindow,
    stall: BodyStall,
}

impl MinRateBody {
    fn new(inner: Incoming, limits: ConnLimits, stall: BodyStall) -> Self {
        MinRateBody {
            inner,
            window: RateWindow::new(&limits),
            stall,
        }
    }
}

impl HttpBody for MinRateBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.window.progress(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.window.stalled(cx) {
                    this.stall.0.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("the request body stopped arriving".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail once the client stops taking bytes: a response (a
/// bundle download, the event stream) must move at the minimum rate while it waits to
/// be written.
pub struct StallGuard<T> {
    inner: T,
    window: RateWindow,
}

impl<T> StallGuard<T> {
    fn new(inner: T, limits: ConnLimits) -> Self {
        StallGuard {
            inner,
            window: RateWindow::new(&limits),
        }
    }

    fn guard(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match res {
            Poll::Ready(Ok(n)) => {
                self.window.progress(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.window.stalled(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            other => other,
        }
    }
}

impl AsyncRead for StallGuard<TcpStream> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard<TcpStream> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
