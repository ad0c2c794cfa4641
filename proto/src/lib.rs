//! The `paddock.v1` gRPC API shared by the controller, the node agent and the CLI.

/// Generated messages and services of package `paddock.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("paddock.v1");

    /// Encoded file descriptors, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("paddock_descriptor");
}
