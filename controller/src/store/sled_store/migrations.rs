//! The migration records of the sled store: tree `migrations`, VPS id -> `MigrationRecord`.
//! The rules are `model::migration`'s; these are its transactions.

use chrono::Utc;
use sled::Transactional;

use super::{
    abort, encode, flatten, node_vps_key, tx_append_event, tx_count_addresses, tx_get, tx_need,
    tx_update_allocation, SledStore,
};
use crate::model::migration::{self, MigrationError, MigrationPhase, MigrationRecord, PhaseNote};
use crate::model::{EventRecord, PoolRecord, Power, UsageCursorRecord, VpsRecord};
use crate::store::{AfterCommit, Conflict, StoreError};

const TREE: &str = "migrations";

fn power(was_running: bool) -> Power {
    if was_running {
        Power::Running
    } else {
        Power::Stopped
    }
}

impl SledStore {
    fn migration_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TREE)?)
    }

    pub(super) fn plan_migration_impl(
        &self,
        record: &MigrationRecord,
    ) -> Result<VpsRecord, StoreError> {
        let tree = self.migration_tree()?;
        let vps_id = record.vps_id.as_str();
        let result = flatten(
            (&self.vps, &self.pools, &self.node_allocations, &tree).transaction(
                |(all, pools, allocations, migrations)| {
                    let mut vps =
                        tx_need::<VpsRecord>(all, "vps", vps_id.as_bytes(), "VPS", vps_id)?;
                    if vps.deleting {
                        return abort(StoreError::Conflict(Conflict::VpsDeleting {
                            name: vps.name.clone(),
                        }));
                    }
                    if let Some(existing) =
                        tx_get::<MigrationRecord>(migrations, TREE, vps_id.as_bytes())?
                    {
                        return abort(
                            MigrationError::InProgress {
                                vps: vps.name.clone(),
                                phase: existing.phase.as_str(),
                            }
                            .into(),
                        );
                    }
                    if let Err(error) = migration::check_plan(&vps, record) {
                        return abort(error.into());
                    }
                    if let Some(network) = &record.new_network {
                        let mut pool = tx_need::<PoolRecord>(
                            pools,
                            "pools",
                            network.pool.as_bytes(),
                            "pool",
                            network.pool.clone(),
                        )?;
                        let taken = match migration::reserve_addresses(record, &mut pool) {
                            Ok(taken) => taken,
                            Err(error) => return abort(error.into()),
                        };
                        pools.insert(network.pool.as_bytes(), encode(&pool))?;
                        tx_count_addresses(allocations, &pool, i64::from(taken))?;
                    }
                    tx_update_allocation(allocations, &record.destination, |allocation| {
                        migration::reserve_capacity(allocation, &vps);
                    })?;
                    migration::hold(&mut vps, record);
                    all.insert(vps_id.as_bytes(), encode(&vps))?;
                    migrations.insert(vps_id.as_bytes(), encode(record))?;
                    Ok(vps)
                },
            ),
        );
        self.published(vps_id, result)
    }

    pub(super) fn get_migration_impl(
        &self,
        vps_id: &str,
    ) -> Result<Option<MigrationRecord>, StoreError> {
        Self::get(&self.migration_tree()?, TREE, vps_id.as_bytes())
    }

    pub(super) fn list_migrations_impl(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        Self::scan(&self.migration_tree()?, TREE)
    }

    pub(super) fn set_migration_phase_impl(
        &self,
        vps_id: &str,
        phase: MigrationPhase,
        note: PhaseNote,
    ) -> Result<MigrationRecord, StoreError> {
        let tree = self.migration_tree()?;
        flatten(tree.transaction(|migrations| {
            let mut record = tx_need::<MigrationRecord>(
                migrations,
                TREE,
                vps_id.as_bytes(),
                "migration",
                vps_id,
            )?;
            if !migration::advance(&mut record, phase, &note) {
                return Ok(record);
            }
            migrations.insert(vps_id.as_bytes(), encode(&record))?;
            Ok(record)
        }))
    }

    pub(super) fn switch_migration_impl(&self, vps_id: &str) -> Result<VpsRecord, StoreError> {
        let tree = self.migration_tree()?;
        let now = Utc::now();
        let result = flatten(
            (
                &self.vps,
                &self.pools,
                &self.node_allocations,
                &self.vps_nodes,
                &self.usage_cursors,
                &self.events,
                &self.events_meta,
                &tree,
            )
                .transaction(
                    |(all, pools, allocations, node_index, cursors, events, meta, migrations)| {
                        let mut record = tx_need::<MigrationRecord>(
                            migrations,
                            TREE,
                            vps_id.as_bytes(),
                            "migration",
                            vps_id,
                        )?;
                        let mut vps =
                            tx_need::<VpsRecord>(all, "vps", vps_id.as_bytes(), "VPS", vps_id)?;
                        if record.phase == MigrationPhase::Switched {
                            return Ok(vps);
                        }
                        if record.phase == MigrationPhase::RollingBack || vps.node != record.source
                        {
                            return abort(
                                MigrationError::Moved {
                                    vps: vps.name.clone(),
                                    node: record.source.clone(),
                                }
                                .into(),
                            );
                        }
                        if let Some(network) = &vps.network {
                            let moving_pool = record.new_network.as_ref().map(|n| n.pool.as_str());
                            if moving_pool != Some(network.pool.as_str()) {
                                if let Some(mut pool) =
                                    tx_get::<PoolRecord>(pools, "pools", network.pool.as_bytes())?
                                {
                                    let released = migration::release_addresses(&mut pool, vps_id);
                                    pools.insert(network.pool.as_bytes(), encode(&pool))?;
                                    tx_count_addresses(allocations, &pool, -i64::from(released))?;
                                }
                            }
                        }
                        tx_update_allocation(allocations, &record.source, |allocation| {
                            migration::release_capacity(allocation, &vps);
                        })?;
                        node_index.remove(node_vps_key(&record.source, vps_id))?;
                        node_index.insert(node_vps_key(&record.destination, vps_id), &[])?;
                        migration::switch_vps(&mut vps, &record);
                        all.insert(vps_id.as_bytes(), encode(&vps))?;
                        if let Some(mut cursor) = tx_get::<UsageCursorRecord>(
                            cursors,
                            "usage_cursors",
                            vps_id.as_bytes(),
                        )? {
                            migration::reset_cursor(&mut cursor, now);
                            cursors.insert(vps_id.as_bytes(), encode(&cursor))?;
                        }
                        record.phase = MigrationPhase::Switched;
                        migrations.insert(vps_id.as_bytes(), encode(&record))?;
                        tx_append_event(
                            events,
                            meta,
                            EventRecord::of_vps(migration::switched_event(&record), &vps)
                                .with_detail(migration::migrated_detail(&record)),
                        )?;
                        Ok(vps)
                    },
                ),
        );
        self.signalled(self.published(vps_id, result))
    }

    pub(super) fn end_migration_impl(
        &self,
        vps_id: &str,
        event: Option<EventRecord>,
    ) -> Result<(), StoreError> {
        let tree = self.migration_tree()?;
        let result = flatten(
            (
                &self.vps,
                &self.pools,
                &self.node_allocations,
                &self.events,
                &self.events_meta,
                &tree,
            )
                .transaction(|(all, pools, allocations, events, meta, migrations)| {
                    let Some(record) =
                        tx_get::<MigrationRecord>(migrations, TREE, vps_id.as_bytes())?
                    else {
                        return Ok(());
                    };
                    migrations.remove(vps_id.as_bytes())?;
                    if record.phase == MigrationPhase::Switched {
                        return Ok(());
                    }
                    if let Some(network) = &record.new_network {
                        let keeps_here = record
                            .old_network
                            .as_ref()
                            .is_some_and(|old| old.pool == network.pool);
                        if !keeps_here {
                            if let Some(mut pool) =
                                tx_get::<PoolRecord>(pools, "pools", network.pool.as_bytes())?
                            {
                                let released = migration::release_addresses(&mut pool, vps_id);
                                pools.insert(network.pool.as_bytes(), encode(&pool))?;
                                tx_count_addresses(allocations, &pool, -i64::from(released))?;
                            }
                        }
                    }
                    if let Some(mut vps) = tx_get::<VpsRecord>(all, "vps", vps_id.as_bytes())? {
                        tx_update_allocation(allocations, &record.destination, |allocation| {
                            migration::release_capacity(allocation, &vps);
                        })?;
                        vps.desired_power = power(record.was_running);
                        all.insert(vps_id.as_bytes(), encode(&vps))?;
                    }
                    if let Some(event) = &event {
                        tx_append_event(events, meta, event.clone())?;
                    }
                    Ok(())
                }),
        );
        self.signalled(self.published(vps_id, result))
    }
}
