//! The `paddock` binary without a controller: usage errors, contexts,
//! configuration problems and an unreachable controller.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{paddock, run, temp_config};

#[tokio::test]
async fn bad_flags_are_usage_errors_with_exit_code_2() {
    let (_dir, config) = temp_config();
    let cases: &[&[&str]] = &[
        &["list", "--bogus"],
        &["create", "web1", "--plan", "small", "--memory", "lots"],
        &["create", "web1"],
        &["create", "Web_1", "--plan", "small"],
        &["list", "-o", "xml"],
        &["resize", "web1"],
        &["exec", "web1"],
        &["admin", "token", "create"],
        &[
            "admin", "token", "create", "--role", "admin", "--tenant", "acme",
        ],
        &[
            "admin", "plan", "create", "p", "--vcpus", "-1", "--memory", "1GiB", "--disk", "1GiB",
        ],
        &["frobnicate"],
        &["create", "w", "--plan", "s", "--node-selector", "region"],
        &["create", "w", "--plan", "s", "--node-selector", "=eu1"],
        &["admin", "node", "label", "node-a"],
        &["admin", "node", "label", "node-a", "oops"],
        &["admin", "node", "label", "node-a", "=v"],
        &["admin", "node", "label", "node-a", "-"],
        &[
            "admin",
            "token",
            "create",
            "--tenant",
            "a",
            "--expires-in",
            "0s",
        ],
        &[
            "admin",
            "token",
            "create",
            "--tenant",
            "a",
            "--expires-in",
            "5y",
        ],
        &[
            "admin",
            "token",
            "create",
            "--tenant",
            "a",
            "--expires-in",
            "soon",
        ],
        &["rebuild", "web1", "--yes", "--timeout", "never"],
        &["usage", "--from", "yesterday"],
    ];
    for args in cases {
        let out = run(paddock(&config, args), None).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
    }
    let out = run(
        paddock(
            &config,
            &["create", "w", "--plan", "s", "--disk", "12 parsecs"],
        ),
        None,
    )
    .await;
    assert!(out.stderr.contains("--disk"), "{}", out.stderr);
}

#[tokio::test]
async fn help_shows_examples() {
    let (_dir, config) = temp_config();
    for args in [
        &["create", "--help"][..],
        &["exec", "--help"],
        &["admin", "tenant", "create", "--help"],
        &["context", "add", "--help"],
    ] {
        let out = run(paddock(&config, args), None).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("Example"), "{args:?}: {}", out.stdout);
    }
}

#[tokio::test]
async fn no_context_tells_how_to_add_one() {
    let (_dir, config) = temp_config();
    let out = run(paddock(&config, &["list"]), None).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: no context configured"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("paddock context add"), "{}", out.stderr);
}

#[tokio::test]
async fn contexts_are_saved_privately_and_tokens_never_printed() {
    let (_dir, config) = temp_config();
    let add = |name: &str, url: &str, token: &str, extra: &[&str]| {
        let mut args = vec![
            "context",
            "add",
            name,
            "--controller",
            url,
            "--token",
            token,
        ];
        args.extend_from_slice(extra);
        paddock(&config, &args)
    };
    assert_eq!(
        run(
            add("demo", "http://127.0.0.1:7443", "secret-one", &[]),
            None
        )
        .await
        .code,
        0
    );
    assert_eq!(
        run(
            add("prod", "https://p.example:7443", "secret-two", &[]),
            None
        )
        .await
        .code,
        0
    );

    let mode = std::fs::metadata(&config)
        .expect("config written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(config.parent().expect("parent"))
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    let out = run(paddock(&config, &["context", "list"]), None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("secret"), "{}", out.stdout);
    let current: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{}", out.stdout);
    assert!(current[0].contains("demo"), "{}", out.stdout);

    assert_eq!(
        run(paddock(&config, &["context", "use", "prod"]), None)
            .await
            .code,
        0
    );
    let out = run(paddock(&config, &["context", "list", "-o", "json"]), None).await;
    assert!(!out.stdout.contains("secret"), "{}", out.stdout);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let current: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter(|c| c["current"] == true)
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(current, vec!["prod"]);

    let out = run(paddock(&config, &["context", "use", "nope"]), None).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("demo, prod"), "{}", out.stderr);

    let out = run(add("bad", "127.0.0.1:7443", "t", &[]), None).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test]
async fn token_can_come_from_stdin() {
    let (_dir, config) = temp_config();
    let command = paddock(
        &config,
        &[
            "context",
            "add",
            "demo",
            "--controller",
            "http://127.0.0.1:7443",
            "--token",
            "-",
        ],
    );
    assert_eq!(run(command, Some(b"piped-token\n")).await.code, 0);
    let text = std::fs::read_to_string(&config).expect("read config");
    assert!(text.contains("token = \"piped-token\""), "{text}");
}

#[tokio::test]
async fn unreachable_controller_is_one_clear_line() {
    let (_dir, config) = temp_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = paddock(&config, &["list"]);
    command
        .env("PADDOCK_CONTROLLER", &url)
        .env("PADDOCK_TOKEN", "t");
    let out = run(command, None).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("error: cannot reach the controller at {url}: ")),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn completion_scripts_are_generated() {
    let (_dir, config) = temp_config();
    for shell in ["bash", "zsh", "fish"] {
        let out = run(paddock(&config, &["completion", shell]), None).await;
        assert_eq!(out.code, 0, "{shell}: {out:?}");
        assert!(out.stdout.contains("paddock"), "{shell}");
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (_dir, config) = temp_config();
    // A pipe whose reading end is closed before paddock writes: its first write fails.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["completion", "bash"])
        .env("PADDOCK_CONFIG", &config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write_end))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run paddock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "paddock said on a closed pipe: {stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "ended by SIGPIPE like coreutils: {:?}",
        output.status
    );
}
