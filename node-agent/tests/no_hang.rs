//! A start whose helper hangs fails within the start deadline, naming the step it hung in, and
//! leaves no process behind — instead of blocking the VPS (and the agent's apply) forever.
//!
//! The runtime runs a fake helper: for `start` it announces a step the way the real start
//! helper does, puts a daemonized process (as a console supervisor would be) into the VPS's
//! cgroup, and then sleeps; every other helper is the real `paddock-agent`. Needs root; with
//! `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{config, helper_binary, require_root, small_limits, spec, unique};
use paddock_agent::runtime::{ObservedState, Power, Runtime};
use paddock_agent::template;

/// Deletes the VPS and the cgroup parent, also when the test panics.
struct Guard {
    runtime: Runtime,
    vps_id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(error) = self.runtime.delete(&self.vps_id) {
            eprintln!("cleanup: delete {}: {error}", self.vps_id);
        }
        for path in self.runtime.cgroup_paths(&self.vps_id) {
            if let Some(parent) = path.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

const HUNG_STEP: &str = "mount disk, template, overlay and /dev";

#[test]
fn hanging_start_fails_with_the_step_within_the_deadline() {
    if !require_root() {
        return;
    }
    let state_dir = tempfile::Builder::new()
        .prefix("paddock-no-hang")
        .tempdir()
        .expect("temp state dir");
    template::build_busybox(state_dir.path()).expect("busybox template");
    let cgroup_parent = unique("paddock-test-nohang");
    let vps_id = unique("vps");

    // The cgroup paths derive from the id, so the fake can be written before the VPS exists.
    let probe = Runtime::new(config(state_dir.path(), &cgroup_parent)).expect("runtime");
    let joins: String = probe
        .cgroup_paths(&vps_id)
        .iter()
        .map(|dir| format!("echo $$ > {}/cgroup.procs 2>/dev/null; ", dir.display()))
        .collect();
    drop(probe);
    // Outside the state dir, whose files the runtime makes private (0600).
    let fake_dir = tempfile::Builder::new()
        .prefix("paddock-no-hang-helper")
        .tempdir()
        .expect("temp dir");
    let fake = fake_dir.path().join("fake-helper");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\n\
             if [ \"$2\" = start ]; then\n\
             \techo 'paddock-step: {HUNG_STEP}' >&2\n\
             \tsh -c '{joins}exec setsid sleep 3600' </dev/null >/dev/null 2>&1 &\n\
             \texec sleep 3600\n\
             fi\n\
             exec {} \"$@\"\n",
            helper_binary().display()
        ),
    )
    .expect("write fake helper");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod fake helper");

    let deadline = Duration::from_secs(3);
    let mut runtime_config = config(state_dir.path(), &cgroup_parent);
    runtime_config.helper_binary = fake;
    runtime_config.start_timeout = deadline;
    let runtime = Runtime::new(runtime_config).expect("runtime");
    let guard = Guard {
        runtime: runtime.clone(),
        vps_id: vps_id.clone(),
    };

    let (sender, receiver) = mpsc::channel();
    let started = Instant::now();
    let applying = runtime.clone();
    let wanted = spec(&vps_id, small_limits());
    assert_eq!(wanted.power, Power::Running);
    std::thread::spawn(move || {
        let _ = sender.send(applying.apply(&wanted));
    });
    // Generous against a loaded machine; without a deadline the apply never returns.
    let result = receiver
        .recv_timeout(Duration::from_secs(90))
        .expect("the start hung: apply did not return although its helper never finishes");
    let took = started.elapsed();
    let error = result.expect_err("a start whose helper hangs must fail");
    let message = error.to_string();
    assert!(
        message.contains("did not finish within") && message.contains(HUNG_STEP),
        "the error names neither the deadline nor the step: {message}"
    );
    assert!(took >= deadline, "failed before the deadline: {took:?}");

    // Nothing it started remains: the cgroup is empty (the daemonized process included).
    for dir in runtime.cgroup_paths(&vps_id) {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        assert!(
            procs.trim().is_empty(),
            "processes left in {}: {procs}",
            dir.display()
        );
    }
    let observed = runtime
        .status(&vps_id)
        .expect("status")
        .expect("the VPS exists");
    assert_ne!(observed.state, ObservedState::Running);
    drop(guard);
}
