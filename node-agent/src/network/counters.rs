//! Per-VPS traffic counters, read from the host end of the VPS's veth.

use std::path::PathBuf;

use super::NetworkError;

/// Bytes and packets as the VPS sees them: `rx` is what it received (what the
/// host veth transmitted), `tx` what it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes delivered to the VPS.
    pub rx_bytes: u64,
    /// Packets delivered to the VPS.
    pub rx_packets: u64,
    /// Bytes the VPS sent (including any the anti-spoofing rules dropped).
    pub tx_bytes: u64,
    /// Packets the VPS sent.
    pub tx_packets: u64,
}

fn read(ifname: &str, counter: &str) -> Result<u64, NetworkError> {
    let path = PathBuf::from(format!("/sys/class/net/{ifname}/statistics/{counter}"));
    let text = std::fs::read_to_string(&path).map_err(|source| NetworkError::Io {
        op: "read counter",
        path: path.clone(),
        source,
    })?;
    text.trim().parse().map_err(|_| NetworkError::Io {
        op: "parse counter",
        path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.trim().to_owned()),
    })
}

/// The counters of the port whose host end is `host_ifname`.
pub fn read_port(host_ifname: &str) -> Result<Counters, NetworkError> {
    Ok(Counters {
        rx_bytes: read(host_ifname, "tx_bytes")?,
        rx_packets: read(host_ifname, "tx_packets")?,
        tx_bytes: read(host_ifname, "rx_bytes")?,
        tx_packets: read(host_ifname, "rx_packets")?,
    })
}
