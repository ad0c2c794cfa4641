//! TCP throughput between two network namespaces, measured by one tool on every path: a
//! sender and a receiver thread of this process, each entered (setns) into its namespace, so
//! loopback, plain veths and VPS ports are compared with the very same code.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns only reads the fd, which `file` keeps open for the call; it changes the
    // network namespace of this thread alone (a thread of our own, never a pool's).
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", path.display()));
    }
    Ok(())
}

/// What a transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Payload bytes the receiver counted in its window.
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    pub fn bits_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds
    }
}

/// Sends as fast as TCP allows from `sender_ns` to `receiver_ip` in `receiver_ns` (`None`:
/// this process's namespace) for `warmup + window`; the receiver counts bytes in `window` only.
pub fn tcp_throughput(
    receiver_ns: Option<PathBuf>,
    receiver_ip: IpAddr,
    sender_ns: Option<PathBuf>,
    warmup: Duration,
    window: Duration,
) -> Result<Transfer> {
    let (port_tx, port_rx) = mpsc::channel::<Result<u16>>();
    let receiver = std::thread::spawn(move || -> Result<Transfer> {
        let listener = (|| {
            if let Some(ns) = &receiver_ns {
                enter(ns)?;
            }
            let listener = TcpListener::bind(SocketAddr::new(receiver_ip, 0))
                .with_context(|| format!("binding {receiver_ip}"))?;
            anyhow::Ok(listener)
        })();
        let listener = match listener {
            Ok(listener) => {
                let _ = port_tx.send(Ok(listener.local_addr()?.port()));
                listener
            }
            Err(error) => {
                let _ = port_tx.send(Err(anyhow!("{error:#}")));
                return Err(error);
            }
        };
        let (mut stream, _) = listener.accept().context("accept")?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buffer = vec![0u8; 256 * 1024];
        let started = Instant::now();
        let mut counting: Option<Instant> = None;
        let mut bytes = 0u64;
        loop {
            let n = stream.read(&mut buffer).context("receiving")?;
            if n == 0 {
                break;
            }
            let now = Instant::now();
            if now - started >= warmup {
                let since = *counting.get_or_insert(now);
                if now - since >= window {
                    break;
                }
                bytes += n as u64;
            }
        }
        let seconds = counting.map_or(0.0, |since| since.elapsed().as_secs_f64());
        if bytes == 0 || seconds <= 0.0 {
            bail!("the receiver counted nothing");
        }
        Ok(Transfer { bytes, seconds })
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the receiver did not start"))??;
    let limit = warmup + window + Duration::from_secs(10);
    let sender = std::thread::spawn(move || -> Result<()> {
        if let Some(ns) = &sender_ns {
            enter(ns)?;
        }
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(receiver_ip, port), Duration::from_secs(5))
                .with_context(|| format!("connecting to {receiver_ip}:{port}"))?;
        let buffer = vec![0u8; 128 * 1024];
        let started = Instant::now();
        // Ends when the receiver closes (a write error) or at the safety limit.
        while started.elapsed() < limit {
            if stream.write_all(&buffer).is_err() {
                break;
            }
        }
        Ok(())
    });
    let transfer = receiver
        .join()
        .map_err(|_| anyhow!("the receiver thread panicked"))?;
    let sent = sender
        .join()
        .map_err(|_| anyhow!("the sender thread panicked"))?;
    let transfer = transfer?;
    sent?;
    Ok(transfer)
}

/// A process alone in a new network namespace (it holds the namespace); killed on drop.
pub struct Netns {
    child: Child,
}

impl Netns {
    pub fn new() -> Result<Self> {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("unshare --net (util-linux)")?;
        let netns = Self { child };
        let ours = std::fs::read_link("/proc/self/ns/net").context("own netns")?;
        for _ in 0..200 {
            if std::fs::read_link(netns.path()).is_ok_and(|theirs| theirs != ours) {
                return Ok(netns);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("unshare did not enter a new network namespace")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid()))
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let net = format!("--net={}", self.path().display());
        run(Command::new("nsenter")
            .args([net.as_str(), "--", "ip"])
            .args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ip ARGS` on the host, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} {:?}: {}",
            command.get_program(),
            command.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A bridge of the bench's own with two namespaces on it through veth pairs, `10.A.B.2` and
/// `.3`: the same path as two VPS ports minus the agent's filters and shaping. Drop removes
/// the bridge and the veths (their peers go with the namespaces).
pub struct PlainPair {
    pub bridge: String,
    pub first: Netns,
    pub second: Netns,
    pub subnet: String,
    veths: Vec<String>,
}

impl PlainPair {
    pub fn new(tag: &str, subnet: &str) -> Result<Self> {
        let mut pair = Self {
            bridge: format!("pdkn{tag}"),
            first: Netns::new()?,
            second: Netns::new()?,
            subnet: subnet.to_string(),
            veths: Vec::new(),
        };
        ip(&["link", "add", &pair.bridge, "type", "bridge"])?;
        ip(&["link", "set", &pair.bridge, "up"])?;
        for (index, host) in [(0, 2u8), (1, 3u8)] {
            let host_end = format!("pdkn{tag}v{index}");
            let pid = if index == 0 {
                pair.first.pid()
            } else {
                pair.second.pid()
            };
            ip(&[
                "link",
                "add",
                &host_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pid.to_string(),
            ])?;
            pair.veths.push(host_end.clone());
            ip(&["link", "set", &host_end, "master", &pair.bridge, "up"])?;
            let ns = if index == 0 {
                &pair.first
            } else {
                &pair.second
            };
            ns.ip(&["addr", "add", &format!("{subnet}.{host}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    pub fn first_ip(&self) -> Result<IpAddr> {
        Ok(format!("{}.2", self.subnet).parse()?)
    }
}

impl Drop for PlainPair {
    fn drop(&mut self) {
        for veth in &self.veths {
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
