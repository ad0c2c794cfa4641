//! Plans: named resource bundles that VPSes are created from and resized to.

use tracing::info;

use crate::error::ControllerError;
use crate::model::validate::{self, ValidationError};
use crate::model::{PlanRecord, TransferOverage};
use crate::service::Controller;

pub use crate::model::DEFAULT_CPU_WEIGHT;

/// The provider's plan catalogue. A view of the [`Controller`]'s shared state; get one with
/// [`Controller::plans`].
pub struct Plans<'a>(&'a Controller);

impl Controller {
    pub fn plans(&self) -> Plans<'_> {
        Plans(self)
    }
}

impl std::ops::Deref for Plans<'_> {
    type Target = Controller;

    fn deref(&self) -> &Controller {
        self.0
    }
}

impl Plans<'_> {
    /// Every plan, smallest memory first.
    pub fn list(&self) -> Result<Vec<PlanRecord>, ControllerError> {
        let mut plans = self.store.list_plans()?;
        plans.sort_by_key(|plan| (plan.resources.memory_bytes, plan.name.clone()));
        Ok(plans)
    }

    /// Validates and durably stores a new plan (admin only, checked by the API).
    pub async fn create(&self, mut plan: PlanRecord) -> Result<PlanRecord, ControllerError> {
        validate::name("plan.name", &plan.name)?;
        let resources = &mut plan.resources;
        if resources.cpu_weight == 0 {
            resources.cpu_weight = DEFAULT_CPU_WEIGHT;
        }
        // A plan holds the same absolute bounds as every VPS made from it.
        self.vps().bounds().check("plan.resources.", resources)?;
        match plan.transfer_overage {
            TransferOverage::Notify => {}
            _ if plan.monthly_transfer_bytes == 0 => {
                return Err(ValidationError::new(
                    "plan.transfer_overage",
                    "needs a monthly transfer allowance to act on",
                )
                .into())
            }
            TransferOverage::Throttle { bits_per_sec: 0 } => {
                return Err(ValidationError::new(
                    "plan.overage_rate_bits_per_sec",
                    "must be set when the overage action is throttle",
                )
                .into())
            }
            TransferOverage::Throttle { .. } | TransferOverage::Suspend => {}
        }
        self.store.create_plan(&plan)?;
        self.commit().await?;
        info!(plan = %plan.name, overage = ?plan.transfer_overage, "plan created");
        Ok(plan)
    }

    /// Deletes a plan no VPS uses.
    pub async fn delete(&self, name: &str) -> Result<(), ControllerError> {
        validate::name("name", name)?;
        self.store.delete_plan(name)?;
        self.commit().await?;
        info!(plan = %name, "plan deleted");
        Ok(())
    }
}
