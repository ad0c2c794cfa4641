//! The Python billing example (`examples/billing/`) against a real controller:
//! it prints an invoice with the VPS's metered usage, prints every lifecycle
//! event once, and a second run with the saved cursor prints only new ones.
//! Installs the example's pip requirements itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use paddock_tests::{require_root, Cluster};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/billing")
}

fn run_example(cluster: &Cluster, token: &str, cursor: &Path) -> String {
    let port = cluster
        .controller_url()
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let out = Command::new("python3")
        .arg(example_dir().join("billing_client.py"))
        .args(["--controller", &format!("127.0.0.1:{port}")])
        .args(["--ca", &cluster.ca_cert()])
        .args(["--token", token])
        .args(["--tenant", "acme"])
        .arg("--cursor-file")
        .arg(cursor)
        .args(["--idle-exit", "3"])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "billing example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_billing_example_prints_invoice_and_resumes_events() {
    if !require_root() {
        return;
    }
    let pip = Command::new("python3")
        .args(["-m", "pip", "install", "-q", "-r"])
        .arg(example_dir().join("requirements.txt"))
        .output()
        .expect("pip");
    assert!(
        pip.status.success(),
        "pip install: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&[
            "--context",
            "acme",
            "create",
            "inv1",
            "--plan",
            "nano",
            "--wait",
        ])
        .expect("create");
    let token = cluster
        .cli_ok(&[
            "--context",
            "admin",
            "admin",
            "token",
            "create",
            "--role",
            "billing",
        ])
        .expect("billing token")
        .trim()
        .to_owned();
    cluster
        .wait_until("usage recorded", Duration::from_secs(30), |c| {
            let summary = c.json(&["--context", "acme", "usage"])?;
            Ok(summary["total"]["cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0)
        })
        .expect("usage");

    let cursor = tempfile::NamedTempFile::new().expect("cursor file");
    let first = run_example(&cluster, &token, cursor.path());
    eprintln!("first run:\n{first}");
    assert!(first.contains("INVOICE tenant=acme"), "{first}");
    assert!(
        first
            .lines()
            .any(|l| l.starts_with("inv1 ") && l.contains("nano")),
        "{first}"
    );
    assert!(first.lines().any(|l| l.starts_with("TOTAL")), "{first}");
    let created: Vec<&str> = first
        .lines()
        .filter(|l| l.starts_with("EVENT") && l.contains(" created ") && l.contains("vps=inv1"))
        .collect();
    assert_eq!(created.len(), 1, "{first}");

    // Resumed from the saved cursor: the old events are not repeated, a new one is seen.
    cluster
        .cli_ok(&["--context", "acme", "stop", "inv1", "--wait"])
        .expect("stop");
    let second = run_example(&cluster, &token, cursor.path());
    eprintln!("second run:\n{second}");
    assert!(!second.contains(" created "), "{second}");
    assert!(
        second
            .lines()
            .any(|l| l.starts_with("EVENT") && l.contains(" stopped ")),
        "{second}"
    );

    cluster
        .cli_ok(&["--context", "acme", "delete", "inv1", "--yes"])
        .expect("delete");
    cluster
        .wait_until("VPS deleted", Duration::from_secs(60), |c| {
            Ok(c.json(&["--context", "acme", "list"])?
                .as_array()
                .is_some_and(|l| l.is_empty()))
        })
        .expect("deleted");
}
