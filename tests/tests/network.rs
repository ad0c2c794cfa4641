//! Issue 4, end to end: VPSes get addresses from the controller's pool, reach
//! each other and the gateway, cannot spoof, and leave no network trace.
//!
//! "Listeners" for spoofed traffic are packet sockets on the host: one on the
//! bridge device (what the host receives) and one on the receiving VPS's host
//! veth (every frame delivered to that VPS passes it). A spoofed TCP SYN never
//! completes a handshake whatever the filter does, so only frame capture tells.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use paddock_tests::{require_root, tcp, Cluster};

fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

fn create(cluster: &Cluster, name: &str) -> (String, String) {
    cluster
        .cli_ok(&with(&["create", name, "--plan", "nano", "--wait"]))
        .unwrap_or_else(|e| panic!("create {name}: {e}\n{}", cluster.log("agent.log")));
    let vps = cluster.json(&with(&["show", name])).expect("show");
    assert_eq!(vps["state"], "running", "{vps}");
    let ipv4 = vps["ipv4"][0].as_str().expect("an IPv4 address").to_owned();
    (vps["id"].as_str().expect("id").to_owned(), ipv4)
}

/// Every frame seen on one interface while it runs.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    fn start(ifname: &str) -> Self {
        const ETH_P_ALL: u16 = 0x0003;
        let name = std::ffi::CString::new(ifname).expect("name");
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETH_P_ALL.to_be();
        address.sll_ifindex = index as i32;
        // SAFETY: the pointer and length describe `address`, alive for the call.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: the pointer and length describe `timeout`, alive for the call.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buffer = vec![0u8; 65536];
            while !stopped.load(Ordering::SeqCst) {
                // SAFETY: the buffer is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        0,
                    )
                };
                if n > 0 {
                    frames.push(buffer[..n as usize].to_vec());
                }
            }
            frames
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("capture thread")
    }
}

fn ipv4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>().expect("ipv4").octets()
}

fn mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// IPv4 packets with this source address.
fn from_ipv4(frames: &[Vec<u8>], source: [u8; 4]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == source)
        .count()
}

/// Frames with this source MAC.
fn from_mac(frames: &[Vec<u8>], source: [u8; 6]) -> usize {
    frames
        .iter()
        .filter(|f| f.len() >= 14 && f[6..12] == source)
        .count()
}

/// ARP packets claiming `ip` is at `hw`.
fn arp_claims(frames: &[Vec<u8>], ip: [u8; 4], hw: [u8; 6]) -> usize {
    frames
        .iter()
        .filter(|f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[22..28] == hw && f[28..32] == ip
        })
        .count()
}

fn eth0_mac(cluster: &Cluster, vps: &str) -> [u8; 6] {
    mac(&cluster.sh_ok("acme", vps, "cat /sys/class/net/eth0/address"))
}

#[test]
fn vpses_talk_over_their_own_addresses_and_cannot_spoof() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    let (a_id, a_ip) = create(&cluster, "a");
    let (b_id, b_ip) = create(&cluster, "b");
    let (_c_id, c_ip) = create(&cluster, "c");
    let gateway = cluster.gateway();
    let prefix = format!("{}.", cluster.subnet);
    for ip in [&a_ip, &b_ip, &c_ip] {
        assert!(ip.starts_with(&prefix), "{ip} from the cluster's pool");
    }
    assert!(a_ip != b_ip && b_ip != c_ip && a_ip != c_ip);
    let pools = cluster
        .json(&["--context", "admin", "admin", "pool", "show", "pool-e2e"])
        .expect("pool show");
    assert_eq!(pools["allocated"], 3, "{pools}");

    // What the VPS sees: its address on eth0, a default route via the gateway, lo up.
    let addr = cluster.sh_ok("acme", "a", "ip -4 addr show dev eth0");
    assert!(addr.contains(&format!("{a_ip}/24")), "{addr}");
    let route = cluster.sh_ok("acme", "a", "ip route");
    assert!(
        route.contains(&format!("default via {gateway} dev eth0")),
        "{route}"
    );
    cluster.sh_ok("acme", "a", "ping -c 1 -W 2 127.0.0.1");
    let a_mac = eth0_mac(&cluster, "a");
    assert_eq!(a_mac[0], 0x02, "locally administered MAC");

    // Reachability by ping and TCP, with only the assigned addresses.
    cluster.sh_ok("acme", "a", &format!("ping -c 2 -W 2 {b_ip}"));
    cluster.sh_ok("acme", "a", &format!("ping -c 2 -W 2 {gateway}"));
    cluster.sh_ok("acme", "b", &format!("ping -c 2 -W 2 {a_ip}"));
    cluster.sh_ok("acme", "b", &format!("ping -c 1 -W 2 {gateway}"));
    // b listens in the foreground of one exec while a connects from another.
    cluster.sh_ok("acme", "b", &tcp::listen(7000));
    cluster.sh_ok("acme", "a", &tcp::send(&b_ip, 7000, "hello-over-tcp"));
    assert_eq!(
        cluster.sh_ok("acme", "b", &tcp::received(7000)).trim(),
        "hello-over-tcp"
    );
    // The node's own services are closed to VPSes (no host_ports_open_to_vps):
    // a listener on the gateway address gets no connection, though ping works.
    let host = std::net::TcpListener::bind((gateway.as_str(), 7001)).expect("listen on gateway");
    host.set_nonblocking(true).expect("nonblocking");
    let _ = cluster.sh(
        "acme",
        "a",
        &format!("echo to-host | timeout 5 nc -w 3 {gateway} 7001"),
    );
    assert!(
        host.accept().is_err(),
        "a VPS reached a service of the node on the gateway address"
    );
    drop(host);

    // Spoofing, as root inside VPS a, watched on the host's bridge and on b's port.
    let b_port = cluster.host_veth(&b_id);
    let on_bridge = Capture::start(&cluster.bridge);
    let on_b = Capture::start(&b_port);
    // Control: a's legitimate traffic is seen, so the captures work.
    cluster.sh_ok("acme", "a", &format!("ping -c 1 -W 2 {b_ip}"));
    cluster.sh_ok("acme", "a", &format!("ping -c 1 -W 2 {gateway}"));
    // 1. A neighbour's address (c's) on eth0, used as the source towards b and the host.
    cluster.sh_ok(
        "acme",
        "a",
        &format!(
            "ip addr add {c_ip}/32 dev eth0 && ip route replace {b_ip}/32 dev eth0 src {c_ip} \
             && ip route replace {gateway}/32 dev eth0 src {c_ip}"
        ),
    );
    let _ = cluster.sh("acme", "a", &format!("echo spoof | nc -w 2 {b_ip} 7002"));
    let _ = cluster.sh("acme", "a", &format!("echo spoof | nc -w 2 {gateway} 7003"));
    let _ = cluster.sh("acme", "a", &format!("ping -c 2 -W 1 {b_ip}"));
    // 2. Gratuitous ARP claiming the gateway's address.
    cluster.sh_ok("acme", "a", &format!("ip addr add {gateway}/32 dev eth0"));
    let _ = cluster.sh(
        "acme",
        "a",
        &format!("arping -U -c 3 -I eth0 -s {gateway} {gateway}"),
    );
    let _ = cluster.sh(
        "acme",
        "a",
        &format!("arping -A -c 3 -I eth0 -s {gateway} {gateway}"),
    );
    // 3. Another MAC on eth0, with a's own address.
    let fake_mac = "02:de:ad:be:ef:01";
    cluster.sh_ok(
        "acme",
        "a",
        &format!(
            "ip addr del {c_ip}/32 dev eth0; ip addr del {gateway}/32 dev eth0; \
             ip route del {b_ip}/32; ip route del {gateway}/32; \
             ip link set eth0 address {fake_mac}"
        ),
    );
    let _ = cluster.sh("acme", "a", &format!("echo spoof | nc -w 2 {b_ip} 7004"));
    let _ = cluster.sh("acme", "a", &format!("ping -c 2 -W 1 {gateway}"));
    std::thread::sleep(Duration::from_millis(500));
    let bridge_frames = on_bridge.finish();
    let b_frames = on_b.finish();

    assert!(
        from_ipv4(&bridge_frames, ipv4(&a_ip)) > 0,
        "control: the host sees a's legitimate packets"
    );
    assert!(
        from_ipv4(&b_frames, ipv4(&a_ip)) > 0,
        "control: b sees a's legitimate packets"
    );
    for (frames, who) in [(&bridge_frames, "the host"), (&b_frames, "b")] {
        assert_eq!(
            from_ipv4(frames, ipv4(&c_ip)),
            0,
            "{who} received packets with c's address as source"
        );
        assert_eq!(
            arp_claims(frames, ipv4(&gateway), a_mac),
            0,
            "{who} received a's ARP claiming the gateway"
        );
        assert_eq!(
            arp_claims(frames, ipv4(&c_ip), a_mac),
            0,
            "{who} received a's ARP claiming c's address"
        );
        assert_eq!(
            from_mac(frames, mac(fake_mac)),
            0,
            "{who} received frames from a's forged MAC"
        );
    }
    // b still resolves the gateway to the bridge, not to a.
    let neighbours = cluster.sh_ok("acme", "b", "ip neigh show");
    assert!(
        !neighbours.contains(&format!("{gateway} dev eth0 lladdr {}", fmt_mac(a_mac))),
        "{neighbours}"
    );

    // The nft counters on a's port record the drops.
    let rules = Command::new("nft")
        .args([
            "list",
            "table",
            "bridge",
            &format!("paddock_{}", cluster.bridge),
        ])
        .output()
        .expect("nft");
    let rules = String::from_utf8_lossy(&rules.stdout);
    let a_port = cluster.host_veth(&a_id);
    assert!(rules.contains(&format!("chain port_{a_port}")), "{rules}");
    // Each attempt really was sent, and was dropped by the rule meant for it.
    let chain = chain_text(&rules, &format!("port_{a_port}"));
    for (rule, what) in [
        ("ip saddr", "packets from c's address"),
        ("arp saddr ip", "ARP claiming another address"),
        ("ether saddr", "frames from the forged MAC"),
    ] {
        assert!(
            dropped(&chain, rule) > 0,
            "no {what} dropped by `{rule}` in:\n{chain}"
        );
    }

    for name in ["a", "b", "c"] {
        cluster
            .cli_ok(&with(&["delete", name, "--yes"]))
            .expect("delete");
    }
    cluster
        .wait_until("VPSes deleted", Duration::from_secs(60), |c| {
            Ok(c.json(&with(&["list"]))?
                .as_array()
                .is_some_and(|l| l.is_empty()))
        })
        .expect("deleted");
    assert_eq!(cluster.network_leftovers(), Vec::<String>::new());
    let pool = cluster
        .json(&["--context", "admin", "admin", "pool", "show", "pool-e2e"])
        .expect("pool show");
    assert_eq!(pool["allocated"], 0, "addresses return to the pool: {pool}");
}

/// VPSes of two tenants on one node and (public) pool exchange no frames:
/// the controller's tenant reaches the agent's port rules. They still reach
/// each other like any two internet hosts, routed by the node: on a's port,
/// d's ping and TCP come from the bridge's MAC with the TTL decremented, never
/// from d's MAC. Same-tenant VPSes and the gateway stay reachable directly.
/// (Private pools, closed across tenants, are covered by the agent's
/// node-agent/tests/network.rs::tenants_do_not_exchange_frames_on_the_bridge.)
#[test]
fn tenants_on_one_node_reach_each_other_only_routed() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant acme");
    cluster.add_tenant("demo").expect("tenant demo");
    let (a_id, a_ip) = create(&cluster, "a");
    let (_, b_ip) = create(&cluster, "b");
    cluster
        .cli_ok(&[
            "--context",
            "demo",
            "create",
            "d",
            "--plan",
            "nano",
            "--wait",
        ])
        .unwrap_or_else(|e| panic!("create d: {e}\n{}", cluster.log("agent.log")));
    let d = cluster
        .json(&["--context", "demo", "show", "d"])
        .expect("show d");
    let d_ip: std::net::Ipv4Addr = d["ipv4"][0]
        .as_str()
        .expect("an IPv4 address")
        .parse()
        .expect("ipv4");
    // The agent runs with ip_forward = false: routing for this test's bridge only.
    let forwarding = format!("/proc/sys/net/ipv4/conf/{}/forwarding", cluster.bridge);
    std::fs::write(&forwarding, "1").unwrap_or_else(|e| panic!("write {forwarding}: {e}"));
    let gateway = cluster.gateway();
    cluster.sh_ok("acme", "a", &format!("ping -c 1 -W 2 {b_ip}"));
    cluster.sh_ok("demo", "d", &format!("ping -c 1 -W 2 {gateway}"));
    let mac_of = |context: &str, name: &str| -> [u8; 6] {
        let text = cluster.sh_ok(context, name, "cat /sys/class/net/eth0/address");
        parse_mac(&text)
    };
    let d_mac = mac_of("demo", "d");
    let bridge_mac = parse_mac(
        &std::fs::read_to_string(format!("/sys/class/net/{}/address", cluster.bridge))
            .expect("bridge mac"),
    );
    let on_a = Capture::start(&cluster.host_veth(&a_id));
    // A few tries, like the TCP check below: once (in a full `make test`) both echoes of a
    // single two-packet ping were lost right after the VPSes came up; cause not found.
    let pinged = cluster.sh_ok(
        "demo",
        "d",
        &format!("for i in 1 2 3 4 5; do ping -c 1 -W 2 {a_ip} && exit 0; sleep 0.3; done; exit 1"),
    );
    cluster.sh_ok("acme", "a", &tcp::listen(7002));
    cluster.sh_ok("demo", "d", &tcp::send(&a_ip, 7002, "across-tenants"));
    let received = cluster.sh_ok("acme", "a", &tcp::received(7002));
    let frames = on_a.finish();
    assert_eq!(received.trim(), "across-tenants");
    assert!(pinged.contains("ttl=63"), "routed once: {pinged}");
    assert!(
        !frames.iter().any(|f| f.get(6..12) == Some(&d_mac[..])),
        "a frame of demo's VPS reached acme's port directly"
    );
    let from_d: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == d_ip.octets())
        .collect();
    assert!(!from_d.is_empty(), "d's packets reached a");
    assert!(
        from_d
            .iter()
            .all(|f| f[6..12] == bridge_mac[..] && f[22] == 63),
        "d's packets come from the bridge's MAC with TTL 63"
    );
    for (context, name) in [("acme", "a"), ("acme", "b"), ("demo", "d")] {
        cluster
            .cli_ok(&["--context", context, "delete", name, "--yes"])
            .expect("delete");
    }
    cluster
        .wait_until("VPSes deleted", Duration::from_secs(60), |c| {
            let empty = |context| -> anyhow::Result<bool> {
                Ok(c.json(&["--context", context, "list"])?
                    .as_array()
                    .is_some_and(|l| l.is_empty()))
            };
            Ok(empty("acme")? && empty("demo")?)
        })
        .expect("deleted");
    assert_eq!(cluster.network_leftovers(), Vec::<String>::new());
}

/// The body of one chain in `nft list table` output.
fn chain_text(rules: &str, chain: &str) -> String {
    rules
        .lines()
        .skip_while(|line| line.trim() != format!("chain {chain} {{"))
        .skip(1)
        .take_while(|line| line.trim() != "}")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Packets counted by the drop rule on `match_` (e.g. `ip saddr`) in a chain.
fn dropped(chain: &str, match_: &str) -> u64 {
    chain
        .lines()
        .map(str::trim)
        .filter(|line| line.ends_with("drop"))
        .filter(|line| {
            let arp = line.contains("arp saddr");
            match match_ {
                "ip saddr" => line.contains("ip saddr") && !arp && !line.contains("ip6"),
                "arp saddr ip" => arp && line.contains("saddr ip"),
                "ether saddr" => line.starts_with("ether saddr"),
                other => line.contains(other),
            }
        })
        .filter_map(|line| {
            line.split("packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("mac byte"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn agent_crash_and_delete_leave_no_network_trace() {
    if !require_root() {
        return;
    }
    let mut cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    let (a_id, a_ip) = create(&cluster, "a");
    let (b_id, _) = create(&cluster, "b");
    let a_pid = cluster.json(&with(&["show", "a"])).expect("show")["init_pid"]
        .as_u64()
        .expect("pid");

    // The agent dies; a keeps running; b dies behind its back.
    cluster.kill_agent();
    let b_pid = cluster.json(&with(&["show", "b"])).expect("show")["init_pid"]
        .as_u64()
        .expect("pid");
    // SAFETY: kill(2) on the pid of a VPS init this test created.
    unsafe { libc::kill(b_pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_agent().expect("agent restarts");

    // a's port survives untouched and still works; b comes back with a fresh one.
    cluster
        .wait_until("b running again", Duration::from_secs(60), |c| {
            let b = c.json(&with(&["show", "b"]))?;
            Ok(b["state"] == "running" && b["init_pid"].as_u64() != Some(b_pid))
        })
        .expect("b restarted");
    assert_eq!(
        cluster.json(&with(&["show", "a"])).expect("show")["init_pid"].as_u64(),
        Some(a_pid)
    );
    cluster.sh_ok("acme", "b", &format!("ping -c 2 -W 2 {a_ip}"));
    cluster.sh_ok(
        "acme",
        "a",
        &format!("ping -c 1 -W 2 {}", cluster.gateway()),
    );
    let _ = cluster.host_veth(&a_id);
    let _ = cluster.host_veth(&b_id);

    // Delete while the agent is down: the restarted agent finishes the job.
    cluster.kill_agent();
    cluster
        .cli_ok(&with(&["delete", "a", "--yes", "--no-wait"]))
        .expect("delete a");
    cluster.start_agent().expect("agent restarts");
    cluster
        .cli_ok(&with(&["delete", "b", "--yes"]))
        .expect("delete b");
    cluster
        .wait_until("VPSes deleted", Duration::from_secs(60), |c| {
            Ok(c.json(&with(&["list"]))?
                .as_array()
                .is_some_and(|l| l.is_empty()))
        })
        .expect("deleted");
    cluster
        .wait_until("no network leftovers", Duration::from_secs(10), |c| {
            Ok(c.network_leftovers().is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", cluster.network_leftovers()));
    let qdiscs = Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .expect("tc");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    for vps_id in [&a_id, &b_id] {
        let suffix = &host_veth_name_suffix(&cluster, vps_id);
        assert!(!qdiscs.contains(suffix.as_str()), "{qdiscs}");
    }
}

/// Nothing is left to look up once a VPS is gone, so the name is recomputed
/// from the agent's scheme (FNV-1a of the id): any qdisc naming it is a leak.
fn host_veth_name_suffix(_cluster: &Cluster, vps_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in vps_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", hash & 0xffff_ffff_ffff)
}

fn admin<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "admin", "admin"][..], args].concat()
}

fn cli_err(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.cli(args).expect("run paddock");
    assert!(
        !out.status.success(),
        "`paddock {}` should fail but printed {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_pools_quota_and_exhaustion_allocate_nothing() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    let node = cluster.node_name.clone();
    let subnet = cluster.subnet.clone();
    let pool_create = |name: &str, cidr: &str, gateway: &str, extra: &[&str]| {
        let mut args = admin(&[
            "pool",
            "create",
            name,
            "--node",
            &node,
            "--cidr",
            cidr,
            "--gateway",
            gateway,
        ]);
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let run_err = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_err(&cluster, &args)
    };

    let err = run_err(pool_create(
        "dup",
        &format!("{subnet}.128/25"),
        &format!("{subnet}.129"),
        &[],
    ));
    assert!(err.contains("overlaps pool \"pool-e2e\""), "{err}");
    let err = run_err(pool_create("g", "10.251.250.0/24", "10.251.251.1", &[]));
    assert!(err.contains("pool.gateway"), "{err}");
    let err = run_err(pool_create(
        "r",
        "10.251.250.0/24",
        "10.251.250.1",
        &[
            "--range-start",
            "10.251.250.10",
            "--range-end",
            "10.251.251.5",
        ],
    ));
    assert!(
        err.contains("pool.range_end") && err.contains("outside"),
        "{err}"
    );
    let pools = cluster.json(&admin(&["pool", "list"])).expect("list");
    assert_eq!(pools.as_array().map(Vec::len), Some(1), "{pools}");

    // More addresses than the tenant's quota.
    cluster
        .cli_ok(&admin(&["tenant", "set-quota", "acme", "--ipv4", "1"]))
        .expect("quota");
    create(&cluster, "a");
    let err = cli_err(&cluster, &with(&["create", "b", "--plan", "nano"]));
    assert!(err.contains("quota exceeded: ipv4"), "{err}");
    let pool = cluster
        .json(&admin(&["pool", "show", "pool-e2e"]))
        .expect("show");
    assert_eq!(pool["allocated"], 1, "{pool}");

    // A pool in use cannot go; an exhausted pool refuses the create cleanly.
    let err = cli_err(&cluster, &admin(&["pool", "delete", "pool-e2e"]));
    assert!(err.contains("allocated address"), "{err}");
    cluster
        .cli_ok(&with(&["delete", "a", "--yes"]))
        .expect("delete a");
    cluster
        .cli_ok(&admin(&["pool", "delete", "pool-e2e"]))
        .expect("delete the empty pool");
    cluster
        .cli_ok(&admin(&["tenant", "set-quota", "acme", "--ipv4", "10"]))
        .expect("quota");
    let tiny: Vec<String> = pool_create(
        "tiny",
        &format!("{subnet}.0/24"),
        &format!("{subnet}.1"),
        &[
            "--range-start",
            &format!("{subnet}.10"),
            "--range-end",
            &format!("{subnet}.10"),
        ],
    );
    let tiny: Vec<&str> = tiny.iter().map(String::as_str).collect();
    cluster.cli_ok(&tiny).expect("tiny pool");
    let (_, ip) = create(&cluster, "a");
    assert_eq!(ip, format!("{subnet}.10"));
    let err = cli_err(&cluster, &with(&["create", "b", "--plan", "nano"]));
    assert!(
        err.contains(&format!(
            "pool tiny on node {node} has no free IPv4 address"
        )),
        "{err}"
    );
    let list = cluster.json(&with(&["list"])).expect("list");
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(1),
        "nothing half-created: {list}"
    );
    let used = cluster
        .json(&admin(&["tenant", "show", "acme"]))
        .expect("tenant");
    assert!(used.to_string().contains("\"ipv4\":1"), "{used}");
}
