//! Tenant data on the node is root-only. The threat: a local unprivileged user on the node (a
//! shell account, a compromised service) reading another customer's disk image, the VPS specs,
//! id maps, keys or logs. The cluster's directory stands for `/var/lib/paddock` after
//! `make up`: the controller's data dir and the agent's state dir side by side.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use paddock_tests::{require_root, Cluster};

/// The uid and gid of `nobody`: a local user with no rights on the node.
const NOBODY: u32 = 65534;

/// Files others may read: public certificates only.
fn may_be_public(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "crt")
}

/// Every entry an unprivileged user can reach (each ancestor searchable by others) that others
/// may read or write, except public certificates. Stops at directories others cannot enter.
fn exposed_entries(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        if mode & 0o006 != 0 && !(kind.is_file() && may_be_public(&path)) {
            found.push(format!("{:o} {}", mode, path.display()));
        }
        if kind.is_dir() && mode & 0o001 != 0 {
            exposed_entries(&path, found);
        }
    }
}

/// Runs `program` as `nobody` with no supplementary groups (std drops them when root sets a
/// uid).
fn as_nobody(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run as nobody")
}

#[test]
fn a_local_user_reads_no_tenant_data_or_node_state() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&[
            "--context",
            "acme",
            "create",
            "sec1",
            "--plan",
            "nano",
            "--wait",
        ])
        .expect("create");
    let secret = format!("PADDOCK-SECRET-{}-{}", std::process::id(), line!());
    // Split in the shell so the secret never appears whole in a command line or log.
    let half = secret.len() / 2;
    let (head, tail) = secret.split_at(half);
    cluster.sh_ok(
        "acme",
        "sec1",
        &format!("umask 077; printf '%s%s\\n' {head} {tail} > /root/secret; sync"),
    );
    let vps_id = cluster
        .json(&["--context", "acme", "show", "sec1"])
        .expect("show")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let home = cluster.dir.path();
    // /var/lib is 0755: everything below the home must protect itself.
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755)).expect("chmod home");

    // Positive control: the secret really is in the VPS's disk image, so a readable image
    // would leak it.
    let image: PathBuf = cluster
        .agent_state_dir()
        .join("vps")
        .join(&vps_id)
        .join("disk.img");
    let root_grep = Command::new("grep")
        .args(["-c", "-a", "-F", &secret])
        .arg(&image)
        .output()
        .expect("grep as root");
    assert!(
        root_grep.status.success(),
        "the secret is not in {}: the control is broken",
        image.display()
    );

    let mut exposed = Vec::new();
    exposed_entries(home, &mut exposed);
    let top_level_config = |line: &String| {
        // The harness's own config files (ports and paths, no secrets) stand for
        // config/*.toml in the source tree.
        line.ends_with("/controller.toml") || line.ends_with("/agent.toml")
    };
    exposed.retain(|line| !top_level_config(line));
    assert!(
        exposed.is_empty(),
        "readable or writable by others:\n{}",
        exposed.join("\n")
    );
    let state_mode = std::fs::metadata(cluster.agent_state_dir())
        .expect("stat state dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(state_mode, 0o700, "agent state dir mode");

    // The attack itself: nobody greps the whole home for the secret and opens the image.
    let home_arg = home.to_str().expect("utf-8 path");
    let grep = as_nobody("grep", &["-r", "-a", "-l", "-F", &secret, home_arg]);
    let hits = String::from_utf8_lossy(&grep.stdout);
    assert!(hits.trim().is_empty(), "nobody read the secret in:\n{hits}");
    let image_arg = image.to_str().expect("utf-8 path");
    let open = as_nobody("head", &["-c", "1", image_arg]);
    assert!(!open.status.success(), "nobody could open {image_arg}");

    cluster
        .cli_ok(&["--context", "acme", "delete", "sec1", "--yes"])
        .expect("delete");
}
