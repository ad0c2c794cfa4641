//! `make install` (scripts/install.sh) staged into a temp root with DESTDIR: the files land
//! where the systemd units expect them, with the modes the security model asks for, an
//! operator's config survives a reinstall, and `systemd-analyze verify` accepts both units as
//! installed (no unknown directive, every ExecStart binary present).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_owned()
}

fn install(destdir: &Path, prefix: &str) -> Output {
    // The real binaries, so the staged units point at what `make install` would copy.
    paddock_tests::binary("paddock-agent");
    let output = Command::new(repo().join("scripts/install.sh"))
        .env("BIN", paddock_tests::bin_dir())
        .env("DESTDIR", destdir)
        .env("PREFIX", prefix)
        .output()
        .expect("run scripts/install.sh");
    assert!(
        output.status.success(),
        "install.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("{} was not installed: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The `Key=value` lines of a unit file (comments and sections left out).
fn directives(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|line| line.contains('=') && !line.starts_with('#'))
        .collect()
}

#[test]
fn install_stages_binaries_units_and_configs_with_root_only_modes() {
    let root = tempfile::tempdir().expect("temp dir");
    install(root.path(), "/usr/local");
    let at = |path: &str| root.path().join(path.trim_start_matches('/'));

    for binary in ["paddock", "paddock-controller", "paddock-agent"] {
        assert_eq!(mode(&at(&format!("/usr/local/bin/{binary}"))), 0o755);
    }
    for unit in ["paddock-controller.service", "paddock-agent.service"] {
        assert_eq!(mode(&at(&format!("/etc/systemd/system/{unit}"))), 0o644);
    }
    // Configs name the join token and data paths: not for other local users.
    assert_eq!(mode(&at("/etc/paddock")), 0o750);
    assert_eq!(mode(&at("/etc/paddock/controller.toml")), 0o640);
    assert_eq!(mode(&at("/etc/paddock/agent.toml")), 0o640);
    assert_eq!(mode(&at("/var/lib/paddock")), 0o700);
}

#[test]
fn a_reinstall_keeps_the_operators_config() {
    let root = tempfile::tempdir().expect("temp dir");
    install(root.path(), "/usr/local");
    let agent_toml = root.path().join("etc/paddock/agent.toml");
    let mine = "# the operator's own\nbridge = \"br-customers\"\n";
    fs::write(&agent_toml, mine).expect("edit agent.toml");

    let again = install(root.path(), "/usr/local");
    assert_eq!(fs::read_to_string(&agent_toml).expect("agent.toml"), mine);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("kept /etc/paddock/agent.toml"), "{said}");
}

#[test]
fn the_units_start_the_installed_binaries_with_their_hardening() {
    let root = tempfile::tempdir().expect("temp dir");
    install(root.path(), "/opt/paddock");
    let units = root.path().join("etc/systemd/system");
    let controller =
        fs::read_to_string(units.join("paddock-controller.service")).expect("controller unit");
    let agent = fs::read_to_string(units.join("paddock-agent.service")).expect("agent unit");

    assert!(directives(&controller).contains(
        &"ExecStart=/opt/paddock/bin/paddock-controller --config /etc/paddock/controller.toml run"
    ));
    assert!(directives(&agent).contains(
        &"ExecStart=/opt/paddock/bin/paddock-agent --config /etc/paddock/agent.toml run"
    ));
    // The controller needs no capability and no write access outside its data dir.
    for line in [
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/paddock/controller",
    ] {
        assert!(
            directives(&controller).contains(&line),
            "controller: {line}"
        );
    }
    // VPSes outlive an agent restart, and nothing the agent's VPSes inherit is restricted.
    assert!(directives(&agent).contains(&"KillMode=process"));
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "SystemCallFilter",
    ] {
        assert!(
            !directives(&agent).iter().any(|line| line.starts_with(key)),
            "agent unit sets {key}, which its VPSes would inherit"
        );
    }
}

#[test]
fn systemd_accepts_both_units_as_installed() {
    let root = tempfile::tempdir().expect("temp dir");
    install(root.path(), "/usr/local");
    // systemd-analyze checks every ExecStart binary exists: point the units at the staged ones.
    let verify_dir = tempfile::tempdir().expect("temp dir");
    let staged_bin = root.path().join("usr/local/bin");
    let mut paths = Vec::new();
    for unit in ["paddock-controller.service", "paddock-agent.service"] {
        let text = fs::read_to_string(root.path().join("etc/systemd/system").join(unit))
            .expect("unit file");
        let path = verify_dir.path().join(unit);
        let rewritten = text.replace("/usr/local/bin/", &format!("{}/", staged_bin.display()));
        fs::write(&path, rewritten).expect("write unit copy");
        paths.push(path);
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze (package systemd, installed by make test) runs");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify:\n{stderr}");
    // Unknown or misspelt directives are only warnings to systemd: none allowed here.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}
