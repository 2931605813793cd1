//! Compiles the Silt protos with `protox` (a Rust protobuf compiler, so no `protoc` is needed on
//! the build machine) and generates the tonic client and server code.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["silt/v1/silt.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("silt_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Payload fields are `bytes::Bytes`: batches travel from the wire to the segment without
        // a copy.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
