//! Compiles `proto/*.proto` into Rust with protox (pure Rust, no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir("proto")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    files.sort();
    let fds = protox::compile(&files, ["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // RPCs a server does not implement yet answer UNIMPLEMENTED instead of failing the build.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
