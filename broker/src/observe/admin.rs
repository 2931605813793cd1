//! The admin HTTP server (`--admin-listen`, default 127.0.0.1:9464): `/metrics` (Prometheus
//! text format), `/livez` (the process runs) and `/readyz` (registered, cluster view ready, not
//! shutting down). It is plain HTTP/1.1 with bounds against hostile clients: a request's head
//! must arrive within [`HEADER_TIMEOUT`], at most [`MAX_CONNECTIONS`] connections are served
//! at once (more are closed at accept), and nothing but `GET`/`HEAD` of those paths is served.
//! It lives from start to the very end of shutdown, so `/readyz` answers "draining" while the
//! broker flushes and hands its partitions over.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::metrics::{Metrics, StateSample};

/// How long a client may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Why a broker is or is not ready, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Readiness {
    registered: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// The broker's membership is registered.
    pub fn set_registered(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }

    /// Shutdown began: not ready from this moment on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// `Ok` when ready, else what is missing; `view_ready` is the cluster view's state.
    pub fn check(&self, view_ready: bool) -> Result<(), &'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Err("draining: the broker is shutting down and handing its partitions over")
        } else if !self.registered.load(Ordering::SeqCst) {
            Err("starting: the broker has not registered in the cluster yet")
        } else if !view_ready {
            Err("starting: the cluster view has not caught up with the metadata store")
        } else {
            Ok(())
        }
    }
}

/// What the admin server reads at each request.
pub trait AdminSource: Send + Sync + 'static {
    /// The broker's state, sampled into gauges before `/metrics` renders.
    fn sample(&self) -> StateSample;
    /// Whether the broker is ready, and if not, why.
    fn ready(&self) -> Result<(), &'static str>;
    /// Series computed at each scrape rather than kept in the registry (consumer-group lag:
    /// only the groups this broker coordinates now, so a group that moved leaves no stale
    /// series behind), in the text format.
    fn extra_series(&self) -> String {
        String::new()
    }
    fn metrics(&self) -> &Metrics;
}

/// Serves the admin endpoints on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // over the connection bound
            continue;
        };
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(answer(&*source, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
                }
            }
            drop(permit);
        });
    }
}

/// Binds the admin address with an error that names the flag.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot serve the admin endpoints on {addr}: {e}; choose another address with \
             --admin-listen (port 0 picks a free one)"
        )
    })
}

fn answer(source: &dyn AdminSource, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            source.metrics().sample(&source.sample());
            let mut body = source.metrics().render();
            body.push_str(&source.extra_series());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match source.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin server serves /metrics, /livez and /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    struct Fixed {
        metrics: Metrics,
        readiness: Readiness,
    }

    impl AdminSource for Fixed {
        fn sample(&self) -> StateSample {
            StateSample {
                owned_partitions: 3,
                ready: true,
                ..StateSample::default()
            }
        }
        fn ready(&self) -> Result<(), &'static str> {
            self.readiness.check(true)
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        (status, out)
    }

    async fn start(header_timeout: Duration) -> (SocketAddr, Arc<Fixed>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = Arc::new(Fixed {
            metrics: Metrics::new("b-1", 1),
            readiness: Readiness::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            source.clone(),
            header_timeout,
            stop.clone(),
        ));
        (addr, source, stop)
    }

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness() {
        let (addr, source, stop) = start(HEADER_TIMEOUT).await;
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("silt_owned_partitions{broker=\"b-1\"} 3"),
            "{body}"
        );
        assert!(body.contains("text/plain; version=0.0.4"));
        assert_eq!(get(addr, "/livez").await.0, 200);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "not registered yet");
        assert!(body.contains("not registered"), "{body}");
        source.readiness.set_registered();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        source.readiness.set_draining();
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("draining"), "{body}");
        assert_eq!(get(addr, "/livez").await.0, 200, "alive while draining");
        assert_eq!(get(addr, "/nope").await.0, 404);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_slow_client_is_cut_off_and_others_are_served() {
        let (addr, _source, stop) = start(Duration::from_millis(300)).await;
        // Slow-loris: half a request head, then nothing.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        // Junk: not HTTP at all.
        let mut junk = TcpStream::connect(addr).await.unwrap();
        junk.write_all(&[0xff; 4096]).await.unwrap();
        assert_eq!(get(addr, "/livez").await.0, 200, "served meanwhile");
        let mut buf = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "the slow connection is closed after the header timeout"
        );
        let mut buf = Vec::new();
        let answered =
            tokio::time::timeout(Duration::from_secs(10), junk.read_to_end(&mut buf)).await;
        assert!(answered.is_ok(), "junk gets an error and a close");
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        stop.cancel();
    }
}
