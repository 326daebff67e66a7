//! Builds the guest runtime (`crates/hypercell-guest`, its own workspace) so that a
//! plain `cargo build` produces a host binary with the guest ELF embedded.
//!
//! The guest is always built in release mode: it is the cell's runtime, and a debug
//! build of wasmtime would make every cell slow. Its target directory sits beside the
//! host's, so `cargo build`, `cargo test` and `cargo clippy` share one guest build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crates = manifest_dir
        .parent()
        .expect("crates/ holds this crate")
        .to_path_buf();
    let guest_dir = crates.join("hypercell-guest");
    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crates.parent().expect("the workspace root").join("target"));
    let guest_target = target_root.join("hypercell-guest");

    for watched in [
        "hypercell-guest/src",
        "hypercell-guest/wit",
        "hypercell-guest/mem/src",
        "hypercell-guest/Cargo.toml",
        "hypercell-guest/Cargo.lock",
        "hypercell-guest/link.ld",
        "hypercell-guest/build.rs",
        "hypercell-guest/.cargo/config.toml",
        "hypercell-abi/src",
        "hypercell-engine/src",
        "hypercell-engine/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", crates.join(watched).display());
    }

    let built = guest_target.join("x86_64-unknown-linux-gnu/release/hypercell-guest");
    // Two builds of one crate in one target directory: the runtime that serves
    // wasi:http components (feature `http`) first, kept under a name of its own, then
    // the plain one. Cargo keeps both builds' artifacts apart, so an unchanged runtime
    // is not built again; only the copy at the common path moves.
    build_guest(&guest_dir, &guest_target, &["--features", "http"]);
    let http_elf = guest_target.join("hypercell-guest-http");
    std::fs::copy(&built, &http_elf).expect("the guest runtime with http can be kept");
    build_guest(&guest_dir, &guest_target, &[]);
    println!("cargo:rustc-env=HYPERCELL_GUEST_ELF={}", built.display());
    println!(
        "cargo:rustc-env=HYPERCELL_GUEST_HTTP_ELF={}",
        http_elf.display()
    );
}

/// Builds the guest runtime in `guest_dir` into `guest_target` with `features`.
fn build_guest(guest_dir: &std::path::Path, guest_target: &std::path::Path, features: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(guest_dir)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(guest_target)
        .args(features);
    // The outer build's flags, wrappers (clippy-driver) and target must not leak into
    // the guest build, which has its own in crates/hypercell-guest/.cargo/config.toml.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
    ] {
        command.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO_PROFILE_") {
            command.env_remove(key);
        }
    }
    let status = command
        .status()
        .expect("failed to run cargo for the guest runtime");
    assert!(
        status.success(),
        "building the guest runtime (crates/hypercell-guest) failed"
    );
}
