//! Live checkpoints of a running VPS with CRIU against the real kernel: a VPS holding a TCP
//! connection from the test and a shell loop counting in memory is checkpointed (its processes
//! gone), restored from the images, and goes on where it was; a VPS CRIU cannot dump gets
//! CRIU's reason and keeps running.
//!
//! The CRIU binary is `PADDOCK_CRIU` or `criu` on `PATH`. Where `criu check` fails on this
//! kernel (Debian 12's CRIU 3.17 on kernels with the `vvar_vclock` mapping, 6.13 and later),
//! each test asserts the refusal names CRIU's reason and that the VPS was left running, and
//! says so on stderr; under `PADDOCK_REQUIRE_PRIVILEGED=1` it fails instead (`make deps` builds
//! a CRIU that works, `scripts/criu.sh`).
//! Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

mod common;

use common::{
    cgroup_value, exec, pid_running, require_root, running_pid, sh_ok, small_limits, spec,
    wait_until, Fixture,
};
use paddock_agent::runtime::checkpoint::{self, VethAttach};
use paddock_agent::runtime::procview::ProcView;
use paddock_agent::runtime::{CheckpointError, CheckpointOptions, Runtime, RuntimeError};
use paddock_agent::service::runtime_code;

const WAIT: Duration = Duration::from_secs(60);

/// Whether CRIU works here; prints why not. Under `PADDOCK_REQUIRE_PRIVILEGED=1` (CI, where
/// `make deps` installs a CRIU that works on the kernel: `scripts/criu.sh`) a CRIU that fails
/// its check fails the test instead of narrowing it to the refusal.
fn criu_works() -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    match checkpoint::check(dir.path()) {
        Ok(()) => true,
        Err(error) if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!(
                "CRIU does not work on this node (scripts/criu.sh installs one that does): {error}"
            )
        }
        Err(error) => {
            eprintln!("CRIU does not work on this node, checking its refusal only: {error}");
            false
        }
    }
}

/// Where CRIU does not work: a checkpoint of the running VPS is refused at `criu check` with
/// CRIU's reason, and the VPS keeps running.
fn assert_refused_at_check(
    runtime: &Runtime,
    vps_id: &str,
    init_pid: u32,
    images: &std::path::Path,
) {
    let error = runtime
        .checkpoint(vps_id, images, CheckpointOptions::default())
        .expect_err("CRIU does not work here");
    assert!(
        matches!(
            &error,
            RuntimeError::Checkpoint {
                source: CheckpointError::Refused { step: "check", reason },
                ..
            } if reason.contains("Error")
        ),
        "{error:?}"
    );
    assert_eq!(runtime_code(&error), tonic::Code::FailedPrecondition);
    assert!(
        pid_running(init_pid),
        "a refused checkpoint left the VPS running"
    );
}

/// Runs `ip` (or another command); panics with its output on failure.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and a veth pair of the test's own, the peer moved into the VPS as `eth0` with
/// `10.213.<n>.2/24`, the bridge `.1`; removed on drop.
struct TestNet {
    bridge: String,
    host_end: String,
    vps_addr: String,
}

impl TestNet {
    fn new(init_pid: u32) -> Self {
        // Unique per test of this process (two use a net) and per process.
        static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let n = (std::process::id() % 100) * 2 + 20 + k % 2;
        let tag = format!("{:x}x{k}", std::process::id());
        let net = Self {
            bridge: format!("pckb{tag}"),
            host_end: format!("pckv{tag}"),
            vps_addr: format!("10.213.{n}.2"),
        };
        let peer = format!("pckp{tag}");
        run("ip", &["link", "add", &net.bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.213.{n}.1/24"),
                "dev",
                &net.bridge,
            ],
        );
        run("ip", &["link", "set", &net.bridge, "up"]);
        run(
            "ip",
            &[
                "link",
                "add",
                &net.host_end,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
        );
        run("ip", &["link", "set", &net.host_end, "master", &net.bridge]);
        run("ip", &["link", "set", &net.host_end, "up"]);
        run(
            "ip",
            &["link", "set", &peer, "netns", &init_pid.to_string()],
        );
        let target = init_pid.to_string();
        let inside = |args: &[&str]| {
            let mut all = vec!["-t", target.as_str(), "-n", "ip"];
            all.extend_from_slice(args);
            run("nsenter", &all);
        };
        inside(&["link", "set", &peer, "name", "eth0"]);
        inside(&[
            "addr",
            "add",
            &format!("{}/24", net.vps_addr),
            "dev",
            "eth0",
        ]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// Starts a counting loop in its own session (a process an exec leaves in the exec's session
/// cannot be dumped: its session leader is outside the VPS) that keeps its count in a shell
/// variable and writes it to /count; returns its pid inside the VPS.
fn start_counter(runtime: &Runtime, vps_id: &str) -> String {
    sh_ok(
        runtime,
        vps_id,
        "setsid sh -c 'echo $$ > /counter.pid; i=0; while true; do i=$((i+1)); \
         echo $i > /count; sleep 0.05; done' >/dev/null 2>&1 </dev/null &",
    );
    wait_until("the counter", WAIT, || count(runtime, vps_id) > 0);
    sh_ok(runtime, vps_id, "cat /counter.pid").trim().to_owned()
}

fn count(runtime: &Runtime, vps_id: &str) -> u64 {
    exec(runtime, vps_id, &["cat", "/count"])
        .stdout
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The last `NSpid` entry of host process `pid`: its pid inside its pid namespace.
fn inner_pid(pid: u32) -> String {
    common::proc_status_field(pid, "NSpid")
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn echo_round(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) {
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("send");
    let mut got = String::new();
    reader.read_line(&mut got).expect("read echo");
    assert_eq!(got.trim(), line, "the VPS's echo server answered");
}

#[test]
fn a_running_vps_is_checkpointed_and_restored_with_its_memory_pids_limits_and_tcp() {
    if !require_root() {
        return;
    }
    let works = criu_works();
    let mut fx = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let init_pid = running_pid(&fx.runtime.apply(&spec).expect("create"));
    let net = TestNet::new(init_pid);
    let counter_pid = start_counter(&fx.runtime, &vps_id);
    // An echo server holding one connection from the test.
    sh_ok(
        &fx.runtime,
        &vps_id,
        "setsid nc -l -p 7000 -e cat >/dev/null 2>&1 </dev/null &",
    );
    let address = format!("{}:7000", net.vps_addr);
    let mut stream = None;
    wait_until("the echo server", WAIT, || {
        stream = TcpStream::connect(&address).ok();
        stream.is_some()
    });
    let mut stream = stream.expect("connected");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    echo_round(&mut stream, &mut reader, "before");

    // Counted far enough that a loop started afresh would read lower right after the restore.
    wait_until("the counter to reach 20", WAIT, || {
        count(&fx.runtime, &vps_id) >= 20
    });
    let count_before = count(&fx.runtime, &vps_id);
    let images = fx.state_dir.path().join("checkpoint");
    let result = fx
        .runtime
        .checkpoint(&vps_id, &images, CheckpointOptions::default());
    if !works {
        let error = result.expect_err("CRIU does not work here");
        assert!(
            matches!(
                &error,
                RuntimeError::Checkpoint {
                    source: CheckpointError::Refused { step: "check", reason },
                    ..
                } if reason.contains("Error")
            ),
            "{error:?}"
        );
        assert_eq!(runtime_code(&error), tonic::Code::FailedPrecondition);
        assert!(
            pid_running(init_pid),
            "a refused checkpoint left the VPS running"
        );
        echo_round(&mut stream, &mut reader, "still here");
        return;
    }
    let report = result.expect("checkpoint");
    assert_eq!(report.init_pid, init_pid);
    assert!(report.image_bytes > 0, "{report:?}");
    if report.dirty_tracking {
        assert!(!report.rounds.is_empty(), "{report:?}");
    } else {
        assert!(
            report.rounds.is_empty(),
            "no dirty tracking, no rounds: {report:?}"
        );
    }
    // The VPS's processes are gone; its state says stopped.
    wait_until("the dumped init to go", WAIT, || !pid_running(init_pid));
    let observed = fx.runtime.status(&vps_id).expect("status").expect("exists");
    assert_eq!(observed.init_pid, None, "{observed:?}");
    // The run closed like a stop's: metering keeps its final counters.
    let closed = fx
        .runtime
        .closed_run(&vps_id)
        .expect("closed run")
        .expect("recorded");
    assert!(closed.cpu_usage_ns > 0, "{closed:?}");
    // Through the transfer format a move uses (CheckpointVps streams it, RestoreCheckpoint
    // unpacks it): CRIU's images and the disk image, which the restore moves into place.
    let transfer = fx.state_dir.path().join("transfer.tar");
    let disk = fx.runtime.disk_image_path(&vps_id).expect("disk path");
    checkpoint::pack_transfer(
        &images,
        &disk,
        std::fs::File::create(&transfer).expect("transfer file"),
    )
    .expect("pack");
    let received = fx.runtime.checkpoint_dir(&vps_id).expect("checkpoint dir");
    checkpoint::unpack_transfer(
        std::fs::File::open(&transfer).expect("transfer file"),
        &received,
    )
    .expect("unpack");
    assert!(received.join(checkpoint::DISK_FILE).is_file());
    let restored = fx
        .runtime
        .restore_checkpoint(
            &spec,
            &received,
            Some(VethAttach {
                host_ifname: net.host_end.clone(),
                bridge: net.bridge.clone(),
            }),
        )
        .expect("restore");
    let new_init = running_pid(&restored);
    assert_eq!(inner_pid(new_init), "1", "the init is PID 1 inside again");
    // The same counting shell, same pid inside, counting on from its memory: a restarted
    // loop would start from 1 again.
    let cmdline = sh_ok(
        &fx.runtime,
        &vps_id,
        "cat /proc/$(cat /counter.pid)/cmdline | tr '\\0' ' '",
    );
    assert!(cmdline.contains("while true"), "{cmdline}");
    assert_eq!(
        sh_ok(&fx.runtime, &vps_id, "cat /counter.pid").trim(),
        counter_pid
    );
    let count_after = count(&fx.runtime, &vps_id);
    assert!(
        count_after >= count_before,
        "the count went on from {count_before}, not from 1: {count_after}"
    );
    wait_until("the counter to go on", WAIT, || {
        count(&fx.runtime, &vps_id) > count_after
    });
    assert!(
        !received.join(checkpoint::DISK_FILE).exists(),
        "the carried disk was moved into place"
    );
    // The TCP connection made before the checkpoint still carries data both ways.
    echo_round(&mut stream, &mut reader, "after restore");
    // The limits still apply: the restored processes are in the VPS's cgroup, which has them.
    let cgroup_line = std::fs::read_to_string(format!("/proc/{new_init}/cgroup")).expect("cgroup");
    assert!(
        cgroup_line.contains(&format!("vps-{vps_id}")),
        "{cgroup_line}"
    );
    assert_eq!(
        cgroup_value(
            &fx.runtime,
            &vps_id,
            &["memory.limit_in_bytes", "memory.max"]
        ),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_value(&fx.runtime, &vps_id, &["pids.max"]), "256");
    let _ = stream.shutdown(Shutdown::Both);
    // A second restore of the same images into the running VPS is refused.
    let again = fx
        .runtime
        .restore_checkpoint(&spec, &images, None)
        .expect_err("restore into a running VPS");
    assert!(
        matches!(
            again,
            RuntimeError::Checkpoint {
                source: CheckpointError::Running,
                ..
            }
        ),
        "{again:?}"
    );
    fx.runtime.delete(&vps_id).expect("delete");
}

#[test]
fn a_vps_criu_cannot_dump_gets_criu_s_reason_and_keeps_running() {
    if !require_root() {
        return;
    }
    let works = criu_works();
    let mut fx = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let init_pid = running_pid(&fx.runtime.apply(&spec).expect("create"));
    start_counter(&fx.runtime, &vps_id);
    // A process an exec left behind in the exec's session: its session leader is outside
    // the VPS's pid namespace, which CRIU cannot restore.
    sh_ok(
        &fx.runtime,
        &vps_id,
        "sleep 100000 >/dev/null 2>&1 </dev/null &",
    );
    let images = fx.state_dir.path().join("checkpoint");
    let error = fx
        .runtime
        .checkpoint(&vps_id, &images, CheckpointOptions::default())
        .expect_err("CRIU cannot dump a session from outside");
    let expected_step = if works { "dump" } else { "check" };
    match &error {
        RuntimeError::Checkpoint {
            source: CheckpointError::Refused { step, reason },
            ..
        } => {
            assert_eq!(*step, expected_step, "{error}");
            assert!(reason.contains("Error ("), "CRIU's own lines: {reason}");
            if works {
                assert!(reason.contains("session"), "names the session: {reason}");
            }
        }
        other => panic!("expected CRIU's refusal, got {other:?}"),
    }
    assert_eq!(runtime_code(&error), tonic::Code::FailedPrecondition);
    let message = tonic::Status::from(error).message().to_owned();
    assert!(message.contains("CRIU"), "{message}");
    // The VPS kept running, the same init, still counting.
    assert!(pid_running(init_pid));
    assert_eq!(
        running_pid(&fx.runtime.status(&vps_id).expect("status").expect("exists")),
        init_pid
    );
    let now = count(&fx.runtime, &vps_id);
    wait_until("the counter to go on", WAIT, || {
        count(&fx.runtime, &vps_id) > now
    });
    // A restore from what the failed dump left is refused as incomplete.
    let restore = fx
        .runtime
        .restore_checkpoint(&spec, &images, None)
        .expect_err("no complete checkpoint");
    assert!(
        matches!(
            restore,
            RuntimeError::Checkpoint {
                source: CheckpointError::NoImages(_),
                ..
            }
        ),
        "{restore:?}"
    );
    fx.runtime.delete(&vps_id).expect("delete");
}

/// `free`'s total memory in the VPS (sysinfo(2), answered by the VPS's sysinfo server).
fn free_total_kib(runtime: &Runtime, vps_id: &str) -> String {
    sh_ok(runtime, vps_id, "free | awk '/^Mem:/ {print $2}'")
        .trim()
        .to_owned()
}

#[test]
fn a_vps_with_the_lxcfs_proc_view_is_restored_with_its_view() {
    if !require_root() {
        return;
    }
    let works = criu_works();
    // The default /proc view: lxcfs files bind-mounted over /proc and /sys (external to CRIU,
    // bound again from this node's lxcfs on restore) and a sysinfo server.
    let mut fx = Fixture::new();
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let init_pid = running_pid(&fx.runtime.apply(&spec).expect("create"));
    if !works {
        let images = fx.state_dir.path().join("refused");
        assert_refused_at_check(&fx.runtime, &vps_id, init_pid, &images);
        return;
    }
    let counter_pid = start_counter(&fx.runtime, &vps_id);
    let meminfo = |runtime: &Runtime| sh_ok(runtime, &vps_id, "head -1 /proc/meminfo");
    let view = meminfo(&fx.runtime);
    assert!(view.contains("65536 kB"), "the VPS's own view: {view}");
    assert_eq!(free_total_kib(&fx.runtime, &vps_id), "65536");
    let images = fx.state_dir.path().join("checkpoint");
    fx.runtime
        .checkpoint(&vps_id, &images, CheckpointOptions::default())
        .expect("checkpoint with the lxcfs view");
    let restored = fx
        .runtime
        .restore_checkpoint(&spec, &images, None)
        .expect("restore");
    assert_eq!(inner_pid(running_pid(&restored)), "1");
    assert_eq!(
        sh_ok(&fx.runtime, &vps_id, "cat /counter.pid").trim(),
        counter_pid
    );
    assert_eq!(
        meminfo(&fx.runtime),
        view,
        "the same /proc view after the restore"
    );
    // New commands get the VPS's sysinfo figures from a server the restore started (one
    // command after another: the server outlives each).
    for _ in 0..2 {
        assert_eq!(free_total_kib(&fx.runtime, &vps_id), "65536");
    }
    fx.runtime.delete(&vps_id).expect("delete");
}

#[test]
fn a_stopped_vps_cannot_be_checkpointed() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fx.new_vps_id();
    let mut spec = spec(&vps_id, small_limits());
    spec.power = paddock_agent::runtime::Power::Stopped;
    fx.runtime.apply(&spec).expect("create stopped");
    let error = fx
        .runtime
        .checkpoint(
            &vps_id,
            &fx.state_dir.path().join("checkpoint"),
            CheckpointOptions::default(),
        )
        .expect_err("nothing to checkpoint");
    assert!(
        matches!(
            error,
            RuntimeError::Checkpoint {
                source: CheckpointError::NotRunning,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(runtime_code(&error), tonic::Code::FailedPrecondition);
    assert!(matches!(
        fx.runtime.checkpoint(
            "absent",
            &fx.state_dir.path().join("x"),
            CheckpointOptions::default()
        ),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn a_running_vps_moves_live_to_another_node_and_keeps_its_tcp_connection() {
    if !require_root() {
        return;
    }
    let works = criu_works();
    // Two runtimes with their own state dirs and cgroup parents: two nodes on one kernel,
    // their VPS ports on one bridge (the network a move keeps its addresses on).
    let mut source = Fixture::with_proc_view(ProcView::Host);
    let mut destination = Fixture::with_proc_view(ProcView::Host);
    let vps_id = source.new_vps_id();
    destination.vps_ids.push(vps_id.clone());
    let spec = spec(&vps_id, small_limits());
    let init_pid = running_pid(&source.runtime.apply(&spec).expect("create"));
    if !works {
        let images = source.state_dir.path().join("refused");
        assert_refused_at_check(&source.runtime, &vps_id, init_pid, &images);
        return;
    }
    let net = TestNet::new(init_pid);
    let counter_pid = start_counter(&source.runtime, &vps_id);
    sh_ok(
        &source.runtime,
        &vps_id,
        "setsid nc -l -p 7000 -e cat >/dev/null 2>&1 </dev/null &",
    );
    let address = format!("{}:7000", net.vps_addr);
    let mut stream = None;
    wait_until("the echo server", WAIT, || {
        stream = TcpStream::connect(&address).ok();
        stream.is_some()
    });
    let mut stream = stream.expect("connected");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    echo_round(&mut stream, &mut reader, "on the source");
    sh_ok(&source.runtime, &vps_id, "echo kept > /on-disk");

    let source_ids = source.runtime.id_range(&vps_id).expect("ids");
    let images = source.runtime.checkpoint_dir(&vps_id).expect("dir");
    source
        .runtime
        .checkpoint(&vps_id, &images, CheckpointOptions::default())
        .expect("checkpoint");
    let mut transfer = Vec::new();
    checkpoint::pack_transfer(
        &images,
        &source.runtime.disk_image_path(&vps_id).expect("disk"),
        &mut transfer,
    )
    .expect("pack");
    // The destination has never seen the VPS.
    assert!(destination
        .runtime
        .status(&vps_id)
        .expect("status")
        .is_none());
    let received = destination.runtime.checkpoint_dir(&vps_id).expect("dir");
    checkpoint::unpack_transfer(transfer.as_slice(), &received).expect("unpack");
    // While another VPS holds the host ids the checkpoint maps, the restore is refused and
    // leaves nothing of the VPS on the destination.
    let blocker = destination.new_vps_id();
    let mut blocker_spec = common::spec(&blocker, small_limits());
    blocker_spec.power = paddock_agent::runtime::Power::Stopped;
    destination.runtime.apply(&blocker_spec).expect("blocker");
    let taken = destination.runtime.id_range(&blocker).expect("ids");
    let refused = destination
        .runtime
        .restore_checkpoint(&spec, &received, None)
        .expect_err("ids taken");
    if taken == source_ids {
        assert!(
            matches!(
                refused,
                RuntimeError::Checkpoint {
                    source: CheckpointError::IdRangeMismatch { .. },
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(runtime_code(&refused), tonic::Code::FailedPrecondition);
        assert!(destination
            .runtime
            .status(&vps_id)
            .expect("status")
            .is_none());
    } else {
        panic!("the blocker got {taken:?}, not the VPS's {source_ids:?}: {refused:?}");
    }
    destination
        .runtime
        .delete(&blocker)
        .expect("delete blocker");
    let restored = destination
        .runtime
        .restore_checkpoint(
            &spec,
            &received,
            Some(VethAttach {
                host_ifname: net.host_end.clone(),
                bridge: net.bridge.clone(),
            }),
        )
        .expect("restore on the destination");
    let new_init = running_pid(&restored);
    assert_eq!(inner_pid(new_init), "1");
    // The source's stopped copy goes, as a move's cleanup does; the VPS runs on.
    source
        .runtime
        .delete(&vps_id)
        .expect("delete on the source");
    assert!(source.runtime.status(&vps_id).expect("status").is_none());
    assert_eq!(
        sh_ok(&destination.runtime, &vps_id, "cat /counter.pid").trim(),
        counter_pid
    );
    assert_eq!(
        sh_ok(&destination.runtime, &vps_id, "cat /on-disk").trim(),
        "kept"
    );
    let now = count(&destination.runtime, &vps_id);
    wait_until("the counter to go on", WAIT, || {
        count(&destination.runtime, &vps_id) > now
    });
    echo_round(&mut stream, &mut reader, "on the destination");
    let cgroup = std::fs::read_to_string(format!("/proc/{new_init}/cgroup")).expect("cgroup");
    assert!(cgroup.contains(&destination.cgroup_parent), "{cgroup}");
    assert_eq!(
        cgroup_value(&destination.runtime, &vps_id, &["pids.max"]),
        "256"
    );
    let _ = stream.shutdown(Shutdown::Both);
    destination.runtime.delete(&vps_id).expect("delete");
}

/// A live move rolling back on its source: the source restores the newest checkpoint it kept
/// (`held_checkpoint`, what `RestoreCheckpoint`'s `held` form uses), the same processes go on
/// counting, and the spent images are removed once the VPS runs from them.
#[test]
fn a_source_rolling_back_restores_the_checkpoint_it_kept_and_drops_it() {
    if !require_root() {
        return;
    }
    let works = criu_works();
    let mut fx = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let init_pid = running_pid(&fx.runtime.apply(&spec).expect("create"));
    let none = fx
        .runtime
        .held_checkpoint(&vps_id)
        .expect_err("nothing held");
    assert!(
        matches!(
            none,
            RuntimeError::Checkpoint {
                source: CheckpointError::NoImages(_),
                ..
            }
        ),
        "{none:?}"
    );
    assert_eq!(runtime_code(&none), tonic::Code::FailedPrecondition);
    if !works {
        let images = fx.runtime.checkpoint_dir(&vps_id).expect("dir");
        assert_refused_at_check(&fx.runtime, &vps_id, init_pid, &images);
        return;
    }
    let counter_pid = start_counter(&fx.runtime, &vps_id);
    wait_until("the counter to reach 10", WAIT, || {
        count(&fx.runtime, &vps_id) >= 10
    });
    let count_before = count(&fx.runtime, &vps_id);
    let images = fx.runtime.checkpoint_dir(&vps_id).expect("dir");
    fx.runtime
        .checkpoint(&vps_id, &images, CheckpointOptions::default())
        .expect("checkpoint");
    wait_until("the dumped init to go", WAIT, || !pid_running(init_pid));
    assert_eq!(
        fx.runtime.held_checkpoint(&vps_id).expect("held"),
        images,
        "the newest complete checkpoint"
    );
    let restored = fx
        .runtime
        .restore_checkpoint(&spec, &images, None)
        .expect("restore on the source");
    let new_init = running_pid(&restored);
    assert_eq!(inner_pid(new_init), "1");
    assert_eq!(
        sh_ok(&fx.runtime, &vps_id, "cat /counter.pid").trim(),
        counter_pid
    );
    // Counting on from its memory: a loop started afresh would read lower.
    let count_after = count(&fx.runtime, &vps_id);
    assert!(
        count_after >= count_before,
        "{count_after} < {count_before}"
    );
    wait_until("the counter to go on", WAIT, || {
        count(&fx.runtime, &vps_id) > count_after
    });
    assert!(!images.exists(), "the spent images are removed");
    assert!(fx.runtime.held_checkpoint(&vps_id).is_err(), "nothing held");
    fx.runtime.delete(&vps_id).expect("delete");
}
