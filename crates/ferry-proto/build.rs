//! Compiles `proto/ferry/v1/*.proto` with protox (pure Rust, no system `protoc`) and writes the descriptor set used
//! by server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "ferry/v1/common.proto",
        "ferry/v1/verification.proto",
        "ferry/v1/migration.proto",
        "ferry/v1/agent.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let fds = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ferry_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `AgentService/Connect` would clash with the generated `connect` constructor: clients build a Channel
        // themselves and call `XxxClient::new(channel)`.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
