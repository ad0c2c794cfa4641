//! The VPS console: a pty kept by a small per-VPS supervisor with a scrollback buffer, which
//! survives an agent restart; clients attach over its socket and see what the VPS printed. The
//! supervisor never blocks on a client, and keeps the console through an init that closes and
//! reopens it (as sysvinit does). Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run
//! fails instead of skipping.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use paddock_agent::runtime::{console, VpsSpec};

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

/// The supervisor's peak resident memory, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmHWM:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmHWM")
}

/// CPU time (user + system) of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the comm.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Reads `stream` until `needle` arrives or it closes; returns (found, bytes read). Searches
/// only the tail, so megabytes of output stay cheap.
fn read_to_needle(stream: &mut UnixStream, needle: &[u8], deadline: Instant) -> (bool, usize) {
    let mut tail: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (false, total),
            Ok(n) => {
                total += n;
                tail.extend_from_slice(&buffer[..n]);
                if tail.windows(needle.len()).any(|w| w == needle) {
                    return (true, total);
                }
                let keep = needle.len().min(tail.len());
                tail.drain(..tail.len() - keep);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("console read: {e}"),
        }
    }
    (false, total)
}

#[test]
fn console_client_that_stops_reading_never_stalls_the_vps() {
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
    let supervisor = fixture
        .runtime
        .console_supervisor_pid(&vps_id)
        .expect("supervisor pid");

    // A client that attaches with the scrollback and never reads.
    let mut stalled = attach(&socket, true);

    // A client that types far more than the VPS reads (nothing in it reads the console): the
    // input waits in its socket, the supervisor does not block on the pty.
    let mut typist = attach(&socket, false);
    typist
        .set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    let line = console::frame(console::FRAME_DATA, &b"paddock-typed-line\n".repeat(200));
    let mut typed = 0usize;
    while typed < 4 << 20 && typist.write_all(&line).is_ok() {
        typed += line.len();
    }
    eprintln!("typed {typed} bytes before the typist's socket filled");

    // A client that keeps reading sees the output live, to its end.
    let marker = unique("paddock-flood-done");
    let mut reader = attach(&socket, false);
    let needle = marker.clone().into_bytes();
    let reading = std::thread::spawn(move || {
        read_to_needle(
            &mut reader,
            &needle,
            Instant::now() + Duration::from_secs(90),
        )
    });

    // 8 MiB of console output: the writer must not block (exec gives up after 60 s). It
    // comes in 128 KiB bursts with short pauses, so a client that reads at all keeps up
    // however loaded the machine is (one further behind than its backlog is dropped).
    sh_ok(
        &fixture.runtime,
        &vps_id,
        &format!(
            "i=0; while [ $i -lt 64 ]; do yes paddock-console-flood | head -c 131072; \
             usleep 20000; i=$((i+1)); done > /dev/console; echo {marker} > /dev/console"
        ),
    );
    let (found, received) = reading.join().expect("reader thread");
    assert!(
        found,
        "the reading client saw {received} bytes but not {marker}"
    );
    assert!(
        received >= 8 << 20,
        "the reading client got {received} bytes"
    );

    // The client that never read was disconnected once it fell too far behind: what its socket
    // holds, then EOF.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut kept = 0usize;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match stalled.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => kept += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("the stalled client is still attached after {kept} bytes: {e}"),
        }
    }
    assert!(kept < 4 << 20, "the stalled client was sent {kept} bytes");

    // The log ends with the latest output and is bounded (rotated once it holds
    // CONSOLE_LOG_BYTES); the supervisor's memory stayed bounded.
    let log_path = fixture.runtime.console_log_path(&vps_id);
    let log = std::fs::read(&log_path).expect("log");
    let mut rotated_path = log_path.clone().into_os_string();
    rotated_path.push(".1");
    let rotated = std::fs::read(&rotated_path).expect("rotated log");
    let limit = paddock_agent::runtime::console::CONSOLE_LOG_BYTES as usize;
    assert!(log.len() <= limit, "console.log has {} bytes", log.len());
    assert!(
        rotated.len() <= limit,
        "console.log.1 has {} bytes",
        rotated.len()
    );
    assert!(
        rotated.len() > limit / 2,
        "console.log.1 holds the output before: {} bytes",
        rotated.len()
    );
    assert!(
        log.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "console.log lacks {marker}"
    );
    let peak_kib = peak_rss_kib(supervisor);
    eprintln!("console supervisor peak RSS: {peak_kib} KiB");
    assert!(
        peak_kib < 32 * 1024,
        "console supervisor peaked at {peak_kib} KiB"
    );

    // And it still serves: a new client finds the end of the flood in the scrollback.
    drop(typist);
    let mut again = attach(&socket, true);
    read_until(&mut again, &marker);
    assert!(pid_running(supervisor));

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid, supervisor]);
}

/// An init that behaves like sysvinit with its console: it closes its stdio, so for a while no
/// process holds the console, then writes by reopening `/dev/console`, also from a new
/// session. Steps wait for marker files the test creates; at `/init-exit` it exits.
const REOPENING_INIT: &str = r#"#!/bin/sh
echo "paddock-test: init up"
exec 0<&- 1>&- 2>&-
touch /console-closed
while [ ! -e /console-reopen ]; do sleep 1; done
echo "paddock-test: reopened /dev/console" > /dev/console
setsid sh -c 'echo "paddock-test: from a new session" > /dev/console'
exec 0</dev/console 1>/dev/console 2>&1
echo "paddock-test: init holds the console again"
while [ ! -e /init-exit ]; do sleep 1; done
echo "paddock-test: init exits"
exit 0
"#;

#[test]
fn console_survives_an_init_that_closes_and_reopens_it() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("console-reopen");
    script_template(&fixture, &template, REOPENING_INIT, None);
    let vps_id = fixture.new_vps_id();
    let spec = VpsSpec {
        template,
        ..spec(&vps_id, small_limits())
    };
    let init_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));
    let socket = fixture.runtime.console_socket(&vps_id).expect("socket");
    let supervisor = fixture
        .runtime
        .console_supervisor_pid(&vps_id)
        .expect("supervisor pid");
    let mut client = attach(&socket, true);
    read_until(&mut client, "paddock-test: init up");

    // No process of the VPS holds the console now. The supervisor stays, and idles: a loop
    // on the master's hangup would burn the whole two seconds.
    wait_until(
        "the init to close its console",
        Duration::from_secs(15),
        || {
            exec(
                &fixture.runtime,
                &vps_id,
                &["test", "-e", "/console-closed"],
            )
            .code
                == Some(0)
        },
    );
    let before = cpu_ticks(supervisor);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        pid_running(supervisor),
        "the console supervisor exited when the init closed its console"
    );
    let used = cpu_ticks(supervisor) - before;
    assert!(
        used < 100,
        "the supervisor used {used} ticks of CPU in 2 s while idle"
    );

    sh_ok(&fixture.runtime, &vps_id, "touch /console-reopen");
    // One read can bring several lines: read up to the last, then look for all of them.
    let seen = read_until(&mut client, "paddock-test: init holds the console again");
    for line in [
        "paddock-test: reopened /dev/console",
        "paddock-test: from a new session",
    ] {
        assert!(seen.contains(line), "no {line:?} on the console: {seen}");
    }

    // When the init exits, the supervisor writes what it printed last and exits too.
    sh_ok(&fixture.runtime, &vps_id, "touch /init-exit");
    wait_until(
        "the console supervisor to exit",
        Duration::from_secs(30),
        || !pid_running(supervisor),
    );
    let log = std::fs::read_to_string(fixture.runtime.console_log_path(&vps_id)).expect("log");
    for line in [
        "paddock-test: init up",
        "paddock-test: reopened /dev/console",
        "paddock-test: from a new session",
        "paddock-test: init holds the console again",
        "paddock-test: init exits",
    ] {
        assert!(log.contains(line), "console.log lacks {line:?}: {log}");
    }

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid, supervisor]);
}
