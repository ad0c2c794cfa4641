//! Shared by the network tests and the throughput bench: network namespaces
//! held by a process (as a VPS's init holds its own), a bridge of our own, and
//! TCP transfers whose ends live in those namespaces.

#![allow(dead_code)]

pub mod packet;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use paddock_agent::network::{HostPort, IfAddr, Isolation, Network, NetworkConfig, PortSpec};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A process alone in a new network namespace; killed on drop (the namespace goes with it).
pub struct Netns {
    child: Child,
}

impl Netns {
    pub fn new() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare --net (util-linux)");
        let netns = Self { child };
        // Wait until the child has entered its namespace.
        let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        for _ in 0..100 {
            if std::fs::read_link(netns.path()).is_ok_and(|theirs| theirs != ours) {
                return netns;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("unshare did not enter a new network namespace");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs `f` on a fresh thread inside this namespace (sockets it opens stay there).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Runs a command inside this namespace (via nsenter) and returns whether it succeeded.
    pub fn command(&self, args: &[&str]) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs a command inside this namespace and returns its stdout (empty if it failed to start).
    pub fn output(&self, args: &[&str]) -> String {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A unique bridge name and private /24 prefix (`10.A.B`) for one test.
pub fn unique_names(tag: char) -> (String, String) {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    (
        format!("pdkt{}{tag}{n}", pid % 10000),
        format!("10.{}.{}", 250 - pid % 40, 200 + n % 50),
    )
}

/// Starts a `Network` on its own bridge; the returned guard removes the
/// bridge and its tables even if the test panics.
pub async fn network(bridge: &str, state: &tempfile::TempDir) -> (Network, BridgeGuard) {
    network_with(config(bridge, state)).await
}

/// The configuration `network` uses: no uplink, no forwarding, no host port
/// open to VPSes, tenants isolated.
pub fn config(bridge: &str, state: &tempfile::TempDir) -> NetworkConfig {
    NetworkConfig {
        bridge: bridge.to_owned(),
        uplink: None,
        ip_forward: false,
        port_gso_max_bytes: None,
        state_dir: state.path().join("network"),
        host_ports_open_to_vps: Vec::<HostPort>::new(),
        vps_isolation: Isolation::Tenant,
    }
}

/// Like `network`, with a configuration of the test's own.
pub async fn network_with(config: NetworkConfig) -> (Network, BridgeGuard) {
    let guard = BridgeGuard(config.bridge.clone());
    let network = Network::start(config, &[]).await.expect("network start");
    (network, guard)
}

/// Removes a test bridge, its nft tables and every link marked for it.
pub struct BridgeGuard(pub String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let marker = format!("paddock:{}:", self.0);
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(&marker) {
                    if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                        let _ = Command::new("ip").args(["link", "del", name]).output();
                    }
                }
            }
        }
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
        for family in ["bridge", "inet", "ip"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &format!("paddock_{}", self.0)])
                .output();
        }
    }
}

/// A port spec for host number `host` in `10.A.B.0/24`, gateway `.1`.
pub fn port(vps_id: &str, subnet: &str, host: u8, egress_bps: u64, ingress_bps: u64) -> PortSpec {
    PortSpec {
        vps_id: vps_id.to_owned(),
        mac: format!("02:00:00:aa:00:{host:02x}").parse().expect("mac"),
        addresses: vec![format!("{subnet}.{host}/24")
            .parse::<IfAddr>()
            .expect("addr")],
        gateway: Some(format!("{subnet}.1").parse().expect("gw")),
        gateway6: None,
        ingress_bps,
        egress_bps,
        nat: false,
        pool: Some(format!("{subnet}.0/24").parse().expect("pool")),
        tenant: "tenant-a".to_owned(),
    }
}

/// Adds `<v6_prefix>::<host>/64` to `spec`, with `<v6_prefix>::1` as the IPv6 gateway.
pub fn dual_stack(mut spec: PortSpec, v6_prefix: &str, host: u8) -> PortSpec {
    spec.addresses
        .push(format!("{v6_prefix}::{host:x}/64").parse().expect("v6"));
    spec.gateway6 = Some(format!("{v6_prefix}::1").parse().expect("gw6"));
    spec
}

/// Bytes per second a receiver got over `duration`, after a `warmup` that is not counted.
pub fn measure(
    listener: TcpListener,
    connect: impl FnOnce(SocketAddr) -> std::thread::JoinHandle<()>,
    warmup: Duration,
    duration: Duration,
) -> f64 {
    let address = listener.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buffer = vec![0u8; 256 * 1024];
        let start = Instant::now();
        let mut counted = 0u64;
        let mut counting_since = None;
        while start.elapsed() < warmup + duration {
            let n = match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if start.elapsed() >= warmup {
                counting_since.get_or_insert_with(Instant::now);
                counted += n as u64;
            }
        }
        let seconds = counting_since.map_or(1.0, |since| since.elapsed().as_secs_f64());
        counted as f64 / seconds
    });
    let sender = connect(address);
    let rate = receiver.join().expect("receiver");
    let _ = sender.join();
    rate
}

/// Sends zeros to `address` until the receiver closes or `limit` passes.
pub fn blast(address: SocketAddr, limit: Duration) {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5)) else {
        return;
    };
    let buffer = vec![0u8; 128 * 1024];
    let start = Instant::now();
    while start.elapsed() < limit {
        if stream.write_all(&buffer).is_err() {
            return;
        }
    }
}
