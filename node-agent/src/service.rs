//! The `NodeAgent` gRPC service the controller calls. It only translates: it authorizes the
//! caller, converts the request (`convert.rs`), hands per-VPS work to that VPS's worker
//! (`worker.rs`) or node-wide reads to the runtime, and picks every error's gRPC code in one
//! place (see "Errors to codes" below).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use paddock_proto::v1;
use paddock_proto::v1::node_agent_server::NodeAgent;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::warn;

use crate::convert;
use crate::network::routes::HostRoute;
use crate::network::Network;
use crate::runtime::checkpoint;
use crate::runtime::storage::backup::{BackupError, LocalStore};
use crate::runtime::storage::backup_store::BackupStore;
use crate::runtime::storage::migration::MigrationSpool;
use crate::runtime::storage::s3::S3Error;
use crate::runtime::SnapshotInfo;
use crate::runtime::{
    validate_vps_id, CheckpointError, CheckpointOptions, Runtime, RuntimeError, SnapshotError,
};
use crate::template::{self, TemplateError};
use crate::worker::{ApplyRequest, ExecRequest, SnapshotOp, SnapshotOutcome, WorkerError, Workers};

/// Serves the controller, over mutual TLS.
pub struct AgentService {
    pub runtime: Arc<Runtime>,
    pub state_dir: PathBuf,
    /// One worker per VPS: applies and deletes.
    workers: Workers,
    /// Where backups are written and read.
    backups: BackupStore,
    /// Where migration archives wait while they stream (private to the node).
    spool: MigrationSpool,
    /// The VPS networking (ports and host routes); `None` without it.
    network: Option<Arc<Network>>,
}

type OutputStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Bytes per data message of a checkpoint transfer.
const TRANSFER_CHUNK: usize = 1 << 20;

/// Turns what a blocking writer writes into `data` messages of a checkpoint stream.
struct ChunkWriter {
    sender: mpsc::Sender<Result<v1::AgentCheckpointChunk, Status>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(TRANSFER_CHUNK));
        self.sender
            .blocking_send(Ok(v1::AgentCheckpointChunk {
                item: Some(v1::agent_checkpoint_chunk::Item::Data(data)),
            }))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = TRANSFER_CHUNK - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() >= TRANSFER_CHUNK {
            self.send_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
    }
}

/// Reads the `data` messages of an upload as one byte stream (on a blocking thread).
struct ChunkReader {
    receiver: std::sync::mpsc::Receiver<Vec<u8>>,
    current: std::io::Cursor<Vec<u8>>,
}

impl ChunkReader {
    fn new(receiver: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Self {
            receiver,
            current: std::io::Cursor::new(Vec::new()),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = std::io::Read::read(&mut self.current, out)?;
            if read > 0 || out.is_empty() {
                return Ok(read);
            }
            match self.receiver.recv() {
                Ok(next) => self.current = std::io::Cursor::new(next),
                Err(_) => return Ok(0),
            }
        }
    }
}

impl AgentService {
    pub fn new(runtime: Arc<Runtime>, state_dir: PathBuf) -> Self {
        let workers = Workers::new(runtime.clone(), None);
        Self {
            runtime,
            backups: BackupStore::Local(LocalStore::new(
                state_dir.parent().unwrap_or(&state_dir).join("backups"),
            )),
            workers,
            spool: MigrationSpool::new(&state_dir),
            state_dir,
            network: None,
        }
    }

    /// Uses `store` as the backup store.
    pub fn with_backup_store(mut self, store: BackupStore) -> Self {
        self.backups = store;
        self
    }

    /// Gives every running VPS a network port from its spec.
    pub fn with_network(mut self, network: Arc<Network>) -> Self {
        self.workers = Workers::new(self.runtime.clone(), Some(network.clone()));
        self.network = Some(network);
        self
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

    /// Runs a node-wide runtime call on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, Status> {
        let runtime = self.runtime.clone();
        tokio::task::spawn_blocking(move || work(&runtime))
            .await
            .map_err(|error| Status::internal(format!("runtime task failed: {error}")))?
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn sync_routes(
        &self,
        request: Request<v1::AgentRoutes>,
    ) -> Result<Response<v1::AgentRoutesResult>, Status> {
        self.authorize(&request)?;
        let wanted = request
            .into_inner()
            .routes
            .iter()
            .map(|route| HostRoute::parse(&route.destination, &route.via))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let Some(network) = &self.network else {
            return Err(Status::failed_precondition(
                "this agent runs without VPS networking: it cannot route shared pools",
            ));
        };
        let (added, removed) = network
            .sync_routes(&wanted)
            .await
            .map_err(|error| Status::internal(format!("syncing host routes: {error}")))?;
        Ok(Response::new(v1::AgentRoutesResult { added, removed }))
    }

    async fn create_snapshot(
        &self,
        request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::AgentSnapshot>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        match self
            .snapshot_op(&request.vps_id, SnapshotOp::Create(request.name))
            .await?
        {
            SnapshotOutcome::Created(info) => Ok(Response::new(wire_snapshot(&info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::AgentListSnapshotsResponse>, Status> {
        self.authorize(&request)?;
        let vps_id = request.into_inner().vps_id;
        match self.snapshot_op(&vps_id, SnapshotOp::List).await? {
            SnapshotOutcome::Listed(list) => Ok(Response::new(v1::AgentListSnapshotsResponse {
                snapshots: list.iter().map(wire_snapshot).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn restore_snapshot(
        &self,
        request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::AgentRestoreSnapshotResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        match self
            .snapshot_op(&request.vps_id, SnapshotOp::Restore(request.name))
            .await?
        {
            SnapshotOutcome::Restored(restored) => {
                Ok(Response::new(v1::AgentRestoreSnapshotResponse {
                    snapshot: Some(wire_snapshot(&restored.snapshot)),
                    was_running: restored.was_running,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_snapshot(
        &self,
        request: Request<v1::AgentSnapshotRequest>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        match self
            .snapshot_op(&request.vps_id, SnapshotOp::Delete(request.name))
            .await?
        {
            SnapshotOutcome::Deleted => Ok(Response::new(v1::Empty {})),
            other => Err(unexpected(&other)),
        }
    }

    /// A failed apply is answered with the VPS in state `error` and the reason as its message,
    /// not with an error status: the controller records it like any observed state. Only bad
    /// input and an agent that cannot take the apply (stopping, worker lost) are errors.
    async fn apply_vps(
        &self,
        request: Request<v1::VpsSpec>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        let spec = convert::spec(&wire)?;
        let port = convert::port_spec(&wire)?;
        let vps_id = spec.vps_id.clone();
        let applied = self
            .workers
            .apply(ApplyRequest {
                spec,
                port,
                encoded: prost::Message::encode_to_vec(&wire),
            })
            .await;
        let status = match applied {
            Ok(observed) => convert::status(&observed),
            Err(WorkerError::Runtime(error)) => {
                warn!(%vps_id, %error, "apply failed");
                convert::error_status(&vps_id, error.to_string())
            }
            Err(WorkerError::Network { source, .. }) => {
                warn!(%vps_id, error = %source, "network setup failed");
                convert::error_status(&vps_id, format!("network: {source}"))
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Response::new(status))
    }

    async fn delete_vps(
        &self,
        request: Request<v1::AgentVpsRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.authorize(&request)?;
        let vps_id = request.into_inner().vps_id;
        validate_vps_id(&vps_id)?;
        self.workers.delete(&vps_id).await?;
        Ok(Response::new(v1::Empty {}))
    }

    async fn list_vps(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::AgentListVpsResponse>, Status> {
        self.authorize(&request)?;
        let listed = self.blocking(|runtime| runtime.list()).await?;
        Ok(Response::new(v1::AgentListVpsResponse {
            vps: listed.iter().map(convert::status).collect(),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<v1::Empty>,
    ) -> Result<Response<v1::ListTemplatesResponse>, Status> {
        self.authorize(&request)?;
        let names = template::list(&self.state_dir).map_err(template_status)?;
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

    type CheckpointVpsStream = OutputStream<v1::AgentCheckpointChunk>;

    async fn checkpoint_vps(
        &self,
        request: Request<v1::AgentCheckpointRequest>,
    ) -> Result<Response<Self::CheckpointVpsStream>, Status> {
        use v1::agent_checkpoint_chunk::Item;
        self.authorize(&request)?;
        let request = request.into_inner();
        validate_vps_id(&request.vps_id)?;
        let vps_id = request.vps_id;
        let mut options = CheckpointOptions::default();
        if request.max_rounds > 0 {
            options.max_rounds = request.max_rounds;
        }
        let images = self.runtime.checkpoint_dir(&vps_id)?;
        let report = self
            .workers
            .checkpoint(&vps_id, images.clone(), options)
            .await?;
        crate::fault::hit("migrate:after-dump");
        let disk = self.runtime.disk_image_path(&vps_id)?;
        let (sender, receiver) = mpsc::channel(8);
        let _ = sender
            .send(Ok(v1::AgentCheckpointChunk {
                item: Some(Item::Report(convert::checkpoint_report(&report))),
            }))
            .await;
        tokio::task::spawn_blocking(move || {
            let out = ChunkWriter {
                sender: sender.clone(),
                buffer: Vec::with_capacity(TRANSFER_CHUNK),
            };
            if let Err(error) = checkpoint::pack_transfer(&images, &disk, out) {
                warn!(%vps_id, %error, "checkpoint transfer failed");
                let _ = sender.blocking_send(Err(Status::internal(error.to_string())));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn restore_checkpoint(
        &self,
        request: Request<Streaming<v1::AgentCheckpointUpload>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        use v1::agent_checkpoint_upload::Item;
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let wire = match inbound.message().await? {
            Some(v1::AgentCheckpointUpload {
                item: Some(Item::Spec(spec)),
            }) => spec,
            Some(v1::AgentCheckpointUpload {
                item: Some(Item::Held(spec)),
            }) => return self.restore_held(spec).await,
            _ => {
                return Err(Status::invalid_argument(
                    "spec: the first RestoreCheckpoint message must carry the spec",
                ))
            }
        };
        let spec = convert::spec(&wire)?;
        let port = convert::port_spec(&wire)?;
        let vps_id = spec.vps_id.clone();
        let images = self.runtime.checkpoint_dir(&vps_id)?;
        // The upload is unpacked as it arrives, on a blocking thread reading a pipe.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let target = images.clone();
        let unpack = tokio::task::spawn_blocking(move || {
            checkpoint::unpack_transfer(ChunkReader::new(receiver), &target)
        });
        while let Some(message) = inbound.message().await? {
            if let Some(Item::Data(data)) = message.item {
                if sender.send(data).is_err() {
                    break;
                }
            }
        }
        drop(sender);
        unpack
            .await
            .map_err(|error| Status::internal(format!("unpack task failed: {error}")))?
            .map_err(|source| {
                Status::from(RuntimeError::Checkpoint {
                    vps_id: vps_id.clone(),
                    source,
                })
            })?;
        let observed = self
            .workers
            .restore_checkpoint(
                ApplyRequest {
                    spec,
                    port,
                    encoded: prost::Message::encode_to_vec(&wire),
                },
                images,
            )
            .await?;
        crate::fault::hit("migrate:before-restore-reply");
        Ok(Response::new(convert::status(&observed)))
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
        validate_vps_id(&start.vps_id)?;
        if start.command.is_empty() {
            return Err(Status::invalid_argument("command: is required"));
        }
        let tty = start.tty.then(|| convert::tty_size(start.size.as_ref()));
        let (mut child, mut resize) = self
            .workers
            .exec(
                &start.vps_id,
                ExecRequest {
                    command: start.command,
                    env: start.env,
                    tty,
                },
            )
            .await?;

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
        validate_vps_id(&attach.vps_id)?;
        let vps_id = attach.vps_id.clone();
        let socket = self
            .blocking(move |runtime| runtime.console_socket(&vps_id))
            .await?;
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
    async fn backup_vps(
        &self,
        request: Request<v1::AgentBackupRequest>,
    ) -> Result<Response<v1::AgentBackupResponse>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        validate_vps_id(&wire.vps_id)?;
        let store = self.backups.clone();
        let taken = self
            .blocking(move |runtime| {
                store.take(runtime, &wire.vps_id, &wire.backup_id, &wire.spec_json)
            })
            .await?;
        Ok(Response::new(v1::AgentBackupResponse {
            archive_bytes: taken.manifest.archive_bytes,
            archive_sha256: taken.manifest.archive_sha256,
            tar_bytes: taken.manifest.tar_bytes,
            tar_sha256: taken.manifest.tar_sha256,
            location: taken.location,
        }))
    }

    async fn restore_backup(
        &self,
        request: Request<v1::AgentRestoreRequest>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        validate_vps_id(&wire.vps_id)?;
        let store = self.backups.clone();
        let vps_id = wire.vps_id.clone();
        let observed = self
            .blocking(move |runtime| {
                store.restore(runtime, &wire.vps_id, &wire.backup_id)?;
                runtime.status(&wire.vps_id)
            })
            .await?;
        let observed =
            observed.ok_or_else(|| Status::not_found(format!("vps {vps_id} not found")))?;
        Ok(Response::new(convert::status(&observed)))
    }

    async fn delete_backup(
        &self,
        request: Request<v1::AgentBackupRef>,
    ) -> Result<Response<v1::Empty>, Status> {
        self.authorize(&request)?;
        let backup_id = request.into_inner().backup_id;
        let store = self.backups.clone();
        tokio::task::spawn_blocking(move || store.delete(&backup_id))
            .await
            .map_err(|error| Status::internal(format!("backup task failed: {error}")))?
            .map_err(|error| Status::new(backup_code(&error), error.to_string()))?;
        Ok(Response::new(v1::Empty {}))
    }

    type ExportVpsStream = OutputStream<v1::AgentArchiveChunk>;

    async fn export_vps(
        &self,
        request: Request<v1::AgentExportRequest>,
    ) -> Result<Response<Self::ExportVpsStream>, Status> {
        self.authorize(&request)?;
        let wire = request.into_inner();
        validate_vps_id(&wire.vps_id)?;
        validate_migration_id(&wire.migration_id)?;
        let spool = self.spool.clone();
        let (vps_id, migration_id) = (wire.vps_id.clone(), wire.migration_id.clone());
        let mut outgoing = self
            .blocking(move |runtime| {
                runtime.export_vps(&wire.vps_id, &wire.migration_id, &spool, &wire.spec_json)
            })
            .await?;
        let (sender, receiver) = mpsc::channel::<Result<v1::AgentArchiveChunk, Status>>(4);
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            let first = v1::AgentArchiveChunk {
                manifest: Some(convert::archive_manifest(&outgoing.manifest)),
                data: Vec::new(),
            };
            let mut sent = sender.blocking_send(Ok(first)).is_ok();
            while sent {
                match outgoing.next_chunk() {
                    Ok(data) if data.is_empty() => break,
                    Ok(data) => {
                        sent = sender
                            .blocking_send(Ok(v1::AgentArchiveChunk {
                                manifest: None,
                                data,
                            }))
                            .is_ok();
                    }
                    Err(error) => {
                        let _ = sender.blocking_send(Err(Status::internal(format!(
                            "reading the migration archive of {vps_id}: {error}"
                        ))));
                        sent = false;
                    }
                }
            }
            if sent {
                crate::fault::hit("migrate:after-export");
            }
            if let Err(error) = spool.forget(&migration_id) {
                warn!(vps_id, migration_id, %error, "removing the exported archive");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn import_vps(
        &self,
        request: Request<Streaming<v1::AgentImportChunk>>,
    ) -> Result<Response<v1::VpsStatus>, Status> {
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("manifest: the first ImportVps message must carry it")
        })?;
        validate_vps_id(&first.vps_id)?;
        validate_migration_id(&first.migration_id)?;
        let manifest = first
            .manifest
            .as_ref()
            .map(|wire| convert::manifest_of(wire, &first.vps_id, &first.migration_id))
            .ok_or_else(|| {
                Status::invalid_argument("manifest: the first ImportVps message must carry it")
            })?;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        if !first.data.is_empty() {
            let _ = sender.send(first.data);
        }
        // The chunks are written by the blocking import as they arrive.
        let pump = tokio::spawn(async move {
            while let Some(chunk) = inbound.next().await {
                let Ok(chunk) = chunk else {
                    return;
                };
                let sender = sender.clone();
                let delivered =
                    tokio::task::spawn_blocking(move || sender.send(chunk.data).is_ok())
                        .await
                        .unwrap_or(false);
                if !delivered {
                    return;
                }
            }
        });
        let spool = self.spool.clone();
        let vps_id = first.vps_id.clone();
        let migration_id = first.migration_id.clone();
        let observed = self
            .blocking(move |runtime| {
                let mut reader = ChunkReader::new(receiver);
                runtime.import_vps(&vps_id, &migration_id, &spool, &manifest, &mut reader)?;
                runtime.status(&vps_id)
            })
            .await;
        pump.abort();
        let observed = observed?
            .ok_or_else(|| Status::not_found(format!("vps {} not found", first.vps_id)))?;
        crate::fault::hit("migrate:after-import");
        Ok(Response::new(convert::status(&observed)))
    }
}

/// Migration ids follow the backup id rule (they name spool files).
fn validate_migration_id(migration_id: &str) -> Result<(), Status> {
    crate::runtime::storage::backup::validate_id(migration_id)
        .map_err(|error| Status::invalid_argument(format!("migration_id: {error}")))
}

impl AgentService {
    /// `RestoreCheckpoint` with `held`: restores the newest checkpoint this node kept of the
    /// VPS (a live move rolling back on its source); a VPS that runs is answered as it is.
    async fn restore_held(&self, wire: v1::VpsSpec) -> Result<Response<v1::VpsStatus>, Status> {
        let spec = convert::spec(&wire)?;
        let port = convert::port_spec(&wire)?;
        let vps_id = spec.vps_id.clone();
        if let Some(observed) = self.workers.status(&vps_id).await? {
            if observed.init_pid.is_some() {
                return Ok(Response::new(convert::status(&observed)));
            }
        }
        let images = self.runtime.held_checkpoint(&vps_id)?;
        let observed = self
            .workers
            .restore_checkpoint(
                ApplyRequest {
                    spec,
                    port,
                    encoded: prost::Message::encode_to_vec(&wire),
                },
                images,
            )
            .await?;
        Ok(Response::new(convert::status(&observed)))
    }

    /// Runs a snapshot operation on the VPS's worker, after its earlier applies.
    async fn snapshot_op(&self, vps_id: &str, op: SnapshotOp) -> Result<SnapshotOutcome, Status> {
        validate_vps_id(vps_id)?;
        Ok(self.workers.snapshot(vps_id, op).await?)
    }
}

fn wire_snapshot(info: &SnapshotInfo) -> v1::AgentSnapshot {
    v1::AgentSnapshot {
        name: info.name.clone(),
        created_at_unix_ms: info.created_at_unix_ms,
        size_bytes: info.size_bytes,
        allocated_bytes: info.allocated_bytes,
        method: info.method.as_str().to_owned(),
        duration_ms: info.duration_ms,
    }
}

/// An outcome of another kind than the operation asked for (a bug in the worker).
fn unexpected(outcome: &SnapshotOutcome) -> Status {
    Status::internal(format!("unexpected snapshot outcome {outcome:?}"))
}

// Errors to codes: the one place the agent picks a gRPC status for a failure.

/// The code for a runtime error: what the caller can do about it.
pub fn runtime_code(error: &RuntimeError) -> Code {
    match error {
        RuntimeError::InvalidArgument { .. } => Code::InvalidArgument,
        RuntimeError::NotFound(_) => Code::NotFound,
        // The VPS or the node is not in the state the call needs: a start, a template build
        // or a rebuild fixes it, not a retry.
        RuntimeError::NotRunning(_)
        | RuntimeError::TemplateMissing(_)
        | RuntimeError::TemplateMismatch { .. }
        | RuntimeError::ProcView(_) => Code::FailedPrecondition,
        RuntimeError::Snapshot { source, .. } => match source {
            SnapshotError::InvalidName { .. } => Code::InvalidArgument,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::NotReady(_) | SnapshotError::NoImage(_) => Code::FailedPrecondition,
            SnapshotError::Deadline { .. } => Code::DeadlineExceeded,
            SnapshotError::Freezer { .. } | SnapshotError::Io { .. } => Code::Internal,
        },
        RuntimeError::Backup { source, .. } => backup_code(source),
        RuntimeError::Checkpoint { source, .. } => checkpoint_code(source),
        RuntimeError::InvalidConfig { .. }
        | RuntimeError::TemplateMetadata { .. }
        | RuntimeError::Setup(_)
        | RuntimeError::State { .. }
        | RuntimeError::Cgroup { .. }
        | RuntimeError::Rootfs { .. }
        | RuntimeError::Process { .. }
        | RuntimeError::Supervisor { .. }
        | RuntimeError::ExecSpawn { .. }
        | RuntimeError::Idmap { .. }
        | RuntimeError::Disk { .. }
        | RuntimeError::DiskGrowth { .. }
        | RuntimeError::RollbackFailed { .. } => Code::Internal,
    }
}

/// A backup missing from the store is `NotFound`, a corrupted or malformed one
/// or a VPS not ready to back up `FailedPrecondition` (retrying does not fix it), anything
/// else the node's fault.
fn backup_code(error: &BackupError) -> Code {
    match error {
        BackupError::NotFound(_) => Code::NotFound,
        BackupError::BadId(_) => Code::InvalidArgument,
        BackupError::Corrupt { .. }
        | BackupError::Malformed(_)
        | BackupError::BadManifest { .. }
        | BackupError::NotReady(_)
        | BackupError::Running => Code::FailedPrecondition,
        BackupError::ObjectStore(S3Error::NotFound { .. }) => Code::NotFound,
        BackupError::ObjectStore(S3Error::Transport { .. }) => Code::Unavailable,
        BackupError::ObjectStore(_)
        | BackupError::Io { .. }
        | BackupError::Disk(_)
        | BackupError::Helper(_) => Code::Internal,
    }
}

/// CRIU refusing a VPS (or missing on the node), a stopped VPS or images that are not a
/// complete checkpoint are `FailedPrecondition` with CRIU's reason: retrying does not help,
/// a cold migration does. A CRIU run past its deadline is `DeadlineExceeded`.
fn checkpoint_code(error: &CheckpointError) -> Code {
    match error {
        CheckpointError::Refused { .. }
        | CheckpointError::Missing { .. }
        | CheckpointError::NotRunning
        | CheckpointError::Running
        | CheckpointError::IdRangeMismatch { .. }
        | CheckpointError::NoImages(_) => Code::FailedPrecondition,
        CheckpointError::Deadline { .. } => Code::DeadlineExceeded,
        CheckpointError::Io { .. } | CheckpointError::Helper(_) => Code::Internal,
    }
}

impl From<RuntimeError> for Status {
    fn from(error: RuntimeError) -> Self {
        Status::new(runtime_code(&error), error.to_string())
    }
}

impl From<WorkerError> for Status {
    fn from(error: WorkerError) -> Self {
        let code = match &error {
            WorkerError::Runtime(error) => runtime_code(error),
            WorkerError::Network { .. } | WorkerError::Task { .. } => Code::Internal,
            // Retrying later reaches a running agent or a new worker.
            WorkerError::ShuttingDown | WorkerError::Ended(_) => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}

/// Listing templates reads the node's template directory: any failure is the node's.
fn template_status(error: TemplateError) -> Status {
    Status::internal(format!("listing templates: {error}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let cases: Vec<(Status, Code)> = vec![
            (
                RuntimeError::InvalidArgument {
                    field: "limits.vcpus",
                    rule: "must be at least 1".into(),
                }
                .into(),
                Code::InvalidArgument,
            ),
            (RuntimeError::NotFound("v1".into()).into(), Code::NotFound),
            (
                RuntimeError::Snapshot {
                    vps_id: "v1".into(),
                    source: SnapshotError::AlreadyExists("s".into()),
                }
                .into(),
                Code::AlreadyExists,
            ),
            (
                RuntimeError::Snapshot {
                    vps_id: "v1".into(),
                    source: SnapshotError::NotFound("s".into()),
                }
                .into(),
                Code::NotFound,
            ),
            (
                RuntimeError::Snapshot {
                    vps_id: "v1".into(),
                    source: SnapshotError::NotReady("being deleted"),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::NotRunning("v1".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::TemplateMissing("debian-12".into()).into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::TemplateMismatch {
                    vps_id: "v1".into(),
                    current: "busybox".into(),
                    requested: "debian-12".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::InvalidConfig {
                    field: "id_base",
                    rule: "too small".into(),
                }
                .into(),
                Code::Internal,
            ),
            (
                RuntimeError::ExecSpawn {
                    vps_id: "v1".into(),
                    path: "/usr/bin/paddock-agent".into(),
                    source: io(),
                }
                .into(),
                Code::Internal,
            ),
            (
                RuntimeError::RollbackFailed {
                    error: Box::new(RuntimeError::NotFound("v1".into())),
                    cleanup: Box::new(RuntimeError::NotRunning("v1".into())),
                }
                .into(),
                Code::Internal,
            ),
            (
                WorkerError::Runtime(RuntimeError::NotRunning("v1".into())).into(),
                Code::FailedPrecondition,
            ),
            (WorkerError::ShuttingDown.into(), Code::Unavailable),
            (WorkerError::Ended("v1".into()).into(), Code::Unavailable),
            (
                WorkerError::Task {
                    vps_id: "v1".into(),
                    message: "panicked".into(),
                }
                .into(),
                Code::Internal,
            ),
            (
                template_status(TemplateError::Unknown { name: "x".into() }),
                Code::Internal,
            ),
            (
                RuntimeError::Checkpoint {
                    vps_id: "v1".into(),
                    source: CheckpointError::Refused {
                        step: "dump",
                        reason: "Error (mount.c): no proper root mount".into(),
                    },
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::Checkpoint {
                    vps_id: "v1".into(),
                    source: CheckpointError::IdRangeMismatch {
                        checkpoint: 100_000,
                        node: 0,
                    },
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                RuntimeError::Checkpoint {
                    vps_id: "v1".into(),
                    source: CheckpointError::Deadline {
                        step: "dump",
                        limit: std::time::Duration::from_secs(1),
                    },
                }
                .into(),
                Code::DeadlineExceeded,
            ),
        ];
        for (status, code) in cases {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(!status.message().is_empty(), "{status:?}");
        }
    }

    #[test]
    fn a_transfer_goes_through_the_chunk_writer_and_reader_unchanged() {
        let bytes: Vec<u8> = (0..(TRANSFER_CHUNK * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let (sender, mut receiver) = mpsc::channel(64);
        let written = bytes.clone();
        let writer = std::thread::spawn(move || {
            let mut out = ChunkWriter {
                sender,
                buffer: Vec::new(),
            };
            std::io::Write::write_all(&mut out, &written).expect("write");
            std::io::Write::flush(&mut out).expect("flush");
        });
        let mut chunks = Vec::new();
        while let Some(message) = receiver.blocking_recv() {
            match message.expect("ok").item {
                Some(v1::agent_checkpoint_chunk::Item::Data(data)) => chunks.push(data),
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.join().expect("writer");
        assert_eq!(chunks.len(), 3, "two full chunks and the rest");
        assert!(chunks.iter().all(|c| c.len() <= TRANSFER_CHUNK));
        let (upload, chunk_receiver) = std::sync::mpsc::sync_channel(8);
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut ChunkReader::new(chunk_receiver), &mut all)
                .expect("read");
            all
        });
        for chunk in chunks {
            upload.send(chunk).expect("send");
        }
        drop(upload);
        assert_eq!(reader.join().expect("reader"), bytes);
    }
}
