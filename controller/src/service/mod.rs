//! The services: the controller's use cases (VPS lifecycle, tenants, nodes, plans, pools,
//! metering, watches, reconciling) over the `Store` trait, the model's rules and the
//! agents. The RPC layer (`api/`) calls these; they know nothing of it.

mod app;
pub mod backups;
pub mod metering;
pub mod migration;
pub mod nodes;
pub mod plans;
pub mod pools;
pub mod reconcile;
pub mod routes;
pub mod snapshots;
pub mod tenants;
pub mod vps;
pub mod watch;

pub use app::Controller;
