//! Snapshots of a VPS's disk against the real kernel: a running VPS frozen and synced for the
//! copy, restored in place, a stopped VPS's snapshot, and the cgroup thawed when a copy fails.
//! Needs root; with `PADDOCK_REQUIRE_PRIVILEGED=1` a non-root run fails instead of skipping.

use std::fs;
use std::time::Duration;

mod common;

use common::{require_root, running_pid, sh_ok, small_limits, spec, Fixture};
use paddock_agent::runtime::{CopyMethod, Power, Runtime, RuntimeError, SnapshotError, VpsSpec};

const LIMIT: Duration = Duration::from_secs(120);

/// Whether the VPS's cgroup is frozen now (v1 `freezer.state`, v2 `cgroup.freeze`). A VPS
/// without a freezer fails the test: the thaw checks would prove nothing.
fn frozen(runtime: &Runtime, vps_id: &str) -> bool {
    for dir in runtime.cgroup_paths(vps_id) {
        if let Ok(state) = fs::read_to_string(dir.join("freezer.state")) {
            return state.trim() != "THAWED";
        }
        if let Ok(state) = fs::read_to_string(dir.join("cgroup.freeze")) {
            return state.trim() == "1";
        }
    }
    panic!(
        "VPS {vps_id} has no freezer in {:?}",
        runtime.cgroup_paths(vps_id)
    );
}

fn stopped(spec: &VpsSpec) -> VpsSpec {
    VpsSpec {
        power: Power::Stopped,
        ..spec.clone()
    }
}

#[test]
fn a_running_vps_is_snapshotted_and_restored_in_place() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let observed = fx.runtime.apply(&spec).expect("create");
    let first_pid = running_pid(&observed);
    // Written by the running VPS and left in its page cache: the snapshot's syncfs must
    // carry it into the image.
    sh_ok(&fx.runtime, &vps_id, "echo before > /data.txt");

    let info = fx
        .runtime
        .create_snapshot(&vps_id, "one", LIMIT)
        .expect("snapshot of a running VPS");
    assert_eq!(info.name, "one");
    assert!(info.size_bytes >= 64 << 20, "{info:?}");
    assert!(!frozen(&fx.runtime, &vps_id), "left frozen");
    let image = fx.vps_dir(&vps_id).join("snapshots/one.img");
    assert!(image.exists(), "{} missing", image.display());
    if info.method == CopyMethod::Sparse {
        assert!(
            info.allocated_bytes < info.size_bytes,
            "a sparse copy allocates less than the image size: {info:?}"
        );
    }
    // The VPS kept running through the snapshot.
    assert_eq!(
        running_pid(&fx.runtime.status(&vps_id).expect("status").expect("exists")),
        first_pid
    );

    let again = fx
        .runtime
        .create_snapshot(&vps_id, "one", LIMIT)
        .expect_err("a second snapshot of the same name");
    assert!(
        matches!(
            again,
            RuntimeError::Snapshot {
                source: SnapshotError::AlreadyExists(_),
                ..
            }
        ),
        "{again:?}"
    );

    sh_ok(&fx.runtime, &vps_id, "echo after > /data.txt");
    let restored = fx
        .runtime
        .restore_snapshot(&vps_id, "one", LIMIT)
        .expect("restore");
    assert!(restored.was_running);
    assert_eq!(
        fx.runtime
            .status(&vps_id)
            .expect("status")
            .expect("exists")
            .init_pid,
        None,
        "a restore leaves the VPS stopped for the caller to start"
    );
    let observed = fx.runtime.apply(&spec).expect("start again");
    let second_pid = running_pid(&observed);
    assert_ne!(second_pid, first_pid);
    assert_eq!(
        sh_ok(&fx.runtime, &vps_id, "cat /data.txt").trim(),
        "before"
    );

    let listed = fx.runtime.list_snapshots(&vps_id).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0], info, "the snapshot is kept after a restore");
    fx.runtime
        .delete_snapshot(&vps_id, "one")
        .expect("delete snapshot");
    assert!(!image.exists());
    assert!(fx.runtime.list_snapshots(&vps_id).expect("list").is_empty());
    let missing = fx
        .runtime
        .restore_snapshot(&vps_id, "one", LIMIT)
        .expect_err("restore of a deleted snapshot");
    assert!(
        matches!(
            missing,
            RuntimeError::Snapshot {
                source: SnapshotError::NotFound(_),
                ..
            }
        ),
        "{missing:?}"
    );
}

#[test]
fn a_stopped_vps_is_snapshotted_and_deleting_the_vps_deletes_its_snapshots() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    fx.runtime.apply(&spec).expect("create");
    sh_ok(&fx.runtime, &vps_id, "echo kept > /data.txt");
    fx.runtime.apply(&stopped(&spec)).expect("stop");

    fx.runtime
        .create_snapshot(&vps_id, "cold", LIMIT)
        .expect("snapshot of a stopped VPS");
    fx.runtime.apply(&spec).expect("start");
    sh_ok(&fx.runtime, &vps_id, "rm /data.txt");
    fx.runtime.apply(&stopped(&spec)).expect("stop");
    let restored = fx
        .runtime
        .restore_snapshot(&vps_id, "cold", LIMIT)
        .expect("restore");
    assert!(!restored.was_running);
    fx.runtime.apply(&spec).expect("start");
    assert_eq!(sh_ok(&fx.runtime, &vps_id, "cat /data.txt").trim(), "kept");

    let snapshots = fx.vps_dir(&vps_id).join("snapshots");
    assert!(snapshots.is_dir());
    fx.runtime.delete(&vps_id).expect("delete VPS");
    assert!(!snapshots.exists(), "the VPS's snapshots outlived it");
    fx.assert_gone(&vps_id, &[]);
}

#[test]
fn a_failed_copy_thaws_the_vps() {
    if !require_root() {
        return;
    }
    let mut fx = Fixture::new();
    let vps_id = fx.new_vps_id();
    let spec = spec(&vps_id, small_limits());
    let pid = running_pid(&fx.runtime.apply(&spec).expect("create"));

    let error = fx
        .runtime
        .create_snapshot(&vps_id, "late", Duration::ZERO)
        .expect_err("a copy with no time");
    assert!(
        matches!(
            error,
            RuntimeError::Snapshot {
                source: SnapshotError::Deadline { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        !frozen(&fx.runtime, &vps_id),
        "left frozen after a failed copy"
    );
    assert!(fx.runtime.list_snapshots(&vps_id).expect("list").is_empty());
    let left: Vec<_> = fs::read_dir(fx.vps_dir(&vps_id).join("snapshots"))
        .expect("snapshots dir")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "partial copy left: {left:?}");
    // The VPS still answers (a frozen one would not) and kept its init.
    assert_eq!(sh_ok(&fx.runtime, &vps_id, "echo alive").trim(), "alive");
    assert_eq!(
        running_pid(&fx.runtime.status(&vps_id).expect("status").expect("exists")),
        pid
    );

    let bad = fx
        .runtime
        .create_snapshot(&vps_id, "Bad/Name", LIMIT)
        .expect_err("invalid name");
    assert!(
        matches!(
            bad,
            RuntimeError::Snapshot {
                source: SnapshotError::InvalidName { .. },
                ..
            }
        ),
        "{bad:?}"
    );
}

/// A loop-mounted xfs with reflink made by the test in a temp dir, unmounted on drop.
struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    fn mount_point(&self) -> std::path::PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.mount_point())
            .status();
    }
}

fn make_xfs() -> Option<Xfs> {
    use std::process::Command;
    let has_mkfs = Command::new("mkfs.xfs").arg("-V").output().is_ok();
    if !has_mkfs {
        if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("mkfs.xfs is missing (scripts/deps.sh installs xfsprogs)");
        }
        eprintln!("skipping: no mkfs.xfs");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("paddock-xfs-test")
        .tempdir()
        .expect("tempdir");
    let image = dir.path().join("xfs.img");
    fs::File::create(&image)
        .and_then(|f| f.set_len(512 << 20))
        .expect("image");
    let mkfs = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&image)
        .output()
        .expect("mkfs.xfs");
    assert!(mkfs.status.success(), "mkfs.xfs: {mkfs:?}");
    let xfs = Xfs { dir };
    fs::create_dir(xfs.mount_point()).expect("mount point");
    let mount = Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(xfs.mount_point())
        .output()
        .expect("mount");
    assert!(mount.status.success(), "mount xfs: {mount:?}");
    Some(xfs)
}

#[test]
fn a_copy_on_xfs_with_reflink_is_a_reflink() {
    use paddock_agent::runtime::storage::snapshot::copy_image;
    use std::io::Write;

    if !require_root() {
        return;
    }
    let Some(xfs) = make_xfs() else { return };
    let from = xfs.mount_point().join("disk.img");
    let mut file = fs::File::create(&from).expect("create");
    file.set_len(256 << 20).expect("size");
    let block: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    for _ in 0..32 {
        file.write_all(&block).expect("write");
    }
    file.sync_all().expect("sync");
    drop(file);
    let to = xfs.mount_point().join("snapshot.img");
    let method = copy_image(&from, &to, LIMIT).expect("copy");
    assert_eq!(method, CopyMethod::Reflink);
    assert_eq!(fs::read(&from).expect("read"), fs::read(&to).expect("read"));
    // The same copy on a filesystem without reflink (the temp dir's) is sparse.
    let elsewhere = xfs.dir.path().join("copy.img");
    let method = copy_image(&from, &elsewhere, LIMIT).expect("copy");
    assert_eq!(method, CopyMethod::Sparse);
    assert_eq!(
        fs::read(&from).expect("read"),
        fs::read(&elsewhere).expect("read")
    );
}
