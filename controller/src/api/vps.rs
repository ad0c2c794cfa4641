//! `VpsService`: unpack, call the domain, convert back.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use paddock_proto::v1;
use paddock_proto::v1::vps_service_server::VpsService;
use tonic::{Request, Response, Status, Streaming};

use crate::agents::agent_error;
use crate::api::{audit_target, AuditTarget};
use crate::convert;
use crate::error::ControllerError;
use crate::model::validate::ValidationError;
use crate::model::Power;
use crate::requests;
use crate::service::vps::CreateVps;
use crate::service::watch::{VpsWatch, WatchUpdate};
use crate::service::Controller;

pub struct VpsApi {
    pub controller: Arc<Controller>,
}

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A VPS as the API shows it: its record with what its node, tenant and usage say.
pub(super) fn view(
    controller: &Controller,
    record: &crate::model::VpsRecord,
) -> Result<v1::Vps, ControllerError> {
    let context = controller.vps().context(record)?;
    let transfer = controller.metering().transfer_status(record)?;
    Ok(convert::vps(
        record,
        context.node_online,
        context.held(record),
        Some(&transfer),
        context.converged(record),
    ))
}

/// The events of one watch: a view per change that shows (repeats are skipped), each sent
/// once the store is flushed, so no one sees a state a crash could take back.
fn watch_events(controller: Arc<Controller>, watch: VpsWatch) -> OutputStream<v1::VpsWatchEvent> {
    let stream = futures::stream::unfold(Some((watch, None)), move |state| {
        let controller = controller.clone();
        async move {
            let (mut watch, mut last): (VpsWatch, Option<v1::Vps>) = state?;
            loop {
                let event = match watch.next().await? {
                    Ok(WatchUpdate::Current(record)) => {
                        let vps = match view(&controller, &record) {
                            Ok(vps) => vps,
                            Err(error) => return Some((Err(Status::from(error)), None)),
                        };
                        if last.as_ref() == Some(&vps) {
                            continue;
                        }
                        last = Some(vps.clone());
                        v1::VpsWatchEvent {
                            vps: Some(vps),
                            gone: false,
                        }
                    }
                    Ok(WatchUpdate::Gone) => v1::VpsWatchEvent {
                        vps: None,
                        gone: true,
                    },
                    Err(error) => return Some((Err(Status::from(error)), None)),
                };
                if let Err(error) = controller.commit().await {
                    return Some((Err(Status::from(error)), None));
                }
                return Some((Ok(event), Some((watch, last))));
            }
        }
    });
    Box::pin(stream)
}

impl VpsApi {
    fn view(&self, record: &crate::model::VpsRecord) -> Result<v1::Vps, ControllerError> {
        view(&self.controller, record)
    }

    fn reference(vps: Option<v1::VpsRef>) -> v1::VpsRef {
        vps.unwrap_or_default()
    }
}

#[tonic::async_trait]
impl VpsService for VpsApi {
    async fn create_vps(
        &self,
        request: Request<v1::CreateVpsRequest>,
    ) -> Result<Response<v1::Vps>, Status> {
        let target = vps_target(&v1::VpsRef {
            tenant: request.get_ref().tenant.clone(),
            name: request.get_ref().name.clone(),
        });
        audit_target(&request, target);
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let created = self
            .controller
            .vps()
            .create(
                &principal,
                CreateVps {
                    tenant: request.tenant,
                    name: request.name,
                    plan: request.plan,
                    template: request.template,
                    overrides: request.overrides.as_ref().map(convert::resources_from),
                    start: request.start,
                    node_selector: request.node_selector.into_iter().collect(),
                    request_id,
                },
            )
            .await?;
        Ok(Response::new(self.view(&created)?))
    }

    async fn get_vps(&self, request: Request<v1::VpsRef>) -> Result<Response<v1::Vps>, Status> {
        let principal = self.controller.caller(&request)?;
        let vps = request.into_inner();
        let record = self
            .controller
            .vps()
            .get(&principal, &vps.tenant, &vps.name)?;
        Ok(Response::new(self.view(&record)?))
    }

    type WatchVpsStream = OutputStream<v1::VpsWatchEvent>;

    async fn watch_vps(
        &self,
        request: Request<v1::WatchVpsRequest>,
    ) -> Result<Response<Self::WatchVpsStream>, Status> {
        let principal = self.controller.caller(&request)?;
        let request = request.into_inner();
        let watch = self
            .controller
            .watch_vps(&principal, &request.tenant, &request.name)?;
        Ok(Response::new(watch_events(self.controller.clone(), watch)))
    }

    async fn list_vps(
        &self,
        request: Request<v1::ListVpsRequest>,
    ) -> Result<Response<v1::ListVpsResponse>, Status> {
        let principal = self.controller.caller(&request)?;
        let request = request.into_inner();
        let records = self.controller.vps().list(&principal, &request.tenant)?;
        let vps = records
            .iter()
            .map(|record| self.view(record))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListVpsResponse {
            vps,
            next_page_token: String::new(),
        }))
    }

    async fn start_vps(&self, request: Request<v1::VpsRef>) -> Result<Response<v1::Vps>, Status> {
        audit_target(&request, vps_target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let vps = request.into_inner();
        let record = self
            .controller
            .vps()
            .set_power(
                &principal,
                &vps.tenant,
                &vps.name,
                Power::Running,
                request_id,
            )
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn stop_vps(&self, request: Request<v1::VpsRef>) -> Result<Response<v1::Vps>, Status> {
        audit_target(&request, vps_target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let vps = request.into_inner();
        let record = self
            .controller
            .vps()
            .set_power(
                &principal,
                &vps.tenant,
                &vps.name,
                Power::Stopped,
                request_id,
            )
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn restart_vps(&self, request: Request<v1::VpsRef>) -> Result<Response<v1::Vps>, Status> {
        audit_target(&request, vps_target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let vps = request.into_inner();
        let record = self
            .controller
            .vps()
            .restart(&principal, &vps.tenant, &vps.name, request_id)
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn delete_vps(&self, request: Request<v1::VpsRef>) -> Result<Response<v1::Vps>, Status> {
        audit_target(&request, vps_target(request.get_ref()));
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let vps = request.into_inner();
        let record = self
            .controller
            .vps()
            .delete(&principal, &vps.tenant, &vps.name, request_id)
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn resize_vps(
        &self,
        request: Request<v1::ResizeVpsRequest>,
    ) -> Result<Response<v1::Vps>, Status> {
        let target = vps_target(&request.get_ref().vps.clone().unwrap_or_default());
        audit_target(&request, target);
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let vps = Self::reference(request.vps);
        let record = self
            .controller
            .vps()
            .resize(
                &principal,
                &vps.tenant,
                &vps.name,
                &request.plan,
                request.resources.as_ref().map(convert::resources_from),
                request_id,
            )
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn rebuild_vps(
        &self,
        request: Request<v1::RebuildVpsRequest>,
    ) -> Result<Response<v1::Vps>, Status> {
        let target = vps_target(&request.get_ref().vps.clone().unwrap_or_default());
        audit_target(&request, target);
        let principal = self.controller.caller(&request)?;
        let request_id = requests::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let vps = Self::reference(request.vps);
        let record = self
            .controller
            .vps()
            .rebuild(
                &principal,
                &vps.tenant,
                &vps.name,
                &request.template,
                request_id,
            )
            .await?;
        Ok(Response::new(self.view(&record)?))
    }

    async fn list_templates(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        self.controller.caller(&request)?;
        let templates = self.controller.nodes().list_templates().await?;
        Ok(Response::new(v1::ListTemplatesResponse {
            templates: templates.into_iter().map(convert::template).collect(),
        }))
    }

    type ExecStream = OutputStream<v1::ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<v1::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let principal = self.controller.caller(&request)?;
        let audit_slot = request.extensions().get::<AuditTarget>().cloned();
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(v1::ExecInput {
                input: Some(v1::exec_input::Input::Start(start)),
            }) => start,
            _ => {
                return Err(ValidationError::new(
                    "start",
                    "the first Exec message must carry `start`",
                )
                .into())
            }
        };
        if start.command.is_empty() {
            return Err(ValidationError::new("command", "is required").into());
        }
        let vps = Self::reference(start.vps);
        if let Some(slot) = audit_slot {
            slot.set(vps_target(&vps));
        }
        let record = self
            .controller
            .vps()
            .get(&principal, &vps.tenant, &vps.name)?;
        let mut client = self.controller.nodes().agent_for(&record.node)?;
        let first = v1::AgentExecInput {
            input: Some(v1::agent_exec_input::Input::Start(v1::AgentExecStart {
                vps_id: record.vps_id.clone(),
                command: start.command,
                env: start.env,
                tty: start.tty,
                size: start.size,
            })),
        };
        // Forward the client's stdin and resizes until it stops sending or errs.
        let rest = inbound
            .take_while(|message| futures::future::ready(message.is_ok()))
            .filter_map(|message| futures::future::ready(message.ok().and_then(exec_input)));
        let outbound = futures::stream::iter([first]).chain(rest);
        let response = client
            .exec(outbound)
            .await
            .map_err(|status| agent_error(&record.node, status))?;
        Ok(Response::new(Box::pin(response.into_inner())))
    }

    type ConsoleStream = OutputStream<v1::ConsoleOutput>;

    async fn console(
        &self,
        request: Request<Streaming<v1::ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let principal = self.controller.caller(&request)?;
        let audit_slot = request.extensions().get::<AuditTarget>().cloned();
        let mut inbound = request.into_inner();
        let attach = match inbound.message().await? {
            Some(v1::ConsoleInput {
                input: Some(v1::console_input::Input::Attach(attach)),
            }) => attach,
            _ => {
                return Err(ValidationError::new(
                    "attach",
                    "the first Console message must carry `attach`",
                )
                .into())
            }
        };
        let vps = Self::reference(attach.vps);
        let record = self
            .controller
            .vps()
            .get(&principal, &vps.tenant, &vps.name)?;
        if let Some(slot) = audit_slot {
            slot.set(vps_target(&vps));
        }
        let mut client = self.controller.nodes().agent_for(&record.node)?;
        let first = v1::AgentConsoleInput {
            input: Some(v1::agent_console_input::Input::Attach(
                v1::AgentConsoleAttach {
                    vps_id: record.vps_id.clone(),
                    size: attach.size,
                    scrollback: attach.scrollback,
                },
            )),
        };
        let rest = inbound
            .take_while(|message| futures::future::ready(message.is_ok()))
            .filter_map(|message| futures::future::ready(message.ok().and_then(console_input)));
        let outbound = futures::stream::iter([first]).chain(rest);
        let response = client
            .console(outbound)
            .await
            .map_err(|status| agent_error(&record.node, status))?;
        Ok(Response::new(Box::pin(response.into_inner())))
    }
}

fn console_input(message: v1::ConsoleInput) -> Option<v1::AgentConsoleInput> {
    use v1::agent_console_input::Input as Agent;
    use v1::console_input::Input;
    let input = match message.input? {
        Input::Attach(_) => return None,
        Input::Data(bytes) => Agent::Data(bytes),
        Input::Resize(size) => Agent::Resize(size),
    };
    Some(v1::AgentConsoleInput { input: Some(input) })
}

fn exec_input(message: v1::ExecInput) -> Option<v1::AgentExecInput> {
    use v1::agent_exec_input::Input as Agent;
    use v1::exec_input::Input;
    let input = match message.input? {
        Input::Start(_) => return None,
        Input::Stdin(bytes) => Agent::Stdin(bytes),
        Input::StdinEof(eof) => Agent::StdinEof(eof),
        Input::Resize(size) => Agent::Resize(size),
    };
    Some(v1::AgentExecInput { input: Some(input) })
}

fn vps_target(vps: &v1::VpsRef) -> String {
    if vps.tenant.is_empty() {
        vps.name.clone()
    } else {
        format!("{}/{}", vps.tenant, vps.name)
    }
}
