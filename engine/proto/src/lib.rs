//! Vitrine's gRPC API, generated from `proto/vitrine/v1/vitrine.proto`
//! with tonic and prost: shared by the server, its tests and the load
//! generator, so both sides of every call are compiled from one file.

pub mod codec;

/// Package `vitrine.v1`: messages, clients and servers.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vitrine.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vitrine_descriptor");
