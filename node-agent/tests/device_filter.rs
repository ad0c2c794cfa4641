//! The cgroup v2 eBPF device program on the real kernel: attached to a fresh v2 cgroup (the
//! hybrid host's `unified` hierarchy works too), it lets /dev/null through and refuses a
//! device that is not on the list.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use paddock_agent::runtime::{device_filter, ALLOWED_CHAR_DEVICES};

fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[test]
fn v2_device_program_allows_listed_devices_only() {
    if !require_root() {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("skipping: no cgroup2 hierarchy mounted");
        return;
    };
    let dir = root.join(unique("paddock-devtest"));
    std::fs::create_dir(&dir).expect("create v2 cgroup");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    device_filter::attach(&dir, ALLOWED_CHAR_DEVICES).expect("attach");
    // Attaching again (a restart of the VPS) is fine.
    device_filter::attach(&dir, ALLOWED_CHAR_DEVICES).expect("attach again");
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 9; \
         head -c0 /dev/null && echo null-ok; \
         head -c0 /dev/loop-control 2>/dev/null && echo loop-ok; \
         echo done",
        dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("done"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("null-ok"), "/dev/null refused: {stdout}");
    assert!(
        !stdout.contains("loop-ok"),
        "/dev/loop-control allowed: {stdout}"
    );
}
