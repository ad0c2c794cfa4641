//! Issue 6, end to end: every `paddock` command driven through the real
//! binary against a real controller and agent, with real effects checked on
//! the host (cgroups, processes) and inside the VPS; golden tables and the
//! JSON contract; exec and console through pipes and a pseudo-terminal.
//!
//! Set `PADDOCK_UPDATE_GOLDEN=1` to rewrite the files under `tests/golden/`.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_tests::{binary, require_root, Cluster};
use serde_json::Value;

fn as_tenant<'a>(tenant: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", tenant][..], args].concat()
}

fn as_admin<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "admin", "admin"][..], args].concat()
}

/// `paddock` with the cluster's private config, for callers that need their own stdio.
fn paddock(cluster: &Cluster, args: &[&str]) -> Command {
    let mut command = Command::new(binary("paddock"));
    command
        .args(args)
        .env("PADDOCK_CONFIG", cli_config(cluster))
        .env_remove("PADDOCK_CONTROLLER")
        .env_remove("PADDOCK_TOKEN");
    command
}

fn cli_config(cluster: &Cluster) -> PathBuf {
    cluster.dir.path().join("cli.toml")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed command: exit code 1 and exactly one line on stderr, which is returned.
fn one_line_failure(output: &Output, what: &str) -> String {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{what}: {output:?}");
    assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{what}: {stderr}");
    assert!(output.stdout.is_empty(), "{what}: {}", text(&output.stdout));
    stderr
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// Compares `actual` with `tests/golden/<name>` (or rewrites it under `PADDOCK_UPDATE_GOLDEN=1`).
fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var("PADDOCK_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(
        actual,
        expected,
        "output differs from {} (PADDOCK_UPDATE_GOLDEN=1 rewrites it)\n--- actual ---\n{actual}",
        path.display()
    );
}

/// A table split into cells (columns are separated by two or more spaces),
/// with the cells of the `masked` columns replaced by `<COLUMN>`, one row per
/// line joined by " | ". Also checks every cell starts under its header.
fn masked_table(table: &str, masked: &[&str]) -> String {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let columns = column_starts(header);
    let names: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns.len(), names.len(), "header: {header}");
    let mut out = vec![names.join(" | ")];
    for line in lines {
        let cells = column_starts(line);
        assert_eq!(cells, columns, "cells start under their headers:\n{table}");
        let row: Vec<String> = line
            .split("  ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .zip(&names)
            .map(|(cell, name)| {
                if masked.contains(name) {
                    format!("<{name}>")
                } else {
                    cell.to_owned()
                }
            })
            .collect();
        out.push(row.join(" | "));
    }
    out.join("\n") + "\n"
}

/// Byte offsets where a cell starts: after the line start or after two or more spaces.
fn column_starts(line: &str) -> Vec<usize> {
    let bytes = line.as_bytes();
    (0..bytes.len())
        .filter(|&i| {
            bytes[i] != b' ' && (i == 0 || (i >= 2 && bytes[i - 1] == b' ' && bytes[i - 2] == b' '))
        })
        .collect()
}

/// A `Key:  value` view with the values of `masked` keys replaced by `<Key>`.
fn masked_fields(view: &str, masked: &[&str]) -> String {
    view.lines()
        .map(|line| match line.split_once(':') {
            Some((key, value)) if masked.contains(&key) => {
                let padding = value.len() - value.trim_start().len();
                format!("{key}:{}<{key}>", " ".repeat(padding))
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The shape of a JSON value: objects keep their keys, arrays the shape of
/// their first element, scalars become their type name.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), shape(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().take(1).map(shape).collect()),
        Value::String(_) => "string".into(),
        Value::Number(number) if number.is_f64() => "float".into(),
        Value::Number(_) => "integer".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

fn rfc3339(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|err| panic!("{text}: {err}"))
}

/// The first memory limit file found in the VPS's cgroup dirs (v1 or v2).
fn memory_limit_bytes(cluster: &Cluster, vps_id: &str) -> Option<u64> {
    cluster.vps_cgroup_dirs(vps_id).into_iter().find_map(|dir| {
        ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
            .and_then(|limit| limit.trim().parse().ok())
    })
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z')
        })
        .unwrap_or(false)
}

/// Waits a little for a process to end (its supervisor may reap it just after reporting).
fn process_ends(pid: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A child process whose stdin, stdout and stderr are the slave of a pseudo-terminal.
struct PtySession {
    child: Child,
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
}

impl PtySession {
    fn spawn(mut command: Command) -> Self {
        let size = nix::pty::Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup pty slave"));
        let child = command
            .stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave))
            .spawn()
            .expect("spawn paddock on a pty");
        // Only the child holds the slave now: its exit ends the reader with EIO.
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup pty master");
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                sink.lock()
                    .expect("output lock")
                    .extend_from_slice(&buffer[..read]);
            }
        });
        Self {
            child,
            master,
            output,
        }
    }

    fn output(&self) -> String {
        text(&self.output.lock().expect("output lock"))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to pty");
    }

    /// Waits until the terminal showed `needle`; returns everything shown so far.
    fn expect(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.output();
            if seen.contains(needle) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "terminal never showed {needle:?}; it showed:\n{seen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("paddock did not exit; terminal:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn tenant_commands_drive_a_real_vps() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant acme");
    let acme = |args: &[&'static str]| as_tenant("acme", args);

    // Catalogues: the stock plans as a golden table, templates by name.
    let plans = cluster.cli_ok(&acme(&["plans"])).expect("plans");
    assert_golden("plans.txt", &plans);
    let plans = cluster.json(&acme(&["plans"])).expect("plans json");
    assert_golden(
        "plans.shape.json",
        &(serde_json::to_string_pretty(&shape(&plans)).expect("json") + "\n"),
    );
    let templates = cluster.json(&acme(&["templates"])).expect("templates");
    assert!(
        templates
            .as_array()
            .expect("array")
            .iter()
            .any(|template| template["name"] == "busybox"),
        "{templates}"
    );

    // create waits until running and prints the VPS.
    let created = cluster
        .cli_ok(&acme(&["create", "web1", "--plan", "nano"]))
        .expect("create web1");
    assert!(
        created
            .lines()
            .any(|line| line.starts_with("State:")
                && line.split_whitespace().nth(1) == Some("running")),
        "{created}"
    );

    // The JSON contract of show and list.
    let vps = cluster.json(&acme(&["show", "web1"])).expect("show");
    assert_golden(
        "vps.shape.json",
        &(serde_json::to_string_pretty(&shape(&vps)).expect("json") + "\n"),
    );
    assert_eq!(vps["name"], "web1");
    assert_eq!(vps["tenant"], "acme");
    assert_eq!(vps["state"], "running");
    assert_eq!(vps["node"], cluster.node_name.as_str());
    assert_eq!(vps["plan"], "nano");
    assert_eq!(vps["vcpus"], 1.0);
    assert_eq!(vps["memory_bytes"], 256u64 << 20);
    assert_eq!(vps["disk_bytes"], 2u64 << 30);
    let ipv4 = vps["ipv4"].as_array().expect("ipv4 is an array");
    assert_eq!(ipv4.len(), 1, "{vps}");
    let address = ipv4[0].as_str().expect("address").to_owned();
    assert!(
        address.starts_with(&format!("{}.", cluster.subnet)),
        "{address}"
    );
    let age = chrono::Utc::now().signed_duration_since(rfc3339(&vps["created_at"]));
    assert!(
        age.num_seconds().abs() < 120,
        "created_at {}",
        vps["created_at"]
    );
    let vps_id = vps["id"].as_str().expect("id").to_owned();
    let init_pid = vps["init_pid"].as_u64().expect("init_pid");
    assert!(process_alive(init_pid));
    let list = cluster.json(&acme(&["list"])).expect("list");
    assert_eq!(
        list,
        Value::Array(vec![vps.clone()]),
        "list shows what show shows"
    );
    let yaml = cluster
        .cli_ok(&acme(&["show", "web1", "-o", "yaml"]))
        .expect("yaml");
    assert!(yaml.contains("\"name\": \"web1\""), "{yaml}");

    // Tables: golden with the per-run values masked.
    let table = cluster.cli_ok(&acme(&["list"])).expect("list table");
    assert_golden("list.txt", &masked_table(&table, &["NODE", "IPV4", "AGE"]));
    let no_headers = cluster
        .cli_ok(&acme(&["list", "--no-headers"]))
        .expect("list --no-headers");
    assert_eq!(no_headers.lines().count(), 1, "{no_headers}");
    assert!(no_headers.starts_with("web1 "), "{no_headers}");
    let show = cluster
        .cli_ok(&acme(&["show", "web1"]))
        .expect("show table");
    assert_golden(
        "show.txt",
        &masked_fields(
            &show,
            &[
                "ID", "Node", "IPv4", "Created", "Init PID", "Transfer", "Message",
            ],
        ),
    );

    // exec: stdin streamed, exit code propagated, stdout and stderr apart.
    let mut child = paddock(&cluster, &acme(&["exec", "web1", "--", "cat"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec cat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"hello\n")
        .expect("write stdin");
    let cat = child.wait_with_output().expect("exec cat output");
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(text(&cat.stdout), "hello\n");
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut child = paddock(&cluster, &acme(&["exec", "web1", "--", "md5sum"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("exec md5sum");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&big).map(|()| big));
    let md5 = child.wait_with_output().expect("md5sum output");
    let big = writer.join().expect("writer").expect("write 300 kB");
    let local = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut local| {
            local.stdin.take().expect("stdin").write_all(&big)?;
            local.wait_with_output()
        })
        .expect("local md5sum");
    assert_eq!(
        text(&md5.stdout).split_whitespace().next(),
        text(&local.stdout).split_whitespace().next(),
        "300 kB of stdin arrive intact"
    );
    let exited = cluster
        .cli(&acme(&[
            "exec",
            "web1",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]))
        .expect("exec exit 7");
    assert_eq!(exited.status.code(), Some(7), "{exited:?}");
    assert_eq!(text(&exited.stdout), "out\n");
    assert_eq!(text(&exited.stderr), "err\n");
    let env = cluster
        .cli_ok(&acme(&[
            "exec",
            "-e",
            "GREETING=hi",
            "web1",
            "--",
            "sh",
            "-c",
            "echo $GREETING",
        ]))
        .expect("exec -e");
    assert_eq!(env, "hi\n");

    // exec -t: an interactive shell through a pseudo-terminal.
    let mut shell = PtySession::spawn(paddock(
        &cluster,
        &acme(&["exec", "-t", "web1", "--", "sh"]),
    ));
    shell.send(b"hostname; tty\n");
    let seen = shell.expect("/dev/pts/", Duration::from_secs(10));
    assert!(seen.contains("web1"), "{seen}");
    shell.send(b"exit 3\n");
    let status = shell.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "the shell's exit code");

    // console: scrollback first (the boot message), then Ctrl-a q detaches with 0.
    let mut console = PtySession::spawn(paddock(&cluster, &acme(&["console", "web1"])));
    console.expect("Ctrl-a q", Duration::from_secs(10));
    console.expect("paddock: web1 booted", Duration::from_secs(10));
    console.send(b"\n");
    console.send(b"\x01q");
    let status = console.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "Ctrl-a q detaches with exit code 0");
    let still = cluster.json(&acme(&["show", "web1"])).expect("show");
    assert_eq!(
        still["init_pid"], init_pid,
        "detaching leaves the VPS running"
    );

    // resize while running: same init, new host limit, new quota use.
    assert_eq!(memory_limit_bytes(&cluster, &vps_id), Some(256 << 20));
    let resized = cluster
        .json(&acme(&["resize", "web1", "--memory", "512MiB"]))
        .expect("resize");
    assert_eq!(resized["memory_bytes"], 512u64 << 20);
    // resize waits until the node applied it: the limit is on the host when it returns.
    assert_eq!(resized["converged"], true, "{resized}");
    assert_eq!(
        memory_limit_bytes(&cluster, &vps_id),
        Some(512 << 20),
        "the host's limit when resize returned"
    );
    // A size the VPS cannot live with is refused by the controller before anything changes,
    // in one line naming the field and the bound; `0` is a usage error.
    let refused = cluster
        .cli(&acme(&["resize", "web1", "--memory", "1B"]))
        .expect("run resize");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .contains("memory_bytes: 1 B is outside the memory a VPS may have: at least 64.0 MiB"),
        "{stderr}"
    );
    let zero = cluster
        .cli(&acme(&["resize", "web1", "--memory", "0"]))
        .expect("run resize");
    assert_eq!(zero.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("must be greater than zero"),
        "{zero:?}"
    );
    // A disk too small to make: refused in one line before anything is created or charged.
    let tiny = cluster
        .cli(&acme(&[
            "create", "tiny", "--plan", "nano", "--disk", "1KiB",
        ]))
        .expect("run create");
    assert_eq!(tiny.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&tiny.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .contains("disk_bytes: 1.0 KiB is outside the disk a VPS may have: at least 256.0 MiB"),
        "{stderr}"
    );
    let listed = cluster.json(&acme(&["list"])).expect("list");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "no VPS made: {listed}"
    );
    let after = cluster.json(&acme(&["show", "web1"])).expect("show");
    assert_eq!(
        after["memory_bytes"],
        512u64 << 20,
        "the refused resizes changed nothing"
    );
    assert_eq!(after["init_pid"], init_pid, "resize keeps the same init");
    assert_eq!(after["state"], "running");
    let quota = cluster.cli_ok(&acme(&["quota"])).expect("quota");
    assert_golden("quota.txt", &quota);
    let quota = cluster.json(&acme(&["quota"])).expect("quota json");
    assert_eq!(quota["used"]["memory_bytes"], 512u64 << 20, "{quota}");
    assert_eq!(quota["used"]["max_vps"], 1, "{quota}");

    // restart waits for a new init.
    let restarted = cluster.json(&acme(&["restart", "web1"])).expect("restart");
    assert_eq!(restarted["state"], "running");
    let restarted_pid = restarted["init_pid"].as_u64().expect("init_pid");
    assert_ne!(
        restarted_pid, init_pid,
        "restart printed the new init: {restarted}"
    );
    assert!(process_ends(init_pid), "old init {init_pid} gone");

    // stop and start.
    let stopped = cluster.json(&acme(&["stop", "web1"])).expect("stop");
    assert_eq!(stopped["state"], "stopped");
    assert!(
        process_ends(restarted_pid),
        "stop ends init {restarted_pid}"
    );
    let started = cluster.json(&acme(&["start", "web1"])).expect("start");
    assert_eq!(started["state"], "running");
    let started_pid = started["init_pid"].as_u64().expect("init_pid");
    assert!(process_alive(started_pid));

    // rebuild: a fresh root filesystem, running again with a new init.
    cluster
        .cli_ok(&acme(&["exec", "web1", "--", "touch", "/root/marker"]))
        .expect("marker");
    let rebuilt = cluster
        .json(&acme(&["rebuild", "web1", "--yes"]))
        .expect("rebuild");
    assert_eq!(rebuilt["state"], "running", "rebuild waits: {rebuilt}");
    assert_ne!(rebuilt["init_pid"], started_pid, "{rebuilt}");
    let marker = cluster
        .cli(&acme(&["exec", "web1", "--", "test", "-e", "/root/marker"]))
        .expect("marker after rebuild");
    assert_eq!(
        marker.status.code(),
        Some(1),
        "the rebuild dropped the old root's files"
    );

    // usage: metering landed concurrently with these tests. When the controller
    // serves it, the summary is the tenant's, and any per-VPS row is web1's;
    // before, the CLI says in one line that the controller does not support it.
    let usage = cluster.cli(&acme(&["usage", "-o", "json"])).expect("usage");
    if usage.status.success() {
        let report: Value = serde_json::from_slice(&usage.stdout).expect("usage is JSON");
        assert_eq!(report["tenant"], "acme", "{report}");
        let per_vps = report["per_vps"].as_array().expect("per_vps array");
        assert!(per_vps.iter().all(|row| row["vps"] == "web1"), "{report}");
        cluster.cli_ok(&acme(&["usage"])).expect("usage table");
    } else {
        let stderr = one_line_failure(&usage, "usage before metering landed");
        assert!(
            stderr.contains("does not support this request yet"),
            "{stderr}"
        );
    }

    // delete on a terminal asks first; "n" keeps the VPS.
    let mut prompt = PtySession::spawn(paddock(&cluster, &acme(&["delete", "web1"])));
    prompt.expect("[y/N]", Duration::from_secs(10));
    prompt.send(b"n\n");
    let status = prompt.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "declined delete");
    let kept = cluster
        .json(&acme(&["show", "web1"]))
        .expect("show after no");
    assert_eq!(kept["state"], "running", "{kept}");

    // delete: gone from list, nothing left on the host.
    let deleted = cluster
        .cli_ok(&acme(&["delete", "web1", "--yes"]))
        .expect("delete");
    assert_eq!(deleted, "vps web1 deleted\n");
    assert_eq!(
        cluster.json(&acme(&["list"])).expect("list"),
        Value::Array(vec![])
    );
    assert!(process_ends(started_pid), "delete ends init {started_pid}");
    let leftovers = cluster.leftovers(&vps_id);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Every tenant action above is on the audit trail, in order (the declined
    // delete never reached the controller).
    let audit = cluster
        .json(&as_admin(&["audit", "--limit", "1000"]))
        .expect("audit");
    let tenant_mutations: Vec<String> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| {
            e["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("tenant:acme:"))
        })
        .map(|e| {
            format!(
                "{} {} {}",
                e["method"].as_str().unwrap_or("?"),
                e["target"].as_str().unwrap_or("?"),
                e["result"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut expected = vec!["CreateVps web1 ok"];
    expected.extend(["Exec web1 ok"; 5]);
    expected.extend([
        "Console web1 ok",
        "ResizeVps web1 ok",
        // Refused requests are audited too (the usage error never reached the controller).
        "ResizeVps web1 InvalidArgument",
        "CreateVps tiny InvalidArgument",
        "RestartVps web1 ok",
        "StopVps web1 ok",
        "StartVps web1 ok",
        "Exec web1 ok",
        "RebuildVps web1 ok",
        "Exec web1 ok",
        "DeleteVps web1 ok",
    ]);
    assert_eq!(
        tenant_mutations, expected,
        "the audit trail of acme's actions"
    );
    let missing = cluster.cli(&acme(&["show", "web1"])).expect("show deleted");
    let stderr = one_line_failure(&missing, "show of a deleted VPS");
    assert!(stderr.contains("web1"), "{stderr}");
}

#[test]
fn admin_commands_contexts_and_audit() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    let node = cluster.node_name.clone();

    // admin tenant create|list|show|set-quota.
    let tenant = cluster
        .json(&as_admin(&["tenant", "create", "globex", "--max-vps", "2"]))
        .expect("tenant create");
    assert_eq!(tenant["name"], "globex", "{tenant}");
    let tenants = cluster
        .json(&as_admin(&["tenant", "list"]))
        .expect("tenant list");
    assert!(
        tenants
            .as_array()
            .expect("array")
            .iter()
            .any(|t| t["name"] == "globex"),
        "{tenants}"
    );
    let shown = cluster
        .cli_ok(&as_admin(&["tenant", "show", "globex"]))
        .expect("tenant show");
    assert!(shown.contains("VPS:        0 of 2"), "{shown}");
    cluster
        .cli_ok(&as_admin(&[
            "tenant",
            "set-quota",
            "globex",
            "--memory",
            "512MiB",
        ]))
        .expect("set-quota");

    // admin token create|list; contexts add|use|list.
    let token = cluster
        .json(&as_admin(&[
            "token",
            "create",
            "--tenant",
            "globex",
            "--expires-in",
            "1h",
        ]))
        .expect("token create");
    let expires_in =
        rfc3339(&token["expires_at"]).signed_duration_since(rfc3339(&token["created_at"]));
    assert!((3590..=3610).contains(&expires_in.num_seconds()), "{token}");
    let token_id = token["token_id"].as_str().expect("token_id").to_owned();
    let secret = token["token"].as_str().expect("token").to_owned();
    cluster
        .cli_ok(&[
            "context",
            "add",
            "globex",
            "--controller",
            &cluster.controller_url(),
            "--ca-cert",
            &cluster.ca_cert(),
            "--token",
            &secret,
        ])
        .expect("context add");
    let mode = std::fs::metadata(cli_config(&cluster))
        .expect("config")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let tokens = cluster
        .json(&as_admin(&["token", "list", "--tenant", "globex"]))
        .expect("token list");
    assert!(
        tokens
            .as_array()
            .expect("array")
            .iter()
            .any(|t| t["token_id"] == token_id.as_str()),
        "{tokens}"
    );
    cluster
        .cli_ok(&["context", "use", "globex"])
        .expect("context use");
    let contexts = cluster.cli_ok(&["context", "list"]).expect("context list");
    assert!(
        contexts
            .lines()
            .any(|line| line.starts_with('*') && line.contains("globex")),
        "{contexts}"
    );
    // The current context is used without --context.
    let quota = cluster.json(&["quota"]).expect("quota as globex");
    assert_eq!(quota["tenant"], "globex", "{quota}");

    // Quota: one clear line saying what is exceeded.
    let refused = cluster
        .cli(&["create", "big1", "--plan", "small"])
        .expect("create over quota");
    let stderr = one_line_failure(&refused, "create over the memory quota");
    assert!(stderr.contains("quota"), "{stderr}");
    assert!(stderr.contains("memory"), "{stderr}");

    // admin plan create; a VPS on it; delete refused while in use.
    cluster
        .cli_ok(&as_admin(&[
            "plan", "create", "tiny", "--vcpus", "0.5", "--memory", "128MiB", "--disk", "1GiB",
            "--pids", "64",
        ]))
        .expect("plan create");
    let plans = cluster
        .json(&as_admin(&["plan", "list"]))
        .expect("plan list");
    let tiny = plans
        .as_array()
        .expect("array")
        .iter()
        .find(|plan| plan["name"] == "tiny")
        .unwrap_or_else(|| panic!("tiny listed: {plans}"))
        .clone();
    assert_eq!(tiny["memory_bytes"], 128u64 << 20);

    // admin node label/drain/undrain and --node-selector placement.
    let labelled = cluster
        .json(&as_admin(&[
            "node",
            "label",
            &node,
            "region=eu1",
            "disk=ssd",
        ]))
        .expect("node label");
    assert_eq!(labelled["labels"]["region"], "eu1", "{labelled}");
    let unlabelled = cluster
        .json(&as_admin(&["node", "label", &node, "disk-"]))
        .expect("node label remove");
    assert!(unlabelled["labels"].get("disk").is_none(), "{unlabelled}");
    let nowhere = cluster
        .cli(&[
            "create",
            "app1",
            "--plan",
            "tiny",
            "--node-selector",
            "region=us1",
        ])
        .expect("create on no node");
    let stderr = one_line_failure(&nowhere, "create with an unmatched selector");
    assert!(stderr.contains("region=us1"), "{stderr}");
    let drained = cluster
        .json(&as_admin(&["node", "drain", &node]))
        .expect("drain");
    assert_eq!(drained["cordoned"], true, "{drained}");
    let cordoned = cluster
        .cli(&["create", "app1", "--plan", "tiny"])
        .expect("create on a drained node");
    one_line_failure(&cordoned, "create while the only node is drained");
    cluster
        .cli_ok(&as_admin(&["node", "undrain", &node]))
        .expect("undrain");
    let app = cluster
        .json(&[
            "create",
            "app1",
            "--plan",
            "tiny",
            "--node-selector",
            "region=eu1",
        ])
        .expect("create with a matching selector");
    assert_eq!(app["node"], node.as_str());
    assert_eq!(app["state"], "running");
    let nodes = cluster
        .json(&as_admin(&["node", "list"]))
        .expect("node list");
    let listed = nodes
        .as_array()
        .expect("array")
        .iter()
        .find(|n| n["name"] == node.as_str())
        .unwrap_or_else(|| panic!("{nodes}"))
        .clone();
    assert_eq!(listed["status"], "online");
    let shown = cluster
        .json(&as_admin(&["node", "show", &node]))
        .expect("node show");
    assert_eq!(shown["vps_count"], 1, "{shown}");

    let in_use = cluster
        .cli(&as_admin(&["plan", "delete", "tiny"]))
        .expect("plan delete");
    let stderr = one_line_failure(&in_use, "deleting a plan in use");
    assert!(stderr.contains("tiny"), "{stderr}");

    // Suspension: the VPS stops being startable, the tenant's mutations are refused.
    cluster
        .cli_ok(&as_admin(&[
            "tenant", "suspend", "globex", "--reason", "unpaid",
        ]))
        .expect("suspend");
    let suspended = cluster
        .cli(&["start", "app1"])
        .expect("start while suspended");
    let stderr = one_line_failure(&suspended, "start while suspended");
    assert!(stderr.contains("suspended"), "{stderr}");
    cluster
        .cli_ok(&as_admin(&["tenant", "unsuspend", "globex"]))
        .expect("unsuspend");
    cluster
        .cli_ok(&["stop", "app1"])
        .expect("stop after unsuspend");
    cluster
        .cli_ok(&["delete", "app1", "--yes"])
        .expect("delete app1");
    let app_id = app["id"].as_str().expect("id");
    let leftovers = cluster.leftovers(app_id);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    cluster
        .cli_ok(&as_admin(&["plan", "delete", "tiny"]))
        .expect("plan delete unused");

    // admin pool create|list|show|delete.
    cluster
        .cli_ok(&as_admin(&[
            "pool",
            "create",
            "extra",
            "--node",
            &node,
            "--cidr",
            "192.168.251.0/28",
            "--gateway",
            "192.168.251.1",
        ]))
        .expect("pool create");
    let pools = cluster
        .json(&as_admin(&["pool", "list"]))
        .expect("pool list");
    assert!(
        pools
            .as_array()
            .expect("array")
            .iter()
            .any(|p| p["name"] == "extra"),
        "{pools}"
    );
    let pool = cluster
        .json(&as_admin(&["pool", "show", "extra"]))
        .expect("pool show");
    assert_eq!(pool["cidr"], "192.168.251.0/28", "{pool}");
    cluster
        .cli_ok(&as_admin(&["pool", "delete", "extra"]))
        .expect("pool delete");

    // admin token revoke: the next call with it is not authenticated.
    cluster
        .cli_ok(&as_admin(&["token", "revoke", &token_id]))
        .expect("revoke");
    let revoked = cluster.cli(&["list"]).expect("list with a revoked token");
    let stderr = one_line_failure(&revoked, "revoked token");
    assert!(stderr.contains("not authenticated"), "{stderr}");
    cluster
        .cli_ok(&["context", "use", "admin"])
        .expect("context use admin");

    // More than a default page of audit entries: `audit` still shows the newest.
    for _ in 0..100 {
        cluster
            .cli_ok(&as_admin(&["node", "undrain", &node]))
            .expect("undrain again");
    }

    // admin tenant delete.
    cluster
        .cli_ok(&as_admin(&["tenant", "delete", "globex", "--yes"]))
        .expect("tenant delete");
    let gone = cluster
        .cli(&as_admin(&["tenant", "show", "globex"]))
        .expect("show deleted tenant");
    one_line_failure(&gone, "show of a deleted tenant");

    // admin audit: every mutation above, by whom and with what result.
    let audit = cluster
        .json(&as_admin(&["audit", "--limit", "1000"]))
        .expect("audit");
    let entries = audit.as_array().expect("array");
    let methods: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["method"].as_str())
        .collect();
    for method in [
        "CreateTenant",
        "SetQuota",
        "CreateToken",
        "CreatePlan",
        "SetNodeLabels",
        "DrainNode",
        "UndrainNode",
        "CreateVps",
        "SuspendTenant",
        "UnsuspendTenant",
        "StopVps",
        "DeleteVps",
        "DeletePlan",
        "CreatePool",
        "DeletePool",
        "RevokeToken",
        "DeleteTenant",
    ] {
        assert!(
            methods.contains(&method),
            "audit lacks {method}: {methods:?}"
        );
    }
    let target = |method: &str| -> Vec<&str> {
        entries
            .iter()
            .filter(|e| e["method"] == method)
            .filter_map(|e| e["target"].as_str())
            .collect()
    };
    assert!(target("CreateTenant").contains(&"globex"), "{audit}");
    assert!(target("CreateToken").contains(&"globex"), "{audit}");
    assert!(
        target("RevokeToken").contains(&token_id.as_str()),
        "{audit}"
    );
    assert!(target("CreateVps").contains(&"app1"), "{audit}");
    assert!(target("SetNodeLabels").contains(&node.as_str()), "{audit}");
    assert!(target("DrainNode").contains(&node.as_str()), "{audit}");
    assert!(target("UndrainNode").contains(&node.as_str()), "{audit}");
    assert_eq!(target("CreatePlan"), ["tiny"], "{audit}");
    assert_eq!(target("DeletePlan"), ["tiny", "tiny"], "{audit}");
    assert!(target("CreatePool").contains(&"extra"), "{audit}");
    assert_eq!(target("DeletePool"), ["extra"], "{audit}");
    assert!(
        entries
            .iter()
            .any(|e| e["method"] == "DeletePlan" && e["result"] != "ok"),
        "the refused plan delete is audited as refused: {audit}"
    );
    assert!(entries.len() > 100, "{} entries", entries.len());
    let table = cluster.cli_ok(&as_admin(&["audit"])).expect("audit table");
    assert!(table.starts_with("SEQ "), "{table}");
    assert_eq!(
        table.lines().count(),
        101,
        "header and the default 100 entries"
    );
    let newest = cluster
        .json(&as_admin(&["audit", "--limit", "2"]))
        .expect("audit --limit 2");
    assert_eq!(newest, Value::Array(entries[entries.len() - 2..].to_vec()));
    assert_eq!(newest[1]["method"], "DeleteTenant", "{newest}");

    // completion scripts.
    let bash = cluster
        .cli_ok(&["completion", "bash"])
        .expect("completion bash");
    assert!(bash.contains("paddock"), "{bash}");
}
