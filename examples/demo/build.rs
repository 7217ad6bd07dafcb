//! Generates the Greeter client and server from the project's `proto/greeter.proto`, the way a
//! workload of your own would.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../../proto/greeter.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&[proto], &["../../proto"])?;
    Ok(())
}
