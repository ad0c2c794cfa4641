//! A local S3-compatible service for tests: moto's server (PyPI `moto[server]`, which
//! `make test` installs into `target/moto-venv` through `scripts/test-deps.sh`), with request
//! signatures checked.
//!
//! moto checks Signature Version 4 against the access keys of its IAM once its first
//! `INITIAL_NO_AUTH_ACTION_COUNT` requests are spent; the harness spends them creating a user,
//! its key and its policy ([`SETUP`]), then creates the bucket with that key. From then on
//! a request signed with any other secret is refused (`SignatureDoesNotMatch`), so the
//! product's signer is tested by a real verifier, not only by the documented example.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The venv holding moto: `PADDOCK_MOTO_VENV`, else `target/moto-venv` of this workspace.
pub fn venv() -> PathBuf {
    match std::env::var_os("PADDOCK_MOTO_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("moto-venv"),
    }
}

/// Whether a test that needs the S3 service may run: moto must be installed; without it the
/// test fails under `PADDOCK_REQUIRE_PRIVILEGED=1` (CI) and is skipped loudly otherwise.
pub fn require_moto() -> bool {
    if venv().join("bin").join("moto_server").exists() {
        return true;
    }
    let why = format!(
        "this test needs moto's S3 server in {} (`scripts/test-deps.sh` installs it)",
        venv().display()
    );
    if std::env::var("PADDOCK_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{why} (PADDOCK_REQUIRE_PRIVILEGED=1 forbids skipping it)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// A running S3 service with one bucket and one signing key; stopped on drop.
pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Server {
    /// Starts the service on `address` (a free port) and makes the bucket.
    pub fn start(address: Ipv4Addr) -> Result<Self> {
        let port = TcpListener::bind((address, 0))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .with_context(|| format!("a free port on {address}"))?;
        let dir = tempfile::Builder::new()
            .prefix("paddock-s3-")
            .tempdir()
            .context("temp dir")?;
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = Command::new(venv().join("bin").join("moto_server"))
            .args(["-H", &address.to_string(), "-p", &port.to_string()])
            // The first three requests (the setup's IAM calls) go unchecked, every later one
            // must be signed with a key of moto's IAM.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start moto_server")?;
        let mut server = Self {
            child,
            dir,
            endpoint: format!("http://{address}:{port}"),
            bucket: "paddock-test-backups".to_string(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(SocketAddr::from((address, port))).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen within 60 s:\n{}", server.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = server.python(SETUP, &[])?;
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some(id), Some(secret)) => {
                server.access_key_id = id.to_string();
                server.secret_access_key = secret.to_string();
            }
            _ => bail!("setup printed no key: {out}"),
        }
        server.python(
            "import os; client().create_bucket(Bucket=os.environ['BUCKET'])",
            &[],
        )?;
        Ok(server)
    }

    /// A file holding the secret key (as `secret_access_key_file` wants).
    pub fn secret_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("secret");
        std::fs::write(&path, format!("{}\n", self.secret_access_key))?;
        Ok(path)
    }

    /// The agent's `backup_s3` setting as an inline TOML table.
    pub fn agent_setting(&self, prefix: &str, part_size_mib: u64) -> Result<String> {
        Ok(format!(
            "{{ endpoint = \"{}\", bucket = \"{}\", prefix = \"{prefix}\", access_key_id = \"{}\", \
             secret_access_key_file = \"{}\", part_size_mib = {part_size_mib} }}",
            self.endpoint,
            self.bucket,
            self.access_key_id,
            self.secret_file()?.display()
        ))
    }

    /// Object keys and sizes in the bucket, sorted by key.
    pub fn objects(&self) -> Result<Vec<(String, u64)>> {
        let out = self.python(
            "import os\nfor o in client().list_objects_v2(Bucket=os.environ['BUCKET']).get('Contents', []):\n    print(o['Key'], o['Size'])",
            &[],
        )?;
        let mut objects = Vec::new();
        for line in out.lines() {
            if let Some((key, size)) = line.rsplit_once(' ') {
                objects.push((key.to_string(), size.parse().context("size")?));
            }
        }
        objects.sort();
        Ok(objects)
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.dir.path().join("download");
        self.python(
            "import os; client().download_file(os.environ['BUCKET'], os.environ['KEY'], os.environ['FILE'])",
            &[("KEY", key), ("FILE", &path.to_string_lossy())],
        )?;
        Ok(std::fs::read(&path)?)
    }

    /// Replaces an object's bytes.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.path().join("upload");
        std::fs::write(&path, bytes)?;
        self.python(
            "import os; client().upload_file(os.environ['FILE'], os.environ['BUCKET'], os.environ['KEY'])",
            &[("KEY", key), ("FILE", &path.to_string_lossy())],
        )?;
        Ok(())
    }

    /// moto's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Runs `script` with boto3, `client()` returning an S3 client signed with the test key.
    fn python(&self, script: &str, env: &[(&str, &str)]) -> Result<String> {
        let program = format!(
            "import boto3, os\n\
             def client():\n    \
                 return boto3.client('s3', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1', \
                 aws_access_key_id=os.environ.get('KEY_ID') or 'setup', \
                 aws_secret_access_key=os.environ.get('SECRET') or 'setup')\n\
             {script}\n"
        );
        let out = Command::new(venv().join("bin").join("python"))
            .args(["-c", &program])
            .env("ENDPOINT", &self.endpoint)
            .env("BUCKET", &self.bucket)
            .env("KEY_ID", &self.access_key_id)
            .env("SECRET", &self.secret_access_key)
            .envs(env.iter().copied())
            .output()
            .context("run the venv's python")?;
        if !out.status.success() {
            bail!(
                "python failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Spends the unchecked requests: an IAM user allowed everything on S3, and its key.
const SETUP: &str = "import json
iam = boto3.client('iam', endpoint_url=os.environ['ENDPOINT'], region_name='us-east-1',
                   aws_access_key_id='setup', aws_secret_access_key='setup')
iam.create_user(UserName='paddock')
key = iam.create_access_key(UserName='paddock')['AccessKey']
iam.put_user_policy(UserName='paddock', PolicyName='s3', PolicyDocument=json.dumps(
    {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}))
print(key['AccessKeyId'], key['SecretAccessKey'])";

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
