//! The real `paddock-controller` binary as a child process, for tests that
//! kill and restart it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use paddock_proto::v1;
use tonic::transport::Channel;
use tonic::Request;

use super::{connect, enrol, tls_endpoint, with_token};

const CONTROLLER: &str = env!("CARGO_BIN_EXE_paddock-controller");

/// An initialized data dir and config for one controller.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub admin: String,
    pub join: String,
    pub ca_pem: String,
}

/// A running controller; killed (SIGKILL) when dropped.
pub struct Daemon(Child);

impl Daemon {
    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies a directory tree, keeping file modes (the keys are 0600).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    let mode = std::fs::metadata(from).expect("stat").permissions();
    std::fs::set_permissions(to, mode).expect("chmod");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

impl Setup {
    /// Writes a config with private ports and runs `paddock-controller init`.
    pub fn init() -> Self {
        Self::init_with("")
    }

    /// Like [`Setup::init`], with `extra` lines appended to the config.
    pub fn init_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nreconcile_interval_secs = 60\n{extra}\n",
                free_port(),
                dir.path().join("data").display()
            ),
        )
        .expect("config");
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
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .expect("read")
                .trim()
                .to_owned()
        };
        let join = read(&dir.path().join("data/join-token"));
        let ca_pem = read(&dir.path().join("data/tls/ca.crt"));
        Self {
            dir,
            config,
            port,
            admin,
            join,
            ca_pem,
        }
    }

    /// Another controller of the same installation (several controllers on one etcd): its
    /// own dir and ports, a copy of this one's data dir (CA, certificates, join token; the
    /// state is in the shared store), `extra` config lines.
    pub fn replica(&self, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        copy_dir(&self.dir.path().join("data"), &data);
        let config = dir.path().join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nreconcile_interval_secs = 60\n{extra}\n",
                free_port(),
                data.display()
            ),
        )
        .expect("config");
        Self {
            dir,
            config,
            port,
            admin: self.admin.clone(),
            join: self.join.clone(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// Starts the controller and connects to it.
    pub async fn launch(&self) -> (Daemon, Channel) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))
            .expect("log");
        let child = Command::new(CONTROLLER)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn controller");
        let daemon = Daemon(child);
        let channel = connect(&tls_endpoint(self.port, &self.ca_pem, None)).await;
        (daemon, channel)
    }

    /// Enrols and registers a roomy node with an unreachable agent, gives it
    /// a pool, and creates tenant `acme` with a large quota.
    pub async fn populate(&self, channel: &Channel) {
        let identity = enrol(channel.clone(), &self.join, "node-a").await;
        let node = connect(&tls_endpoint(self.port, &self.ca_pem, Some(identity))).await;
        v1::agent_registry_client::AgentRegistryClient::new(node)
            .register(Request::new(v1::RegisterRequest {
                node_name: "node-a".into(),
                address: "https://127.0.0.1:9".into(),
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
                &self.admin,
            ))
            .await
            .expect("pool");
        v1::tenant_service_client::TenantServiceClient::new(channel.clone())
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
                &self.admin,
            ))
            .await
            .expect("tenant");
    }
}
