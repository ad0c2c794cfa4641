//! Tenant quota arithmetic. The checks run inside the store transaction that
//! writes the VPS, so concurrent creates can never overshoot a limit.

use paddock_config::ByteSize;

use super::records::{Quota, Resources, TenantRecord};

/// Which limit of a tenant's quota one more VPS would break, and by how much.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaError {
    #[error("quota exceeded: tenant {tenant} has {used} of {limit} VPSes")]
    Vps {
        tenant: String,
        used: u32,
        limit: u32,
    },
    #[error("quota exceeded: vcpus {used} of {limit} used, plan {plan} needs {need}")]
    Vcpus {
        plan: String,
        used: f64,
        limit: f64,
        need: f64,
    },
    #[error("quota exceeded: memory {} of {} used, plan {plan} needs {}", ByteSize(*used), ByteSize(*limit), ByteSize(*need))]
    Memory {
        plan: String,
        used: u64,
        limit: u64,
        need: u64,
    },
    #[error("quota exceeded: disk {} of {} used, plan {plan} needs {}", ByteSize(*used), ByteSize(*limit), ByteSize(*need))]
    Disk {
        plan: String,
        used: u64,
        limit: u64,
        need: u64,
    },
    #[error("quota exceeded: ipv4 addresses {used} of {limit} used, plan {plan} needs {need}")]
    Ipv4 {
        plan: String,
        used: u32,
        limit: u32,
        need: u32,
    },
}

/// Whether one more VPS with `resources` fits the tenant's quota; the error
/// says which limit and by how much.
pub fn check(tenant: &TenantRecord, resources: &Resources, plan: &str) -> Result<(), QuotaError> {
    let limit = &tenant.quota;
    let used = &tenant.used;
    if used.max_vps + 1 > limit.max_vps {
        return Err(QuotaError::Vps {
            tenant: tenant.name.clone(),
            used: used.max_vps,
            limit: limit.max_vps,
        });
    }
    let plan = plan.to_owned();
    if used.vcpus + resources.vcpus > limit.vcpus + 1e-9 {
        return Err(QuotaError::Vcpus {
            plan,
            used: used.vcpus,
            limit: limit.vcpus,
            need: resources.vcpus,
        });
    }
    if used.memory_bytes.saturating_add(resources.memory_bytes) > limit.memory_bytes {
        return Err(QuotaError::Memory {
            plan,
            used: used.memory_bytes,
            limit: limit.memory_bytes,
            need: resources.memory_bytes,
        });
    }
    if used.disk_bytes.saturating_add(resources.disk_bytes) > limit.disk_bytes {
        return Err(QuotaError::Disk {
            plan,
            used: used.disk_bytes,
            limit: limit.disk_bytes,
            need: resources.disk_bytes,
        });
    }
    if used.ipv4_count + resources.ipv4_count > limit.ipv4_count {
        return Err(QuotaError::Ipv4 {
            plan,
            used: used.ipv4_count,
            limit: limit.ipv4_count,
            need: resources.ipv4_count,
        });
    }
    Ok(())
}

/// Adds `delta` to `used`.
pub fn charge(used: &mut Quota, delta: &Quota) {
    used.max_vps += delta.max_vps;
    used.vcpus += delta.vcpus;
    used.memory_bytes = used.memory_bytes.saturating_add(delta.memory_bytes);
    used.disk_bytes = used.disk_bytes.saturating_add(delta.disk_bytes);
    used.ipv4_count += delta.ipv4_count;
}

/// Subtracts `delta` from `used`, never below zero.
pub fn release(used: &mut Quota, delta: &Quota) {
    used.max_vps = used.max_vps.saturating_sub(delta.max_vps);
    used.vcpus = (used.vcpus - delta.vcpus).max(0.0);
    used.memory_bytes = used.memory_bytes.saturating_sub(delta.memory_bytes);
    used.disk_bytes = used.disk_bytes.saturating_sub(delta.disk_bytes);
    used.ipv4_count = used.ipv4_count.saturating_sub(delta.ipv4_count);
}

/// Charges one more VPS with `resources` to `tenant`, if it fits its quota.
pub fn admit(
    tenant: &mut TenantRecord,
    resources: &Resources,
    plan: &str,
) -> Result<(), QuotaError> {
    check(tenant, resources, plan)?;
    charge(&mut tenant.used, &Quota::of_vps(resources));
    Ok(())
}

/// Moves a VPS's charge from `old` to `new` resources (on `plan`), if the new ones fit.
pub fn resize(
    tenant: &mut TenantRecord,
    old: &Resources,
    new: &Resources,
    plan: &str,
) -> Result<(), QuotaError> {
    release(&mut tenant.used, &Quota::of_vps(old));
    admit(tenant, new, plan)
}

/// Gives a removed VPS's charge back to `tenant`.
pub fn release_vps(tenant: &mut TenantRecord, resources: &Resources) {
    release(&mut tenant.used, &Quota::of_vps(resources));
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn tenant(max_vps: u32, memory_bytes: u64) -> TenantRecord {
        TenantRecord {
            name: "acme".to_owned(),
            quota: Quota {
                max_vps,
                vcpus: 8.0,
                memory_bytes,
                disk_bytes: u64::MAX,
                ipv4_count: 8,
            },
            used: Quota::default(),
            suspended: false,
            created_at: Utc::now(),
        }
    }

    fn need(memory_bytes: u64) -> Resources {
        Resources {
            vcpus: 1.0,
            memory_bytes,
            ..Resources::default()
        }
    }

    #[test]
    fn admit_charges_until_a_limit_and_names_it() {
        let mut acme = tenant(2, 1 << 30);
        admit(&mut acme, &need(1 << 29), "small").expect("fits");
        let error = admit(&mut acme, &need(1 << 30), "big").expect_err("memory");
        assert!(matches!(error, QuotaError::Memory { .. }), "{error}");
        assert!(
            error.to_string().starts_with("quota exceeded: memory"),
            "{error}"
        );
        assert_eq!(acme.used.max_vps, 1, "a refused VPS is not charged");
        admit(&mut acme, &need(1 << 29), "small").expect("fits");
        let error = admit(&mut acme, &need(1), "small").expect_err("count");
        assert_eq!(
            error.to_string(),
            "quota exceeded: tenant acme has 2 of 2 VPSes"
        );
    }

    #[test]
    fn resize_moves_the_charge_and_release_gives_it_back() {
        let mut acme = tenant(1, 1 << 30);
        admit(&mut acme, &need(1 << 29), "small").expect("fits");
        resize(&mut acme, &need(1 << 29), &need(1 << 30), "big")
            .expect("the VPS itself is not counted twice");
        assert_eq!((acme.used.max_vps, acme.used.memory_bytes), (1, 1 << 30));
        release_vps(&mut acme, &need(1 << 30));
        assert_eq!(acme.used, Quota::default());
    }
}
