//! Compiles `proto/snakepit_bridge.proto` with protox (pure Rust, no system protoc needed).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let proto = proto_dir.join("snakepit_bridge.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let fds = protox::compile([&proto], [&proto_dir])?;
    // The server side is generated too: the transport tests run an in-process tonic server.
    tonic_prost_build::configure()
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
