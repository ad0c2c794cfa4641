//! `paddock-agent` configuration (`config/agent.toml`).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{load_toml, ConfigError};

/// The kernel's smallest default and largest possible GSO size (`GSO_MAX_SIZE`): the range
/// of `port_gso_max_bytes`.
pub const PORT_GSO_MIN_BYTES: u32 = 65_536;
pub const PORT_GSO_MAX_BYTES: u32 = 524_280;

/// The controllers an agent may talk to: one address (`controller = "https://..."`) or a
/// list of the controllers sharing one store, tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerAddresses(pub Vec<String>);

impl ControllerAddresses {
    /// The first address (where the agent enrols).
    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    pub fn all(&self) -> &[String] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ControllerAddresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(address) => Self(vec![address]),
            OneOrMany::Many(addresses) => Self(addresses),
        })
    }
}

/// Configuration of a node agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Name of this node in the controller; defaults to the host name.
    pub node_name: Option<String>,
    /// Address of the agent's own gRPC service (called by the controller).
    pub listen: SocketAddr,
    /// Prometheus metrics endpoint (`GET /metrics`); `"off"` disables it
    /// (absent means the default, 127.0.0.1:7454).
    #[serde(with = "crate::optional_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address the controller should dial; defaults to `https://<listen>`.
    pub advertise_address: Option<String>,
    /// The controller's gRPC endpoint, or several controllers sharing one etcd store
    /// (`controller = ["https://a:7443", "https://b:7443"]`): the agent talks to one and moves
    /// to the next when it fails.
    pub controller: ControllerAddresses,
    /// File holding the node join token issued by `paddock-controller init`;
    /// used once, to enrol and obtain the node's certificate.
    pub join_token_file: PathBuf,
    /// The controller's CA certificate (`<controller data_dir>/tls/ca.crt`).
    pub controller_ca_file: PathBuf,
    /// Templates, VPS root filesystems, console logs and the agent journal.
    pub state_dir: PathBuf,
    /// Parent cgroup (under every controller hierarchy) of all VPS cgroups.
    pub cgroup_parent: String,
    /// First host uid/gid of the VPS id ranges: each VPS gets its own 65536
    /// ids from here on (ranges listed in /etc/subuid and /etc/subgid are skipped).
    pub id_base: u32,
    /// How long a stopping VPS gets after its power-off signal before SIGKILL.
    pub stop_grace_secs: u32,
    /// How long starting a VPS's init (the start helper: console, mounts, namespaces) and
    /// each disk tool on its start path may take. One that takes longer is killed and
    /// cleaned up; the VPS shows `error` naming the step, and the controller retries it
    /// with backoff.
    pub start_timeout_secs: u32,
    /// Host bridge the VPS ports attach to (created if missing; at most 15 characters).
    pub bridge: String,
    /// Interface that NAT pools masquerade out of; unset = any interface but the bridge.
    pub uplink: Option<String>,
    /// Turn on `net.ipv4.ip_forward` when a VPS gets a gateway, so the host routes VPS traffic.
    pub ip_forward: bool,
    /// Largest IPv4 TCP packet (bytes, before segmentation) the VPS ports pass whole, both
    /// ends of each veth pair: up to 524280 (BIG TCP) cuts the per-packet cost of VPS to VPS
    /// traffic on the node. Unset: what the uplink passes whole (`uplink`, else the devices
    /// of the default routes), so traffic leaving the node is never cut up in software.
    pub port_gso_max_bytes: Option<u32>,
    /// Ports of the node itself that VPSes may open through the bridge
    /// (`"udp/53"`, `"tcp/8000-8010"`). Everything else a VPS sends to one of
    /// the node's own addresses is dropped, except replies to connections the
    /// node opened, ping and the ICMPv6 that IPv6 needs. Forwarded and NATed
    /// traffic is not affected.
    pub host_ports_open_to_vps: Vec<HostPort>,
    /// Which VPSes on the bridge may exchange frames directly.
    pub vps_isolation: Isolation,
    /// Seconds between usage samples (cumulative CPU, memory, IO, network and
    /// disk counters per VPS) sent to the controller with the heartbeat.
    pub usage_interval_secs: u32,
    /// Which /proc the VPSes see: `lxcfs` (their own memory, CPUs, uptime, load, disk and
    /// swap figures) or `host` (the host's, unvirtualised).
    pub proc_view: ProcViewKind,
    /// Mount point of lxcfs (reused when a live lxcfs is mounted there, e.g. by Debian's
    /// `lxcfs.service`; otherwise the agent starts one).
    pub lxcfs_dir: PathBuf,
    /// The backup store: a directory holding `<id>.tar.zst` archives and their
    /// `<id>.manifest.json`. Unset: `backups/` beside the state dir (the state dir's
    /// parent joined with `backups`). Share it between nodes (NFS, a cluster filesystem)
    /// to restore a backup on any node.
    pub backup_dir: Option<PathBuf>,
    /// An S3-compatible bucket as the backup store (`[backup_s3]`); `backup_dir` is then
    /// only the spool where an archive is written before its upload and read after its
    /// download.
    pub backup_s3: Option<S3Store>,
}

/// An S3-compatible bucket (AWS S3, Ceph RGW, MinIO, ...) holding backups as objects
/// `<prefix><id>.tar.zst` and `<prefix><id>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Store {
    /// The service's base URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://10.0.0.5:9000`; the bucket is addressed path-style under it.
    pub endpoint: String,
    pub bucket: String,
    /// The region requests are signed for (SigV4).
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Prepended to every object key, e.g. `paddock/`.
    #[serde(default)]
    pub prefix: String,
    pub access_key_id: String,
    /// File holding the secret access key (one line; keep it 0600).
    pub secret_access_key_file: PathBuf,
    /// Archives larger than this are uploaded in parts of this size (S3 allows 5 MiB to
    /// 5 GiB per part, 10,000 parts).
    #[serde(default = "default_s3_part_size")]
    pub part_size_mib: u64,
}

fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

fn default_s3_part_size() -> u64 {
    64
}

impl AgentConfig {
    /// The backup store directory: `backup_dir`, or `backups` beside the state dir.
    pub fn backup_dir(&self) -> PathBuf {
        match &self.backup_dir {
            Some(dir) => dir.clone(),
            None => self
                .state_dir
                .parent()
                .unwrap_or(self.state_dir.as_path())
                .join("backups"),
        }
    }
}

/// Where the VPSes' /proc figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcViewKind {
    /// lxcfs bind-mounted over /proc/{meminfo,cpuinfo,stat,uptime,loadavg,diskstats,swaps}.
    Lxcfs,
    /// The host's /proc files.
    Host,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7454))),
            advertise_address: None,
            controller: ControllerAddresses(vec!["https://127.0.0.1:7443".to_owned()]),
            join_token_file: PathBuf::from("/var/lib/paddock/controller/join-token"),
            controller_ca_file: PathBuf::from("/var/lib/paddock/controller/tls/ca.crt"),
            state_dir: PathBuf::from("/var/lib/paddock/agent"),
            cgroup_parent: "paddock".to_owned(),
            id_base: 100_000,
            stop_grace_secs: 10,
            start_timeout_secs: 60,
            bridge: "pdk0".to_owned(),
            uplink: None,
            ip_forward: true,
            port_gso_max_bytes: None,
            host_ports_open_to_vps: Vec::new(),
            vps_isolation: Isolation::Tenant,
            usage_interval_secs: 10,
            proc_view: ProcViewKind::Lxcfs,
            lxcfs_dir: PathBuf::from("/var/lib/lxcfs"),
            backup_dir: None,
            backup_s3: None,
        }
    }
}

/// Which VPSes on the node's bridge may exchange frames directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Only VPSes of the same tenant; frames between the ports of different
    /// tenants are dropped on the bridge.
    #[default]
    Tenant,
    /// Every VPS on the bridge (one flat segment; single-tenant nodes only).
    None,
}

/// A transport protocol of [`HostPort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The protocol's name as nft and the config spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A port range of the node open to its VPSes: `tcp/53` or `udp/8000-8010`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: Transport,
    pub first: u16,
    pub last: u16,
}

impl HostPort {
    /// The ports as nft and the config spell them: `53` or `8000-8010`.
    pub fn ports(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol.name(), self.ports())
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} must be tcp/PORT, udp/PORT or PROTO/FIRST-LAST");
        let (protocol, ports) = text.split_once('/').ok_or_else(invalid)?;
        let protocol = match protocol {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            _ => return Err(invalid()),
        };
        let port = |text: &str| match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(invalid()),
        };
        let (first, last) = match ports.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(ports)?, port(ports)?),
        };
        if first > last {
            return Err(invalid());
        }
        Ok(Self {
            protocol,
            first,
            last,
        })
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl AgentConfig {
    /// Loads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = load_toml(path)?;
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if config.cgroup_parent.is_empty()
            || config.cgroup_parent.starts_with('/')
            || config
                .cgroup_parent
                .split('/')
                .any(|part| part == ".." || part.is_empty())
        {
            return Err(invalid(
                "cgroup_parent",
                "must be a relative cgroup path without empty or '..' components",
            ));
        }
        let ifname_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 15
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !ifname_ok(&config.bridge) {
            return Err(invalid(
                "bridge",
                "must be an interface name of 1-15 characters of [A-Za-z0-9_-]",
            ));
        }
        if config
            .uplink
            .as_deref()
            .is_some_and(|uplink| !ifname_ok(uplink))
        {
            return Err(invalid(
                "uplink",
                "must be an interface name of 1-15 characters of [A-Za-z0-9_-]",
            ));
        }
        if config
            .port_gso_max_bytes
            .is_some_and(|bytes| !(PORT_GSO_MIN_BYTES..=PORT_GSO_MAX_BYTES).contains(&bytes))
        {
            return Err(invalid(
                "port_gso_max_bytes",
                "must be between 65536 and 524280 bytes",
            ));
        }
        if config.id_base < 65_536 {
            return Err(invalid(
                "id_base",
                "must be at least 65536 so VPS ids never overlap the host's own users",
            ));
        }
        if config.usage_interval_secs == 0 || config.usage_interval_secs > 3600 {
            return Err(invalid(
                "usage_interval_secs",
                "must be between 1 and 3600 seconds",
            ));
        }
        if !config.lxcfs_dir.is_absolute() {
            return Err(invalid("lxcfs_dir", "must be an absolute path"));
        }
        if let Some(s3) = &config.backup_s3 {
            if !(s3.endpoint.starts_with("https://") || s3.endpoint.starts_with("http://")) {
                return Err(invalid(
                    "backup_s3.endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
            if s3.bucket.is_empty() || s3.bucket.contains('/') {
                return Err(invalid(
                    "backup_s3.bucket",
                    "must be a bucket name (no '/')",
                ));
            }
            if !(5..=5120).contains(&s3.part_size_mib) {
                return Err(invalid(
                    "backup_s3.part_size_mib",
                    "must be between 5 and 5120 (S3's part size limits)",
                ));
            }
        }
        if config.controller.0.is_empty() {
            return Err(invalid("controller", "needs at least one address"));
        }
        if !config
            .controller
            .0
            .iter()
            .all(|url| url.starts_with("https://"))
        {
            return Err(invalid(
                "controller",
                "must start with https:// (agents talk to the controller over mutual TLS)",
            ));
        }
        Ok(config)
    }

    /// The address the controller dials to reach this agent.
    pub fn advertised(&self) -> String {
        self.advertise_address
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch dir and a loader of agent.toml texts written into it (the caller removes the
    /// dir).
    fn loader(name: &str) -> (PathBuf, impl Fn(&str) -> Result<AgentConfig, ConfigError>) {
        let dir = std::env::temp_dir().join(format!(
            "paddock-agent-config-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("agent.toml");
        let load = move |text: &str| {
            std::fs::write(&path, text).expect("write");
            AgentConfig::load(&path)
        };
        (dir, load)
    }

    #[test]
    fn controller_is_one_address_or_a_list() {
        let (dir, load) = loader("controllers");
        let one = load("controller = \"https://a:7443\"\n").expect("one address");
        assert_eq!(one.controller.all(), ["https://a:7443".to_owned()]);
        let many = load("controller = [\"https://a:7443\", \"https://b:7443\"]\n").expect("a list");
        assert_eq!(many.controller.first(), "https://a:7443");
        assert_eq!(many.controller.all().len(), 2);
        for bad in [
            "controller = []\n",
            "controller = [\"https://a:7443\", \"http://b:7443\"]\n",
        ] {
            match load(bad) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "controller"),
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn port_gso_size_is_unset_or_within_the_kernels_range() {
        let (dir, load) = loader("port-gso");
        assert_eq!(load("").expect("default").port_gso_max_bytes, None);
        for good in [65_536, 185_000, 524_280] {
            let config = load(&format!("port_gso_max_bytes = {good}\n")).expect("in range");
            assert_eq!(config.port_gso_max_bytes, Some(good));
        }
        for bad in [0, 65_535, 524_281] {
            match load(&format!("port_gso_max_bytes = {bad}\n")) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "port_gso_max_bytes"),
                other => panic!("{bad} was not refused: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.toml");
        let config = AgentConfig::load(&path).expect("config/agent.toml must load");
        assert_eq!(config.cgroup_parent, "paddock");
        assert_eq!(
            config.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7454)))
        );
    }

    #[test]
    fn metrics_listen_defaults_on_and_turns_off_with_off() {
        let (dir, load) = loader("metrics");
        let absent = load("").expect("absent");
        assert_eq!(
            absent.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 7454)))
        );
        let moved = load("metrics_listen = \"0.0.0.0:9100\"\n").expect("address");
        assert_eq!(
            moved.metrics_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        let off = load("metrics_listen = \"off\"\n").expect("off");
        assert_eq!(off.metrics_listen, None);
        // What is written back loads to the same: `None` is spelt "off", not left out.
        let written = toml::to_string(&off).expect("serialize");
        assert!(written.contains("metrics_listen = \"off\""), "{written}");
        assert_eq!(load(&written).expect("round trip").metrics_listen, None);
        let err = load("metrics_listen = \"localhost\"\n")
            .expect_err("not an address")
            .to_string();
        assert!(
            err.contains("metrics_listen") && err.contains("\"off\""),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_s3_backup_store_parses_with_defaults_and_bad_values_are_named() {
        let (dir, load) = loader("s3");
        assert_eq!(load("").expect("absent").backup_s3, None);
        let base = "[backup_s3]\nendpoint = \"http://10.0.0.5:9000\"\nbucket = \"b\"\n\
                    access_key_id = \"AK\"\nsecret_access_key_file = \"/etc/paddock/s3\"\n";
        let set = load(base).expect("set").backup_s3.expect("s3");
        assert_eq!(set.region, "us-east-1");
        assert_eq!(set.prefix, "");
        assert_eq!(set.part_size_mib, 64);
        for (extra, field) in [
            ("", "backup_s3.endpoint"),
            ("part_size_mib = 4\n", "backup_s3.part_size_mib"),
        ] {
            let text = if field == "backup_s3.endpoint" {
                base.replace("http://10.0.0.5:9000", "10.0.0.5:9000")
            } else {
                format!("{base}{extra}")
            };
            let err = load(&text).expect_err(field).to_string();
            assert!(err.contains(field), "{err}");
        }
        let err = load(&base.replace("bucket = \"b\"", "bucket = \"a/b\""))
            .expect_err("bucket")
            .to_string();
        assert!(err.contains("backup_s3.bucket"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn host_ports_and_isolation_parse() {
        let (dir, load) = loader("network");
        let absent = load("").expect("absent");
        assert!(absent.host_ports_open_to_vps.is_empty());
        assert_eq!(absent.vps_isolation, Isolation::Tenant);
        let set = load(
            "host_ports_open_to_vps = [\"udp/53\", \"tcp/8000-8010\"]\nvps_isolation = \"none\"\n",
        )
        .expect("set");
        assert_eq!(
            set.host_ports_open_to_vps,
            vec![
                HostPort {
                    protocol: Transport::Udp,
                    first: 53,
                    last: 53
                },
                HostPort {
                    protocol: Transport::Tcp,
                    first: 8000,
                    last: 8010
                }
            ]
        );
        assert_eq!(set.host_ports_open_to_vps[1].to_string(), "tcp/8000-8010");
        assert_eq!(set.vps_isolation, Isolation::None);
        for bad in [
            "\"53\"",
            "\"icmp/1\"",
            "\"tcp/0\"",
            "\"udp/9-8\"",
            "\"tcp/70000\"",
        ] {
            let err = load(&format!("host_ports_open_to_vps = [{bad}]\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("tcp/PORT"), "{err}");
        }
        assert!(load("vps_isolation = \"pool\"\n").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn rejects_unknown_and_escaping_fields() {
        let dir = std::env::temp_dir().join(format!("paddock-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "stop_grace = 3\n").expect("write");
        let err = AgentConfig::load(&unknown)
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("stop_grace"), "{err}");
        let escaping = dir.join("escaping.toml");
        std::fs::write(&escaping, "cgroup_parent = \"../x\"\n").expect("write");
        let err = AgentConfig::load(&escaping)
            .expect_err("escaping")
            .to_string();
        assert!(err.contains("cgroup_parent"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
