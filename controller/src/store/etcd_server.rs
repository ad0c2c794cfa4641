//! Test harness: a private single-member etcd (Debian's `etcd-server`) on free loopback ports,
//! killed when dropped. Used by the store's unit tests and included by the controller's
//! integration tests (`#[path]`), so it depends on nothing in the crate.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running etcd with its data in a temp dir.
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    /// Its client URL.
    pub endpoint: String,
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Reaped here: PID 1 of a test container may not reap orphans.
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// Whether a missing etcd fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("PADDOCK_REQUIRE_PRIVILEGED").is_ok_and(|value| value == "1")
}

impl EtcdServer {
    /// Starts etcd and waits until it reports healthy; `None` (the test skips) when the
    /// binary is missing, which fails instead under `PADDOCK_REQUIRE_PRIVILEGED=1`.
    pub fn start() -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            assert!(
                !required(),
                "etcd is not installed (scripts/deps.sh installs etcd-server)"
            );
            eprintln!("skipping: etcd is not installed (scripts/deps.sh installs etcd-server)");
            return None;
        };
        // A port taken between choosing and binding makes etcd exit: try a few times.
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let client = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let log_path = dir.path().join("etcd.log");
            let log = std::fs::File::create(&log_path).expect("etcd log");
            let child = Command::new(&binary)
                .arg("--name=test")
                .arg(format!("--data-dir={}", dir.path().join("data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=test={peer}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("etcd log"))
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let mut server = Self {
                child,
                dir,
                endpoint: client,
            };
            if server.wait_healthy() {
                return Some(server);
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        panic!("etcd did not start; its last log:\n{last_log}");
    }

    /// Polls `/health` until etcd answers healthy; false once it exited.
    fn wait_healthy(&mut self) -> bool {
        EtcdServerProbe {
            child: &mut self.child,
            endpoint: &self.endpoint,
        }
        .wait_healthy()
    }

    /// Where its data and log are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// One member of an [`EtcdCluster`].
pub struct Member {
    child: Child,
    /// Its client URL.
    pub endpoint: String,
    stopped: bool,
}

/// A private etcd cluster of several members on loopback ports, each with its own data dir;
/// every member is killed when dropped (a stopped one is continued first).
pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.cont(index);
            let member = &mut self.members[index];
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy (a quorum elected a
    /// leader); `None` (the test skips) when etcd is missing, as [`EtcdServer::start`].
    pub fn start(size: usize) -> Option<Self> {
        let Some(binary) = etcd_binary() else {
            assert!(
                !required(),
                "etcd is not installed (scripts/deps.sh installs etcd-server)"
            );
            eprintln!("skipping: etcd is not installed (scripts/deps.sh installs etcd-server)");
            return None;
        };
        let mut last_logs = String::new();
        for attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let ports: Vec<(String, String)> = (0..size)
                .map(|_| {
                    (
                        format!("http://127.0.0.1:{}", free_port()),
                        format!("http://127.0.0.1:{}", free_port()),
                    )
                })
                .collect();
            let initial: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(index, (_, peer))| format!("m{index}={peer}"))
                .collect();
            let token = format!("paddock-test-{}-{attempt}", std::process::id());
            let mut members = Vec::new();
            for (index, (client, peer)) in ports.iter().enumerate() {
                let log_path = dir.path().join(format!("etcd-{index}.log"));
                let log = std::fs::File::create(&log_path).expect("etcd log");
                let child = Command::new(&binary)
                    .arg(format!("--name=m{index}"))
                    .arg(format!(
                        "--data-dir={}",
                        dir.path().join(format!("data-{index}")).display()
                    ))
                    .arg(format!("--listen-client-urls={client}"))
                    .arg(format!("--advertise-client-urls={client}"))
                    .arg(format!("--listen-peer-urls={peer}"))
                    .arg(format!("--initial-advertise-peer-urls={peer}"))
                    .arg(format!("--initial-cluster={}", initial.join(",")))
                    .arg("--initial-cluster-state=new")
                    .arg(format!("--initial-cluster-token={token}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("etcd log"))
                    .stderr(log)
                    .spawn()
                    .expect("spawn etcd");
                members.push(Member {
                    child,
                    endpoint: client.clone(),
                    stopped: false,
                });
            }
            let mut cluster = Self { members, dir };
            if (0..size).all(|index| cluster.wait_healthy(index)) {
                return Some(cluster);
            }
            last_logs = (0..size)
                .map(|index| {
                    std::fs::read_to_string(cluster.dir.path().join(format!("etcd-{index}.log")))
                        .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join("\n----\n");
        }
        panic!("the etcd cluster did not start; its last logs:\n{last_logs}");
    }

    fn wait_healthy(&mut self, index: usize) -> bool {
        let member = &mut self.members[index];
        let mut probe = EtcdServerProbe {
            child: &mut member.child,
            endpoint: &member.endpoint,
        };
        probe.wait_healthy()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// Freezes member `index` (SIGSTOP): it holds its connections but answers nothing, as a
    /// partitioned member would.
    pub fn stop(&mut self, index: usize) {
        let member = &mut self.members[index];
        signal(member.child.id(), "STOP");
        member.stopped = true;
    }

    /// Lets a stopped member run again (SIGCONT).
    pub fn cont(&mut self, index: usize) {
        let member = &mut self.members[index];
        if member.stopped {
            signal(member.child.id(), "CONT");
            member.stopped = false;
        }
    }

    /// Where the members' data and logs are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The health check of one etcd process.
struct EtcdServerProbe<'a> {
    child: &'a mut Child,
    endpoint: &'a str,
}

impl EtcdServerProbe<'_> {
    fn wait_healthy(&mut self) -> bool {
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        for _ in 0..600 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(&host) {
                let request = format!("GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n");
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.contains("\"health\":\"true\"")
                {
                    return true;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    }
}
