//! Template metadata: `state_dir/templates/<name>/template.conf`, written by the template
//! builder next to the rootfs, tells the runtime how to drive the template's init. For now that
//! is one thing: the signal that makes the init shut the VPS down cleanly (its halt signal, like
//! LXC's `lxc.signal.halt`).
//!
//! The format is lines of `key=value` (spaces around either side are trimmed); blank lines and
//! lines starting with `#` are ignored:
//!
//! ```text
//! format=1
//! halt_signal=SIGPWR
//! ```
//!
//! `format` is required and names the format version. A reader refuses a version it does not
//! know; keys it does not know are ignored, so adding a key never needs a new version (only an
//! incompatible change does).
//!
//! A template without the file (built by an agent from before metadata, or copied in by hand)
//! gets its halt signal guessed from its rootfs: see [`guess_halt_signal`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

/// The metadata file's name inside `state_dir/templates/<name>/`.
pub const METADATA_FILE: &str = "template.conf";
/// The format version this agent writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The signal that makes a template's init halt the VPS cleanly.
///
/// Written and read by name (`SIGPWR`, `SIGRTMIN+3`), never by number: numbers differ between
/// architectures and realtime signals are relative to the C library's `SIGRTMIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HaltSignal {
    /// A standard signal, e.g. `SIGPWR`.
    Standard(Signal),
    /// `SIGRTMIN+n`, resolved with the C library's `SIGRTMIN` when sent (as the guest's glibc
    /// does).
    Realtime(u8),
}

impl HaltSignal {
    /// busybox init powers off on SIGUSR2; also the fallback for templates without metadata.
    pub const BUSYBOX: Self = Self::Standard(Signal::SIGUSR2);
    /// sysvinit runs its inittab `powerwait`/`powerfail` entries on SIGPWR.
    pub const SYSVINIT: Self = Self::Standard(Signal::SIGPWR);
    /// systemd halts on SIGRTMIN+3.
    pub const SYSTEMD: Self = Self::Realtime(3);
    /// For templates that say nothing and whose init is not recognised.
    pub const DEFAULT: Self = Self::BUSYBOX;

    /// The signal number to send on this host.
    pub fn number(self) -> libc::c_int {
        match self {
            Self::Standard(signal) => signal as libc::c_int,
            Self::Realtime(offset) => libc::SIGRTMIN() + libc::c_int::from(offset),
        }
    }
}

impl fmt::Display for HaltSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standard(signal) => f.write_str(signal.as_str()),
            Self::Realtime(0) => f.write_str("SIGRTMIN"),
            Self::Realtime(offset) => write!(f, "SIGRTMIN+{offset}"),
        }
    }
}

/// Why a halt signal name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaltSignalError {
    /// Not a signal name this agent knows.
    #[error(
        "unknown signal {0:?}: use a name such as SIGPWR, SIGUSR2, SIGTERM or SIGRTMIN+3 \
         (numbers are not accepted: they differ between architectures)"
    )]
    Unknown(String),
    /// A signal no process can handle, so the init could never shut down cleanly on it.
    #[error("{0} cannot be caught, so no init can shut down cleanly on it")]
    Uncatchable(&'static str),
    /// `SIGRTMIN+n` beyond `SIGRTMAX`.
    #[error("{name} is beyond SIGRTMAX (SIGRTMIN+{max} on this host)")]
    RealtimeOutOfRange {
        /// The name given.
        name: String,
        /// The largest offset from SIGRTMIN.
        max: libc::c_int,
    },
}

impl FromStr for HaltSignal {
    type Err = HaltSignalError;

    /// Accepts `SIGPWR` or `PWR` (any case), `SIGRTMIN` and `SIGRTMIN+n`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let upper = text.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper.clone()
        } else {
            format!("SIG{upper}")
        };
        if let Some(rest) = name.strip_prefix("SIGRTMIN") {
            let offset = match rest.strip_prefix('+') {
                None if rest.is_empty() => 0,
                Some(digits)
                    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    digits.parse::<libc::c_int>().unwrap_or(libc::c_int::MAX)
                }
                _ => return Err(HaltSignalError::Unknown(text.to_string())),
            };
            let max = libc::SIGRTMAX() - libc::SIGRTMIN();
            return match u8::try_from(offset) {
                Ok(offset) if libc::c_int::from(offset) <= max => Ok(Self::Realtime(offset)),
                _ => Err(HaltSignalError::RealtimeOutOfRange { name, max }),
            };
        }
        match Signal::from_str(&name) {
            Ok(Signal::SIGKILL) => Err(HaltSignalError::Uncatchable("SIGKILL")),
            Ok(Signal::SIGSTOP) => Err(HaltSignalError::Uncatchable("SIGSTOP")),
            Ok(signal) => Ok(Self::Standard(signal)),
            Err(_) => Err(HaltSignalError::Unknown(text.to_string())),
        }
    }
}

impl TryFrom<String> for HaltSignal {
    type Error = HaltSignalError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<HaltSignal> for String {
    fn from(signal: HaltSignal) -> Self {
        signal.to_string()
    }
}

/// What a template's metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateMetadata {
    /// The signal that makes the template's init halt cleanly.
    pub halt_signal: HaltSignal,
}

/// Why a metadata file's content was refused (line numbers start at 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataSyntaxError {
    /// A line that is neither blank, a comment nor `key=value`.
    #[error("line {line}: expected key=value, a comment (#) or a blank line")]
    NotKeyValue {
        /// The line.
        line: usize,
    },
    /// A key given twice.
    #[error("line {line}: {key} is set again")]
    DuplicateKey {
        /// The second occurrence.
        line: usize,
        /// The key.
        key: String,
    },
    /// A required key is absent.
    #[error("{key} is missing")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// `format` is not a number.
    #[error("line {line}: format must be a number, not {value:?}")]
    BadFormat {
        /// The line.
        line: usize,
        /// The value.
        value: String,
    },
    /// A format version this agent does not know (written by a newer agent).
    #[error(
        "format {found} is not supported (this agent reads format {FORMAT_VERSION}); \
         was the template built by a newer agent?"
    )]
    UnsupportedFormat {
        /// The version in the file.
        found: u32,
    },
    /// `halt_signal` is not a usable signal.
    #[error("line {line}: halt_signal: {source}")]
    HaltSignal {
        /// The line.
        line: usize,
        /// Why.
        source: HaltSignalError,
    },
}

/// Errors reading or writing a template's metadata file.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// A filesystem operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// Where.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file's content is not valid metadata.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and on which line.
        source: MetadataSyntaxError,
    },
}

impl TemplateMetadata {
    /// Parses the content of a metadata file.
    pub fn parse(text: &str) -> Result<Self, MetadataSyntaxError> {
        let mut values: HashMap<&str, (usize, &str)> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .map(|(key, value)| (key.trim(), value.trim()))
                .filter(|(key, _)| !key.is_empty())
                .ok_or(MetadataSyntaxError::NotKeyValue { line })?;
            if values.insert(key, (line, value)).is_some() {
                return Err(MetadataSyntaxError::DuplicateKey {
                    line,
                    key: key.to_string(),
                });
            }
        }
        let (line, format) = values
            .get("format")
            .copied()
            .ok_or(MetadataSyntaxError::MissingKey { key: "format" })?;
        let format: u32 = format.parse().map_err(|_| MetadataSyntaxError::BadFormat {
            line,
            value: format.to_string(),
        })?;
        if format != FORMAT_VERSION {
            return Err(MetadataSyntaxError::UnsupportedFormat { found: format });
        }
        let (line, halt_signal) = values
            .get("halt_signal")
            .copied()
            .ok_or(MetadataSyntaxError::MissingKey { key: "halt_signal" })?;
        let halt_signal = halt_signal
            .parse()
            .map_err(|source| MetadataSyntaxError::HaltSignal { line, source })?;
        Ok(Self { halt_signal })
    }

    /// The file content for this metadata.
    pub fn render(&self) -> String {
        format!(
            "# Paddock template metadata (see node-agent/src/template/metadata.rs).\n\
             # halt_signal: the signal that makes this template's init shut down cleanly.\n\
             format={FORMAT_VERSION}\n\
             halt_signal={}\n",
            self.halt_signal
        )
    }
}

/// `state_dir/templates/<name>/template.conf` for the template directory `template_dir`.
pub fn metadata_path(template_dir: &Path) -> PathBuf {
    template_dir.join(METADATA_FILE)
}

/// Reads the metadata of the template in `template_dir`; `Ok(None)` if it has none.
pub fn read(template_dir: &Path) -> Result<Option<TemplateMetadata>, MetadataError> {
    let path = metadata_path(template_dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MetadataError::Io {
                operation: "read",
                path,
                source,
            })
        }
    };
    TemplateMetadata::parse(&text)
        .map(Some)
        .map_err(|source| MetadataError::Invalid { path, source })
}

/// Writes the metadata of the template in `template_dir` (atomically: temp file, fsync,
/// rename).
pub fn write(template_dir: &Path, metadata: &TemplateMetadata) -> Result<(), MetadataError> {
    let path = metadata_path(template_dir);
    crate::fsutil::write_atomic(&path, metadata.render().as_bytes()).map_err(|e| {
        MetadataError::Io {
            operation: e.operation,
            path: e.path,
            source: e.source,
        }
    })
}

/// How a template's halt signal was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltSignalSource {
    /// Its metadata file says so.
    Metadata,
    /// No metadata; guessed from its rootfs (see [`guess_halt_signal`]).
    Guessed,
}

/// The halt signal of the template in `template_dir`: from its metadata, else guessed from its
/// `rootfs`. Invalid metadata is an error, never silently replaced by a guess.
pub fn halt_signal(template_dir: &Path) -> Result<(HaltSignal, HaltSignalSource), MetadataError> {
    match read(template_dir)? {
        Some(metadata) => Ok((metadata.halt_signal, HaltSignalSource::Metadata)),
        None => Ok((
            guess_halt_signal(&template_dir.join("rootfs")),
            HaltSignalSource::Guessed,
        )),
    }
}

/// The halt signal for a template without metadata: [`HaltSignal::SYSTEMD`] when its
/// `/sbin/init` is (a link to) `systemd`, otherwise [`HaltSignal::DEFAULT`] (what busybox init
/// and every agent before template metadata used).
///
/// sysvinit is deliberately not guessed: SIGPWR only halts it when its inittab runs a shutdown
/// for `powerwait`, which only templates built with metadata are known to do.
pub fn guess_halt_signal(rootfs: &Path) -> HaltSignal {
    let init = resolve_in_root(rootfs, Path::new("sbin/init"));
    match init.as_deref().and_then(Path::file_name) {
        Some(name) if name == "systemd" => HaltSignal::SYSTEMD,
        _ => HaltSignal::DEFAULT,
    }
}

/// Most symlinks followed while resolving one path (as the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: u32 = 40;

/// Resolves `path` inside `root` as a process chrooted there would: absolute symlink targets
/// start again at `root` and `..` never leaves it. Returns the resolved path relative to
/// `root`, or `None` if it does not exist or has too many links.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    enum Step {
        Parent,
        Name(OsString),
    }
    fn push_steps(pending: &mut Vec<Step>, path: &Path) {
        for component in path.components().rev() {
            match component {
                Component::ParentDir => pending.push(Step::Parent),
                Component::Normal(name) => pending.push(Step::Name(name.to_os_string())),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    }
    let mut pending = Vec::new();
    push_steps(&mut pending, path);
    // Only real directories, never symlinks: joining it to `root` stays inside `root`.
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(step) = pending.pop() {
        let name = match step {
            Step::Parent => {
                resolved.pop();
                continue;
            }
            Step::Name(name) => name,
        };
        let candidate = resolved.join(&name);
        let on_host = root.join(&candidate);
        let metadata = fs::symlink_metadata(&on_host).ok()?;
        if metadata.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = fs::read_link(&on_host).ok()?;
            if target.is_absolute() {
                resolved = PathBuf::new();
            }
            push_steps(&mut pending, &target);
        } else {
            resolved = candidate;
        }
    }
    Some(resolved)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn parses_names_of_halt_signals() {
        for (text, expected) in [
            ("SIGPWR", HaltSignal::SYSVINIT),
            ("pwr", HaltSignal::SYSVINIT),
            (" SIGUSR2 ", HaltSignal::BUSYBOX),
            ("SIGRTMIN+3", HaltSignal::SYSTEMD),
            ("rtmin+3", HaltSignal::SYSTEMD),
            ("SIGRTMIN", HaltSignal::Realtime(0)),
            ("SIGTERM", HaltSignal::Standard(Signal::SIGTERM)),
        ] {
            assert_eq!(text.parse::<HaltSignal>(), Ok(expected), "{text}");
        }
        assert_eq!(HaltSignal::SYSVINIT.number(), libc::SIGPWR);
        assert_eq!(HaltSignal::SYSTEMD.number(), libc::SIGRTMIN() + 3);
        for signal in [
            HaltSignal::SYSVINIT,
            HaltSignal::SYSTEMD,
            HaltSignal::Realtime(0),
        ] {
            assert_eq!(signal.to_string().parse::<HaltSignal>(), Ok(signal));
        }
    }

    #[test]
    fn refuses_numbers_unknown_and_uncatchable_signals() {
        for text in ["30", "SIGFOO", "", "SIGRTMIN+", "SIGRTMIN-1", "SIGRTMIN+x"] {
            assert!(
                matches!(text.parse::<HaltSignal>(), Err(HaltSignalError::Unknown(_))),
                "{text}"
            );
        }
        assert_eq!(
            "kill".parse::<HaltSignal>(),
            Err(HaltSignalError::Uncatchable("SIGKILL"))
        );
        assert_eq!(
            "SIGSTOP".parse::<HaltSignal>(),
            Err(HaltSignalError::Uncatchable("SIGSTOP"))
        );
        let err = "SIGRTMIN+99".parse::<HaltSignal>().expect_err("too high");
        assert!(err.to_string().contains("SIGRTMAX"), "{err}");
        let err = "SIGRTMIN+99999999999"
            .parse::<HaltSignal>()
            .expect_err("huge");
        assert!(matches!(err, HaltSignalError::RealtimeOutOfRange { .. }));
    }

    #[test]
    fn halt_signals_serialize_by_name() {
        let json = serde_json::to_string(&HaltSignal::SYSTEMD).expect("encode");
        assert_eq!(json, "\"SIGRTMIN+3\"");
        let decoded: HaltSignal = serde_json::from_str("\"SIGPWR\"").expect("decode");
        assert_eq!(decoded, HaltSignal::SYSVINIT);
        assert!(serde_json::from_str::<HaltSignal>("\"SIGKILL\"").is_err());
    }

    #[test]
    fn metadata_round_trips() {
        for halt_signal in [
            HaltSignal::BUSYBOX,
            HaltSignal::SYSVINIT,
            HaltSignal::SYSTEMD,
        ] {
            let metadata = TemplateMetadata { halt_signal };
            assert_eq!(TemplateMetadata::parse(&metadata.render()), Ok(metadata));
        }
    }

    #[test]
    fn metadata_ignores_comments_blank_lines_spaces_and_unknown_keys() {
        let text = "\n# a comment\n  format = 1  \n\nhalt_signal= SIGPWR\nboot_timeout=30\n";
        assert_eq!(
            TemplateMetadata::parse(text),
            Ok(TemplateMetadata {
                halt_signal: HaltSignal::SYSVINIT
            })
        );
    }

    #[test]
    fn metadata_errors_name_the_line_and_the_rule() {
        let cases = [
            ("format=1\nhalt_signal\n", "line 2: expected key=value"),
            ("format=1\n=SIGPWR\n", "line 2: expected key=value"),
            (
                "format=1\nhalt_signal=SIGPWR\nhalt_signal=SIGUSR2\n",
                "line 3: halt_signal is set again",
            ),
            ("halt_signal=SIGPWR\n", "format is missing"),
            ("format=1\n", "halt_signal is missing"),
            (
                "format=one\nhalt_signal=SIGPWR\n",
                "line 1: format must be a number",
            ),
            (
                "format=2\nhalt_signal=SIGPWR\n",
                "format 2 is not supported",
            ),
            (
                "format=1\n\nhalt_signal=SIGBOGUS\n",
                "line 3: halt_signal: unknown signal \"SIGBOGUS\"",
            ),
            (
                "format=1\nhalt_signal=9\n",
                "line 2: halt_signal: unknown signal \"9\"",
            ),
            (
                "format=1\nhalt_signal=SIGKILL\n",
                "line 2: halt_signal: SIGKILL cannot be caught",
            ),
        ];
        for (text, expected) in cases {
            let err = TemplateMetadata::parse(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text:?}: {err}");
        }
        // A newer format is refused even when the keys we know look fine.
        assert_eq!(
            TemplateMetadata::parse("format=2\nhalt_signal=SIGPWR\n"),
            Err(MetadataSyntaxError::UnsupportedFormat { found: 2 })
        );
    }

    #[test]
    fn reads_and_writes_metadata_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("absent is fine"), None);
        let metadata = TemplateMetadata {
            halt_signal: HaltSignal::SYSVINIT,
        };
        write(dir.path(), &metadata).expect("write");
        assert_eq!(read(dir.path()).expect("read"), Some(metadata));
        assert_eq!(
            halt_signal(dir.path()).expect("halt signal"),
            (HaltSignal::SYSVINIT, HaltSignalSource::Metadata)
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            names,
            vec![OsString::from(METADATA_FILE)],
            "temp files left"
        );

        fs::write(metadata_path(dir.path()), "format=1\nhalt_signal=SIGNOPE\n").expect("write");
        let err = read(dir.path()).expect_err("invalid");
        assert!(err.to_string().contains(METADATA_FILE), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        // Invalid metadata is never replaced by a guess.
        assert!(halt_signal(dir.path()).is_err());
    }

    #[test]
    fn guesses_systemd_from_init_links_inside_the_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        // Debian-style usrmerge: sbin -> usr/sbin, init -> /lib/systemd/systemd (absolute:
        // must resolve inside the rootfs, not on the host), lib -> usr/lib.
        fs::create_dir_all(rootfs.join("usr/sbin")).expect("mkdir");
        fs::create_dir_all(rootfs.join("usr/lib/systemd")).expect("mkdir");
        symlink("usr/sbin", rootfs.join("sbin")).expect("link");
        symlink("usr/lib", rootfs.join("lib")).expect("link");
        fs::write(rootfs.join("usr/lib/systemd/systemd"), "").expect("write");
        symlink("/lib/systemd/systemd", rootfs.join("usr/sbin/init")).expect("link");
        assert_eq!(
            halt_signal(dir.path()).expect("guess"),
            (HaltSignal::SYSTEMD, HaltSignalSource::Guessed)
        );
        assert_eq!(
            resolve_in_root(&rootfs, Path::new("sbin/init")),
            Some(PathBuf::from("usr/lib/systemd/systemd"))
        );

        // busybox: init -> ../bin/busybox.
        fs::remove_file(rootfs.join("usr/sbin/init")).expect("rm");
        symlink("../bin/busybox", rootfs.join("usr/sbin/init")).expect("link");
        fs::create_dir_all(rootfs.join("usr/bin")).expect("mkdir");
        symlink("usr/bin", rootfs.join("bin")).expect("link");
        fs::write(rootfs.join("usr/bin/busybox"), "").expect("write");
        assert_eq!(guess_halt_signal(&rootfs), HaltSignal::DEFAULT);

        // `..` never leaves the rootfs; loops and dangling links give the default.
        assert_eq!(
            resolve_in_root(&rootfs, Path::new("../../../usr/bin/busybox")),
            Some(PathBuf::from("usr/bin/busybox"))
        );
        fs::remove_file(rootfs.join("usr/sbin/init")).expect("rm");
        symlink("init", rootfs.join("usr/sbin/init")).expect("loop");
        assert_eq!(resolve_in_root(&rootfs, Path::new("sbin/init")), None);
        assert_eq!(guess_halt_signal(&rootfs), HaltSignal::DEFAULT);
        assert_eq!(
            guess_halt_signal(&dir.path().join("missing")),
            HaltSignal::DEFAULT
        );
    }
}
