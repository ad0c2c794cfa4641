//! Per-VPS traffic counters, read from the host end of the VPS's veth.

use std::collections::HashMap;
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

/// The host namespace's interface counters, all in one read.
const PROC_NET_DEV: &str = "/proc/self/net/dev";

/// The counters of every port (host veth end) on the host, by host interface name, from one
/// read of `/proc/self/net/dev` (the agent's main thread's network namespace: the host's) —
/// the same kernel counters as `/sys/class/net/*/statistics`, without 4 opens per port.
pub fn read_all() -> Result<HashMap<String, Counters>, NetworkError> {
    let text = std::fs::read_to_string(PROC_NET_DEV).map_err(|source| NetworkError::Io {
        op: "read counters",
        path: PathBuf::from(PROC_NET_DEV),
        source,
    })?;
    Ok(parse_net_dev(&text))
}

/// Parses `/proc/net/dev`: after two header lines, `name: rx_bytes rx_packets (6 more) tx_bytes
/// tx_packets ...` per interface; `rx`/`tx` swapped into the VPS's view as in [`read_port`].
fn parse_net_dev(text: &str) -> HashMap<String, Counters> {
    text.lines()
        .filter_map(|line| {
            let (name, values) = line.rsplit_once(':')?;
            let values: Vec<u64> = values
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let [host_rx_bytes, host_rx_packets, _, _, _, _, _, _, host_tx_bytes, host_tx_packets, ..] =
                values[..]
            else {
                return None;
            };
            Some((
                name.trim().to_owned(),
                Counters {
                    rx_bytes: host_tx_bytes,
                    rx_packets: host_tx_packets,
                    tx_bytes: host_rx_bytes,
                    tx_packets: host_rx_packets,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_lines_become_vps_side_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n\
pv0123abcd:  200  2    0    0    0     0          0         0      5000   50    0    0    0     0       0          0\n";
        let all = parse_net_dev(text);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all["pv0123abcd"],
            Counters {
                rx_bytes: 5000,
                rx_packets: 50,
                tx_bytes: 200,
                tx_packets: 2,
            }
        );
    }

    #[test]
    fn the_table_has_loopback() {
        // The host's own namespace always has lo.
        let all = read_all().expect("read /proc/self/net/dev");
        assert!(all.contains_key("lo"), "{all:?}");
    }
}
