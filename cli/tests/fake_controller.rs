//! The `paddock` binary against a scripted `VpsService` over real gRPC:
//! the bearer token, JSON output, waiting, exec streams and error mapping.

mod common;

use common::{paddock, run, temp_config, FakeVps, Run, GOOD_TOKEN};
use paddock_proto::v1::VpsState;
use serde_json::Value;

/// Serves a fresh fake (polled only, like an older controller) and returns it with a
/// `paddock` runner bound to it.
async fn setup() -> (FakeVps, String, tempfile::TempDir, std::path::PathBuf) {
    setup_with(FakeVps::default()).await
}

async fn setup_with(fake: FakeVps) -> (FakeVps, String, tempfile::TempDir, std::path::PathBuf) {
    let url = fake.clone().serve().await;
    let (dir, config) = temp_config();
    let out = run(
        paddock(
            &config,
            &[
                "context",
                "add",
                "demo",
                "--controller",
                &url,
                "--token",
                GOOD_TOKEN,
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    (fake, url, dir, config)
}

async fn cli(config: &std::path::Path, args: &[&str]) -> Run {
    run(paddock(config, args), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn list_json_is_an_array_with_the_contract_fields() {
    let (fake, _url, _dir, config) = setup().await;
    fake.insert("web1", VpsState::Running);
    fake.insert("web2", VpsState::Stopped);
    let out = cli(&config, &["list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let list: Value = serde_json::from_str(&out.stdout).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2, "both pages fetched");
    let web1 = &list[0];
    assert_eq!(web1["name"], "web1");
    assert_eq!(web1["tenant"], "acme");
    assert_eq!(web1["state"], "running");
    assert_eq!(list[1]["state"], "stopped");
    assert_eq!(web1["node"], "node-a");
    assert_eq!(web1["plan"], "small");
    assert_eq!(web1["vcpus"], 1.0);
    assert_eq!(web1["memory_bytes"], 512u64 << 20);
    assert_eq!(web1["disk_bytes"], 5u64 << 30);
    assert_eq!(web1["ipv4"], serde_json::json!(["10.77.0.10"]));
    assert_eq!(web1["created_at"], "2024-05-01T12:00:00Z");
    for field in [
        "id",
        "template",
        "desired_power",
        "ipv6",
        "message",
        "init_pid",
    ] {
        assert!(web1.get(field).is_some(), "missing {field}");
    }
    assert!(fake
        .auth_headers
        .lock()
        .expect("lock")
        .iter()
        .all(|h| h == &format!("Bearer {GOOD_TOKEN}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_table_and_show_json() {
    let (fake, _url, _dir, config) = setup().await;
    fake.insert("web1", VpsState::Running);
    let out = cli(&config, &["list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let header = out.stdout.lines().next().expect("header");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "STATE", "NODE", "PLAN", "VCPUS", "MEMORY", "DISK", "IPV4", "AGE"]
    );
    assert!(
        out.stdout.contains("512.0 MiB") && out.stdout.contains("5.0 GiB"),
        "{}",
        out.stdout
    );
    let out = cli(&config, &["list", "--no-headers"]).await;
    assert!(out.stdout.starts_with("web1 "), "{}", out.stdout);

    let out = cli(&config, &["show", "web1", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(vps.is_object());
    assert_eq!(vps["name"], "web1");

    let out = cli(&config, &["show", "nope"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.trim_end(), "error: vps nope not found");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_waits_until_running() {
    let (_fake, _url, _dir, config) = setup().await;
    let out = cli(
        &config,
        &[
            "create", "web1", "--plan", "small", "--memory", "1GiB", "-o", "json",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "running");
    assert_eq!(vps["memory_bytes"], 1u64 << 30);
    // Progress lines only go to a terminal.
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let out = cli(
        &config,
        &[
            "create",
            "web2",
            "--plan",
            "small",
            "--no-wait",
            "-o",
            "json",
        ],
    )
    .await;
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "pending");

    let out = cli(&config, &["create", "web1", "--plan", "small"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.trim_end(), "error: vps web1 already exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_fails_with_the_vps_message_on_error() {
    let (_fake, _url, _dir, config) = setup().await;
    let out = cli(&config, &["create", "broken1", "--plan", "small", "--wait"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        "error: vps broken1 failed: template busybox is corrupt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_start_and_delete_wait() {
    let (fake, _url, _dir, config) = setup().await;
    fake.insert("web1", VpsState::Running);
    let out = cli(&config, &["stop", "web1", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "stopped");

    let out = cli(&config, &["start", "web1", "-o", "json"]).await;
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "running");

    // stdin is not a TTY: no prompt even without --yes.
    let out = cli(&config, &["delete", "web1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim_end(), "vps web1 deleted");
    let out = cli(&config, &["show", "web1"]).await;
    assert_eq!(out.code, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_follow_the_watch_stream_without_polling() {
    use std::sync::atomic::Ordering;
    let (fake, _url, _dir, config) = setup_with(FakeVps::streaming()).await;
    let out = cli(
        &config,
        &["create", "web1", "--plan", "small", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "running");

    let out = cli(&config, &["stop", "web1", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "stopped");

    let out = cli(&config, &["create", "broken1", "--plan", "small"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        "error: vps broken1 failed: template busybox is corrupt"
    );

    let out = cli(&config, &["delete", "web1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim_end(), "vps web1 deleted");

    assert_eq!(fake.watch_calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        fake.get_calls.load(Ordering::SeqCst),
        0,
        "every wait followed the stream; none polled GetVps"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waits_poll_a_controller_without_watch() {
    use std::sync::atomic::Ordering;
    let (fake, _url, _dir, config) = setup().await;
    let out = cli(
        &config,
        &["create", "web1", "--plan", "small", "-o", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let vps: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(vps["state"], "running");
    assert!(fake.get_calls.load(Ordering::SeqCst) >= 3, "polled GetVps");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_forwards_streams_and_exit_code() {
    let (fake, _url, _dir, config) = setup().await;
    fake.insert("web1", VpsState::Running);
    let out = cli(&config, &["exec", "web1", "--", "exit", "7"]).await;
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    let out = cli(&config, &["exec", "web1", "--", "exit", "0"]).await;
    assert_eq!(out.code, 0, "{out:?}");

    let input = vec![b'x'; 200_000];
    let out = run(
        paddock(&config, &["exec", "web1", "--", "cat"]),
        Some(&input),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), input.len());

    let out = cli(&config, &["exec", "web1", "--", "vanish"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "partial\n");
    assert!(
        out.stderr.contains("ended without an exit code"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_token_names_the_context() {
    let (_fake, url, _dir, config) = setup().await;
    let out = run(
        paddock(
            &config,
            &[
                "context",
                "add",
                "stale",
                "--controller",
                &url,
                "--token",
                "old",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, 0);
    let out = cli(&config, &["--context", "stale", "list"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim_end(),
        "error: not authenticated: unknown or revoked token (check the token of context stale)"
    );

    let mut command = paddock(&config, &["list"]);
    command.env("PADDOCK_TOKEN", "wrong");
    let out = run(command, None).await;
    assert!(
        out.stderr.contains("(check PADDOCK_TOKEN)"),
        "{}",
        out.stderr
    );

    let mut command = paddock(&config, &["--context", "stale", "list"]);
    command.env("PADDOCK_TOKEN", GOOD_TOKEN);
    assert_eq!(
        run(command, None).await.code,
        0,
        "env token overrides the context's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_controller_is_verified_with_the_context_ca() {
    let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let fake = FakeVps::default();
    fake.insert("web1", VpsState::Running);
    let url = fake
        .serve_tls(&server.cert.pem(), &server.signing_key.serialize_pem())
        .await;
    let (dir, config) = temp_config();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, server.cert.pem()).expect("write ca");
    let ca_arg = ca.to_str().expect("utf-8 path");
    let add = paddock(
        &config,
        &[
            "context",
            "add",
            "tls",
            "--controller",
            &url,
            "--token",
            GOOD_TOKEN,
            "--ca-cert",
            ca_arg,
        ],
    );
    assert_eq!(run(add, None).await.code, 0);
    let out = cli(&config, &["list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"web1\""), "{}", out.stdout);

    // A different CA is refused: the controller cannot be verified.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(&ca, other.cert.pem()).expect("write other ca");
    let out = cli(&config, &["list"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot reach the controller at {url}: ")),
        "{}",
        out.stderr
    );
}

/// Runs `paddock` under `script(1)` so its stdin and stdout are a terminal.
async fn under_terminal(config: &std::path::Path, args: &str) -> Run {
    let line = format!(
        "stty cols 100 rows 30 2>/dev/null; {} {args}",
        env!("CARGO_BIN_EXE_paddock")
    );
    let mut command = tokio::process::Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env_remove("PADDOCK_CONTROLLER")
        .env_remove("PADDOCK_TOKEN")
        .env("PADDOCK_CONFIG", config)
        .kill_on_drop(true);
    run(command, Some(b"")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_terminal() {
    let (fake, _url, _dir, config) = setup().await;
    fake.insert("web1", VpsState::Running);
    // -t: a pseudo-terminal with the window size; the exit code still comes through.
    let out = under_terminal(&config, "exec -t web1 -- tty").await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("tty=true size=true"), "{}", out.stdout);
    // Without -t, a terminal on stdin means "no input": cat ends at once.
    let out = under_terminal(&config, "exec web1 -- cat").await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = under_terminal(&config, "exec -T web1 -- tty").await;
    assert!(
        out.stdout.contains("tty=false size=false"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_was_lost_is_retried_with_the_same_request_id() {
    let (fake, _url, _dir, config) = setup().await;
    *fake.lose_create_answers.lock().expect("lock") = 2;
    let out = cli(&config, &["create", "web1", "--plan", "small", "--no-wait"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let ids = fake.create_request_ids.lock().expect("lock").clone();
    assert_eq!(
        ids.len(),
        3,
        "two lost answers, then the retry answered: {ids:?}"
    );
    assert!(!ids[0].is_empty(), "the CLI sends a request id");
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "one id for all: {ids:?}"
    );

    // Another command is another request: a fresh id, so the taken name is refused.
    let out = cli(&config, &["create", "web1", "--plan", "small", "--no-wait"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let ids = fake.create_request_ids.lock().expect("lock").clone();
    assert_ne!(ids[3], ids[0]);

    // An explicit id finishes the first command without doing it twice.
    let out = cli(
        &config,
        &[
            "create",
            "web1",
            "--plan",
            "small",
            "--no-wait",
            "--request-id",
            &ids[0],
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutation_never_answered_names_its_request_id() {
    let (fake, _url, _dir, config) = setup().await;
    *fake.lose_create_answers.lock().expect("lock") = 100;
    let out = cli(
        &config,
        &[
            "create",
            "web1",
            "--plan",
            "small",
            "--no-wait",
            "--request-id",
            "my-id-1",
        ],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(
            "may or may not have done it: run the same command with --request-id my-id-1"
        ),
        "{}",
        out.stderr
    );
    let ids = fake.create_request_ids.lock().expect("lock").clone();
    assert!(ids.len() > 1, "retried before giving up: {ids:?}");
    assert!(ids.iter().all(|id| id == "my-id-1"), "{ids:?}");

    let bad = cli(
        &config,
        &["create", "web2", "--plan", "small", "--request-id", "a b"],
    )
    .await;
    assert_eq!(bad.code, 2, "a malformed id is a usage error: {bad:?}");
}

/// A context listing several controllers (several controllers on one etcd): a dead first one
/// is skipped and the command is served by the next; a list of only dead ones names the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_context_with_several_controllers_uses_the_first_that_answers() {
    let fake = FakeVps::default();
    fake.insert("web1", VpsState::Running);
    let live = fake.clone().serve().await;
    let dead = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("bind")
            .port();
        format!("http://127.0.0.1:{port}")
    };
    let (_dir, config) = temp_config();
    let both = format!("{dead},{live}");
    let added = cli(
        &config,
        &[
            "context",
            "add",
            "ha",
            "--controller",
            &both,
            "--token",
            GOOD_TOKEN,
        ],
    )
    .await;
    assert_eq!(added.code, 0, "{added:?}");
    let out = cli(&config, &["list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "served by the second controller: {out:?}");
    assert!(out.stdout.contains("web1"), "{out:?}");

    let (_dir, config) = temp_config();
    let only_dead = format!("{dead},{dead}");
    let added = cli(
        &config,
        &[
            "context",
            "add",
            "down",
            "--controller",
            &only_dead,
            "--token",
            GOOD_TOKEN,
        ],
    )
    .await;
    assert_eq!(added.code, 0, "{added:?}");
    let out = cli(&config, &["list"]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the controller at {dead}")),
        "{out:?}"
    );
    let bad = cli(
        &config,
        &[
            "context",
            "add",
            "bad",
            "--controller",
            &format!("{live},ftp://x"),
            "--token",
            GOOD_TOKEN,
        ],
    )
    .await;
    assert_ne!(bad.code, 0, "every URL of the list is checked: {bad:?}");
}
