//! Stopping a VPS sends its init the halt signal its template names (`template.conf`), not a
//! fixed one: test templates whose init is a busybox shell script that exits cleanly on exactly
//! one signal, leaving a marker on the VPS's disk, and only notes the other. Needs root; with
//! `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

mod common;

use std::fs;

use common::*;
use paddock_agent::runtime::{ObservedState, Power, VpsSpec};
use paddock_agent::template::metadata::{self, HaltSignal, TemplateMetadata};

/// An init that exits 0 on `SIG<halts_on>` after writing `/halted-by`, and on `SIG<ignores>`
/// only writes `/ignored-<ignores>` and keeps running. Without a handler, PID 1 of a pid
/// namespace would ignore both anyway: only the trap can end it cleanly.
fn init_script(halts_on: &str, ignores: &str) -> String {
    format!(
        "#!/bin/sh\n\
         trap 'echo {ignores} > /ignored-{ignores}; sync' {ignores}\n\
         trap 'echo {halts_on} > /halted-by; sync; echo \"paddock-test: halted by {halts_on}\"; exit 0' {halts_on}\n\
         echo \"paddock-test: init up, halts on {halts_on}\"\n\
         while :; do sleep 1 & wait $!; done\n"
    )
}

fn script_spec(vps_id: &str, template: &str) -> VpsSpec {
    VpsSpec {
        template: template.to_string(),
        ..spec(vps_id, small_limits())
    }
}

/// Stops the VPS (which must go through the halt signal and the init's handler, not SIGKILL,
/// to leave the markers) and starts it again to read what its init left on the disk.
fn stop_and_restart(fixture: &Fixture, spec: &mut VpsSpec) {
    spec.power = Power::Stopped;
    let observed = fixture.runtime.apply(spec).expect("stop");
    assert_eq!(observed.state, ObservedState::Stopped, "{observed:?}");
    spec.power = Power::Running;
    running_pid(&fixture.runtime.apply(spec).expect("start again"));
}

/// The content of `path` in the running VPS, or `none`.
fn read_marker(fixture: &Fixture, vps_id: &str, path: &str) -> String {
    sh_ok(
        &fixture.runtime,
        vps_id,
        &format!("cat {path} 2>/dev/null || echo none"),
    )
    .trim()
    .to_string()
}

#[test]
fn stop_sends_the_halt_signal_of_the_template() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("halt-pwr");
    let dir = script_template(
        &fixture,
        &template,
        &init_script("PWR", "USR2"),
        Some(&TemplateMetadata {
            halt_signal: HaltSignal::SYSVINIT,
        }),
    );
    let vps_id = fixture.new_vps_id();
    let mut spec = script_spec(&vps_id, &template);
    let first_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    // The signal was fixed when the init started: changing the template under the running
    // VPS does not change what stops it.
    metadata::write(
        &dir,
        &TemplateMetadata {
            halt_signal: HaltSignal::BUSYBOX,
        },
    )
    .expect("rewrite template.conf");

    stop_and_restart(&fixture, &mut spec);
    assert_eq!(
        read_marker(&fixture, &vps_id, "/halted-by"),
        "PWR",
        "the init must exit through its SIGPWR handler, not be killed"
    );
    assert_eq!(
        read_marker(&fixture, &vps_id, "/ignored-USR2"),
        "none",
        "SIGUSR2 must not be sent to a SIGPWR template"
    );
    assert!(!pid_running(first_pid));

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid]);
}

#[test]
fn template_without_metadata_is_halted_with_sigusr2() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("halt-legacy");
    script_template(&fixture, &template, &init_script("USR2", "PWR"), None);
    let vps_id = fixture.new_vps_id();
    let mut spec = script_spec(&vps_id, &template);
    let first_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    stop_and_restart(&fixture, &mut spec);
    assert_eq!(
        read_marker(&fixture, &vps_id, "/halted-by"),
        "USR2",
        "a template without metadata is halted with SIGUSR2, as before metadata"
    );
    assert_eq!(
        read_marker(&fixture, &vps_id, "/ignored-PWR"),
        "none",
        "only the halt signal is sent"
    );

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid]);
}

#[test]
fn state_written_before_halt_signals_still_stops_with_the_template_signal() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("halt-upgrade");
    script_template(
        &fixture,
        &template,
        &init_script("PWR", "USR2"),
        Some(&TemplateMetadata {
            halt_signal: HaltSignal::SYSVINIT,
        }),
    );
    let vps_id = fixture.new_vps_id();
    let mut spec = script_spec(&vps_id, &template);
    let first_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    // As if an older agent had started this init: its record has no halt signal.
    let state_file = fixture.vps_dir(&vps_id).join("state.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&state_file).expect("read state")).expect("json");
    let fields = record.as_object_mut().expect("state is an object");
    assert_eq!(fields.remove("halt_signal"), Some("SIGPWR".into()));
    fs::write(&state_file, serde_json::to_vec(&record).expect("encode")).expect("write state");

    // A restarted (upgraded) agent adopts it and stops it with the template's signal.
    let restarted = fixture.restarted_runtime();
    spec.power = Power::Stopped;
    assert_eq!(
        restarted.apply(&spec).expect("stop").state,
        ObservedState::Stopped
    );
    stop_and_restart(&fixture, &mut spec);
    assert_eq!(read_marker(&fixture, &vps_id, "/halted-by"), "PWR");
    assert_eq!(read_marker(&fixture, &vps_id, "/ignored-USR2"), "none");

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid]);
}

#[test]
fn halt_signal_is_sent_again_while_the_init_runs() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("halt-again");
    // Like an init that is not ready for the first signal (busybox init before its handlers
    // exist, sysvinit during its boot scripts): it halts only on the second SIGPWR.
    let script = "#!/bin/sh\n\
                  count=0\n\
                  trap 'count=$((count + 1)); echo $count > /pwr-count; sync; \
                  if [ $count -ge 2 ]; then exit 0; fi' PWR\n\
                  while :; do sleep 1 & wait $!; done\n";
    script_template(
        &fixture,
        &template,
        script,
        Some(&TemplateMetadata {
            halt_signal: HaltSignal::SYSVINIT,
        }),
    );
    let vps_id = fixture.new_vps_id();
    let mut spec = script_spec(&vps_id, &template);
    let first_pid = running_pid(&fixture.runtime.apply(&spec).expect("apply"));

    stop_and_restart(&fixture, &mut spec);
    assert_eq!(
        read_marker(&fixture, &vps_id, "/pwr-count"),
        "2",
        "the init must exit through its handler on the second SIGPWR, not be killed"
    );

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[first_pid]);
}

#[test]
fn invalid_template_metadata_refuses_to_start_naming_the_file() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    let template = unique("halt-bad");
    let dir = script_template(&fixture, &template, &init_script("PWR", "USR2"), None);
    fs::write(
        metadata::metadata_path(&dir),
        "format=1\nhalt_signal=SIGKILL\n",
    )
    .expect("write template.conf");
    let vps_id = fixture.new_vps_id();
    let err = fixture
        .runtime
        .apply(&script_spec(&vps_id, &template))
        .expect_err("invalid metadata must not start");
    let message = err.to_string();
    assert!(message.contains("template.conf"), "{message}");
    assert!(message.contains("SIGKILL cannot be caught"), "{message}");
    let observed = fixture
        .runtime
        .status(&vps_id)
        .expect("status")
        .expect("created, not started");
    assert_eq!(observed.state, ObservedState::Stopped, "{observed:?}");

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[]);
}
