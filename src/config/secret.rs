//! Secrets named by the configuration and read from the environment or a file, never written in it.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A secret value and where it came from. `Debug` shows the source, never the value.
#[derive(Clone)]
pub struct Secret {
    source: Source,
    value: SecretString,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    env: Option<String>,
    file: Option<PathBuf>,
}

#[derive(Clone)]
enum Source {
    Env(String),
    File(PathBuf),
}

impl Secret {
    /// The value, for the one place that must send it (an auth header, an HMAC key).
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Env(name) => write!(f, "Secret(env {name})"),
            Source::File(path) => write!(f, "Secret(file {})", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FORM: &str =
            "a secret is written as { env = \"VAR\" } or { file = \"/path\" }, never inline";
        // Not a table means the secret itself was written here: say so without echoing it.
        let value = serde_json::Value::deserialize(d)?;
        if !value.is_object() {
            return Err(D::Error::custom(FORM));
        }
        let reference =
            Reference::deserialize(value).map_err(|e| D::Error::custom(format!("{e}; {FORM}")))?;
        let (source, raw) = match reference {
            Reference {
                env: Some(name),
                file: None,
            } => {
                let value = std::env::var(&name).map_err(|_| {
                    D::Error::custom(format!("environment variable {name} is not set"))
                })?;
                (Source::Env(name), value)
            }
            Reference {
                env: None,
                file: Some(path),
            } => {
                let value = std::fs::read_to_string(&path).map_err(|e| {
                    D::Error::custom(format!("cannot read secret file {}: {e}", path.display()))
                })?;
                // Files written by `echo` or editors end in a newline that is not part of the secret.
                let value = value.trim_end_matches(['\r', '\n']).to_string();
                (Source::File(path), value)
            }
            _ => {
                return Err(D::Error::custom(
                    "give exactly one of `env` or `file` for a secret",
                ))
            }
        };
        if raw.is_empty() {
            let from = match &source {
                Source::Env(name) => format!("environment variable {name}"),
                Source::File(path) => format!("secret file {}", path.display()),
            };
            return Err(D::Error::custom(format!("{from} is empty")));
        }
        Ok(Secret {
            source,
            value: SecretString::from(raw),
        })
    }
}
