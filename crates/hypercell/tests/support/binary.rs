//! Running the `hypercell` binary in tests: C programs compiled by clang on first use,
//! an isolated compile cache, and stdin fed from a thread.
#![allow(dead_code)]

pub use std::io::Write;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch directory shared by the tests: compiled C programs and the compile cache.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// Compiles `tests/programs/NAME.c` to wasm32-wasi with clang, once per test run.
pub fn c_program(name: &str) -> PathBuf {
    c_program_with(name, &[], &[])
}

/// Compiles `tests/programs/NAME.c` with more sources and clang arguments.
pub fn c_program_with(name: &str, sources: &[PathBuf], args: &[String]) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let wasm = scratch().join(format!("{name}.wasm"));
    if !wasm.exists() {
        let status = Command::new("clang")
            .args(["--target=wasm32-wasi", "-O2"])
            .arg(&source)
            .args(sources)
            .args(args)
            .arg("-o")
            .arg(&wasm)
            .status()
            .expect("clang is needed for the C tests: run .ci/run or apt-get install clang lld wasi-libc libclang-rt-dev-wasm32");
        assert!(status.success(), "clang failed on {}", source.display());
    }
    wasm
}

/// `hypercell` with an isolated compile cache.
pub fn hypercell(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hypercell"));
    command
        .env("XDG_CACHE_HOME", cache)
        .env_remove("HYPERCELL_LOG");
    command
}

pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with_cache(&scratch().join("cache"), args, stdin)
}

pub fn run_with_cache(cache: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = hypercell(cache)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Feed stdin from a thread: the program's output fills the stdout pipe while it
    // reads, and nothing drains that pipe until `wait_with_output`.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || input.write_all(&stdin));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    output
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn write_module(name: &str, wat: &str) -> String {
    let path = scratch().join(name);
    std::fs::write(&path, wat).unwrap();
    path.display().to_string()
}
