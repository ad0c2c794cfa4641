//! Child processes with a deadline. Every tool and helper the agent runs on a VPS's start
//! path (the start and disk-growth helpers, mkfs, nft, tc) goes through [`run`], so a step
//! that never returns fails with an error instead of holding the VPS's lock forever.
//!
//! The child leads a process group of its own; on the deadline the whole group gets
//! SIGKILL (a helper's forked workers with it) and the child is reaped.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

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
pub fn run(command: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> io::Result<Outcome> {
    let started = Instant::now();
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
    // Readers on threads of their own: a child that fills a pipe must not block the deadline,
    // and a grandchild that keeps a pipe open must not block the caller after a kill.
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|pipe| drain(pipe, stdout.clone())),
        child.stderr.take().map(|pipe| drain(pipe, stderr.clone())),
    ];
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let bytes = bytes.to_vec();
        // A child that exits without reading its input makes this fail with EPIPE: its exit
        // status tells what happened.
        thread::spawn(move || pipe.write_all(&bytes));
    }
    let status = match wait_until(&mut child, started + limit)? {
        Some(status) => status,
        None => {
            kill_group(pid);
            // SIGKILL cannot be ignored; the child is reaped at once.
            child.wait()?;
            return Ok(Outcome::TimedOut {
                stderr: take(&stderr),
            });
        }
    };
    // The child is gone; a grandchild holding a pipe gets a short grace, then is ignored.
    let grace = Instant::now() + Duration::from_secs(1);
    for reader in readers.into_iter().flatten() {
        while !reader.is_finished() && Instant::now() < grace {
            thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(Outcome::Finished(Output {
        status,
        stdout: take(&stdout),
        stderr: take(&stderr),
    }))
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

fn drain(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&buffer[..n]),
            }
        }
    })
}

fn take(buffer: &Mutex<Vec<u8>>) -> Vec<u8> {
    std::mem::take(&mut *buffer.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Waits for the child until `deadline`; `None` if it is still running then. Polls at 1 ms
/// growing to 10 ms: helpers mostly finish within milliseconds.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
) -> io::Result<Option<ExitStatus>> {
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(interval.min(deadline - now));
        interval = (interval * 2).min(Duration::from_millis(10));
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
