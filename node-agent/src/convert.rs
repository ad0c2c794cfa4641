//! Conversions between the agent protocol and the runtime's types.

use paddock_proto::v1;

use crate::network::{IfAddr, NetworkError, PortSpec};
use crate::runtime::{
    validate_vps_id, Limits, ObservedState, Power, TtySize, VpsObserved, VpsSpec,
};

pub fn spec(spec: &v1::VpsSpec) -> Result<VpsSpec, tonic::Status> {
    validate_vps_id(&spec.vps_id)
        .map_err(|error| tonic::Status::invalid_argument(error.to_string()))?;
    let resources = spec.resources.unwrap_or_default();
    let power = match spec.desired_power() {
        v1::PowerState::Running => Power::Running,
        v1::PowerState::Stopped => Power::Stopped,
        v1::PowerState::Unspecified => {
            return Err(tonic::Status::invalid_argument(
                "desired_power: must be RUNNING or STOPPED",
            ))
        }
    };
    Ok(VpsSpec {
        vps_id: spec.vps_id.clone(),
        hostname: spec.name.clone(),
        template: spec.template.clone(),
        limits: Limits {
            vcpus: resources.vcpus,
            cpu_weight: resources.cpu_weight,
            memory_bytes: resources.memory_bytes,
            swap_bytes: resources.swap_bytes,
            pids_max: resources.pids_max,
            disk_bytes: resources.disk_bytes,
            io_read_bps: resources.io_read_bytes_per_sec,
            io_write_bps: resources.io_write_bytes_per_sec,
            io_read_iops: resources.io_read_iops,
            io_write_iops: resources.io_write_iops,
        },
        power,
        rebuild_generation: spec.rebuild_generation,
        restart_generation: spec.restart_generation,
    })
}

/// The VPS's network port, if the controller gave it one.
pub fn port_spec(spec: &v1::VpsSpec) -> Result<Option<PortSpec>, tonic::Status> {
    let Some(network) = &spec.network else {
        return Ok(None);
    };
    let invalid = |error: NetworkError| tonic::Status::invalid_argument(error.to_string());
    if network.mac.is_empty() {
        return Err(tonic::Status::invalid_argument("network.mac: is required"));
    }
    let mac = network.mac.parse().map_err(invalid)?;
    let addresses = network
        .addresses
        .iter()
        .map(|address| address.parse::<IfAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let gateway = if network.gateway.is_empty() {
        None
    } else {
        Some(network.gateway.parse().map_err(|_| {
            tonic::Status::invalid_argument(format!(
                "network.gateway: {:?} is not an IP address",
                network.gateway
            ))
        })?)
    };
    let gateway6 = if network.gateway6.is_empty() {
        None
    } else {
        Some(network.gateway6.parse().map_err(|_| {
            tonic::Status::invalid_argument(format!(
                "network.gateway6: {:?} is not an IP address",
                network.gateway6
            ))
        })?)
    };
    let pool = if network.pool_cidr.is_empty() {
        None
    } else {
        Some(network.pool_cidr.parse::<IfAddr>().map_err(invalid)?)
    };
    let port = PortSpec {
        vps_id: spec.vps_id.clone(),
        mac,
        addresses,
        gateway,
        gateway6,
        ingress_bps: network.ingress_bits_per_sec,
        egress_bps: network.egress_bits_per_sec,
        nat: network.nat,
        pool,
        tenant: spec.tenant.clone(),
    };
    port.validate().map_err(invalid)?;
    Ok(Some(port))
}

pub fn status(observed: &VpsObserved) -> v1::VpsStatus {
    let state = match observed.state {
        ObservedState::Running => v1::AgentVpsState::Running,
        ObservedState::Stopped => v1::AgentVpsState::Stopped,
        ObservedState::Error => v1::AgentVpsState::Error,
    };
    v1::VpsStatus {
        vps_id: observed.vps_id.clone(),
        state: state.into(),
        init_pid: observed.init_pid.unwrap_or(0),
        message: observed.message.clone(),
    }
}

/// A terminal size from the wire; missing or zero dimensions fall back to 24x80.
pub fn tty_size(size: Option<&v1::TerminalSize>) -> TtySize {
    let clamp = |value: u32, default: u16| match value {
        0 => default,
        v => u16::try_from(v).unwrap_or(u16::MAX),
    };
    TtySize {
        rows: clamp(size.map_or(0, |s| s.rows), 24),
        cols: clamp(size.map_or(0, |s| s.cols), 80),
    }
}

/// Reported when a runtime operation failed: the controller shows the message.
pub fn error_status(vps_id: &str, message: String) -> v1::VpsStatus {
    v1::VpsStatus {
        vps_id: vps_id.to_owned(),
        state: v1::AgentVpsState::Error.into(),
        init_pid: 0,
        message,
    }
}

/// A usage sample as the heartbeat carries it.
pub fn usage_sample(sample: &crate::metering::Sample) -> v1::UsageSample {
    v1::UsageSample {
        vps_id: sample.vps_id.clone(),
        incarnation: sample.incarnation.clone(),
        sequence: sample.sequence,
        sampled_at_unix_ms: sample.sampled_at_unix_ms,
        interval_ms: sample.interval_ms,
        cpu_usage_ns: sample.cpu_usage_ns,
        memory_bytes: sample.memory_bytes,
        memory_peak_bytes: sample.memory_peak_bytes,
        io_read_bytes: sample.io.read_bytes,
        io_write_bytes: sample.io.write_bytes,
        io_read_ops: sample.io.read_ops,
        io_write_ops: sample.io.write_ops,
        net_rx_bytes: sample.net_rx_bytes,
        net_tx_bytes: sample.net_tx_bytes,
        disk_used_bytes: sample.disk_used_bytes,
    }
}

/// A checkpoint's report on the wire.
pub fn checkpoint_report(report: &crate::runtime::CheckpointReport) -> v1::AgentCheckpointReport {
    v1::AgentCheckpointReport {
        dirty_tracking: report.dirty_tracking,
        round_pages_written: report.rounds.iter().map(|r| r.pages_written).collect(),
        final_pages_written: report.final_dump.pages_written,
        frozen_us: report.final_dump.frozen_us,
        image_bytes: report.image_bytes,
        total_ms: u64::try_from(report.total.as_millis()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vps_ids_cannot_escape() {
        // The runtime's rule: 1-64 of [A-Za-z0-9_-], starting with a letter or digit.
        for good in [
            "0b6f3c1e-1d2a-4c55-9a43-3f1b2d9e8a10",
            "A",
            "web_1",
            &"a".repeat(64),
        ] {
            assert!(validate_vps_id(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "a.b", "-a", "_a", "a b", &"a".repeat(65)] {
            assert!(validate_vps_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spec_with_a_bad_vps_id_names_the_rule() {
        let wire = v1::VpsSpec {
            vps_id: "../x".into(),
            ..Default::default()
        };
        let status = spec(&wire).expect_err("invalid id");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("invalid vps_id: "),
            "{status:?}"
        );
    }
}
