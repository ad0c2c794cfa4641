//! A listen address that can be switched off: a socket address, or `"off"`.
//!
//! TOML has no null and an absent field means "the default", so a listener
//! that is on by default needs a value of its own to turn it off. Use with
//! `#[serde(with = "crate::optional_addr")]` on an `Option<SocketAddr>`.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serializer};

/// The value that disables the listener.
pub const OFF: &str = "off";

pub fn serialize<S: Serializer>(
    addr: &Option<SocketAddr>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => serializer.collect_str(addr),
        None => serializer.serialize_str(OFF),
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == OFF {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is neither an address like \"127.0.0.1:7454\" nor \"{OFF}\""
        ))
    })
}
