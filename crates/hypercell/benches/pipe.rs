//! A producer and a consumer joined stdout to stdin, 1 GiB in 64 KiB writes:
//! `hypercell pipe` against `wasmtime run A | wasmtime run B` through a shell pipe (on
//! precompiled code) and against the native C programs through a shell pipe, in one
//! run, interleaved: throughput (medians) and, for hypercell, VM exits per MiB (from
//! `--stats`): all of them, and at steady state, less those of the same pipeline
//! moving nothing (its start and end).
//!
//! Two pairs: `source` to `sink`, which do next to nothing with the bytes (the pipe
//! itself), and `produce` to `digest`, which compute every byte and hash it with
//! FNV-1a, a byte at a time (a pipeline bound by its programs).
//!
//! `cargo bench -p hypercell --bench pipe` (`HYPERCELL_BENCH_RUNS` runs each, default 3;
//! `HYPERCELL_BENCH_MIB` MiB, default 1024). Prints a markdown report.
#![deny(unsafe_op_in_unsafe_fn)]

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use support::{count_from_env, find_wasmtime, median, wasmtime_compile};

fn build(compiler: &str, flags: &[&str], source: &Path, out: &Path) {
    let status = Command::new(compiler)
        .args(flags)
        .arg(source)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("{compiler} (scripts/setup installs it): {e}"));
    assert!(
        status.success(),
        "{compiler} failed on {}",
        source.display()
    );
}

/// Runs `command` to its end; its wall time in seconds, stdout and stderr.
fn timed(command: &mut Command) -> (f64, String, String) {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let elapsed = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{command:?} failed: {stderr}");
    (elapsed, stdout, stderr)
}

fn shell(line: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(line);
    command
}

/// The exits `hypercell pipe --stats` counted, all stages together.
fn exits(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|line| line.split(", ").find(|part| part.ends_with(" exits")))
        .filter_map(|part| part.trim_end_matches(" exits").parse::<u64>().ok())
        .sum()
}

fn main() {
    let runs = count_from_env("HYPERCELL_BENCH_RUNS", 3);
    let mib = count_from_env("HYPERCELL_BENCH_MIB", 1024);
    let bench = Bench {
        hypercell: Path::new(env!("CARGO_BIN_EXE_hypercell")),
        wasmtime: find_wasmtime(),
        programs: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs"),
        work: Path::new(env!("CARGO_TARGET_TMPDIR")).join("pipe-bench"),
        runs,
        mib,
    };
    std::fs::create_dir_all(&bench.work).unwrap();
    println!(
        "## Pipelines: producer to consumer, {mib} MiB in 64 KiB writes, medians of {runs} interleaved runs\n"
    );
    println!("| pipeline | MiB/s | hypercell throughput vs it | exits per MiB | at steady state |");
    println!("|---|---:|---:|---:|---:|");
    bench.pair("source", "sink", "the pipe itself");
    bench.pair("produce", "digest", "FNV-1a of every byte");
}

struct Bench<'a> {
    hypercell: &'a Path,
    wasmtime: PathBuf,
    programs: PathBuf,
    work: PathBuf,
    runs: usize,
    mib: usize,
}

impl Bench<'_> {
    /// Builds `name` as wasm, native code and wasmtime's precompiled code.
    fn built(&self, name: &str) -> [PathBuf; 3] {
        let source = self.programs.join(format!("{name}.c"));
        let wasm = self.work.join(format!("{name}.wasm"));
        let native = self.work.join(name);
        let cwasm = self.work.join(format!("{name}.cwasm"));
        build("clang", &["--target=wasm32-wasi", "-O2"], &source, &wasm);
        build("cc", &["-O2"], &source, &native);
        wasmtime_compile(&self.wasmtime, &wasm, &cwasm);
        [wasm, native, cwasm]
    }

    /// Measures `producer | consumer` three ways and prints a row for each.
    fn pair(&self, producer: &str, consumer: &str, what: &str) {
        let mib = self.mib;
        let [producer_wasm, producer, producer_cwasm] = self.built(producer);
        let [consumer_wasm, consumer, consumer_cwasm] = self.built(consumer);
        let native = || {
            shell(&format!(
                "{} {mib} | {}",
                producer.display(),
                consumer.display()
            ))
        };
        let wasmtime_pipe = || {
            shell(&format!(
                "{w} run --allow-precompiled {} {mib} | {w} run --allow-precompiled {}",
                producer_cwasm.display(),
                consumer_cwasm.display(),
                w = self.wasmtime.display()
            ))
        };
        let hypercell_pipe_of = |mib: usize| {
            let mut command = Command::new(self.hypercell);
            command
                .env("XDG_CACHE_HOME", self.work.join("cache"))
                .args(["pipe", "--stats"])
                .arg(format!("{} {mib}", producer_wasm.display()))
                .arg(&consumer_wasm);
            command
        };
        let hypercell_pipe = || hypercell_pipe_of(mib);
        // The reference answer, and warm caches.
        let (_, expected, _) = timed(&mut native());
        timed(&mut hypercell_pipe());
        let (mut ours, mut theirs, mut natives, mut exit_counts, mut idle_exits) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.runs {
            let (_, _, stats) = timed(&mut hypercell_pipe_of(0));
            idle_exits.push(exits(&stats) as f64);
            let (elapsed, out, _) = timed(&mut native());
            assert_eq!(out, expected);
            natives.push(elapsed);
            let (elapsed, out, _) = timed(&mut wasmtime_pipe());
            assert_eq!(out, expected, "wasmtime's pipeline computed something else");
            theirs.push(elapsed);
            let (elapsed, out, stats) = timed(&mut hypercell_pipe());
            assert_eq!(
                out, expected,
                "hypercell's pipeline computed something else"
            );
            ours.push(elapsed);
            exit_counts.push(exits(&stats) as f64);
        }
        let rate = |seconds: f64| mib as f64 / seconds;
        let (ours, theirs, natives) = (median(ours), median(theirs), median(natives));
        let (exit_count, idle_exits) = (median(exit_counts), median(idle_exits));
        let names = format!(
            "`{}` to `{}` ({what})",
            producer_name(&producer),
            producer_name(&consumer)
        );
        println!(
            "| {names}: `hypercell pipe` | {:.0} | | {:.3} | {:.3} |",
            rate(ours),
            exit_count / mib as f64,
            (exit_count - idle_exits).max(0.0) / mib as f64
        );
        println!(
            "| {names}: `wasmtime run A \\| wasmtime run B` (shell pipe) | {:.0} | {:.2}x | | |",
            rate(theirs),
            theirs / ours
        );
        println!(
            "| {names}: native `A \\| B` (shell pipe) | {:.0} | {:.2}x | | |",
            rate(natives),
            natives / ours
        );
    }
}

fn producer_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}
