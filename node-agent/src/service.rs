//! The `NodeAgent` gRPC service the controller calls. It only translates:
//! the runtime does the work, on blocking threads, one operation per VPS at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use paddock_proto::v1;
use paddock_proto::v1::node_agent_server::NodeAgent;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::applied::{AppliedSpecs, MAX_CONCURRENT_APPLIES};
use crate::convert;
use crate::generations::RestartGenerations;
use crate::network::{Network, NetworkError, PortSpec};
use crate::runtime::{ObservedState, Power, Runtime};
use crate::template;

/// Serves the controller, over mutual TLS.
pub struct AgentService {
    pub runtime: Arc<Runtime>,
    pub state_dir: PathBuf,
    pub restarts: Arc<RestartGenerations>,
    /// The VPS ports; `None` leaves VPSes with loopback only.
    network: Option<Arc<Network>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What each VPS's last full apply left, to answer unchanged re-applies at once.
    applied: AppliedSpecs,
    /// Bounds the full applies running at once.
    full_applies: tokio::sync::Semaphore,
}

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl AgentService {
    pub fn new(
        runtime: Arc<Runtime>,
        state_dir: PathBuf,
        restarts: Arc<RestartGenerations>,
    ) -> Self {
        Self {
            runtime,
            state_dir,
            restarts,
            network: None,
            locks: Mutex::new(HashMap::new()),
            applied: AppliedSpecs::default(),
            full_applies: tokio::sync::Semaphore::new(MAX_CONCURRENT_APPLIES),
        }
    }

    /// Gives every running VPS a network port from its spec.
    pub fn with_network(mut self, network: Arc<Network>) -> Self {
        self.network = Some(network);
        self
    }

    /// Makes the VPS's port match what the runtime reports: a running VPS
    /// with a network spec gets its port ensured, anything else has none.
    async fn converge_network(
        &self,
        vps_id: &str,
        port: Option<&PortSpec>,
        observed: &crate::runtime::VpsObserved,
    ) -> Result<(), NetworkError> {
        let Some(network) = &self.network else {
            return Ok(());
        };
        match (observed.state, observed.init_pid, port) {
            (ObservedState::Running, Some(pid), Some(port)) => network.ensure_port(port, pid).await,
            _ => network.remove_port(vps_id).await,
        }
    }

    /// Only the controller may call: its certificate was verified against
    /// our CA by TLS; here we check it is the controller's and not a node's.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let certs = request.peer_certs();
        if !crate::pki::is_controller(certs.as_deref().map(|c| c.as_slice())) {
            return Err(Status::unauthenticated(
                "only the controller's certificate may call this agent",
            ));
        }
        Ok(())
    }

    /// Serializes operations on one VPS (apply, delete) across concurrent calls.
    fn lock(&self, vps_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(locks) => locks,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(vps_id.to_owned()).or_default().clone()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Runtime) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || work(&runtime))
            .await
            .map_err(|error| Status::internal(format!("runtime task failed: {error}")))
    }
}

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn apply_vps(
        &self,
        request: Request<v1::VpsSpec>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        let spec = convert::spec(&wire)?;
        let port = convert::port_spec(&wire)?;
        let lock = self.lock(&spec.vps_id);
        let _guard = lock.lock().await;
        let vps_id = spec.vps_id.clone();
        // A restart is a stop then a start, applied once per generation bump.
        let restart = self.restarts.pending(&vps_id, wire.restart_generation);
        let encoded = prost::Message::encode_to_vec(&wire);
        if !restart {
            // One state file read and one /proc stat: cheap enough for the async thread.
            if let Ok(Some(current)) = self.runtime.status(&vps_id) {
                if self.applied.unchanged(&vps_id, &encoded, &current) {
                    return Ok(Response::new(convert::status(&current)));
                }
            }
        }
        self.applied.forget(&vps_id);
        let _permit = self
            .full_applies
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the agent is shutting down"))?;
        let restarts = self.restarts.clone();
        let generation = wire.restart_generation;
        let result = self
            .blocking(move |runtime| {
                if restart && spec.power == Power::Running {
                    let mut stopped = spec.clone();
                    stopped.power = Power::Stopped;
                    runtime.apply(&stopped)?;
                }
                let observed = runtime.apply(&spec)?;
                if let Err(error) = restarts.record(&spec.vps_id, generation) {
                    warn!(vps_id = %spec.vps_id, %error, "recording restart generation");
                }
                Ok::<_, crate::runtime::RuntimeError>(observed)
            })
            .await?;
        let status = match result {
            Ok(observed) => match self
                .converge_network(&vps_id, port.as_ref(), &observed)
                .await
            {
                Ok(()) => {
                    let host_link = port
                        .as_ref()
                        .filter(|_| observed.state == ObservedState::Running)
                        .filter(|_| self.network.is_some())
                        .map(|port| crate::network::host_ifname(&port.vps_id));
                    if observed.state != ObservedState::Error {
                        self.applied.record(encoded, &observed, host_link);
                    }
                    convert::status(&observed)
                }
                Err(error) => {
                    warn!(%vps_id, %error, "network setup failed");
                    convert::error_status(&vps_id, format!("network: {error}"))
                }
            },
            Err(error) => {
                warn!(%vps_id, %error, "apply failed");
                convert::error_status(&vps_id, error.to_string())
            }
        };
        Ok(Response::new(status))
    }

    async fn delete_vps(
        &self,
        request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.authorize(&request)?;
        let vps_id = request.into_inner().vps_id;
        if !convert::valid_vps_id(&vps_id) {
            return Err(Status::invalid_argument(
                "vps_id: must be 1-64 lowercase letters, digits or '-'",
            ));
        }
        let lock = self.lock(&vps_id);
        let _guard = lock.lock().await;
        self.applied.forget(&vps_id);
        let id = vps_id.clone();
        self.blocking(move |runtime| runtime.delete(&id))
            .await?
            .map_err(|error| Status::internal(format!("deleting VPS {vps_id}: {error}")))?;
        if let Some(network) = &self.network {
            network.remove_port(&vps_id).await.map_err(|error| {
                Status::internal(format!(
                    "removing the network port of VPS {vps_id}: {error}"
                ))
            })?;
        }
        if let Err(error) = self.restarts.forget(&vps_id) {
            warn!(%vps_id, %error, "forgetting restart generation");
        }
        info!(%vps_id, "VPS deleted");
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_vps(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::AgentListVpsResponse>, Status> {
        self.authorize(&request)?;
        let listed = self
            .blocking(|runtime| runtime.list())
            .await?
            .map_err(|error| Status::internal(format!("listing VPSes: {error}")))?;
        Ok(Response::new(v1::AgentListVpsResponse {
            vps: listed.iter().map(convert::status).collect(),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        self.authorize(&request)?;
        let names = template::list(&self.state_dir)
            .map_err(|error| Status::internal(format!("listing templates: {error}")))?;
        Ok(Response::new(v1::ListTemplatesResponse {
            templates: names
                .into_iter()
                .map(|name| v1::Template {
                    description: template::describe(&name),
                    name,
                })
                .collect(),
        }))
    }

    type ExecStream = OutputStream<v1::ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<v1::AgentExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        use v1::agent_exec_input::Input;
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(v1::AgentExecInput {
                input: Some(Input::Start(start)),
            }) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "start: the first Exec message must carry `start`",
                ))
            }
        };
        if !convert::valid_vps_id(&start.vps_id) {
            return Err(Status::invalid_argument("vps_id: invalid"));
        }
        if start.command.is_empty() {
            return Err(Status::invalid_argument("command: is required"));
        }
        let vps_id = start.vps_id.clone();
        let tty = start.tty.then(|| convert::tty_size(start.size.as_ref()));
        let (mut child, mut resize) = self
            .blocking(move |runtime| match tty {
                Some(size) => runtime
                    .exec_tty(&start.vps_id, &start.command, &start.env, size)
                    .map(|(child, resize)| (child, Some(resize))),
                None => runtime
                    .exec(&start.vps_id, &start.command, &start.env)
                    .map(|child| (child, None)),
            })
            .await?
            .map_err(|error| {
                Status::failed_precondition(format!("exec in VPS {vps_id}: {error}"))
            })?;

        let (sender, receiver) = mpsc::channel::<Result<v1::ExecOutput, Status>>(32);
        let mut stdin = child.stdin.take();
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                match message.input {
                    Some(Input::Stdin(bytes)) => {
                        let Some(pipe) = stdin.as_mut() else { continue };
                        if pipe.write_all(&bytes).await.is_err() {
                            stdin = None;
                        }
                    }
                    Some(Input::StdinEof(_)) => stdin = None,
                    Some(Input::Resize(size)) => {
                        if let Some(resize) = resize.as_mut() {
                            // A small write on a pipe the helper drains; a failure means the
                            // command is gone.
                            let _ = resize.resize(convert::tty_size(Some(&size)));
                        }
                    }
                    Some(Input::Start(_)) | None => {}
                }
            }
        });
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        tokio::spawn(async move {
            let out = pump(stdout, sender.clone(), v1::exec_output::Output::Stdout);
            let err = pump(stderr, sender.clone(), v1::exec_output::Output::Stderr);
            tokio::join!(out, err);
            let code = match child.wait().await {
                Ok(status) => exit_code(status),
                Err(error) => {
                    let _ = sender
                        .send(Err(Status::internal(format!("waiting for exec: {error}"))))
                        .await;
                    return;
                }
            };
            let _ = sender
                .send(Ok(v1::ExecOutput {
                    output: Some(v1::exec_output::Output::ExitCode(code)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    type ConsoleStream = OutputStream<v1::ConsoleOutput>;

    async fn console(
        &self,
        request: Request<Streaming<v1::AgentConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        use crate::runtime::console;
        use v1::agent_console_input::Input;
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let attach = match inbound.message().await? {
            Some(v1::AgentConsoleInput {
                input: Some(Input::Attach(attach)),
            }) => attach,
            _ => {
                return Err(Status::invalid_argument(
                    "attach: the first Console message must carry `attach`",
                ))
            }
        };
        if !convert::valid_vps_id(&attach.vps_id) {
            return Err(Status::invalid_argument("vps_id: invalid"));
        }
        let vps_id = attach.vps_id.clone();
        let socket = self
            .blocking(move |runtime| runtime.console_socket(&vps_id))
            .await?
            .map_err(|error| Status::failed_precondition(format!("console: {error}")))?;
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|error| Status::unavailable(format!("console supervisor: {error}")))?;
        let (mut from_console, mut to_console) = stream.into_split();
        let mut hello = console::frame(console::FRAME_ATTACH, &[u8::from(attach.scrollback)]);
        if let Some(size) = attach.size.as_ref() {
            let size = convert::tty_size(Some(size));
            hello.extend(console::resize_frame(size.rows, size.cols));
        }
        to_console
            .write_all(&hello)
            .await
            .map_err(|error| Status::unavailable(format!("console supervisor: {error}")))?;
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                let bytes = match message.input {
                    Some(Input::Data(data)) => data
                        .chunks(usize::from(u16::MAX))
                        .flat_map(|chunk| console::frame(console::FRAME_DATA, chunk))
                        .collect(),
                    Some(Input::Resize(size)) => {
                        let size = convert::tty_size(Some(&size));
                        console::resize_frame(size.rows, size.cols)
                    }
                    Some(Input::Attach(_)) | None => continue,
                };
                if to_console.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let (sender, receiver) = mpsc::channel::<Result<v1::ConsoleOutput, Status>>(32);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match from_console.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let message = v1::ConsoleOutput {
                            data: buffer[..n].to_vec(),
                        };
                        if sender.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Copies one output pipe of an exec'd command into the response stream.
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    sender: mpsc::Sender<Result<v1::ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> v1::exec_output::Output,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let message = v1::ExecOutput {
                    output: Some(wrap(buffer[..n].to_vec())),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1)
}
