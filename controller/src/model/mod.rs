//! The domain: the records the controller keeps and the rules over them, as pure
//! functions with typed errors. Nothing here touches the store, the network or the
//! API; the store calls these rules inside its transactions (so every backend applies
//! the same ones) and the services call them around it.
//!
//! May import std and external crates only (checked by `tests/layers.rs`).

pub mod desired;
pub mod ipam;
pub mod metering;
pub mod migration;
pub mod node;
pub mod quota;
mod records;
pub mod routes;
pub mod scheduler;
pub mod snapshots;
pub mod validate;

pub use records::*;
