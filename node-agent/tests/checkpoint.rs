//! Live checkpoints of a running VPS with CRIU against the real kernel.
//! Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

use std::time::Duration;

mod common;

use common::{require_root, running_pid, sh_ok, small_limits, spec, Fixture, exec};
use paddock_agent::runtime::procview::ProcView;
use paddock_agent::runtime::CheckpointOptions;

#[test]
fn explore_dump() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::with_proc_view(ProcView::Host);
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let observed = fx.runtime.apply(&spec).expect("create");
    let pid = running_pid(&observed);
    sh_ok(&fx.runtime, &vps_id, "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.05; done' >/dev/null 2>&1 </dev/null &");
    std::thread::sleep(Duration::from_secs(1));
    let before = sh_ok(&fx.runtime, &vps_id, "cat /count; echo $$");
    let images = fx.state_dir.path().join("ckpt");
    let result = fx.runtime.checkpoint(&vps_id, &images, CheckpointOptions::default());
    eprintln!("pid {pid} before {before} result {result:?}");
    let restored = fx.runtime.restore_checkpoint(&spec, &images, None);
    eprintln!("restored {restored:?}");
    std::process::Command::new("sh").arg("-c").arg(format!("rm -rf /tmp/explore-ckpt; cp -r {} /tmp/explore-ckpt", images.display())).status().ok();
    std::thread::sleep(Duration::from_secs(1));
    if let Ok(r) = &restored { let p = r.init_pid.unwrap(); std::process::Command::new("sh").arg("-c").arg(format!("lsns -p {p}; cat /proc/{p}/cgroup | head -5; grep NSpid /proc/{p}/status; ps -ef | grep {p} | head; for q in $(cat /proc/{p}/task/{p}/children); do grep NSpid /proc/$q/status; cat /proc/$q/cmdline; echo; done")).status().ok(); }
    eprintln!("{:?}", exec(&fx.runtime, &vps_id, &["sh", "-c", "cat /count; ps"]));
}
