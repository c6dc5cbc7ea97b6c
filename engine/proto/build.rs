//! Generates the gRPC code from `proto/vitrine/v1/*.proto` with a vendored
//! `protoc`, so a fresh machine needs no system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("vitrine/v1/vitrine.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    // prost-build runs the compiler named by PROTOC.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let descriptors = PathBuf::from(std::env::var("OUT_DIR")?).join("vitrine_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .codec_path("crate::codec::VitrineCodec")
        .compile_protos(&[proto], &[root])?;
    Ok(())
}
