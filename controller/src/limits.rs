//! What a VPS's resources may be, and who may choose them.
//!
//! Every VPS and plan keeps the absolute bounds ([`Bounds`], from `[vps_limits]` in
//! controller.toml plus fixed kernel ranges), whoever asks. A tenant token's overrides on
//! create and resize are narrower, field by field ([`TenantRule`]):
//!
//! | field | tenant token | admin token |
//! |---|---|---|
//! | vcpus, memory_bytes, disk_bytes | any value, charged against the quota | any value |
//! | cpu_weight, swap_bytes, pids_max, io_*, net_* | at most the plan's value (lower only) | any value |
//! | ipv4_count, ipv6_count | fixed by the plan | fixed by the plan |
//!
//! For the rates and `pids_max` a plan's 0 means unlimited, so a tenant may pick any value
//! within the bounds there; a plan's swap of 0 means no swap. An override of 0 always keeps
//! the current (or plan) value: no request turns a limit off.
//!
//! Every check runs before anything is charged or stored.

use paddock_config::{ByteSize, VpsLimits, MIN_PIDS};

use crate::auth::Principal;
use crate::model::{PlanRecord, Resources};

/// The cgroup v2 range of `cpu.weight`.
pub const CPU_WEIGHT_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;
/// The least vCPU share: one 1 ms CFS slice per 100 ms period.
pub const MIN_VCPUS: f64 = 0.01;
/// The most vCPUs of one VPS.
pub const MAX_VCPUS: f64 = 1024.0;
/// The slowest IO rate a VPS may be throttled to (slower ones stall its writeback).
pub const MIN_IO_BYTES_PER_SEC: u64 = 1 << 20;
/// The fewest IO operations per second a VPS may be throttled to.
pub const MIN_IOPS: u64 = 10;
/// The slowest network rate (bits/s) a VPS may be shaped to.
pub const MIN_NET_BITS_PER_SEC: u64 = 100_000;

/// A resource field the caller may not have as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Outside what any VPS or plan may have: bad input, whoever sent it.
    #[error("{field}: {rule}")]
    OutOfBounds { field: String, rule: String },
    /// Beyond what a tenant token may choose; an admin token (or another plan) could.
    #[error("{field}: {rule}")]
    NotPermitted { field: String, rule: String },
}

/// Who picks the values: tenant tokens are held to their plan, admins only to [`Bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chooser {
    Tenant,
    Admin,
}

impl Chooser {
    pub fn of(principal: &Principal) -> Self {
        match principal {
            Principal::Admin { .. } => Self::Admin,
            Principal::Tenant { .. } | Principal::Billing { .. } => Self::Tenant,
        }
    }
}

/// What a tenant token may do with one field of its VPS's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantRule {
    /// A quota resource: any value within the bounds, charged against the tenant's quota.
    Quota,
    /// At most the plan's value; `zero_is_unlimited` says whether a plan's 0 lifts the ceiling.
    PlanCeiling { zero_is_unlimited: bool },
    /// Set by the plan only, for every caller (addresses are not renumbered).
    FromPlan,
}

/// The absolute bounds of every VPS and plan.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub memory: std::ops::RangeInclusive<u64>,
    pub disk: std::ops::RangeInclusive<u64>,
    pub max_swap: u64,
    pub max_pids: u64,
}

impl From<&VpsLimits> for Bounds {
    fn from(limits: &VpsLimits) -> Self {
        Self {
            memory: limits.min_memory.0..=limits.max_memory.0,
            disk: limits.min_disk.0..=limits.max_disk.0,
            max_swap: limits.max_swap.0,
            max_pids: limits.max_pids,
        }
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Self::from(&VpsLimits::default())
    }
}

fn out_of_bounds(prefix: &str, field: &str, rule: String) -> LimitError {
    LimitError::OutOfBounds {
        field: format!("{prefix}{field}"),
        rule,
    }
}

impl Bounds {
    /// Checks a VPS's (or, with `prefix` "plan.resources.", a plan's) resources against the
    /// absolute bounds. 0 passes where it means unlimited (pids, IO and network rates), no
    /// swap, or (plans only) the default CPU weight.
    pub fn check(&self, prefix: &str, resources: &Resources) -> Result<(), LimitError> {
        let Resources {
            vcpus,
            cpu_weight,
            memory_bytes,
            swap_bytes,
            disk_bytes,
            io_read_bytes_per_sec,
            io_write_bytes_per_sec,
            io_read_iops,
            io_write_iops,
            pids_max,
            net_ingress_bits_per_sec,
            net_egress_bits_per_sec,
            ipv4_count: _,
            ipv6_count: _,
        } = resources;
        let fail = |field: &str, rule: String| Err(out_of_bounds(prefix, field, rule));
        if !vcpus.is_finite() || !(MIN_VCPUS..=MAX_VCPUS).contains(vcpus) {
            return fail(
                "vcpus",
                format!("{vcpus} must be a number from {MIN_VCPUS} to {MAX_VCPUS}"),
            );
        }
        if *cpu_weight != 0 && !CPU_WEIGHT_RANGE.contains(cpu_weight) {
            return fail(
                "cpu_weight",
                format!(
                    "{cpu_weight} must be from {} to {} (the cgroup weight range)",
                    CPU_WEIGHT_RANGE.start(),
                    CPU_WEIGHT_RANGE.end()
                ),
            );
        }
        let sizes = [
            ("memory_bytes", *memory_bytes, &self.memory, "memory"),
            ("disk_bytes", *disk_bytes, &self.disk, "disk"),
        ];
        for (field, value, range, what) in sizes {
            if !range.contains(&value) {
                return fail(
                    field,
                    format!(
                        "{} is outside the {what} a VPS may have: at least {}, at most {}",
                        ByteSize(value),
                        ByteSize(*range.start()),
                        ByteSize(*range.end())
                    ),
                );
            }
        }
        if *swap_bytes > self.max_swap {
            return fail(
                "swap_bytes",
                format!(
                    "{} is above the most swap a VPS may have, {}",
                    ByteSize(*swap_bytes),
                    ByteSize(self.max_swap)
                ),
            );
        }
        if *pids_max != 0 && !(MIN_PIDS..=self.max_pids).contains(pids_max) {
            return fail(
                "pids_max",
                format!(
                    "{pids_max} must be from {MIN_PIDS} to {} processes",
                    self.max_pids
                ),
            );
        }
        let rates = [
            (
                "io_read_bytes_per_sec",
                *io_read_bytes_per_sec,
                MIN_IO_BYTES_PER_SEC,
                "bytes/s",
            ),
            (
                "io_write_bytes_per_sec",
                *io_write_bytes_per_sec,
                MIN_IO_BYTES_PER_SEC,
                "bytes/s",
            ),
            ("io_read_iops", *io_read_iops, MIN_IOPS, "IOPS"),
            ("io_write_iops", *io_write_iops, MIN_IOPS, "IOPS"),
            (
                "net_ingress_bits_per_sec",
                *net_ingress_bits_per_sec,
                MIN_NET_BITS_PER_SEC,
                "bits/s",
            ),
            (
                "net_egress_bits_per_sec",
                *net_egress_bits_per_sec,
                MIN_NET_BITS_PER_SEC,
                "bits/s",
            ),
        ];
        for (field, value, min, unit) in rates {
            if value != 0 && value < min {
                return fail(
                    field,
                    format!("{value} {unit} is below the minimum of {min} {unit}"),
                );
            }
        }
        Ok(())
    }

    /// `base` with the non-zero fields of `overrides` chosen by `chooser`: the VPS's resources
    /// on create (`base` = the plan's) or resize (`base` = the current ones, or the new
    /// plan's). A tenant is held to `plan`'s values where [`TenantRule::PlanCeiling`]
    /// applies; everyone to [`Bounds::check`]. Quota is the store's to check.
    pub fn resolve(
        &self,
        chooser: Chooser,
        plan: &PlanRecord,
        base: &Resources,
        overrides: &Resources,
    ) -> Result<Resources, LimitError> {
        let Resources {
            vcpus,
            cpu_weight,
            memory_bytes,
            swap_bytes,
            disk_bytes,
            io_read_bytes_per_sec,
            io_write_bytes_per_sec,
            io_read_iops,
            io_write_iops,
            pids_max,
            net_ingress_bits_per_sec,
            net_egress_bits_per_sec,
            ipv4_count,
            ipv6_count,
        } = overrides;
        let mut out = base.clone();
        // `vcpus != 0.0` is true for NaN, which the bounds then refuse.
        if *vcpus != 0.0 {
            out.vcpus = *vcpus;
        }
        let ceiling = Ceiling { chooser, plan };
        let pick = |field: &'static str, value: u64, plan_value: u64, target: &mut u64| {
            if value == 0 {
                return Ok(());
            }
            ceiling.check(field, value, plan_value)?;
            *target = value;
            Ok::<(), LimitError>(())
        };
        let p = &plan.resources;
        pick(
            "memory_bytes",
            *memory_bytes,
            p.memory_bytes,
            &mut out.memory_bytes,
        )?;
        pick("disk_bytes", *disk_bytes, p.disk_bytes, &mut out.disk_bytes)?;
        pick("swap_bytes", *swap_bytes, p.swap_bytes, &mut out.swap_bytes)?;
        pick("pids_max", *pids_max, p.pids_max, &mut out.pids_max)?;
        pick(
            "io_read_bytes_per_sec",
            *io_read_bytes_per_sec,
            p.io_read_bytes_per_sec,
            &mut out.io_read_bytes_per_sec,
        )?;
        pick(
            "io_write_bytes_per_sec",
            *io_write_bytes_per_sec,
            p.io_write_bytes_per_sec,
            &mut out.io_write_bytes_per_sec,
        )?;
        pick(
            "io_read_iops",
            *io_read_iops,
            p.io_read_iops,
            &mut out.io_read_iops,
        )?;
        pick(
            "io_write_iops",
            *io_write_iops,
            p.io_write_iops,
            &mut out.io_write_iops,
        )?;
        pick(
            "net_ingress_bits_per_sec",
            *net_ingress_bits_per_sec,
            p.net_ingress_bits_per_sec,
            &mut out.net_ingress_bits_per_sec,
        )?;
        pick(
            "net_egress_bits_per_sec",
            *net_egress_bits_per_sec,
            p.net_egress_bits_per_sec,
            &mut out.net_egress_bits_per_sec,
        )?;
        if *cpu_weight != 0 {
            let plan_weight = match p.cpu_weight {
                0 => crate::model::DEFAULT_CPU_WEIGHT,
                weight => weight,
            };
            ceiling.check("cpu_weight", u64::from(*cpu_weight), u64::from(plan_weight))?;
            out.cpu_weight = *cpu_weight;
        }
        for (field, value, current) in [
            ("ipv4_count", *ipv4_count, base.ipv4_count),
            ("ipv6_count", *ipv6_count, base.ipv6_count),
        ] {
            if value != 0 && value != current {
                return Err(out_of_bounds(
                    "",
                    field,
                    format!(
                        "is set by the plan ({current}) and cannot be overridden; \
                         choose a plan with the addresses you need"
                    ),
                ));
            }
        }
        self.check("", &out)?;
        Ok(out)
    }
}

/// What a tenant may do with each field; every field of [`Resources`] has a rule.
pub fn tenant_rule(field: &str) -> Option<TenantRule> {
    Some(match field {
        "vcpus" | "memory_bytes" | "disk_bytes" => TenantRule::Quota,
        "swap_bytes" | "cpu_weight" => TenantRule::PlanCeiling {
            zero_is_unlimited: false,
        },
        "pids_max"
        | "io_read_bytes_per_sec"
        | "io_write_bytes_per_sec"
        | "io_read_iops"
        | "io_write_iops"
        | "net_ingress_bits_per_sec"
        | "net_egress_bits_per_sec" => TenantRule::PlanCeiling {
            zero_is_unlimited: true,
        },
        "ipv4_count" | "ipv6_count" => TenantRule::FromPlan,
        _ => return None,
    })
}

/// A tenant's value against its plan's.
struct Ceiling<'a> {
    chooser: Chooser,
    plan: &'a PlanRecord,
}

impl Ceiling<'_> {
    fn check(&self, field: &'static str, value: u64, plan_value: u64) -> Result<(), LimitError> {
        if self.chooser == Chooser::Admin {
            return Ok(());
        }
        let Some(TenantRule::PlanCeiling { zero_is_unlimited }) = tenant_rule(field) else {
            return Ok(());
        };
        if plan_value == 0 && zero_is_unlimited {
            return Ok(());
        }
        if value <= plan_value {
            return Ok(());
        }
        Err(LimitError::NotPermitted {
            field: field.to_owned(),
            rule: format!(
                "{value} is above plan {}'s {plan_value}: a tenant may lower this limit, \
                 not raise it (choose a bigger plan, or ask the provider)",
                self.plan.name
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TransferOverage;

    fn plan() -> PlanRecord {
        PlanRecord {
            name: "nano".into(),
            resources: Resources {
                vcpus: 1.0,
                cpu_weight: 100,
                memory_bytes: 256 << 20,
                disk_bytes: 2 << 30,
                pids_max: 512,
                io_write_bytes_per_sec: 50 << 20,
                ipv4_count: 1,
                ..Resources::default()
            },
            monthly_transfer_bytes: 0,
            transfer_overage: TransferOverage::Notify,
            max_snapshots: 3,
        }
    }

    fn resolve(chooser: Chooser, overrides: Resources) -> Result<Resources, LimitError> {
        let plan = plan();
        Bounds::default().resolve(chooser, &plan, &plan.resources, &overrides)
    }

    #[test]
    fn a_tenant_may_lower_but_not_raise_plan_limits() {
        let lowered = resolve(
            Chooser::Tenant,
            Resources {
                pids_max: 100,
                cpu_weight: 50,
                io_write_bytes_per_sec: 10 << 20,
                // The plan's 0 = unlimited: any rate is a lowering.
                net_egress_bits_per_sec: 50_000_000,
                ..Resources::default()
            },
        )
        .expect("lowering");
        assert_eq!(lowered.pids_max, 100);
        assert_eq!(lowered.cpu_weight, 50);
        assert_eq!(lowered.net_egress_bits_per_sec, 50_000_000);
        for (overrides, field) in [
            (
                Resources {
                    pids_max: 4_000_000,
                    ..Resources::default()
                },
                "pids_max",
            ),
            (
                Resources {
                    cpu_weight: 10_000,
                    ..Resources::default()
                },
                "cpu_weight",
            ),
            (
                Resources {
                    swap_bytes: 1 << 30,
                    ..Resources::default()
                },
                "swap_bytes",
            ),
            (
                Resources {
                    io_write_bytes_per_sec: 100 << 20,
                    ..Resources::default()
                },
                "io_write_bytes_per_sec",
            ),
        ] {
            match resolve(Chooser::Tenant, overrides) {
                Err(LimitError::NotPermitted { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let admin = resolve(
            Chooser::Admin,
            Resources {
                pids_max: 4096,
                cpu_weight: 10_000,
                ..Resources::default()
            },
        )
        .expect("admin raises");
        assert_eq!((admin.pids_max, admin.cpu_weight), (4096, 10_000));
    }

    #[test]
    fn bounds_hold_for_admins_too() {
        for (overrides, field) in [
            (
                Resources {
                    pids_max: 4_000_000,
                    ..Resources::default()
                },
                "pids_max",
            ),
            (
                Resources {
                    memory_bytes: 1,
                    ..Resources::default()
                },
                "memory_bytes",
            ),
            (
                Resources {
                    disk_bytes: 1024,
                    ..Resources::default()
                },
                "disk_bytes",
            ),
            (
                Resources {
                    vcpus: f64::NAN,
                    ..Resources::default()
                },
                "vcpus",
            ),
            (
                Resources {
                    io_read_iops: 1,
                    ..Resources::default()
                },
                "io_read_iops",
            ),
            (
                Resources {
                    ipv4_count: 5,
                    ..Resources::default()
                },
                "ipv4_count",
            ),
        ] {
            match resolve(Chooser::Admin, overrides) {
                Err(LimitError::OutOfBounds { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_keeps_the_plan_value() {
        let kept = resolve(Chooser::Tenant, Resources::default()).expect("nothing asked");
        assert_eq!(kept, plan().resources);
    }
}
