//! Child processes with a deadline. Every tool and helper the agent runs on a VPS's start
//! path (the start and disk-growth helpers, mkfs, nft, tc) goes through [`run`], so a step
//! that never returns fails with an error instead of holding the VPS's lock forever.
//!
//! The child leads a process group of its own; on the deadline the whole group gets
//! SIGKILL (a helper's forked workers with it) and the child is reaped.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long nft, tc and the disk tools may take when the caller has no deadline of its own.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(60);

/// How a bounded child ended.
#[derive(Debug)]
pub enum Outcome {
    /// It exited (or was killed by someone else) before the deadline.
    Finished(Output),
    /// The deadline passed: it was killed with its process group. `stderr` holds what it had
    /// written until then.
    TimedOut { stderr: Vec<u8> },
}

/// Runs `command` with stdout and stderr captured and `stdin` (if any) written to it, for at
/// most `limit`. Errors are failures to spawn or wait; a timeout is an [`Outcome`].
///
/// The caller's thread waits in one `poll` on the child's pidfd and its two pipes, so the exit
/// is seen the moment it happens (a sleep-and-look loop added up to 10 ms to every helper
/// and tool on the start path) and no reader threads are spawned.
pub fn run(command: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> io::Result<Outcome> {
    let deadline = Instant::now() + limit;
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let bytes = bytes.to_vec();
        // A child that exits without reading its input makes this fail with EPIPE: its exit
        // status tells what happened.
        thread::spawn(move || pipe.write_all(&bytes));
    }
    let mut stdout = Pipe::new(child.stdout.take().map(OwnedFd::from))?;
    let mut stderr = Pipe::new(child.stderr.take().map(OwnedFd::from))?;
    // Without pidfds (Linux < 5.3) the exit is looked for between polls of the pipes.
    let pidfd = i32::try_from(pid)
        .ok()
        .and_then(|raw| crate::runtime::sys::pidfd_open(raw).ok());
    let mut fallback_pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(pid);
            // SIGKILL cannot be ignored; the child is reaped at once.
            child.wait()?;
            stderr.read_available();
            return Ok(Outcome::TimedOut {
                stderr: stderr.bytes,
            });
        }
        let mut until = deadline;
        if pidfd.is_none() {
            until = until.min(now + fallback_pause);
            fallback_pause = (fallback_pause * 2).min(Duration::from_millis(10));
        }
        wait_readable(&mut [&mut stdout, &mut stderr], pidfd.as_ref(), until)?;
    };
    // The child is gone; a grandchild holding a pipe gets a short grace, then is ignored.
    let grace = Instant::now() + Duration::from_secs(1);
    while (stdout.is_open() || stderr.is_open()) && Instant::now() < grace {
        wait_readable(&mut [&mut stdout, &mut stderr], None, grace)?;
    }
    Ok(Outcome::Finished(Output {
        status,
        stdout: stdout.bytes,
        stderr: stderr.bytes,
    }))
}

/// One captured output pipe of a child (non-blocking), and what was read from it.
struct Pipe {
    /// `None` once it reached EOF (or failed).
    fd: Option<OwnedFd>,
    bytes: Vec<u8>,
}

impl Pipe {
    fn new(fd: Option<OwnedFd>) -> io::Result<Self> {
        if let Some(fd) = &fd {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?;
            fcntl(
                fd.as_raw_fd(),
                FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
            )?;
        }
        Ok(Self {
            fd,
            bytes: Vec::new(),
        })
    }

    fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    /// Reads what the pipe holds now; closes it at EOF or on an error.
    fn read_available(&mut self) {
        let Some(fd) = &self.fd else {
            return;
        };
        let mut buffer = [0u8; 8192];
        loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut buffer) {
                Ok(0) => break,
                Ok(n) => self.bytes.extend_from_slice(&buffer[..n]),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => break,
            }
        }
        self.fd = None;
    }
}

/// Waits until one of `pipes` can be read (and reads it), `pidfd` says its process exited, or
/// `until` passes.
fn wait_readable(
    pipes: &mut [&mut Pipe],
    pidfd: Option<&OwnedFd>,
    until: Instant,
) -> io::Result<()> {
    let remaining = until.saturating_duration_since(Instant::now());
    // Rounded up: a wait of less than a millisecond must not become a busy loop.
    let millis = u16::try_from(remaining.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let ready = {
        let mut fds: Vec<PollFd<'_>> = pipes
            .iter()
            .filter_map(|pipe| pipe.fd.as_ref())
            .chain(pidfd)
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        fds.iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect::<Vec<bool>>()
    };
    let mut ready = ready.into_iter();
    for pipe in pipes.iter_mut().filter(|pipe| pipe.is_open()) {
        if ready.next() == Some(true) {
            pipe.read_available();
        }
    }
    Ok(())
}

/// Like [`run`], but a timeout is an `io::ErrorKind::TimedOut` error naming `program`.
pub fn output(
    program: &str,
    command: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> io::Result<Output> {
    match run(command, stdin, limit)? {
        Outcome::Finished(output) => Ok(output),
        Outcome::TimedOut { stderr } => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{program} did not finish within {limit:?} and was killed{}",
                describe_stderr(&stderr)
            ),
        )),
    }
}

fn describe_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {text})")
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // The child made its own group (`process_group(0)`), whose id is its pid; it is not
        // reaped yet, so the id cannot have been reused.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_child_reports_output() {
        let outcome = run(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            Some(b"in"),
            Duration::from_secs(20),
        )
        .expect("run sh");
        let Outcome::Finished(output) = outcome else {
            panic!("timed out")
        };
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"in");
        assert_eq!(output.stderr, b"err\n");
    }

    #[test]
    fn output_larger_than_a_pipe_is_read_while_the_child_runs() {
        // More than a pipe buffer on each stream: the child would block if they were only
        // read after it exits.
        let outcome = run(
            Command::new("sh").args([
                "-c",
                "head -c 300000 /dev/zero | tr '\\0' o; head -c 200000 /dev/zero | tr '\\0' e >&2",
            ]),
            None,
            Duration::from_secs(60),
        )
        .expect("run sh");
        let Outcome::Finished(output) = outcome else {
            panic!("timed out")
        };
        assert!(output.status.success());
        assert_eq!(output.stdout.len(), 300_000);
        assert!(output.stdout.iter().all(|b| *b == b'o'));
        assert_eq!(output.stderr.len(), 200_000);
        assert!(output.stderr.iter().all(|b| *b == b'e'));
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_hold_the_caller() {
        // The background sleep keeps stdout and stderr open after sh exits.
        let outcome = run(
            Command::new("sh").args(["-c", "sleep 5 & echo started"]),
            None,
            Duration::from_secs(60),
        )
        .expect("run sh");
        let Outcome::Finished(output) = outcome else {
            panic!("timed out")
        };
        assert!(output.status.success());
        assert_eq!(output.stdout, b"started\n");
    }

    #[test]
    fn hanging_child_is_killed_with_its_group() {
        let outcome = run(
            Command::new("sh").args(["-c", "echo step >&2; sleep 600 & wait"]),
            None,
            Duration::from_millis(300),
        )
        .expect("run sh");
        match outcome {
            Outcome::TimedOut { stderr } => assert_eq!(stderr, b"step\n"),
            Outcome::Finished(output) => panic!("finished: {output:?}"),
        }
        let error = output(
            "sleep",
            Command::new("sleep").arg("600"),
            None,
            Duration::from_millis(100),
        )
        .expect_err("timeout");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            error.to_string().contains("sleep did not finish"),
            "{error}"
        );
    }
}
