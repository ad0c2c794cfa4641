//! Harness for end-to-end tests: runs the real `paddock-controller`,
//! `paddock-agent` and `paddock` binaries on loopback with private state.
//!
//! Every cluster gets its own ports, state dirs and cgroup parent, and its
//! `Drop` stops the processes and removes any VPS cgroup left behind, even
//! when the test panicked.

use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub mod multinode;
pub mod s3;
pub mod tcp;

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// Polls `check` every 200 ms until it holds; on timeout the error names `what` and carries
/// the last error `check` returned.
pub fn poll_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what} (last error: {last_error:?})")
}

/// Runs the CLI with the private config file `dir/cli.toml` (no controller or token from
/// the environment).
pub fn cli_in(dir: &Path, args: &[&str]) -> Result<Output> {
    Command::new(binary("paddock"))
        .args(args)
        .env("PADDOCK_CONFIG", dir.join("cli.toml"))
        .env_remove("PADDOCK_CONTROLLER")
        .env_remove("PADDOCK_TOKEN")
        .stdin(Stdio::null())
        .output()
        .context("running paddock")
}

/// Like [`cli_in`], but the command must succeed; returns its stdout.
pub fn cli_ok_in(dir: &Path, args: &[&str]) -> Result<String> {
    let output = cli_in(dir, args)?;
    if !output.status.success() {
        bail!(
            "paddock {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Like [`cli_ok_in`] with `-o json`, parsing stdout.
pub fn json_in(dir: &Path, args: &[&str]) -> Result<Value> {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let stdout = cli_ok_in(dir, &full)?;
    serde_json::from_str(&stdout)
        .with_context(|| format!("parsing JSON of `paddock {}`: {stdout}", args.join(" ")))
}

/// Whether this test may run: root is required; without it the test fails
/// under `PADDOCK_REQUIRE_PRIVILEGED=1` (CI) and is skipped loudly otherwise.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("this test needs root (PADDOCK_REQUIRE_PRIVILEGED=1 forbids skipping it)");
    }
    eprintln!("SKIPPED: this test needs root");
    false
}

/// Directory holding the built binaries: `PADDOCK_BIN_DIR`, else the cargo
/// target dir this test binary lives in (target/<profile>/deps/..).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PADDOCK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_owned()
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (`make test` does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// The text of `GET /metrics` on a loopback port.
pub fn scrape_metrics(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to the metrics endpoint on port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_owned())
        }
        _ => bail!("unexpected metrics response: {response}"),
    }
}

/// The value of the first sample of `family` whose labels contain `label`.
pub fn metric_value(text: &str, family: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")) && line.contains(label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited with {status}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on port {port} within 30 s")
}

/// Replaces the line of each `(key, value)` of `overrides` in the TOML file at `path` (its
/// top-level keys are one per line, before any table), or adds it.
fn override_config(path: &Path, overrides: &[(&str, &str)]) -> Result<()> {
    if overrides.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for (key, value) in overrides {
        let line = format!("{key} = {value}");
        let existing = lines
            .iter_mut()
            .find(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == *key));
        match existing {
            Some(existing) => *existing = line,
            None => lines.push(line),
        }
    }
    std::fs::write(path, lines.join("\n") + "\n")
        .with_context(|| format!("write {}", path.display()))
}

/// A controller and one agent, started from the real binaries.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controller_port: u16,
    pub agent_port: u16,
    /// The controller's Prometheus endpoint.
    pub metrics_port: u16,
    /// The (first) agent's Prometheus endpoint.
    pub agent_metrics_port: u16,
    pub cgroup_parent: String,
    /// The agent's bridge (unique per cluster, so tests never touch `pdk0`).
    pub bridge: String,
    /// The first three octets of the cluster's private /24 (`10.A.B`).
    pub subnet: String,
    pub node_name: String,
    pub admin_token: String,
    controller: Option<Child>,
    agent: Option<Child>,
    /// Agents added by `start_with_agents`, each a node of its own.
    extra_agents: Vec<ExtraAgent>,
}

/// A further node of the cluster: its own agent process, state, cgroup parent and bridge.
pub struct ExtraAgent {
    pub node_name: String,
    pub cgroup_parent: String,
    pub bridge: String,
    child: Child,
}

impl Cluster {
    /// A cluster whose controller has `agents` nodes (at least one).
    pub fn start_with_agents(agents: usize) -> Result<Self> {
        let mut cluster = Self::start()?;
        for index in 2..=agents {
            cluster.add_agent(index)?;
        }
        Ok(cluster)
    }

    /// Starts agent number `index` (2, 3, ...) as a new node with its own
    /// state, cgroup parent, bridge and /24 pool, and waits until it is online.
    fn add_agent(&mut self, index: usize) -> Result<()> {
        let root = self.dir.path().to_owned();
        let port = free_port();
        let node_name = format!("{}-{index}", self.node_name);
        let cgroup_parent = format!("{}-{index}", self.cgroup_parent);
        let bridge = format!("{}x{index}", self.bridge);
        let subnet_third: u32 = self
            .subnet
            .rsplit('.')
            .next()
            .and_then(|octet| octet.parse().ok())
            .unwrap_or(0);
        let prefix = self
            .subnet
            .rsplit_once('.')
            .map_or("10.99", |(head, _)| head);
        let subnet = format!("{prefix}.{}", (subnet_third + 100 * index as u32) % 250);
        let config = format!("agent-{index}.toml");
        std::fs::write(
            root.join(&config),
            format!(
                "node_name = \"{node_name}\"\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"off\"\ncontroller = \"https://127.0.0.1:{}\"\ncontroller_ca_file = \"{}\"\njoin_token_file = \"{}\"\nstate_dir = \"{}\"\ncgroup_parent = \"{cgroup_parent}\"\nstop_grace_secs = 3\nbridge = \"{bridge}\"\nip_forward = false\n",
                self.controller_port,
                root.join("controller/tls/ca.crt").display(),
                root.join("controller/join-token").display(),
                root.join(format!("agent-{index}")).display()
            ),
        )?;
        let template = Command::new(binary("paddock-agent"))
            .arg("--config")
            .arg(root.join(&config))
            .args(["template", "build", "busybox"])
            .output()
            .context("building the busybox template")?;
        if !template.status.success() {
            bail!(
                "template build failed: {}",
                String::from_utf8_lossy(&template.stderr)
            );
        }
        let log = format!("agent-{index}.log");
        let mut child = self.spawn_logged("paddock-agent", &config, &log)?;
        wait_for_port(port, &mut child, "agent", &root.join(&log))?;
        self.extra_agents.push(ExtraAgent {
            node_name: node_name.clone(),
            cgroup_parent,
            bridge,
            child,
        });
        self.wait_until("extra node registered", Duration::from_secs(30), |c| {
            let nodes = c.json(&["--context", "admin", "admin", "node", "list"])?;
            Ok(nodes.as_array().is_some_and(|list| {
                list.iter()
                    .any(|node| node["name"] == node_name.as_str() && node["status"] == "online")
            }))
        })?;
        self.cli_ok(&[
            "--context",
            "admin",
            "admin",
            "pool",
            "create",
            &format!("pool-e2e-{index}"),
            "--node",
            &node_name,
            "--cidr",
            &format!("{subnet}.0/24"),
            "--gateway",
            &format!("{subnet}.1"),
        ])?;
        Ok(())
    }

    /// Initializes a controller, builds the busybox template, starts both
    /// daemons and waits until the node is registered.
    pub fn start() -> Result<Self> {
        Self::start_with_config(&[], &[])
    }

    /// [`Cluster::start`] with some of the harness's config values replaced or added:
    /// `(key, TOML value)` pairs for `controller.toml` and `agent.toml` (top-level keys), e.g.
    /// `("heartbeat_interval_secs", "5")`; `{controller}` in an agent value stands for the
    /// quoted controller URL.
    pub fn start_with_config(controller: &[(&str, &str)], agent: &[(&str, &str)]) -> Result<Self> {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("paddock-e2e-")
            .tempdir()
            .context("temp dir")?;
        let controller_port = free_port();
        let agent_port = free_port();
        let metrics_port = free_port();
        let agent_metrics_port = free_port();
        let cgroup_parent = format!("paddock-e2e-{tag}");
        let node_name = format!("node-e2e-{tag}");
        let root = dir.path();
        std::fs::write(
            root.join("controller.toml"),
            format!(
                "listen = \"127.0.0.1:{controller_port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\ndata_dir = \"{}\"\nheartbeat_interval_secs = 1\nnode_offline_after_secs = 5\nreconcile_interval_secs = 2\n",
                root.join("controller").display()
            ),
        )?;
        std::fs::write(
            root.join("agent.toml"),
            format!(
                "node_name = \"{node_name}\"\nlisten = \"127.0.0.1:{agent_port}\"\nmetrics_listen = \"127.0.0.1:{agent_metrics_port}\"\ncontroller = \"https://127.0.0.1:{controller_port}\"\ncontroller_ca_file = \"{}\"\njoin_token_file = \"{}\"\nstate_dir = \"{}\"\ncgroup_parent = \"{cgroup_parent}\"\nstop_grace_secs = 3\n",
                root.join("controller/tls/ca.crt").display(),
                root.join("controller/join-token").display(),
                root.join("agent").display()
            ),
        )?;
        // A bridge and a private /24 of its own: parallel clusters never share either.
        let bridge = format!("pdkt{}{n}", std::process::id() % 10000);
        let subnet = format!("10.{}.{}", 100 + std::process::id() % 150, n % 250);
        {
            use std::io::Write as _;
            let mut agent_toml = std::fs::OpenOptions::new()
                .append(true)
                .open(root.join("agent.toml"))?;
            // Short usage interval so metering tests see samples quickly.
            write!(
                agent_toml,
                "bridge = \"{bridge}\"\nip_forward = false\nusage_interval_secs = 2\n"
            )?;
        }
        override_config(&root.join("controller.toml"), controller)?;
        // `{controller}` in an agent value is this cluster's controller URL (for lists).
        let url = format!("\"https://127.0.0.1:{controller_port}\"");
        let agent: Vec<(&str, String)> = agent
            .iter()
            .map(|(key, value)| (*key, value.replace("{controller}", &url)))
            .collect();
        let agent: Vec<(&str, &str)> = agent.iter().map(|(k, v)| (*k, v.as_str())).collect();
        override_config(&root.join("agent.toml"), &agent)?;
        let init = Command::new(binary("paddock-controller"))
            .arg("--config")
            .arg(root.join("controller.toml"))
            .arg("init")
            .output()
            .context("running paddock-controller init")?;
        if !init.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        let admin_token = String::from_utf8(init.stdout)?.trim().to_owned();
        let template = Command::new(binary("paddock-agent"))
            .arg("--config")
            .arg(root.join("agent.toml"))
            .args(["template", "build", "busybox"])
            .output()
            .context("building the busybox template")?;
        if !template.status.success() {
            bail!(
                "template build failed: {}",
                String::from_utf8_lossy(&template.stderr)
            );
        }
        let mut cluster = Self {
            dir,
            controller_port,
            agent_port,
            metrics_port,
            agent_metrics_port,
            cgroup_parent,
            bridge,
            subnet,
            node_name,
            admin_token,
            controller: None,
            agent: None,
            extra_agents: Vec::new(),
        };
        cluster.start_controller()?;
        cluster.start_agent()?;
        cluster.cli_ok(&[
            "context",
            "add",
            "admin",
            "--controller",
            &cluster.controller_url(),
            "--ca-cert",
            &cluster.ca_cert(),
            "--token",
            &cluster.admin_token.clone(),
        ])?;
        cluster.wait_until("node registered", Duration::from_secs(30), |c| {
            let nodes = c.json(&["--context", "admin", "admin", "node", "list"])?;
            Ok(nodes.as_array().is_some_and(|list| {
                list.iter()
                    .any(|node| node["name"] == c.node_name.as_str() && node["status"] == "online")
            }))
        })?;
        cluster.create_pool(
            "pool-e2e",
            &format!("{}.0/24", cluster.subnet),
            &cluster.gateway(),
        )?;
        Ok(cluster)
    }

    /// The gateway of the cluster's default pool (the bridge's address).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Creates an address pool on the cluster's node (not NAT: tests route nothing off the node).
    pub fn create_pool(&self, name: &str, cidr: &str, gateway: &str) -> Result<()> {
        self.cli_ok(&[
            "--context",
            "admin",
            "admin",
            "pool",
            "create",
            name,
            "--node",
            &self.node_name,
            "--cidr",
            cidr,
            "--gateway",
            gateway,
        ])
        .map(drop)
    }

    /// Network leftovers on the host: links marked as this cluster's, its nft
    /// rules (beyond empty tables' headers), and the pool's address on the bridge.
    pub fn network_leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let marker = format!("paddock:{}:", self.bridge);
        let links = Command::new("ip").args(["-o", "link", "show"]).output();
        if let Ok(links) = links {
            for line in String::from_utf8_lossy(&links.stdout).lines() {
                if line.contains(&marker) || line.contains(&format!("master {} ", self.bridge)) {
                    found.push(format!("link {line}"));
                }
            }
        }
        let table = format!("paddock_{}", self.bridge);
        for family in ["bridge", "inet", "ip"] {
            if let Ok(out) = Command::new("nft")
                .args(["list", "table", family, &table])
                .output()
            {
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("drop") || text.contains("masquerade") || text.contains("jump") {
                    found.push(format!("nft table {family} {table}: {text}"));
                }
            }
        }
        if let Ok(out) = Command::new("ip")
            .args(["-o", "addr", "show", "dev", &self.bridge])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if line.contains(&format!("{}.", self.subnet)) {
                    found.push(format!("address {line}"));
                }
            }
        }
        found
    }

    pub fn controller_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.controller_port)
    }

    /// The controller's CA certificate, which CLI contexts must trust.
    pub fn ca_cert(&self) -> String {
        self.dir
            .path()
            .join("controller/tls/ca.crt")
            .display()
            .to_string()
    }

    fn spawn_logged(&self, binary_name: &str, config: &str, log: &str) -> Result<Child> {
        let root = self.dir.path();
        // Like `make up`: daemon logs are readable by root and its group only.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(root.join(log))?;
        Ok(Command::new(binary(binary_name))
            .arg("--config")
            .arg(root.join(config))
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?)
    }

    pub fn start_controller(&mut self) -> Result<()> {
        let mut child =
            self.spawn_logged("paddock-controller", "controller.toml", "controller.log")?;
        wait_for_port(
            self.controller_port,
            &mut child,
            "controller",
            &self.dir.path().join("controller.log"),
        )?;
        self.controller = Some(child);
        Ok(())
    }

    pub fn start_agent(&mut self) -> Result<()> {
        let mut child = self.spawn_logged("paddock-agent", "agent.toml", "agent.log")?;
        wait_for_port(
            self.agent_port,
            &mut child,
            "agent",
            &self.dir.path().join("agent.log"),
        )?;
        self.agent = Some(child);
        Ok(())
    }

    /// Starts the agent and returns how long it took until it accepted connections (it
    /// listens once it has re-adopted its VPSes), polled every 2 ms.
    pub fn start_agent_timed(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut child = self.spawn_logged("paddock-agent", "agent.toml", "agent.log")?;
        let deadline = started + Duration::from_secs(120);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.agent_port)).is_ok() {
                let took = started.elapsed();
                self.agent = Some(child);
                return Ok(took);
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "agent exited with {status} while starting:\n{}",
                    self.log("agent.log")
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("agent did not listen within 120 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The pid of the (first) agent, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// The pid of the controller, while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent: its VPSes must keep running.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the CLI with this cluster's private config file.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        cli_in(self.dir.path(), args)
    }

    /// Runs the CLI and requires success, returning stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        cli_ok_in(self.dir.path(), args)
    }

    /// Runs the CLI with `-o json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        json_in(self.dir.path(), args)
    }

    /// Runs `sh -c script` in VPS `vps` as tenant context `context`.
    pub fn sh(&self, context: &str, vps: &str, script: &str) -> Output {
        self.cli(&["--context", context, "exec", vps, "--", "sh", "-c", script])
            .expect("running paddock exec")
    }

    /// Like [`Cluster::sh`], but the script must succeed; returns its stdout.
    pub fn sh_ok(&self, context: &str, vps: &str, script: &str) -> String {
        let out = self.sh(context, vps, script);
        assert!(
            out.status.success(),
            "`{script}` in {vps} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host end of a VPS's veth, found by the alias the agent gives it.
    pub fn host_veth(&self, vps_id: &str) -> String {
        let marker = format!("paddock:{}:{vps_id}", self.bridge);
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|line| line.contains(&marker) && line.contains('@'))
            .find_map(|line| {
                line.split(": ")
                    .nth(1)
                    .and_then(|n| n.split('@').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no veth marked {marker}"))
    }

    /// Creates a tenant and a CLI context `name` holding a token for it.
    pub fn add_tenant(&self, name: &str) -> Result<()> {
        self.cli_ok(&["--context", "admin", "admin", "tenant", "create", name])?;
        let token = self.cli_ok(&[
            "--context",
            "admin",
            "admin",
            "token",
            "create",
            "--tenant",
            name,
        ])?;
        self.cli_ok(&[
            "context",
            "add",
            name,
            "--controller",
            &self.controller_url(),
            "--ca-cert",
            &self.ca_cert(),
            "--token",
            token.trim(),
        ])?;
        Ok(())
    }

    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        poll_until(what, timeout, || check(self)).map_err(|error| {
            anyhow::anyhow!("{error}\n--- agent log ---\n{}", self.log("agent.log"))
        })
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn agent_state_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// Host paths of the cgroup directories of a VPS (one per v1 hierarchy, or one on v2).
    pub fn vps_cgroup_dirs(&self, vps_id: &str) -> Vec<PathBuf> {
        cgroup_roots()
            .into_iter()
            .map(|root| root.join(&self.cgroup_parent).join(format!("vps-{vps_id}")))
            .collect()
    }

    /// Leftovers of a VPS: cgroup dirs and mounts that mention it.
    pub fn leftovers(&self, vps_id: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .vps_cgroup_dirs(vps_id)
            .into_iter()
            .filter(|dir| dir.exists())
            .map(|dir| format!("cgroup {}", dir.display()))
            .collect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mountinfo
                .lines()
                .filter(|line| line.contains(vps_id))
                .map(|line| format!("mount {line}")),
        );
        found
    }
}

/// Mount points of the cgroup hierarchies on this host.
pub fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            let is_v1_with_controllers = fstype == "cgroup" && !right.contains("name=");
            let is_v2_root = fstype == "cgroup2" && mount_point == "/sys/fs/cgroup";
            (is_v1_with_controllers || is_v2_root).then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Every cgroup hierarchy mounted on this host, named ones (`name=systemd`) and the v2 tree
/// of a hybrid layout included: the agent's cgroup parent may appear in each.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Removes a cluster's bridge, every link the agent marked as its own, and its nft tables.
pub fn remove_network(bridge: &str) {
    let marker = format!("paddock:{bridge}:");
    if let Ok(links) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            if line.contains(&marker) {
                // "7: pv0123abcd@if6: <...": the name sits between the index and '@' or ':'.
                if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) {
                    let _ = Command::new("ip").args(["link", "del", name]).output();
                }
            }
        }
    }
    let _ = Command::new("ip").args(["link", "del", bridge]).output();
    let table = format!("paddock_{bridge}");
    for family in ["bridge", "inet", "ip"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &table])
            .output();
    }
}

/// Kills every process in a cgroup dir tree and removes it, deepest first.
pub fn purge_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                purge_cgroup(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill has no memory-safety preconditions; the pid is from our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.controller.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // The agent makes its cgroups in every hierarchy, `name=systemd` and the hybrid v2
        // tree included: purge them all, not only the controller hierarchies.
        for extra in &mut self.extra_agents {
            let _ = extra.child.kill();
            let _ = extra.child.wait();
            remove_network(&extra.bridge);
            for root in cgroup_mounts() {
                purge_cgroup(&root.join(&extra.cgroup_parent));
            }
        }
        // The cluster's network: its bridge, marked links and nft tables.
        remove_network(&self.bridge);
        // VPSes outlive their agent by design: remove whatever this test left.
        for root in cgroup_mounts() {
            purge_cgroup(&root.join(&self.cgroup_parent));
        }
    }
}
