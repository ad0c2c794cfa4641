//! Tenant quota arithmetic. The checks run inside the store transaction that
//! writes the VPS, so concurrent creates can never overshoot a limit.

use paddock_config::ByteSize;

use super::records::{Quota, Resources, TenantRecord};

/// Whether one more VPS with `resources` fits the tenant's quota; the error
/// says which limit and by how much.
pub fn check(tenant: &TenantRecord, resources: &Resources, plan: &str) -> Result<(), String> {
    let limit = &tenant.quota;
    let used = &tenant.used;
    if used.max_vps + 1 > limit.max_vps {
        return Err(format!(
            "quota exceeded: tenant {} has {} of {} VPSes",
            tenant.name, used.max_vps, limit.max_vps
        ));
    }
    if used.vcpus + resources.vcpus > limit.vcpus + 1e-9 {
        return Err(format!(
            "quota exceeded: vcpus {} of {} used, plan {plan} needs {}",
            used.vcpus, limit.vcpus, resources.vcpus
        ));
    }
    if used.memory_bytes.saturating_add(resources.memory_bytes) > limit.memory_bytes {
        return Err(format!(
            "quota exceeded: memory {} of {} used, plan {plan} needs {}",
            ByteSize(used.memory_bytes),
            ByteSize(limit.memory_bytes),
            ByteSize(resources.memory_bytes)
        ));
    }
    if used.disk_bytes.saturating_add(resources.disk_bytes) > limit.disk_bytes {
        return Err(format!(
            "quota exceeded: disk {} of {} used, plan {plan} needs {}",
            ByteSize(used.disk_bytes),
            ByteSize(limit.disk_bytes),
            ByteSize(resources.disk_bytes)
        ));
    }
    if used.ipv4_count + resources.ipv4_count > limit.ipv4_count {
        return Err(format!(
            "quota exceeded: ipv4 addresses {} of {} used, plan {plan} needs {}",
            used.ipv4_count, limit.ipv4_count, resources.ipv4_count
        ));
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
