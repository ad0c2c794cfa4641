//! What the controller and the agents share to observe their gRPC servers: a
//! tower layer that hands every RPC's method, status code and duration to an
//! observer ([`RpcLayer`]), latency histograms, label escaping, and the tiny
//! HTTP server that answers `GET /metrics`. Each daemon keeps its own series
//! and renders them with these.

use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Produces the exposition text; called on a blocking thread at each scrape.
pub type Scrape = Arc<dyn Fn() -> String + Send + Sync>;

/// A latency histogram over fixed bucket bounds (seconds).
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (cumulative, as exposed).
    buckets: Vec<u64>,
    count: u64,
    sum_secs: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum_secs: 0.0,
        }
    }

    pub fn observe(&mut self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(self.bounds) {
            if secs <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_secs += secs;
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of `name` with
    /// `labels` (`key="value",...`, possibly empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (count, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_secs);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gRPC status code of a response, from its headers, by name (`NotFound`):
/// errors are "trailers-only" responses that carry it there; a successful
/// call carries it in the trailers, so absent means OK.
pub fn grpc_code(headers: &http::HeaderMap) -> String {
    let code = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok);
    format!("{code:?}")
}

/// What an [`RpcLayer`] does around every RPC its server answers.
pub trait RpcObserver: Clone + Send + Sync + 'static {
    /// What [`RpcObserver::started`] hands on to [`RpcObserver::finished`].
    type Call: Send + 'static;

    /// Before the RPC `method` (its path) runs; may put extensions on the request for its
    /// handler.
    fn started<B>(&self, method: &str, request: &mut http::Request<B>) -> Self::Call;

    /// After it answered, with its gRPC status code by name (`Transport` when the server
    /// produced no response) and how long it took; awaited before the answer goes out.
    fn finished(
        &self,
        call: Self::Call,
        method: String,
        code: String,
        elapsed: Duration,
    ) -> impl Future<Output = ()> + Send;
}

/// A tower layer over a gRPC server that calls an [`RpcObserver`] around every RPC.
#[derive(Clone)]
pub struct RpcLayer<O> {
    observer: O,
}

impl<O> RpcLayer<O> {
    pub fn new(observer: O) -> Self {
        Self { observer }
    }
}

impl<S, O: Clone> tower::Layer<S> for RpcLayer<O> {
    type Service = RpcService<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            observer: self.observer.clone(),
        }
    }
}

/// The service [`RpcLayer`] wraps around the server.
#[derive(Clone)]
pub struct RpcService<S, O> {
    inner: S,
    observer: O,
}

impl<S, O, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcService<S, O>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    O: RpcObserver,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone is ready only after poll_ready; call the one that was polled.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let call = self.observer.started(&method, &mut request);
        let observer = self.observer.clone();
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await;
            let code = match &response {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => "Transport".to_owned(),
            };
            observer
                .finished(call, method, code, started.elapsed())
                .await;
            response
        })
    }
}

/// Serves `GET /metrics` on `listener` with the text `scrape` returns until
/// the task is dropped; anything else is 404.
pub async fn serve(listener: TcpListener, scrape: Scrape) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, scrape.clone()));
            }
            Err(error) => {
                // E.g. out of file descriptors: do not spin.
                warn!(%error, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, scrape: Scrape) {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buffer[..n]),
            _ => return,
        }
    }
    let wanted = request.starts_with(b"GET /metrics ") || request.starts_with(b"GET /metrics?");
    let response = if !wanted {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    } else {
        match tokio::task::spawn_blocking(move || scrape()).await {
            Ok(body) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            Err(error) => {
                warn!(%error, "metrics scrape failed");
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            }
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        const BOUNDS: [f64; 2] = [0.01, 0.1];
        let mut histogram = Histogram::new(&BOUNDS);
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_secs(1));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "m=\"a\"");
        assert_eq!(
            out,
            "x_seconds_bucket{m=\"a\",le=\"0.01\"} 1\n\
             x_seconds_bucket{m=\"a\",le=\"0.1\"} 2\n\
             x_seconds_bucket{m=\"a\",le=\"+Inf\"} 3\n\
             x_seconds_sum{m=\"a\"} 1.055\n\
             x_seconds_count{m=\"a\"} 3\n"
        );
        let mut bare = String::new();
        Histogram::new(&BOUNDS).render(&mut bare, "y", "");
        assert!(bare.starts_with("y_bucket{le=\"0.01\"} 0\n"), "{bare}");
        assert!(bare.ends_with("y_sum 0\ny_count 0\n"), "{bare}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn status_codes_from_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), "Ok");
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_code(&headers), "NotFound");
    }

    #[tokio::test]
    async fn serves_metrics_and_404s_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, Arc::new(|| "up 1\n".to_owned())));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await
                .expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.ends_with("\r\n\r\nup 1\n"), "{metrics}");
        assert!(get("/").await.starts_with("HTTP/1.1 404 "));
        server.abort();
    }
}
