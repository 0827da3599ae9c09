//! Compiles the Open Inference Protocol's gRPC service definition with `protox` (a protobuf
//! compiler written in Rust), so building needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
