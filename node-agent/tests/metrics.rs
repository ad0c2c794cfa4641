//! The agent's metrics endpoint over real TCP: RPCs through a real gRPC server with the metrics
//! layer, and the usage of a real running VPS as a scrape reads it. The VPS test needs root;
//! with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use paddock_agent::metering::Meter;
use paddock_agent::metrics::{self, Metrics};
use paddock_agent::runtime::Runtime;
use paddock_agent::service::AgentService;
use paddock_proto::v1;
use paddock_proto::v1::node_agent_client::NodeAgentClient;
use paddock_proto::v1::node_agent_server::NodeAgentServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `metrics` for `runtime` on a free loopback port, as the agent does.
async fn serve_metrics(
    metrics: Arc<Metrics>,
    runtime: Arc<Runtime>,
    meter: Arc<Meter>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let scrape = Arc::new(move || metrics.scrape(&runtime, &meter));
    (
        addr,
        tokio::spawn(paddock_telemetry::serve(listener, scrape)),
    )
}

/// One HTTP/1.1 GET over a fresh connection: (status line, body).
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("scrape timed out")
    .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The value of the series `series` (name and labels exactly), failing if it is absent.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
        .parse()
        .expect("numeric value")
}

#[tokio::test]
async fn rpcs_are_counted_by_method_and_code_and_scraped_over_tcp() {
    let state_dir = tempfile::tempdir().expect("state dir");
    let runtime = Arc::new(
        Runtime::new(config(state_dir.path(), &unique("paddock-metrics"))).expect("runtime"),
    );
    let metrics = Arc::new(Metrics::default());
    let meter = Arc::new(
        Meter::new(
            runtime.clone(),
            None,
            state_dir.path(),
            Duration::from_secs(10),
        )
        .expect("meter"),
    );

    // The agent's gRPC service behind the metrics layer, over plain TCP: with no client
    // certificate every call is refused as Unauthenticated, which the layer must count.
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let grpc_addr = grpc.local_addr().expect("local addr");
    let (stop_grpc, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = AgentService::new(runtime.clone(), state_dir.path().to_owned());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(metrics::rpc_layer(metrics.clone()))
            .add_service(NodeAgentServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let mut client = NodeAgentClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect to the agent service");
    for _ in 0..2 {
        let status = client
            .list_vps(v1::Empty {})
            .await
            .expect_err("no client certificate");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    let status = client
        .delete_vps(v1::AgentVpsRef {
            vps_id: "vps-x".to_owned(),
        })
        .await
        .expect_err("no client certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let (addr, endpoint) = serve_metrics(metrics.clone(), runtime.clone(), meter).await;
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let list = "/paddock.v1.NodeAgent/ListVps";
    let delete = "/paddock.v1.NodeAgent/DeleteVps";
    assert_eq!(
        value(
            &body,
            &format!(
                "paddock_agent_grpc_requests_total{{method=\"{list}\",code=\"Unauthenticated\"}}"
            )
        ),
        2.0
    );
    assert_eq!(
        value(
            &body,
            &format!(
                "paddock_agent_grpc_requests_total{{method=\"{delete}\",code=\"Unauthenticated\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        value(
            &body,
            &format!("paddock_agent_grpc_request_duration_seconds_count{{method=\"{list}\"}}")
        ),
        2.0
    );
    assert_eq!(
        value(
            &body,
            &format!(
                "paddock_agent_grpc_request_duration_seconds_bucket{{method=\"{list}\",le=\"+Inf\"}}"
            )
        ),
        2.0
    );
    // An empty node: every state is there, at zero.
    for state in ["running", "stopped", "error"] {
        assert_eq!(
            value(&body, &format!("paddock_agent_vps{{state=\"{state}\"}}")),
            0.0
        );
    }
    assert!(body.contains("# TYPE paddock_agent_heartbeats_total counter\n"));

    let (status, body) = get(addr, "/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, "");

    endpoint.abort();
    let _ = stop_grpc.send(());
    server.await.expect("gRPC task").expect("gRPC server");
}

#[test]
fn a_running_vps_usage_is_scraped() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let vps_spec = spec(&vps_id, small_limits());
    let pid = running_pid(&fixture.runtime.apply(&vps_spec).expect("apply"));
    sh_ok(
        &fixture.runtime,
        &vps_id,
        "dd if=/dev/zero of=/root/blob bs=1M count=4 2>/dev/null && sync",
    );
    // The agent's runtime, as after a restart: the scrape reads what the kernel counts.
    let runtime = Arc::new(fixture.restarted_runtime());
    let meter = Arc::new(
        Meter::new(
            runtime.clone(),
            None,
            fixture.state_dir.path(),
            Duration::from_secs(10),
        )
        .expect("meter"),
    );
    let metrics = Arc::new(Metrics::default());
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (addr, endpoint) = tokio.block_on(serve_metrics(metrics, runtime.clone(), meter.clone()));

    let (status, body) = tokio.block_on(get(addr, "/metrics"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(value(&body, "paddock_agent_vps{state=\"running\"}"), 1.0);
    let labels = format!("{{vps_id=\"{vps_id}\",name=\"{}\"}}", vps_spec.hostname);
    let usage = |name: &str| value(&body, &format!("{name}{labels}"));
    assert!(usage("paddock_agent_vps_cpu_seconds_total") > 0.0);
    assert!(usage("paddock_agent_vps_memory_bytes") > 0.0);
    assert!(usage("paddock_agent_vps_disk_used_bytes") > 0.0);
    // Present for every running VPS even when nothing was counted (no network port here).
    usage("paddock_agent_vps_io_read_bytes_total");
    usage("paddock_agent_vps_io_write_bytes_total");
    assert_eq!(usage("paddock_agent_vps_net_rx_bytes_total"), 0.0);
    assert_eq!(usage("paddock_agent_vps_net_tx_bytes_total"), 0.0);

    // Scraping used no metering round and no sequence number: billing's first sample is next.
    let listed = runtime.list().expect("list");
    let due = meter.due_samples(&listed).expect("samples");
    assert_eq!(
        due.iter().map(|s| s.sequence).collect::<Vec<_>>(),
        vec![1],
        "{due:?}"
    );

    // A deleted VPS leaves the scrape, and nothing of it is left on the host.
    fixture.runtime.delete(&vps_id).expect("delete");
    let (_, body) = tokio.block_on(get(addr, "/metrics"));
    assert_eq!(value(&body, "paddock_agent_vps{state=\"running\"}"), 0.0);
    assert!(!body.contains(&vps_id), "{body}");
    endpoint.abort();
    fixture.assert_gone(&vps_id, &[pid]);
}
