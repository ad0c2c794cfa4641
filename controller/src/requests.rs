//! Client request ids: a retry of a VPS mutation whose answer was lost (the connection or the
//! controller died after the change committed) is answered with the VPS as it is instead of
//! being done twice or refused as a duplicate, as cloud APIs do with idempotency tokens.
//!
//! The id travels in the `paddock-request-id` metadata of the call (the CLI sends a fresh one
//! per command and repeats it on its own retries). The VPS record keeps the last tagged
//! mutation, written in the same transaction as the change itself, so a crash can never leave
//! the change without its id. Only the last one is kept: a retry must come before the next
//! tagged change of the same VPS, which is what a client retrying a lost answer does.

use paddock_proto::request_id::{self, MAX_LEN, METADATA_KEY};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::ControllerError;
use crate::model::validate::ValidationError;
use crate::model::{RequestOp as Op, TaggedRequest, VpsRecord};

impl TaggedRequest {
    /// `parameters` is a canonical rendering of what the request asks for.
    pub fn new(id: String, op: Op, parameters: &str) -> Self {
        let digest = Sha256::digest(parameters.as_bytes());
        Self {
            id,
            op,
            fingerprint: hex(&digest[..16]),
        }
    }

    /// Whether `self` was already carried out as `last` (the VPS's last tagged mutation):
    /// `Ok(true)` for a retry, `Ok(false)` for a new request, an error when the id was
    /// used for a different request.
    pub fn done_as(&self, last: Option<&TaggedRequest>) -> Result<bool, ControllerError> {
        match last {
            Some(last) if last.id == self.id => {
                if last.op == self.op && last.fingerprint == self.fingerprint {
                    Ok(true)
                } else {
                    Err(ValidationError::new(
                        "request id",
                        format!(
                            "{:?} was already used for another request ({:?} of this VPS); \
                             use a new id for a new request",
                            self.id, last.op
                        ),
                    )
                    .into())
                }
            }
            _ => Ok(false),
        }
    }
}

/// Whether `tagged` (if the client sent an id) was already carried out on `vps`: a retry is
/// answered with the VPS as it is. An error when the id was used for another request.
pub fn already_done(
    tagged: Option<&TaggedRequest>,
    vps: &VpsRecord,
) -> Result<bool, ControllerError> {
    match tagged {
        Some(tagged) => tagged.done_as(vps.last_request.as_ref()),
        None => Ok(false),
    }
}

/// The request id of a call, if the client sent one.
pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<String>, ControllerError> {
    let Some(value) = metadata.get(METADATA_KEY) else {
        return Ok(None);
    };
    let id = value.to_str().unwrap_or_default();
    if !request_id::is_valid(id) {
        return Err(ValidationError::new(
            "request id",
            format!(
                "{METADATA_KEY} must be 1-{MAX_LEN} characters of letters, digits, '-', '_', '.' \
                 or ':'"
            ),
        )
        .into());
    }
    Ok(Some(id.to_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_is_recognized_and_a_reused_id_refused() {
        let first = TaggedRequest::new("r1".into(), Op::Rebuild, "template=busybox");
        assert!(!first.done_as(None).expect("new"));
        assert!(first.done_as(Some(&first)).expect("retry"));
        let other_id = TaggedRequest::new("r2".into(), Op::Rebuild, "template=busybox");
        assert!(!other_id.done_as(Some(&first)).expect("new id"));
        let other_params = TaggedRequest::new("r1".into(), Op::Rebuild, "template=debian-12");
        assert!(other_params.done_as(Some(&first)).is_err());
        let other_op = TaggedRequest::new("r1".into(), Op::Restart, "template=busybox");
        assert!(other_op.done_as(Some(&first)).is_err());
    }

    #[test]
    fn ids_are_checked() {
        let mut metadata = MetadataMap::new();
        assert_eq!(from_metadata(&metadata).expect("none"), None);
        metadata.insert(METADATA_KEY, "0b6c-41:a.b_c".parse().expect("ascii"));
        assert_eq!(
            from_metadata(&metadata).expect("valid").as_deref(),
            Some("0b6c-41:a.b_c")
        );
        metadata.insert(METADATA_KEY, "a b".parse().expect("ascii"));
        assert!(from_metadata(&metadata).is_err());
        metadata.insert(
            METADATA_KEY,
            "x".repeat(MAX_LEN + 1).parse().expect("ascii"),
        );
        assert!(from_metadata(&metadata).is_err());
    }
}
