//! The `debian-12` template boots as a VPS, logs its boot on the console and stops cleanly on
//! its halt signal. The template is built with debootstrap from the host's Debian mirror (about
//! half a minute), or taken from `PADDOCK_DEBIAN_TEMPLATE` (a built `<state_dir>/templates/
//! debian-12` directory) to save that.

mod common;

use common::*;
use paddock_agent::runtime::Power;
use paddock_agent::template;

#[test]
fn debian_12_template_boots() {
    if !require_root() {
        return;
    }
    let mut fixture = Fixture::new();
    match std::env::var("PADDOCK_DEBIAN_TEMPLATE") {
        Ok(built) => {
            let link = fixture
                .state_dir
                .path()
                .join("templates")
                .join(template::DEBIAN_12);
            std::os::unix::fs::symlink(&built, &link).expect("link template");
        }
        Err(_) => {
            template::build_debian_12(fixture.state_dir.path(), false)
                .expect("build the debian-12 template (debootstrap from the Debian mirror)");
        }
    }
    let vps_id = fixture.new_vps_id();
    let mut debian = spec(&vps_id, small_limits());
    debian.template = template::DEBIAN_12.to_string();
    debian.limits.memory_bytes = 256 << 20;
    debian.limits.disk_bytes = 256 << 20;
    let init_pid = running_pid(&fixture.runtime.apply(&debian).expect("apply"));
    // sysvinit closes its stdio and reopens /dev/console for every message and script: the
    // console supervisor must stay through that, so the boot is on the console and in its log.
    let supervisor = fixture
        .runtime
        .console_supervisor_pid(&vps_id)
        .expect("console supervisor pid");
    let log_path = fixture.runtime.console_log_path(&vps_id);
    wait_until(
        "the end of the boot in console.log",
        std::time::Duration::from_secs(60),
        || {
            std::fs::read(&log_path).is_ok_and(|log| {
                String::from_utf8_lossy(&log).contains("INIT: Entering runlevel: 2")
            })
        },
    );
    let log = String::from_utf8_lossy(&std::fs::read(&log_path).expect("console log")).into_owned();
    eprintln!("debian-12 console.log:\n{log}");
    // Both the init's own messages (the runlevel line waited for) and the boot scripts' reach
    // the log. Not the very first line: one CI run lost "INIT: version" and the line after it
    // while keeping the rest of the boot (not reproduced in 15 local runs, cause unknown; see
    // docs/ARCHITECTURE.md "What the console cannot keep").
    assert!(
        log.contains("concurrent boot in runlevel S"),
        "console.log: {log}"
    );
    assert!(
        pid_running(supervisor),
        "the console supervisor exited during the boot"
    );
    let version = sh_ok(&fixture.runtime, &vps_id, "cat /etc/debian_version");
    assert!(version.starts_with("12"), "{version}");
    assert_eq!(sh_ok(&fixture.runtime, &vps_id, "id -u").trim(), "0");
    // Package-owned files appear owned by the VPS's root and its system users.
    assert_eq!(
        sh_ok(
            &fixture.runtime,
            &vps_id,
            "stat -c %U:%G /usr/bin/passwd /var/log"
        )
        .trim(),
        "root:root\nroot:root"
    );
    sh_ok(
        &fixture.runtime,
        &vps_id,
        "useradd -m alice && su alice -c 'touch ~/x' && ls -l /home/alice/x",
    );
    assert_eq!(
        sh_ok(&fixture.runtime, &vps_id, "cat /proc/1/comm").trim(),
        "init"
    );

    // Stop sends the template's halt signal, SIGPWR (again if it came during the boot
    // scripts, which sysvinit ignores): its powerwait entry shuts down through runlevel 0 to
    // /etc/init.d/halt, the last script, which sources /etc/default/halt.
    let template_dir = fixture
        .state_dir
        .path()
        .join("templates")
        .join(template::DEBIAN_12);
    assert_eq!(
        template::metadata::read(&template_dir)
            .expect("template.conf")
            .map(|m| m.halt_signal),
        Some(template::metadata::HaltSignal::SYSVINIT),
        "rebuild the debian-12 template with this agent: it predates template.conf"
    );
    sh_ok(
        &fixture.runtime,
        &vps_id,
        "echo 'echo halted > /root/halt-ran; sync' >> /etc/default/halt",
    );
    debian.power = Power::Stopped;
    let started = std::time::Instant::now();
    fixture.runtime.apply(&debian).expect("stop");
    eprintln!("debian-12 stopped in {:?}", started.elapsed());
    assert!(!pid_running(init_pid));
    debian.power = Power::Running;
    let second_pid = running_pid(&fixture.runtime.apply(&debian).expect("start again"));
    assert_eq!(
        sh_ok(
            &fixture.runtime,
            &vps_id,
            "cat /root/halt-ran 2>/dev/null || echo none"
        )
        .trim(),
        "halted",
        "the stop must run the shutdown to its end, not SIGKILL the init"
    );

    fixture.runtime.delete(&vps_id).expect("delete");
    fixture.assert_gone(&vps_id, &[init_pid, second_pid, supervisor]);
}
