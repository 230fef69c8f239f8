//! Generates the control-plane API from `proto/`. protoc comes from the protoc-bin-vendored
//! crate, so building needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        // Views are shown as JSON by the proxy's /config and by weftctl.
        .type_attribute(
            ".weft.discovery.v1",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .compile_protos(
            &[
                "proto/weft/identity/v1/identity.proto",
                "proto/weft/discovery/v1/discovery.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
