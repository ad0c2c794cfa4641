//! Running a command inside a running VPS.
//!
//! The agent spawns `paddock-agent __internal exec <json>` with piped stdio. That helper joins
//! the VPS's cgroup and namespaces (through `/proc/<init>/ns/*`, checked against the init's
//! recorded identity), forks — the child is the first process that is really inside the pid
//! namespace — and the child execs the command. The helper waits and exits with the command's
//! exit code, or 128 + signal, so the agent sees the command's status as the helper's.

use std::ffi::{CString, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{access, chdir, execve, fork, getcwd, getppid, AccessFlags, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::cgroups::VpsCgroup;
use super::helper::{self, sys_err, HelperError, EXEC};
use super::namespaces;
use super::process::{self, ProcessIdentity};
use super::INTERNAL_ARG;

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
}

/// Agent side: spawns the exec helper with piped stdio. Needs a tokio runtime context.
pub(crate) fn spawn(
    helper_binary: &Path,
    request: &ExecRequest,
) -> io::Result<tokio::process::Child> {
    let json = serde_json::to_string(request).map_err(io::Error::other)?;
    tokio::process::Command::new(helper_binary)
        .arg(INTERNAL_ARG)
        .arg(EXEC)
        .arg(json)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
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
    if !request.init.is_alive()? {
        return Err(HelperError::NotRunning(request.init.pid));
    }
    VpsCgroup::open(&request.cgroup_parent, &request.vps_id).add_process(std::process::id())?;
    namespaces::join_namespaces(&namespace_fds)?;
    drop(namespace_fds);
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

    // SAFETY: this helper is single-threaded (checked above), so the child may run arbitrary
    // code before exec.
    match unsafe { fork() }.map_err(sys_err("fork"))? {
        ForkResult::Child => {
            let errno = exec_child(&resolved, &argv, &envp);
            eprintln!("paddock exec: {program}: {errno}");
            helper::exit_child(match errno {
                HelperError::Sys {
                    source: nix::errno::Errno::ENOENT,
                    ..
                } => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            })
        }
        ForkResult::Parent { child } => wait_exit_code(child),
    }
}

/// In the forked child (now PID n of the VPS's pid namespace): dies with the helper, drops
/// every inherited fd except stdio on exec, and execs. Returns only on failure.
fn exec_child(program: &CString, argv: &[CString], envp: &[CString]) -> HelperError {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return sys_err("set parent-death signal")(e);
    }
    // The helper lives outside the VPS's pid namespace, so it shows as ppid 0; anything else
    // means it already died and we were reparented to the VPS's init.
    if getppid() != Pid::from_raw(0) {
        return HelperError::ParentGone;
    }
    if let Err(e) = process::mark_cloexec_from(3) {
        return sys_err("close_range")(e);
    }
    if let Err(e) = helper::reset_signals() {
        return e;
    }
    match execve(program, argv, envp) {
        Ok(never) => match never {},
        Err(e) => sys_err("execve")(e),
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
