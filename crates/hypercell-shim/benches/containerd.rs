//! `ctr run --rm` from command to exit: the same C programs as WebAssembly in a
//! Hypercell cell (`io.containerd.hypercell.v1`) and natively in a runc container
//! (`io.containerd.runc.v2`, Debian's runc), under one private containerd, interleaved,
//! medians and ratios. Programs: hello world, and SQLite inserting 100k rows into an
//! in-memory database. The first run of each image is reported apart: for Hypercell it
//! compiles the module and makes the template that later containers start from.
//!
//! `sudo cargo bench -p hypercell-shim --bench containerd` (root: containerd runs
//! containers as root; `HYPERCELL_BENCH_RUNS` sets the runs per program, default 15).
//! Prints a markdown report.
#![deny(unsafe_op_in_unsafe_fn)]

#[path = "../tests/support/containerd.rs"]
mod containerd;
#[path = "../../hypercell/tests/support/sqlite.rs"]
mod sqlite;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd::{Containerd, HYPERCELL, image, text};
use sqlite::{SQLITE_WASM_FLAGS, sqlite_source};

const RUNC: &str = "io.containerd.runc.v2";

/// One program, built for both runtimes.
struct Program {
    name: &'static str,
    wasm_image: String,
    native_image: String,
}

fn compile(compiler: &str, flags: &[String], sources: &[PathBuf], out: &Path) {
    let output = Command::new(compiler)
        .args(flags)
        .args(sources)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{compiler} (scripts/setup installs it): {e}"));
    assert!(
        output.status.success(),
        "{compiler} failed: {}",
        text(&output.stderr)
    );
}

/// Builds `sources` as wasm32-wasi and as a static native executable, each in an image.
fn build(
    work: &Path,
    name: &'static str,
    sources: &[PathBuf],
    wasm_flags: &[String],
    native_flags: &[String],
) -> Program {
    let wasm = work.join(format!("{name}.wasm"));
    let mut flags = vec!["--target=wasm32-wasi".to_string(), "-O2".into()];
    flags.extend_from_slice(wasm_flags);
    compile("clang", &flags, sources, &wasm);
    let native = work.join(name);
    let mut flags = vec!["-O2".to_string(), "-static".into()];
    flags.extend_from_slice(native_flags);
    // The libraries last, after the sources that need them.
    let (libraries, others): (Vec<String>, Vec<String>) =
        flags.into_iter().partition(|flag| flag.starts_with("-l"));
    let mut ordered: Vec<PathBuf> = sources.to_vec();
    ordered.extend(libraries.iter().map(PathBuf::from));
    compile("gcc", &others, &ordered, &native);
    let wasm_tar = work.join(format!("{name}-wasm.tar"));
    image(&wasm, &format!("{name}-wasm"), &[], &wasm_tar);
    let native_tar = work.join(format!("{name}-native.tar"));
    image(&native, &format!("{name}-native"), &[], &native_tar);
    Program {
        name,
        wasm_image: wasm_tar.display().to_string(),
        native_image: native_tar.display().to_string(),
    }
}

/// `ctr run --rm` of `image` under `runtime`, timed from command to exit.
fn run(containerd: &Containerd, runtime: &str, image: &str, id: &str) -> Duration {
    let started = Instant::now();
    let output = containerd.run_under(runtime, image, id);
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "{image} under {runtime} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    elapsed
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn percentile(mut values: Vec<Duration>, p: usize) -> Duration {
    values.sort();
    values[(values.len() * p / 100).min(values.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("HYPERCELL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let work = tempfile::tempdir().unwrap();
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hypercell/benches/kernels");
    let hello = work.path().join("hello.c");
    std::fs::write(
        &hello,
        "#include <stdio.h>\nint main(void) { puts(\"hello from a container\"); return 0; }\n",
    )
    .unwrap();
    let sqlite = sqlite_source(work.path());
    let include = format!("-I{}", sqlite.display());
    let programs = [
        build(work.path(), "hello", &[hello], &[], &[]),
        build(
            work.path(),
            "sqlite",
            &[kernels.join("sqlite_insert.c"), sqlite.join("sqlite3.c")],
            &std::iter::once(include.as_str())
                .chain(SQLITE_WASM_FLAGS.iter().copied())
                .map(String::from)
                .collect::<Vec<_>>(),
            &[
                include.clone(),
                "-DSQLITE_THREADSAFE=0".into(),
                "-lm".into(),
            ],
        ),
    ];

    let containerd = Containerd::start();
    println!(
        "## containerd: `ctr run --rm` to exit, Hypercell shim against runc, medians of {runs} interleaved runs\n"
    );
    println!(
        "| program | runc, native (ms) | hypercell (ms) | hypercell vs runc | hypercell p90 vs runc p90 | first run: runc / hypercell (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for program in &programs {
        containerd.import(Path::new(&program.wasm_image));
        containerd.import(Path::new(&program.native_image));
        let wasm = format!("docker.io/library/{}-wasm:latest", program.name);
        let native = format!("docker.io/library/{}-native:latest", program.name);
        let first_runc = run(&containerd, RUNC, &native, &format!("{}-n0", program.name));
        let first_cell = run(
            &containerd,
            HYPERCELL,
            &wasm,
            &format!("{}-w0", program.name),
        );
        let mut runc = Vec::new();
        let mut cell = Vec::new();
        for i in 1..=runs {
            runc.push(run(
                &containerd,
                RUNC,
                &native,
                &format!("{}-n{i}", program.name),
            ));
            cell.push(run(
                &containerd,
                HYPERCELL,
                &wasm,
                &format!("{}-w{i}", program.name),
            ));
        }
        let (runc_p90, cell_p90) = (percentile(runc.clone(), 90), percentile(cell.clone(), 90));
        let (runc, cell) = (median(runc), median(cell));
        println!(
            "| {} | {:.1} | {:.1} | {:.2}x the time | {:.2}x | {:.0} / {:.0} |",
            program.name,
            ms(runc),
            ms(cell),
            cell.as_secs_f64() / runc.as_secs_f64(),
            cell_p90.as_secs_f64() / runc_p90.as_secs_f64(),
            ms(first_runc),
            ms(first_cell),
        );
    }
    println!(
        "\nEach run is a whole `ctr run --rm`: the client, containerd making the container and its snapshot, the shim's start, the program, and the teardown."
    );
}
