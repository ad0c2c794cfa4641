//! Metering service: accepts agents' usage samples (the arithmetic is `model::metering`)
//! and answers usage queries for billing.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::auth::Principal;
use crate::error::ControllerError;
use crate::model::metering::*;
use crate::model::validate::ValidationError;
use crate::model::{
    EventKind, EventRecord, TransferOverage, UsageCursorRecord, UsageHourRecord, VpsRecord,
};
use crate::service::Controller;
use crate::store::{UsageHourKey, UsageItem, UsageState, UsageUpdate};

/// Usage samples, transfer limits and usage queries. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::metering`].
pub struct Metering<'a>(&'a Controller);

impl Controller {
    pub fn metering(&self) -> Metering<'_> {
        Metering(self)
    }
}

impl std::ops::Deref for Metering<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Metering<'_> {
    /// Accounts the usage samples of one heartbeat of `node`, in order, in as few store
    /// calls as the store allows (one transaction on sled). Samples of VPSes that are
    /// unknown or placed on another node are dropped. Returns how many samples were accepted
    /// (repeats are not); if the store fails some, the others stand and the first error is
    /// returned.
    ///
    /// The sample that uses up the plan's monthly transfer allowance also
    /// puts the plan's overage action (throttle or suspend) on the VPS, in
    /// the same transaction as the `transfer_100_percent` event, and kicks
    /// the node so the action is applied at once.
    pub fn record_usages(&self, node: &str, samples: &[Sample]) -> Result<usize, ControllerError> {
        if samples.is_empty() {
            // Most heartbeats: no store call at all.
            return Ok(0);
        }
        let now = Utc::now();
        let mut plans: HashMap<String, (u64, TransferOverage)> = HashMap::new();
        let mut accountings = Vec::with_capacity(samples.len());
        let vps_ids: Vec<&str> = samples
            .iter()
            .map(|sample| sample.vps_id.as_str())
            .collect();
        for (sample, vps) in samples.iter().zip(self.store.get_vpses(&vps_ids)?) {
            let Some(vps) = vps else {
                continue;
            };
            if vps.node != node {
                tracing::warn!(node, vps_id = %sample.vps_id, "usage sample for a VPS placed elsewhere");
                continue;
            }
            let plan = match plans.get(&vps.plan) {
                Some(plan) => *plan,
                None => {
                    let plan = self.store.get_plan(&vps.plan)?;
                    let allowance = plan.as_ref().map_or(0, |plan| plan.monthly_transfer_bytes);
                    let overage = plan.map(|plan| plan.transfer_overage).unwrap_or_default();
                    plans.insert(vps.plan.clone(), (allowance, overage));
                    (allowance, overage)
                }
            };
            accountings.push(Accounting::new(vps, sample, plan, now));
        }
        let applies: Vec<_> = accountings
            .iter()
            .map(|accounting| move |state: UsageState| accounting.apply(state))
            .collect();
        let items: Vec<UsageItem<'_>> = accountings
            .iter()
            .zip(&applies)
            .map(|(accounting, apply)| UsageItem {
                vps_id: &accounting.key.vps_id,
                hour_key: &accounting.key,
                apply,
            })
            .collect();
        let mut accepted = 0;
        for result in self.store.record_usages(&items) {
            let Some(update) = result? else {
                continue;
            };
            accepted += 1;
            if let Some(limited) = &update.vps {
                tracing::info!(vps = %limited.name, tenant = %limited.tenant, plan = %limited.plan,
                    limit = ?limited.transfer_limit, "monthly transfer allowance used up");
                self.reconciler.kick(&limited.node);
            }
        }
        Ok(accepted)
    }

    /// Clears every transfer limit whose month is over, each with its
    /// `transfer_limit_ended` event, and kicks the nodes concerned (their
    /// specs no longer carry the limit from `until` on anyway). Reads every VPS: the
    /// reconciler calls it only when one may have ended ([`limit_sweep_due`]).
    ///
    /// [`limit_sweep_due`]: crate::model::metering::limit_sweep_due
    pub fn end_expired_transfer_limits(&self) -> Result<(), ControllerError> {
        let now = Utc::now();
        for vps in self.store.list_vps(None)? {
            if vps.transfer_limit.is_none() || vps.transfer_limit_at(now).is_some() {
                continue;
            }
            let updated = self.store.update_vps_emitting(&vps.vps_id, &|vps| {
                match vps.transfer_limit.take() {
                    Some(limit) if now >= limit.until => {
                        Ok(Some(limit_ended(vps, &limit, "its billing month ended")))
                    }
                    // Replaced or lifted meanwhile: leave it as it is.
                    other => {
                        vps.transfer_limit = other;
                        Ok(None)
                    }
                }
            });
            match updated {
                Ok(updated) if updated.transfer_limit.is_none() => {
                    tracing::info!(vps = %updated.name, tenant = %updated.tenant, "transfer limit ended with its month");
                    self.reconciler.kick(&updated.node);
                }
                Ok(_) => {}
                // Deleted meanwhile.
                Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Ends the transfer limit holding a VPS for the rest of its month
    /// (billing and admins). The allowance stays used up, so the limit does
    /// not come back this month. Returns whether a limit was in force.
    pub async fn lift_transfer_limit(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
    ) -> Result<bool, ControllerError> {
        crate::model::validate::name("tenant", tenant)?;
        let vps = self.find_vps(tenant, name)?;
        let now = Utc::now();
        let actor = principal.actor();
        let lifted = std::sync::atomic::AtomicBool::new(false);
        let updated = self.store.update_vps_emitting(&vps.vps_id, &|vps| {
            let active = vps.transfer_limit_at(now).is_some();
            lifted.store(active, std::sync::atomic::Ordering::Relaxed);
            let why = if active {
                format!("lifted by {actor}")
            } else {
                "its billing month ended".to_owned()
            };
            Ok(vps
                .transfer_limit
                .take()
                .map(|limit| limit_ended(vps, &limit, &why)))
        })?;
        self.commit().await?;
        let lifted = lifted.into_inner();
        if lifted {
            tracing::info!(vps = %updated.name, tenant = %updated.tenant, actor = %actor, "transfer limit lifted");
        }
        self.reconciler.kick(&updated.node);
        Ok(lifted)
    }

    /// This month's transfer of a VPS as users see it.
    pub fn transfer_status(&self, vps: &VpsRecord) -> Result<TransferStatus, ControllerError> {
        let now = Utc::now();
        let month = BillingMonth::of(now);
        let used_bytes = self
            .store
            .get_usage_cursor(&vps.vps_id)?
            .filter(|cursor| cursor.month == month.name)
            .map_or(0, |cursor| cursor.month_transfer_bytes);
        let allowance_bytes = self
            .store
            .get_plan(&vps.plan)?
            .map_or(0, |plan| plan.monthly_transfer_bytes);
        Ok(TransferStatus {
            month: month.name,
            used_bytes,
            allowance_bytes,
            limit: vps.transfer_limit.clone().filter(|limit| now < limit.until),
        })
    }

    /// Which tenant a usage request reads: tenants only their own (another
    /// tenant is `NotFound`, as if it did not exist); billing and admin any,
    /// or every tenant when `requested` is empty and `required` is false.
    pub fn usage_scope(
        &self,
        principal: &Principal,
        requested: &str,
        required: bool,
    ) -> Result<String, ControllerError> {
        match principal {
            Principal::Tenant { tenant, .. } => {
                if !requested.is_empty() && requested != tenant {
                    return Err(ControllerError::not_found("tenant", requested));
                }
                Ok(tenant.clone())
            }
            Principal::Admin { .. } | Principal::Billing { .. } => {
                if requested.is_empty() {
                    if required {
                        return Err(ValidationError::new(
                            "tenant",
                            "is required with a billing or admin token",
                        )
                        .into());
                    }
                    return Ok(String::new());
                }
                crate::model::validate::name("tenant", requested)?;
                Ok(requested.to_owned())
            }
        }
    }

    fn usage_rows(&self, query: &UsageQuery) -> Result<Vec<UsagePeriod>, ControllerError> {
        if query.from >= query.to {
            return Err(ValidationError::new("from", "must be before `to`").into());
        }
        let tenant = (!query.tenant.is_empty()).then_some(query.tenant.as_str());
        let period = if query.daily { DAY_SECS } else { HOUR_SECS };
        let hours =
            self.store
                .list_usage_hours(tenant, floor_to(query.from, HOUR_SECS), query.to)?;
        let mut rows: BTreeMap<(String, i64, String), UsagePeriod> = BTreeMap::new();
        for hour in hours {
            if !query.vps.is_empty() && hour.vps_id != query.vps && hour.vps != query.vps {
                continue;
            }
            let start = floor_to(hour.hour_start, period);
            let row = rows
                .entry((hour.tenant.clone(), start, hour.vps_id.clone()))
                .or_insert_with(|| UsagePeriod {
                    usage: UsageHourRecord {
                        tenant: hour.tenant.clone(),
                        vps_id: hour.vps_id.clone(),
                        hour_start: start,
                        ..UsageHourRecord::default()
                    },
                    period_end: start + period,
                });
            // Hours arrive oldest first: the latest name and plan win.
            row.usage.vps = hour.vps.clone();
            row.usage.plan = hour.plan.clone();
            add(&mut row.usage, &hour);
        }
        Ok(rows.into_values().collect())
    }

    /// Usage rows per VPS and hour (or day: the sum of its hours), ordered by
    /// tenant, period and VPS id, one page at a time.
    pub fn list_usage(
        &self,
        query: &UsageQuery,
        page_size: u32,
        page_token: &str,
    ) -> Result<UsagePage, ControllerError> {
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_token(page_token)?)
        };
        let limit = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let mut rows: Vec<UsagePeriod> = self
            .usage_rows(query)?
            .into_iter()
            .filter(|row| after.as_ref().is_none_or(|after| row_key(row) > *after))
            .take(limit + 1)
            .collect();
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(row_key)
                .map(|k| encode_token(&k))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(UsagePage {
            rows,
            next_page_token,
        })
    }

    /// Per-VPS totals of a tenant over `[from, to)`, and their sum.
    pub fn usage_summary(&self, query: &UsageQuery) -> Result<UsageSummary, ControllerError> {
        let hours = self.usage_rows(&UsageQuery {
            daily: false,
            ..query.clone()
        })?;
        let mut per_vps: BTreeMap<String, UsagePeriod> = BTreeMap::new();
        let mut total = UsagePeriod {
            usage: UsageHourRecord {
                tenant: query.tenant.clone(),
                hour_start: query.from,
                ..UsageHourRecord::default()
            },
            period_end: query.to,
        };
        let mut hours_range: (Option<i64>, Option<i64>) = (None, None);
        for hour in hours {
            hours_range.0 = Some(hours_range.0.map_or(hour.usage.hour_start, |first| {
                first.min(hour.usage.hour_start)
            }));
            hours_range.1 = Some(
                hours_range
                    .1
                    .map_or(hour.period_end, |end| end.max(hour.period_end)),
            );
            let row = per_vps
                .entry(hour.usage.vps_id.clone())
                .or_insert_with(|| UsagePeriod {
                    usage: UsageHourRecord {
                        tenant: hour.usage.tenant.clone(),
                        vps_id: hour.usage.vps_id.clone(),
                        hour_start: query.from,
                        ..UsageHourRecord::default()
                    },
                    period_end: query.to,
                });
            row.usage.vps = hour.usage.vps.clone();
            row.usage.plan = hour.usage.plan.clone();
            add(&mut row.usage, &hour.usage);
            add(&mut total.usage, &hour.usage);
        }
        // An open end of the range is narrowed to the hours that have usage.
        let first = hours_range.0.unwrap_or(query.from).max(query.from);
        let end = hours_range.1.unwrap_or(query.to).min(query.to);
        let mut per_vps: Vec<UsagePeriod> = per_vps.into_values().collect();
        for row in per_vps.iter_mut().chain(std::iter::once(&mut total)) {
            row.usage.hour_start = first;
            row.period_end = end;
        }
        Ok(UsageSummary {
            tenant: query.tenant.clone(),
            per_vps,
            total,
        })
    }
}

/// One usage sample made ready for its store transaction: where it goes and what it is
/// applied with.
struct Accounting {
    key: UsageHourKey,
    sample: Sample,
    /// The plan's monthly transfer allowance and what happens beyond it.
    allowance: u64,
    overage: TransferOverage,
    month: BillingMonth,
    current_month: bool,
    now: DateTime<Utc>,
}

impl Accounting {
    fn new(
        vps: VpsRecord,
        sample: &Sample,
        plan: (u64, TransferOverage),
        now: DateTime<Utc>,
    ) -> Self {
        let mut sample = sample.clone();
        if sample.sampled_at_unix_ms > now.timestamp_millis() + MAX_CLOCK_SKEW_MS {
            sample.sampled_at_unix_ms = now.timestamp_millis();
        }
        let hour_start = floor_to(sample.sampled_at_unix_ms.div_euclid(1000), HOUR_SECS);
        let sampled_at = DateTime::from_timestamp_millis(sample.sampled_at_unix_ms).unwrap_or(now);
        let month = BillingMonth::of(sampled_at);
        let (allowance, overage) = plan;
        Self {
            key: UsageHourKey {
                tenant: vps.tenant,
                hour_start,
                vps_id: vps.vps_id,
            },
            current_month: month == BillingMonth::of(now),
            sample,
            allowance,
            overage,
            month,
            now,
        }
    }

    /// What the sample writes given what its transaction read; `None` to ignore it.
    fn apply(&self, state: UsageState) -> Option<UsageUpdate> {
        let (sample, month) = (&self.sample, &self.month);
        let UsageState {
            cursor: last,
            hour,
            vps,
        } = state;
        // Removed since the lookup above: nothing left to bill.
        let vps = vps?;
        let delta = delta(last.as_ref(), sample)?;
        let (transfer, threshold) = match &last {
            Some(last) if last.month == month.name => {
                (last.month_transfer_bytes, last.month_threshold_percent)
            }
            _ => (0, 0),
        };
        let transfer = transfer
            .saturating_add(delta.net_rx_bytes)
            .saturating_add(delta.net_tx_bytes);
        let crossed = transfer_thresholds(self.allowance, transfer, threshold);
        let mut events: Vec<EventRecord> = crossed
            .iter()
            .map(|kind| EventRecord::of_vps(*kind, &vps))
            .collect();
        // A late sample of a month already over announces, but limits nothing.
        let limit = (self.current_month && crossed.contains(&EventKind::Transfer100Percent))
            .then(|| month.limit(self.overage, self.now))
            .flatten();
        let limited = limit.map(|limit| {
            let mut vps = vps.clone();
            if let Some(ended) = vps.transfer_limit.take() {
                events.push(limit_ended(&vps, &ended, "its billing month ended"));
            }
            events.push(
                EventRecord::of_vps(EventKind::TransferLimited, &vps)
                    .with_detail(describe_limit(&limit)),
            );
            vps.transfer_limit = Some(limit);
            vps
        });
        let mut hour = hour.unwrap_or_else(|| UsageHourRecord {
            tenant: vps.tenant.clone(),
            vps_id: vps.vps_id.clone(),
            hour_start: self.key.hour_start,
            ..UsageHourRecord::default()
        });
        hour.vps = vps.name.clone();
        hour.plan = vps.plan.clone();
        accumulate(&mut hour, &delta);
        let cursor = UsageCursorRecord {
            incarnation: sample.incarnation.clone(),
            sequence: sample.sequence,
            sampled_at_unix_ms: sample.sampled_at_unix_ms,
            counters: sample.counters.clone(),
            month: month.name.clone(),
            month_transfer_bytes: transfer,
            month_threshold_percent: match crossed.last() {
                Some(EventKind::Transfer100Percent) => 100,
                Some(_) => 80,
                None => threshold,
            },
        };
        Some(UsageUpdate {
            cursor,
            hour,
            events,
            vps: limited,
        })
    }
}
