//! An agent node in this process: the agent's own runtime and network API from `paddock-agent`
//! (what its gRPC service calls), without a controller. The bench creates, starts, stops and
//! deletes busybox VPSes on it directly, so a number measures the node and nothing above it.
//!
//! Everything it makes is unique to the run (state dir, cgroup parent, bridge, /24) and its
//! `Drop` removes every VPS, cgroup, link and nft table it made, also after a failure.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use paddock_agent::network::{IfAddr, Isolation, Network, NetworkConfig, PortSpec};
use paddock_agent::runtime::procview::{self, LxcfsConfig, ProcView};
use paddock_agent::runtime::{
    idmap, Limits, ObservedState, Power, Runtime, RuntimeConfig, VpsSpec,
};
use paddock_agent::template;

use crate::Options;

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// A unique tag for this process's `n`-th object of a kind (names of cgroups, links, ids).
pub fn unique_tag() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT_NODE.fetch_add(1, Ordering::SeqCst)
    )
}

/// The runtime (and optionally the network) of one agent node, in its own state dir.
pub struct Node {
    pub runtime: Runtime,
    network: Option<Network>,
    tokio: tokio::runtime::Runtime,
    state_dir: tempfile::TempDir,
    pub cgroup_parent: String,
    /// The node's bridge (unique per node, never `pdk0`).
    pub bridge: String,
    /// The first three octets of the node's private /24 (`10.A.B`); `.1` is the gateway.
    pub subnet: String,
    vps_ids: Vec<String>,
}

impl Node {
    /// A node with the busybox template, the agent's default /proc view (lxcfs) and, with
    /// `with_network`, a bridge of its own that VPS ports attach to (tenant isolation, no
    /// uplink, no forwarding: traffic stays on the bridge).
    pub fn start(options: &Options, with_network: bool) -> Result<Self> {
        Self::start_with_view(
            options,
            with_network,
            ProcView::Lxcfs(LxcfsConfig::new(
                procview::DEFAULT_LXCFS_DIR,
                std::env::temp_dir().join("paddock-bench-lxcfs"),
            )),
        )
    }

    /// [`Self::start`] with a network whose ports' IPv4 GSO/GRO size is `port_gso_max_bytes`
    /// (the agent's `port_gso_max_bytes`; `None` = its default, the uplink's).
    pub fn start_with_port_gso(options: &Options, port_gso_max_bytes: Option<u32>) -> Result<Self> {
        Self::start_inner(
            options,
            Some(port_gso_max_bytes),
            ProcView::Lxcfs(LxcfsConfig::new(
                procview::DEFAULT_LXCFS_DIR,
                std::env::temp_dir().join("paddock-bench-lxcfs"),
            )),
        )
    }

    /// [`Self::start`] with `proc_view` as the VPSes' /proc.
    pub fn start_with_view(
        options: &Options,
        with_network: bool,
        proc_view: ProcView,
    ) -> Result<Self> {
        Self::start_inner(options, with_network.then_some(None), proc_view)
    }

    /// `network`: `Some(port_gso_max_bytes)` for a network, `None` for none.
    fn start_inner(
        options: &Options,
        network: Option<Option<u32>>,
        proc_view: ProcView,
    ) -> Result<Self> {
        let tag = unique_tag();
        let state_dir = tempfile::Builder::new()
            .prefix("paddock-bench-")
            .tempdir()
            .context("bench state dir")?;
        template::build_busybox(state_dir.path()).context("building the busybox template")?;
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let cgroup_parent = format!("paddock-bench-{tag}");
        let bridge = format!("pdkb{tag}");
        let n: u32 = tag.parse().unwrap_or(0);
        // 10.60.x-10.99.x: apart from the harness's (10.100+) and the network tests' (10.211+).
        let subnet = format!("10.{}.{}", 60 + std::process::id() % 40, n % 250);
        let runtime = Runtime::new(RuntimeConfig {
            state_dir: state_dir.path().to_path_buf(),
            cgroup_parent: cgroup_parent.clone(),
            stop_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            helper_binary: options.bin_dir.join("paddock-agent"),
            id_base: idmap::DEFAULT_ID_BASE,
            proc_view,
        })
        .context("starting the agent runtime")?;
        let mut node = Self {
            runtime,
            network: None,
            tokio,
            state_dir,
            cgroup_parent,
            bridge,
            subnet,
            vps_ids: Vec::new(),
        };
        if let Some(port_gso_max_bytes) = network {
            let config = NetworkConfig {
                bridge: node.bridge.clone(),
                uplink: None,
                ip_forward: false,
                port_gso_max_bytes,
                state_dir: node.state_dir.path().join("network"),
                host_ports_open_to_vps: Vec::new(),
                vps_isolation: Isolation::Tenant,
            };
            let network = node
                .tokio
                .block_on(Network::start(config, &[]))
                .context("starting the agent network")?;
            node.network = Some(network);
        }
        Ok(node)
    }

    /// The node's state dir (what the runtime keeps: `vps/<id>/disk.img`, ...).
    pub fn state_dir(&self) -> &std::path::Path {
        self.state_dir.path()
    }

    /// Host path of the busybox template's root filesystem.
    pub fn busybox_rootfs(&self) -> PathBuf {
        self.state_dir
            .path()
            .join("templates")
            .join(template::BUSYBOX)
            .join("rootfs")
    }

    /// A busybox VPS spec.
    pub fn spec(vps_id: &str, limits: Limits, power: Power) -> VpsSpec {
        VpsSpec {
            vps_id: vps_id.to_string(),
            hostname: vps_id.to_string(),
            template: template::BUSYBOX.to_string(),
            limits,
            power,
            rebuild_generation: 0,
            restart_generation: 0,
        }
    }

    /// A port for host number `host` of the node's /24, in one tenant's isolation group.
    pub fn port(&self, vps_id: &str, host: u8, egress_bps: u64) -> Result<PortSpec> {
        let parse_addr = |text: String| -> Result<IfAddr> {
            text.parse::<IfAddr>()
                .map_err(|e| anyhow::anyhow!("address {text}: {e}"))
        };
        Ok(PortSpec {
            vps_id: vps_id.to_string(),
            mac: format!("02:00:00:bb:00:{host:02x}")
                .parse()
                .map_err(|e| anyhow::anyhow!("mac: {e}"))?,
            addresses: vec![parse_addr(format!("{}.{host}/24", self.subnet))?],
            gateway: Some(self.gateway().parse::<IpAddr>()?),
            gateway6: None,
            ingress_bps: 0,
            egress_bps,
            nat: false,
            pool: Some(parse_addr(format!("{}.0/24", self.subnet))?),
            tenant: "bench".to_string(),
        })
    }

    /// The bridge's address, the VPSes' gateway.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// Creates (if new) and starts a VPS, as the agent's ApplyVps does: the runtime's apply,
    /// then its network port when `port` is given. Returns the init's host pid.
    pub fn create_start(
        &mut self,
        vps_id: &str,
        limits: &Limits,
        port: Option<&PortSpec>,
    ) -> Result<u32> {
        if !self.vps_ids.iter().any(|known| known == vps_id) {
            self.vps_ids.push(vps_id.to_string());
        }
        let observed = self
            .runtime
            .apply(&Self::spec(vps_id, limits.clone(), Power::Running))
            .with_context(|| format!("starting VPS {vps_id}"))?;
        let pid = match (observed.state, observed.init_pid) {
            (ObservedState::Running, Some(pid)) => pid,
            _ => bail!("VPS {vps_id} did not start: {observed:?}"),
        };
        if let (Some(network), Some(port)) = (&self.network, port) {
            self.tokio
                .block_on(network.ensure_port(port, pid))
                .with_context(|| format!("network port of VPS {vps_id}"))?;
        }
        Ok(pid)
    }

    /// Gives the VPS (init `pid`) its network port, or converges it again (as the agent's
    /// worker does after an apply or a restore).
    pub fn ensure_port(&self, port: &PortSpec, pid: u32) -> Result<()> {
        let network = self.network.as_ref().context("a node without network")?;
        self.tokio
            .block_on(network.ensure_port(port, pid))
            .with_context(|| format!("network port of VPS {}", port.vps_id))
    }

    /// Stops a VPS (its init's halt signal, SIGKILL after the grace) and removes its port.
    pub fn stop(&self, vps_id: &str, limits: &Limits) -> Result<()> {
        let observed = self
            .runtime
            .apply(&Self::spec(vps_id, limits.clone(), Power::Stopped))
            .with_context(|| format!("stopping VPS {vps_id}"))?;
        if observed.state != ObservedState::Stopped {
            bail!("VPS {vps_id} did not stop: {observed:?}");
        }
        self.remove_port(vps_id)
    }

    /// Deletes a VPS and its port, as the agent's DeleteVps does.
    pub fn delete(&mut self, vps_id: &str) -> Result<()> {
        self.runtime
            .delete(vps_id)
            .with_context(|| format!("deleting VPS {vps_id}"))?;
        self.remove_port(vps_id)?;
        self.vps_ids.retain(|known| known != vps_id);
        Ok(())
    }

    /// Removes the VPS's network port (also what is left of it after a checkpoint).
    pub fn remove_port(&self, vps_id: &str) -> Result<()> {
        if let Some(network) = &self.network {
            self.tokio
                .block_on(network.remove_port(vps_id))
                .with_context(|| format!("removing the port of VPS {vps_id}"))?;
        }
        Ok(())
    }

    /// Runs `sh -c script` in the VPS through the agent's exec; fails unless it exits 0.
    pub fn sh(&self, vps_id: &str, script: &str) -> Result<Output> {
        let command = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let output = self.tokio.block_on(async {
            let child = self.runtime.exec(vps_id, &command, &[])?;
            anyhow::Ok(child.wait_with_output().await?)
        })?;
        if !output.status.success() {
            bail!(
                "`{script}` in VPS {vps_id}: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }

    /// Starts `sh -c script` in the VPS and leaves it running; dropping the child kills it.
    pub fn spawn_sh(&self, vps_id: &str, script: &str) -> Result<tokio::process::Child> {
        let _context = self.tokio.enter();
        let command = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        Ok(self.runtime.exec(vps_id, &command, &[])?)
    }

    /// The network namespace of a running VPS.
    /// The IPv4 GSO sizes of both ends of the VPS's port (host end, eth0 inside).
    pub fn port_gso_ipv4_max(&self, vps_id: &str) -> Result<(Option<u32>, Option<u32>)> {
        let network = self.network.as_ref().context("this node has no network")?;
        let netns = self.netns(vps_id)?;
        self.tokio
            .block_on(network.port_gso_ipv4_max(vps_id, &netns))
            .with_context(|| format!("reading the GSO size of {vps_id}'s port"))
    }

    pub fn netns(&self, vps_id: &str) -> Result<PathBuf> {
        self.runtime
            .netns_path(vps_id)?
            .with_context(|| format!("VPS {vps_id} has no network namespace (not running?)"))
    }

    /// The VPS's cgroup dirs (one per v1 hierarchy, or one on v2).
    pub fn cgroup_paths(&self, vps_id: &str) -> Vec<PathBuf> {
        self.runtime.cgroup_paths(vps_id)
    }

    /// The first of `files` found in the VPS's cgroup dirs, trimmed.
    pub fn cgroup_file(&self, vps_id: &str, files: &[&str]) -> Result<String> {
        for dir in self.cgroup_paths(vps_id) {
            for file in files {
                if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                    return Ok(text.trim().to_string());
                }
            }
        }
        bail!("none of {files:?} in the cgroup of VPS {vps_id}")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for vps_id in std::mem::take(&mut self.vps_ids) {
            if let Err(error) = self.runtime.delete(&vps_id) {
                eprintln!("   cleanup: deleting VPS {vps_id}: {error}");
            }
        }
        if let Some(network) = self.network.take() {
            if let Err(error) = self.tokio.block_on(network.teardown()) {
                eprintln!("   cleanup: network of {}: {error}", self.bridge);
            }
            paddock_tests::remove_network(&self.bridge);
        }
        purge_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// Kills what is left in `parent` and removes it from every cgroup hierarchy mounted on this
/// host, named ones (`name=systemd`) and a hybrid host's v2 mount included.
pub fn purge_cgroup_everywhere(parent: &str) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let is_cgroup = right
            .split_whitespace()
            .next()
            .is_some_and(|fstype| fstype == "cgroup" || fstype == "cgroup2");
        if let (true, Some(mount_point)) = (is_cgroup, left.split_whitespace().nth(4)) {
            paddock_tests::purge_cgroup(&PathBuf::from(mount_point).join(parent));
        }
    }
}
