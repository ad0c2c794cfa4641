//! Tenants, their quotas and their API tokens.

use chrono::Utc;
use tracing::info;

use crate::auth::{self, Principal};
use crate::error::ControllerError;
use crate::model::validate::{self, ValidationError};
use crate::model::{EventKind, Quota, Role, TenantRecord, TokenRecord};
use crate::service::Controller;

/// Tenants, their quotas, suspension and API tokens. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::tenants`].
pub struct Tenants<'a>(&'a Controller);

impl Controller {
    pub fn tenants(&self) -> Tenants<'_> {
        Tenants(self)
    }
}

impl std::ops::Deref for Tenants<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Tenants<'_> {
    /// The quota a tenant gets when created without explicit limits.
    pub fn default_quota(&self) -> Quota {
        let defaults = &self.config.default_quota;
        Quota {
            max_vps: defaults.max_vps,
            vcpus: defaults.vcpus,
            memory_bytes: defaults.memory.0,
            disk_bytes: defaults.disk.0,
            ipv4_count: defaults.ipv4,
        }
    }

    /// Fills unset (zero) fields of `requested` from `base`.
    fn merge_quota(base: Quota, requested: Option<Quota>) -> Result<Quota, ValidationError> {
        let Some(requested) = requested else {
            return Ok(base);
        };
        if !requested.vcpus.is_finite() || requested.vcpus < 0.0 {
            return Err(ValidationError::new(
                "quota.vcpus",
                "must be a finite number >= 0",
            ));
        }
        Ok(Quota {
            max_vps: if requested.max_vps == 0 {
                base.max_vps
            } else {
                requested.max_vps
            },
            vcpus: if requested.vcpus == 0.0 {
                base.vcpus
            } else {
                requested.vcpus
            },
            memory_bytes: if requested.memory_bytes == 0 {
                base.memory_bytes
            } else {
                requested.memory_bytes
            },
            disk_bytes: if requested.disk_bytes == 0 {
                base.disk_bytes
            } else {
                requested.disk_bytes
            },
            ipv4_count: if requested.ipv4_count == 0 {
                base.ipv4_count
            } else {
                requested.ipv4_count
            },
        })
    }

    pub async fn create(
        &self,
        name: &str,
        quota: Option<Quota>,
    ) -> Result<TenantRecord, ControllerError> {
        validate::name("name", name)?;
        let tenant = TenantRecord {
            name: name.to_owned(),
            quota: Self::merge_quota(self.tenants().default_quota(), quota)?,
            used: Quota::default(),
            suspended: false,
            created_at: Utc::now(),
        };
        self.store.create_tenant(&tenant)?;
        self.commit().await?;
        info!(tenant = name, "tenant created");
        Ok(tenant)
    }

    pub fn get(&self, name: &str) -> Result<TenantRecord, ControllerError> {
        validate::name("name", name)?;
        self.store
            .get_tenant(name)?
            .ok_or_else(|| ControllerError::not_found("tenant", name))
    }

    /// Changes a tenant's limits; lowering below current use is allowed (it only blocks growth).
    pub async fn set_quota(
        &self,
        name: &str,
        quota: Option<Quota>,
    ) -> Result<TenantRecord, ControllerError> {
        let current = self.tenants().get(name)?;
        let quota = Self::merge_quota(current.quota, quota)?;
        let updated = self.store.update_tenant(name, &|tenant| {
            tenant.quota = quota.clone();
            Ok(())
        })?;
        self.commit().await?;
        Ok(updated)
    }

    pub async fn delete(&self, name: &str) -> Result<(), ControllerError> {
        validate::name("name", name)?;
        self.store.delete_tenant(name)?;
        self.commit().await?;
        info!(tenant = name, "tenant deleted");
        Ok(())
    }

    /// Suspends or unsuspends a tenant. While suspended its VPSes are held
    /// stopped and start/create are refused; each VPS keeps the power state
    /// its owner chose, so unsuspending restores it.
    pub async fn set_suspended(
        &self,
        name: &str,
        suspended: bool,
        reason: &str,
    ) -> Result<TenantRecord, ControllerError> {
        validate::name("name", name)?;
        let updated = self.store.update_tenant_emitting(name, &|tenant| {
            let changed = tenant.suspended != suspended;
            tenant.suspended = suspended;
            Ok(changed.then_some(if suspended {
                EventKind::Suspended
            } else {
                EventKind::Unsuspended
            }))
        })?;
        self.commit().await?;
        info!(
            tenant = name,
            suspended, reason, "tenant suspension changed"
        );
        let mut nodes: Vec<String> = self
            .store
            .list_vps(Some(name))?
            .into_iter()
            .map(|vps| vps.node)
            .collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes {
            self.reconciler.kick(&node);
        }
        Ok(updated)
    }

    /// Issues a token; the secret is returned once and only its hash is kept.
    pub async fn create_token(
        &self,
        role: Role,
        tenant: &str,
        description: String,
        expires_at: Option<chrono::DateTime<Utc>>,
    ) -> Result<(String, TokenRecord), ControllerError> {
        let tenant = match role {
            Role::Tenant => {
                validate::name("tenant", tenant)?;
                self.tenants().get(tenant)?;
                Some(tenant.to_owned())
            }
            Role::Admin | Role::Billing => {
                if !tenant.is_empty() {
                    return Err(ValidationError::new(
                        "tenant",
                        "must be empty for admin and billing tokens",
                    )
                    .into());
                }
                None
            }
        };
        if expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(ValidationError::new("expires_at", "must be in the future").into());
        }
        let token = auth::mint(role, tenant, description, expires_at);
        self.store.put_token(&token.hash, &token.record)?;
        self.commit().await?;
        Ok((token.secret, token.record))
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<(), ControllerError> {
        if token_id.is_empty() {
            return Err(ValidationError::new("token_id", "is required").into());
        }
        self.store.revoke_token(token_id)?;
        self.commit().await?;
        Ok(())
    }

    /// The caller's own tenant, for `paddock quota`.
    pub fn my_tenant(&self, principal: &Principal) -> Result<TenantRecord, ControllerError> {
        match principal {
            Principal::Tenant { tenant, .. } => self.tenants().get(tenant),
            other => Err(auth::AuthError::Forbidden {
                needed: "a tenant token",
                actual: other.actor(),
            }
            .into()),
        }
    }
}
