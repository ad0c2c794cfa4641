//! sysinfo(2) and sched_getaffinity(2) answered from the VPS's cgroup: busybox `free` and
//! `uptime` (and anything else that asks the kernel rather than reading /proc, which lxcfs
//! covers, see [`super::procview`]) see the VPS's memory limit and usage, swap allowance, task
//! count and uptime, not the host's; `nproc` and every thread-pool sizing that counts the
//! affinity mask see [`crate::runtime::cgroups::visible_cpus`] CPUs (⌈vcpus⌉), without pinning the VPS:
//! the first ⌈vcpus⌉ CPUs of the caller's real mask are reported; with no CPU quota, or for
//! another process's mask, the real call runs.
//!
//! The VPS's seccomp filter hands sysinfo to a user-space listener
//! ([`super::seccomp::with_sysinfo_notify`]). One server process per VPS, forked by the start
//! helper before it unshares its mount namespace (so it never pins the VPS's disk), in the VPS's
//! cgroup (killed with it), listens on `<vps_dir>/sysinfo.sock` (0600, host root only). Each
//! process that installs the filter — the init, and every exec'd command — sends its listener
//! fd there over a socket its helper connected while still host root. For each notification
//! the server opens the caller's `/proc/<pid>/mem`, checks the notification is still pending
//! (so that file is the caller's, not a reused pid's), writes a `struct sysinfo` into its
//! buffer and lets the call return 0. Load averages are reported as 0
//! (the host's would leak its load). If the server is gone, sysinfo fails with ENOSYS.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::unistd::{fork, ForkResult};

use crate::runtime::cgroups::VpsCgroup;

/// Name of the server's socket in the VPS's directory.
pub const SOCKET_NAME: &str = "sysinfo.sock";

/// Errors starting the server or handing it a listener.
#[derive(Debug, thiserror::Error)]
pub enum SysinfoError {
    /// A socket operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// fork failed.
    #[error("fork sysinfo server: {0}")]
    Fork(nix::errno::Errno),
    /// Sending the listener fd failed.
    #[error("send seccomp listener to the sysinfo server: {0}")]
    Send(nix::errno::Errno),
}

/// Forks the VPS's sysinfo server listening on `socket`; returns once it is bound (a connect
/// right after succeeds). Call from the single-threaded start helper, before it unshares its
/// mount namespace; `join_cgroup` runs in the server before it serves.
pub(crate) fn spawn_server(
    socket: &Path,
    cgroup_parent: &str,
    vps_id: &str,
) -> Result<(), SysinfoError> {
    spawn_server_for(socket, cgroup_parent, vps_id, None)
}

/// [`spawn_server`] for a VPS whose init already runs without a link to a server (restored
/// from a checkpoint: its listener stayed with the old server): this server serves until
/// that init exits, not until its last link closes.
pub(crate) fn spawn_server_for(
    socket: &Path,
    cgroup_parent: &str,
    vps_id: &str,
    init_pid: Option<u32>,
) -> Result<(), SysinfoError> {
    let io_err = |operation| {
        let path = socket.to_path_buf();
        move |source| SysinfoError::Io {
            operation,
            path,
            source,
        }
    };
    let _ = fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(io_err("bind"))?;
    fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io_err("chmod"))?;
    // SAFETY: the start helper is single-threaded, so the child is a complete copy.
    match unsafe { fork() }.map_err(SysinfoError::Fork)? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            crate::runtime::process::helper::detach_service();
            let cgroup = VpsCgroup::open(cgroup_parent, vps_id);
            let init = init_pid
                .and_then(|pid| libc::pid_t::try_from(pid).ok())
                .and_then(|pid| crate::runtime::sys::pidfd_open(pid).ok());
            let code = if cgroup.add_process(std::process::id()).is_ok() {
                serve(listener, &cgroup.paths(), init);
                0
            } else {
                1
            };
            crate::runtime::process::helper::exit_child(code)
        }
    }
}

/// Connects to the VPS's sysinfo server (as host root, before joining the VPS); `None` when
/// it is not running (a VPS started before the server existed).
pub(crate) fn connect(socket: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket).ok()
}

/// Sends `listener` (a seccomp notification fd) to the server over `link`.
pub(crate) fn send_listener(link: &UnixStream, listener: &OwnedFd) -> Result<(), SysinfoError> {
    let fds = [listener.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"L")];
    sendmsg::<()>(link.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map(|_| ())
        .map_err(SysinfoError::Send)
}

/// The server loop: accepts links, takes listener fds from them, answers notifications. Ends
/// when every listener it had is gone (no process of the VPS uses the filter any more).
fn serve(listener: UnixListener, cgroup_dirs: &[PathBuf], init: Option<OwnedFd>) {
    let started = Instant::now();
    let mut links: Vec<UnixStream> = Vec::new();
    let mut notifiers: Vec<OwnedFd> = Vec::new();
    let mut had_notifier = false;
    loop {
        // Without a pidfd of the init, the init's own listener keeps the server alive.
        if init.is_none() && had_notifier && notifiers.is_empty() && links.is_empty() {
            return;
        }
        let mut fds: Vec<PollFd> = Vec::with_capacity(2 + links.len() + notifiers.len());
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        fds.extend(
            links
                .iter()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
        );
        fds.extend(
            notifiers
                .iter()
                .map(|n| PollFd::new(n.as_fd(), PollFlags::POLLIN)),
        );
        // Last, so the positions above stay as they are; readable once the init exited.
        if let Some(init) = &init {
            fds.push(PollFd::new(init.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        let mut ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if init.is_some() && ready.pop().is_some_and(|flags| !flags.is_empty()) {
            return;
        }
        let (accept, rest) = ready.split_at(1);
        let (link_ready, notifier_ready) = rest.split_at(links.len());

        let mut gone = Vec::new();
        for (i, flags) in notifier_ready.iter().enumerate() {
            if flags.contains(PollFlags::POLLIN) {
                answer(notifiers[i].as_fd(), cgroup_dirs, started);
            } else if flags
                .intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            notifiers.remove(i);
        }

        let mut closed = Vec::new();
        for (i, flags) in link_ready.iter().enumerate() {
            if flags.is_empty() {
                continue;
            }
            match receive_fd(links[i].as_raw_fd()) {
                Some(fd) => {
                    notifiers.push(fd);
                    had_notifier = true;
                }
                None => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            links.remove(i);
        }

        if accept[0].contains(PollFlags::POLLIN) {
            if let Ok((link, _)) = listener.accept() {
                links.push(link);
            }
        }
    }
}

/// One fd from a link; `None` at EOF or on error (the link is then dropped).
fn receive_fd(link: RawFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(link, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    if msg.bytes == 0 {
        return None;
    }
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                return Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(*fd) });
            }
        }
    }
    None
}

/// Receives one notification and answers it (sysinfo from the cgroup, anything else ENOSYS).
fn answer(notifier: BorrowedFd<'_>, cgroup_dirs: &[PathBuf], started: Instant) {
    // SAFETY: all-zero is a valid seccomp_notif (plain integers), and the kernel requires the
    // buffer zeroed.
    let mut request: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: RECV writes one seccomp_notif into `request`, which is large enough.
    let rc = unsafe {
        libc::ioctl(
            notifier.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_RECV,
            &mut request as *mut libc::seccomp_notif,
        )
    };
    if rc != 0 {
        return; // The caller died (ENOENT) or was interrupted.
    }
    let mut response = libc::seccomp_notif_resp {
        id: request.id,
        val: 0,
        error: 0,
        flags: 0,
    };
    let nr = i64::from(request.data.nr);
    if nr == libc::SYS_sysinfo {
        let Some(memory) = open_caller_memory(notifier, &request) else {
            return;
        };
        let info = vps_sysinfo(cgroup_dirs, started);
        // SAFETY: sysinfo is plain integers; viewing it as bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &info as *const libc::sysinfo as *const u8,
                std::mem::size_of::<libc::sysinfo>(),
            )
        };
        if memory.write_all_at(bytes, request.data.args[0]).is_err() {
            response.error = -libc::EFAULT;
        }
    } else if nr == libc::SYS_sched_getaffinity {
        match affinity_mask(&request, cgroup_dirs) {
            Some(Ok(mask)) => {
                let Some(memory) = open_caller_memory(notifier, &request) else {
                    return;
                };
                if memory.write_all_at(&mask, request.data.args[2]).is_err() {
                    response.error = -libc::EFAULT;
                } else {
                    response.val = mask.len() as i64;
                }
            }
            Some(Err(errno)) => response.error = -errno,
            None => response.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        }
    } else {
        response.error = -libc::ENOSYS;
    }
    // SAFETY: SEND reads one seccomp_notif_resp from `response`.
    unsafe {
        libc::ioctl(
            notifier.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SEND,
            &mut response as *mut libc::seccomp_notif_resp,
        )
    };
}

/// Whether notification `id` is still pending, i.e. `pid` is still the caller (not reused).
fn id_valid(notifier: BorrowedFd<'_>, id: u64) -> bool {
    let mut id = id;
    // SAFETY: ID_VALID reads one u64.
    unsafe {
        libc::ioctl(
            notifier.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id as *mut u64,
        ) == 0
    }
}

/// The affinity mask the caller of sched_getaffinity(pid, len, mask) gets: the first
/// ⌈vcpus⌉ CPUs of its real mask, `len` checked like the kernel does. `None`: let the real call
/// run (no CPU quota, another process's mask, an unusual length). `Some(Err(errno))`: fail.
fn affinity_mask(request: &libc::seccomp_notif, dirs: &[PathBuf]) -> Option<Result<Vec<u8>, i32>> {
    let [target, len, _, _, _, _] = request.data.args;
    let vcpus = cpu_quota(dirs)?;
    let visible = crate::runtime::cgroups::visible_cpus(vcpus)?;
    let status = fs::read_to_string(format!("/proc/{}/status", request.pid)).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    // pid 0 or the caller's own pid in its namespace (last NSpid entry) mean "myself".
    let own = field("NSpid:")
        .and_then(|ns| ns.split_whitespace().last())
        .and_then(|p| p.parse::<u64>().ok());
    if target != 0 && Some(target) != own {
        return None;
    }
    let allowed = crate::runtime::cgroups::parse_cpu_list(field("Cpus_allowed_list:")?);
    if len > 1 << 16 {
        return None;
    }
    // The kernel's checks and returned size: ask it for this process with the same length.
    let mut probe = vec![0u8; usize::try_from(len).ok()?];
    // SAFETY: the kernel writes at most `len` bytes into `probe`, which is `len` long.
    let size = unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            0,
            len as libc::size_t,
            probe.as_mut_ptr(),
        )
    };
    if size < 0 {
        return Some(Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)));
    }
    let mut mask = vec![0u8; usize::try_from(size).ok()?];
    for cpu in allowed.iter().take(visible) {
        let (byte, bit) = (*cpu as usize / 8, cpu % 8);
        if let Some(b) = mask.get_mut(byte) {
            *b |= 1 << bit;
        }
    }
    Some(Ok(mask))
}

/// The VPS's CFS quota in CPUs (`None`: unlimited or unreadable).
fn cpu_quota(dirs: &[PathBuf]) -> Option<f64> {
    let read = |file: &str| {
        dirs.iter()
            .find_map(|dir| fs::read_to_string(dir.join(file)).ok())
    };
    let (quota, period) = match read("cpu.max") {
        Some(line) => {
            let mut parts = line.split_whitespace();
            (
                parts.next()?.parse::<i64>().ok()?,
                parts.next()?.parse::<i64>().ok()?,
            )
        }
        None => (
            read("cpu.cfs_quota_us")?.trim().parse::<i64>().ok()?,
            read("cpu.cfs_period_us")?.trim().parse::<i64>().ok()?,
        ),
    };
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// The caller's memory, opened so that it is certainly the caller's: `/proc/<pid>/mem` is
/// opened first, then the notification is checked to be still pending. A pending notification
/// means the caller is still blocked in the call, so the pid was not reused between the two,
/// and the open file keeps naming that process's memory whatever happens to the pid later.
/// `None`: the caller is gone (the answer is dropped).
fn open_caller_memory(notifier: BorrowedFd<'_>, request: &libc::seccomp_notif) -> Option<fs::File> {
    let memory = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", request.pid))
        .ok()?;
    id_valid(notifier, request.id).then_some(memory)
}

/// A value from the first of `files` found in `dirs` (`max` = unlimited = `None`).
fn read_value(dirs: &[PathBuf], files: &[&str]) -> Option<u64> {
    dirs.iter()
        .flat_map(|dir| files.iter().map(move |f| dir.join(f)))
        .find_map(|path| fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse().ok())
}

/// The VPS's sysinfo: RAM = its memory limit (at most the host's), free = limit − usage, swap
/// = its swap allowance (at most the host's swap), procs = its tasks, uptime = since the
/// server started (right before the init), loads 0.
fn vps_sysinfo(dirs: &[PathBuf], started: Instant) -> libc::sysinfo {
    let host = crate::runtime::sys::sysinfo();
    let unit = u64::from(host.mem_unit.max(1));
    // c_ulong is u64 here but u32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let (host_ram, host_swap) = (host.totalram as u64 * unit, host.totalswap as u64 * unit);
    let limit = read_value(dirs, &["memory.limit_in_bytes", "memory.max"])
        .unwrap_or(host_ram)
        .min(host_ram);
    let usage = read_value(dirs, &["memory.usage_in_bytes", "memory.current"])
        .unwrap_or(0)
        .min(limit);
    let (swap_total, swap_used) = match read_value(dirs, &["memory.swap.max"]) {
        Some(swap) => (
            swap.min(host_swap),
            read_value(dirs, &["memory.swap.current"]).unwrap_or(0),
        ),
        None => match read_value(dirs, &["memory.memsw.limit_in_bytes"]) {
            Some(memsw) => (
                memsw.saturating_sub(limit).min(host_swap),
                read_value(dirs, &["memory.memsw.usage_in_bytes"])
                    .unwrap_or(0)
                    .saturating_sub(usage),
            ),
            None => (0, 0),
        },
    };
    let procs = read_value(dirs, &["pids.current"]).unwrap_or(1);
    let mut info: libc::sysinfo = host;
    info.uptime = libc::c_long::try_from(started.elapsed().as_secs()).unwrap_or(0);
    info.loads = [0; 3];
    info.mem_unit = 1;
    info.totalram = limit as libc::c_ulong;
    info.freeram = (limit - usage) as libc::c_ulong;
    info.sharedram = 0;
    info.bufferram = 0;
    info.totalswap = swap_total as libc::c_ulong;
    info.freeswap = swap_total.saturating_sub(swap_used) as libc::c_ulong;
    info.procs = u16::try_from(procs).unwrap_or(u16::MAX);
    info.totalhigh = 0;
    info.freehigh = 0;
    info
}
