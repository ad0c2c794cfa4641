//! The local terminal: TTY detection, raw mode and window size, for `exec -t`,
//! `console`, confirmation prompts and progress lines.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsRawFd;

use nix::sys::termios::{self, SetArg, Termios};
use paddock_proto::v1::TerminalSize;

/// Why the terminal could not be prepared or read.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("putting the terminal in raw mode: {0}")]
    RawMode(nix::Error),
    #[error("reading the answer from stdin: {0}")]
    Prompt(std::io::Error),
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether stderr is a terminal (progress lines only go there then).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// Raw mode on stdin for the lifetime of the guard; the previous settings
/// are restored on drop, also on error paths.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switches stdin to raw mode (no echo, no line editing, no signals).
    pub fn enable() -> Result<Self, TerminalError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).map_err(TerminalError::RawMode)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(TerminalError::RawMode)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// The window size of the terminal on stdout (or stdin), if there is one.
pub fn window_size() -> Option<TerminalSize> {
    let stdout = std::io::stdout();
    let stdin = std::io::stdin();
    [stdout.as_raw_fd(), stdin.as_raw_fd()]
        .into_iter()
        .find_map(window_size_of)
}

fn window_size_of(fd: i32) -> Option<TerminalSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which
    // points to a live, properly aligned local; an invalid fd only yields an error.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some(TerminalSize {
        rows: u32::from(size.ws_row),
        cols: u32::from(size.ws_col),
    })
}

/// Asks a yes/no question on stderr and reads the answer from stdin; only
/// `y` or `yes` (any case) counts as yes.
pub fn confirm(question: &str) -> Result<bool, TerminalError> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question} [y/N] ");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(TerminalError::Prompt)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// A one-line status on stderr that rewrites itself, shown only on a TTY.
pub struct Progress {
    enabled: bool,
    shown: bool,
    frame: usize,
}

/// Spinner frames shown before the current phase.
const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Progress {
    /// Shows progress only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            enabled: stderr_is_tty(),
            shown: false,
            frame: 0,
        }
    }

    /// Replaces the status line: a spinner frame, then `text` (the current phase).
    pub fn update(&mut self, text: &str) {
        if self.enabled {
            let spinner = SPINNER[self.frame % SPINNER.len()];
            self.frame += 1;
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\r\x1b[2K{spinner} {text}");
            let _ = stderr.flush();
            self.shown = true;
        }
    }

    /// Erases the status line.
    pub fn clear(&mut self) {
        if self.shown {
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.shown = false;
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
