//! Several nodes on one machine: a controller in the root network namespace and 2-3 agents,
//! each in a network namespace of its own, for the fault suite (`tests/tests/multinode.rs`).
//!
//! Layout of one [`MultiNode`] (`T` is picked per cluster among the unused `10.T.0.0/24`):
//!
//! ```text
//!  root netns                         node netns pdkmn<tag>-<i> (one per node)
//!  controller 10.T.0.1:<port>  ──┐    agent 10.T.0.(10+i):7444  (uplink0, veth peer)
//!  bridge pmb<tag> 10.T.0.1/24 ──┴──  VPS bridge pnb<i> with the pool 10.T.i.0/24,
//!     veth pmv<tag><i> ─────────────    routes 10.T.j.0/24 via 10.T.0.(10+j), ip_forward on
//! ```
//!
//! Every node has its own state dir, VPS bridge (inside its netns), cgroup parent, `id_base`
//! (a 256-VPS id range of its own) and pool. [`MultiNode::start_shared`] instead creates ONE
//! pool `10.T.200.0/24` spanning every node and adds no pool routes: the product's host
//! routes (`SyncRoutes`, protocol 77) carry its addresses between the nodes. The controller's certificate names 10.T.0.1
//! (`tls_sans`, the product's own way), so agents dial it over the bridge. An agent runs
//! inside its netns with a mount namespace of its own whose only change is a `/sys` of that
//! netns (so `/sys/class/net` shows the node's links) with the host's cgroup tree bound back
//! in; everything else (state dirs, cgroups, loop devices) is the host's, as on a real node.
//! The agents use `proc_view = "host"`, so no shared lxcfs is started.
//!
//! Clusters of one test process run one at a time (a process-wide lock): three agents
//! already fill the two cores of the test machine.
//!
//! [`MultiNode::finish`] deletes every VPS, checks that the product left nothing behind
//! (cgroups, ports, qdiscs, nft rules, mounts, loop devices, images, processes), then tears
//! the cluster down and checks that nothing of the harness remains (netns, bridge, veths,
//! cgroup parents, processes). `Drop` does the same teardown even on panic, printing the
//! nodes, VPSes and log tails first when the test failed.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{binary, cgroup_mounts, cli_in, cli_ok_in, json_in, poll_until, purge_cgroup};

static NEXT: AtomicU32 = AtomicU32::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The plan the scenarios use: small enough that dozens fit the test machine.
pub const PLAN: &str = "mn";
/// The port every agent listens on inside its own netns.
const AGENT_PORT: u16 = 7444;
/// Size of one VPS's id range (the agent's `ID_RANGE_SIZE`).
const ID_RANGE: u32 = 65_536;

/// One node of a [`MultiNode`]: an agent in its own network namespace.
pub struct Node {
    /// 1-based.
    pub index: usize,
    pub name: String,
    pub netns: String,
    /// The node's end of its link, inside its netns.
    pub link_addr: Ipv4Addr,
    /// The root-netns end of the link (on the test bridge).
    pub host_veth: String,
    /// The VPS bridge inside the node's netns.
    pub bridge: String,
    /// The first three octets of the node's pool (`10.T.i`).
    pub pool_prefix: String,
    pub cgroup_parent: String,
    pub id_base: u32,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    netns_inode: u64,
    child: Option<Child>,
}

impl Node {
    /// The agent's pid, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A controller and several agents, each node in its own netns; see the module docs.
pub struct MultiNode {
    pub dir: tempfile::TempDir,
    /// Unique per cluster; part of every name the harness creates.
    pub tag: String,
    /// The root-netns bridge joining the nodes' links.
    pub link_bridge: String,
    /// The `T` of `10.T.0.0/24`.
    pub subnet_octet: u8,
    pub controller_addr: SocketAddr,
    pub admin_token: String,
    pub nodes: Vec<Node>,
    controller: Option<Child>,
    /// `PADDOCK_TEST_FAULT` for the daemons started next (see [`MultiNode::set_fault`]).
    fault: Option<String>,
    /// When this cluster began (after waiting for its turn).
    started_at: Instant,
    /// The pool spanning every node ([`MultiNode::start_shared`]), if any: its first three
    /// octets (`10.T.200`).
    pub shared_prefix: Option<String>,
    torn_down: bool,
    _one_at_a_time: MutexGuard<'static, ()>,
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    let full = [&["-n", netns][..], args].concat();
    run("ip", &full)
}

/// Last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is alive (a zombie is not: PID 1 here does not reap).
pub fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("X");
        state != "Z" && state != "X"
    })
}

/// A `10.T.0.0/24` no interface of the host uses yet (T in 1..=99, away from the 10.100+
/// subnets of [`crate::Cluster`]).
fn free_link_octet(seed: u32) -> Result<u8> {
    let addresses = run("ip", &["-o", "-4", "addr", "show"])?;
    let routes = run("ip", &["-4", "route", "show"])?;
    for step in 0..99u32 {
        let octet = 1 + seed.wrapping_add(step) % 99;
        let prefix = format!("10.{octet}.");
        let used = addresses.contains(&format!(" {prefix}"))
            || routes
                .lines()
                .any(|line| line.starts_with(&prefix) || line.contains(&format!(" {prefix}")));
        if !used {
            return u8::try_from(octet).context("octet");
        }
    }
    bail!("no free 10.T.0.0/24 for the node links")
}

fn free_port_on(addr: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((addr, 0))?.local_addr()?.port())
}

fn wait_for_listener(addr: SocketAddr, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}; log:\n{}", tail(log, 40));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what} did not listen on {addr} within 60 s; log:\n{}",
        tail(log, 40)
    )
}

fn log_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Makes `command` run in network namespace `netns` (from `/run/netns`), in a mount namespace
/// of its own (a slave of the host's) whose `/sys` describes that netns, with the host's
/// cgroup tree bound back to `/sys/fs/cgroup`. Unlike `ip netns exec` (which drops the cgroup
/// mounts with the old /sys), the agent keeps managing the host's cgroups.
fn in_node_netns(command: &mut Command, netns: &str) -> Result<()> {
    let netns_path = format!("/run/netns/{netns}");
    let netns_file = File::open(&netns_path).with_context(|| format!("opening {netns_path}"))?;
    let root = CString::new("/")?;
    let sys = CString::new("/sys")?;
    let sysfs = CString::new("sysfs")?;
    let cgroup = CString::new("/sys/fs/cgroup")?;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls on memory prepared before the fork (no allocation).
    unsafe {
        command.pre_exec(move || {
            check(libc::setns(netns_file.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            let cgroup_fd = check(libc::open(
                cgroup.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | libc::O_DIRECTORY,
            ))?;
            check(libc::mount(
                sysfs.as_ptr(),
                sys.as_ptr(),
                sysfs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            // "/proc/self/fd/<n>" spelt without allocating.
            let mut source = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
            let mut digits = [0u8; 10];
            let mut count = 0;
            let mut n = cgroup_fd;
            loop {
                digits[count] = b'0' + (n % 10) as u8;
                count += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for i in 0..count {
                source[14 + i] = digits[count - 1 - i];
            }
            check(libc::mount(
                source.as_ptr().cast(),
                cgroup.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            libc::close(cgroup_fd);
            Ok(())
        });
    }
    Ok(())
}

impl MultiNode {
    /// Starts a controller (spread placement, 1 s heartbeats, offline after 5 s) and `nodes`
    /// agents, each in its own netns with a pool, overcommit labels that fit dozens of small
    /// VPSes, and the plan [`PLAN`]; waits until every node is online.
    pub fn start(nodes: usize) -> Result<Self> {
        Self::start_with(nodes, false)
    }

    /// Like [`MultiNode::start`], but with ONE pool (`shared`, `10.T.200.0/24`) spanning every
    /// node instead of a pool per node, and no routes of the harness for it: a VPS keeps its
    /// address when it moves between the nodes, and the product's host routes reach it.
    pub fn start_shared(nodes: usize) -> Result<Self> {
        Self::start_with(nodes, true)
    }

    fn start_with(nodes: usize, shared: bool) -> Result<Self> {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 10000);
        let subnet_octet = free_link_octet(pid.wrapping_mul(7).wrapping_add(n))?;
        let dir = tempfile::Builder::new()
            .prefix("paddock-mn-")
            .tempdir()
            .context("temp dir")?;
        let controller_ip = Ipv4Addr::new(10, subnet_octet, 0, 1);
        // 64 VPS id ranges per node, unique per node and (likely) per test process, far above
        // the single-node clusters' default `id_base` of 100000.
        let id_slot = 32 + pid.wrapping_mul(3).wrapping_add(n * 3) % 960;
        let mut cluster = Self {
            dir,
            link_bridge: format!("pmb{tag}"),
            tag: tag.clone(),
            subnet_octet,
            controller_addr: SocketAddr::from((controller_ip, 0)),
            admin_token: String::new(),
            nodes: Vec::new(),
            controller: None,
            fault: None,
            started_at: Instant::now(),
            shared_prefix: shared.then(|| format!("10.{subnet_octet}.200")),
            torn_down: false,
            _one_at_a_time: guard,
        };
        let root = cluster.dir.path().to_owned();
        for index in 1..=nodes {
            let id_base = (id_slot + index as u32 - 1) * 64 * ID_RANGE;
            cluster.nodes.push(Node {
                index,
                name: format!("mn{tag}-{index}"),
                netns: format!("pdkmn{tag}-{index}"),
                link_addr: Ipv4Addr::new(10, subnet_octet, 0, 10 + index as u8),
                host_veth: format!("pmv{tag}{index}"),
                bridge: format!("pnb{index}"),
                pool_prefix: format!("10.{subnet_octet}.{index}"),
                cgroup_parent: format!("paddock-mn-{tag}-{index}"),
                id_base,
                state_dir: root.join(format!("agent-{index}")),
                config: root.join(format!("agent-{index}.toml")),
                log: root.join(format!("agent-{index}.log")),
                netns_inode: 0,
                child: None,
            });
        }
        cluster.build_network()?;
        let port = free_port_on(controller_ip)?;
        cluster.controller_addr = SocketAddr::from((controller_ip, port));
        std::fs::write(
            root.join("controller.toml"),
            format!(
                "listen = \"{}\"\nmetrics_listen = \"off\"\ntls_sans = [\"{controller_ip}\"]\ndata_dir = \"{}\"\nheartbeat_interval_secs = 1\nnode_offline_after_secs = 5\nreconcile_interval_secs = 2\n\n[scheduler]\nstrategy = \"spread\"\n",
                cluster.controller_addr,
                root.join("controller").display()
            ),
        )?;
        let init = Command::new(binary("paddock-controller"))
            .arg("--config")
            .arg(root.join("controller.toml"))
            .arg("init")
            .output()
            .context("running paddock-controller init")?;
        if !init.status.success() {
            bail!("init failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        cluster.admin_token = String::from_utf8(init.stdout)?.trim().to_owned();
        cluster.start_controller()?;
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
        for index in 0..cluster.nodes.len() {
            cluster.write_agent_config(index)?;
            let template = Command::new(binary("paddock-agent"))
                .arg("--config")
                .arg(&cluster.nodes[index].config)
                .args(["template", "build", "busybox"])
                .output()
                .context("building the busybox template")?;
            if !template.status.success() {
                bail!(
                    "template build failed: {}",
                    String::from_utf8_lossy(&template.stderr)
                );
            }
            cluster.start_agent(index)?;
        }
        for index in 0..cluster.nodes.len() {
            let name = cluster.nodes[index].name.clone();
            cluster.wait_node_status(&name, "online", Duration::from_secs(60))?;
            if !shared {
                let prefix = cluster.nodes[index].pool_prefix.clone();
                cluster.admin_ok(&[
                    "pool",
                    "create",
                    &format!("pool-{}", index + 1),
                    "--node",
                    &name,
                    "--cidr",
                    &format!("{prefix}.0/24"),
                    "--gateway",
                    &format!("{prefix}.1"),
                ])?;
            }
            cluster.admin_ok(&[
                "node",
                "label",
                &name,
                "paddock.io/cpu-overcommit=32",
                "paddock.io/memory-overcommit=4",
                "paddock.io/disk-overcommit=4",
            ])?;
        }
        if let Some(prefix) = cluster.shared_prefix.clone() {
            let mut args = vec!["pool".to_owned(), "create".to_owned(), "shared".to_owned()];
            for node in &cluster.nodes {
                args.extend(["--node".to_owned(), node.name.clone()]);
            }
            args.extend([
                "--cidr".to_owned(),
                format!("{prefix}.0/24"),
                "--gateway".to_owned(),
                format!("{prefix}.1"),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.admin_ok(&args)?;
        }
        cluster.admin_ok(&[
            "plan", "create", PLAN, "--vcpus", "0.1", "--memory", "64MiB", "--disk", "256MiB",
            "--pids", "128", "--ipv4", "1",
        ])?;
        Ok(cluster)
    }

    /// The test bridge in the root netns, one netns per node with its veth, addresses, the
    /// routes to the other nodes' pools, and IPv4 forwarding (inside the netns only).
    fn build_network(&mut self) -> Result<()> {
        let bridge = self.link_bridge.clone();
        let octet = self.subnet_octet;
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("10.{octet}.0.1/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // A shared pool is routed by the product; per-node pools by the harness.
        let pools: Vec<(String, Ipv4Addr)> = if self.shared_prefix.is_some() {
            Vec::new()
        } else {
            self.nodes
                .iter()
                .map(|node| (format!("{}.0/24", node.pool_prefix), node.link_addr))
                .collect()
        };
        for node in &mut self.nodes {
            run("ip", &["netns", "add", &node.netns])?;
            node.netns_inode = std::fs::metadata(format!("/run/netns/{}", node.netns))?.ino();
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &node.host_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "uplink0",
                    "netns",
                    &node.netns,
                ],
            )?;
            run("ip", &["link", "set", &node.host_veth, "master", &bridge])?;
            run("ip", &["link", "set", &node.host_veth, "up"])?;
            ip_in(&node.netns, &["link", "set", "lo", "up"])?;
            ip_in(
                &node.netns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", node.link_addr),
                    "dev",
                    "uplink0",
                ],
            )?;
            ip_in(&node.netns, &["link", "set", "uplink0", "up"])?;
            for (cidr, via) in &pools {
                if *via != node.link_addr {
                    ip_in(
                        &node.netns,
                        &["route", "add", cidr, "via", &via.to_string()],
                    )?;
                }
            }
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &node.netns,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                ],
            )?;
        }
        Ok(())
    }

    fn write_agent_config(&self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        let root = self.dir.path();
        std::fs::write(
            &node.config,
            format!(
                "node_name = \"{}\"\nlisten = \"{}:{AGENT_PORT}\"\nmetrics_listen = \"off\"\ncontroller = \"{}\"\ncontroller_ca_file = \"{}\"\njoin_token_file = \"{}\"\nstate_dir = \"{}\"\ncgroup_parent = \"{}\"\nid_base = {}\nstop_grace_secs = 3\nbridge = \"{}\"\nip_forward = false\nusage_interval_secs = 5\nproc_view = \"host\"\n",
                node.name,
                node.link_addr,
                self.controller_url(),
                root.join("controller/tls/ca.crt").display(),
                root.join("controller/join-token").display(),
                node.state_dir.display(),
                node.cgroup_parent,
                node.id_base,
                node.bridge,
            ),
        )?;
        Ok(())
    }

    pub fn controller_url(&self) -> String {
        format!("https://{}", self.controller_addr)
    }

    pub fn ca_cert(&self) -> String {
        self.dir
            .path()
            .join("controller/tls/ca.crt")
            .display()
            .to_string()
    }

    pub fn controller_log(&self) -> PathBuf {
        self.dir.path().join("controller.log")
    }

    /// Starts (or restarts) the controller and waits until it listens.
    pub fn start_controller(&mut self) -> Result<()> {
        let root = self.dir.path();
        let log = log_file(&self.controller_log())?;
        let mut child = Command::new(binary("paddock-controller"))
            .arg("--config")
            .arg(root.join("controller.toml"))
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.fault.iter().map(|fault| ("PADDOCK_TEST_FAULT", fault)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning the controller")?;
        wait_for_listener(
            self.controller_addr,
            &mut child,
            "controller",
            &self.controller_log(),
        )?;
        self.controller = Some(child);
        Ok(())
    }

    /// The controller's pid, while it runs.
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    /// Sets the test fault point (`PADDOCK_TEST_FAULT`, read by debug builds only) of the
    /// controller and agents started from now on; `None` clears it.
    pub fn set_fault(&mut self, fault: Option<&str>) {
        self.fault = fault.map(str::to_owned);
    }

    /// Whether the controller process ended by itself (e.g. at a fault point).
    pub fn controller_exited(&mut self) -> bool {
        self.controller
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    /// Whether agent `index`'s process ended by itself (e.g. at a fault point).
    pub fn agent_exited(&mut self, index: usize) -> bool {
        self.nodes[index]
            .child
            .as_mut()
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)))
    }

    /// `kill -9` of the controller.
    pub fn kill_controller(&mut self) {
        if let Some(mut child) = self.controller.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (or restarts) agent `index` (0-based) inside its netns and waits until it
    /// listens (it does once it has re-adopted its VPSes).
    pub fn start_agent(&mut self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        let log = log_file(&node.log)?;
        let mut command = Command::new(binary("paddock-agent"));
        command
            .arg("--config")
            .arg(&node.config)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(self.fault.iter().map(|fault| ("PADDOCK_TEST_FAULT", fault)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        in_node_netns(&mut command, &node.netns)?;
        let mut child = command.spawn().context("spawning an agent")?;
        let addr = SocketAddr::from((node.link_addr, AGENT_PORT));
        wait_for_listener(addr, &mut child, &node.name, &node.log)?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// `kill -9` of agent `index` (0-based): its VPSes must keep running.
    pub fn kill_agent(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Cuts (`false`) or restores (`true`) node `index`'s link at the root-netns end.
    pub fn set_link(&self, index: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        run("ip", &["link", "set", &self.nodes[index].host_veth, state]).map(drop)
    }

    /// Runs `sh -c script` inside node `index`'s netns (host side, not in a VPS).
    pub fn node_sh(&self, index: usize, script: &str) -> Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[index].netns,
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    /// Index of the node called `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Runs the CLI with this cluster's private config file.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        cli_in(self.dir.path(), args)
    }

    /// Runs the CLI and requires success, returning stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        cli_ok_in(self.dir.path(), args)
    }

    /// `paddock --context admin admin ARGS...`.
    pub fn admin_ok(&self, args: &[&str]) -> Result<String> {
        let full = [&["--context", "admin", "admin"][..], args].concat();
        self.cli_ok(&full)
    }

    /// Runs the CLI with `-o json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        json_in(self.dir.path(), args)
    }

    /// Every node as `admin node list` shows it.
    pub fn node_list(&self) -> Result<Vec<Value>> {
        let nodes = self.json(&["--context", "admin", "admin", "node", "list"])?;
        Ok(nodes.as_array().cloned().unwrap_or_default())
    }

    /// Every VPS of every tenant as the admin's `list` shows it.
    pub fn vps_list(&self) -> Result<Vec<Value>> {
        let list = self.json(&["--context", "admin", "list"])?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    /// Status (`online`, `offline`) of node `name`.
    pub fn node_status(&self, name: &str) -> Result<String> {
        Ok(self
            .node_list()?
            .iter()
            .find(|node| node["name"] == name)
            .and_then(|node| node["status"].as_str())
            .unwrap_or("missing")
            .to_owned())
    }

    pub fn wait_node_status(&self, name: &str, status: &str, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("node {name} {status}"), timeout, |c| {
            Ok(c.node_status(name)? == status)
        })
    }

    /// Creates a tenant with `quota` (`--max-vps 10 ...`) and a CLI context of its name.
    pub fn add_tenant(&self, name: &str, quota: &[&str]) -> Result<()> {
        let create = [&["tenant", "create", name][..], quota].concat();
        self.admin_ok(&create)?;
        let token = self.admin_ok(&["token", "create", "--tenant", name])?;
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

    /// Runs `sh -c script` in VPS `vps` as tenant context `tenant`.
    pub fn sh(&self, tenant: &str, vps: &str, script: &str) -> Result<Output> {
        self.cli(&["--context", tenant, "exec", vps, "--", "sh", "-c", script])
    }

    /// Polls `check` every 200 ms until it holds; on timeout the error carries the last error
    /// and the cluster's diagnostics.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        poll_until(what, timeout, || check(self))
    }

    /// Nodes, VPSes and the tails of every daemon's log: what a failed scenario prints.
    pub fn diagnostics(&self) -> String {
        let mut text = String::new();
        match self.node_list() {
            Ok(nodes) => {
                text.push_str("--- nodes ---\n");
                for node in nodes {
                    text.push_str(&format!(
                        "{} {} vps_count={} cordoned={} last_heartbeat={}\n",
                        node["name"],
                        node["status"],
                        node["vps_count"],
                        node["cordoned"],
                        node["last_heartbeat"]
                    ));
                }
            }
            Err(error) => text.push_str(&format!("--- nodes: {error:#}\n")),
        }
        match self.vps_list() {
            Ok(vpses) => {
                text.push_str("--- VPSes ---\n");
                for vps in vpses {
                    text.push_str(&format!(
                        "{}/{} {} node={} state={} desired={} pid={} ipv4={} converged={} {}\n",
                        vps["tenant"],
                        vps["name"],
                        vps["id"],
                        vps["node"],
                        vps["state"],
                        vps["desired_power"],
                        vps["init_pid"],
                        vps["ipv4"],
                        vps["converged"],
                        vps["message"]
                    ));
                }
            }
            Err(error) => text.push_str(&format!("--- VPSes: {error:#}\n")),
        }
        text.push_str(&format!(
            "--- controller log (tail) ---\n{}\n",
            tail(&self.controller_log(), 30)
        ));
        for node in &self.nodes {
            text.push_str(&format!(
                "--- {} agent log (tail) ---\n{}\n",
                node.name,
                tail(&node.log, 30)
            ));
        }
        text
    }

    /// Deletes every VPS, waits until the nodes have removed them, and returns what the
    /// product left behind on the nodes (checked while the agents still run).
    pub fn delete_all_and_check(&self) -> Result<Vec<String>> {
        for vps in self.vps_list()? {
            let (Some(tenant), Some(name)) = (vps["tenant"].as_str(), vps["name"].as_str()) else {
                continue;
            };
            if vps["state"] == "deleting" {
                continue;
            }
            self.cli_ok(&[
                "--context",
                "admin",
                "delete",
                name,
                "--tenant",
                tenant,
                "--yes",
                "--no-wait",
            ])
            .or_else(|_| {
                self.cli_ok(&["--context", tenant, "delete", name, "--yes", "--no-wait"])
            })?;
        }
        self.wait_until("every VPS deleted", Duration::from_secs(120), |c| {
            Ok(c.vps_list()?.is_empty())
        })?;
        let mut found = Vec::new();
        self.wait_until("the nodes clean", Duration::from_secs(30), |c| {
            found = c.product_leftovers();
            Ok(found.is_empty())
        })
        .map_or(Ok(found), |()| Ok(Vec::new()))
    }

    /// What the product leaves on the nodes when no VPS exists: VPS cgroups, links other than
    /// the node's uplink and VPS bridge, qdiscs on those, nft rules naming ports, mounts and
    /// loop devices of the test dir, disk images, and VPS processes.
    pub fn product_leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for node in &self.nodes {
            for root in cgroup_mounts() {
                let parent = root.join(&node.cgroup_parent);
                if let Ok(entries) = std::fs::read_dir(&parent) {
                    for entry in entries.flatten() {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            found.push(format!("cgroup {}", entry.path().display()));
                        }
                    }
                }
            }
            if let Ok(links) = ip_in(&node.netns, &["-o", "link", "show"]) {
                for line in links.lines() {
                    let name = line
                        .split(": ")
                        .nth(1)
                        .and_then(|n| n.split('@').next())
                        .unwrap_or("");
                    if !["lo", "uplink0", node.bridge.as_str()].contains(&name) {
                        found.push(format!("{}: link {line}", node.name));
                    }
                }
            }
            // The host routes the agent owns (protocol 77) go with the last VPS of a shared pool.
            for family in ["-4", "-6"] {
                if let Ok(routes) = ip_in(&node.netns, &[family, "route", "show", "proto", "77"]) {
                    found.extend(
                        routes
                            .lines()
                            .filter(|line| !line.trim().is_empty())
                            .map(|line| format!("{}: paddock route {line}", node.name)),
                    );
                }
            }
            if let Ok(qdiscs) = run("ip", &["netns", "exec", &node.netns, "tc", "qdisc", "show"]) {
                for line in qdiscs.lines() {
                    if line.contains("tbf") || line.contains("ingress") || line.contains("clsact") {
                        found.push(format!("{}: qdisc {line}", node.name));
                    }
                }
            }
            if let Ok(rules) = run(
                "ip",
                &["netns", "exec", &node.netns, "nft", "list", "ruleset"],
            ) {
                for line in rules.lines() {
                    if line.contains("\"pv") || line.contains("ether saddr") {
                        found.push(format!("{}: nft {}", node.name, line.trim()));
                    }
                }
            }
            // The agent's own mount namespace (its /sys aside) must hold no mount of ours.
            if let Some(pid) = node.agent_pid() {
                let dir_text = self.dir.path().display().to_string();
                let mountinfo =
                    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
                found.extend(
                    mountinfo
                        .lines()
                        .filter(|line| line.contains(&dir_text))
                        .map(|line| format!("{}: agent's mount {line}", node.name)),
                );
            }
            let vps_dir = node.state_dir.join("vps");
            if let Ok(entries) = std::fs::read_dir(&vps_dir) {
                for entry in entries.flatten() {
                    found.push(format!("VPS dir {}", entry.path().display()));
                }
            }
            // A migration's archive lives only as long as its transfer.
            for half in ["export", "import"] {
                let spool = node.state_dir.join("migrations").join(half);
                if let Ok(entries) = std::fs::read_dir(&spool) {
                    for entry in entries.flatten() {
                        found.push(format!("migration archive {}", entry.path().display()));
                    }
                }
            }
        }
        found.extend(self.host_leftovers(false));
        found
    }

    /// Mounts, loop devices and processes of this cluster on the host; with `everything`,
    /// also its daemons, netns, links and cgroup parents (after teardown nothing may remain).
    fn host_leftovers(&self, everything: bool) -> Vec<String> {
        let mut found = Vec::new();
        let dir = self.dir.path();
        let dir_text = dir.display().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mountinfo
                .lines()
                .filter(|line| line.contains(&dir_text))
                .map(|line| format!("mount {line}")),
        );
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let backing = std::fs::read_to_string(entry.path().join("loop/backing_file"))
                    .unwrap_or_default();
                if Path::new(backing.trim()).starts_with(dir) {
                    found.push(format!(
                        "loop device {:?} backed by {}",
                        entry.file_name(),
                        backing.trim()
                    ));
                }
            }
        }
        let parents: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("/{}/", node.cgroup_parent))
            .collect();
        let inodes: BTreeSet<u64> = self.nodes.iter().map(|node| node.netns_inode).collect();
        let daemons: BTreeSet<u32> = self
            .nodes
            .iter()
            .filter_map(Node::agent_pid)
            .chain(self.controller.as_ref().map(Child::id))
            .collect();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if !process_alive(u64::from(pid)) || (!everything && daemons.contains(&pid)) {
                    continue;
                }
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                    .unwrap_or_default();
                let cgroup =
                    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
                let in_netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|meta| inodes.contains(&meta.ino()));
                let in_parent = parents.iter().any(|parent| {
                    cgroup
                        .lines()
                        .any(|line| format!("{}/", line).contains(parent.as_str()))
                });
                if cmdline.contains(&dir_text) || in_parent || (everything && in_netns) {
                    found.push(format!("process {pid}: {}", cmdline.trim()));
                }
            }
        }
        if everything {
            let netns = run("ip", &["netns", "list"]).unwrap_or_default();
            for node in &self.nodes {
                if netns
                    .lines()
                    .any(|line| line.split_whitespace().next() == Some(&node.netns))
                {
                    found.push(format!("netns {}", node.netns));
                }
                for root in cgroup_mounts() {
                    let parent = root.join(&node.cgroup_parent);
                    if parent.exists() {
                        found.push(format!("cgroup {}", parent.display()));
                    }
                }
            }
            let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
            for line in links.lines() {
                let name = line
                    .split(": ")
                    .nth(1)
                    .and_then(|n| n.split('@').next())
                    .unwrap_or("");
                if name == self.link_bridge || self.nodes.iter().any(|node| node.host_veth == name)
                {
                    found.push(format!("link {line}"));
                }
            }
            let tables = run("nft", &["list", "tables"]).unwrap_or_default();
            for line in tables.lines() {
                // An agent that escaped its netns would have made these on the host.
                if self
                    .nodes
                    .iter()
                    .any(|node| line.ends_with(&format!(" paddock_{}", node.bridge)))
                {
                    found.push(format!("nft {line}"));
                }
            }
        }
        found
    }

    /// Stops every daemon, kills what is left in the cluster's cgroups and netns, removes the
    /// netns, links and cgroup parents, and returns whatever still remains. Idempotent.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        self.kill_controller();
        for index in 0..self.nodes.len() {
            self.kill_agent(index);
        }
        for node in &self.nodes {
            for root in cgroup_mounts() {
                purge_cgroup(&root.join(&node.cgroup_parent));
            }
        }
        // Whatever still runs in a node's netns (nothing should) dies with it.
        for _ in 0..50 {
            let pids: Vec<String> = self
                .nodes
                .iter()
                .flat_map(|node| {
                    run("ip", &["netns", "pids", &node.netns])
                        .unwrap_or_default()
                        .lines()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .filter(|pid| pid.parse::<u64>().is_ok_and(process_alive))
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions; the pid runs in a
                    // netns this cluster created.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let dir = self.dir.path().to_owned();
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for entry in entries.flatten() {
                let backing = std::fs::read_to_string(entry.path().join("loop/backing_file"))
                    .unwrap_or_default();
                if Path::new(backing.trim()).starts_with(&dir) {
                    let device = Path::new("/dev").join(entry.file_name());
                    let _ = Command::new("losetup").arg("-d").arg(device).output();
                }
            }
        }
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &node.netns])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &node.host_veth])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.link_bridge])
            .output();
        // A netns disappears once its last process and mount are gone; links with it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.host_leftovers(true);
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end of every scenario: deletes every VPS and asserts that neither the product nor
    /// the harness left anything behind.
    pub fn finish(mut self) {
        let started = Instant::now();
        let product = self
            .delete_all_and_check()
            .unwrap_or_else(|error| panic!("{error:#}\n{}", self.diagnostics()));
        assert!(
            product.is_empty(),
            "left behind by the product: {product:#?}\n{}",
            self.diagnostics()
        );
        let checked = started.elapsed();
        let harness = self.teardown();
        assert!(
            harness.is_empty(),
            "left behind after teardown: {harness:#?}"
        );
        eprintln!(
            "leak check: VPSes deleted and the nodes clean after {checked:?}, torn down after {:?}",
            started.elapsed()
        );
        eprintln!(
            "scenario took {:?} from the cluster's start to its teardown",
            self.started_at.elapsed()
        );
    }
}

impl Drop for MultiNode {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        let left = self.teardown();
        if !left.is_empty() {
            if std::thread::panicking() {
                eprintln!("left behind after teardown: {left:#?}");
            } else {
                panic!("left behind after teardown: {left:#?}");
            }
        }
    }
}
