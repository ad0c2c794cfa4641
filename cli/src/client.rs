//! Connecting to the controller: the channel, the bearer-token interceptor and
//! the translation of gRPC statuses into one clear line for the user.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use paddock_proto::v1::audit_service_client::AuditServiceClient;
use paddock_proto::v1::backup_service_client::BackupServiceClient;
use paddock_proto::v1::billing_service_client::BillingServiceClient;
use paddock_proto::v1::node_service_client::NodeServiceClient;
use paddock_proto::v1::plan_service_client::PlanServiceClient;
use paddock_proto::v1::pool_service_client::PoolServiceClient;
use paddock_proto::v1::tenant_service_client::TenantServiceClient;
use paddock_proto::v1::token_service_client::TokenServiceClient;
use paddock_proto::v1::vps_service_client::VpsServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::context::{Target, TokenSource, ENV_TOKEN};

/// How long to wait for the TCP (and TLS) connection to the controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pauses before each retry of a mutation whose answer was lost (about 8 s in all, enough for
/// a controller restart).
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Why a call to the controller failed, phrased for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid controller URL {url:?}: {cause}")]
    BadUrl { url: String, cause: String },
    #[error("reading the CA certificate {path}: {source}")]
    ReadCaCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting up TLS for {url}: {cause}")]
    Tls { url: String, cause: String },
    #[error("the token contains characters that cannot be sent in a gRPC header")]
    BadToken,
    #[error("request id {id:?} cannot be sent in a gRPC header")]
    BadRequestId { id: String },
    #[error("cannot reach the controller at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("not authenticated: {message} (check {hint})")]
    Unauthenticated { message: String, hint: String },
    #[error("permission denied: {message}")]
    PermissionDenied { message: String },
    /// The server refused the request for a reason it explains itself
    /// (invalid argument, not found, already exists, failed precondition).
    #[error("{message}")]
    Rejected { code: Code, message: String },
    #[error("the controller at {url} does not support this request yet: {message}")]
    Unimplemented { url: String, message: String },
    #[error("{message} (gRPC status {code:?})")]
    Other { code: Code, message: String },
    /// A mutation whose answer never came, even after retries: it may or may not be done.
    #[error(
        "{source}; the controller may or may not have done it: run the same command with \
         --request-id {request_id} to finish it without doing it twice"
    )]
    Unanswered {
        request_id: String,
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// The gRPC code behind the error, if the server answered at all.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Unauthenticated { .. } => Some(Code::Unauthenticated),
            Self::PermissionDenied { .. } => Some(Code::PermissionDenied),
            Self::Rejected { code, .. } | Self::Other { code, .. } => Some(*code),
            Self::Unimplemented { .. } => Some(Code::Unimplemented),
            Self::Unanswered { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Adds `authorization: Bearer <token>` and the command's request id to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
    request_id: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Prepares the header once; fails if the token cannot be a header value.
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::BadToken)?;
        Ok(Self {
            header,
            request_id: None,
        })
    }

    /// Sends `id` as the request id of every call.
    pub fn with_request_id(mut self, id: &str) -> Result<Self, ClientError> {
        let value = id
            .parse()
            .map_err(|_| ClientError::BadRequestId { id: id.to_owned() })?;
        self.request_id = Some(value);
        Ok(self)
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata_mut();
        metadata.insert("authorization", self.header.clone());
        if let Some(id) = &self.request_id {
            metadata.insert(paddock_proto::request_id::METADATA_KEY, id.clone());
        }
        Ok(request)
    }
}

/// The endpoint of one controller URL, with the context's TLS trust.
fn endpoint(url: &str, target: &Target) -> Result<Endpoint, ClientError> {
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|err| ClientError::BadUrl {
            url: url.to_owned(),
            cause: error_chain(&err),
        })?;
    endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        // A configured CA is the only one trusted (the provider's own CA);
        // otherwise the system's roots are.
        let tls = match &target.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClientError::ReadCaCert {
                    path: path.clone(),
                    source,
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|err| ClientError::Tls {
            url: url.to_owned(),
            cause: error_chain(&err),
        })?;
    }
    Ok(endpoint)
}

/// The channel every generated client runs over.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// A connection to a controller with the caller's credentials. With several controllers in
/// the context it connects to the first that answers, and a mutation whose answer was lost
/// moves on to the next.
pub struct Session {
    /// One channel per controller URL, in order (all but the connected one are lazy).
    channels: Vec<(String, Channel)>,
    /// Index of the channel in use.
    current: std::sync::atomic::AtomicUsize,
    auth: BearerAuth,
    target: Target,
    request_id: String,
}

impl Session {
    /// Connects eagerly, so an unreachable controller is reported once and clearly. Every call
    /// carries `request_id`: one command makes at most one mutation, and its retries repeat it.
    pub async fn connect(target: Target, request_id: String) -> Result<Self, ClientError> {
        let auth = BearerAuth::new(&target.token)?.with_request_id(&request_id)?;
        let mut endpoints = Vec::new();
        for url in crate::context::controller_urls(&target.controller) {
            endpoints.push((url.to_owned(), endpoint(url, &target)?));
        }
        let mut channels = Vec::new();
        let mut current = None;
        let mut first_failure = None;
        for (url, endpoint) in endpoints {
            if current.is_none() {
                match endpoint.connect().await {
                    Ok(channel) => {
                        current = Some(channels.len());
                        channels.push((url, channel));
                        continue;
                    }
                    Err(err) => {
                        first_failure.get_or_insert(ClientError::Unreachable {
                            url: url.clone(),
                            cause: error_chain(&err),
                        });
                    }
                }
            }
            channels.push((url, endpoint.connect_lazy()));
        }
        let Some(current) = current else {
            return Err(first_failure.unwrap_or_else(|| ClientError::BadUrl {
                url: target.controller.clone(),
                cause: "no controller URL".to_owned(),
            }));
        };
        Ok(Self {
            channels,
            current: std::sync::atomic::AtomicUsize::new(current),
            auth,
            target,
            request_id,
        })
    }

    /// Moves to the next controller of the context (after a lost answer); false if there is
    /// only one.
    fn fail_over(&self) -> bool {
        if self.channels.len() < 2 {
            return false;
        }
        let next =
            (self.current.load(std::sync::atomic::Ordering::SeqCst) + 1) % self.channels.len();
        self.current
            .store(next, std::sync::atomic::Ordering::SeqCst);
        true
    }

    /// The URL of the controller in use.
    pub fn controller_url(&self) -> &str {
        let index = self.current.load(std::sync::atomic::Ordering::SeqCst);
        self.channels
            .get(index)
            .map_or(self.target.controller.as_str(), |(url, _)| url.as_str())
    }

    /// What this session talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn intercepted(&self) -> AuthChannel {
        let index = self.current.load(std::sync::atomic::Ordering::SeqCst);
        let channel = match self.channels.get(index) {
            Some((_, channel)) => channel.clone(),
            // `connect` never makes a session without channels.
            None => Channel::from_static("http://[::1]:1").connect_lazy(),
        };
        InterceptedService::new(channel, self.auth.clone())
    }

    /// Client of `VpsService`.
    pub fn vps(&self) -> VpsServiceClient<AuthChannel> {
        VpsServiceClient::new(self.intercepted())
    }

    /// Client of `TenantService`.
    pub fn tenants(&self) -> TenantServiceClient<AuthChannel> {
        TenantServiceClient::new(self.intercepted())
    }

    /// Client of `TokenService`.
    pub fn tokens(&self) -> TokenServiceClient<AuthChannel> {
        TokenServiceClient::new(self.intercepted())
    }

    /// Client of `PlanService`.
    pub fn plans(&self) -> PlanServiceClient<AuthChannel> {
        PlanServiceClient::new(self.intercepted())
    }

    /// Client of `NodeService`.
    pub fn nodes(&self) -> NodeServiceClient<AuthChannel> {
        NodeServiceClient::new(self.intercepted())
    }

    /// Client of `PoolService`.
    pub fn pools(&self) -> PoolServiceClient<AuthChannel> {
        PoolServiceClient::new(self.intercepted())
    }

    /// Client of `AuditService`.
    pub fn audit(&self) -> AuditServiceClient<AuthChannel> {
        AuditServiceClient::new(self.intercepted())
    }

    /// Client of `SnapshotService`.
    pub fn snapshots(
        &self,
    ) -> paddock_proto::v1::snapshot_service_client::SnapshotServiceClient<AuthChannel> {
        paddock_proto::v1::snapshot_service_client::SnapshotServiceClient::new(self.intercepted())
    }

    /// Client of `BackupService`.
    pub fn backups(&self) -> BackupServiceClient<AuthChannel> {
        BackupServiceClient::new(self.intercepted())
    }

    /// Client of `BillingService`.
    pub fn billing(&self) -> BillingServiceClient<AuthChannel> {
        BillingServiceClient::new(self.intercepted())
    }

    /// Awaits a unary call and unwraps its message, translating a failure.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, ClientError> {
        call.await
            .map(Response::into_inner)
            .map_err(|status| self.status_error(&status))
    }

    /// A VPS mutation, retried with the same request id while its answer is lost on the way
    /// (connection reset, controller restarting): the controller does it at most once.
    pub async fn mutate<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(VpsServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut delays = RETRY_DELAYS.iter();
        loop {
            let status = match call(self.vps()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let error = self.status_error(&status);
            if !answer_lost(&status) {
                return Err(error);
            }
            // Another controller of the context may answer (same request id: done once).
            let moved = self.fail_over();
            match delays.next() {
                Some(_) if moved => {}
                Some(delay) => tokio::time::sleep(*delay).await,
                None => {
                    return Err(ClientError::Unanswered {
                        request_id: self.request_id.clone(),
                        source: Box::new(error),
                    })
                }
            }
        }
    }

    /// A read (or the opening of a stream), moved to the next controller of the context when
    /// its answer is lost on the way (that controller died or restarts): reads change nothing,
    /// so any controller may answer them.
    pub async fn read<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(&Self) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut delays = RETRY_DELAYS.iter();
        loop {
            let status = match call(self).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if !answer_lost(&status) {
                return Err(self.status_error(&status));
            }
            match delays.next() {
                Some(delay) => {
                    if !self.fail_over() {
                        tokio::time::sleep(*delay).await;
                    }
                }
                None => return Err(self.status_error(&status)),
            }
        }
    }

    /// After a stream broke off (its controller died): moves to the next controller of the
    /// context; false if there is only one.
    pub fn next_controller(&self) -> bool {
        self.fail_over()
    }

    /// Translates a gRPC status into the error the user sees.
    pub fn status_error(&self, status: &Status) -> ClientError {
        let hint = match &self.target.token_source {
            TokenSource::Context(name) => format!("the token of context {name}"),
            TokenSource::Env => ENV_TOKEN.to_owned(),
        };
        translate_status(status, self.controller_url(), &hint)
    }
}

/// Whether a call failed on the way rather than being answered: the connection failed or was
/// reset (the status comes from the transport), or the server said it is unavailable.
pub fn answer_lost(status: &Status) -> bool {
    let from_transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => from_transport,
        _ => false,
    }
}

/// Maps a status to a [`ClientError`]; `hint` names where the token came from.
pub fn translate_status(status: &Status, controller: &str, hint: &str) -> ClientError {
    // Errors are one line: fold any line breaks the server put in its message.
    let message = if status.message().trim().is_empty() {
        status.code().description().to_owned()
    } else {
        status
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Statuses synthesised by the transport carry the transport error as source.
    let from_transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable if from_transport => ClientError::Unreachable {
            url: controller.to_owned(),
            cause: error_chain(status),
        },
        Code::Unauthenticated => ClientError::Unauthenticated {
            message,
            hint: hint.to_owned(),
        },
        Code::PermissionDenied => ClientError::PermissionDenied { message },
        Code::Unimplemented => ClientError::Unimplemented {
            url: controller.to_owned(),
            message,
        },
        code @ (Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unavailable
        | Code::ResourceExhausted) => ClientError::Rejected { code, message },
        code => ClientError::Other { code, message },
    }
}

/// Joins an error's sources into one line, skipping generic wrappers
/// ("transport error") and repeated messages.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(err) = current {
        let text = err.to_string();
        if !text.is_empty()
            && text != "transport error"
            && !parts.iter().any(|part| part.contains(&text))
        {
            parts.push(text);
        }
        current = err.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_is_added() {
        let mut auth = BearerAuth::new("s3cret").expect("ascii token");
        let request = auth.call(Request::new(())).expect("intercept");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret")
        );
        assert!(BearerAuth::new("bad\ntoken").is_err());
    }

    #[test]
    fn statuses_become_clear_lines() {
        let err = translate_status(
            &Status::unauthenticated("unknown token"),
            "http://c:1",
            "the token of context demo",
        );
        assert_eq!(
            err.to_string(),
            "not authenticated: unknown token (check the token of context demo)"
        );
        let err = translate_status(&Status::not_found("vps web1 not found"), "http://c:1", "x");
        assert_eq!(err.to_string(), "vps web1 not found");
        assert_eq!(err.code(), Some(Code::NotFound));
        let err = translate_status(
            &Status::failed_precondition("quota exceeded: vcpus 4 > 2"),
            "http://c:1",
            "x",
        );
        assert_eq!(err.to_string(), "quota exceeded: vcpus 4 > 2");
        let err = translate_status(&Status::internal(""), "http://c:1", "x");
        assert_eq!(err.to_string(), "Internal error (gRPC status Internal)");
        let err = translate_status(&Status::unimplemented("console"), "http://c:1", "x");
        assert_eq!(
            err.to_string(),
            "the controller at http://c:1 does not support this request yet: console"
        );
    }

    #[tokio::test]
    async fn unreachable_controller_names_the_url() {
        // Bind then drop a listener to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let target = Target {
            context: Some("demo".into()),
            controller: url.clone(),
            token: "t".into(),
            token_source: TokenSource::Context("demo".into()),
            ca_cert: None,
        };
        let err = match Session::connect(target, "r1".into()).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(err) => err.to_string(),
        };
        assert!(
            err.starts_with(&format!("cannot reach the controller at {url}: ")),
            "{err}"
        );
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
