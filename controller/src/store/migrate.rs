//! `paddock-controller migrate-store --from sled --to etcd`: copies every record of a sled
//! store (controller stopped: sled's file lock refuses a second opener) into an empty etcd prefix.

use super::etcd_store::EtcdStore;
use super::sled_store::SledStore;
use super::StoreError;

/// What a migration copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Keys written to etcd.
    pub keys: usize,
    /// The highest event cursor (the next event gets the one after).
    pub last_event: u64,
    /// The highest audit sequence number.
    pub last_audit: u64,
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Copies `from` into the empty prefix of `to`; the schema version is written last, so a copy
/// that stops part-way leaves a prefix `open` refuses (delete it and run again).
pub fn sled_to_etcd(from: &SledStore, to: &EtcdStore) -> Result<Migrated, StoreError> {
    if !to.is_empty()? {
        return Err(StoreError::Migrate(format!(
            "the target {} is not empty",
            to.location()
        )));
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut migrated = Migrated::default();
    let mut schema = None;
    for (tree, key, value) in from.dump()? {
        let text = || String::from_utf8_lossy(&key).into_owned();
        match tree.as_str() {
            "plans" | "tenants" | "tokens" | "nodes" | "node_revocations" | "vps" | "vps_names"
            | "usage_cursors" | "usage_hours" | "vps_nodes" | "node_allocations" | "backups"
            | "snapshots" | "migrations" => entries.push((format!("{tree}/{}", text()), value)),
            // The guard only serializes concurrent pool creates; etcd keeps its own.
            "pools" if key.starts_with(b"\0") => {}
            "pools" => entries.push((format!("pools/{}", text()), value)),
            "events" | "audit" => {
                let number = be_u64(&key).ok_or_else(|| {
                    StoreError::Migrate(format!("{tree} key {key:?} is not a sequence number"))
                })?;
                if tree == "events" {
                    migrated.last_event = migrated.last_event.max(number);
                } else {
                    migrated.last_audit = migrated.last_audit.max(number);
                }
                entries.push((format!("{tree}/{number:020}"), value));
            }
            "events_meta" if key == b"last" => {
                let last = be_u64(&value).ok_or_else(|| {
                    StoreError::Migrate("events_meta/last is not a cursor".to_owned())
                })?;
                migrated.last_event = migrated.last_event.max(last);
            }
            "meta" if key == b"schema_version" => schema = Some(value),
            // sled's own default tree, and markers of sled-only layout upgrades.
            "__sled__default" | "meta" | "events_meta" => {}
            other => {
                return Err(StoreError::Migrate(format!(
                    "unknown sled tree {other:?}; is this store from a newer controller?"
                )))
            }
        }
    }
    let schema = schema
        .ok_or_else(|| StoreError::Migrate("the sled store has no schema version".to_owned()))?;
    entries.push((
        "events_last".to_owned(),
        migrated.last_event.to_string().into_bytes(),
    ));
    entries.push((
        "audit_last".to_owned(),
        migrated.last_audit.to_string().into_bytes(),
    ));
    migrated.keys = entries.len() + 1;
    to.import(entries)?;
    to.import(vec![("meta/schema_version".to_owned(), schema)])?;
    Ok(migrated)
}
