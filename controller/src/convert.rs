//! All conversions between the proto types and the controller's records.

use chrono::{DateTime, Utc};
use paddock_proto::v1;

use crate::model::desired;
use crate::model::metering::TransferStatus;
use crate::model::migration::MigrationRecord;
use crate::model::node::{Enrollment, Heartbeat, Registration, Template};
use crate::model::scheduler::NodeView;
use crate::model::validate::ValidationError;
use crate::model::{
    Capacity, NodeRecord, Observed, ObservedState, PlanRecord, PoolRecord, Power, Quota, Resources,
    Role, TenantRecord, TokenRecord, TransferOverage, VpsRecord,
};

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn from_timestamp(at: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).ok()?)
}

pub fn resources(r: &Resources) -> v1::Resources {
    v1::Resources {
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

pub fn resources_from(r: &v1::Resources) -> Resources {
    Resources {
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

pub fn plan(p: &PlanRecord) -> v1::Plan {
    let (overage, rate) = transfer_overage(p.transfer_overage);
    v1::Plan {
        name: p.name.clone(),
        resources: Some(resources(&p.resources)),
        monthly_transfer_bytes: p.monthly_transfer_bytes,
        transfer_overage: overage.into(),
        overage_rate_bits_per_sec: rate,
        max_snapshots: p.max_snapshots,
    }
}

/// The proto overage action and its throttle rate (0 unless throttling).
pub fn transfer_overage(overage: TransferOverage) -> (v1::TransferOverage, u64) {
    match overage {
        TransferOverage::Notify => (v1::TransferOverage::Notify, 0),
        TransferOverage::Throttle { bits_per_sec } => (v1::TransferOverage::Throttle, bits_per_sec),
        TransferOverage::Suspend => (v1::TransferOverage::Suspend, 0),
    }
}

/// A plan's overage setting from the API (the plan domain checks it against
/// the allowance).
pub fn transfer_overage_from(plan: &v1::Plan) -> Result<TransferOverage, ValidationError> {
    let rate = plan.overage_rate_bits_per_sec;
    match plan.transfer_overage() {
        v1::TransferOverage::Throttle => Ok(TransferOverage::Throttle { bits_per_sec: rate }),
        _ if rate != 0 => Err(ValidationError::new(
            "plan.overage_rate_bits_per_sec",
            "is only for the throttle overage action",
        )),
        v1::TransferOverage::Unspecified | v1::TransferOverage::Notify => {
            Ok(TransferOverage::Notify)
        }
        v1::TransferOverage::Suspend => Ok(TransferOverage::Suspend),
    }
}

pub fn quota(q: &Quota) -> v1::Quota {
    v1::Quota {
        max_vps: q.max_vps,
        vcpus: q.vcpus,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
        ipv4_count: q.ipv4_count,
    }
}

pub fn quota_from(q: &v1::Quota) -> Quota {
    Quota {
        max_vps: q.max_vps,
        vcpus: q.vcpus,
        memory_bytes: q.memory_bytes,
        disk_bytes: q.disk_bytes,
        ipv4_count: q.ipv4_count,
    }
}

pub fn tenant(t: &TenantRecord) -> v1::Tenant {
    v1::Tenant {
        name: t.name.clone(),
        quota: Some(quota(&t.quota)),
        used: Some(quota(&t.used)),
        suspended: t.suspended,
        created_at: Some(timestamp(t.created_at)),
    }
}

pub fn role(r: Role) -> v1::Role {
    match r {
        Role::Admin => v1::Role::Admin,
        Role::Tenant => v1::Role::Tenant,
        Role::Billing => v1::Role::Billing,
    }
}

pub fn token_info(t: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        token_id: t.token_id.clone(),
        role: role(t.role).into(),
        tenant: t.tenant.clone().unwrap_or_default(),
        description: t.description.clone(),
        created_at: Some(timestamp(t.created_at)),
        expires_at: t.expires_at.map(timestamp),
        revoked: t.revoked,
    }
}

fn capacity(c: &Capacity) -> v1::NodeCapacity {
    v1::NodeCapacity {
        vcpus: c.vcpus,
        memory_bytes: c.memory_bytes,
        disk_bytes: c.disk_bytes,
    }
}

pub fn capacity_from(c: &v1::NodeCapacityReport) -> Capacity {
    Capacity {
        vcpus: c.vcpus,
        memory_bytes: c.memory_bytes,
        disk_bytes: c.disk_bytes,
    }
}

pub fn node(record: &NodeRecord, view: &NodeView, vps_count: u32) -> v1::Node {
    let status = if view.online {
        v1::NodeStatus::Online
    } else {
        v1::NodeStatus::Offline
    };
    v1::Node {
        name: record.name.clone(),
        address: record.address.clone(),
        status: status.into(),
        cordoned: record.cordoned,
        labels: record.labels.clone().into_iter().collect(),
        capacity: Some(capacity(&record.capacity)),
        allocated: Some(capacity(&view.allocated)),
        last_heartbeat: Some(timestamp(record.last_heartbeat)),
        vps_count,
        agent_version: record.agent_version.clone(),
    }
}

fn power(p: Power) -> v1::PowerState {
    match p {
        Power::Running => v1::PowerState::Running,
        Power::Stopped => v1::PowerState::Stopped,
    }
}

/// The state a user sees ([`desired::state`]), as the proto enum.
pub fn vps_state(vps: &VpsRecord, node_online: bool, held: bool) -> v1::VpsState {
    use desired::VpsState as S;
    match desired::state(vps, node_online, held) {
        S::Pending => v1::VpsState::Pending,
        S::Running => v1::VpsState::Running,
        S::Stopped => v1::VpsState::Stopped,
        S::Error => v1::VpsState::Error,
        S::Unknown => v1::VpsState::Unknown,
        S::Suspended => v1::VpsState::Suspended,
        S::Deleting => v1::VpsState::Deleting,
    }
}

pub fn vps(
    record: &VpsRecord,
    node_online: bool,
    held: bool,
    transfer: Option<&TransferStatus>,
    converged: bool,
) -> v1::Vps {
    let observed = record.observed.as_ref();
    let running = observed.is_some_and(|o| o.state == Observed::Running);
    v1::Vps {
        id: record.vps_id.clone(),
        name: record.name.clone(),
        tenant: record.tenant.clone(),
        state: vps_state(record, node_online, held).into(),
        desired_power: power(record.desired_power).into(),
        node: record.node.clone(),
        plan: record.plan.clone(),
        template: record.template.clone(),
        resources: Some(resources(&record.resources)),
        ipv4: record.ipv4.clone(),
        ipv6: record
            .network
            .as_ref()
            .map(|network| network.ipv6.clone())
            .unwrap_or_default(),
        created_at: Some(timestamp(record.created_at)),
        message: observed.map(|o| o.message.clone()).unwrap_or_default(),
        init_pid: if running {
            observed.map(|o| o.init_pid).unwrap_or(0)
        } else {
            0
        },
        transfer: transfer.map(transfer_status),
        converged,
    }
}

fn transfer_status(status: &TransferStatus) -> v1::TransferStatus {
    let (limited, rate) = match &status.limit {
        Some(limit) => transfer_overage(limit.overage),
        None => (v1::TransferOverage::Unspecified, 0),
    };
    v1::TransferStatus {
        month: status.month.clone(),
        used_bytes: status.used_bytes,
        allowance_bytes: status.allowance_bytes,
        limited: limited.into(),
        limited_rate_bits_per_sec: rate,
        limited_until: status.limit.as_ref().map(|limit| timestamp(limit.until)),
    }
}

/// What the node agent is told to make exist at `now`: the record with the power
/// and rates of [`desired::desired`] (held stopped, throttled).
pub fn vps_spec(record: &VpsRecord, tenant_suspended: bool, now: DateTime<Utc>) -> v1::VpsSpec {
    let desired = desired::desired(record, tenant_suspended, now);
    let (power, throttle) = (desired.power, desired.throttle_bits_per_sec);
    v1::VpsSpec {
        vps_id: record.vps_id.clone(),
        name: record.name.clone(),
        tenant: record.tenant.clone(),
        template: record.template.clone(),
        resources: Some(resources(&record.resources)),
        desired_power: self::power(power).into(),
        ipv4: record.ipv4.clone(),
        rebuild_generation: record.rebuild_generation,
        restart_generation: record.restart_generation,
        network: network_spec(record, throttle),
    }
}

/// A short digest of what a spec asks for, to tell whether a node applied exactly it.
pub fn spec_digest(spec: &v1::VpsSpec) -> String {
    use prost::Message;
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(spec.encode_to_vec())[..12])
}

/// A rate (0 = unlimited) capped at `cap`, if any.
fn capped(rate: u64, cap: Option<u64>) -> u64 {
    match cap {
        Some(cap) if rate == 0 || rate > cap => cap,
        _ => rate,
    }
}

/// The VPS's port: its addresses with the pool's prefix length, gateway, MAC
/// and rates (each capped at `throttle`, if any).
fn network_spec(record: &VpsRecord, throttle: Option<u64>) -> Option<v1::NetworkSpec> {
    let network = record.network.as_ref()?;
    let prefix_len = network.cidr.split_once('/').map_or("32", |(_, len)| len);
    let ipv6_prefix = network
        .ipv6_prefix
        .as_deref()
        .and_then(crate::model::ipam::parse_ipv6_prefix);
    let mut addresses: Vec<String> = record
        .ipv4
        .iter()
        .map(|address| format!("{address}/{prefix_len}"))
        .collect();
    if let Some((_, len)) = ipv6_prefix {
        addresses.extend(
            network
                .ipv6
                .iter()
                .map(|address| format!("{address}/{len}")),
        );
    }
    let gateway6 = match (&network.ipv6_prefix, network.ipv6.is_empty()) {
        (Some(prefix), false) => crate::model::ipam::ipv6_gateway(prefix)
            .map(|gateway| gateway.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    Some(v1::NetworkSpec {
        addresses,
        gateway6,
        gateway: network.gateway.clone(),
        mac: network.mac.clone(),
        ingress_bits_per_sec: capped(record.resources.net_ingress_bits_per_sec, throttle),
        egress_bits_per_sec: capped(record.resources.net_egress_bits_per_sec, throttle),
        nat: network.nat,
        pool_cidr: network.cidr.clone(),
    })
}

/// A pool as the admin API shows it.
pub fn pool(record: &PoolRecord) -> v1::Pool {
    let plan = crate::model::ipam::plan(record).ok();
    v1::Pool {
        name: record.name.clone(),
        node: record.node.clone(),
        cidr: record.cidr.clone(),
        gateway: record.gateway.clone(),
        range_start: plan
            .as_ref()
            .map_or_else(|| record.range_start.clone(), |p| p.range_start.to_string()),
        range_end: plan
            .as_ref()
            .map_or_else(|| record.range_end.clone(), |p| p.range_end.to_string()),
        ipv6_prefix: record.ipv6_prefix.clone().unwrap_or_default(),
        nat: record.nat,
        total: plan.as_ref().map_or(0, |p| p.total()),
        allocated: u32::try_from(record.allocated.len()).unwrap_or(u32::MAX),
        nodes: record.span(),
    }
}

/// A snapshot as the API shows it.
pub fn snapshot(vps: &VpsRecord, s: &crate::model::snapshots::SnapshotRecord) -> v1::Snapshot {
    v1::Snapshot {
        vps_id: vps.vps_id.clone(),
        vps_name: vps.name.clone(),
        name: s.name.clone(),
        created_at: Some(timestamp(s.created_at)),
        size_bytes: s.size_bytes,
        allocated_bytes: s.allocated_bytes,
        method: match s.state {
            crate::model::snapshots::SnapshotState::Ready => s.method.clone(),
            crate::model::snapshots::SnapshotState::Creating => "creating".to_owned(),
        },
        duration_ms: s.duration_ms,
    }
}

pub fn event(e: &crate::model::EventRecord) -> v1::Event {
    use crate::model::EventKind as K;
    let kind = match e.kind {
        K::Created => v1::EventKind::Created,
        K::Started => v1::EventKind::Started,
        K::Stopped => v1::EventKind::Stopped,
        K::Resized => v1::EventKind::Resized,
        K::Rebuilt => v1::EventKind::Rebuilt,
        K::Deleted => v1::EventKind::Deleted,
        K::Suspended => v1::EventKind::Suspended,
        K::Unsuspended => v1::EventKind::Unsuspended,
        K::Transfer80Percent => v1::EventKind::Transfer80Percent,
        K::Transfer100Percent => v1::EventKind::Transfer100Percent,
        K::TransferLimited => v1::EventKind::TransferLimited,
        K::TransferLimitEnded => v1::EventKind::TransferLimitEnded,
        K::SnapshotCreated => v1::EventKind::SnapshotCreated,
        K::SnapshotRestored => v1::EventKind::SnapshotRestored,
        K::SnapshotDeleted => v1::EventKind::SnapshotDeleted,
        K::BackupCreated => v1::EventKind::BackupCreated,
        K::BackupRestored => v1::EventKind::BackupRestored,
        K::BackupDeleted => v1::EventKind::BackupDeleted,
        K::VpsMigrated => v1::EventKind::VpsMigrated,
        K::MigrationFailed => v1::EventKind::MigrationFailed,
        K::VpsLiveMigrated => v1::EventKind::VpsLiveMigrated,
    };
    v1::Event {
        cursor: e.cursor,
        kind: kind.into(),
        tenant: e.tenant.clone(),
        vps: e.vps.clone(),
        vps_id: e.vps_id.clone(),
        plan: e.plan.clone(),
        at: Some(timestamp(e.at)),
        detail: e.detail.clone(),
    }
}

/// What an agent reports of one VPS, observed now.
pub fn observed(status: &v1::VpsStatus) -> ObservedState {
    ObservedState {
        state: observed_from_agent(status.state()),
        init_pid: status.init_pid,
        message: status.message.clone(),
        at: Utc::now(),
    }
}

pub fn template_from(template: v1::Template) -> Template {
    Template {
        name: template.name,
        description: template.description,
    }
}

pub fn template(template: Template) -> v1::Template {
    v1::Template {
        name: template.name,
        description: template.description,
    }
}

pub fn enrollment(request: &v1::EnrollRequest) -> Enrollment {
    Enrollment {
        node_name: request.node_name.clone(),
        csr_pem: request.csr_pem.clone(),
        subject_alt_names: request.subject_alt_names.clone(),
    }
}

pub fn registration(request: v1::RegisterRequest) -> Registration {
    Registration {
        capacity: request.capacity.as_ref().map(capacity_from),
        node_name: request.node_name,
        address: request.address,
        agent_version: request.agent_version,
    }
}

pub fn heartbeat(request: v1::HeartbeatRequest) -> Heartbeat {
    Heartbeat {
        capacity: request.capacity.as_ref().map(capacity_from),
        reports: request
            .vps
            .iter()
            .map(|status| (status.vps_id.clone(), observed(status)))
            .collect(),
        usage: request.usage.iter().map(usage_sample_from).collect(),
        node_name: request.node_name,
    }
}

pub fn observed_from_agent(state: v1::AgentVpsState) -> Observed {
    match state {
        v1::AgentVpsState::Running => Observed::Running,
        v1::AgentVpsState::Stopped => Observed::Stopped,
        v1::AgentVpsState::Absent => Observed::Absent,
        v1::AgentVpsState::Error | v1::AgentVpsState::Unspecified => Observed::Error,
    }
}

/// A usage sample from an agent's heartbeat.
pub fn usage_sample_from(sample: &v1::UsageSample) -> crate::model::metering::Sample {
    crate::model::metering::Sample {
        vps_id: sample.vps_id.clone(),
        incarnation: sample.incarnation.clone(),
        sequence: sample.sequence,
        sampled_at_unix_ms: sample.sampled_at_unix_ms,
        interval_ms: sample.interval_ms,
        counters: crate::model::UsageCounters {
            cpu_usage_ns: sample.cpu_usage_ns,
            memory_bytes: sample.memory_bytes,
            memory_peak_bytes: sample.memory_peak_bytes,
            io_read_bytes: sample.io_read_bytes,
            io_write_bytes: sample.io_write_bytes,
            io_read_ops: sample.io_read_ops,
            io_write_ops: sample.io_write_ops,
            net_rx_bytes: sample.net_rx_bytes,
            net_tx_bytes: sample.net_tx_bytes,
            disk_used_bytes: sample.disk_used_bytes,
        },
    }
}

fn unix_timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// One usage row (a VPS's hour, day or period, or a total) for billing.
pub fn usage_record(row: &crate::model::metering::UsagePeriod) -> v1::UsageRecord {
    let usage = &row.usage;
    v1::UsageRecord {
        tenant: usage.tenant.clone(),
        vps: usage.vps.clone(),
        vps_id: usage.vps_id.clone(),
        plan: usage.plan.clone(),
        period_start: Some(unix_timestamp(usage.hour_start)),
        period_end: Some(unix_timestamp(row.period_end)),
        cpu_seconds: usage.cpu_usage_ns as f64 / 1e9,
        memory_byte_seconds: usage.memory_byte_seconds,
        memory_peak_bytes: usage.memory_peak_bytes,
        disk_byte_seconds: usage.disk_byte_seconds,
        io_read_bytes: usage.io_read_bytes,
        io_write_bytes: usage.io_write_bytes,
        net_rx_bytes: usage.net_rx_bytes,
        net_tx_bytes: usage.net_tx_bytes,
    }
}

/// A usage request's time range in Unix seconds; unset ends are open.
pub fn usage_range(
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> (i64, i64) {
    (
        from.map_or(0, |t| t.seconds.max(0)),
        // Open end: far enough for any record, small enough to format in keys.
        to.map_or(i64::MAX / 4, |t| t.seconds.max(0)),
    )
}

/// A backup record as the API shows it.
pub fn backup(record: &crate::model::BackupRecord) -> v1::Backup {
    v1::Backup {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        vps: record.vps.clone(),
        vps_id: record.vps_id.clone(),
        node: record.node.clone(),
        plan: record.plan.clone(),
        template: record.template.clone(),
        size_bytes: record.size_bytes,
        sha256: record.sha256.clone(),
        created_at: Some(timestamp(record.created_at)),
        location: record.location.clone(),
    }
}

/// A migration as the API reports it: its record as it ended, how long it took, and why a live
/// move asked for was done cold.
pub fn migration(
    record: &MigrationRecord,
    duration: std::time::Duration,
    cold_because: Option<&str>,
) -> v1::Migration {
    v1::Migration {
        migration_id: record.id.clone(),
        tenant: record.tenant.clone(),
        name: record.vps.clone(),
        vps_id: record.vps_id.clone(),
        from_node: record.source.clone(),
        to_node: record.destination.clone(),
        old_ipv4: record.old_ipv4.clone(),
        new_ipv4: record.new_ipv4.clone(),
        addresses_kept: record.addresses_kept,
        was_running: record.was_running,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        live: record.live,
        live_report: record
            .live_report
            .as_ref()
            .map(|report| v1::LiveMigrationReport {
                round_pages_written: report.round_pages_written.clone(),
                final_pages_written: report.final_pages_written,
                frozen_us: report.frozen_us,
                image_bytes: report.image_bytes,
                transfer_bytes: report.transfer_bytes,
                checkpoint_ms: report.checkpoint_ms,
                restore_ms: report.restore_ms,
            }),
        cold_because: cold_because.unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(observed: Option<Observed>) -> VpsRecord {
        VpsRecord {
            vps_id: "id".into(),
            name: "web1".into(),
            tenant: "demo".into(),
            plan: "nano".into(),
            template: "busybox".into(),
            resources: Resources::default(),
            node: "n1".into(),
            desired_power: Power::Running,
            deleting: false,
            ipv4: vec![],
            network: None,
            rebuild_generation: 0,
            restart_generation: 0,
            created_at: Utc::now(),
            observed: observed.map(|state| ObservedState {
                state,
                init_pid: 42,
                message: String::new(),
                at: Utc::now(),
            }),
            transfer_limit: None,
            applied_spec: None,
            last_request: None,
        }
    }

    #[test]
    fn a_spec_digest_changes_with_what_the_spec_asks() {
        let vps = record(None);
        let now = Utc::now();
        let digest = spec_digest(&vps_spec(&vps, false, now));
        assert_eq!(digest, spec_digest(&vps_spec(&vps, false, now)), "stable");
        assert_eq!(digest.len(), 24);
        assert_ne!(digest, spec_digest(&vps_spec(&vps, true, now)), "power");
        let mut resized = record(None);
        resized.resources.memory_bytes = 1 << 30;
        assert_ne!(
            digest,
            spec_digest(&vps_spec(&resized, false, now)),
            "limits"
        );
    }

    #[test]
    fn derived_states() {
        assert_eq!(vps_state(&record(None), true, false), v1::VpsState::Pending);
        assert_eq!(
            vps_state(&record(Some(Observed::Running)), true, false),
            v1::VpsState::Running
        );
        assert_eq!(
            vps_state(&record(Some(Observed::Running)), false, false),
            v1::VpsState::Unknown
        );
        assert_eq!(
            vps_state(&record(Some(Observed::Stopped)), true, true),
            v1::VpsState::Suspended
        );
        let mut deleting = record(Some(Observed::Running));
        deleting.deleting = true;
        assert_eq!(vps_state(&deleting, false, false), v1::VpsState::Deleting);
    }

    #[test]
    fn init_pid_only_when_running() {
        assert_eq!(
            vps(&record(Some(Observed::Running)), true, false, None, true).init_pid,
            42
        );
        assert_eq!(
            vps(&record(Some(Observed::Stopped)), true, false, None, true).init_pid,
            0
        );
    }

    fn limited(overage: TransferOverage, until: DateTime<Utc>) -> VpsRecord {
        let mut vps = record(Some(Observed::Running));
        vps.resources.net_ingress_bits_per_sec = 50_000_000;
        vps.resources.net_egress_bits_per_sec = 0;
        vps.network = Some(crate::model::VpsNetwork {
            pool: "p".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            nat: true,
            mac: "02:00:00:00:00:01".into(),
            ipv6: vec![],
            ipv6_prefix: None,
        });
        vps.transfer_limit = Some(crate::model::TransferLimit {
            overage,
            month: "2026-11".into(),
            since: until - chrono::Duration::days(3),
            until,
        });
        vps
    }

    #[test]
    fn a_throttle_caps_both_directions_until_the_month_ends() {
        let until = Utc::now() + chrono::Duration::hours(1);
        let vps = limited(
            TransferOverage::Throttle {
                bits_per_sec: 1_000_000,
            },
            until,
        );
        let network = vps_spec(&vps, false, Utc::now()).network.expect("network");
        assert_eq!(network.ingress_bits_per_sec, 1_000_000);
        // Unlimited (0) is capped too.
        assert_eq!(network.egress_bits_per_sec, 1_000_000);
        let after = vps_spec(&vps, false, until).network.expect("network");
        assert_eq!(after.ingress_bits_per_sec, 50_000_000);
        assert_eq!(after.egress_bits_per_sec, 0);
        // A throttle above the plan's own rate does not raise it.
        let generous = limited(
            TransferOverage::Throttle {
                bits_per_sec: 80_000_000,
            },
            until,
        );
        let network = vps_spec(&generous, false, Utc::now())
            .network
            .expect("network");
        assert_eq!(network.ingress_bits_per_sec, 50_000_000);
        assert_eq!(network.egress_bits_per_sec, 80_000_000);
    }

    #[test]
    fn a_suspension_holds_the_vps_stopped_until_the_month_ends() {
        let until = Utc::now() + chrono::Duration::hours(1);
        let vps = limited(TransferOverage::Suspend, until);
        let spec = vps_spec(&vps, false, Utc::now());
        assert_eq!(spec.desired_power(), v1::PowerState::Stopped);
        assert_eq!(vps.desired_power, Power::Running, "owner's choice kept");
        assert_eq!(
            vps_spec(&vps, false, until).desired_power(),
            v1::PowerState::Running
        );
        assert_eq!(
            vps_spec(&vps, true, until).desired_power(),
            v1::PowerState::Stopped,
            "tenant suspension still holds"
        );
    }

    #[test]
    fn overage_settings_come_from_the_api() {
        let plan = |overage: v1::TransferOverage, rate: u64, allowance: u64| v1::Plan {
            name: "p".into(),
            resources: None,
            monthly_transfer_bytes: allowance,
            transfer_overage: overage.into(),
            overage_rate_bits_per_sec: rate,
            max_snapshots: 0,
        };
        assert_eq!(
            transfer_overage_from(&plan(v1::TransferOverage::Unspecified, 0, 0)),
            Ok(TransferOverage::Notify)
        );
        assert_eq!(
            transfer_overage_from(&plan(v1::TransferOverage::Throttle, 1000, 10)),
            Ok(TransferOverage::Throttle { bits_per_sec: 1000 })
        );
        assert_eq!(
            transfer_overage_from(&plan(v1::TransferOverage::Suspend, 0, 10)),
            Ok(TransferOverage::Suspend)
        );
        for bad in [
            plan(v1::TransferOverage::Suspend, 1000, 10),
            plan(v1::TransferOverage::Notify, 1000, 10),
        ] {
            assert!(transfer_overage_from(&bad).is_err(), "{bad:?}");
        }
    }
}
