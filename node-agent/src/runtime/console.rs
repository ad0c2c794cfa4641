//! The VPS console: a pseudo-terminal whose slave is the init's stdin, stdout and stderr and
//! the VPS's `/dev/console`, and whose master is held by a small per-VPS supervisor process
//! (forked by the start helper, so it outlives agent restarts like the init does).
//!
//! The supervisor keeps the last [`SCROLLBACK_BYTES`] of output, appends everything to the
//! console log, and serves clients on `vps/<id>/console.sock` with a tiny framed protocol
//! ([`Frame`]): an attach (with or without scrollback), input bytes and window sizes in; raw
//! output bytes out. It exits when the VPS's last process closes the slave (the master reads
//! EIO) and lives in the VPS's cgroup, so stopping or deleting the VPS also ends it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::unistd::{chown, dup2, fork, setsid, ForkResult, Gid, Uid};

use super::idmap::IdRange;

/// Output kept for clients that attach later.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;

/// Frame types of the console socket protocol (client to supervisor).
pub const FRAME_DATA: u8 = 0;
/// Payload: rows (u16 BE), cols (u16 BE).
pub const FRAME_RESIZE: u8 = 1;
/// Payload: 1 byte, non-zero = send the scrollback first. Must be the first frame.
pub const FRAME_ATTACH: u8 = 2;

/// Errors setting up the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A pty or process call failed.
    #[error("{operation}: {source}")]
    Sys {
        /// The call.
        operation: &'static str,
        /// The errno.
        source: Errno,
    },
    /// A file or socket operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn sys_err(operation: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |source| ConsoleError::Sys { operation, source }
}

/// Encodes one client frame: `[type][len u16 BE][payload]`.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut bytes = Vec::with_capacity(3 + payload.len());
    bytes.push(kind);
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&payload[..usize::from(len)]);
    bytes
}

/// A resize frame.
pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut payload = rows.to_be_bytes().to_vec();
    payload.extend_from_slice(&cols.to_be_bytes());
    frame(FRAME_RESIZE, &payload)
}

/// A decoded client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Input for the console.
    Data(Vec<u8>),
    /// A new window size.
    Resize(u16, u16),
    /// Attach, with or without scrollback.
    Attach(bool),
}

/// Takes complete frames off the front of `buffer`. Unknown types are skipped.
pub fn decode_frames(buffer: &mut Vec<u8>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while buffer.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([buffer[1], buffer[2]]));
        if buffer.len() < 3 + len {
            break;
        }
        let payload: Vec<u8> = buffer[3..3 + len].to_vec();
        match buffer[0] {
            FRAME_DATA => frames.push(Frame::Data(payload)),
            FRAME_RESIZE if len == 4 => frames.push(Frame::Resize(
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            )),
            FRAME_ATTACH => frames.push(Frame::Attach(payload.first().is_some_and(|b| *b != 0))),
            _ => {}
        }
        buffer.drain(..3 + len);
    }
    frames
}

/// The console's pty, allocated in the host's devpts by the start helper.
pub(crate) struct ConsolePty {
    pub master: PtyMaster,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

/// Allocates the console pty and gives its slave to the VPS's root.
pub(crate) fn allocate(ids: IdRange) -> Result<ConsolePty, ConsoleError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys_err("open /dev/ptmx"))?;
    grantpt(&master).map_err(sys_err("grantpt"))?;
    unlockpt(&master).map_err(sys_err("unlockpt"))?;
    let slave_path = PathBuf::from(ptsname_r(&master).map_err(sys_err("ptsname"))?);
    chown(
        &slave_path,
        Some(Uid::from_raw(ids.host_base)),
        Some(Gid::from_raw(ids.host_base + 5)),
    )
    .map_err(sys_err("chown console pty"))?;
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&slave_path)
        .map_err(|source| ConsoleError::Io {
            operation: "open",
            path: slave_path.clone(),
            source,
        })?;
    Ok(ConsolePty {
        master,
        slave: OwnedFd::from(slave),
        slave_path,
    })
}

/// Paths the supervisor uses.
#[derive(Debug, Clone)]
pub(crate) struct SupervisorPaths {
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// Forks the console supervisor, which takes over the pty master. `before_loop` runs in the
/// child first (the start helper passes "join the VPS cgroup"). Call from the single-threaded
/// start helper; the child never returns.
pub(crate) fn spawn_supervisor(
    pty: &ConsolePty,
    paths: &SupervisorPaths,
    before_loop: impl FnOnce() -> bool,
) -> Result<(), ConsoleError> {
    let _ = fs::remove_file(&paths.socket);
    let listener = UnixListener::bind(&paths.socket).map_err(|source| ConsoleError::Io {
        operation: "bind",
        path: paths.socket.clone(),
        source,
    })?;
    fs::set_permissions(
        &paths.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|source| ConsoleError::Io {
        operation: "chmod",
        path: paths.socket.clone(),
        source,
    })?;
    let log = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&paths.log)
        .map_err(|source| ConsoleError::Io {
            operation: "open console log",
            path: paths.log.clone(),
            source,
        })?;
    // SAFETY: the start helper is single-threaded, so the child is a complete copy.
    match unsafe { fork() }.map_err(sys_err("fork console supervisor"))? {
        ForkResult::Parent { .. } => Ok(()),
        ForkResult::Child => {
            // The supervisor must not hold the slave, or the master never reads EIO.
            // SAFETY: closes this process's copy of the slave fd; the OwnedFd in this copy of
            // the memory is never dropped (the child only _exits).
            unsafe { libc::close(pty.slave.as_raw_fd()) };
            let _ = setsid();
            // Never hold the helper's stdout/stderr pipes: the agent reads them to EOF.
            if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
                for fd in 0..3 {
                    let _ = dup2(null.as_raw_fd(), fd);
                }
            }
            let _ = fs::write(&paths.pid_file, std::process::id().to_string());
            // Charged to the VPS's memory cgroup, but never the one its OOM killer picks.
            let _ = fs::write("/proc/self/oom_score_adj", "-1000");
            let code = if before_loop() {
                serve(&pty.master, listener, log);
                0
            } else {
                1
            };
            let _ = fs::remove_file(&paths.socket);
            // SAFETY: _exit is always sound and never returns.
            unsafe { libc::_exit(code) }
        }
    }
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    attached: bool,
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

/// The supervisor's loop: until the master reads EIO (no process holds the slave).
fn serve(master: &PtyMaster, listener: UnixListener, mut log: File) {
    let _ = listener.set_nonblocking(true);
    let mut scrollback: VecDeque<u8> = VecDeque::with_capacity(SCROLLBACK_BYTES);
    let mut clients: Vec<Client> = Vec::new();
    let mut buffer = vec![0u8; 8192];
    // SAFETY: the master fd stays open (owned by `master`) for this whole function; the File
    // is forgotten, never closed.
    let mut master_file = std::mem::ManuallyDrop::new(unsafe {
        <File as std::os::fd::FromRawFd>::from_raw_fd(master.as_raw_fd())
    });
    loop {
        let mut fds = vec![
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            clients
                .iter()
                .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if !ready[0].is_empty() {
            match master_file.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let out = &buffer[..n];
                    let _ = log.write_all(out);
                    scrollback.extend(out);
                    let excess = scrollback.len().saturating_sub(SCROLLBACK_BYTES);
                    scrollback.drain(..excess);
                    clients.retain_mut(|c| !c.attached || c.stream.write_all(out).is_ok());
                }
            }
        }
        if !ready[1].is_empty() {
            while let Ok((stream, _)) = listener.accept() {
                clients.push(Client {
                    stream,
                    input: Vec::new(),
                    attached: false,
                });
            }
        }
        let mut keep = Vec::with_capacity(clients.len());
        for (index, mut client) in clients.drain(..).enumerate() {
            let flags = ready.get(index + 2).copied().unwrap_or(PollFlags::empty());
            if flags.is_empty() {
                keep.push(client);
                continue;
            }
            let n = match client.stream.read(&mut buffer) {
                Ok(0) | Err(_) => continue,
                Ok(n) => n,
            };
            client.input.extend_from_slice(&buffer[..n]);
            let mut alive = true;
            for frame in decode_frames(&mut client.input) {
                match frame {
                    Frame::Attach(with_scrollback) => {
                        client.attached = true;
                        if with_scrollback {
                            let (a, b) = scrollback.as_slices();
                            alive &= client.stream.write_all(a).is_ok()
                                && client.stream.write_all(b).is_ok();
                        }
                    }
                    Frame::Data(bytes) => {
                        let _ = master_file.write_all(&bytes);
                    }
                    Frame::Resize(rows, cols) => {
                        let size = libc::winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: `size` is a valid winsize that outlives the call.
                        let _ = unsafe { set_window_size(master.as_raw_fd(), &size) };
                    }
                }
            }
            if alive {
                keep.push(client);
            }
        }
        clients = keep;
    }
}

/// The console socket of the VPS whose directory is `vps_dir`.
pub fn socket_path(vps_dir: &Path) -> PathBuf {
    vps_dir.join("console.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_completion() {
        let mut bytes = frame(FRAME_ATTACH, &[1]);
        bytes.extend(frame(FRAME_DATA, b"ls\n"));
        bytes.extend(resize_frame(50, 120));
        let tail = frame(FRAME_DATA, b"partial");
        bytes.extend(&tail[..4]);
        let frames = decode_frames(&mut bytes);
        assert_eq!(
            frames,
            vec![
                Frame::Attach(true),
                Frame::Data(b"ls\n".to_vec()),
                Frame::Resize(50, 120)
            ]
        );
        assert_eq!(bytes, tail[..4].to_vec());
        bytes.extend(&tail[4..]);
        assert_eq!(
            decode_frames(&mut bytes),
            vec![Frame::Data(b"partial".to_vec())]
        );
        assert!(bytes.is_empty());
    }
}
