//! VPS lifecycle as the controller sees it: validate, check quota, place,
//! record the desired state durably, then let the reconciler converge the node.

use chrono::Utc;
use paddock_config::ByteSize;
use tracing::info;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ControllerError, Precondition};
use crate::limits::{Bounds, Chooser};
use crate::model::scheduler::{self, Overcommit, Placement, Strategy};
use crate::model::validate::{self, ValidationError};
use crate::model::{
    EventKind, EventRecord, Power, RequestOp, Resources, TaggedRequest, TransferOverage, VpsRecord,
};
use crate::requests;
use crate::service::Controller;
use crate::store::{Conflict, StoreError};

/// The default template when a create request names none.
pub const DEFAULT_TEMPLATE: &str = "busybox";

/// A validated create request.
pub struct CreateVps {
    pub tenant: String,
    pub name: String,
    pub plan: String,
    pub template: String,
    pub overrides: Option<Resources>,
    pub start: bool,
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// The client's request id (`crate::requests`), if it sent one.
    pub request_id: Option<String>,
}

impl CreateVps {
    /// What the request asks for, for its request id's fingerprint.
    fn parameters(&self) -> String {
        format!(
            "tenant={} name={} plan={} template={} overrides={:?} start={} selector={:?}",
            self.tenant,
            self.name,
            self.plan,
            self.template,
            self.overrides,
            self.start,
            self.node_selector
        )
    }
}

/// The VPS lifecycle: create, power, restart, rebuild, resize, delete. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::vps`].
pub struct Vps<'a>(&'a Controller);

impl Controller {
    pub fn vps(&self) -> Vps<'_> {
        Vps(self)
    }
}

impl std::ops::Deref for Vps<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Vps<'_> {
    /// The absolute bounds of every VPS's resources, from `[vps_limits]`.
    pub fn bounds(&self) -> Bounds {
        Bounds::from(&self.config.vps_limits)
    }

    /// The configured placement policy with a request's node selector.
    pub(crate) fn placement(
        &self,
        selector: std::collections::BTreeMap<String, String>,
    ) -> Placement {
        let config = &self.config.scheduler;
        Placement {
            overcommit: Overcommit {
                cpu: config.cpu_overcommit,
                memory: config.memory_overcommit,
                disk: config.disk_overcommit,
            },
            strategy: match config.strategy {
                paddock_config::SchedulerStrategy::Spread => Strategy::Spread,
                paddock_config::SchedulerStrategy::Binpack => Strategy::Binpack,
            },
            selector,
        }
    }

    /// Creates a VPS: nothing is stored unless every check passes, and the
    /// quota check and the write are one transaction.
    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateVps,
    ) -> Result<VpsRecord, ControllerError> {
        let tenant_name = self.vps_scope(principal, &request.tenant)?;
        validate::name("name", &request.name)?;
        validate::name("plan", &request.plan)?;
        let tagged = request
            .request_id
            .clone()
            .map(|id| TaggedRequest::new(id, RequestOp::Create, &request.parameters()));
        // A retry of a create that committed is answered with the VPS, whatever changed since.
        let retried = |existing: Option<&VpsRecord>| -> Result<Option<VpsRecord>, ControllerError> {
            match existing {
                Some(existing) if requests::already_done(tagged.as_ref(), existing)? => {
                    Ok(Some(existing.clone()))
                }
                _ => Ok(None),
            }
        };
        // One read of the name serves both the retry and the name-taken check below.
        let existing = self.store.find_vps(&tenant_name, &request.name)?;
        if let Some(existing) = retried(existing.as_ref())? {
            return Ok(existing);
        }
        let template = if request.template.is_empty() {
            DEFAULT_TEMPLATE.to_owned()
        } else {
            request.template
        };
        validate::name("template", &template)?;
        let plan = self.store.get_plan(&request.plan)?.ok_or_else(|| {
            ValidationError::new(
                "plan",
                format!("unknown plan {:?}; see `paddock plans`", request.plan),
            )
        })?;
        // Every limit is checked before anything is charged or stored.
        let resources = self.vps().bounds().resolve(
            Chooser::of(principal),
            &plan,
            &plan.resources,
            &request.overrides.unwrap_or_default(),
        )?;
        let tenant = self
            .store
            .get_tenant(&tenant_name)?
            .ok_or_else(|| ControllerError::not_found("tenant", &tenant_name))?;
        if tenant.suspended {
            return Err(ControllerError::Suspended {
                tenant: tenant_name,
                what: "creating a VPS",
            });
        }
        if existing.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: "VPS",
                name: request.name,
            }
            .into());
        }
        for (key, value) in &request.node_selector {
            if key.is_empty() || key.len() > 253 || value.len() > 63 {
                return Err(ValidationError::new(
                    "node_selector",
                    format!(
                        "label {key:?}={value:?}: keys are 1-253 characters, values at most 63"
                    ),
                )
                .into());
            }
        }
        let node = self.placements.place(
            || {
                let now = Utc::now();
                let mut online_for = std::time::Duration::MAX;
                let mut views = Vec::new();
                for (node, view, _) in self.node_views()? {
                    if view.online {
                        online_for = online_for.min(self.online_for(&node, now));
                    }
                    views.push(view);
                }
                Ok((views, online_for))
            },
            &resources,
            &self.placement(request.node_selector),
        )?;
        let record = VpsRecord {
            vps_id: Uuid::new_v4().to_string(),
            name: request.name,
            tenant: tenant_name,
            plan: plan.name,
            template,
            resources,
            node,
            desired_power: if request.start {
                Power::Running
            } else {
                Power::Stopped
            },
            deleting: false,
            ipv4: Vec::new(),
            network: None,
            rebuild_generation: 0,
            restart_generation: 0,
            created_at: Utc::now(),
            observed: None,
            transfer_limit: None,
            applied_spec: None,
            last_request: tagged.clone(),
        };
        // As stored: with the addresses the create transaction allocated; with the creates
        // made beside it, in one transaction.
        let created = self
            .creates
            .submit(record.clone(), |batch| self.store.create_vpses(&batch))
            .await
            .unwrap_or_else(|| {
                Err(StoreError::BatchLost {
                    what: "the create's transaction".to_owned(),
                })
            });
        let record = match created {
            Ok(stored) => stored,
            Err(error) => {
                self.placements.release(&record.node, &record.resources);
                // The same request, retried while the first attempt was committing.
                if let StoreError::AlreadyExists { .. } = error {
                    let existing = self.store.find_vps(&record.tenant, &record.name)?;
                    if let Some(existing) = retried(existing.as_ref())? {
                        self.commit().await?;
                        return Ok(existing);
                    }
                }
                return Err(error.into());
            }
        };
        self.commit().await?;
        info!(vps = %record.name, tenant = %record.tenant, node = %record.node, actor = %principal.actor(), "VPS created");
        self.reconciler.kick_changed(&record.node, &record.vps_id);
        Ok(record)
    }

    pub fn get(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
    ) -> Result<VpsRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        self.find_vps(&tenant, name)
    }

    /// A tenant's VPSes; admins may list every tenant's by naming none.
    pub fn list(
        &self,
        principal: &Principal,
        tenant: &str,
    ) -> Result<Vec<VpsRecord>, ControllerError> {
        let mut list = match principal {
            Principal::Admin { .. } if tenant.is_empty() => self.store.list_vps(None)?,
            _ => {
                let tenant = self.vps_scope(principal, tenant)?;
                self.store.list_vps(Some(&tenant))?
            }
        };
        list.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        Ok(list)
    }

    /// Changes the desired state of a live (not deleting) VPS of the caller's
    /// scope durably, then kicks its node's reconciler.
    #[allow(clippy::too_many_arguments)]
    async fn change_vps(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        tagged: Option<TaggedRequest>,
        refused_when_suspended: Option<&'static str>,
        event: Option<EventKind>,
        change: &(dyn Fn(&mut VpsRecord) + Sync),
    ) -> Result<VpsRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        let vps = self.find_vps(&tenant, name)?;
        if requests::already_done(tagged.as_ref(), &vps)? {
            return Ok(vps);
        }
        self.refuse_if_migrating(&vps)?;
        if let Some(what) = refused_when_suspended {
            self.refuse_if_suspended(&tenant, what)?;
            refuse_if_transfer_suspended(&vps, what)?;
        }
        let updated = self.store.update_vps_emitting(&vps.vps_id, &|vps| {
            if vps.deleting {
                return Err(StoreError::Conflict(Conflict::VpsDeleting {
                    name: vps.name.clone(),
                }));
            }
            if let Some(tagged) = &tagged {
                // A concurrent retry of the same request committed first.
                if vps
                    .last_request
                    .as_ref()
                    .is_some_and(|last| last.id == tagged.id)
                {
                    return Ok(None);
                }
                vps.last_request = Some(tagged.clone());
            }
            change(vps);
            Ok(event.map(|kind| EventRecord::of_vps(kind, vps)))
        })?;
        self.commit().await?;
        self.reconciler.kick(&updated.node);
        Ok(updated)
    }

    /// Records the desired power state; the reconciler makes it so.
    pub async fn set_power(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        power: Power,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        let refused = (power == Power::Running).then_some("starting a VPS");
        let op = match power {
            Power::Running => RequestOp::Start,
            Power::Stopped => RequestOp::Stop,
        };
        let tagged = request_id.map(|id| TaggedRequest::new(id, op, ""));
        self.change_vps(principal, tenant, name, tagged, refused, None, &|vps| {
            vps.desired_power = power;
        })
        .await
    }

    /// Asks for one restart (stop, then start) of a VPS.
    pub async fn restart(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        let tagged = request_id.map(|id| TaggedRequest::new(id, RequestOp::Restart, ""));
        self.change_vps(
            principal,
            tenant,
            name,
            tagged,
            Some("restarting a VPS"),
            None,
            &|vps| {
                vps.desired_power = Power::Running;
                vps.restart_generation += 1;
                // Until the node reports again, the VPS is on its way back up.
                vps.observed = None;
            },
        )
        .await
    }

    /// Asks for one rebuild of a VPS: a fresh root filesystem from `template` (empty keeps the
    /// current one) on the same disk. The agent carries it out once per generation bump.
    pub async fn rebuild(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        template: &str,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        if !template.is_empty() {
            validate::name("template", template)?;
        }
        let tagged = request_id
            .map(|id| TaggedRequest::new(id, RequestOp::Rebuild, &format!("template={template}")));
        let template = template.to_owned();
        let rebuilt = Some(EventKind::Rebuilt);
        self.change_vps(
            principal,
            tenant,
            name,
            tagged,
            Some("rebuilding a VPS"),
            rebuilt,
            &|vps| {
                if !template.is_empty() {
                    vps.template = template.clone();
                }
                vps.rebuild_generation += 1;
                // Until the node reports again, the VPS is being rebuilt.
                vps.observed = None;
            },
        )
        .await
    }

    /// Changes a VPS's limits (to another plan and/or single overrides) while
    /// it runs; the agent applies them live, growing the disk's filesystem
    /// online. What grows must fit the node; the quota check and the usage
    /// change are one transaction. A disk never shrinks (a smaller plan keeps
    /// it) and the address count stays: renumbering is not supported.
    pub async fn resize(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        plan: &str,
        overrides: Option<Resources>,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        let vps = self.find_vps(&tenant, name)?;
        let tagged = request_id.map(|id| {
            TaggedRequest::new(
                id,
                RequestOp::Resize,
                &format!("plan={plan} overrides={overrides:?}"),
            )
        });
        if requests::already_done(tagged.as_ref(), &vps)? {
            return Ok(vps);
        }
        self.refuse_if_migrating(&vps)?;
        self.refuse_if_suspended(&tenant, "resizing a VPS")?;
        // A tenant's overrides are held to the plan the VPS ends up on.
        let (plan_record, base) = if plan.is_empty() {
            let record = self.store.get_plan(&vps.plan)?.ok_or_else(|| {
                ControllerError::from(Precondition::PlanGone {
                    plan: vps.plan.clone(),
                    vps: vps.name.clone(),
                })
            })?;
            (record, vps.resources.clone())
        } else {
            validate::name("plan", plan)?;
            let record = self.store.get_plan(plan)?.ok_or_else(|| {
                ValidationError::new(
                    "plan",
                    format!("unknown plan {plan:?}; see `paddock plans`"),
                )
            })?;
            let mut base = record.resources.clone();
            // The addresses stay: renumbering is not supported.
            base.ipv4_count = vps.resources.ipv4_count;
            base.ipv6_count = vps.resources.ipv6_count;
            (record, base)
        };
        let overrides = overrides.unwrap_or_default();
        let mut resources =
            self.vps()
                .bounds()
                .resolve(Chooser::of(principal), &plan_record, &base, &overrides)?;
        let plan_name = plan_record.name;
        // A disk only grows: its filesystem is grown in place, and shrinking
        // one under a VPS would lose data. A smaller plan keeps the disk.
        if resources.disk_bytes < vps.resources.disk_bytes {
            if overrides.disk_bytes != 0 {
                return Err(ValidationError::new(
                    "disk_bytes",
                    format!(
                        "a disk cannot shrink (it has {}, asked for {}); it can only grow",
                        ByteSize(vps.resources.disk_bytes),
                        ByteSize(resources.disk_bytes)
                    ),
                )
                .into());
            }
            resources.disk_bytes = vps.resources.disk_bytes;
        }
        // The node must have room for what grows, as a placement would.
        if let Some((_, view, _)) = self
            .node_views()?
            .into_iter()
            .find(|(node, _, _)| node.name == vps.node)
        {
            scheduler::check_growth(
                &view,
                &vps.resources,
                &resources,
                self.placement(Default::default()).overcommit,
            )?;
        }
        let mut updated = self.store.resize_vps(&vps.vps_id, &plan_name, &resources)?;
        // Tagged after the resize, not with it: a resize is idempotent by value, so a crash in
        // between only makes a retry resize to the same limits again.
        if let Some(tagged) = tagged {
            updated = self.store.update_vps(&vps.vps_id, &|vps| {
                vps.last_request = Some(tagged.clone());
                Ok(())
            })?;
        }
        self.commit().await?;
        self.placements.invalidate();
        info!(vps = %updated.name, tenant = %updated.tenant, plan = %updated.plan, actor = %principal.actor(), "VPS resized");
        self.reconciler.kick(&updated.node);
        Ok(updated)
    }

    /// Marks a VPS for deletion; it disappears once its node has removed it.
    pub async fn delete(
        &self,
        principal: &Principal,
        tenant: &str,
        name: &str,
        request_id: Option<String>,
    ) -> Result<VpsRecord, ControllerError> {
        let tenant = self.vps_scope(principal, tenant)?;
        let vps = self.find_vps(&tenant, name)?;
        let tagged = request_id.map(|id| TaggedRequest::new(id, RequestOp::Delete, ""));
        if requests::already_done(tagged.as_ref(), &vps)? {
            return Ok(vps);
        }
        self.refuse_if_migrating(&vps)?;
        let updated = self.store.update_vps(&vps.vps_id, &|vps| {
            vps.deleting = true;
            if let Some(tagged) = &tagged {
                vps.last_request = Some(tagged.clone());
            }
            Ok(())
        })?;
        self.commit().await?;
        info!(vps = %updated.name, tenant = %updated.tenant, actor = %principal.actor(), "VPS delete requested");
        self.reconciler.kick(&updated.node);
        Ok(updated)
    }

    /// A VPS being moved keeps its desired state until the move ends (`service::migration`).
    fn refuse_if_migrating(&self, vps: &VpsRecord) -> Result<(), ControllerError> {
        match self.store.get_migration(&vps.vps_id)? {
            Some(migration) => Err(crate::model::migration::MigrationError::InProgress {
                vps: vps.name.clone(),
                phase: migration.phase.as_str(),
            }
            .into()),
            None => Ok(()),
        }
    }

    fn refuse_if_suspended(&self, tenant: &str, what: &'static str) -> Result<(), ControllerError> {
        match self.store.get_tenant(tenant)? {
            Some(record) if record.suspended => Err(ControllerError::Suspended {
                tenant: tenant.to_owned(),
                what,
            }),
            _ => Ok(()),
        }
    }

    /// What a VPS's view depends on besides its record, read once.
    pub fn context(&self, vps: &VpsRecord) -> Result<VpsContext, ControllerError> {
        let now = Utc::now();
        let node_online = self
            .store
            .get_node(&vps.node)?
            .is_some_and(|node| self.node_online(&node, now));
        let tenant_suspended = self
            .store
            .get_tenant(&vps.tenant)?
            .is_some_and(|tenant| tenant.suspended);
        Ok(VpsContext {
            node_online,
            tenant_suspended,
            now,
        })
    }
}

/// Whether a VPS's node is online and its tenant suspended, at `now`.
#[derive(Debug, Clone, Copy)]
pub struct VpsContext {
    pub node_online: bool,
    pub tenant_suspended: bool,
    pub now: chrono::DateTime<Utc>,
}

impl VpsContext {
    /// Whether the VPS is held stopped: its tenant is suspended, or its transfer
    /// allowance is used up on a suspending plan.
    pub fn held(&self, vps: &VpsRecord) -> bool {
        crate::model::desired::held(vps, self.tenant_suspended, self.now)
    }

    /// Whether the VPS's node has applied exactly what its record asks for now.
    pub fn converged(&self, vps: &VpsRecord) -> bool {
        let spec = crate::convert::vps_spec(vps, self.tenant_suspended, self.now);
        vps.applied_spec.as_deref() == Some(crate::convert::spec_digest(&spec).as_str())
    }
}

/// Refuses `what` on a VPS its plan suspended for using up its monthly transfer.
fn refuse_if_transfer_suspended(vps: &VpsRecord, what: &str) -> Result<(), ControllerError> {
    let Some(limit) = vps
        .transfer_limit
        .as_ref()
        .filter(|_| vps.transfer_limit_at(Utc::now()) == Some(TransferOverage::Suspend))
    else {
        return Ok(());
    };
    Err(Precondition::TransferSuspended {
        vps: vps.name.clone(),
        month: limit.month.clone(),
        until: limit
            .until
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        what: what.to_owned(),
    }
    .into())
}
