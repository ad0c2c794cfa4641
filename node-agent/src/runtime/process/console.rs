//! The VPS console: a pseudo-terminal whose slave is the init's stdin, stdout and stderr and
//! the VPS's `/dev/console`, and whose master is held by a small per-VPS supervisor process
//! (forked by the start helper, so it outlives agent restarts like the init does).
//!
//! The supervisor keeps the last [`SCROLLBACK_BYTES`] of output, appends everything to the
//! console log, and serves clients on `vps/<id>/console.sock` with a tiny framed protocol
//! ([`Frame`]): an attach (with or without scrollback), input bytes and window sizes in; raw
//! output bytes out.
//!
//! It never blocks: the pty is always drained into the log and the scrollback, each client
//! gets at most [`CLIENT_BACKLOG_BYTES`] of queued output and is disconnected when it falls
//! further behind (like a Redis or NATS slow consumer; it can attach again with the
//! scrollback), and input the VPS does not read waits in the clients' sockets.
//!
//! It keeps its own fd of the slave, so the console survives an init that closes its stdio
//! and reopens `/dev/console` (sysvinit does, for every boot message), and exits when the
//! init exits (a pidfd on the identity the start helper reports). It lives in the VPS's cgroup,
//! so stopping or deleting the VPS also ends it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::unistd::{chown, fork, ForkResult, Gid, Uid};

use super::identity::{Pidfd, ProcessIdentity};
use crate::runtime::cgroups::VpsCgroup;
use crate::runtime::isolation::idmap::IdRange;

/// Output kept for clients that attach later.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;

/// How large `console.log` grows before it is rotated to `console.log.1` (replacing the
/// previous one): a VPS writing to its console without end takes at most twice this of the
/// node's disk.
pub const CONSOLE_LOG_BYTES: u64 = 1024 * 1024;

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
    let mut consumed = 0;
    while let Some((len, frame)) = peek_frame(&buffer[consumed..]) {
        consumed += len;
        frames.extend(frame);
    }
    buffer.drain(..consumed);
    frames
}

/// The largest encoded frame.
const MAX_FRAME_BYTES: usize = 3 + u16::MAX as usize;

/// The first complete frame of `buffer`, if there is one, and its encoded length; the frame is
/// `None` for an unknown type (skipped).
fn peek_frame(buffer: &[u8]) -> Option<(usize, Option<Frame>)> {
    let header = buffer.get(..3)?;
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    let payload = buffer.get(3..3 + len)?;
    let frame = match header[0] {
        FRAME_DATA => Some(Frame::Data(payload.to_vec())),
        FRAME_RESIZE if len == 4 => Some(Frame::Resize(
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        )),
        FRAME_ATTACH => Some(Frame::Attach(payload.first().is_some_and(|b| *b != 0))),
        _ => None,
    };
    Some((3 + len, frame))
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

/// A VPS's console for a start or a live restore: its pty and the supervisor holding the
/// master end (the supervisor joins the VPS's cgroup itself, and runs in the host's mount
/// namespace, so it never pins the VPS's disk mount). Returns the supervisor's init report,
/// the slave end for the VPS's init and the slave's path.
pub(crate) fn open_for_vps(
    ids: IdRange,
    cgroup_parent: &str,
    vps_id: &str,
    paths: &SupervisorPaths,
) -> Result<(InitReport, OwnedFd, PathBuf), ConsoleError> {
    let pty = allocate(ids)?;
    let cgroup_parent = cgroup_parent.to_owned();
    let vps_id = vps_id.to_owned();
    let init_report = spawn_supervisor(&pty, paths, move || {
        VpsCgroup::open(&cgroup_parent, &vps_id)
            .add_process(std::process::id())
            .is_ok()
    })?;
    let ConsolePty {
        master,
        slave,
        slave_path,
    } = pty;
    drop(master);
    Ok((init_report, slave, slave_path))
}

/// The start helper's end of its link to the console supervisor: tells the supervisor which
/// process is the VPS's init, whose exit ends the supervisor. Dropped unsent (the start
/// failed), it ends the supervisor too.
pub(crate) struct InitReport(UnixStream);

impl InitReport {
    /// Sends the init's identity; the supervisor opens a pidfd on it.
    pub fn send(mut self, init: &ProcessIdentity) -> io::Result<()> {
        let report = serde_json::to_vec(init).map_err(io::Error::other)?;
        self.0.write_all(&report)
    }
}

/// Forks the console supervisor, which takes over the pty master and keeps its own slave fd.
/// `before_loop` runs in the child first (the start helper passes "join the VPS cgroup").
/// Call from the single-threaded start helper; the child never returns. The caller reports the
/// init through the returned [`InitReport`] once it runs.
pub(crate) fn spawn_supervisor(
    pty: &ConsolePty,
    paths: &SupervisorPaths,
    before_loop: impl FnOnce() -> bool,
) -> Result<InitReport, ConsoleError> {
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
    let log = ConsoleLog::open(paths.log.clone(), CONSOLE_LOG_BYTES).map_err(|source| {
        ConsoleError::Io {
            operation: "open console log",
            path: paths.log.clone(),
            source,
        }
    })?;
    let (report, init_link) = UnixStream::pair().map_err(|source| ConsoleError::Io {
        operation: "socketpair for",
        path: paths.socket.clone(),
        source,
    })?;
    // SAFETY: the start helper is single-threaded, so the child is a complete copy.
    match unsafe { fork() }.map_err(sys_err("fork console supervisor"))? {
        ForkResult::Parent { .. } => {
            drop(init_link);
            Ok(InitReport(report))
        }
        ForkResult::Child => {
            // Only the helper may hold the report end: its close is how a failed start shows.
            drop(report);
            // The supervisor keeps its copy of the slave open for as long as it runs (this copy
            // of the memory is never dropped; the child only _exits). With no slave fd open
            // the master reads EIO and polls POLLHUP, which is what sysvinit causes on every
            // boot by closing its stdio and reopening /dev/console per message.
            super::helper::detach_service();
            let _ = fs::write(&paths.pid_file, std::process::id().to_string());
            let master = pty.master.as_fd().try_clone_to_owned().map(File::from);
            let code = match master {
                Ok(master) if before_loop() => {
                    serve(master, listener, log, init_link);
                    0
                }
                _ => 1,
            };
            let _ = fs::remove_file(&paths.socket);
            crate::runtime::sys::exit_now(code)
        }
    }
}

/// Output queued for one client at most. A client that falls further behind (it stopped
/// reading) is disconnected; it can attach again with the scrollback.
pub const CLIENT_BACKLOG_BYTES: usize = 256 * 1024;
/// Clients served at once; further connections are closed straight away.
pub const MAX_CLIENTS: usize = 16;
/// Console input taken from clients while the VPS has not read it yet. Beyond it, a client's
/// input waits in its own socket (that client is not read), so one client typing into a VPS
/// that does not read its console holds up only itself. At least one frame.
const INPUT_BACKLOG_BYTES: usize = 64 * 1024;
/// One read from the master or a client.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Reads from the master per wakeup, so a flood of output cannot starve clients' input.
const MASTER_READS_PER_WAKEUP: usize = 8;
/// Reads from the master after the init exited, for what it printed last.
const FINAL_READS: usize = 64;
/// How long the master is left out of the poll set after it reported a hangup (no slave fd
/// open, which the supervisor's own slave fd should prevent), so a hangup is no busy loop.
const HANGUP_BACKOFF: Duration = Duration::from_millis(100);
/// The largest init report the supervisor accepts (it is a short JSON object).
const MAX_INIT_REPORT_BYTES: usize = 4096;

/// Bytes accepted for a non-blocking writer but not written yet, at most `limit`.
struct Backlog {
    bytes: VecDeque<u8>,
    limit: usize,
}

impl Backlog {
    fn new(limit: usize) -> Self {
        Self {
            bytes: VecDeque::new(),
            limit,
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Queues `bytes` if they fit under the limit; returns whether they did.
    fn push(&mut self, bytes: &[u8]) -> bool {
        let needed = self.bytes.len() + bytes.len();
        if needed > self.limit {
            return false;
        }
        if needed > self.bytes.capacity() {
            // Grow by doubling, but never past the limit.
            let target = (self.bytes.capacity() * 2).clamp(needed, self.limit);
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend(bytes);
        true
    }

    /// Writes as much as `writer` takes without blocking. An error means the writer is
    /// unusable (closed, reset); `WouldBlock` is not one.
    fn flush(&mut self, writer: &mut impl Write) -> io::Result<()> {
        loop {
            let (front, _) = self.bytes.as_slices();
            if front.is_empty() {
                return Ok(());
            }
            match writer.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.bytes.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

struct Client {
    stream: UnixStream,
    /// Frames read but not acted on yet: an incomplete one, or input waiting for room in the
    /// input backlog. The client is read only while this holds less than one frame.
    input: Vec<u8>,
    output: Backlog,
    attached: bool,
    alive: bool,
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            input: Vec::new(),
            output: Backlog::new(CLIENT_BACKLOG_BYTES),
            attached: false,
            alive: true,
        }
    }

    /// Queues console output for this client and writes what its socket takes now. A client
    /// whose backlog would overflow is disconnected.
    fn send(&mut self, bytes: &[u8]) {
        if !self.alive {
            return;
        }
        self.flush();
        if !self.output.push(bytes) {
            self.alive = false;
            return;
        }
        self.flush();
    }

    fn flush(&mut self) {
        if self.alive && self.output.flush(&mut self.stream).is_err() {
            self.alive = false;
        }
    }
}

/// What the supervisor does with the pty master: everything it reads goes to the log, the
/// scrollback and the attached clients; clients' input goes to it without ever blocking.
struct Console {
    master: File,
    log: ConsoleLog,
    scrollback: VecDeque<u8>,
    input: Backlog,
    buffer: Vec<u8>,
}

/// `console.log`, rotated to `console.log.1` once it holds `limit` bytes.
struct ConsoleLog {
    path: PathBuf,
    file: File,
    written: u64,
    limit: u64,
}

impl ConsoleLog {
    fn open(path: PathBuf, limit: u64) -> io::Result<Self> {
        let file = Self::open_file(&path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            written,
            limit,
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
    }

    /// Appends `bytes`, rotating first if they would take the log past its limit. A log
    /// that cannot be written (disk full) loses the output; the console goes on.
    fn write(&mut self, bytes: &[u8]) {
        if self.written > 0 && self.written + bytes.len() as u64 > self.limit {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let reopened =
                fs::rename(&self.path, &rotated).and_then(|()| Self::open_file(&self.path));
            if let Ok(file) = reopened {
                self.file = file;
                self.written = 0;
            }
        }
        if self.file.write_all(bytes).is_ok() {
            self.written += bytes.len() as u64;
        }
    }
}

/// What reading the master found.
#[derive(Debug, PartialEq, Eq)]
enum MasterState {
    /// Nothing more to read for now.
    Open,
    /// EIO: no process holds the slave (or it was hung up).
    Hangup,
}

nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

impl Console {
    /// Reads up to `reads` chunks of output and hands them on.
    fn pump_output(&mut self, clients: &mut [Client], reads: usize) -> MasterState {
        for _ in 0..reads {
            match self.master.read(&mut self.buffer) {
                Ok(0) => return MasterState::Hangup,
                Ok(n) => {
                    let out = &self.buffer[..n];
                    self.log.write(out);
                    self.scrollback.extend(out);
                    let excess = self.scrollback.len().saturating_sub(SCROLLBACK_BYTES);
                    self.scrollback.drain(..excess);
                    for client in clients.iter_mut().filter(|c| c.attached) {
                        client.send(out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return MasterState::Open,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return MasterState::Hangup,
            }
        }
        MasterState::Open
    }

    /// Writes pending input as far as the pty takes it.
    fn flush_input(&mut self) -> MasterState {
        match self.input.flush(&mut self.master) {
            Ok(()) => MasterState::Open,
            Err(_) => MasterState::Hangup,
        }
    }

    /// Reads what a client sent and acts on its complete frames.
    fn serve_client(&mut self, client: &mut Client) {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match client.stream.read(&mut chunk) {
            Ok(0) => client.alive = false,
            Ok(n) => {
                client.input.extend_from_slice(&chunk[..n]);
                self.take_frames(client);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => client.alive = false,
        }
    }

    /// Acts on a client's complete frames, in order, up to the first input that does not fit
    /// in the input backlog: that and what follows stay with the client (which is not read
    /// meanwhile) until the VPS reads its console.
    fn take_frames(&mut self, client: &mut Client) {
        let mut consumed = 0;
        while let Some((len, frame)) = peek_frame(&client.input[consumed..]) {
            let taken = match frame {
                Some(Frame::Data(bytes)) => self.input.push(&bytes),
                Some(Frame::Attach(with_scrollback)) => {
                    client.attached = true;
                    if with_scrollback {
                        let (front, back) = self.scrollback.as_slices();
                        client.send(front);
                        client.send(back);
                    }
                    true
                }
                Some(Frame::Resize(rows, cols)) => {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: `size` is a valid winsize that outlives the call, and the master
                    // fd is open for the whole call.
                    let _ = unsafe { set_window_size(self.master.as_raw_fd(), &size) };
                    true
                }
                None => true,
            };
            if !taken {
                break;
            }
            consumed += len;
        }
        client.input.drain(..consumed);
    }
}

/// How the supervisor knows the VPS's init: first the start helper's report, then a pidfd.
enum InitWatch {
    /// Waiting for the start helper to send the init's identity and close the link.
    Reporting { link: UnixStream, report: Vec<u8> },
    /// Readable when the init exits.
    Running(Pidfd),
}

impl InitWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            InitWatch::Reporting { link, .. } => link.as_fd(),
            InitWatch::Running(pidfd) => pidfd.as_fd(),
        }
    }

    /// Handles readiness of [`InitWatch::as_fd`]; returns whether the init is gone (exited, or
    /// the start failed before it ran).
    fn init_gone(&mut self) -> bool {
        let InitWatch::Reporting { link, report } = self else {
            return true;
        };
        let mut chunk = [0u8; 1024];
        match link.read(&mut chunk) {
            Ok(0) => {}
            Ok(n) if report.len() + n <= MAX_INIT_REPORT_BYTES => {
                report.extend_from_slice(&chunk[..n]);
                return false;
            }
            Ok(_) => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
        let Ok(identity) = serde_json::from_slice::<ProcessIdentity>(report) else {
            return true;
        };
        match Pidfd::open(&identity) {
            Ok(Some(pidfd)) => {
                *self = InitWatch::Running(pidfd);
                false
            }
            Ok(None) | Err(_) => true,
        }
    }
}

/// The supervisor's loop, until the VPS's init exits. It never blocks on a client or on the
/// pty: every fd is non-blocking and what cannot be written waits in a bounded backlog.
fn serve(master: File, listener: UnixListener, log: ConsoleLog, init_link: UnixStream) {
    let nonblocking = [
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map(drop),
        listener.set_nonblocking(true).map_err(|_| Errno::EINVAL),
        init_link.set_nonblocking(true).map_err(|_| Errno::EINVAL),
    ];
    if nonblocking.iter().any(Result::is_err) {
        return;
    }
    let mut console = Console {
        master,
        log,
        scrollback: VecDeque::with_capacity(SCROLLBACK_BYTES),
        input: Backlog::new(INPUT_BACKLOG_BYTES),
        buffer: vec![0u8; READ_CHUNK_BYTES],
    };
    let mut init = InitWatch::Reporting {
        link: init_link,
        report: Vec::new(),
    };
    let mut clients: Vec<Client> = Vec::new();
    let mut master_quiet_until: Option<Instant> = None;
    loop {
        let poll_master = master_quiet_until.is_none_or(|until| Instant::now() >= until);
        if poll_master {
            master_quiet_until = None;
        }
        let mut fds = Vec::with_capacity(3 + clients.len());
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(init.as_fd(), PollFlags::POLLIN));
        for client in &clients {
            let mut events = PollFlags::empty();
            if client.input.len() < MAX_FRAME_BYTES {
                events |= PollFlags::POLLIN;
            }
            if !client.output.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(client.stream.as_fd(), events));
        }
        let timeout = if poll_master {
            let mut events = PollFlags::POLLIN;
            if !console.input.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(console.master.as_fd(), events));
            PollTimeout::NONE
        } else {
            PollTimeout::try_from(HANGUP_BACKOFF).unwrap_or(PollTimeout::MAX)
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        let master_ready = if poll_master {
            ready[2 + clients.len()]
        } else {
            PollFlags::empty()
        };

        // The pty first: output is never left waiting for a client.
        let mut master_state = MasterState::Open;
        if master_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            master_state = console.pump_output(&mut clients, MASTER_READS_PER_WAKEUP);
        }
        if master_ready.contains(PollFlags::POLLOUT) && console.flush_input() == MasterState::Hangup
        {
            master_state = MasterState::Hangup;
        }
        if master_state == MasterState::Hangup {
            master_quiet_until = Some(Instant::now() + HANGUP_BACKOFF);
        }

        for (client, flags) in clients.iter_mut().zip(&ready[2..]) {
            if flags.contains(PollFlags::POLLOUT) {
                client.flush();
            }
            if !client.alive
                || !flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            {
                continue;
            }
            if client.input.len() < MAX_FRAME_BYTES {
                console.serve_client(client);
            } else if flags.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                // Gone, with input the VPS is not taking: polling it again would spin.
                client.alive = false;
            }
        }
        // Input the pty took made room: clients' waiting frames go next.
        for client in clients
            .iter_mut()
            .filter(|c| c.alive && !c.input.is_empty())
        {
            console.take_frames(client);
        }
        if !console.input.is_empty() && console.flush_input() == MasterState::Hangup {
            master_quiet_until = Some(Instant::now() + HANGUP_BACKOFF);
        }
        clients.retain(|client| client.alive);

        if !ready[0].is_empty() {
            while let Ok((stream, _)) = listener.accept() {
                if clients.len() < MAX_CLIENTS && stream.set_nonblocking(true).is_ok() {
                    clients.push(Client::new(stream));
                }
            }
        }

        if !ready[1].is_empty() && init.init_gone() {
            // What the VPS printed last, then whatever the clients' sockets take now.
            console.pump_output(&mut clients, FINAL_READS);
            for client in &mut clients {
                client.flush();
            }
            return;
        }
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
    fn the_console_log_rotates_at_its_limit_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        std::fs::write(&path, b"from an earlier run\n").expect("seed");
        let mut log = ConsoleLog::open(path.clone(), 64).expect("open");
        assert_eq!(log.written, 20, "an existing log counts");
        log.write(&[b'a'; 40]);
        assert_eq!(std::fs::metadata(&path).expect("log").len(), 60);
        log.write(&[b'b'; 10]);
        let old = dir.path().join("console.log.1");
        assert_eq!(std::fs::metadata(&old).expect("rotated").len(), 60);
        assert_eq!(std::fs::read(&path).expect("log"), vec![b'b'; 10]);
        for _ in 0..20 {
            log.write(&[b'c'; 30]);
        }
        assert!(std::fs::metadata(&path).expect("log").len() <= 64);
        assert!(std::fs::metadata(&old).expect("rotated").len() <= 64);
        assert!(!dir.path().join("console.log.2").exists());
    }

    /// A writer that takes `room` bytes, then reports `WouldBlock` like a full socket.
    struct Socket {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Socket {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = bytes.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&bytes[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn backlog_keeps_what_a_full_writer_refuses_up_to_its_limit() {
        let mut backlog = Backlog::new(8);
        let mut socket = Socket {
            written: Vec::new(),
            room: 3,
        };
        assert!(backlog.push(b"hello"));
        backlog.flush(&mut socket).expect("would block is no error");
        assert_eq!(socket.written, b"hel");
        assert_eq!(backlog.bytes.len(), 2);
        assert!(backlog.push(b"world!"));
        assert!(!backlog.push(b"x"), "9 bytes over a limit of 8");
        assert!(backlog.bytes.capacity() <= 8);
        socket.room = usize::MAX;
        backlog.flush(&mut socket).expect("flush");
        assert_eq!(socket.written, b"helloworld!");
        assert!(backlog.is_empty());
    }

    #[test]
    fn client_that_falls_behind_is_disconnected() {
        let (stream, mut peer) = UnixStream::pair().expect("socketpair");
        stream.set_nonblocking(true).expect("nonblocking");
        let mut client = Client::new(stream);
        client.attached = true;
        let chunk = vec![b'x'; 4096];
        let mut sent = 0usize;
        while client.alive {
            client.send(&chunk);
            sent += chunk.len();
            assert!(sent < 64 << 20, "never disconnected");
        }
        // Everything the socket took before the drop arrives, then EOF.
        drop(client);
        let mut received = Vec::new();
        peer.read_to_end(&mut received).expect("read");
        assert!(received.len() < sent);
        assert!(received.iter().all(|b| *b == b'x'));
    }

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
