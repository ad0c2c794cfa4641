//! Generates the paddock.v1 code with the vendored protoc, so building needs no system protoc.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "paddock/v1/common.proto",
    "paddock/v1/tenants.proto",
    "paddock/v1/plans.proto",
    "paddock/v1/nodes.proto",
    "paddock/v1/vps.proto",
    "paddock/v1/billing.proto",
    "paddock/v1/snapshots.proto",
    "paddock/v1/agent.proto",
    "paddock/v1/backups.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("paddock_descriptor.bin"))
        .compile_protos(
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("."), well_known],
        )?;
    Ok(())
}
