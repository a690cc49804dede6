//! Generates Rust types from the `.proto` files with protox (pure Rust: no `protoc`),
//! prost (structs), pbjson (proto3 JSON: browsers speak the signaling messages as JSON,
//! `hearthctl --json` prints API replies as JSON) and tonic (gRPC clients and servers).
//! The descriptor set of `hearth.v1` is written too, for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

const SIGNAL: &[&str] = &["hearth/signal/v1/signal.proto"];
const API: &[&str] = &[
    "hearth/v1/models.proto",
    "hearth/v1/meeting.proto",
    "hearth/v1/participant.proto",
    "hearth/v1/token.proto",
    "hearth/v1/event.proto",
    "hearth/v1/media.proto",
    "hearth/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in SIGNAL.iter().chain(API) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    // Signaling: plain messages.
    let fds = protox::compile(SIGNAL, ["."])?;
    let mut config = prost_build::Config::new();
    config
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    config.compile_fds(fds.clone())?;
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .out_dir(&out)
        .build(&[".hearth.signal"])?;

    // The embedding API: messages and gRPC services.
    let api = protox::Compiler::new(["."])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(API)?
        .file_descriptor_set();
    std::fs::write(out.join("hearth_v1_descriptor.bin"), api.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    config
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .bytes([
            ".hearth.v1.RtpPacket.data",
            ".hearth.v1.PublishTrackRequest.rtp",
        ]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(api.clone(), config)?;
    pbjson_build::Builder::new()
        .register_descriptors(&api.encode_to_vec())?
        .out_dir(&out)
        .build(&[".hearth.v1"])?;
    Ok(())
}
