//! Prometheus metrics of the node agent, served as text on `GET /metrics` like
//! the controller's: the controller's RPCs by method and code with their
//! latency, registrations and heartbeats by the controller's answer, and,
//! computed when scraped, VPSes by state and each VPS's usage counters (the
//! ones metering samples for billing).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use paddock_telemetry::{escape, family, Histogram};
use tracing::warn;

use crate::metering::{Meter, Sample, STOPPED_INCARNATION};
use crate::runtime::{ObservedState, Runtime, VpsObserved};

/// Upper bounds (seconds) of the RPC latency buckets: from a ListVps that
/// reads a few files to an ApplyVps that makes a disk image and boots a VPS.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Counters {
    /// Calls by (method, code).
    rpcs: BTreeMap<(String, String), u64>,
    rpc_latency: BTreeMap<String, Histogram>,
    /// Registration attempts by the controller's answer.
    registrations: BTreeMap<String, u64>,
    /// Heartbeats by the controller's answer.
    heartbeats: BTreeMap<String, u64>,
}

/// The agent's counters, updated as it works; VPS gauges and usage are read
/// when scraped. Shared by the RPC layer, the heartbeat loop and the endpoint.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

/// A usage series of every VPS whose counters were read: name, type, help, value.
type UsageSeries = (&'static str, &'static str, &'static str, fn(&Sample) -> f64);

/// Per-VPS series from the cgroup and the network port: only for running VPSes.
const RUNNING_USAGE: [UsageSeries; 6] = [
    (
        "paddock_agent_vps_cpu_seconds_total",
        "counter",
        "CPU time used by the VPS since it started.",
        |s| s.cpu_usage_ns as f64 / 1e9,
    ),
    (
        "paddock_agent_vps_memory_bytes",
        "gauge",
        "Memory used by the VPS (its cgroup's usage, page cache included).",
        |s| s.memory_bytes as f64,
    ),
    (
        "paddock_agent_vps_io_read_bytes_total",
        "counter",
        "Bytes read from the VPS's disk since it started.",
        |s| s.io.read_bytes as f64,
    ),
    (
        "paddock_agent_vps_io_write_bytes_total",
        "counter",
        "Bytes written to the VPS's disk since it started.",
        |s| s.io.write_bytes as f64,
    ),
    (
        "paddock_agent_vps_net_rx_bytes_total",
        "counter",
        "Bytes the VPS received on its network port since it started.",
        |s| s.net_rx_bytes as f64,
    ),
    (
        "paddock_agent_vps_net_tx_bytes_total",
        "counter",
        "Bytes the VPS sent on its network port since it started.",
        |s| s.net_tx_bytes as f64,
    ),
];

impl Metrics {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        match self.counters.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records one finished RPC from the controller (`method` is the gRPC path).
    pub fn observe_rpc(&self, method: &str, code: &str, elapsed: Duration) {
        let mut counters = self.counters();
        *counters
            .rpcs
            .entry((method.to_owned(), code.to_owned()))
            .or_default() += 1;
        counters
            .rpc_latency
            .entry(method.to_owned())
            .or_insert_with(|| Histogram::new(&BUCKETS))
            .observe(elapsed);
    }

    /// Records one registration attempt and the controller's answer.
    pub fn observe_registration(&self, code: tonic::Code) {
        *self
            .counters()
            .registrations
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }

    /// Records one heartbeat and the controller's answer.
    pub fn observe_heartbeat(&self, code: tonic::Code) {
        *self
            .counters()
            .heartbeats
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }

    /// Lists the VPSes, reads their counters now and renders. Blocking.
    pub fn scrape(&self, runtime: &Runtime, meter: &Meter) -> String {
        match runtime.list() {
            Ok(vps) => self.render(Some(&vps), &meter.current(&vps)),
            Err(error) => {
                warn!(%error, "listing VPSes for metrics");
                self.render(None, &[])
            }
        }
    }

    /// The exposition text. `vps` is `None` when the VPSes could not be
    /// listed: their series are then left out rather than reported as zero.
    pub fn render(&self, vps: Option<&[VpsObserved]>, usage: &[Sample]) -> String {
        let mut out = String::new();
        self.render_counters(&mut out);
        if let Some(vps) = vps {
            render_vps(&mut out, vps, usage);
        }
        out
    }

    fn render_counters(&self, out: &mut String) {
        let counters = self.counters();
        family(
            out,
            "paddock_agent_grpc_requests_total",
            "counter",
            "RPCs from the controller by method and status code.",
        );
        for ((method, code), count) in &counters.rpcs {
            let _ = writeln!(
                out,
                "paddock_agent_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        family(
            out,
            "paddock_agent_grpc_request_duration_seconds",
            "histogram",
            "RPC latency by method (for streams: until the stream opens).",
        );
        for (method, histogram) in &counters.rpc_latency {
            histogram.render(
                out,
                "paddock_agent_grpc_request_duration_seconds",
                &format!("method=\"{method}\""),
            );
        }
        let by_code = [
            (
                "paddock_agent_registrations_total",
                "Registration attempts by the controller's answer (code=\"Ok\": registered).",
                &counters.registrations,
            ),
            (
                "paddock_agent_heartbeats_total",
                "Heartbeats sent by the controller's answer (code=\"Ok\": delivered).",
                &counters.heartbeats,
            ),
        ];
        for (name, help, counts) in by_code {
            family(out, name, "counter", help);
            for (code, count) in counts {
                let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
            }
        }
    }
}

/// VPSes by state, then each usage series over the VPSes in `usage`.
fn render_vps(out: &mut String, vps: &[VpsObserved], usage: &[Sample]) {
    family(
        out,
        "paddock_agent_vps",
        "gauge",
        "VPSes on this node by observed state.",
    );
    for state in [
        ObservedState::Running,
        ObservedState::Stopped,
        ObservedState::Error,
    ] {
        let count = vps.iter().filter(|v| v.state == state).count();
        let _ = writeln!(
            out,
            "paddock_agent_vps{{state=\"{}\"}} {count}",
            state_name(state)
        );
    }
    let names: BTreeMap<&str, &str> = vps
        .iter()
        .map(|v| (v.vps_id.as_str(), v.hostname.as_str()))
        .collect();
    let labels = |sample: &Sample| {
        format!(
            "vps_id=\"{}\",name=\"{}\"",
            escape(&sample.vps_id),
            escape(names.get(sample.vps_id.as_str()).copied().unwrap_or(""))
        )
    };
    // A stopped VPS has no cgroup and no port: only its disk is there to count.
    let running: Vec<&Sample> = usage
        .iter()
        .filter(|s| s.incarnation != STOPPED_INCARNATION)
        .collect();
    for (name, kind, help, value) in RUNNING_USAGE {
        family(out, name, kind, help);
        for sample in &running {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(sample), value(sample));
        }
    }
    family(
        out,
        "paddock_agent_vps_disk_used_bytes",
        "gauge",
        "Bytes allocated to the VPS's disk image.",
    );
    for sample in usage {
        let _ = writeln!(
            out,
            "paddock_agent_vps_disk_used_bytes{{{}}} {}",
            labels(sample),
            sample.disk_used_bytes
        );
    }
}

fn state_name(state: ObservedState) -> &'static str {
    match state {
        ObservedState::Running => "running",
        ObservedState::Stopped => "stopped",
        ObservedState::Error => "error",
    }
}

/// Counts and times every RPC of the agent's gRPC server by method and status code
/// ([`paddock_telemetry::RpcLayer`]).
#[derive(Clone)]
pub struct RpcMetrics(pub Arc<Metrics>);

impl paddock_telemetry::RpcObserver for RpcMetrics {
    type Call = ();

    fn started<B>(&self, _method: &str, _request: &mut http::Request<B>) {}

    fn finished(
        &self,
        (): (),
        method: String,
        code: String,
        elapsed: Duration,
    ) -> impl Future<Output = ()> + Send {
        self.0.observe_rpc(&method, &code, elapsed);
        std::future::ready(())
    }
}

/// The layer that puts [`RpcMetrics`] around the agent's gRPC server.
pub fn rpc_layer(metrics: Arc<Metrics>) -> paddock_telemetry::RpcLayer<RpcMetrics> {
    paddock_telemetry::RpcLayer::new(RpcMetrics(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::IoCounters;

    fn observed(vps_id: &str, hostname: &str, state: ObservedState) -> VpsObserved {
        VpsObserved {
            vps_id: vps_id.to_owned(),
            hostname: hostname.to_owned(),
            state,
            init_pid: (state == ObservedState::Running).then_some(42),
            message: String::new(),
        }
    }

    #[test]
    fn renders_a_known_state_exactly() {
        let metrics = Metrics::default();
        let apply = "/paddock.v1.NodeAgent/ApplyVps";
        metrics.observe_rpc(apply, "Ok", Duration::from_millis(20));
        metrics.observe_rpc(apply, "Ok", Duration::from_secs(3));
        metrics.observe_rpc(
            "/paddock.v1.NodeAgent/DeleteVps",
            "Internal",
            Duration::from_millis(1),
        );
        metrics.observe_registration(tonic::Code::Unavailable);
        metrics.observe_registration(tonic::Code::Ok);
        metrics.observe_heartbeat(tonic::Code::Ok);
        metrics.observe_heartbeat(tonic::Code::Ok);
        metrics.observe_heartbeat(tonic::Code::DeadlineExceeded);
        let vps = [
            observed("vps-a", "web1", ObservedState::Running),
            observed("vps-b", "db1", ObservedState::Stopped),
        ];
        let usage = [
            Sample {
                vps_id: "vps-a".to_owned(),
                incarnation: "77-12345".to_owned(),
                cpu_usage_ns: 1_500_000_000,
                memory_bytes: 64 << 20,
                io: IoCounters {
                    read_bytes: 4096,
                    write_bytes: 8192,
                    ..IoCounters::default()
                },
                net_rx_bytes: 1000,
                net_tx_bytes: 2000,
                disk_used_bytes: 300 << 20,
                ..Sample::default()
            },
            Sample {
                vps_id: "vps-b".to_owned(),
                incarnation: STOPPED_INCARNATION.to_owned(),
                disk_used_bytes: 100 << 20,
                ..Sample::default()
            },
        ];
        let expected = r#"# HELP paddock_agent_grpc_requests_total RPCs from the controller by method and status code.
# TYPE paddock_agent_grpc_requests_total counter
paddock_agent_grpc_requests_total{method="/paddock.v1.NodeAgent/ApplyVps",code="Ok"} 2
paddock_agent_grpc_requests_total{method="/paddock.v1.NodeAgent/DeleteVps",code="Internal"} 1
# HELP paddock_agent_grpc_request_duration_seconds RPC latency by method (for streams: until the stream opens).
# TYPE paddock_agent_grpc_request_duration_seconds histogram
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.005"} 0
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.01"} 0
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.025"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.05"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.1"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.25"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="0.5"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="1"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="2.5"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="5"} 2
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="10"} 2
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="30"} 2
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="60"} 2
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/ApplyVps",le="+Inf"} 2
paddock_agent_grpc_request_duration_seconds_sum{method="/paddock.v1.NodeAgent/ApplyVps"} 3.02
paddock_agent_grpc_request_duration_seconds_count{method="/paddock.v1.NodeAgent/ApplyVps"} 2
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.005"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.01"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.025"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.05"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.1"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.25"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="0.5"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="1"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="2.5"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="5"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="10"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="30"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="60"} 1
paddock_agent_grpc_request_duration_seconds_bucket{method="/paddock.v1.NodeAgent/DeleteVps",le="+Inf"} 1
paddock_agent_grpc_request_duration_seconds_sum{method="/paddock.v1.NodeAgent/DeleteVps"} 0.001
paddock_agent_grpc_request_duration_seconds_count{method="/paddock.v1.NodeAgent/DeleteVps"} 1
# HELP paddock_agent_registrations_total Registration attempts by the controller's answer (code="Ok": registered).
# TYPE paddock_agent_registrations_total counter
paddock_agent_registrations_total{code="Ok"} 1
paddock_agent_registrations_total{code="Unavailable"} 1
# HELP paddock_agent_heartbeats_total Heartbeats sent by the controller's answer (code="Ok": delivered).
# TYPE paddock_agent_heartbeats_total counter
paddock_agent_heartbeats_total{code="DeadlineExceeded"} 1
paddock_agent_heartbeats_total{code="Ok"} 2
# HELP paddock_agent_vps VPSes on this node by observed state.
# TYPE paddock_agent_vps gauge
paddock_agent_vps{state="running"} 1
paddock_agent_vps{state="stopped"} 1
paddock_agent_vps{state="error"} 0
# HELP paddock_agent_vps_cpu_seconds_total CPU time used by the VPS since it started.
# TYPE paddock_agent_vps_cpu_seconds_total counter
paddock_agent_vps_cpu_seconds_total{vps_id="vps-a",name="web1"} 1.5
# HELP paddock_agent_vps_memory_bytes Memory used by the VPS (its cgroup's usage, page cache included).
# TYPE paddock_agent_vps_memory_bytes gauge
paddock_agent_vps_memory_bytes{vps_id="vps-a",name="web1"} 67108864
# HELP paddock_agent_vps_io_read_bytes_total Bytes read from the VPS's disk since it started.
# TYPE paddock_agent_vps_io_read_bytes_total counter
paddock_agent_vps_io_read_bytes_total{vps_id="vps-a",name="web1"} 4096
# HELP paddock_agent_vps_io_write_bytes_total Bytes written to the VPS's disk since it started.
# TYPE paddock_agent_vps_io_write_bytes_total counter
paddock_agent_vps_io_write_bytes_total{vps_id="vps-a",name="web1"} 8192
# HELP paddock_agent_vps_net_rx_bytes_total Bytes the VPS received on its network port since it started.
# TYPE paddock_agent_vps_net_rx_bytes_total counter
paddock_agent_vps_net_rx_bytes_total{vps_id="vps-a",name="web1"} 1000
# HELP paddock_agent_vps_net_tx_bytes_total Bytes the VPS sent on its network port since it started.
# TYPE paddock_agent_vps_net_tx_bytes_total counter
paddock_agent_vps_net_tx_bytes_total{vps_id="vps-a",name="web1"} 2000
# HELP paddock_agent_vps_disk_used_bytes Bytes allocated to the VPS's disk image.
# TYPE paddock_agent_vps_disk_used_bytes gauge
paddock_agent_vps_disk_used_bytes{vps_id="vps-a",name="web1"} 314572800
paddock_agent_vps_disk_used_bytes{vps_id="vps-b",name="db1"} 104857600
"#;
        let text = metrics.render(Some(&vps), &usage);
        for (line, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {}", line + 1);
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn unlisted_vpses_are_left_out_not_zero() {
        let text = Metrics::default().render(None, &[]);
        assert!(text.contains("# TYPE paddock_agent_heartbeats_total counter\n"));
        assert!(!text.contains("paddock_agent_vps"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let vps = [observed("vps-a", "a\"b\\c\nd", ObservedState::Running)];
        let usage = [Sample {
            vps_id: "vps-a".to_owned(),
            ..Sample::default()
        }];
        let text = Metrics::default().render(Some(&vps), &usage);
        assert!(
            text.contains(
                "paddock_agent_vps_disk_used_bytes{vps_id=\"vps-a\",name=\"a\\\"b\\\\c\\nd\"} 0\n"
            ),
            "{text}"
        );
    }
}
