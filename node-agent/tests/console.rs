//! The VPS console: a pty kept by a small per-VPS supervisor with a scrollback buffer, which
//! survives an agent restart; clients attach over its socket and see what the VPS printed.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use paddock_agent::runtime::console;

fn attach(socket: &std::path::Path, scrollback: bool) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect console");
    stream
        .write_all(&console::frame(
            console::FRAME_ATTACH,
            &[u8::from(scrollback)],
        ))
        .expect("attach");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream
}

fn read_until(stream: &mut UnixStream, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the console: {seen}"
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!("console closed before {needle:?}: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(_) => {}
        }
    }
    seen
}

#[test]
fn console_keeps_scrollback_across_agent_restarts() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let vps_id = fixture.new_vps_id();
    let init_pid = running_pid(
        &fixture
            .runtime
            .apply(&spec(&vps_id, small_limits()))
            .expect("apply"),
    );
    let socket = fixture.runtime.console_socket(&vps_id).expect("socket");

    // The boot messages are in the scrollback; live output follows.
    let mut client = attach(&socket, true);
    read_until(&mut client, "booted");
    sh_ok(
        &fixture.runtime,
        &vps_id,
        "echo hello-console > /dev/console",
    );
    read_until(&mut client, "hello-console");
    client
        .write_all(&console::resize_frame(30, 90))
        .expect("resize");
    drop(client);

    let supervisor = fixture
        .runtime
        .console_supervisor_pid(&vps_id)
        .expect("supervisor pid");
    assert!(pid_running(supervisor));
    let rss_kib: u64 = proc_status_field(supervisor, "VmRSS:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS");
    eprintln!("console supervisor RSS: {rss_kib} KiB");
    assert!(rss_kib < 16 * 1024, "console supervisor uses {rss_kib} KiB");

    // After an agent restart the console, its scrollback and the VPS are still there.
    let restarted = fixture.restarted_runtime();
    let mut again = attach(&restarted.console_socket(&vps_id).expect("socket"), true);
    read_until(&mut again, "hello-console");
    assert_eq!(
        sh_ok(&restarted, &vps_id, "stty -F /dev/console size").trim(),
        "30 90"
    );
    let log = std::fs::read_to_string(fixture.runtime.console_log_path(&vps_id)).expect("log");
    assert!(log.contains("hello-console"), "console log: {log}");

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid, supervisor]);
}
