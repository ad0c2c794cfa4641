//! `paddock exec` and `paddock console`: bidirectional streams between the
//! local terminal (or pipes) and a process or console inside a VPS.
//!
//! `exec` without `-t` streams stdin when it is not a terminal and then sends
//! `stdin_eof`; with a terminal on stdin it sends `stdin_eof` at once (the
//! command gets no input, like `ssh host cmd < /dev/null`). `exec -t` asks for
//! a pseudo-terminal: stdin is put in raw mode and forwarded byte by byte, and
//! window-size changes (SIGWINCH) are sent as `resize` messages. The process
//! exits with the remote command's exit code.

use std::process::ExitCode;

use paddock_proto::v1::{
    console_input, exec_input, exec_output, ConsoleAttach, ConsoleInput, ExecInput, ExecStart,
    VpsRef,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::CommandError;
use crate::args::{ConsoleArgs, ExecArgs};
use crate::client::Session;
use crate::terminal::{self, RawMode};

/// Size of the stdin chunks sent to the controller.
const CHUNK_BYTES: usize = 32 * 1024;

/// Ctrl-a, the console's escape byte (as in screen and `lxc console`).
const ESCAPE_BYTE: u8 = 0x01;

/// Finds the console's detach sequence `Ctrl-a q` in typed input, across
/// chunk boundaries. `Ctrl-a Ctrl-a` sends one literal Ctrl-a; Ctrl-a before
/// any other key passes both through.
#[derive(Debug, Default)]
pub struct DetachFilter {
    escaped: bool,
}

impl DetachFilter {
    /// The bytes to send on, or `None` when the user asked to detach.
    pub fn feed(&mut self, input: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.escaped {
                self.escaped = false;
                match byte {
                    b'q' => return None,
                    ESCAPE_BYTE => out.push(ESCAPE_BYTE),
                    other => out.extend([ESCAPE_BYTE, other]),
                }
            } else if byte == ESCAPE_BYTE {
                self.escaped = true;
            } else {
                out.push(byte);
            }
        }
        Some(out)
    }
}

/// Why a stream session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the exec stream of vps {name} ended without an exit code")]
    NoExitCode { name: String },
    #[error("the input stream closed before the session started")]
    Closed,
}

/// Maps a remote exit code onto a process exit code; out-of-range codes become 1.
pub fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

/// Copies `input` into messages made by `wrap` until EOF; then sends `eof` if given.
async fn pump<R, M>(
    mut input: R,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(Vec<u8>) -> Option<M>,
    eof: Option<M>,
) where
    R: AsyncRead + Unpin,
{
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        match input.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // `wrap` returns None to stop (the console's detach key).
                let Some(message) = wrap(buffer[..n].to_vec()) else {
                    return;
                };
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        }
    }
    if let Some(eof) = eof {
        let _ = tx.send(eof).await;
    }
}

/// Sends a `resize` message made by `wrap` on every SIGWINCH.
fn forward_resizes<M: Send + 'static>(
    tx: mpsc::Sender<M>,
    wrap: fn(paddock_proto::v1::TerminalSize) -> M,
) -> Option<JoinHandle<()>> {
    let mut signals =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()?;
    Some(tokio::spawn(async move {
        while signals.recv().await.is_some() {
            if let Some(size) = terminal::window_size() {
                if tx.send(wrap(size)).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// Writes one chunk and flushes; a closed local pipe is ignored so the
/// remote exit code still decides the outcome.
async fn write_chunk(out: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    if out.write_all(bytes).await.is_ok() {
        let _ = out.flush().await;
    }
}

/// `paddock exec`: `VpsService.Exec`.
pub async fn exec(session: &Session, args: ExecArgs) -> Result<ExitCode, CommandError> {
    let tty = args.tty && !args.no_tty;
    let stdin_tty = terminal::stdin_is_tty();
    let start = ExecStart {
        vps: Some(VpsRef {
            tenant: args.tenant.value(),
            name: args.name.clone(),
        }),
        command: args.command.clone(),
        env: args.env.clone(),
        tty,
        size: if tty { terminal::window_size() } else { None },
    };
    let message = |input| ExecInput { input: Some(input) };
    let (tx, rx) = mpsc::channel::<ExecInput>(16);
    tx.send(message(exec_input::Input::Start(start)))
        .await
        .map_err(|_| ExecError::Closed)?;

    let raw_mode = if tty && stdin_tty {
        Some(RawMode::enable()?)
    } else {
        None
    };
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if stdin_tty && !tty {
        tx.send(message(exec_input::Input::StdinEof(true)))
            .await
            .map_err(|_| ExecError::Closed)?;
    } else {
        tasks.push(tokio::spawn(pump(
            tokio::io::stdin(),
            tx.clone(),
            move |bytes| Some(message(exec_input::Input::Stdin(bytes))),
            Some(message(exec_input::Input::StdinEof(true))),
        )));
    }
    if tty && stdin_tty {
        tasks.extend(forward_resizes(tx.clone(), |size| ExecInput {
            input: Some(exec_input::Input::Resize(size)),
        }));
    }
    // `tx` stays alive until the output ends, so the request stream is never
    // half-closed early.
    let result = run_exec_stream(session, &args.name, rx).await;
    drop(tx);
    for task in tasks {
        task.abort();
    }
    drop(raw_mode);
    result
}

async fn run_exec_stream(
    session: &Session,
    name: &str,
    rx: mpsc::Receiver<ExecInput>,
) -> Result<ExitCode, CommandError> {
    let mut stream = session
        .vps()
        .exec(ReceiverStream::new(rx))
        .await
        .map_err(|status| session.status_error(&status))?
        .into_inner();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let output = stream
            .message()
            .await
            .map_err(|status| session.status_error(&status))?;
        match output.and_then(|o| o.output) {
            Some(exec_output::Output::Stdout(bytes)) => write_chunk(&mut stdout, &bytes).await,
            Some(exec_output::Output::Stderr(bytes)) => write_chunk(&mut stderr, &bytes).await,
            Some(exec_output::Output::ExitCode(code)) => return Ok(exit_code(code)),
            None => {
                return Err(ExecError::NoExitCode {
                    name: name.to_owned(),
                }
                .into())
            }
        }
    }
}

/// `paddock console`: `VpsService.Console`; `Ctrl-a q` detaches.
pub async fn console(session: &Session, args: ConsoleArgs) -> Result<ExitCode, CommandError> {
    let stdin_tty = terminal::stdin_is_tty();
    let attach = ConsoleAttach {
        vps: Some(VpsRef {
            tenant: args.vps.tenant.value(),
            name: args.vps.name.clone(),
        }),
        size: terminal::window_size(),
        scrollback: !args.no_scrollback,
    };
    let (tx, rx) = mpsc::channel::<ConsoleInput>(16);
    tx.send(ConsoleInput {
        input: Some(console_input::Input::Attach(attach)),
    })
    .await
    .map_err(|_| ExecError::Closed)?;
    if stdin_tty && terminal::stderr_is_tty() {
        eprint!(
            "Connected to the console of {}. Press Ctrl-a q to detach.\r\n",
            args.vps.name
        );
    }
    let raw_mode = if stdin_tty {
        Some(RawMode::enable()?)
    } else {
        None
    };
    // The pump ends on Ctrl-a q (or EOF); its end ends the session.
    let detach = std::sync::Mutex::new(DetachFilter::default());
    let mut input = tokio::spawn(pump(
        tokio::io::stdin(),
        tx.clone(),
        move |bytes: Vec<u8>| {
            let bytes = if stdin_tty {
                let mut filter = detach.lock().unwrap_or_else(|p| p.into_inner());
                filter.feed(&bytes)?
            } else {
                bytes
            };
            Some(ConsoleInput {
                input: Some(console_input::Input::Data(bytes)),
            })
        },
        None,
    ));
    let resizes = if stdin_tty {
        forward_resizes(tx.clone(), |size| ConsoleInput {
            input: Some(console_input::Input::Resize(size)),
        })
    } else {
        None
    };
    let result = async {
        let mut stream = session
            .vps()
            .console(ReceiverStream::new(rx))
            .await
            .map_err(|status| session.status_error(&status))?
            .into_inner();
        let mut stdout = tokio::io::stdout();
        loop {
            tokio::select! {
                message = stream.message() => {
                    match message.map_err(|status| session.status_error(&status))? {
                        Some(output) => write_chunk(&mut stdout, &output.data).await,
                        None => return Ok::<_, CommandError>(()),
                    }
                }
                _ = &mut input, if stdin_tty => return Ok(()),
            }
        }
    }
    .await;
    input.abort();
    if let Some(task) = resizes {
        task.abort();
    }
    drop(tx);
    drop(raw_mode);
    if stdin_tty && terminal::stderr_is_tty() {
        eprintln!("\r\nDetached from the console of {}.", args.vps.name);
    }
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ctrl_a_q_detaches_even_across_chunks() {
        let mut filter = super::DetachFilter::default();
        assert_eq!(filter.feed(b"ls\r"), Some(b"ls\r".to_vec()));
        assert_eq!(filter.feed(b"a\x01"), Some(b"a".to_vec()));
        assert_eq!(filter.feed(b"q"), None);
        let mut filter = super::DetachFilter::default();
        assert_eq!(filter.feed(b"\x01\x01x"), Some(b"\x01x".to_vec()));
        assert_eq!(filter.feed(b"\x01c"), Some(b"\x01c".to_vec()));
        assert_eq!(filter.feed(b"q"), Some(b"q".to_vec()));
    }

    use super::*;

    #[tokio::test]
    async fn pump_sends_chunks_then_eof() {
        let (tx, mut rx) = mpsc::channel::<ExecInput>(16);
        let input: &[u8] = b"hello world";
        pump(
            input,
            tx,
            |bytes| {
                Some(ExecInput {
                    input: Some(exec_input::Input::Stdin(bytes)),
                })
            },
            Some(ExecInput {
                input: Some(exec_input::Input::StdinEof(true)),
            }),
        )
        .await;
        let mut received = Vec::new();
        while let Some(message) = rx.recv().await {
            received.push(message.input);
        }
        assert_eq!(
            received,
            vec![
                Some(exec_input::Input::Stdin(b"hello world".to_vec())),
                Some(exec_input::Input::StdinEof(true)),
            ]
        );
    }

    #[test]
    fn exit_codes_map_to_process_codes() {
        assert_eq!(exit_code(0), ExitCode::SUCCESS);
        assert_eq!(exit_code(7), ExitCode::from(7));
        assert_eq!(exit_code(137), ExitCode::from(137));
        assert_eq!(exit_code(-1), ExitCode::FAILURE);
        assert_eq!(exit_code(300), ExitCode::FAILURE);
    }
}
