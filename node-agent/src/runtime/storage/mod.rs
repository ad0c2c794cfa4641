//! A VPS's own disk: its ext4 image on a loop device (create, attach, size) and growing it,
//! offline or online while the VPS runs; snapshots of it, stored beside it.

pub mod backup;
pub mod backup_store;
pub mod blank_image;
pub mod disk;
pub(crate) mod disk_growth;
pub mod ext4_identity;
pub mod migration;
pub mod s3;
pub mod snapshot;
