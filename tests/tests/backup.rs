//! Backups through the CLI, end to end: files written inside a VPS (owners, modes, hard
//! links, symlinks, a deleted template file) come back identical, as seen inside, in a new
//! VPS with another host id range and in place; a corrupted or truncated archive is refused
//! and changes nothing; a deleted backup is gone from the store.

use std::path::PathBuf;

use paddock_tests::{require_root, Cluster};

fn acme<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["--context", "acme"][..], args].concat()
}

/// Files of every kind, owned by several users, and a template file deleted (a whiteout).
const WRITE: &str = "set -e
mkdir -p /srv/data/sub
echo hello > /srv/data/a
chown 1000:100 /srv/data/a
chmod 640 /srv/data/a
ln /srv/data/a /srv/data/a-link
ln -s a /srv/data/sym
echo secret > /srv/data/sub/b
chown -R 33:33 /srv/data/sub
chmod 4755 /srv/data/sub/b
test -e /bin/vi
rm /bin/vi
sync";

/// What the guest sees of those files: names, owners, modes, link counts, types, content.
const DESCRIBE: &str = "set -e
cd /srv/data
for f in a a-link sym sub sub/b; do stat -c '%n %u:%g %a %h %F' $f; done
readlink sym
cat a sub/b
test ! -e /bin/vi && echo vi-gone";

fn archive_path(backup: &serde_json::Value) -> PathBuf {
    let location = backup["location"].as_str().unwrap_or_default();
    PathBuf::from(
        location
            .strip_prefix("local:")
            .unwrap_or_else(|| panic!("location {location}")),
    )
}

#[test]
fn a_backup_restores_into_a_new_vps_and_in_place_and_a_corrupt_one_is_refused() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::start().expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&acme(&["create", "b1", "--plan", "nano", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    cluster.sh_ok("acme", "b1", WRITE);
    let original = cluster.sh_ok("acme", "b1", DESCRIBE);
    assert!(
        original.contains("a 1000:100 640 2 regular file"),
        "{original}"
    );
    assert!(original.contains("vi-gone"), "{original}");

    // A backup of the running VPS.
    let backup = cluster
        .json(&acme(&["backup", "create", "b1"]))
        .unwrap_or_else(|e| panic!("backup: {e}\n{}", cluster.log("agent.log")));
    let backup_id = backup["id"].as_str().expect("id").to_owned();
    let archive = archive_path(&backup);
    let good = std::fs::read(&archive).expect("archive in the store");
    assert_eq!(
        good.len() as u64,
        backup["size_bytes"].as_u64().expect("size")
    );
    let listed = cluster
        .json(&acme(&["backup", "list", "b1"]))
        .expect("list");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["id"], backup_id.as_str());
    assert_eq!(listed[0]["plan"], "nano");

    // Into a new VPS: another host id range, the same files as seen inside.
    cluster
        .cli_ok(&acme(&["backup", "restore", &backup_id, "--to", "b2"]))
        .unwrap_or_else(|e| panic!("restore --to: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(cluster.sh_ok("acme", "b2", DESCRIBE), original);
    let map = |vps| cluster.sh_ok("acme", vps, "cat /proc/self/uid_map");
    assert_ne!(map("b1"), map("b2"), "the two VPSes share an id range");
    let shown = cluster.json(&acme(&["show", "b2"])).expect("show b2");
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["plan"], "nano");

    // A stopped VPS is backed up from its image and restored in place staying stopped.
    cluster.cli_ok(&acme(&["stop", "b2"])).expect("stop b2");
    let stopped = cluster
        .json(&acme(&["backup", "create", "b2"]))
        .unwrap_or_else(|e| panic!("backup of stopped: {e}\n{}", cluster.log("agent.log")));
    let stopped_id = stopped["id"].as_str().expect("id").to_owned();
    let shown = cluster
        .json(&acme(&[
            "backup",
            "restore",
            &stopped_id,
            "--in-place",
            "--yes",
        ]))
        .unwrap_or_else(|e| panic!("restore stopped: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(shown["state"], "stopped", "{shown}");
    cluster.cli_ok(&acme(&["start", "b2"])).expect("start b2");
    assert_eq!(cluster.sh_ok("acme", "b2", DESCRIBE), original);
    cluster
        .cli_ok(&acme(&["backup", "delete", &stopped_id]))
        .expect("delete stopped backup");

    // A change after the backup, then a corrupted and a truncated archive: refused, and the
    // VPS keeps running with its change and its init.
    cluster.sh_ok("acme", "b1", "echo changed > /srv/data/a");
    let init_pid = cluster.json(&acme(&["show", "b1"])).expect("show")["init_pid"].clone();
    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x40;
    for (what, bytes) in [
        ("corrupted", corrupt),
        ("truncated", good[..good.len() - 100].to_vec()),
    ] {
        std::fs::write(&archive, &bytes).expect("damage the archive");
        let out = cluster
            .cli(&acme(&[
                "backup",
                "restore",
                &backup_id,
                "--in-place",
                "--yes",
            ]))
            .expect("run restore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what} archive restored");
        assert!(
            stderr.contains("corrupted or truncated") && stderr.contains("nothing was changed"),
            "{what}: {stderr}"
        );
        assert_eq!(cluster.sh_ok("acme", "b1", "cat /srv/data/a"), "changed\n");
        let shown = cluster.json(&acme(&["show", "b1"])).expect("show");
        assert_eq!(shown["init_pid"], init_pid, "{what}: the VPS was restarted");
        assert_eq!(shown["state"], "running");
    }

    // The intact archive in place: the change is gone, the VPS runs again.
    std::fs::write(&archive, &good).expect("repair the archive");
    cluster
        .cli_ok(&acme(&[
            "backup",
            "restore",
            &backup_id,
            "--in-place",
            "--yes",
        ]))
        .unwrap_or_else(|e| panic!("restore --in-place: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(cluster.sh_ok("acme", "b1", DESCRIBE), original);
    let shown = cluster.json(&acme(&["show", "b1"])).expect("show");
    assert_eq!(shown["state"], "running", "{shown}");
    assert_ne!(shown["init_pid"], init_pid);

    // Another tenant sees none of it.
    cluster.add_tenant("other").expect("tenant");
    let theirs = cluster
        .json(&["--context", "other", "backup", "list"])
        .expect("list as other");
    assert_eq!(theirs.as_array().map(Vec::len), Some(0), "{theirs}");
    let out = cluster
        .cli(&["--context", "other", "backup", "delete", &backup_id])
        .expect("delete as other");
    assert!(!out.status.success());
    assert!(archive.exists());

    // Deleted: gone from the list and from the store; events and audit recorded.
    cluster
        .cli_ok(&acme(&["backup", "delete", &backup_id]))
        .expect("delete");
    let listed = cluster.json(&acme(&["backup", "list"])).expect("list");
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert!(!archive.exists(), "archive left in the store");
    let audit = cluster
        .cli_ok(&["--context", "admin", "admin", "audit", "--limit", "1000"])
        .expect("audit");
    for method in ["CreateBackup", "RestoreBackup", "DeleteBackup"] {
        assert!(audit.contains(method), "{method} not audited:\n{audit}");
    }

    let ids: Vec<String> = ["b1", "b2"]
        .iter()
        .map(|vps| {
            let shown = cluster.json(&acme(&["show", vps])).expect("show");
            shown["id"].as_str().expect("id").to_owned()
        })
        .collect();
    for vps in ["b1", "b2"] {
        cluster
            .cli_ok(&acme(&["delete", vps, "--yes"]))
            .expect("delete VPS");
    }
    for vps_id in &ids {
        let left = cluster.leftovers(vps_id);
        assert!(left.is_empty(), "left behind: {left:?}");
        let staging = cluster
            .agent_state_dir()
            .join("vps")
            .join(vps_id)
            .join("disk.img.restore");
        assert!(
            !staging.exists(),
            "staging image left: {}",
            staging.display()
        );
    }
}

/// A backup taken on one node restores on another: the agents share the default backup
/// store (`backups/` beside their state dirs), and the new VPS lands on the emptier node.
#[test]
fn a_backup_taken_on_one_node_restores_on_another() {
    use paddock_tests::multinode::{MultiNode, PLAN};

    if !require_root() {
        return;
    }
    let cluster = MultiNode::start(2).expect("start two nodes");
    let fail = |what: String| -> ! { panic!("{what}\n{}", cluster.diagnostics()) };
    cluster
        .add_tenant("acme", &[])
        .unwrap_or_else(|e| fail(format!("{e:#}")));
    let acme = |args: &[&str]| -> Vec<String> {
        ["--context", "acme"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: &[&str]| -> serde_json::Value {
        let owned = acme(args);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        cluster
            .json(&refs)
            .unwrap_or_else(|e| fail(format!("{}: {e:#}", args.join(" "))))
    };
    run(&["create", "m1", "--plan", PLAN, "--wait"]);
    let script = "set -e; echo moved > /root/f; chown 1000:1000 /root/f; chmod 600 /root/f; \
                  stat -c '%u:%g %a' /root/f; cat /root/f";
    let written = cluster.sh("acme", "m1", script).expect("exec");
    assert!(written.status.success(), "{written:?}");
    let backup = run(&["backup", "create", "m1"]);
    let backup_id = backup["id"].as_str().expect("id").to_owned();
    let restored = run(&["backup", "restore", &backup_id, "--to", "m2"]);
    let m1 = run(&["show", "m1"]);
    assert_ne!(
        restored["node"], m1["node"],
        "expected the restore on the other node"
    );
    assert_eq!(restored["state"], "running", "{restored}");
    let seen = cluster
        .sh("acme", "m2", "stat -c '%u:%g %a' /root/f; cat /root/f")
        .expect("exec");
    assert!(seen.status.success(), "{seen:?}");
    assert_eq!(
        String::from_utf8_lossy(&seen.stdout),
        "1000:1000 600\nmoved\n"
    );
    run(&["backup", "delete", &backup_id]);
    cluster.finish();
}

/// The S3-compatible backup store (moto, checking signatures): the archive and its manifest
/// are objects in the bucket (the agent's spool directory empty once a backup or a restore is
/// done), a restore comes from the bucket, a damaged object is refused with nothing changed,
/// and a deleted backup leaves no object behind.
#[test]
fn a_backup_in_an_s3_bucket_restores_from_it_and_a_damaged_object_is_refused() {
    use paddock_tests::s3::{require_moto, S3Server};

    if !require_root() || !require_moto() {
        return;
    }
    let s3 = S3Server::start(std::net::Ipv4Addr::LOCALHOST).expect("start the S3 service");
    let setting = s3.agent_setting("node-a/", 5).expect("agent setting");
    let cluster =
        Cluster::start_with_config(&[], &[("backup_s3", &setting)]).expect("start cluster");
    cluster.add_tenant("acme").expect("tenant");
    cluster
        .cli_ok(&acme(&["create", "s1", "--plan", "nano", "--wait"]))
        .unwrap_or_else(|e| panic!("create: {e}\n{}", cluster.log("agent.log")));
    cluster.sh_ok("acme", "s1", WRITE);
    let original = cluster.sh_ok("acme", "s1", DESCRIBE);
    let spool = cluster.dir.path().join("backups");
    let spooled = || -> Vec<String> {
        std::fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    let backup = cluster
        .json(&acme(&["backup", "create", "s1"]))
        .unwrap_or_else(|e| panic!("backup: {e}\n{}\n{}", cluster.log("agent.log"), s3.log()));
    let backup_id = backup["id"].as_str().expect("id").to_owned();
    let archive_key = format!("node-a/{backup_id}.tar.zst");
    assert_eq!(
        backup["location"],
        format!("s3://{}/{archive_key}", s3.bucket).as_str()
    );
    let size = backup["size_bytes"].as_u64().expect("size");
    assert_eq!(
        s3.objects().expect("list"),
        vec![
            (
                format!("node-a/{backup_id}.manifest.json"),
                s3.get(&format!("node-a/{backup_id}.manifest.json"))
                    .expect("manifest")
                    .len() as u64
            ),
            (archive_key.clone(), size),
        ]
    );
    assert!(spooled().is_empty(), "left in the spool: {:?}", spooled());

    // Restored from the bucket into a new VPS (another id range, the same files inside).
    cluster
        .cli_ok(&acme(&["backup", "restore", &backup_id, "--to", "s2"]))
        .unwrap_or_else(|e| panic!("restore --to: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(cluster.sh_ok("acme", "s2", DESCRIBE), original);
    assert!(spooled().is_empty(), "left in the spool: {:?}", spooled());

    // A truncated object in the bucket: refused, the VPS keeps running untouched.
    let good = s3.get(&archive_key).expect("get archive");
    s3.put(&archive_key, &good[..good.len() - 100])
        .expect("truncate");
    cluster.sh_ok("acme", "s1", "echo changed > /srv/data/a");
    let init_pid = cluster.json(&acme(&["show", "s1"])).expect("show")["init_pid"].clone();
    let out = cluster
        .cli(&acme(&[
            "backup",
            "restore",
            &backup_id,
            "--in-place",
            "--yes",
        ]))
        .expect("run restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a truncated archive was restored");
    assert!(
        stderr.contains("corrupted or truncated") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(cluster.sh_ok("acme", "s1", "cat /srv/data/a"), "changed\n");
    let shown = cluster.json(&acme(&["show", "s1"])).expect("show");
    assert_eq!(shown["init_pid"], init_pid, "the VPS was restarted");
    assert!(spooled().is_empty(), "left in the spool: {:?}", spooled());

    // Repaired, in place: the change is gone.
    s3.put(&archive_key, &good).expect("repair");
    cluster
        .cli_ok(&acme(&[
            "backup",
            "restore",
            &backup_id,
            "--in-place",
            "--yes",
        ]))
        .unwrap_or_else(|e| panic!("restore --in-place: {e}\n{}", cluster.log("agent.log")));
    assert_eq!(cluster.sh_ok("acme", "s1", DESCRIBE), original);

    // Deleted: no object left.
    cluster
        .cli_ok(&acme(&["backup", "delete", &backup_id]))
        .expect("delete");
    assert_eq!(s3.objects().expect("list"), Vec::new());
    for vps in ["s1", "s2"] {
        cluster
            .cli_ok(&acme(&["delete", vps, "--yes"]))
            .expect("delete VPS");
    }
}
