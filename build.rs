//! Generates the ONNX protobuf types (`carivis::train::onnx`) from the vendored `onnx.proto`,
//! with `protox` so that no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "src/train/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["src/train"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
