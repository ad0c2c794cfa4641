//! OS templates: read-only root filesystems under `state_dir/templates/<name>/rootfs` that VPSes
//! use as their overlayfs lower layer.
//!
//! `busybox` is built from the host's static busybox (the `busybox-static` package), for tests
//! and demos; `debian-12` is a minimal Debian bookworm (sysvinit as init) built with debootstrap
//! from the host's configured Debian mirror.
//!
//! Template files are owned by host root on disk; each VPS sees them owned by its own root
//! through an idmapped mount (see `runtime::idmap`), so one copy serves every VPS.
//!
//! Next to each rootfs the builder writes `template.conf` ([`metadata`]): the signal that
//! halts the template's init cleanly (busybox: SIGUSR2; debian-12: SIGPWR, with an inittab
//! that shuts down on it).

pub mod metadata;

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use self::metadata::{HaltSignal, MetadataError, TemplateMetadata};
use crate::fsutil::FromIo;

/// Name of the busybox template.
pub const BUSYBOX: &str = "busybox";
/// Where `busybox-static` installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";
/// Name of the Debian 12 (bookworm) template.
pub const DEBIAN_12: &str = "debian-12";
/// Mirror used for `debian-12` when the host's apt sources name none.
pub const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Packages added to debootstrap's minbase: an init that runs without systemd's cgroup
/// needs, and the tools a VPS owner expects.
const DEBIAN_PACKAGES: &str = "sysvinit-core,ifupdown,iproute2,iputils-ping,procps,less,nano";

const INITTAB: &str = "\
# Paddock busybox template. A VPS has no ttys, so no getty is respawned;
# init's own stdout/stderr is the VPS console log.
::sysinit:/etc/init.d/rcS
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/echo \"paddock: shutting down\"
::shutdown:/bin/sync
::restart:/sbin/init
";

const RC_S: &str = "\
#!/bin/sh
# Paddock busybox template: early boot.
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
ip link set lo up 2>/dev/null || ifconfig lo up
echo \"paddock: $(hostname) booted\"
";

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

const GROUP: &str = "\
root:x:0:
daemon:x:1:
tty:x:5:
nogroup:x:65534:
";

const OS_RELEASE: &str = "\
NAME=\"Paddock busybox\"
ID=paddock-busybox
PRETTY_NAME=\"Paddock busybox\"
";

/// Errors building or listing templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The host has no busybox binary.
    #[error("{path} not found: install it with `apt-get install busybox-static`")]
    BusyboxMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The host's busybox is dynamically linked, so it cannot run inside a bare rootfs.
    #[error(
        "{path} is not statically linked: install the static build with \
         `apt-get install busybox-static`"
    )]
    BusyboxNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// No template of that name can be built on this node.
    #[error("unknown template {name:?}: this node can build {BUSYBOX:?} and {DEBIAN_12:?}")]
    Unknown {
        /// The requested name.
        name: String,
    },
    /// debootstrap is not installed.
    #[error("debootstrap not found: install it with `apt-get install debootstrap`")]
    DebootstrapMissing,
    /// debootstrap failed.
    #[error("debootstrap {suite} into {path} failed ({status}): {stderr}")]
    Debootstrap {
        /// The Debian suite.
        suite: &'static str,
        /// The target rootfs.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of its output.
        stderr: String,
    },
    /// `busybox --list` failed.
    #[error("list applets of {path}: {detail}")]
    Applets {
        /// The binary.
        path: PathBuf,
        /// Exit status and stderr.
        detail: String,
    },
    /// Writing the template's metadata failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
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
}

impl FromIo for TemplateError {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// `state_dir/templates/<name>`: the template's `rootfs` and its metadata file.
pub fn template_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("templates").join(name)
}

/// `state_dir/templates/<name>/rootfs`.
pub fn rootfs_path(state_dir: &Path, name: &str) -> PathBuf {
    template_dir(state_dir, name).join("rootfs")
}

/// Builds the template `name` ([`BUSYBOX`] or [`DEBIAN_12`]) unless it exists (or always with
/// `force`); returns its rootfs path.
pub fn build(state_dir: &Path, name: &str, force: bool) -> Result<PathBuf, TemplateError> {
    let rootfs = match name {
        BUSYBOX => build_busybox_from(state_dir, Path::new(HOST_BUSYBOX), force),
        DEBIAN_12 => build_debian_12(state_dir, force),
        _ => Err(TemplateError::Unknown {
            name: name.to_string(),
        }),
    }?;
    if !metadata::metadata_path(&template_dir(state_dir, name)).exists() {
        tracing::warn!(
            template = name,
            "template predates template metadata: its VPSes get a guessed halt signal; \
             rebuild it with --force (while no VPS using it runs) for clean stops"
        );
    }
    Ok(rootfs)
}

/// A one-line human description of template `name`, for template listings.
pub fn describe(name: &str) -> String {
    match name {
        BUSYBOX => {
            "Paddock busybox: static busybox userland with busybox init (tests, demos)".into()
        }
        DEBIAN_12 => "Debian 12 (bookworm), minimal, sysvinit".into(),
        _ => format!("{name} (custom template)"),
    }
}

/// Builds the busybox template from the host's `/bin/busybox` if it does not exist yet, and
/// returns its rootfs path. A no-op when the template is already there.
pub fn build_busybox(state_dir: &Path) -> Result<PathBuf, TemplateError> {
    build_busybox_from(state_dir, Path::new(HOST_BUSYBOX), false)
}

/// Builds the busybox template from the static busybox at `busybox`; with `force`, replaces an
/// existing one (do not force while VPSes using it are running: overlayfs does not support
/// changing a lower layer under a mounted overlay).
///
/// The tree is built in a temporary directory and renamed into place, so a crash never leaves a
/// half-built template under the real name.
pub fn build_busybox_from(
    state_dir: &Path,
    busybox: &Path,
    force: bool,
) -> Result<PathBuf, TemplateError> {
    let rootfs = rootfs_path(state_dir, BUSYBOX);
    if rootfs.is_dir() && !force {
        return Ok(rootfs);
    }
    check_static_busybox(busybox)?;
    let metadata = TemplateMetadata {
        halt_signal: HaltSignal::BUSYBOX,
    };
    install(state_dir, BUSYBOX, force, &metadata, |staging_rootfs| {
        populate_busybox(staging_rootfs, busybox)
    })
}

/// Builds `debian-12` with `debootstrap --variant=minbase bookworm` from the host's Debian
/// mirror (or [`DEFAULT_DEBIAN_MIRROR`]) unless it exists (or always with `force`).
pub fn build_debian_12(state_dir: &Path, force: bool) -> Result<PathBuf, TemplateError> {
    let rootfs = rootfs_path(state_dir, DEBIAN_12);
    if rootfs.is_dir() && !force {
        return Ok(rootfs);
    }
    let debootstrap = [
        "/usr/sbin/debootstrap",
        "/sbin/debootstrap",
        "/usr/bin/debootstrap",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.is_file())
    .ok_or(TemplateError::DebootstrapMissing)?;
    let mirror = host_debian_mirror().unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_string());
    // SIGPWR halts sysvinit through the inittab entries `debian_inittab` writes.
    let metadata = TemplateMetadata {
        halt_signal: HaltSignal::SYSVINIT,
    };
    install(state_dir, DEBIAN_12, force, &metadata, |staging_rootfs| {
        let output = Command::new(debootstrap)
            .args([
                "--variant=minbase",
                "--include",
                DEBIAN_PACKAGES,
                "bookworm",
            ])
            .arg(staging_rootfs)
            .arg(&mirror)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .map_err(TemplateError::io_err("run debootstrap for", staging_rootfs))?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout);
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(TemplateError::Debootstrap {
                suite: "bookworm",
                path: staging_rootfs.to_path_buf(),
                status: output.status.to_string(),
                stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        let inittab = staging_rootfs.join("etc/inittab");
        let content =
            fs::read_to_string(&inittab).map_err(TemplateError::io_err("read", &inittab))?;
        fs::write(&inittab, debian_inittab(&content))
            .map_err(TemplateError::io_err("write", &inittab))?;
        let hostname = staging_rootfs.join("etc/hostname");
        fs::write(&hostname, "localhost\n").map_err(TemplateError::io_err("write", &hostname))?;
        Ok(())
    })
}

/// The inittab actions sysvinit starts on SIGPWR (`powerokwait` only when
/// `/run/powerstatus` says the power is back).
const SYSVINIT_POWER_ACTIONS: [&str; 4] = ["powerwait", "powerfail", "powerfailnow", "powerokwait"];

/// What `debian-12` appends to its inittab: the halt on [`HaltSignal::SYSVINIT`]. Without a
/// `/run/powerstatus` file, sysvinit answers SIGPWR by running its `powerwait` and `powerfail`
/// entries (`powerfailnow` when the file says `L`), so every one of them shuts down cleanly:
/// runlevel 0 stops the services, unmounts and ends with `halt`, whose reboot(2) in the VPS's
/// pid namespace ends its init.
const DEBIAN_INITTAB_HALT: &str = "\
# Paddock: the agent stops this VPS with SIGPWR (halt_signal in the template's
# template.conf), which makes init run these entries: a clean shutdown.
pf::powerwait:/sbin/shutdown -h -P now
pn::powerfailnow:/sbin/shutdown -h -P now
";

/// Debian's inittab adapted to a VPS: no gettys (a VPS has no real consoles; the console is
/// the init's output), and SIGPWR halts cleanly ([`DEBIAN_INITTAB_HALT`]) instead of running
/// the stock `/etc/init.d/powerfail`, which bookworm does not ship.
fn debian_inittab(content: &str) -> String {
    let mut out = String::with_capacity(content.len() + DEBIAN_INITTAB_HALT.len() + 1);
    for line in content.lines() {
        let entry = line.trim_start();
        let action = entry.split(':').nth(2).unwrap_or_default();
        let replaced = !entry.starts_with('#')
            && (entry.contains("getty") || SYSVINIT_POWER_ACTIONS.contains(&action));
        if replaced {
            out.push('#');
        }
        out.push_str(line);
        out.push('\n');
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(DEBIAN_INITTAB_HALT);
    out
}

/// The first `deb.debian.org`-style Debian mirror the host's apt sources name.
fn host_debian_mirror() -> Option<String> {
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .or_else(|_| fs::read_to_string("/etc/apt/sources.list"))
        .ok()?;
    sources.lines().find_map(|line| {
        let line = line.trim();
        let uri = line
            .strip_prefix("URIs:")
            .map(str::trim)
            .or_else(|| line.strip_prefix("deb ").map(str::trim))?;
        let uri = uri.split_whitespace().find(|w| w.starts_with("http"))?;
        (uri.ends_with("/debian") || uri.ends_with("/debian/")).then(|| uri.to_string())
    })
}

/// Builds a template's rootfs with `populate` in a staging directory, writes its `metadata`
/// next to it and renames both into place (replacing an existing template only with `force`),
/// so a crash never leaves a half-built template under the real name. Do not force while
/// VPSes using it are running: overlayfs does not support changing a lower layer under a
/// mounted overlay.
fn install(
    state_dir: &Path,
    name: &str,
    force: bool,
    metadata: &TemplateMetadata,
    populate: impl FnOnce(&Path) -> Result<(), TemplateError>,
) -> Result<PathBuf, TemplateError> {
    let templates = state_dir.join("templates");
    let final_dir = templates.join(name);
    let rootfs = final_dir.join("rootfs");
    fs::create_dir_all(&templates).map_err(TemplateError::io_err("create dir", &templates))?;
    let suffix = unique_suffix();
    let staging = templates.join(format!(".{name}.tmp-{suffix}"));
    let populated = populate(&staging.join("rootfs"))
        .and_then(|()| metadata::write(&staging, metadata).map_err(TemplateError::from));
    if let Err(e) = populated {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let mut old = None;
    if final_dir.exists() {
        if !force {
            // Someone else finished first.
            let _ = fs::remove_dir_all(&staging);
            return Ok(rootfs);
        }
        let old_dir = templates.join(format!(".{name}.old-{suffix}"));
        fs::rename(&final_dir, &old_dir)
            .map_err(TemplateError::io_err("move aside", &final_dir))?;
        old = Some(old_dir);
    }
    if let Err(source) = fs::rename(&staging, &final_dir) {
        let _ = fs::remove_dir_all(&staging);
        if let Some(old_dir) = &old {
            let _ = fs::rename(old_dir, &final_dir);
        }
        return Err(TemplateError::Io {
            operation: "rename into place",
            path: final_dir,
            source,
        });
    }
    if let Some(old_dir) = old {
        fs::remove_dir_all(&old_dir)
            .map_err(TemplateError::io_err("remove old template", &old_dir))?;
    }
    Ok(rootfs)
}

/// Names of the installed templates (those with a `rootfs` directory), sorted.
pub fn list(state_dir: &Path) -> Result<Vec<String>, TemplateError> {
    let templates = state_dir.join("templates");
    let entries = match fs::read_dir(&templates) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TemplateError::Io {
                operation: "read dir",
                path: templates,
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(TemplateError::io_err("read dir", &templates))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with('.') && entry.path().join("rootfs").is_dir() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

fn check_static_busybox(busybox: &Path) -> Result<(), TemplateError> {
    let bytes = match fs::read(busybox) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TemplateError::BusyboxMissing {
                path: busybox.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(TemplateError::Io {
                operation: "read",
                path: busybox.to_path_buf(),
                source,
            })
        }
    };
    if is_static_elf(&bytes) == Some(true) {
        Ok(())
    } else {
        Err(TemplateError::BusyboxNotStatic {
            path: busybox.to_path_buf(),
        })
    }
}

/// Whether `elf` is an ELF executable without a program interpreter (`PT_INTERP`), i.e. one
/// that runs without a dynamic loader. `None` if it is not a well-formed ELF file.
pub fn is_static_elf(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..4)? != b"\x7fELF" {
        return None;
    }
    let little_endian = match elf.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let read = |offset: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(offset..offset.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little_endian {
                bytes[len - 1 - i]
            } else {
                bytes[i]
            };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    let (phoff, phentsize, phnum) = match elf.get(4)? {
        1 => (read(0x1c, 4)?, read(0x2a, 2)?, read(0x2c, 2)?),
        2 => (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?),
        _ => return None,
    };
    let phoff = usize::try_from(phoff).ok()?;
    let phentsize = usize::try_from(phentsize).ok()?;
    for index in 0..usize::try_from(phnum).ok()? {
        let entry = phoff.checked_add(index.checked_mul(phentsize)?)?;
        if read(entry, 4)? == u64::from(PT_INTERP) {
            return Some(false);
        }
    }
    Some(true)
}

/// Applet install paths relative to the rootfs (`bin/sh`, `sbin/init`, ...): from
/// `busybox --list-full`, or `bin/<applet>` from `busybox --list` for builds without it.
fn applet_paths(busybox: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let run = |arg: &str| Command::new(busybox).arg(arg).env_clear().output();
    let full = run("--list-full").map_err(TemplateError::io_err("run", busybox))?;
    let (output, prefix) = if full.status.success() && !full.stdout.is_empty() {
        (full, "")
    } else {
        let short = run("--list").map_err(TemplateError::io_err("run", busybox))?;
        if !short.status.success() {
            return Err(TemplateError::Applets {
                path: busybox.to_path_buf(),
                detail: format!(
                    "{}: {}",
                    short.status,
                    String::from_utf8_lossy(&short.stderr).trim()
                ),
            });
        }
        (short, "bin/")
    };
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| PathBuf::from(format!("{prefix}{line}")))
        // Only plain relative paths: never let tool output escape the rootfs.
        .filter(|path| path.components().all(|c| matches!(c, Component::Normal(_))))
        .collect())
}

/// The symlink target for an applet at `applet` (relative to the rootfs), pointing at
/// `bin/busybox` relatively, e.g. `usr/bin/awk` → `../../bin/busybox`.
fn applet_target(applet: &Path) -> PathBuf {
    let depth = applet.components().count().saturating_sub(1);
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.join("bin").join("busybox")
}

fn populate_busybox(root: &Path, busybox: &Path) -> Result<(), TemplateError> {
    for (dir, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc/init.d", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("var/log", 0o755),
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(TemplateError::io_err("create dir", &path))?;
        fs::set_permissions(&path, Permissions::from_mode(mode))
            .map_err(TemplateError::io_err("chmod", &path))?;
    }
    let binary = root.join("bin/busybox");
    fs::copy(busybox, &binary).map_err(TemplateError::io_err("copy busybox to", &binary))?;
    fs::set_permissions(&binary, Permissions::from_mode(0o755))
        .map_err(TemplateError::io_err("chmod", &binary))?;

    let mut applets = applet_paths(busybox)?;
    applets.push(PathBuf::from("sbin/init"));
    for applet in applets {
        let link = root.join(&applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(TemplateError::io_err("create dir", parent))?;
        }
        symlink(applet_target(&applet), &link).map_err(TemplateError::io_err("symlink", &link))?;
    }

    for (file, content, mode) in [
        ("etc/inittab", INITTAB, 0o644),
        ("etc/init.d/rcS", RC_S, 0o755),
        ("etc/passwd", PASSWD, 0o644),
        ("etc/group", GROUP, 0o644),
        ("etc/hostname", "paddock\n", 0o644),
        ("etc/os-release", OS_RELEASE, 0o644),
    ] {
        let path = root.join(file);
        fs::write(&path, content).map_err(TemplateError::io_err("write", &path))?;
        fs::set_permissions(&path, Permissions::from_mode(mode))
            .map_err(TemplateError::io_err("chmod", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_targets_are_relative_to_bin_busybox() {
        assert_eq!(
            applet_target(Path::new("sbin/init")),
            Path::new("../bin/busybox")
        );
        assert_eq!(
            applet_target(Path::new("usr/bin/awk")),
            Path::new("../../bin/busybox")
        );
        assert_eq!(
            applet_target(Path::new("linuxrc")),
            Path::new("bin/busybox")
        );
    }

    /// bookworm's /etc/inittab (sysvinit-core 3.06), abridged.
    const BOOKWORM_INITTAB: &str = "\
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
l0:0:wait:/etc/init.d/rc 0
ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now
# What to do when the power fails/returns.
pf::powerwait:/etc/init.d/powerfail start
pn::powerfailnow:/etc/init.d/powerfail now
po::powerokwait:/etc/init.d/powerfail stop
1:2345:respawn:/sbin/getty --noclear 38400 tty1
#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100";

    #[test]
    fn debian_inittab_halts_on_sigpwr_and_has_no_gettys() {
        let inittab = debian_inittab(BOOKWORM_INITTAB);
        let active: Vec<&str> = inittab
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect();
        assert_eq!(
            active,
            vec![
                "id:2:initdefault:",
                "si::sysinit:/etc/init.d/rcS",
                "l0:0:wait:/etc/init.d/rc 0",
                "ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now",
                "pf::powerwait:/sbin/shutdown -h -P now",
                "pn::powerfailnow:/sbin/shutdown -h -P now",
            ],
            "{inittab}"
        );
        // The stock entries stay visible, commented out; comments are not commented twice.
        assert!(inittab.contains("\n#pf::powerwait:/etc/init.d/powerfail start\n"));
        assert!(inittab.contains("\n#1:2345:respawn:/sbin/getty"));
        assert!(inittab.contains("\n#T0:23:respawn"));
        assert!(!inittab.contains("##"));
        // Ids stay unique: sysvinit ignores a duplicated one.
        let mut ids: Vec<&str> = active.iter().filter_map(|l| l.split(':').next()).collect();
        ids.sort_unstable();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count, "{inittab}");
    }

    #[test]
    fn detects_static_and_dynamic_elf() {
        assert_eq!(is_static_elf(b"not an elf"), None);
        // A dynamically linked binary from the host: std's own test executable.
        let me = fs::read(std::env::current_exe().expect("exe")).expect("read self");
        assert_eq!(is_static_elf(&me), Some(false));
        if let Ok(busybox) = fs::read(HOST_BUSYBOX) {
            assert_eq!(is_static_elf(&busybox), Some(true));
        }
    }

    #[test]
    fn unknown_templates_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = build(dir.path(), "plan9", false).expect_err("unknown");
        assert!(err.to_string().contains("plan9"), "{err}");
        assert!(describe(BUSYBOX).contains("busybox"));
    }

    #[test]
    fn missing_busybox_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            build_busybox_from(dir.path(), &dir.path().join("nope"), false).expect_err("must fail");
        assert!(
            err.to_string().contains("apt-get install busybox-static"),
            "{err}"
        );
        assert!(list(dir.path()).expect("list").is_empty());
    }

    #[test]
    fn builds_busybox_template_once() {
        if !Path::new(HOST_BUSYBOX).exists() {
            eprintln!("skipping: {HOST_BUSYBOX} not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = build_busybox(dir.path()).expect("build");
        assert_eq!(rootfs, rootfs_path(dir.path(), BUSYBOX));
        assert_eq!(
            fs::read_link(rootfs.join("sbin/init")).expect("init link"),
            Path::new("../bin/busybox")
        );
        assert!(rootfs.join("bin/sh").symlink_metadata().is_ok());
        for dir_name in ["proc", "sys", "dev", "tmp", "run", "root", "etc"] {
            assert!(rootfs.join(dir_name).is_dir(), "{dir_name}");
        }
        let inittab = fs::read_to_string(rootfs.join("etc/inittab")).expect("inittab");
        assert!(!inittab.contains(":respawn:"), "{inittab}");
        assert!(inittab.contains("::sysinit:/etc/init.d/rcS"));
        let os_release = fs::read_to_string(rootfs.join("etc/os-release")).expect("os-release");
        assert!(os_release.contains("PRETTY_NAME=\"Paddock busybox\""));
        let template = template_dir(dir.path(), BUSYBOX);
        assert_eq!(
            metadata::read(&template).expect("metadata"),
            Some(TemplateMetadata {
                halt_signal: HaltSignal::BUSYBOX
            })
        );
        assert_eq!(list(dir.path()).expect("list"), vec![BUSYBOX.to_string()]);

        // A second build is a no-op: the marker survives.
        fs::write(rootfs.join("marker"), "x").expect("marker");
        build_busybox(dir.path()).expect("rebuild");
        assert!(rootfs.join("marker").exists());
        // A forced build replaces it.
        build_busybox_from(dir.path(), Path::new(HOST_BUSYBOX), true).expect("force");
        assert!(!rootfs.join("marker").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("templates"))
            .expect("read")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(BUSYBOX)]);
    }
}
