//! Finds the SQLite amalgamation that the crates.io crate `libsqlite3-sys` ships,
//! fetching the crate through cargo into the local registry. Shared by the tests and
//! the compute benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding `sqlite3.c` and `sqlite3.h`; `work` holds a scratch manifest.
pub fn sqlite_source(work: &Path) -> PathBuf {
    let project = work.join("sqlite-source");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"sqlite-source\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n\n[dependencies]\nlibsqlite3-sys = \"=0.39.1\"\n",
    )
    .unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    let metadata = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(project.join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        metadata.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let json = String::from_utf8_lossy(&metadata.stdout);
    let manifest = json
        .split("\"manifest_path\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|path| path.contains("libsqlite3-sys-"))
        .expect("libsqlite3-sys in cargo metadata");
    Path::new(manifest).parent().unwrap().join("sqlite3")
}

/// clang flags that build SQLite for wasm32-wasi.
pub const SQLITE_WASM_FLAGS: &[&str] = &[
    "-DSQLITE_THREADSAFE=0",
    "-DSQLITE_OMIT_LOAD_EXTENSION",
    "-DSQLITE_OMIT_WAL",
    "-D_WASI_EMULATED_MMAN",
    "-D_WASI_EMULATED_GETPID",
    "-lwasi-emulated-mman",
    "-lwasi-emulated-getpid",
];
