//! A small client for an S3-compatible object store: the calls the backup store needs (put a
//! file, in parts when it is large; get an object into a file or memory; delete), signed with
//! AWS Signature Version 4 in the `Authorization` header.
//!
//! Every request signs the SHA-256 of its body (`x-amz-content-sha256`), so the service checks
//! what arrived against what was sent: a part damaged on the way is refused, not stored.
//! Buckets are addressed path-style (`<endpoint>/<bucket>/<key>`), which every S3-compatible
//! service accepts. Calls are blocking (they run on the agent's blocking threads, like the
//! rest of a backup) and have connect, read and write deadlines.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use paddock_config::S3Store;
use sha2::{Digest, Sha256};

use crate::fsutil::FromIo;

/// SHA-256 of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a response or for the peer to take more of a body.
const IO_DEADLINE: Duration = Duration::from_secs(300);

/// Errors talking to the object store.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("object {key} is not in bucket {bucket}")]
    NotFound { bucket: String, key: String },
    #[error("the object store refused {method} {key}: HTTP {status} {code}: {message}")]
    Refused {
        method: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the object store at {endpoint} ({method} {key}): {reason}")]
    Transport {
        endpoint: String,
        method: &'static str,
        key: String,
        reason: String,
    },
    #[error("reading the secret access key from {path}: {source}")]
    Secret { path: PathBuf, source: io::Error },
    #[error("{operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the object store's reply to {method} {key} is not understood: {reason}")]
    BadReply {
        method: &'static str,
        key: String,
        reason: String,
    },
}

impl FromIo for S3Error {
    fn from_io(operation: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io {
            operation,
            path,
            source,
        }
    }
}

/// Access key id and secret of a request signer.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .finish()
    }
}

/// One bucket of an S3-compatible service.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// `http` or `https`.
    scheme: String,
    /// `host[:port]`, without a port that is the scheme's default (as the `Host` header is sent).
    authority: String,
    /// The endpoint's own path (usually empty), without a trailing `/`.
    base_path: String,
    name: String,
    region: String,
    prefix: String,
    credentials: Credentials,
    part_size: u64,
    agent: ureq::Agent,
}

/// A request before it is signed: method, key, query, extra headers and the body's SHA-256.
struct Request<'a> {
    method: &'static str,
    key: &'a str,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    payload_sha256: String,
}

impl Bucket {
    /// The bucket of a `[backup_s3]` config, reading its secret key file.
    pub fn from_config(config: &S3Store) -> Result<Self, S3Error> {
        let secret = std::fs::read_to_string(&config.secret_access_key_file).map_err(|source| {
            S3Error::Secret {
                path: config.secret_access_key_file.clone(),
                source,
            }
        })?;
        let credentials = Credentials {
            access_key_id: config.access_key_id.clone(),
            secret_access_key: secret.trim().to_string(),
        };
        Ok(Self::new(
            &config.endpoint,
            &config.bucket,
            &config.region,
            &config.prefix,
            credentials,
            config.part_size_mib * 1024 * 1024,
        ))
    }

    /// A bucket at `endpoint` (`http(s)://host[:port][/path]`).
    pub fn new(
        endpoint: &str,
        name: &str,
        region: &str,
        prefix: &str,
        credentials: Credentials,
        part_size: u64,
    ) -> Self {
        let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
        let (authority, base_path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let default_port = if scheme == "http" { ":80" } else { ":443" };
        let authority = authority.strip_suffix(default_port).unwrap_or(authority);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_DEADLINE)
            .timeout_read(IO_DEADLINE)
            .timeout_write(IO_DEADLINE)
            .build();
        Self {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            base_path: base_path.to_string(),
            name: name.to_string(),
            region: region.to_string(),
            prefix: prefix.to_string(),
            credentials,
            part_size: part_size.max(1),
            agent,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full object key of `name` (the configured prefix prepended).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `s3://bucket/key`, for people.
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    fn endpoint(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }

    /// The service could not be reached, or the connection broke, during `method key`.
    fn transport(
        &self,
        method: &'static str,
        key: &str,
        reason: impl std::fmt::Display,
    ) -> S3Error {
        S3Error::Transport {
            endpoint: self.endpoint(),
            method,
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Uploads `path` as `key`: one PUT up to the part size, a multipart upload above it (the
    /// upload aborted if any part fails). `sha256` is the file's SHA-256 when the caller knows
    /// it already (a single PUT signs it without reading the file twice).
    pub fn put_file(&self, key: &str, path: &Path, sha256: Option<&str>) -> Result<(), S3Error> {
        let length = std::fs::metadata(path)
            .map_err(S3Error::io_err("stat", path))?
            .len();
        if length > self.part_size {
            return self.put_multipart(key, path, length);
        }
        let sha256 = match sha256 {
            Some(sha) => sha.to_string(),
            None => file_sha256(path)?,
        };
        let file = File::open(path).map_err(S3Error::io_err("open", path))?;
        let request = Request {
            method: "PUT",
            key,
            query: Vec::new(),
            headers: vec![("content-length".to_string(), length.to_string())],
            payload_sha256: sha256,
        };
        self.send(request, Body::Reader(Box::new(file)))?;
        Ok(())
    }

    /// Uploads `bytes` as `key` in one PUT.
    pub fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), S3Error> {
        let request = Request {
            method: "PUT",
            key,
            query: Vec::new(),
            headers: vec![("content-length".to_string(), bytes.len().to_string())],
            payload_sha256: hex::encode(Sha256::digest(bytes)),
        };
        self.send(request, Body::Bytes(bytes))?;
        Ok(())
    }

    fn put_multipart(&self, key: &str, path: &Path, length: u64) -> Result<(), S3Error> {
        let started = self.send(
            Request {
                method: "POST",
                key,
                query: vec![("uploads".to_string(), String::new())],
                headers: Vec::new(),
                payload_sha256: EMPTY_SHA256.to_string(),
            },
            Body::Empty,
        )?;
        let reply = read_reply(started, "POST", key)?;
        let upload_id = xml_text(&reply, "UploadId").ok_or_else(|| S3Error::BadReply {
            method: "POST",
            key: key.to_string(),
            reason: "no UploadId in the reply to starting a multipart upload".to_string(),
        })?;
        let uploaded = self.upload_parts(key, path, length, &upload_id);
        let completed = uploaded.and_then(|etags| {
            let mut body = String::from("<CompleteMultipartUpload>");
            for (number, etag) in etags.iter().enumerate() {
                body.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                    number + 1,
                    xml_escape(etag)
                ));
            }
            body.push_str("</CompleteMultipartUpload>");
            let reply = self.send(
                Request {
                    method: "POST",
                    key,
                    query: vec![("uploadId".to_string(), upload_id.clone())],
                    headers: vec![("content-length".to_string(), body.len().to_string())],
                    payload_sha256: hex::encode(Sha256::digest(body.as_bytes())),
                },
                Body::Bytes(body.as_bytes()),
            )?;
            // S3 may answer 200 and still report an error in the body.
            let reply = read_reply(reply, "POST", key)?;
            match xml_text(&reply, "Code") {
                Some(code) if reply.contains("<Error>") => Err(S3Error::Refused {
                    method: "POST",
                    key: key.to_string(),
                    status: 200,
                    message: xml_text(&reply, "Message").unwrap_or_default(),
                    code,
                }),
                _ => Ok(()),
            }
        });
        if completed.is_err() {
            let abort = self.send(
                Request {
                    method: "DELETE",
                    key,
                    query: vec![("uploadId".to_string(), upload_id)],
                    headers: Vec::new(),
                    payload_sha256: EMPTY_SHA256.to_string(),
                },
                Body::Empty,
            );
            if let Err(error) = abort {
                tracing::warn!(key, %error, "aborting a failed multipart upload");
            }
        }
        completed
    }

    /// Uploads `path` in parts; returns their ETags in order.
    fn upload_parts(
        &self,
        key: &str,
        path: &Path,
        length: u64,
        upload_id: &str,
    ) -> Result<Vec<String>, S3Error> {
        let mut file = File::open(path).map_err(S3Error::io_err("open", path))?;
        let mut etags = Vec::new();
        let mut buffer = Vec::new();
        let mut sent = 0u64;
        while sent < length {
            let size = self.part_size.min(length - sent);
            buffer.clear();
            (&mut file)
                .take(size)
                .read_to_end(&mut buffer)
                .map_err(S3Error::io_err("read", path))?;
            if buffer.len() as u64 != size {
                return Err(S3Error::Io {
                    operation: "read",
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank during its upload",
                    ),
                });
            }
            let number = etags.len() + 1;
            let response = self.send(
                Request {
                    method: "PUT",
                    key,
                    query: vec![
                        ("partNumber".to_string(), number.to_string()),
                        ("uploadId".to_string(), upload_id.to_string()),
                    ],
                    headers: vec![("content-length".to_string(), buffer.len().to_string())],
                    payload_sha256: hex::encode(Sha256::digest(&buffer)),
                },
                Body::Bytes(&buffer),
            )?;
            let etag = response
                .header("ETag")
                .ok_or_else(|| S3Error::BadReply {
                    method: "PUT",
                    key: key.to_string(),
                    reason: format!("part {number} was stored without an ETag"),
                })?
                .to_string();
            etags.push(etag);
            sent += size;
        }
        Ok(etags)
    }

    /// Downloads `key` into `path` (created or truncated, fsynced); returns its length.
    pub fn get_to_file(&self, key: &str, path: &Path) -> Result<u64, S3Error> {
        let response = self.get(key)?;
        let mut file = File::create(path).map_err(S3Error::io_err("create", path))?;
        let copied = io::copy(&mut response.into_reader(), &mut file)
            .map_err(|e| self.transport("GET", key, e))?;
        file.flush().map_err(S3Error::io_err("write", path))?;
        file.sync_all().map_err(S3Error::io_err("fsync", path))?;
        Ok(copied)
    }

    /// Downloads `key` into memory (small objects: manifests).
    pub fn get_bytes(&self, key: &str) -> Result<Vec<u8>, S3Error> {
        let response = self.get(key)?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(16 * 1024 * 1024)
            .read_to_end(&mut bytes)
            .map_err(|e| self.transport("GET", key, e))?;
        Ok(bytes)
    }

    fn get(&self, key: &str) -> Result<ureq::Response, S3Error> {
        self.send(
            Request {
                method: "GET",
                key,
                query: Vec::new(),
                headers: Vec::new(),
                payload_sha256: EMPTY_SHA256.to_string(),
            },
            Body::Empty,
        )
    }

    /// Deletes `key` (absent is fine: S3 answers a delete of a missing key with success).
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        match self.send(
            Request {
                method: "DELETE",
                key,
                query: Vec::new(),
                headers: Vec::new(),
                payload_sha256: EMPTY_SHA256.to_string(),
            },
            Body::Empty,
        ) {
            Ok(_) | Err(S3Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Signs and sends one request; a non-2xx answer becomes an [`S3Error`].
    fn send(&self, request: Request<'_>, body: Body<'_>) -> Result<ureq::Response, S3Error> {
        let path = format!(
            "{}/{}/{}",
            self.base_path,
            uri_encode(&self.name, true),
            uri_encode(request.key, false)
        );
        let mut query: Vec<(String, String)> = request
            .query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        query.sort();
        let query_string = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let amz_date = Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = request.headers.clone();
        headers.push(("host".to_string(), self.authority.clone()));
        headers.push((
            "x-amz-content-sha256".to_string(),
            request.payload_sha256.clone(),
        ));
        headers.push(("x-amz-date".to_string(), amz_date.clone()));
        let authorization = sign_v4(
            &self.credentials,
            &self.region,
            &SignInput {
                method: request.method,
                canonical_uri: &path,
                canonical_query: &query_string,
                headers: &headers,
                payload_sha256: &request.payload_sha256,
                amz_date: &amz_date,
            },
        );
        let url = if query_string.is_empty() {
            format!("{}://{}{path}", self.scheme, self.authority)
        } else {
            format!("{}://{}{path}?{query_string}", self.scheme, self.authority)
        };
        let mut call = self.agent.request(request.method, &url);
        for (name, value) in &headers {
            call = call.set(name, value);
        }
        call = call.set("authorization", &authorization);
        let result = match body {
            Body::Empty => call.call(),
            Body::Bytes(bytes) => call.send_bytes(bytes),
            Body::Reader(reader) => call.send(reader),
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let code = xml_text(&text, "Code").unwrap_or_default();
                if status == 404 && (code.is_empty() || code == "NoSuchKey") {
                    return Err(S3Error::NotFound {
                        bucket: self.name.clone(),
                        key: request.key.to_string(),
                    });
                }
                Err(S3Error::Refused {
                    method: request.method,
                    key: request.key.to_string(),
                    status,
                    message: xml_text(&text, "Message").unwrap_or_default(),
                    code,
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                Err(self.transport(request.method, request.key, transport))
            }
        }
    }
}

enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(Box<dyn Read + 'a>),
}

fn read_reply(
    response: ureq::Response,
    method: &'static str,
    key: &str,
) -> Result<String, S3Error> {
    response.into_string().map_err(|e| S3Error::BadReply {
        method,
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn file_sha256(path: &Path) -> Result<String, S3Error> {
    let mut file = File::open(path).map_err(S3Error::io_err("open", path))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(S3Error::io_err("read", path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// What Signature Version 4 signs of a request.
struct SignInput<'a> {
    method: &'a str,
    /// The URI-encoded path.
    canonical_uri: &'a str,
    /// URI-encoded `key=value` pairs sorted by key, joined by `&`.
    canonical_query: &'a str,
    /// Every header to sign (names in any case; `host` among them).
    headers: &'a [(String, String)],
    payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    amz_date: &'a str,
}

/// The `Authorization` header of an AWS Signature Version 4 request for service `s3`.
fn sign_v4(credentials: &Credentials, region: &str, input: &SignInput<'_>) -> String {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        input.method, input.canonical_uri, input.canonical_query, input.payload_sha256
    );
    let date = &input.amz_date[..8.min(input.amz_date.len())];
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, b"s3");
    let key = hmac(&key, b"aws4_request");
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes all but the unreserved characters (and `/` unless `encode_slash`), as
/// Signature Version 4 wants.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The text of the first `<tag>` element of an XML reply, unescaped.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(
        xml[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of AWS's Signature Version 4 documentation (its published
    /// example key pair and expected signature).
    #[test]
    fn signs_the_documented_example_request() {
        let credentials = Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
        };
        let headers = vec![
            (
                "Host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("Range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
            ("x-amz-date".to_string(), "20130524T000000Z".to_string()),
        ];
        let authorization = sign_v4(
            &credentials,
            "us-east-1",
            &SignInput {
                method: "GET",
                canonical_uri: "/test.txt",
                canonical_query: "",
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
                amz_date: "20130524T000000Z",
            },
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_and_queries_are_encoded_as_signature_v4_wants() {
        assert_eq!(uri_encode("a b/c+d~e.f_g-h", false), "a%20b/c%2Bd~e.f_g-h");
        assert_eq!(uri_encode("x/y=", true), "x%2Fy%3D");
    }

    #[test]
    fn endpoints_keep_non_default_ports_and_drop_default_ones() {
        let credentials = Credentials {
            access_key_id: "k".to_string(),
            secret_access_key: "s".to_string(),
        };
        let local = Bucket::new(
            "http://127.0.0.1:9000/",
            "b",
            "r",
            "",
            credentials.clone(),
            5,
        );
        assert_eq!(local.authority, "127.0.0.1:9000");
        assert_eq!(local.base_path, "");
        let aws = Bucket::new(
            "https://s3.example.com:443/base/",
            "b",
            "r",
            "p/",
            credentials,
            5,
        );
        assert_eq!(aws.authority, "s3.example.com");
        assert_eq!(aws.base_path, "/base");
        assert_eq!(aws.key("x.tar.zst"), "p/x.tar.zst");
        assert_eq!(aws.location("p/x.tar.zst"), "s3://b/p/x.tar.zst");
    }

    #[test]
    fn xml_replies_are_read_and_unescaped() {
        let reply =
            "<Error><Code>NoSuchUpload</Code><Message>a &amp; b &lt;c&gt;</Message></Error>";
        assert_eq!(xml_text(reply, "Code").as_deref(), Some("NoSuchUpload"));
        assert_eq!(xml_text(reply, "Message").as_deref(), Some("a & b <c>"));
        assert_eq!(xml_text(reply, "UploadId"), None);
    }
}
