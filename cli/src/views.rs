//! Proto messages turned into the stable views the CLI prints.
//!
//! The JSON field names here are a contract that scripts and tests rely on:
//! sizes are integers in bytes (`*_bytes`), states and roles are lowercase
//! words, times are RFC 3339 strings (or `null` when the server sent none).
//! Tables show the same data for people, with sizes like `1.0 GiB`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use paddock_config::ByteSize;
use paddock_proto::v1;
use serde::{Serialize, Serializer};

use crate::output::{age, dashes, Detail, Tabular};

/// Converts a protobuf timestamp; out-of-range values count as absent.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Formats a time as RFC 3339 in UTC, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn serialize_time<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&rfc3339(time)),
        None => serializer.serialize_none(),
    }
}

/// `2024-05-01T12:00:00Z (3d ago)` for detail views.
fn time_and_age(time: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match time {
        Some(t) => format!("{} ({} ago)", rfc3339(&t), age(Some(t), now)),
        None => String::new(),
    }
}

/// Lowercase name of a [`v1::VpsState`] value.
pub fn vps_state_name(state: i32) -> &'static str {
    match v1::VpsState::try_from(state) {
        Ok(v1::VpsState::Pending) => "pending",
        Ok(v1::VpsState::Running) => "running",
        Ok(v1::VpsState::Stopped) => "stopped",
        Ok(v1::VpsState::Error) => "error",
        Ok(v1::VpsState::Suspended) => "suspended",
        Ok(v1::VpsState::Deleting) => "deleting",
        Ok(v1::VpsState::Unknown | v1::VpsState::Unspecified) | Err(_) => "unknown",
    }
}

/// Lowercase name of a [`v1::PowerState`] value.
pub fn power_state_name(power: i32) -> &'static str {
    match v1::PowerState::try_from(power) {
        Ok(v1::PowerState::Running) => "running",
        Ok(v1::PowerState::Stopped) => "stopped",
        Ok(v1::PowerState::Unspecified) | Err(_) => "unspecified",
    }
}

/// Lowercase name of a [`v1::Role`] value.
pub fn role_name(role: i32) -> &'static str {
    match v1::Role::try_from(role) {
        Ok(v1::Role::Admin) => "admin",
        Ok(v1::Role::Tenant) => "tenant",
        Ok(v1::Role::Billing) => "billing",
        Ok(v1::Role::Unspecified) | Err(_) => "unspecified",
    }
}

/// Lowercase name of a [`v1::NodeStatus`] value.
pub fn node_status_name(status: i32) -> &'static str {
    match v1::NodeStatus::try_from(status) {
        Ok(v1::NodeStatus::Online) => "online",
        Ok(v1::NodeStatus::Offline) => "offline",
        Ok(v1::NodeStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// Prints a vCPU count without a pointless `.0`: `2`, `0.5`, `1.25`.
pub fn format_vcpus(vcpus: f64) -> String {
    let text = format!("{vcpus:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn size(bytes: u64) -> String {
    ByteSize(bytes).to_string()
}

/// A network rate: `50 Mbit/s`, `1 Gbit/s`, `800 kbit/s`, or bits/s when it
/// is no whole multiple (decimal units, as on the command line).
pub fn format_rate(bits_per_sec: u64) -> String {
    for (unit, size) in [
        ("Gbit", 1_000_000_000),
        ("Mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bits_per_sec >= size && bits_per_sec.is_multiple_of(size) {
            return format!("{} {unit}/s", bits_per_sec / size);
        }
    }
    format!("{bits_per_sec} bit/s")
}

/// Lowercase name of a [`v1::TransferOverage`] value; `None` for unset.
fn overage_name(overage: i32) -> Option<&'static str> {
    match v1::TransferOverage::try_from(overage) {
        Ok(v1::TransferOverage::Notify) => Some("notify"),
        Ok(v1::TransferOverage::Throttle) => Some("throttle"),
        Ok(v1::TransferOverage::Suspend) => Some("suspend"),
        Ok(v1::TransferOverage::Unspecified) | Err(_) => None,
    }
}

/// `used/limit` as a table cell.
fn of(used: impl std::fmt::Display, limit: impl std::fmt::Display) -> String {
    format!("{used}/{limit}")
}

/// Every resource field of a VPS or plan; zero means "unlimited" for rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourcesView {
    pub vcpus: f64,
    pub cpu_weight: u32,
    pub memory_bytes: u64,
    pub swap_bytes: u64,
    pub disk_bytes: u64,
    pub io_read_bytes_per_sec: u64,
    pub io_write_bytes_per_sec: u64,
    pub io_read_iops: u64,
    pub io_write_iops: u64,
    pub pids_max: u64,
    pub net_ingress_bits_per_sec: u64,
    pub net_egress_bits_per_sec: u64,
    pub ipv4_count: u32,
    pub ipv6_count: u32,
}

impl From<&v1::Resources> for ResourcesView {
    fn from(r: &v1::Resources) -> Self {
        Self {
            vcpus: r.vcpus,
            cpu_weight: r.cpu_weight,
            memory_bytes: r.memory_bytes,
            swap_bytes: r.swap_bytes,
            disk_bytes: r.disk_bytes,
            io_read_bytes_per_sec: r.io_read_bytes_per_sec,
            io_write_bytes_per_sec: r.io_write_bytes_per_sec,
            io_read_iops: r.io_read_iops,
            io_write_iops: r.io_write_iops,
            pids_max: r.pids_max,
            net_ingress_bits_per_sec: r.net_ingress_bits_per_sec,
            net_egress_bits_per_sec: r.net_egress_bits_per_sec,
            ipv4_count: r.ipv4_count,
            ipv6_count: r.ipv6_count,
        }
    }
}

/// A VPS as `list`, `show` and the lifecycle commands print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VpsView {
    pub id: String,
    pub name: String,
    pub tenant: String,
    /// `pending`, `running`, `stopped`, `error`, `unknown`, `suspended` or `deleting`.
    pub state: &'static str,
    /// `running`, `stopped` or `unspecified`.
    pub desired_power: &'static str,
    pub node: String,
    pub plan: String,
    pub template: String,
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: Option<DateTime<Utc>>,
    pub message: String,
    pub init_pid: u32,
    /// The full resource set, including the limits without a column of their own.
    pub resources: ResourcesView,
    /// This month's network transfer; `null` when the server sent none.
    pub transfer: Option<TransferView>,
    /// Whether the node has applied the VPS's current desired state.
    pub converged: bool,
}

/// A VPS's network transfer in the current billing month (UTC).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TransferView {
    /// `YYYY-MM`.
    pub month: String,
    pub used_bytes: u64,
    /// 0 means unmetered.
    pub allowance_bytes: u64,
    /// `throttle` or `suspend` while the plan's overage action holds the VPS, else `null`.
    pub limited: Option<&'static str>,
    pub limited_rate_bits_per_sec: u64,
    #[serde(serialize_with = "serialize_time")]
    pub limited_until: Option<DateTime<Utc>>,
}

impl From<&v1::TransferStatus> for TransferView {
    fn from(t: &v1::TransferStatus) -> Self {
        Self {
            month: t.month.clone(),
            used_bytes: t.used_bytes,
            allowance_bytes: t.allowance_bytes,
            limited: overage_name(t.limited),
            limited_rate_bits_per_sec: t.limited_rate_bits_per_sec,
            limited_until: timestamp(t.limited_until.as_ref()),
        }
    }
}

impl TransferView {
    /// `1.2 GiB of 10.0 GiB (12%) in 2026-11`.
    fn usage(&self) -> String {
        if self.allowance_bytes == 0 {
            return format!("{} in {} (unmetered)", size(self.used_bytes), self.month);
        }
        let percent = u128::from(self.used_bytes) * 100 / u128::from(self.allowance_bytes);
        format!(
            "{} of {} ({percent}%) in {}",
            size(self.used_bytes),
            size(self.allowance_bytes),
            self.month
        )
    }

    /// `throttled to 1 Mbit/s until 2026-12-01T00:00:00Z`, or empty.
    fn limit(&self) -> String {
        let until = self.limited_until.as_ref().map(rfc3339).unwrap_or_default();
        match self.limited {
            Some("throttle") => format!(
                "throttled to {} until {until}",
                format_rate(self.limited_rate_bits_per_sec)
            ),
            Some(_) => format!("suspended until {until}"),
            None => String::new(),
        }
    }
}

impl From<&v1::Vps> for VpsView {
    fn from(vps: &v1::Vps) -> Self {
        let resources = vps
            .resources
            .as_ref()
            .map(ResourcesView::from)
            .unwrap_or_default();
        Self {
            id: vps.id.clone(),
            name: vps.name.clone(),
            tenant: vps.tenant.clone(),
            state: vps_state_name(vps.state),
            desired_power: power_state_name(vps.desired_power),
            node: vps.node.clone(),
            plan: vps.plan.clone(),
            template: vps.template.clone(),
            vcpus: resources.vcpus,
            memory_bytes: resources.memory_bytes,
            disk_bytes: resources.disk_bytes,
            ipv4: vps.ipv4.clone(),
            ipv6: vps.ipv6.clone(),
            created_at: timestamp(vps.created_at.as_ref()),
            message: vps.message.clone(),
            init_pid: vps.init_pid,
            resources,
            transfer: vps.transfer.as_ref().map(TransferView::from),
            converged: vps.converged,
        }
    }
}

impl Tabular for VpsView {
    const HEADERS: &'static [&'static str] = &[
        "NAME", "STATE", "NODE", "PLAN", "VCPUS", "MEMORY", "DISK", "IPV4", "AGE",
    ];

    fn row(&self, now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.name.clone(),
            self.state.to_owned(),
            self.node.clone(),
            self.plan.clone(),
            format_vcpus(self.vcpus),
            size(self.memory_bytes),
            size(self.disk_bytes),
            self.ipv4.join(","),
            age(self.created_at, now),
        ])
    }
}

impl Detail for VpsView {
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let r = &self.resources;
        let pids = if r.pids_max == 0 {
            "unlimited".to_owned()
        } else {
            r.pids_max.to_string()
        };
        let pid = if self.init_pid == 0 {
            String::new()
        } else {
            self.init_pid.to_string()
        };
        vec![
            ("Name", self.name.clone()),
            ("ID", self.id.clone()),
            ("Tenant", self.tenant.clone()),
            ("State", self.state.to_owned()),
            ("Desired power", self.desired_power.to_owned()),
            ("Node", self.node.clone()),
            ("Plan", self.plan.clone()),
            ("Template", self.template.clone()),
            ("VCPUs", format_vcpus(self.vcpus)),
            ("Memory", size(self.memory_bytes)),
            ("Swap", size(r.swap_bytes)),
            ("Disk", size(self.disk_bytes)),
            ("PIDs max", pids),
            ("IPv4", self.ipv4.join(", ")),
            ("IPv6", self.ipv6.join(", ")),
            ("Created", time_and_age(self.created_at, now)),
            ("Init PID", pid),
            (
                "Transfer",
                self.transfer
                    .as_ref()
                    .map(TransferView::usage)
                    .unwrap_or_default(),
            ),
            (
                "Transfer limit",
                self.transfer
                    .as_ref()
                    .map(TransferView::limit)
                    .unwrap_or_default(),
            ),
            ("Message", self.message.clone()),
        ]
    }
}

/// Quota limits or usage of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QuotaView {
    pub max_vps: u32,
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub ipv4: u32,
}

impl From<&v1::Quota> for QuotaView {
    fn from(q: &v1::Quota) -> Self {
        Self {
            max_vps: q.max_vps,
            vcpus: q.vcpus,
            memory_bytes: q.memory_bytes,
            disk_bytes: q.disk_bytes,
            ipv4: q.ipv4_count,
        }
    }
}

fn quota(q: Option<&v1::Quota>) -> QuotaView {
    q.map(QuotaView::from).unwrap_or_default()
}

/// `RESOURCE USED LIMIT` rows comparing usage with limits.
pub fn quota_rows(used: &QuotaView, limit: &QuotaView) -> Vec<Vec<String>> {
    vec![
        vec![
            "vps".to_owned(),
            used.max_vps.to_string(),
            limit.max_vps.to_string(),
        ],
        vec![
            "vcpus".to_owned(),
            format_vcpus(used.vcpus),
            format_vcpus(limit.vcpus),
        ],
        vec![
            "memory".to_owned(),
            size(used.memory_bytes),
            size(limit.memory_bytes),
        ],
        vec![
            "disk".to_owned(),
            size(used.disk_bytes),
            size(limit.disk_bytes),
        ],
        vec![
            "ipv4".to_owned(),
            used.ipv4.to_string(),
            limit.ipv4.to_string(),
        ],
    ]
}

/// Headers of [`quota_rows`].
pub const QUOTA_HEADERS: &[&str] = &["RESOURCE", "USED", "LIMIT"];

/// A tenant with its quota and current use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantView {
    pub name: String,
    pub suspended: bool,
    pub quota: QuotaView,
    pub used: QuotaView,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: Option<DateTime<Utc>>,
}

impl From<&v1::Tenant> for TenantView {
    fn from(t: &v1::Tenant) -> Self {
        Self {
            name: t.name.clone(),
            suspended: t.suspended,
            quota: quota(t.quota.as_ref()),
            used: quota(t.used.as_ref()),
            created_at: timestamp(t.created_at.as_ref()),
        }
    }
}

impl Tabular for TenantView {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "SUSPENDED",
        "VPS",
        "VCPUS",
        "MEMORY",
        "DISK",
        "IPV4",
        "AGE",
    ];

    fn row(&self, now: DateTime<Utc>) -> Vec<String> {
        let (u, q) = (&self.used, &self.quota);
        dashes(vec![
            self.name.clone(),
            if self.suspended { "yes" } else { "no" }.to_owned(),
            of(u.max_vps, q.max_vps),
            of(format_vcpus(u.vcpus), format_vcpus(q.vcpus)),
            of(size(u.memory_bytes), size(q.memory_bytes)),
            of(size(u.disk_bytes), size(q.disk_bytes)),
            of(u.ipv4, q.ipv4),
            age(self.created_at, now),
        ])
    }
}

impl Detail for TenantView {
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let (u, q) = (&self.used, &self.quota);
        vec![
            ("Name", self.name.clone()),
            (
                "Suspended",
                if self.suspended { "yes" } else { "no" }.to_owned(),
            ),
            ("Created", time_and_age(self.created_at, now)),
            ("VPS", format!("{} of {}", u.max_vps, q.max_vps)),
            (
                "VCPUs",
                format!("{} of {}", format_vcpus(u.vcpus), format_vcpus(q.vcpus)),
            ),
            (
                "Memory",
                format!("{} of {}", size(u.memory_bytes), size(q.memory_bytes)),
            ),
            (
                "Disk",
                format!("{} of {}", size(u.disk_bytes), size(q.disk_bytes)),
            ),
            ("IPv4", format!("{} of {}", u.ipv4, q.ipv4)),
        ]
    }
}

/// The caller's own quota (`paddock quota`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuotaReportView {
    pub tenant: String,
    pub quota: QuotaView,
    pub used: QuotaView,
}

impl From<&v1::QuotaReport> for QuotaReportView {
    fn from(r: &v1::QuotaReport) -> Self {
        Self {
            tenant: r.tenant.clone(),
            quota: quota(r.limit.as_ref()),
            used: quota(r.used.as_ref()),
        }
    }
}

impl From<&TenantView> for QuotaReportView {
    fn from(t: &TenantView) -> Self {
        Self {
            tenant: t.name.clone(),
            quota: t.quota.clone(),
            used: t.used.clone(),
        }
    }
}

/// A plan: a named resource bundle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanView {
    pub name: String,
    #[serde(flatten)]
    pub resources: ResourcesView,
    pub monthly_transfer_bytes: u64,
    /// At 100% of the allowance: `notify`, `throttle` or `suspend`.
    pub transfer_overage: &'static str,
    /// The throttle rate; 0 unless `transfer_overage` is `throttle`.
    pub overage_rate_bits_per_sec: u64,
    /// Snapshots each VPS of the plan may keep.
    pub max_snapshots: u32,
}

impl From<&v1::Plan> for PlanView {
    fn from(p: &v1::Plan) -> Self {
        Self {
            name: p.name.clone(),
            resources: p
                .resources
                .as_ref()
                .map(ResourcesView::from)
                .unwrap_or_default(),
            monthly_transfer_bytes: p.monthly_transfer_bytes,
            transfer_overage: overage_name(p.transfer_overage).unwrap_or("notify"),
            overage_rate_bits_per_sec: p.overage_rate_bits_per_sec,
            max_snapshots: p.max_snapshots,
        }
    }
}

impl Tabular for PlanView {
    const HEADERS: &'static [&'static str] = &[
        "NAME", "VCPUS", "MEMORY", "DISK", "PIDS", "IO READ", "IO WRITE", "IOPS R/W", "IPV4",
        "TRANSFER",
    ];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        let r = &self.resources;
        let unlimited = |value: u64, text: String| {
            if value == 0 {
                "unlimited".to_owned()
            } else {
                text
            }
        };
        dashes(vec![
            self.name.clone(),
            format_vcpus(r.vcpus),
            size(r.memory_bytes),
            size(r.disk_bytes),
            unlimited(r.pids_max, r.pids_max.to_string()),
            unlimited(
                r.io_read_bytes_per_sec,
                format!("{}/s", size(r.io_read_bytes_per_sec)),
            ),
            unlimited(
                r.io_write_bytes_per_sec,
                format!("{}/s", size(r.io_write_bytes_per_sec)),
            ),
            format!(
                "{}/{}",
                unlimited(r.io_read_iops, r.io_read_iops.to_string()),
                unlimited(r.io_write_iops, r.io_write_iops.to_string())
            ),
            r.ipv4_count.to_string(),
            unlimited(
                self.monthly_transfer_bytes,
                size(self.monthly_transfer_bytes),
            ),
        ])
    }
}

impl Detail for PlanView {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let r = &self.resources;
        let limit = |value: u64, text: String| {
            if value == 0 {
                "unlimited".to_owned()
            } else {
                text
            }
        };
        let rate = |value: u64| limit(value, format!("{}/s", size(value)));
        let bits = |value: u64| limit(value, format!("{value} bit/s"));
        vec![
            ("Name", self.name.clone()),
            ("VCPUs", format_vcpus(r.vcpus)),
            ("CPU weight", r.cpu_weight.to_string()),
            ("Memory", size(r.memory_bytes)),
            ("Swap", size(r.swap_bytes)),
            ("Disk", size(r.disk_bytes)),
            ("PIDs max", limit(r.pids_max, r.pids_max.to_string())),
            ("IO read", rate(r.io_read_bytes_per_sec)),
            ("IO write", rate(r.io_write_bytes_per_sec)),
            (
                "IO read IOPS",
                limit(r.io_read_iops, r.io_read_iops.to_string()),
            ),
            (
                "IO write IOPS",
                limit(r.io_write_iops, r.io_write_iops.to_string()),
            ),
            ("Net ingress", bits(r.net_ingress_bits_per_sec)),
            ("Net egress", bits(r.net_egress_bits_per_sec)),
            ("IPv4 addresses", r.ipv4_count.to_string()),
            ("IPv6 addresses", r.ipv6_count.to_string()),
            (
                "Monthly transfer",
                limit(
                    self.monthly_transfer_bytes,
                    size(self.monthly_transfer_bytes),
                ),
            ),
            (
                "Over allowance",
                match self.transfer_overage {
                    "throttle" => format!(
                        "throttle to {}",
                        format_rate(self.overage_rate_bits_per_sec)
                    ),
                    action => action.to_owned(),
                },
            ),
            ("Snapshots per VPS", self.max_snapshots.to_string()),
        ]
    }
}

/// vCPU, memory and disk totals of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CapacityView {
    pub vcpus: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl From<&v1::NodeCapacity> for CapacityView {
    fn from(c: &v1::NodeCapacity) -> Self {
        Self {
            vcpus: c.vcpus,
            memory_bytes: c.memory_bytes,
            disk_bytes: c.disk_bytes,
        }
    }
}

/// A node running `paddock-agent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub name: String,
    pub address: String,
    /// `online`, `offline` or `unknown`.
    pub status: &'static str,
    pub cordoned: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: CapacityView,
    pub allocated: CapacityView,
    #[serde(serialize_with = "serialize_time")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub vps_count: u32,
    pub agent_version: String,
}

impl From<&v1::Node> for NodeView {
    fn from(n: &v1::Node) -> Self {
        let capacity = |c: Option<&v1::NodeCapacity>| c.map(CapacityView::from).unwrap_or_default();
        Self {
            name: n.name.clone(),
            address: n.address.clone(),
            status: node_status_name(n.status),
            cordoned: n.cordoned,
            labels: n.labels.clone().into_iter().collect(),
            capacity: capacity(n.capacity.as_ref()),
            allocated: capacity(n.allocated.as_ref()),
            last_heartbeat: timestamp(n.last_heartbeat.as_ref()),
            vps_count: n.vps_count,
            agent_version: n.agent_version.clone(),
        }
    }
}

impl NodeView {
    fn scheduling(&self) -> &'static str {
        if self.cordoned {
            "cordoned"
        } else {
            "ready"
        }
    }
}

impl Tabular for NodeView {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "STATUS",
        "SCHEDULING",
        "VPS",
        "VCPUS",
        "MEMORY",
        "DISK",
        "HEARTBEAT",
        "VERSION",
    ];

    fn row(&self, now: DateTime<Utc>) -> Vec<String> {
        let (a, c) = (&self.allocated, &self.capacity);
        dashes(vec![
            self.name.clone(),
            self.status.to_owned(),
            self.scheduling().to_owned(),
            self.vps_count.to_string(),
            of(format_vcpus(a.vcpus), format_vcpus(c.vcpus)),
            of(size(a.memory_bytes), size(c.memory_bytes)),
            of(size(a.disk_bytes), size(c.disk_bytes)),
            self.last_heartbeat
                .map(|t| format!("{} ago", age(Some(t), now)))
                .unwrap_or_default(),
            self.agent_version.clone(),
        ])
    }
}

impl Detail for NodeView {
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let (a, c) = (&self.allocated, &self.capacity);
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            ("Name", self.name.clone()),
            ("Address", self.address.clone()),
            ("Status", self.status.to_owned()),
            ("Scheduling", self.scheduling().to_owned()),
            ("Labels", labels),
            ("VPS count", self.vps_count.to_string()),
            (
                "VCPUs",
                format!(
                    "{} of {} allocated",
                    format_vcpus(a.vcpus),
                    format_vcpus(c.vcpus)
                ),
            ),
            (
                "Memory",
                format!(
                    "{} of {} allocated",
                    size(a.memory_bytes),
                    size(c.memory_bytes)
                ),
            ),
            (
                "Disk",
                format!("{} of {} allocated", size(a.disk_bytes), size(c.disk_bytes)),
            ),
            ("Last heartbeat", time_and_age(self.last_heartbeat, now)),
            ("Agent version", self.agent_version.clone()),
        ]
    }
}

/// An API token's public metadata (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenView {
    pub token_id: String,
    /// `admin`, `tenant` or `billing`.
    pub role: &'static str,
    pub tenant: String,
    pub description: String,
    #[serde(serialize_with = "serialize_time")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
}

impl From<&v1::TokenInfo> for TokenView {
    fn from(t: &v1::TokenInfo) -> Self {
        Self {
            token_id: t.token_id.clone(),
            role: role_name(t.role),
            tenant: t.tenant.clone(),
            description: t.description.clone(),
            created_at: timestamp(t.created_at.as_ref()),
            expires_at: timestamp(t.expires_at.as_ref()),
            revoked: t.revoked,
        }
    }
}

impl Tabular for TokenView {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "ROLE",
        "TENANT",
        "REVOKED",
        "EXPIRES",
        "AGE",
        "DESCRIPTION",
    ];

    fn row(&self, now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.token_id.clone(),
            self.role.to_owned(),
            self.tenant.clone(),
            if self.revoked { "yes" } else { "no" }.to_owned(),
            self.expires_at
                .map(|t| rfc3339(&t))
                .unwrap_or_else(|| "never".to_owned()),
            age(self.created_at, now),
            self.description.clone(),
        ])
    }
}

/// A newly created token: the secret, shown once, and its metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreatedTokenView {
    pub token: String,
    #[serde(flatten)]
    pub info: Option<TokenView>,
}

/// An IPv4 address pool of a node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolView {
    pub name: String,
    pub node: String,
    /// Every node the pool spans (`node` first).
    pub nodes: Vec<String>,
    pub cidr: String,
    pub gateway: String,
    pub range_start: String,
    pub range_end: String,
    pub ipv6_prefix: String,
    pub nat: bool,
    pub total: u32,
    pub allocated: u32,
}

impl From<&v1::Pool> for PoolView {
    fn from(p: &v1::Pool) -> Self {
        Self {
            name: p.name.clone(),
            node: p.node.clone(),
            // Controllers before shared pools send only `node`.
            nodes: if p.nodes.is_empty() {
                vec![p.node.clone()]
            } else {
                p.nodes.clone()
            },
            cidr: p.cidr.clone(),
            gateway: p.gateway.clone(),
            range_start: p.range_start.clone(),
            range_end: p.range_end.clone(),
            ipv6_prefix: p.ipv6_prefix.clone(),
            nat: p.nat,
            total: p.total,
            allocated: p.allocated,
        }
    }
}

impl PoolView {
    fn range(&self) -> String {
        if self.range_start.is_empty() && self.range_end.is_empty() {
            String::new()
        } else {
            format!("{}-{}", self.range_start, self.range_end)
        }
    }
}

impl Tabular for PoolView {
    const HEADERS: &'static [&'static str] =
        &["NAME", "NODES", "CIDR", "GATEWAY", "RANGE", "NAT", "USED"];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.name.clone(),
            self.nodes.join(","),
            self.cidr.clone(),
            self.gateway.clone(),
            self.range(),
            if self.nat { "yes" } else { "no" }.to_owned(),
            of(self.allocated, self.total),
        ])
    }
}

impl Detail for PoolView {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            ("Name", self.name.clone()),
            ("Nodes", self.nodes.join(", ")),
            ("CIDR", self.cidr.clone()),
            ("Gateway", self.gateway.clone()),
            ("Range", self.range()),
            ("IPv6 prefix", self.ipv6_prefix.clone()),
            ("NAT", if self.nat { "yes" } else { "no" }.to_owned()),
            (
                "Addresses",
                format!("{} of {} allocated", self.allocated, self.total),
            ),
        ]
    }
}

/// An OS template a VPS can be built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateView {
    pub name: String,
    pub description: String,
}

impl From<&v1::Template> for TemplateView {
    fn from(t: &v1::Template) -> Self {
        Self {
            name: t.name.clone(),
            description: t.description.clone(),
        }
    }
}

impl Tabular for TemplateView {
    const HEADERS: &'static [&'static str] = &["NAME", "DESCRIPTION"];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![self.name.clone(), self.description.clone()])
    }
}

/// One entry of the admin audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditView {
    pub seq: u64,
    #[serde(serialize_with = "serialize_time")]
    pub at: Option<DateTime<Utc>>,
    pub actor: String,
    pub method: String,
    pub target: String,
    pub result: String,
}

impl From<&v1::AuditEntry> for AuditView {
    fn from(e: &v1::AuditEntry) -> Self {
        Self {
            seq: e.seq,
            at: timestamp(e.at.as_ref()),
            actor: e.actor.clone(),
            method: e.method.clone(),
            target: e.target.clone(),
            result: e.result.clone(),
        }
    }
}

impl Tabular for AuditView {
    const HEADERS: &'static [&'static str] =
        &["SEQ", "TIME", "ACTOR", "METHOD", "TARGET", "RESULT"];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.seq.to_string(),
            self.at.map(|t| rfc3339(&t)).unwrap_or_default(),
            self.actor.clone(),
            self.method.clone(),
            self.target.clone(),
            self.result.clone(),
        ])
    }
}

/// Metered usage of one VPS (or the total) over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageView {
    pub tenant: String,
    pub vps: String,
    pub vps_id: String,
    pub plan: String,
    #[serde(serialize_with = "serialize_time")]
    pub period_start: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    pub period_end: Option<DateTime<Utc>>,
    pub cpu_seconds: f64,
    pub memory_byte_seconds: f64,
    pub memory_peak_bytes: u64,
    pub disk_byte_seconds: f64,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl From<&v1::UsageRecord> for UsageView {
    fn from(u: &v1::UsageRecord) -> Self {
        Self {
            tenant: u.tenant.clone(),
            vps: u.vps.clone(),
            vps_id: u.vps_id.clone(),
            plan: u.plan.clone(),
            period_start: timestamp(u.period_start.as_ref()),
            period_end: timestamp(u.period_end.as_ref()),
            cpu_seconds: u.cpu_seconds,
            memory_byte_seconds: u.memory_byte_seconds,
            memory_peak_bytes: u.memory_peak_bytes,
            disk_byte_seconds: u.disk_byte_seconds,
            io_read_bytes: u.io_read_bytes,
            io_write_bytes: u.io_write_bytes,
            net_rx_bytes: u.net_rx_bytes,
            net_tx_bytes: u.net_tx_bytes,
        }
    }
}

impl Tabular for UsageView {
    const HEADERS: &'static [&'static str] = &[
        "VPS",
        "PLAN",
        "CPU-SECONDS",
        "MEMORY-PEAK",
        "IO-READ",
        "IO-WRITE",
        "NET-RX",
        "NET-TX",
    ];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            if self.vps.is_empty() {
                "TOTAL".to_owned()
            } else {
                self.vps.clone()
            },
            self.plan.clone(),
            format!("{:.1}", self.cpu_seconds),
            size(self.memory_peak_bytes),
            size(self.io_read_bytes),
            size(self.io_write_bytes),
            size(self.net_rx_bytes),
            size(self.net_tx_bytes),
        ])
    }
}

/// A tenant's usage summary: one record per VPS plus the total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageSummaryView {
    pub tenant: String,
    pub per_vps: Vec<UsageView>,
    pub total: Option<UsageView>,
}

impl From<&v1::UsageSummary> for UsageSummaryView {
    fn from(s: &v1::UsageSummary) -> Self {
        Self {
            tenant: s.tenant.clone(),
            per_vps: s.per_vps.iter().map(UsageView::from).collect(),
            total: s.total.as_ref().map(UsageView::from),
        }
    }
}

/// A context of the config file, without its token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextView {
    pub name: String,
    pub current: bool,
    pub controller: String,
    pub ca_cert: Option<String>,
}

impl Tabular for ContextView {
    const HEADERS: &'static [&'static str] = &["CURRENT", "NAME", "CONTROLLER", "CA-CERT"];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        let mut row = vec![if self.current { "*" } else { "" }.to_owned()];
        row.extend(dashes(vec![
            self.name.clone(),
            self.controller.clone(),
            self.ca_cert.clone().unwrap_or_default(),
        ]));
        row
    }
}

/// A finished migration (`admin migrate`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationView {
    pub migration_id: String,
    pub tenant: String,
    pub name: String,
    pub from_node: String,
    pub to_node: String,
    pub old_ipv4: Vec<String>,
    pub ipv4: Vec<String>,
    pub addresses_kept: bool,
    pub was_running: bool,
    pub duration_ms: u64,
    /// Moved running (CRIU).
    pub live: bool,
    /// What the checkpoint and restore did (live moves).
    pub live_report: Option<LiveReportView>,
    /// A live move asked for but done cold: why (empty otherwise).
    pub cold_because: String,
}

/// What the checkpoint and restore of a live move did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveReportView {
    pub round_pages_written: Vec<u64>,
    pub final_pages_written: u64,
    pub frozen_ms: f64,
    pub image_bytes: u64,
    pub transfer_bytes: u64,
    pub checkpoint_ms: u64,
    pub restore_ms: u64,
}

impl From<&v1::Migration> for MigrationView {
    fn from(m: &v1::Migration) -> Self {
        Self {
            migration_id: m.migration_id.clone(),
            tenant: m.tenant.clone(),
            name: m.name.clone(),
            from_node: m.from_node.clone(),
            to_node: m.to_node.clone(),
            old_ipv4: m.old_ipv4.clone(),
            ipv4: m.new_ipv4.clone(),
            addresses_kept: m.addresses_kept,
            was_running: m.was_running,
            duration_ms: m.duration_ms,
            live: m.live,
            live_report: m.live_report.as_ref().map(|r| LiveReportView {
                round_pages_written: r.round_pages_written.clone(),
                final_pages_written: r.final_pages_written,
                frozen_ms: r.frozen_us as f64 / 1000.0,
                image_bytes: r.image_bytes,
                transfer_bytes: r.transfer_bytes,
                checkpoint_ms: r.checkpoint_ms,
                restore_ms: r.restore_ms,
            }),
            cold_because: m.cold_because.clone(),
        }
    }
}

fn addresses(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

impl Detail for MigrationView {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let address = if self.addresses_kept {
            format!("{} (kept)", addresses(&self.ipv4))
        } else {
            format!(
                "{} (was {})",
                addresses(&self.ipv4),
                addresses(&self.old_ipv4)
            )
        };
        let how = match (&self.live_report, self.cold_because.as_str()) {
            (Some(report), _) => format!(
                "live: frozen {:.1} ms, {} pre-dump round(s), {} of images, {} transferred \
                 (checkpoint {:.1}s, transfer and restore {:.1}s)",
                report.frozen_ms,
                report.round_pages_written.len(),
                size(report.image_bytes),
                size(report.transfer_bytes),
                report.checkpoint_ms as f64 / 1000.0,
                report.restore_ms as f64 / 1000.0,
            ),
            (None, "") => "cold".to_owned(),
            (None, why) => format!("cold, not live: {why}"),
        };
        vec![
            ("VPS", format!("{}/{}", self.tenant, self.name)),
            ("Moved", format!("{} -> {}", self.from_node, self.to_node)),
            ("How", how),
            ("IPv4", address),
            (
                "Running",
                if self.was_running {
                    "yes"
                } else {
                    "no (stays stopped)"
                }
                .to_owned(),
            ),
            ("Took", format!("{:.1}s", self.duration_ms as f64 / 1000.0)),
            ("Migration", self.migration_id.clone()),
        ]
    }
}

/// One VPS of `admin node drain --migrate`: where it went, or why it stayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrainRow {
    pub tenant: String,
    pub name: String,
    /// `moved` or `failed`.
    pub result: &'static str,
    /// How it moved: `live` or `cold`.
    pub how: &'static str,
    pub to_node: String,
    pub ipv4: Vec<String>,
    pub duration_ms: u64,
    /// Why it was not moved.
    pub error: String,
}

impl DrainRow {
    pub fn moved(m: &v1::Migration) -> Self {
        Self {
            tenant: m.tenant.clone(),
            name: m.name.clone(),
            result: "moved",
            how: if m.live { "live" } else { "cold" },
            to_node: m.to_node.clone(),
            ipv4: m.new_ipv4.clone(),
            duration_ms: m.duration_ms,
            error: String::new(),
        }
    }

    pub fn failed(vps: &v1::Vps, error: &str) -> Self {
        Self {
            tenant: vps.tenant.clone(),
            name: vps.name.clone(),
            result: "failed",
            how: "",
            to_node: String::new(),
            ipv4: vps.ipv4.clone(),
            duration_ms: 0,
            error: error.to_owned(),
        }
    }
}

impl Tabular for DrainRow {
    const HEADERS: &'static [&'static str] = &[
        "TENANT", "NAME", "RESULT", "HOW", "TO", "IPV4", "TOOK", "ERROR",
    ];

    fn row(&self, _now: DateTime<Utc>) -> Vec<String> {
        dashes(vec![
            self.tenant.clone(),
            self.name.clone(),
            self.result.to_owned(),
            self.how.to_owned(),
            self.to_node.clone(),
            self.ipv4.join(","),
            if self.result == "moved" {
                format!("{:.1}s", self.duration_ms as f64 / 1000.0)
            } else {
                String::new()
            },
            self.error.clone(),
        ])
    }
}

/// What a delete, revoke or other bodiless mutation reports in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DoneView {
    /// What kind of object: `vps`, `tenant`, `plan`, `pool`, `token`, `context`.
    pub kind: &'static str,
    pub name: String,
    /// What happened: `deleted`, `revoked`, `added`, ...
    pub action: &'static str,
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn sample_vps(state: v1::VpsState) -> v1::Vps {
        v1::Vps {
            id: "0f1e2d3c".into(),
            name: "web1".into(),
            tenant: "acme".into(),
            state: state as i32,
            desired_power: v1::PowerState::Running as i32,
            node: "node-a".into(),
            plan: "small".into(),
            template: "busybox".into(),
            resources: Some(v1::Resources {
                vcpus: 0.5,
                memory_bytes: 512 << 20,
                disk_bytes: 2 << 30,
                pids_max: 256,
                ..Default::default()
            }),
            ipv4: vec!["10.77.0.10".into()],
            ipv6: vec![],
            created_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            message: String::new(),
            init_pid: 4242,
            transfer: None,
            converged: true,
        }
    }

    #[test]
    fn rates_print_in_their_largest_whole_unit() {
        assert_eq!(format_rate(1_000_000), "1 Mbit/s");
        assert_eq!(format_rate(2_500_000), "2500 kbit/s");
        assert_eq!(format_rate(10_000_000_000), "10 Gbit/s");
        assert_eq!(format_rate(1_234), "1234 bit/s");
        assert_eq!(format_rate(0), "0 bit/s");
    }

    #[test]
    fn transfer_shows_usage_and_the_limit_in_force() {
        let mut vps = sample_vps(v1::VpsState::Running);
        vps.transfer = Some(v1::TransferStatus {
            month: "2026-11".into(),
            used_bytes: 3 << 30,
            allowance_bytes: 4 << 30,
            limited: v1::TransferOverage::Throttle as i32,
            limited_rate_bits_per_sec: 1_000_000,
            limited_until: Some(prost_types::Timestamp {
                seconds: 1_796_083_200,
                nanos: 0,
            }),
        });
        let view = VpsView::from(&vps);
        let fields: BTreeMap<_, _> = view.fields(Utc::now()).into_iter().collect();
        assert_eq!(fields["Transfer"], "3.0 GiB of 4.0 GiB (75%) in 2026-11");
        assert_eq!(
            fields["Transfer limit"],
            "throttled to 1 Mbit/s until 2026-12-01T00:00:00Z"
        );
        let value = serde_json::to_value(&view).expect("json");
        assert_eq!(value["transfer"]["limited"], json!("throttle"));
        assert_eq!(
            value["transfer"]["limited_until"],
            json!("2026-12-01T00:00:00Z")
        );

        let mut vps = sample_vps(v1::VpsState::Running);
        vps.transfer = Some(v1::TransferStatus {
            month: "2026-11".into(),
            used_bytes: 1 << 20,
            ..Default::default()
        });
        let view = VpsView::from(&vps);
        let fields: BTreeMap<_, _> = view.fields(Utc::now()).into_iter().collect();
        assert_eq!(fields["Transfer"], "1.0 MiB in 2026-11 (unmetered)");
        assert_eq!(fields["Transfer limit"], "");
        let value = serde_json::to_value(&view).expect("json");
        assert_eq!(value["transfer"]["limited"], Value::Null);
    }

    #[test]
    fn vps_json_has_the_contract_fields() {
        let view = VpsView::from(&sample_vps(v1::VpsState::Running));
        let value = serde_json::to_value(&view).expect("json");
        for field in [
            "id",
            "name",
            "tenant",
            "state",
            "desired_power",
            "node",
            "plan",
            "template",
            "vcpus",
            "memory_bytes",
            "disk_bytes",
            "ipv4",
            "ipv6",
            "created_at",
            "message",
            "init_pid",
        ] {
            assert!(value.get(field).is_some(), "missing {field} in {value}");
        }
        assert_eq!(value["name"], json!("web1"));
        assert_eq!(value["tenant"], json!("acme"));
        assert_eq!(value["state"], json!("running"));
        assert_eq!(value["desired_power"], json!("running"));
        assert_eq!(value["vcpus"], json!(0.5));
        assert_eq!(value["memory_bytes"], json!(536_870_912u64));
        assert_eq!(value["disk_bytes"], json!(2_147_483_648u64));
        assert_eq!(value["ipv4"], json!(["10.77.0.10"]));
        assert_eq!(value["ipv6"], json!([]));
        assert_eq!(value["created_at"], json!("2024-05-01T12:00:00Z"));
        assert_eq!(value["init_pid"], json!(4242));
        assert_eq!(value["resources"]["pids_max"], json!(256));
        assert!(value["memory_bytes"].is_u64() && value["vcpus"].is_number());
    }

    #[test]
    fn created_at_is_rfc3339_and_null_when_absent() {
        let mut vps = sample_vps(v1::VpsState::Pending);
        vps.created_at = Some(prost_types::Timestamp {
            seconds: 1_714_564_800,
            nanos: 250_000_000,
        });
        let value = serde_json::to_value(VpsView::from(&vps)).expect("json");
        let text = value["created_at"].as_str().expect("string");
        assert_eq!(text, "2024-05-01T12:00:00.250Z");
        assert!(DateTime::parse_from_rfc3339(text).is_ok());
        vps.created_at = None;
        let value = serde_json::to_value(VpsView::from(&vps)).expect("json");
        assert_eq!(value["created_at"], Value::Null);
    }

    #[test]
    fn every_state_has_its_lowercase_name() {
        let cases = [
            (v1::VpsState::Unspecified, "unknown"),
            (v1::VpsState::Pending, "pending"),
            (v1::VpsState::Running, "running"),
            (v1::VpsState::Stopped, "stopped"),
            (v1::VpsState::Error, "error"),
            (v1::VpsState::Unknown, "unknown"),
            (v1::VpsState::Suspended, "suspended"),
            (v1::VpsState::Deleting, "deleting"),
        ];
        for (state, name) in cases {
            let value = serde_json::to_value(VpsView::from(&sample_vps(state))).expect("json");
            assert_eq!(value["state"], json!(name));
        }
        assert_eq!(vps_state_name(99), "unknown");
    }

    #[test]
    fn vps_row_uses_human_sizes() {
        let view = VpsView::from(&sample_vps(v1::VpsState::Running));
        let now = view.created_at.expect("created") + chrono::Duration::minutes(5);
        assert_eq!(
            view.row(now),
            vec![
                "web1",
                "running",
                "node-a",
                "small",
                "0.5",
                "512.0 MiB",
                "2.0 GiB",
                "10.77.0.10",
                "5m"
            ]
        );
    }

    #[test]
    fn tenant_and_quota_json_shapes() {
        let tenant = v1::Tenant {
            name: "acme".into(),
            quota: Some(v1::Quota {
                max_vps: 10,
                vcpus: 16.0,
                memory_bytes: 32 << 30,
                disk_bytes: 400 << 30,
                ipv4_count: 10,
            }),
            used: None,
            suspended: false,
            created_at: None,
        };
        let value = serde_json::to_value(TenantView::from(&tenant)).expect("json");
        assert_eq!(
            value,
            json!({
                "name": "acme",
                "suspended": false,
                "quota": {"max_vps": 10, "vcpus": 16.0, "memory_bytes": 34_359_738_368u64,
                          "disk_bytes": 429_496_729_600u64, "ipv4": 10},
                "used": {"max_vps": 0, "vcpus": 0.0, "memory_bytes": 0, "disk_bytes": 0, "ipv4": 0},
                "created_at": null,
            })
        );
    }

    #[test]
    fn plan_json_is_flat() {
        let plan = v1::Plan {
            name: "small".into(),
            resources: Some(v1::Resources {
                vcpus: 1.0,
                memory_bytes: 1 << 30,
                disk_bytes: 10 << 30,
                pids_max: 512,
                ..Default::default()
            }),
            monthly_transfer_bytes: 0,
            ..Default::default()
        };
        let value = serde_json::to_value(PlanView::from(&plan)).expect("json");
        assert_eq!(value["name"], json!("small"));
        assert_eq!(value["vcpus"], json!(1.0));
        assert_eq!(value["memory_bytes"], json!(1u64 << 30));
        assert_eq!(value["disk_bytes"], json!(10u64 << 30));
        assert_eq!(value["pids_max"], json!(512));
        assert_eq!(value["monthly_transfer_bytes"], json!(0));
    }

    #[test]
    fn token_and_node_enums_are_words() {
        let token = v1::TokenInfo {
            token_id: "tok1".into(),
            role: v1::Role::Billing as i32,
            ..Default::default()
        };
        let value = serde_json::to_value(TokenView::from(&token)).expect("json");
        assert_eq!(value["role"], json!("billing"));
        assert_eq!(value["expires_at"], Value::Null);
        let node = v1::Node {
            name: "n1".into(),
            status: v1::NodeStatus::Online as i32,
            ..Default::default()
        };
        let value = serde_json::to_value(NodeView::from(&node)).expect("json");
        assert_eq!(value["status"], json!("online"));
        assert_eq!(value["capacity"]["memory_bytes"], json!(0));
    }

    #[test]
    fn vcpus_print_without_noise() {
        assert_eq!(format_vcpus(2.0), "2");
        assert_eq!(format_vcpus(0.5), "0.5");
        assert_eq!(format_vcpus(1.25), "1.25");
        assert_eq!(format_vcpus(0.0), "0");
    }
}
