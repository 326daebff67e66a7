//! Building the serve tests' and benchmark's wasi:http components, as a user would: one
//! from C with tools from crates.io, one from Python with componentize-py from PyPI,
//! which `scripts/setup` installs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool installed with `cargo install`: in cargo's own bin directory, or on the PATH.
fn cargo_tool(name: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let installed = cargo_home.map(|home| home.join("bin").join(name));
    match installed.filter(|path| path.exists()) {
        Some(path) => path,
        None => PathBuf::from(name),
    }
}

fn run_tool(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} (scripts/setup installs it): {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds `tests/programs/http_hello.c` in `dir` into a wasi:http proxy component: C
/// bindings from wit-bindgen for the world the guest serves, clang for wasm32-wasi as a
/// reactor, and `wasm-tools component new` with the proxy adapter of the
/// `wasi-preview1-component-adapter-provider` crate. Returns the component's path.
pub fn build_http_component(dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir).unwrap();
    run_tool(
        Command::new(cargo_tool("wit-bindgen"))
            .args(["c", "--world", "hypercell:guest/handler", "--out-dir"])
            .arg(dir)
            .arg(manifest.join("../hypercell-guest/wit")),
    );
    let core = dir.join("core.wasm");
    run_tool(
        Command::new("clang")
            .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-I"])
            .arg(dir)
            .arg(manifest.join("tests/programs/http_hello.c"))
            .arg(dir.join("handler.c"))
            .arg(dir.join("handler_component_type.o"))
            .arg("-o")
            .arg(&core),
    );
    let adapter = dir.join("wasi_snapshot_preview1.proxy.wasm");
    std::fs::write(
        &adapter,
        wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
    )
    .unwrap();
    let component = dir.join("http_hello.wasm");
    run_tool(
        Command::new(cargo_tool("wasm-tools"))
            .args(["component", "new"])
            .arg(&core)
            .arg("--adapt")
            .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
            .arg("-o")
            .arg(&component),
    );
    component
}

/// Builds `tests/programs/http_app.py` in `dir` into a wasi:http proxy component with
/// componentize-py (CPython and the app in one component), for the proxy world the
/// guest serves. Returns the component's path.
pub fn build_python_component(dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir).unwrap();
    let component = dir.join("http_app.wasm");
    // The app is copied beside the output, where componentize-py may cache its bytecode.
    std::fs::copy(
        manifest.join("tests/programs/http_app.py"),
        dir.join("http_app.py"),
    )
    .unwrap();
    // Through the interpreter its package was installed for, whatever is on the PATH.
    run_tool(
        Command::new("python3")
            .args([
                "-c",
                "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
                "-d",
            ])
            .arg(manifest.join("../hypercell-guest/wit"))
            .args(["-w", "hypercell:guest/handler", "componentize", "-p"])
            .arg(dir)
            .args(["http_app", "-o"])
            .arg(&component),
    );
    component
}
