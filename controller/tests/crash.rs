//! `kill -9` of the real controller binary while 200 creates are in flight:
//! after a restart, every create that was answered OK exists, the store opens
//! cleanly, and the tenant's recorded usage equals the sum of what exists.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use paddock_proto::v1;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const CONTROLLER: &str = env!("CARGO_BIN_EXE_paddock-controller");

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii");
    request.metadata_mut().insert("authorization", value);
    request
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

async fn launch(
    config: &std::path::Path,
    port: u16,
    log: &std::path::Path,
    ca_pem: &str,
) -> (Daemon, Channel) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = Command::new(CONTROLLER)
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn controller");
    let daemon = Daemon(child);
    let endpoint = common::tls_endpoint(port, ca_pem, None);
    (daemon, common::connect(&endpoint).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n# no metrics endpoint in tests\nreconcile_interval_secs = 60\n",
            dir.path().join("data").display()
        )
        .replace("# no metrics endpoint in tests\n", ""),
    )
    .expect("config");
    // metrics_listen has a default port; give this controller its own.
    let mut text = std::fs::read_to_string(&config).expect("read");
    text.push_str(&format!("metrics_listen = \"127.0.0.1:{}\"\n", free_port()));
    std::fs::write(&config, text).expect("write");
    let init = Command::new(CONTROLLER)
        .arg("--config")
        .arg(&config)
        .arg("init")
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let admin = String::from_utf8(init.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let join = std::fs::read_to_string(dir.path().join("data/join-token"))
        .expect("join")
        .trim()
        .to_owned();
    let log = dir.path().join("controller.log");

    let ca_pem = std::fs::read_to_string(dir.path().join("data/tls/ca.crt")).expect("ca");
    let (daemon, channel) = launch(&config, port, &log, &ca_pem).await;
    let identity = common::enrol(channel.clone(), &join, "node-a").await;
    let node = common::connect(&common::tls_endpoint(port, &ca_pem, Some(identity))).await;
    v1::agent_registry_client::AgentRegistryClient::new(node)
        .register(Request::new(v1::RegisterRequest {
            node_name: "node-a".into(),
            address: "http://127.0.0.1:9".into(),
            capacity: Some(v1::NodeCapacityReport {
                vcpus: 512.0,
                memory_bytes: 1 << 42,
                disk_bytes: 1 << 46,
            }),
            agent_version: "test".into(),
        }))
        .await
        .expect("register");
    v1::pool_service_client::PoolServiceClient::new(channel.clone())
        .create_pool(with_token(
            v1::CreatePoolRequest {
                pool: Some(v1::Pool {
                    name: "pool-a".into(),
                    node: "node-a".into(),
                    cidr: "10.201.0.0/16".into(),
                    gateway: "10.201.0.1".into(),
                    ..Default::default()
                }),
            },
            &admin,
        ))
        .await
        .expect("pool");
    let mut tenants = v1::tenant_service_client::TenantServiceClient::new(channel.clone());
    tenants
        .create_tenant(with_token(
            v1::CreateTenantRequest {
                name: "acme".into(),
                quota: Some(v1::Quota {
                    max_vps: 1000,
                    vcpus: 1000.0,
                    memory_bytes: 1 << 42,
                    disk_bytes: 1 << 46,
                    ipv4_count: 1000,
                }),
            },
            &admin,
        ))
        .await
        .expect("tenant");

    // 200 creates in flight; the controller is killed part-way through.
    let channel = Arc::new(channel);
    let admin = Arc::new(admin);
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (channel, admin, acked) = (channel.clone(), admin.clone(), acked.clone());
            tokio::spawn(async move {
                let name = format!("vps{i}");
                let result = v1::vps_service_client::VpsServiceClient::new((*channel).clone())
                    .create_vps(with_token(
                        v1::CreateVpsRequest {
                            tenant: "acme".into(),
                            name: name.clone(),
                            plan: "nano".into(),
                            start: true,
                            ..Default::default()
                        },
                        &admin,
                    ))
                    .await;
                if result.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                (name, result.is_ok())
            })
        })
        .collect();
    // Kill once a good share has been acknowledged, with many still in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 60 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut daemon = daemon;
    daemon.0.kill().expect("kill -9");
    let _ = daemon.0.wait();
    let mut acknowledged = Vec::new();
    for task in tasks {
        let (name, ok) = task.await.expect("join");
        if ok {
            acknowledged.push(name);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "no create was acknowledged before the kill"
    );

    let (_daemon, channel) = launch(&config, port, &log, &ca_pem).await;
    let mut vps = v1::vps_service_client::VpsServiceClient::new(channel.clone());
    for name in &acknowledged {
        vps.get_vps(with_token(
            v1::VpsRef {
                tenant: "acme".into(),
                name: name.clone(),
            },
            &admin,
        ))
        .await
        .unwrap_or_else(|status| panic!("acknowledged create of {name} was lost: {status:?}"));
    }
    let existing = vps
        .list_vps(with_token(
            v1::ListVpsRequest {
                tenant: "acme".into(),
                page: None,
            },
            &admin,
        ))
        .await
        .expect("list")
        .into_inner()
        .vps;
    let tenant = v1::tenant_service_client::TenantServiceClient::new(channel)
        .get_tenant(with_token(
            v1::GetTenantRequest {
                name: "acme".into(),
            },
            &admin,
        ))
        .await
        .expect("tenant")
        .into_inner();
    let used = tenant.used.expect("used");
    assert_eq!(
        used.max_vps as usize,
        existing.len(),
        "usage matches what exists"
    );
    let memory: u64 = existing
        .iter()
        .map(|v| v.resources.as_ref().map_or(0, |r| r.memory_bytes))
        .sum();
    assert_eq!(used.memory_bytes, memory);
    assert_eq!(
        used.ipv4_count as usize,
        existing.iter().map(|v| v.ipv4.len()).sum::<usize>()
    );
    eprintln!(
        "{} of 200 creates acknowledged before kill -9; {} exist after restart",
        acknowledged.len(),
        existing.len()
    );
}
