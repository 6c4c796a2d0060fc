//! Generates the clawplane.v1 client and server code plus the descriptor set
//! that gRPC reflection serves. protoc comes from `protoc-bin-vendored`, so a
//! fresh machine needs nothing installed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);

    let proto_dir = PathBuf::from("clawplane/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    // The folder too, so a new .proto file is picked up.
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // `build_transport(false)`: AgentService has an RPC named `Connect`,
    // which collides with the generated `Client::connect` helper; clients
    // are built with `Client::new(channel)` instead.
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("clawplane_descriptor.bin"))
        .compile_protos(&files, &[PathBuf::from(".")])?;
    Ok(())
}
