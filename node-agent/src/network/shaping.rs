//! Per-VPS bandwidth limits with tc, on the host side of the VPS's port.
//!
//! Traffic *to* the VPS leaves the host veth, so its limit is a token bucket
//! (`tbf`) as the veth's root qdisc. Traffic *from* the VPS arrives on the host
//! veth; it is redirected (`mirred`) to the port's own ifb device and shaped by
//! a `tbf` there, which queues instead of dropping the way a policer would, so
//! TCP settles at the configured rate. `tc qdisc replace` changes a running
//! VPS's rates in place.

use std::process::Command;

use super::NetworkError;

/// A token bucket for `bits_per_sec`: the burst holds 10 ms of traffic (at
/// least 16 KiB, so a few full frames fit at low rates).
pub fn tbf_args(bits_per_sec: u64) -> Vec<String> {
    let burst_bytes = (bits_per_sec / 8 / 100).max(16 * 1024);
    vec![
        "tbf".to_owned(),
        "rate".to_owned(),
        format!("{bits_per_sec}bit"),
        "burst".to_owned(),
        burst_bytes.to_string(),
        "latency".to_owned(),
        "50ms".to_owned(),
    ]
}

/// Runs `tc ARGS`, returning stdout.
fn tc(args: &[String]) -> Result<String, NetworkError> {
    let output = crate::bounded::output(
        "tc",
        Command::new("tc").args(args),
        None,
        crate::bounded::TOOL_DEADLINE,
    )
    .map_err(|source| NetworkError::Spawn {
        program: "tc",
        source,
    })?;
    if !output.status.success() {
        return Err(NetworkError::Command {
            command: format!("tc {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Limits traffic leaving `ifname` to `bits_per_sec` (0 removes the limit).
pub fn set_root_rate(ifname: &str, bits_per_sec: u64) -> Result<(), NetworkError> {
    if bits_per_sec == 0 {
        let shown = tc(&strings(&["qdisc", "show", "dev", ifname, "root"]))?;
        if shown.contains("tbf") {
            tc(&strings(&["qdisc", "del", "dev", ifname, "root"]))?;
        }
        return Ok(());
    }
    let mut args = strings(&["qdisc", "replace", "dev", ifname, "root"]);
    args.extend(tbf_args(bits_per_sec));
    tc(&args).map(drop)
}

/// Redirects everything arriving on `ifname` to `ifb` (idempotent).
pub fn redirect_ingress(ifname: &str, ifb: &str) -> Result<(), NetworkError> {
    tc(&strings(&[
        "qdisc", "replace", "dev", ifname, "handle", "ffff:", "ingress",
    ]))?;
    let filters = tc(&strings(&[
        "filter", "show", "dev", ifname, "parent", "ffff:",
    ]))?;
    if filters.contains(&format!("dev {ifb}")) {
        return Ok(());
    }
    if filters.contains("mirred") {
        tc(&strings(&[
            "filter", "del", "dev", ifname, "parent", "ffff:",
        ]))?;
    }
    tc(&strings(&[
        "filter", "add", "dev", ifname, "parent", "ffff:", "protocol", "all", "prio", "1", "u32",
        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    ]))
    .map(drop)
}

/// Removes the ingress qdisc (and its redirect) from `ifname`, if any.
pub fn clear_ingress(ifname: &str) -> Result<(), NetworkError> {
    let shown = tc(&strings(&["qdisc", "show", "dev", ifname, "ingress"]))?;
    if shown.contains("ingress") {
        tc(&strings(&["qdisc", "del", "dev", ifname, "ingress"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_covers_ten_milliseconds() {
        assert_eq!(
            tbf_args(20_000_000),
            [
                "tbf",
                "rate",
                "20000000bit",
                "burst",
                "25000",
                "latency",
                "50ms"
            ]
        );
        assert_eq!(tbf_args(1_000_000)[4], "16384");
    }
}
