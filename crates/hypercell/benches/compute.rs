//! Compute throughput: C kernels (an integer hash loop, n-body in f64, matrix
//! multiply, a sort, SHA-256 over 64 MiB) and SQLite inserting 100k rows, each compiled
//! by clang to wasm32-wasi and natively, run as whole processes under `hypercell run`,
//! `wasmtime run --allow-precompiled` and natively, interleaved, with compiled code
//! cached on both wasm sides. Every run's output is checked against the native one.
//!
//! `cargo bench -p hypercell --bench compute` (`HYPERCELL_BENCH_RUNS` runs per
//! kernel, default 5; `WASMTIME` picks the wasmtime binary). Prints a markdown table.

#[path = "support/mod.rs"]
mod support;

use support::{count_from_env, find_wasmtime, median, wasmtime_compile};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../tests/support/sqlite.rs"]
mod sqlite;

use sqlite::{SQLITE_WASM_FLAGS, sqlite_source};

/// The C kernels in `benches/kernels`, besides SQLite.
const KERNELS: &[&str] = &["hash", "nbody", "matmul", "sort", "sha256"];

/// A program to benchmark: its C sources and the extra clang flags for each target.
struct Program {
    name: String,
    sources: Vec<PathBuf>,
    wasm_flags: Vec<String>,
    native_flags: Vec<String>,
}

fn run(command: &mut Command) -> (Duration, String) {
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        elapsed,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs clang unless `output` is newer than every input.
fn clang(inputs: &[PathBuf], args: &[String], output: &Path) {
    let fresh = output.metadata().and_then(|m| m.modified()).ok();
    if fresh.is_some_and(|built| {
        inputs.iter().all(|input| {
            input
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < built)
        })
    }) {
        return;
    }
    let status = Command::new("clang")
        .args(args)
        .args(inputs)
        .arg("-o")
        .arg(output)
        .status()
        .expect("clang is needed: run ./scripts/setup");
    assert!(status.success(), "clang failed for {}", output.display());
}

fn main() {
    let runs: usize = count_from_env("HYPERCELL_BENCH_RUNS", 5);
    let hypercell = Path::new(env!("CARGO_BIN_EXE_hypercell"));
    let wasmtime = find_wasmtime();
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kernels");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compute-bench");
    let cache = work.join("cache");
    std::fs::create_dir_all(&work).unwrap();

    let sqlite = sqlite_source(&work);
    let mut programs: Vec<Program> = KERNELS
        .iter()
        .map(|k| Program {
            name: k.to_string(),
            sources: vec![kernels.join(format!("{k}.c"))],
            wasm_flags: vec![],
            native_flags: vec!["-lm".into()],
        })
        .collect();
    let include = format!("-I{}", sqlite.display());
    programs.push(Program {
        name: "sqlite insert 100k".into(),
        sources: vec![kernels.join("sqlite_insert.c"), sqlite.join("sqlite3.c")],
        wasm_flags: std::iter::once(include.as_str())
            .chain(SQLITE_WASM_FLAGS.iter().copied())
            .map(String::from)
            .collect(),
        native_flags: [include.as_str(), "-DSQLITE_THREADSAFE=0", "-lm"]
            .map(String::from)
            .to_vec(),
    });

    println!("## Compute: process start to exit, medians of {runs} interleaved runs\n");
    println!(
        "| kernel | native clang -O2 (ms) | wasmtime (ms) | hypercell (ms) | hypercell throughput vs wasmtime | vs native |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for Program {
        name,
        sources,
        wasm_flags,
        native_flags,
    } in &programs
    {
        let stem = name.split(' ').next().unwrap();
        let wasm = work.join(format!("{stem}.wasm"));
        let native = work.join(format!("{stem}.native"));
        let cwasm = work.join(format!("{stem}.cwasm"));
        let flags = |base: &[&str], extra: &[String]| -> Vec<String> {
            base.iter()
                .map(|s| s.to_string())
                .chain(extra.iter().cloned())
                .collect()
        };
        clang(
            sources,
            &flags(&["--target=wasm32-wasi", "-O2"], wasm_flags),
            &wasm,
        );
        clang(sources, &flags(&["-O2"], native_flags), &native);
        wasmtime_compile(&wasmtime, &wasm, &cwasm);
        let hypercell_run = || {
            let mut command = support::hypercell_run(hypercell, &cache);
            command.arg(&wasm);
            command
        };
        let wasmtime_run = || support::wasmtime_run(&wasmtime, &cwasm);
        // Warm caches: hypercell's compile cache and the page cache.
        let (_, expected) = run(&mut Command::new(&native));
        run(&mut hypercell_run());
        let (mut ours, mut theirs, mut natives) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            for (times, command) in [
                (&mut natives, &mut Command::new(&native)),
                (&mut theirs, &mut wasmtime_run()),
                (&mut ours, &mut hypercell_run()),
            ] {
                let (elapsed, output) = run(command);
                assert_eq!(
                    output, expected,
                    "{name}: {command:?} computed something else"
                );
                times.push(elapsed.as_secs_f64() * 1e3);
            }
        }
        let (ours, theirs, natives) = (median(ours), median(theirs), median(natives));
        println!(
            "| {name} | {natives:.1} | {theirs:.1} | {ours:.1} | {:.2}x | {:.2}x |",
            theirs / ours,
            natives / ours
        );
    }
}
