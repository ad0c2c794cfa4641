//! Raw Ethernet frames on the real kernel: a capture of every frame one host
//! interface sees, a sender inside a VPS's namespace (what a hostile tenant can
//! put on its eth0), and IPv6 Neighbor Discovery messages built byte by byte.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Netns;

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_IP: u16 = 0x0800;
/// IP protocol / IPv6 next-header values.
pub const ICMPV6: u8 = 58;
pub const UDP: u8 = 17;
pub const HOP_BY_HOP: u8 = 0;
pub const FRAGMENT: u8 = 44;
pub const DESTINATION_OPTIONS: u8 = 60;
/// ICMPv6 types.
pub const ROUTER_SOLICIT: u8 = 133;
pub const NEIGHBOR_SOLICIT: u8 = 135;
pub const NEIGHBOR_ADVERT: u8 = 136;
pub const ECHO_REQUEST: u8 = 128;
pub const MLD2_REPORT: u8 = 143;
/// ND option types.
pub const SOURCE_LLA: u8 = 1;
pub const TARGET_LLA: u8 = 2;
pub const NONCE: u8 = 14;

/// A packet socket bound to one interface of the calling thread's namespace.
fn packet_socket(ifname: &str) -> OwnedFd {
    let name = std::ffi::CString::new(ifname).expect("interface name");
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
    assert_eq!(
        bound,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    socket
}

/// Every frame one interface of the host sees (received and sent) while it runs.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    pub fn start(ifname: &str) -> Self {
        let socket = packet_socket(ifname);
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: the pointer and length describe `timeout`, alive for the call.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        assert_eq!(set, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
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

    /// Stops capturing and returns the frames, in order.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("capture thread")
    }
}

/// Sends complete Ethernet frames out of `ifname` inside `netns`.
pub fn send_frames(netns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = ifname.to_owned();
    netns
        .run(move || {
            let socket = packet_socket(&ifname);
            for frame in frames {
                // SAFETY: the pointer and length describe `frame`, alive for the call.
                let sent = unsafe {
                    libc::send(socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                };
                assert_eq!(
                    sent,
                    frame.len() as isize,
                    "send on {ifname}: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .join()
        .expect("sender thread");
}

/// The link and network addresses of one IPv6 frame.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
}

/// An Ethernet frame with an IPv6 header (hop limit 255, as ND requires)
/// followed by `payload`, whose first header is `next_header`.
pub fn ipv6_frame(addresses: &Addresses, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54 + payload.len());
    frame.extend_from_slice(&addresses.dst_mac);
    frame.extend_from_slice(&addresses.src_mac);
    frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    let length = u16::try_from(payload.len()).expect("payload fits one packet");
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&[next_header, 255]);
    frame.extend_from_slice(&addresses.src.octets());
    frame.extend_from_slice(&addresses.dst.octets());
    frame.extend_from_slice(payload);
    frame
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of an upper-layer `message` over IPv6 (with its pseudo header).
fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(message);
    checksum(&pseudo)
}

/// An ICMPv6 message from `src` to `dst` with a correct checksum; `body` is
/// everything after the type, code and checksum.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, icmp_type: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![icmp_type, 0, 0, 0];
    message.extend_from_slice(body);
    let sum = checksum6(src, dst, ICMPV6, &message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// A UDP datagram over IPv6 with a correct checksum.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut datagram = udp_header(ports, payload);
    let sum = checksum6(src, dst, UDP, &datagram);
    datagram[6..8].copy_from_slice(&sum.to_be_bytes());
    datagram
}

fn udp_header((sport, dport): (u16, u16), payload: &[u8]) -> Vec<u8> {
    let length = u16::try_from(8 + payload.len()).expect("datagram fits");
    let mut datagram = Vec::with_capacity(8 + payload.len());
    datagram.extend_from_slice(&sport.to_be_bytes());
    datagram.extend_from_slice(&dport.to_be_bytes());
    datagram.extend_from_slice(&length.to_be_bytes());
    datagram.extend_from_slice(&[0, 0]);
    datagram.extend_from_slice(payload);
    datagram
}

/// An Ethernet frame carrying an IPv4 UDP datagram (checksum 0: none, as IPv4 allows).
pub fn udp4_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let datagram = udp_header(ports, payload);
    let total = u16::try_from(20 + datagram.len()).expect("packet fits");
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&[0, 1, 0, 0, 64, UDP, 0, 0]);
    header.extend_from_slice(&src.octets());
    header.extend_from_slice(&dst.octets());
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + header.len() + datagram.len());
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&datagram);
    frame
}

/// An MLDv2 report without records behind a hop-by-hop header with the
/// router alert option, as a kernel sends it (the payload of `ipv6_frame`
/// with `HOP_BY_HOP`).
pub fn mld2_report(src: Ipv6Addr) -> Vec<u8> {
    let group: Ipv6Addr = "ff02::16".parse().expect("ff02::16");
    let mut payload = vec![ICMPV6, 0, 5, 2, 0, 0, 1, 0];
    payload.extend_from_slice(&icmpv6(src, group, MLD2_REPORT, &[0, 0, 0, 0]));
    payload
}

/// A neighbour advertisement body: Override set (unsolicited, as a claim).
pub fn advert(target: Ipv6Addr, options: &[[u8; 8]]) -> Vec<u8> {
    let mut body = vec![0x20, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend(options.iter().flatten());
    body
}

/// A neighbour solicitation body.
pub fn solicit(target: Ipv6Addr, options: &[[u8; 8]]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&target.octets());
    body.extend(options.iter().flatten());
    body
}

/// A router solicitation body.
pub fn router_solicit(options: &[[u8; 8]]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend(options.iter().flatten());
    body
}

/// A one-unit ND option: a link-layer address (`SOURCE_LLA`, `TARGET_LLA`) or a `NONCE`.
pub fn option(kind: u8, value: [u8; 6]) -> [u8; 8] {
    let mut option = [kind, 1, 0, 0, 0, 0, 0, 0];
    option[2..].copy_from_slice(&value);
    option
}

/// The solicited-node multicast address of `address`.
pub fn solicited_node(address: Ipv6Addr) -> Ipv6Addr {
    let o = address.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        u16::from_be_bytes([0xff, o[13]]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address an IPv6 multicast address is sent to.
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}
