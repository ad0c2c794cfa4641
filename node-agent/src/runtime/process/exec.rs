//! Running a command inside a running VPS.
//!
//! The agent spawns `paddock-agent __internal exec <json>` with piped stdio. That helper joins
//! the VPS's cgroup and namespaces (through `/proc/<init>/ns/*`, checked against the init's
//! recorded identity; the user namespace first), becomes the VPS's root, forks — the child is the first process that is really inside the pid
//! namespace — and the child execs the command. The helper waits and exits with the command's
//! exit code, or 128 + signal, so the agent sees the command's status as the helper's.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{access, chdir, execve, fork, getcwd, getppid, AccessFlags, ForkResult, Pid};
use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

use super::helper::{self, sys_err, HelperError, EXEC};
use super::identity::ProcessIdentity;
use crate::runtime::cgroups::VpsCgroup;
use crate::runtime::isolation::namespaces;
use crate::runtime::isolation::seccomp;
use crate::runtime::isolation::sysinfo;
use crate::runtime::INTERNAL_ARG;

/// Exit code of the exec helper when it could not set up the command (like `docker exec`).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit code when the command exists but cannot be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Environment every exec'd command starts from; the caller's entries override these by name.
const DEFAULT_ENV: &[(&str, &str)] = &[
    ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    ("HOME", "/root"),
    ("TERM", "xterm"),
];

/// What the agent asks the exec helper to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExecRequest {
    pub vps_id: String,
    pub cgroup_parent: String,
    pub init: ProcessIdentity,
    pub command: Vec<String>,
    pub env: Vec<String>,
    /// Run the command on a new pseudo-terminal of the VPS with this initial size.
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// The VPS's sysinfo server ([`crate::runtime::isolation::sysinfo`]); `None`: sysinfo(2) shows the host's.
    #[serde(default)]
    pub sysinfo_socket: Option<PathBuf>,
}

/// A terminal window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The fd on which a TTY exec helper reads window sizes (`"<rows> <cols>\n"` lines).
const RESIZE_FD: i32 = 3;

/// Agent side of a TTY exec: sends window-size changes to the helper.
pub struct ResizeSender {
    pipe: std::fs::File,
}

impl ResizeSender {
    /// Resizes the command's terminal (SIGWINCH reaches its foreground process group).
    pub fn resize(&mut self, size: TtySize) -> io::Result<()> {
        use std::io::Write;
        self.pipe
            .write_all(format!("{} {}\n", size.rows, size.cols).as_bytes())
    }
}

/// Agent side: spawns the exec helper with piped stdio (and, for a TTY, a resize pipe as its
/// fd 3). Needs a tokio runtime context.
pub(crate) fn spawn(
    helper_binary: &Path,
    request: &ExecRequest,
) -> io::Result<(tokio::process::Child, Option<ResizeSender>)> {
    let json = serde_json::to_string(request).map_err(io::Error::other)?;
    let mut command = tokio::process::Command::new(helper_binary);
    command
        .arg(INTERNAL_ARG)
        .arg(EXEC)
        .arg(json)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if request.tty.is_none() {
        return Ok((command.spawn()?, None));
    }
    let (resize_read, resize_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let raw_read = resize_read.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe; dup2 clears close-on-exec on the new fd 3, so only it is inherited.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(raw_read, RESIZE_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(resize_read);
    Ok((
        child,
        Some(ResizeSender {
            pipe: std::fs::File::from(resize_write),
        }),
    ))
}

/// The command's environment: the defaults, overridden and extended by `extra` (`KEY=VALUE`).
pub(crate) fn build_env(extra: &[String]) -> Vec<String> {
    let mut env: Vec<(String, String)> = DEFAULT_ENV
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    for entry in extra {
        let (key, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value.to_string(),
            None => env.push((key.to_string(), value.to_string())),
        }
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Finds `program` like a shell would: as given if it contains `/`, else in `PATH`.
pub(crate) fn resolve_program(program: &str, path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file() && access(candidate, AccessFlags::X_OK).is_ok())
}

/// Helper side entry point; returns the exit code.
pub(crate) fn helper_main(args: &[OsString]) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paddock exec: {e}");
            EXIT_SETUP_FAILED
        }
    }
}

fn run(args: &[OsString]) -> Result<i32, HelperError> {
    let request: ExecRequest = helper::decode_request(args)?;
    helper::ensure_single_threaded()?;
    let Some(program) = request.command.first() else {
        return Err(HelperError::Usage("empty command".into()));
    };
    // Open the namespaces first and check the init afterwards: if the pid was reused in
    // between, the check fails; if it passes, the fds are the VPS's namespaces.
    let namespace_fds = namespaces::open_namespaces(request.init.pid)?;
    // Connected while still host root in the host's mount namespace; a VPS started before the
    // server existed has no socket and keeps the host's sysinfo.
    let sysinfo_link = request.sysinfo_socket.as_deref().and_then(sysinfo::connect);
    if !request.init.is_alive()? {
        return Err(HelperError::NotRunning(request.init.pid));
    }
    VpsCgroup::open(&request.cgroup_parent, &request.vps_id).add_process(std::process::id())?;
    namespaces::join_namespaces(&namespace_fds)?;
    drop(namespace_fds);
    helper::become_vps_root()?;
    let filter = seccomp::vps_filter()?;
    chdir("/").map_err(sys_err("chdir /"))?;
    let cwd = getcwd().map_err(sys_err("getcwd"))?;
    if cwd != Path::new("/") {
        return Err(HelperError::Usage(format!(
            "working directory {} is not the VPS root",
            cwd.display()
        )));
    }

    let env = build_env(&request.env);
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default();
    let Some(resolved) = resolve_program(program, path_var) else {
        eprintln!("paddock exec: {program}: command not found");
        return Ok(EXIT_NOT_FOUND);
    };
    let resolved = CString::new(resolved.into_os_string().into_encoded_bytes())?;
    let argv = request
        .command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| CString::new(e.as_str()))
        .collect::<Result<Vec<_>, _>>()?;

    if let Some(size) = request.tty {
        return tty::run(
            program,
            &resolved,
            &argv,
            &envp,
            &filter,
            sysinfo_link.as_ref(),
            size,
        );
    }

    // SAFETY: this helper is single-threaded (checked above), so the child may run arbitrary
    // code before exec.
    match unsafe { fork() }.map_err(sys_err("fork"))? {
        ForkResult::Child => {
            let errno = exec_child(&resolved, &argv, &envp, &filter, sysinfo_link.as_ref());
            eprintln!("paddock exec: {program}: {errno}");
            helper::exit_child(exec_failure_code(&errno))
        }
        ForkResult::Parent { child } => wait_exit_code(child),
    }
}

/// In the forked child (now PID n of the VPS's pid namespace, root of its user namespace): dies
/// with the helper, gets the VPS's capability bounding set, fd hygiene and seccomp filter, and
/// execs. Returns only on failure.
fn exec_child(
    program: &CString,
    argv: &[CString],
    envp: &[CString],
    filter: &BpfProgram,
    sysinfo_link: Option<&UnixStream>,
) -> HelperError {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return sys_err("set parent-death signal")(e);
    }
    // The helper lives outside the VPS's pid namespace, so it shows as ppid 0; anything else
    // means it already died and we were reparented to the VPS's init.
    if getppid() != Pid::from_raw(0) {
        return HelperError::ParentGone;
    }
    if let Err(e) = helper::lock_down(filter, sysinfo_link) {
        return e;
    }
    match execve(program, argv, envp) {
        Ok(never) => match never {},
        Err(e) => sys_err("execve")(e),
    }
}

/// The errno-to-exit-code convention of a failed exec in the child.
fn exec_failure_code(error: &HelperError) -> i32 {
    match error {
        HelperError::Sys {
            source: nix::errno::Errno::ENOENT,
            ..
        } => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXECUTE,
    }
}

/// Running the command on a pseudo-terminal allocated in the VPS's own devpts.
mod tty {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
    use std::os::unix::net::UnixStream;

    use nix::fcntl::{open, OFlag};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
    use nix::sys::stat::Mode;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::{dup2, fork, setsid, ForkResult, Pid};

    use super::*;

    nix::ioctl_write_ptr_bad!(set_window_size, libc::TIOCSWINSZ, libc::winsize);

    fn apply_size(master: &PtyMaster, size: TtySize) {
        let winsize = libc::winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: `winsize` is a valid struct for TIOCSWINSZ and outlives the call.
        let _ = unsafe { set_window_size(master.as_raw_fd(), &winsize) };
    }

    /// Parses `"<rows> <cols>"`.
    pub(super) fn parse_size(line: &str) -> Option<TtySize> {
        let mut parts = line.split_whitespace();
        let rows = parts.next()?.parse().ok()?;
        let cols = parts.next()?.parse().ok()?;
        Some(TtySize { rows, cols })
    }

    /// Allocates the pty, forks the command onto it and relays stdin → pty → stdout and
    /// window sizes from fd 3 until the command exits; returns its exit code.
    pub(super) fn run(
        program: &str,
        resolved: &CString,
        argv: &[CString],
        envp: &[CString],
        filter: &BpfProgram,
        sysinfo_link: Option<&UnixStream>,
        size: TtySize,
    ) -> Result<i32, HelperError> {
        // /dev/ptmx of the VPS (we are in its mount namespace): the pty belongs to its devpts.
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
            .map_err(sys_err("open /dev/ptmx"))?;
        grantpt(&master).map_err(sys_err("grantpt"))?;
        unlockpt(&master).map_err(sys_err("unlockpt"))?;
        let slave_path = ptsname_r(&master).map_err(sys_err("ptsname"))?;
        apply_size(&master, size);

        // SAFETY: this helper is single-threaded, so the child may run arbitrary code.
        match unsafe { fork() }.map_err(sys_err("fork"))? {
            ForkResult::Child => {
                drop(master);
                let error = (|| -> HelperError {
                    if let Err(e) = setsid() {
                        return sys_err("setsid")(e);
                    }
                    // Opening the slave as a session leader without a terminal makes it ours.
                    let slave = match open(slave_path.as_str(), OFlag::O_RDWR, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(e) => return sys_err("open pty slave")(e),
                    };
                    let _ = crate::runtime::sys::set_controlling_terminal(slave);
                    for target in 0..3 {
                        if let Err(e) = dup2(slave, target) {
                            return sys_err("dup2 pty")(e);
                        }
                    }
                    exec_child(resolved, argv, envp, filter, sysinfo_link)
                })();
                eprintln!("paddock exec: {program}: {error}");
                helper::exit_child(exec_failure_code(&error))
            }
            ForkResult::Parent { child } => relay(&master, child),
        }
    }

    fn relay(master: &PtyMaster, child: Pid) -> Result<i32, HelperError> {
        // SAFETY: fds 0, 1 and 3 are this helper's stdio pipes and the resize pipe, open for
        // its whole life; File takes them over (the helper exits right after the relay).
        let (mut stdin, mut stdout, mut resize) = unsafe {
            (
                File::from_raw_fd(0),
                File::from_raw_fd(1),
                File::from_raw_fd(RESIZE_FD),
            )
        };
        // SAFETY: the master fd stays open for this whole function.
        let mut master_file = unsafe { File::from_raw_fd(master.as_raw_fd()) };
        let mut stdin_open = true;
        let mut resize_open = true;
        let mut pending = String::new();
        let mut buffer = vec![0u8; 16 * 1024];
        let exit = loop {
            let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
            // SAFETY: fds 0 and 3 are open (see above).
            let stdin_fd = unsafe { BorrowedFd::borrow_raw(0) };
            // SAFETY: as above.
            let resize_fd = unsafe { BorrowedFd::borrow_raw(RESIZE_FD) };
            let stdin_pos = stdin_open.then(|| {
                fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let resize_pos = resize_open.then(|| {
                fds.push(PollFd::new(resize_fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(sys_err("poll")(e)),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            let stdin_ready = stdin_pos.is_some_and(|p| ready[p]);
            let resize_ready = resize_pos.is_some_and(|p| ready[p]);
            if ready[0] {
                match master_file.read(&mut buffer) {
                    Ok(0) | Err(_) => {
                        // EIO: every slave fd is closed; the command is exiting.
                        break wait_exit(child)?;
                    }
                    Ok(n) => {
                        if stdout.write_all(&buffer[..n]).is_err() {
                            break wait_exit(child)?;
                        }
                    }
                }
            }
            if stdin_ready {
                match stdin.read(&mut buffer) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        let _ = master_file.write_all(&buffer[..n]);
                    }
                }
            }
            if resize_ready {
                match resize.read(&mut buffer) {
                    Ok(0) | Err(_) => resize_open = false,
                    Ok(n) => {
                        pending.push_str(&String::from_utf8_lossy(&buffer[..n]));
                        while let Some((line, rest)) = pending.split_once('\n') {
                            if let Some(size) = parse_size(line) {
                                apply_size(master, size);
                            }
                            pending = rest.to_string();
                        }
                    }
                }
            }
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
                _ => {}
            }
        };
        // Whatever the command wrote last is still in the pty: drain it without blocking.
        let _ = nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        );
        while let Ok(n) = master_file.read(&mut buffer) {
            if n == 0 || stdout.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        // The PtyMaster owns the fd; do not close it twice.
        std::mem::forget(master_file);
        Ok(exit)
    }

    fn wait_exit(child: Pid) -> Result<i32, HelperError> {
        wait_exit_code(child)
    }
}

/// Waits for the command and maps its status to an exit code (128 + signal if killed).
fn wait_exit_code(child: Pid) -> Result<i32, HelperError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(sys_err("waitpid")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults_and_overrides() {
        let env = build_env(&["TERM=dumb".into(), "FOO=bar=baz".into(), "EMPTY".into()]);
        assert_eq!(
            env,
            vec![
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "TERM=dumb",
                "FOO=bar=baz",
                "EMPTY=",
            ]
        );
    }

    #[test]
    fn resolves_programs() {
        assert_eq!(resolve_program("/x/y", "/bin"), Some(PathBuf::from("/x/y")));
        let sh = resolve_program("sh", "/nonexistent:/bin:/usr/bin").expect("sh on host");
        assert!(sh.ends_with("sh"));
        assert_eq!(resolve_program("no-such-cmd-paddock", "/bin"), None);
    }
}
