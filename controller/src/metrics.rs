//! Prometheus metrics: request counts and latencies by RPC and code, store
//! flush latency, reconcile applies and skips, and gauges (VPSes by state, nodes by status) computed at
//! scrape time. Served as text on a small HTTP endpoint.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use paddock_telemetry::Histogram;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

struct Registry {
    requests: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
    store_flush: Histogram,
    reconcile_applies: u64,
    reconcile_converged: u64,
    reconcile_skipped: u64,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Mutex::new(Registry {
            requests: BTreeMap::new(),
            latency: BTreeMap::new(),
            store_flush: Histogram::new(&BUCKETS),
            reconcile_applies: 0,
            reconcile_converged: 0,
            reconcile_skipped: 0,
        })
    })
}

fn with_registry(f: impl FnOnce(&mut Registry)) {
    let mut guard = match registry().lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut guard);
}

/// Records one finished RPC.
pub fn observe_request(method: &str, code: &str, elapsed: Duration) {
    with_registry(|r| {
        *r.requests
            .entry((method.to_owned(), code.to_owned()))
            .or_default() += 1;
        r.latency
            .entry(method.to_owned())
            .or_insert_with(|| Histogram::new(&BUCKETS))
            .observe(elapsed);
    });
}

/// Records one disk flush of the store.
pub fn observe_store_flush(elapsed: Duration) {
    with_registry(|r| r.store_flush.observe(elapsed));
}

/// Records one reconcile pass over a node: VPSes applied again, and VPSes
/// the node reported converged (left alone).
pub fn observe_reconcile(applied: u64, converged: u64) {
    with_registry(|r| {
        r.reconcile_applies += applied;
        r.reconcile_converged += converged;
    });
}

/// Records one periodic pass skipped: its node was converged and has reported the same since.
pub fn observe_reconcile_skipped() {
    with_registry(|r| r.reconcile_skipped += 1);
}

/// Gauges computed when scraped.
pub type Gauges = Vec<(&'static str, &'static str, Vec<(String, f64)>)>;

/// The exposition text: counters and histograms, then `gauges`
/// (metric name, help, [(label set, value)]).
pub fn render(gauges: &Gauges) -> String {
    let mut out = String::new();
    with_registry(|r| {
        out.push_str(
            "# HELP paddock_grpc_requests_total gRPC requests by method and status code.\n",
        );
        out.push_str("# TYPE paddock_grpc_requests_total counter\n");
        for ((method, code), count) in &r.requests {
            let _ = writeln!(
                out,
                "paddock_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP paddock_grpc_request_duration_seconds gRPC request latency by method.\n",
        );
        out.push_str("# TYPE paddock_grpc_request_duration_seconds histogram\n");
        for (method, histogram) in &r.latency {
            histogram.render(
                &mut out,
                "paddock_grpc_request_duration_seconds",
                &format!("method=\"{method}\""),
            );
        }
        out.push_str("# HELP paddock_store_flush_duration_seconds Duration of store disk flushes (group commits).\n");
        out.push_str("# TYPE paddock_store_flush_duration_seconds histogram\n");
        r.store_flush
            .render(&mut out, "paddock_store_flush_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP paddock_reconcile_applies_total VPS specs sent to agents by reconcile passes (ApplyVps).\n\
             # TYPE paddock_reconcile_applies_total counter\n\
             paddock_reconcile_applies_total {}",
            r.reconcile_applies
        );
        let _ = writeln!(
            out,
            "# HELP paddock_reconcile_converged_total VPSes a reconcile pass found converged and left alone.\n\
             # TYPE paddock_reconcile_converged_total counter\n\
             paddock_reconcile_converged_total {}",
            r.reconcile_converged
        );
        let _ = writeln!(
            out,
            "# HELP paddock_reconcile_skipped_total Periodic reconcile passes skipped: the node was converged and has reported the same since.\n\
             # TYPE paddock_reconcile_skipped_total counter\n\
             paddock_reconcile_skipped_total {}",
            r.reconcile_skipped
        );
    });
    for (name, help, samples) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `addr` with `render(gauges())`; anything else is 404.
pub async fn serve(
    addr: SocketAddr,
    gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    paddock_telemetry::serve(listener, Arc::new(move || render(&gauges()))).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_without_labels_has_no_braces() {
        let text = render(&vec![(
            "paddock_leader",
            "1 while this controller leads.",
            vec![(String::new(), 1.0)],
        )]);
        assert!(text.contains("\npaddock_leader 1\n"), "{text}");
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        observe_request(
            "/paddock.v1.TestService/Thing",
            "NotFound",
            Duration::from_millis(3),
        );
        observe_store_flush(Duration::from_micros(800));
        let text = render(&vec![(
            "paddock_vps",
            "VPSes by state.",
            vec![("state=\"running\"".to_owned(), 2.0)],
        )]);
        assert!(text.contains(
            "paddock_grpc_requests_total{method=\"/paddock.v1.TestService/Thing\",code=\"NotFound\"} 1"
        ));
        assert!(text.contains(
            "paddock_grpc_request_duration_seconds_bucket{method=\"/paddock.v1.TestService/Thing\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("paddock_store_flush_duration_seconds_bucket{le=\"0.001\"}"));
        assert!(text.contains("paddock_vps{state=\"running\"} 2"));
    }
}
