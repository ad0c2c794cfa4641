//! The `paddock.v1` gRPC API shared by the controller, the node agent and the CLI.

/// Generated messages and services of package `paddock.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("paddock.v1");

    /// Encoded file descriptors, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("paddock_descriptor");
}

/// The client request id of a VPS mutation: sent in call metadata, so that a retry of a change
/// whose answer was lost is answered instead of done twice (see the controller's `requests`).
pub mod request_id {
    /// The metadata key it travels in.
    pub const METADATA_KEY: &str = "paddock-request-id";
    /// Longest id accepted.
    pub const MAX_LEN: usize = 128;
    /// What a valid id is made of, for error messages.
    pub const RULE: &str = "1-128 letters, digits, '-', '_', '.' or ':'";

    /// Whether `id` is a valid request id: 1-[`MAX_LEN`] ASCII letters, digits, `-_.:`.
    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }
}
