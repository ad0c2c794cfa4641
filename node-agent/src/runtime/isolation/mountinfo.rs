//! The mounts of this process's mount namespace, from `/proc/self/mountinfo`: one parser for
//! every part of the runtime that asks what is mounted where.

use std::path::PathBuf;

/// One line of mountinfo: the fields the runtime reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mounted directory of its filesystem (`/` for a whole filesystem).
    pub root: String,
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// The filesystem type, e.g. `cgroup2` or `fuse.lxcfs`.
    pub fstype: String,
    /// The filesystem's own options (for cgroup v1: its controllers or `name=`).
    pub super_options: String,
}

/// The mounts of this process's mount namespace, in mount order (the last one on a mount point
/// is the one on top); empty when mountinfo cannot be read.
pub(crate) fn read() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// [`read`] of a mountinfo text; malformed lines are skipped.
pub(crate) fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            // Optional fields sit between the mount options and " - ".
            let (mount, filesystem) = line.split_once(" - ")?;
            let mut mount = mount.split(' ');
            let root = mount.nth(3)?;
            let mount_point = mount.next()?;
            let mut filesystem = filesystem.split(' ');
            let fstype = filesystem.next()?;
            let super_options = filesystem.nth(1).unwrap_or("");
            Some(Mount {
                root: unescape(root),
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_string(),
                super_options: super_options.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/var/lib/lxcfs"), "/var/lib/lxcfs");
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\"), "/a\\");
    }

    #[test]
    fn lines_with_and_without_optional_fields() {
        let mounts = parse(
            "38 31 0:35 / /sys/fs/cgroup/misc rw,relatime shared:14 - cgroup cgroup rw,misc\n\
             90 25 0:50 / /var/lib/a\\040b rw - fuse.lxcfs lxcfs rw,user_id=0\n\
             garbage\n",
        );
        assert_eq!(
            mounts,
            [
                Mount {
                    root: "/".into(),
                    mount_point: PathBuf::from("/sys/fs/cgroup/misc"),
                    fstype: "cgroup".into(),
                    super_options: "rw,misc".into(),
                },
                Mount {
                    root: "/".into(),
                    mount_point: PathBuf::from("/var/lib/a b"),
                    fstype: "fuse.lxcfs".into(),
                    super_options: "rw,user_id=0".into(),
                },
            ]
        );
    }
}
