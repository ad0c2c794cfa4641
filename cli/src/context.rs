//! The CLI configuration file and its named contexts (controller URL + token).
//!
//! The file is TOML: `current = "demo"` plus one `[contexts.NAME]` table per
//! controller. It holds bearer tokens, so it is written atomically with mode
//! 0600 inside a directory created with mode 0700. `PADDOCK_CONFIG` moves it;
//! `PADDOCK_CONTROLLER`, `PADDOCK_TOKEN` and `PADDOCK_CA_CERT` override the
//! selected context.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the config file.
pub const ENV_CONFIG: &str = "PADDOCK_CONFIG";
/// Environment variable overriding the context's controller URL.
pub const ENV_CONTROLLER: &str = "PADDOCK_CONTROLLER";
/// Environment variable overriding the context's token.
pub const ENV_TOKEN: &str = "PADDOCK_TOKEN";
/// Environment variable naming the CA certificate that overrides the context's.
pub const ENV_CA_CERT: &str = "PADDOCK_CA_CERT";

/// Why the configuration could not be read, written or resolved.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot find the home directory: set HOME or {ENV_CONFIG}")]
    NoHome,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("encoding the config file: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("{op} {path}: {source}")]
    Write {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no context configured: run `paddock context add NAME --controller URL --token TOKEN` \
         (or set {ENV_CONTROLLER} and {ENV_TOKEN})"
    )]
    NoContext,
    #[error("context {name:?} does not exist (known: {known})")]
    UnknownContext { name: String, known: String },
    #[error(
        "no token for the controller at {controller}: set {ENV_TOKEN} or use `paddock context add`"
    )]
    NoToken { controller: String },
    #[error("controller URL {0:?} must start with http:// or https://")]
    BadControllerUrl(String),
}

/// One named controller endpoint and the credentials to use there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// gRPC endpoint of the controller, e.g. `http://127.0.0.1:7443`; several controllers
    /// sharing one store separated by commas, tried in order.
    pub controller: String,
    /// Bearer token sent on every call.
    pub token: String,
    /// PEM file of the CA that signed the controller's certificate (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Every known context by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// Values from the environment that take precedence over the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// `PADDOCK_CONTROLLER`.
    pub controller: Option<String>,
    /// `PADDOCK_TOKEN`.
    pub token: Option<String>,
    /// `PADDOCK_CA_CERT`.
    pub ca_cert: Option<PathBuf>,
}

impl EnvOverrides {
    /// Reads `PADDOCK_CONTROLLER` and `PADDOCK_TOKEN`; empty values count as unset.
    pub fn from_env() -> Self {
        let read = |key| std::env::var(key).ok().filter(|value| !value.is_empty());
        Self {
            controller: read(ENV_CONTROLLER),
            token: read(ENV_TOKEN),
            ca_cert: read(ENV_CA_CERT).map(PathBuf::from),
        }
    }
}

/// Where a resolved token came from, so an authentication error can say what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The token of the named context.
    Context(String),
    /// The `PADDOCK_TOKEN` environment variable.
    Env,
}

/// Everything needed to talk to one controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The context this came from, if any (env variables alone need none).
    pub context: Option<String>,
    /// Controller URL.
    pub controller: String,
    /// Bearer token.
    pub token: String,
    /// Where the token came from.
    pub token_source: TokenSource,
    /// CA certificate for https controllers.
    pub ca_cert: Option<PathBuf>,
}

/// The config file path: `PADDOCK_CONFIG`, else `~/.config/paddock/config.toml`.
pub fn config_path() -> Result<PathBuf, ContextError> {
    if let Some(path) = std::env::var_os(ENV_CONFIG).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(ContextError::NoHome)?;
    Ok(PathBuf::from(home).join(".config/paddock/config.toml"))
}

/// The controller URLs of a `controller` value: one URL, or several controllers sharing one
/// store separated by commas (`https://a:7443,https://b:7443`), tried in order.
pub fn controller_urls(controller: &str) -> Vec<&str> {
    controller
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Checks that every controller URL has a scheme tonic can dial.
pub fn validate_controller_url(controller: &str) -> Result<(), ContextError> {
    let urls = controller_urls(controller);
    if urls.is_empty() {
        return Err(ContextError::BadControllerUrl(controller.to_owned()));
    }
    match urls
        .into_iter()
        .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
    {
        Some(bad) => Err(ContextError::BadControllerUrl(bad.to_owned())),
        None => Ok(()),
    }
}

impl Config {
    /// Loads the file at `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ContextError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| ContextError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes the file atomically (temp file + rename) with mode 0600,
    /// creating missing parent directories with mode 0700.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let text = toml::to_string(self)?;
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|source| ContextError::Write {
                op: "creating directory",
                path: parent.clone(),
                source,
            })?;
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.toml".to_owned());
        let temp = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let write_temp = || -> std::io::Result<()> {
            // A stale temp file may have other permissions: never reuse it.
            let _ = std::fs::remove_file(&temp);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        if let Err(source) = write_temp() {
            let _ = std::fs::remove_file(&temp);
            return Err(ContextError::Write {
                op: "writing",
                path: temp,
                source,
            });
        }
        std::fs::rename(&temp, path).map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            ContextError::Write {
                op: "replacing",
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Adds or replaces a context. It becomes current when `make_current` is
    /// set or when no context was current before. Returns whether it is current.
    pub fn add(&mut self, name: &str, context: Context, make_current: bool) -> bool {
        self.contexts.insert(name.to_owned(), context);
        let current_missing = self
            .current
            .as_ref()
            .is_none_or(|current| !self.contexts.contains_key(current));
        if make_current || current_missing {
            self.current = Some(name.to_owned());
        }
        self.current.as_deref() == Some(name)
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str) -> Result<(), ContextError> {
        if !self.contexts.contains_key(name) {
            return Err(self.unknown(name));
        }
        self.current = Some(name.to_owned());
        Ok(())
    }

    /// Removes a context; clears `current` if it named it.
    pub fn remove(&mut self, name: &str) -> Result<(), ContextError> {
        if self.contexts.remove(name).is_none() {
            return Err(self.unknown(name));
        }
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
        Ok(())
    }

    /// Picks the controller and token to use: the `--context` flag, else the
    /// current context, with `PADDOCK_CONTROLLER` / `PADDOCK_TOKEN` on top.
    pub fn resolve(
        &self,
        selected: Option<&str>,
        env: &EnvOverrides,
    ) -> Result<Target, ContextError> {
        let chosen = match selected.or(self.current.as_deref()) {
            Some(name) => Some((
                name,
                self.contexts.get(name).ok_or_else(|| self.unknown(name))?,
            )),
            None => None,
        };
        let controller = env
            .controller
            .clone()
            .or_else(|| chosen.map(|(_, ctx)| ctx.controller.clone()))
            .ok_or(ContextError::NoContext)?;
        validate_controller_url(&controller)?;
        let (token, token_source) = match (&env.token, chosen) {
            (Some(token), _) => (token.clone(), TokenSource::Env),
            (None, Some((name, ctx))) => (ctx.token.clone(), TokenSource::Context(name.to_owned())),
            (None, None) => return Err(ContextError::NoToken { controller }),
        };
        Ok(Target {
            context: chosen.map(|(name, _)| name.to_owned()),
            controller,
            token,
            token_source,
            ca_cert: env
                .ca_cert
                .clone()
                .or_else(|| chosen.and_then(|(_, ctx)| ctx.ca_cert.clone())),
        })
    }

    fn unknown(&self, name: &str) -> ContextError {
        let known = if self.contexts.is_empty() {
            "none; run `paddock context add`".to_owned()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        ContextError::UnknownContext {
            name: name.to_owned(),
            known,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ctx(controller: &str, token: &str) -> Context {
        Context {
            controller: controller.to_owned(),
            token: token.to_owned(),
            ca_cert: None,
        }
    }

    #[test]
    fn round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/paddock/config.toml");
        let mut config = Config::default();
        config.add("demo", ctx("http://127.0.0.1:7443", "secret-1"), false);
        config.add(
            "prod",
            Context {
                ca_cert: Some(PathBuf::from("/etc/paddock/ca.pem")),
                ..ctx("https://paddock.example:7443", "secret-2")
            },
            false,
        );
        config.save(&path).expect("save");

        let loaded = Config::load(&path).expect("load");
        assert_eq!(loaded, config);
        assert_eq!(loaded.current.as_deref(), Some("demo"));

        let file_mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("parent"))
            .expect("stat dir")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        // Saving again replaces the file and leaves no temp file behind.
        config.save(&path).expect("save again");
        let entries: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn file_format_is_the_documented_one() {
        let text =
            "current = \"demo\"\n\n[contexts.demo]\ncontroller = \"http://127.0.0.1:7443\"\n\
                    token = \"abc\"\nca_cert = \"/tmp/ca.pem\"\n";
        let config: Config = toml::from_str(text).expect("parse");
        assert_eq!(config.current.as_deref(), Some("demo"));
        assert_eq!(
            config.contexts["demo"].ca_cert.as_deref(),
            Some(Path::new("/tmp/ca.pem"))
        );
        let err = toml::from_str::<Config>("[contexts.demo]\ncontroler = \"x\"\ntoken = \"t\"\n")
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("controler"), "{err}");
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::load(&dir.path().join("absent.toml")).expect("load");
        assert_eq!(config, Config::default());
        let err = config
            .resolve(None, &EnvOverrides::default())
            .expect_err("no context");
        assert!(err.to_string().contains("paddock context add"), "{err}");
    }

    #[test]
    fn first_context_becomes_current_and_use_switches() {
        let mut config = Config::default();
        assert!(config.add("a", ctx("http://a:1", "ta"), false));
        assert!(!config.add("b", ctx("http://b:1", "tb"), false));
        assert_eq!(config.current.as_deref(), Some("a"));
        assert!(config.add("c", ctx("http://c:1", "tc"), true));
        config.use_context("b").expect("use b");
        let target = config
            .resolve(None, &EnvOverrides::default())
            .expect("resolve");
        assert_eq!(target.controller, "http://b:1");
        assert_eq!(target.token, "tb");
        assert_eq!(target.token_source, TokenSource::Context("b".into()));
        assert!(config.use_context("zzz").is_err());
    }

    #[test]
    fn context_flag_beats_current_and_unknown_names_are_listed() {
        let mut config = Config::default();
        config.add("a", ctx("http://a:1", "ta"), false);
        config.add("b", ctx("http://b:1", "tb"), false);
        let target = config
            .resolve(Some("b"), &EnvOverrides::default())
            .expect("resolve");
        assert_eq!(target.context.as_deref(), Some("b"));
        let err = config
            .resolve(Some("nope"), &EnvOverrides::default())
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("nope") && err.contains("a, b"), "{err}");
    }

    #[test]
    fn env_overrides_context_values() {
        let mut config = Config::default();
        config.add("a", ctx("http://a:1", "ta"), false);
        let env = EnvOverrides {
            controller: Some("http://env:2".into()),
            token: None,
            ..EnvOverrides::default()
        };
        let target = config.resolve(None, &env).expect("resolve");
        assert_eq!(target.controller, "http://env:2");
        assert_eq!(target.token, "ta");

        let env = EnvOverrides {
            controller: None,
            token: Some("from-env".into()),
            ..EnvOverrides::default()
        };
        let target = config.resolve(None, &env).expect("resolve");
        assert_eq!(target.controller, "http://a:1");
        assert_eq!(target.token, "from-env");
        assert_eq!(target.token_source, TokenSource::Env);

        let env = EnvOverrides {
            ca_cert: Some("/env/ca.crt".into()),
            ..EnvOverrides::default()
        };
        let target = config.resolve(None, &env).expect("resolve");
        assert_eq!(target.ca_cert.as_deref(), Some(Path::new("/env/ca.crt")));
    }

    #[test]
    fn env_alone_needs_no_config() {
        let config = Config::default();
        let env = EnvOverrides {
            controller: Some("http://env:2".into()),
            token: Some("t".into()),
            ..EnvOverrides::default()
        };
        let target = config.resolve(None, &env).expect("resolve");
        assert_eq!(target.context, None);
        let env = EnvOverrides {
            controller: Some("http://env:2".into()),
            token: None,
            ..EnvOverrides::default()
        };
        assert!(matches!(
            config.resolve(None, &env),
            Err(ContextError::NoToken { .. })
        ));
        let env = EnvOverrides {
            controller: Some("env:2".into()),
            token: Some("t".into()),
            ..EnvOverrides::default()
        };
        assert!(matches!(
            config.resolve(None, &env),
            Err(ContextError::BadControllerUrl(_))
        ));
    }

    #[test]
    fn remove_clears_current() {
        let mut config = Config::default();
        config.add("a", ctx("http://a:1", "ta"), false);
        config.remove("a").expect("remove");
        assert_eq!(config.current, None);
        assert!(config.remove("a").is_err());
    }
}
