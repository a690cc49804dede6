//! Generates Rust types from the `.proto` files with protox (pure Rust: no `protoc`),
//! prost (structs) and pbjson (proto3 JSON mapping for the browser signaling).

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &["hearth/signal/v1/signal.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    config.compile_fds(fds.clone())?;

    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .out_dir(&out)
        .build(&[".hearth"])?;
    Ok(())
}
