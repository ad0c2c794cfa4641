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
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        // Bounded (a minute) so a wedged etcd fails the test instead of hanging it.
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

    /// Where its data and log are.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
