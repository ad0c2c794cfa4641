//! Helpers for the CLI's integration tests: run the real `paddock` binary in
//! an isolated environment, and a scripted stand-in for the controller's
//! `VpsService` so the client side can be tested before the controller exists.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use paddock_proto::v1::vps_service_server::{VpsService, VpsServiceServer};
use paddock_proto::v1::{
    exec_input, exec_output, ConsoleInput, ConsoleOutput, CreateVpsRequest, Empty, ExecInput,
    ExecOutput, ListTemplatesResponse, ListVpsRequest, ListVpsResponse, PowerState,
    RebuildVpsRequest, ResizeVpsRequest, Resources, Template, Vps, VpsRef, VpsState, VpsWatchEvent,
    WatchVpsRequest,
};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The only token the fake controller accepts.
pub const GOOD_TOKEN: &str = "good-token";

/// What a finished `paddock` run produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Builds a `paddock` command that sees only `config` and no PADDOCK_* from
/// the surrounding environment.
pub fn paddock(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paddock"));
    command
        .args(args)
        .env_remove("PADDOCK_CONTROLLER")
        .env_remove("PADDOCK_TOKEN")
        .env("PADDOCK_CONFIG", config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs a command to completion, optionally feeding `stdin`.
pub async fn run(mut command: Command, stdin: Option<&[u8]>) -> Run {
    use tokio::io::AsyncWriteExt;
    if stdin.is_some() {
        command.stdin(std::process::Stdio::piped());
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn paddock");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(bytes).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("paddock finished in time")
        .expect("wait for paddock");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A temp dir with a config path inside it (the file does not exist yet).
pub fn temp_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("paddock/config.toml");
    (dir, path)
}

/// Per-VPS script: how many polls until the next state.
#[derive(Debug, Clone)]
struct Entry {
    vps: Vps,
    polls_left: u32,
    next: Option<VpsState>,
    next_message: String,
    /// The request id of the create that made it.
    request_id: String,
}

/// Scripted `VpsService`: VPSes become running two polls after create
/// (names starting with `broken` go to `error` instead), stop two polls
/// after stop, and vanish two polls after delete. `WatchVps` is
/// UNIMPLEMENTED (an older controller) unless [`FakeVps::streaming`]; then it
/// sends the current state and the scripted next one at once (or `gone`).
/// `exec` understands `exit N`, `cat`, `tty` and `vanish`.
#[derive(Clone, Default)]
pub struct FakeVps {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// Every authorization header seen.
    pub auth_headers: Arc<Mutex<Vec<String>>>,
    /// The request id of every CreateVps call, in order.
    pub create_request_ids: Arc<Mutex<Vec<String>>>,
    /// How many more creates are done but answered UNAVAILABLE, as if the answer was lost.
    pub lose_create_answers: Arc<Mutex<u32>>,
    /// Whether `WatchVps` is served.
    streaming: bool,
    /// How many `GetVps` calls were answered.
    pub get_calls: Arc<std::sync::atomic::AtomicUsize>,
    /// How many `WatchVps` calls were answered.
    pub watch_calls: Arc<std::sync::atomic::AtomicUsize>,
}

fn sample(name: &str, tenant: &str, state: VpsState) -> Vps {
    Vps {
        id: format!("id-{name}"),
        name: name.to_owned(),
        tenant: tenant.to_owned(),
        state: state as i32,
        desired_power: PowerState::Running as i32,
        node: "node-a".to_owned(),
        plan: "small".to_owned(),
        template: "busybox".to_owned(),
        resources: Some(Resources {
            vcpus: 1.0,
            memory_bytes: 512 << 20,
            disk_bytes: 5 << 30,
            pids_max: 512,
            ..Default::default()
        }),
        ipv4: vec!["10.77.0.10".to_owned()],
        ipv6: vec![],
        created_at: Some(prost_types::Timestamp {
            seconds: 1_714_564_800,
            nanos: 0,
        }),
        message: String::new(),
        init_pid: 0,
        transfer: None,
        converged: true,
    }
}

impl FakeVps {
    /// The answer to a create that was done: UNAVAILABLE while answers are to be lost.
    fn answer(&self, vps: Vps) -> Result<Response<Vps>, Status> {
        let mut lose = self.lose_create_answers.lock().expect("lock");
        if *lose > 0 {
            *lose -= 1;
            return Err(Status::unavailable("the answer was lost"));
        }
        Ok(Response::new(vps))
    }

    /// A fake that serves `WatchVps`, like a current controller.
    pub fn streaming() -> Self {
        Self {
            streaming: true,
            ..Self::default()
        }
    }

    /// Adds a VPS in a fixed state.
    pub fn insert(&self, name: &str, state: VpsState) {
        let vps = sample(name, "acme", state);
        self.entries.lock().expect("lock").insert(
            name.to_owned(),
            Entry {
                vps,
                polls_left: 0,
                next: None,
                next_message: String::new(),
                request_id: String::new(),
            },
        );
    }

    fn transition(
        &self,
        name: &str,
        now: VpsState,
        next: VpsState,
        message: &str,
    ) -> Result<Vps, Status> {
        let mut entries = self.entries.lock().expect("lock");
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| Status::not_found(format!("vps {name} not found")))?;
        entry.vps.state = now as i32;
        entry.polls_left = 2;
        entry.next = Some(next);
        entry.next_message = message.to_owned();
        Ok(entry.vps.clone())
    }

    /// Serves the fake on a random local port; returns its URL.
    pub async fn serve(self) -> String {
        self.serve_with(None).await
    }

    /// Serves the fake over TLS with this PEM certificate and key; returns
    /// an https URL naming `localhost`.
    pub async fn serve_tls(self, cert_pem: &str, key_pem: &str) -> String {
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        self.serve_with(Some(identity)).await
    }

    async fn serve_with(self, tls: Option<tonic::transport::Identity>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let headers = self.auth_headers.clone();
        let check = move |request: Request<()>| -> Result<Request<()>, Status> {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            headers.lock().expect("lock").push(header.clone());
            if header == format!("Bearer {GOOD_TOKEN}") {
                Ok(request)
            } else {
                Err(Status::unauthenticated("unknown or revoked token"))
            }
        };
        let service = VpsServiceServer::with_interceptor(self, check);
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = tls {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("server TLS config");
        }
        tokio::spawn(
            builder
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        url
    }
}

type OutStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl VpsService for FakeVps {
    async fn create_vps(
        &self,
        request: Request<CreateVpsRequest>,
    ) -> Result<Response<Vps>, Status> {
        let request_id = request
            .metadata()
            .get("paddock-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.create_request_ids
            .lock()
            .expect("lock")
            .push(request_id.clone());
        let request = request.into_inner();
        if request.plan != "small" {
            return Err(Status::not_found(format!(
                "plan {} does not exist",
                request.plan
            )));
        }
        let mut vps = sample(&request.name, "acme", VpsState::Pending);
        if let Some(memory) = request
            .overrides
            .as_ref()
            .map(|o| o.memory_bytes)
            .filter(|m| *m > 0)
        {
            if let Some(resources) = vps.resources.as_mut() {
                resources.memory_bytes = memory;
            }
        }
        let (next, message) = if request.name.starts_with("broken") {
            (VpsState::Error, "template busybox is corrupt")
        } else {
            (VpsState::Running, "")
        };
        let mut entries = self.entries.lock().expect("lock");
        if let Some(entry) = entries.get(&request.name) {
            // A retry of the create that made it, as the controller answers one.
            if !request_id.is_empty() && entry.request_id == request_id {
                let vps = entry.vps.clone();
                return self.answer(vps);
            }
            return Err(Status::already_exists(format!(
                "vps {} already exists",
                request.name
            )));
        }
        entries.insert(
            request.name.clone(),
            Entry {
                vps: vps.clone(),
                polls_left: 2,
                next: Some(next),
                next_message: message.to_owned(),
                request_id,
            },
        );
        self.answer(vps)
    }

    async fn get_vps(&self, request: Request<VpsRef>) -> Result<Response<Vps>, Status> {
        self.get_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = request.into_inner().name;
        let mut entries = self.entries.lock().expect("lock");
        let entry = entries
            .get_mut(&name)
            .ok_or_else(|| Status::not_found(format!("vps {name} not found")))?;
        if let Some(next) = entry.next {
            if entry.polls_left == 0 {
                if entry.vps.state == VpsState::Deleting as i32 {
                    entries.remove(&name);
                    return Err(Status::not_found(format!("vps {name} not found")));
                }
                entry.vps.state = next as i32;
                entry.vps.message = entry.next_message.clone();
                entry.next = None;
            } else {
                entry.polls_left -= 1;
            }
        }
        Ok(Response::new(entry.vps.clone()))
    }

    type WatchVpsStream = OutStream<VpsWatchEvent>;

    async fn watch_vps(
        &self,
        request: Request<WatchVpsRequest>,
    ) -> Result<Response<Self::WatchVpsStream>, Status> {
        if !self.streaming {
            return Err(Status::unimplemented("WatchVps"));
        }
        self.watch_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = request.into_inner().name;
        let mut entries = self.entries.lock().expect("lock");
        let entry = entries
            .get_mut(&name)
            .ok_or_else(|| Status::not_found(format!("vps {name} not found")))?;
        let current = |vps: &Vps| VpsWatchEvent {
            vps: Some(vps.clone()),
            gone: false,
        };
        let mut events = vec![current(&entry.vps)];
        if let Some(next) = entry.next.take() {
            if entry.vps.state == VpsState::Deleting as i32 {
                entries.remove(&name);
                events.push(VpsWatchEvent {
                    vps: None,
                    gone: true,
                });
            } else {
                entry.vps.state = next as i32;
                entry.vps.message = entry.next_message.clone();
                events.push(current(&entry.vps));
            }
        }
        // The stream stays open, like the controller's, until the client hangs up.
        let stream = tokio_stream::iter(events.into_iter().map(Ok)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_vps(
        &self,
        request: Request<ListVpsRequest>,
    ) -> Result<Response<ListVpsResponse>, Status> {
        // One VPS per page, to exercise paging.
        let token = request
            .into_inner()
            .page
            .map(|p| p.page_token)
            .unwrap_or_default();
        let index: usize = if token.is_empty() {
            0
        } else {
            token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let entries = self.entries.lock().expect("lock");
        let all: Vec<Vps> = entries.values().map(|e| e.vps.clone()).collect();
        let vps: Vec<Vps> = all.get(index).cloned().into_iter().collect();
        let next_page_token = if index + 1 < all.len() {
            (index + 1).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListVpsResponse {
            vps,
            next_page_token,
        }))
    }

    async fn start_vps(&self, request: Request<VpsRef>) -> Result<Response<Vps>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(
            &name,
            VpsState::Pending,
            VpsState::Running,
            "",
        )?))
    }

    async fn stop_vps(&self, request: Request<VpsRef>) -> Result<Response<Vps>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(
            &name,
            VpsState::Running,
            VpsState::Stopped,
            "",
        )?))
    }

    async fn restart_vps(&self, request: Request<VpsRef>) -> Result<Response<Vps>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(
            &name,
            VpsState::Pending,
            VpsState::Running,
            "",
        )?))
    }

    async fn delete_vps(&self, request: Request<VpsRef>) -> Result<Response<Vps>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(
            &name,
            VpsState::Deleting,
            VpsState::Deleting,
            "",
        )?))
    }

    async fn resize_vps(
        &self,
        _request: Request<ResizeVpsRequest>,
    ) -> Result<Response<Vps>, Status> {
        Err(Status::unimplemented("resize"))
    }

    async fn rebuild_vps(
        &self,
        _request: Request<RebuildVpsRequest>,
    ) -> Result<Response<Vps>, Status> {
        Err(Status::unimplemented("rebuild"))
    }

    async fn list_templates(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        Ok(Response::new(ListTemplatesResponse {
            templates: vec![Template {
                name: "busybox".to_owned(),
                description: "busybox-static, for tests".to_owned(),
            }],
        }))
    }

    type ExecStream = OutStream<ExecOutput>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut input = request.into_inner();
        let start = match input.next().await {
            Some(Ok(ExecInput {
                input: Some(exec_input::Input::Start(start)),
            })) => start,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must carry start",
                ))
            }
        };
        let name = start.vps.map(|v| v.name).unwrap_or_default();
        if !self.entries.lock().expect("lock").contains_key(&name) {
            return Err(Status::not_found(format!("vps {name} not found")));
        }
        let (tx, rx) = mpsc::channel(16);
        let out = |o| Ok(ExecOutput { output: Some(o) });
        tokio::spawn(async move {
            let command: Vec<&str> = start.command.iter().map(String::as_str).collect();
            match command.as_slice() {
                ["exit", code] => {
                    let code: i32 = code.parse().unwrap_or(255);
                    let _ = tx
                        .send(out(exec_output::Output::Stdout(b"out\n".to_vec())))
                        .await;
                    let _ = tx
                        .send(out(exec_output::Output::Stderr(b"err\n".to_vec())))
                        .await;
                    let _ = tx.send(out(exec_output::Output::ExitCode(code))).await;
                }
                ["cat"] => {
                    while let Some(Ok(message)) = input.next().await {
                        match message.input {
                            Some(exec_input::Input::Stdin(bytes)) => {
                                let _ = tx.send(out(exec_output::Output::Stdout(bytes))).await;
                            }
                            Some(exec_input::Input::StdinEof(_)) => break,
                            _ => {}
                        }
                    }
                    let _ = tx.send(out(exec_output::Output::ExitCode(0))).await;
                }
                ["tty"] => {
                    let text = format!("tty={} size={}\n", start.tty, start.size.is_some());
                    let _ = tx
                        .send(out(exec_output::Output::Stdout(text.into_bytes())))
                        .await;
                    let _ = tx.send(out(exec_output::Output::ExitCode(3))).await;
                }
                ["vanish"] => {
                    let _ = tx
                        .send(out(exec_output::Output::Stdout(b"partial\n".to_vec())))
                        .await;
                }
                _ => {
                    let _ = tx
                        .send(Err(Status::invalid_argument("unknown test command")))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ConsoleStream = OutStream<ConsoleOutput>;

    async fn console(
        &self,
        _request: Request<Streaming<ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        Err(Status::unimplemented("console"))
    }
}
