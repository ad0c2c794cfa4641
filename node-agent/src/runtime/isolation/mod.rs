//! What keeps a VPS apart from the host and from other VPSes: its namespaces and id mapping,
//! its root filesystem and the host paths it must not see, the capability bounding set, the
//! seccomp filter, the device filter, and its own /proc view (lxcfs and the sysinfo server).

pub mod capabilities;
pub mod device_filter;
pub mod idmap;
pub(crate) mod mountinfo;
pub(crate) mod namespaces;
pub mod procview;
pub(crate) mod rootfs;
pub mod seccomp;
pub(crate) mod sysinfo;
