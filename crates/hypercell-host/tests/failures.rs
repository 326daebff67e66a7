//! How cells end when programs go wrong: traps, time limits, memory limits, bad
//! modules. Output written before the end always reaches the user.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Outcome, program, run, run_checked};
use hypercell_host::{
    BoundsChecks, CellConfig, CellError, CellExit, CellFailure, CompileError, Compiler,
};

/// The failure of a cell that did not run to its end.
fn failure(outcome: &Outcome) -> &CellFailure {
    match &outcome.result {
        Ok(report) => panic!("the cell ended normally: {:?}", report.exit),
        Err(failure) => failure,
    }
}

fn config() -> CellConfig {
    CellConfig {
        memory_limit: 64 << 20,
        ..CellConfig::default()
    }
}

fn trap_report(body: &str) -> (String, Vec<u8>) {
    let outcome = run(&program(body), &config(), b"");
    // The report goes to the host's caller, never into the program's own stderr.
    assert!(
        outcome.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    match &outcome.report().exit {
        CellExit::Trapped(report) => (report.clone(), outcome.stdout),
        other => panic!("expected a trap, got {other:?}"),
    }
}

const SAY_BEFORE: &str = r#"
    (i64.store (i32.const 1024) (i64.const 0x0a65726f666562))   ;; "before\n"
    (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 7)))"#;

#[test]
fn unreachable_traps_with_a_backtrace_and_keeps_buffered_output() {
    let (report, stdout) = trap_report(&format!("{SAY_BEFORE} unreachable"));
    assert!(
        report.contains("wasm `unreachable` instruction executed"),
        "{report}"
    );
    assert!(report.contains("wasm backtrace"), "{report}");
    assert_eq!(stdout, b"before\n");
}

#[test]
fn integer_division_by_zero_traps() {
    let (report, _) = trap_report("(drop (i32.div_s (i32.const 1) (i32.const 0)))");
    assert!(report.contains("integer divide by zero"), "{report}");
}

#[test]
fn out_of_bounds_memory_access_traps() {
    let (report, _) = trap_report("(drop (i32.load (i32.const 0x7ffffff0)))");
    assert!(report.contains("out of bounds memory access"), "{report}");
}

/// With explicit bounds checks a trap is a call into the runtime rather than a fault:
/// each still ends the cell with wasmtime's message and keeps the output before it.
#[test]
fn traps_read_the_same_with_explicit_bounds_checks() {
    let recursion = r#"(module
        (func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))
        (func (export "_start") (drop (call $down (i32.const 0)))))"#
        .to_string();
    let null_call = r#"(module
        (type $t (func))
        (table 1 funcref)
        (func (export "_start") (call_indirect (type $t) (i32.const 0))))"#
        .to_string();
    let cases = [
        (
            program(&format!("{SAY_BEFORE} unreachable")),
            "wasm `unreachable` instruction executed",
        ),
        (
            program(&format!(
                "{SAY_BEFORE} (drop (i32.div_s (i32.const 1) (i32.const 0)))"
            )),
            "integer divide by zero",
        ),
        (
            program(&format!(
                "{SAY_BEFORE} (drop (i32.load (i32.const 0x7ffffff0)))"
            )),
            "out of bounds memory access",
        ),
        (recursion, "call stack exhausted"),
        (null_call, "uninitialized element"),
    ];
    for (wat, message) in cases {
        let outcome = run_checked(&wat, &config(), b"", BoundsChecks::Explicit);
        match &outcome.report().exit {
            CellExit::Trapped(report) => assert!(report.contains(message), "{report}"),
            other => panic!("expected a trap ({message}), got {other:?}"),
        }
        if wat.contains("before") {
            assert_eq!(outcome.stdout, b"before\n");
        }
    }
}

#[test]
fn endless_recursion_exhausts_the_wasm_stack() {
    let wat = r#"(module
        (func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))
        (func (export "_start") (drop (call $down (i32.const 0)))))"#;
    let outcome = run(wat, &config(), b"");
    match &outcome.report().exit {
        CellExit::Trapped(report) => assert!(report.contains("call stack exhausted"), "{report}"),
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn the_time_limit_stops_an_endless_loop_and_keeps_output() {
    let config = CellConfig {
        timeout: Some(Duration::from_millis(200)),
        ..config()
    };
    let body = format!("{SAY_BEFORE} (loop $forever (br $forever))");
    let started = Instant::now();
    let outcome = run(&program(&body), &config, b"");
    let elapsed = started.elapsed();
    let failure = failure(&outcome);
    assert!(
        matches!(failure.error, CellError::Timeout(limit) if limit == Duration::from_millis(200))
    );
    assert!(failure.error.to_string().contains("--timeout"));
    assert_eq!(outcome.stdout, b"before\n");
    assert!(
        elapsed < Duration::from_secs(5),
        "stopped only after {elapsed:?}"
    );
    assert!(failure.stats.as_ref().is_some_and(|s| s.exits >= 1));
}

#[test]
fn the_time_limit_cuts_a_long_sleep_short() {
    let config = CellConfig {
        timeout: Some(Duration::from_millis(100)),
        ..config()
    };
    // poll_oneoff on a 60 s relative clock.
    let body = r#"
        (i64.store (i32.const 1024) (i64.const 1))
        (i32.store8 (i32.const 1032) (i32.const 0))
        (i32.store (i32.const 1040) (i32.const 1))
        (i64.store (i32.const 1048) (i64.const 60000000000))
        (drop (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 1200)))"#;
    let started = Instant::now();
    let outcome = run(&program(body), &config, b"");
    assert!(matches!(failure(&outcome).error, CellError::Timeout(_)));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn memory_grow_fails_cleanly_at_the_cell_limit() {
    // Growing by 1 GiB in a 64 MiB cell returns -1 to the program, which then exits 3.
    let body = r#"
        (if (i32.eq (memory.grow (i32.const 16384)) (i32.const -1))
          (then (call $proc_exit (i32.const 3))))"#;
    let outcome = run(&program(body), &config(), b"");
    let report = outcome.report();
    assert_eq!(report.exit, CellExit::Exited(3));
    assert_eq!(report.denied_growth, Some((16384 + 4) << 16));
}

#[test]
fn a_first_memory_larger_than_the_limit_is_refused_naming_both() {
    // The limit is the program's: a few pages run in a limit far smaller than the
    // runtime, and a memory that starts past the limit is refused before boot.
    let config = CellConfig {
        memory_limit: 1 << 20,
        ..config()
    };
    let small = run(&program("(call $proc_exit (i32.const 5))"), &config, b"");
    assert_eq!(small.report().exit, CellExit::Exited(5));
    let large = r#"(module (memory 17) (func (export "_start")))"#;
    let message = failure(&run(large, &config, b"")).error.to_string();
    assert!(
        message.contains("1.1 MiB") && message.contains("1 MiB") && message.contains("--memory"),
        "{message}"
    );
}

#[test]
fn a_module_without_start_is_reported() {
    let outcome = run("(module)", &config(), b"");
    let message = failure(&outcome).error.to_string();
    assert!(message.contains("_start"), "{message}");
}

#[test]
fn a_failing_start_function_is_a_trap() {
    let wat = r#"(module (func $init unreachable) (start $init) (func (export "_start")))"#;
    let outcome = run(wat, &config(), b"");
    assert!(matches!(&outcome.report().exit, CellExit::Trapped(r) if r.contains("unreachable")));
}

#[test]
fn cells_run_one_after_another_in_one_process() {
    for code in [0, 1, 125] {
        let body = format!("(call $proc_exit (i32.const {code}))");
        assert_eq!(
            run(&program(&body), &config(), b"").report().exit,
            CellExit::Exited(code)
        );
    }
}

fn compile_error(path: &Path) -> String {
    let cache = tempfile::tempdir().unwrap();
    let compiler = Compiler::with_cache_dir(Some(cache.path().to_path_buf())).unwrap();
    match compiler.compile_file(path) {
        Ok(_) => panic!("{} compiled", path.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn bad_modules_are_reported_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    assert!(compile_error(&missing).contains("does not exist"));

    let invalid = dir.path().join("invalid.wasm");
    std::fs::write(
        &invalid,
        b"\0asm\x01\0\0\0\x01\x05\x01\x60\x00\x01\x7f\x03\x02\x01\x00\x0a\x04\x01\x02\x00\x0b",
    )
    .unwrap();
    let message = compile_error(&invalid);
    assert!(
        message.contains("not a valid WebAssembly module") && message.contains("type mismatch"),
        "{message}"
    );

    let import = dir.path().join("import.wat");
    std::fs::write(
        &import,
        r#"(module (import "env" "host_fn" (func)) (func (export "_start")))"#,
    )
    .unwrap();
    let message = compile_error(&import);
    assert!(message.contains("`env::host_fn`"), "{message}");

    let unknown_wasi = dir.path().join("wasi.wat");
    std::fs::write(
        &unknown_wasi,
        r#"(module (import "wasi_snapshot_preview1" "no_such_call" (func)))"#,
    )
    .unwrap();
    assert!(compile_error(&unknown_wasi).contains("`wasi_snapshot_preview1::no_such_call`"));

    let unreadable = dir.path();
    assert!(matches!(
        Compiler::with_cache_dir(None)
            .unwrap()
            .compile_file(unreadable),
        Err(CompileError::Unreadable { .. })
    ));
}

#[test]
fn an_unknown_clock_id_ends_the_program_as_under_wasmtime() {
    let body = format!(
        "{SAY_BEFORE} (drop (call $clock_time_get (i32.const 4) (i64.const 1) (i32.const 1024)))"
    );
    let outcome = run(&program(&body), &config(), b"");
    let error = &failure(&outcome).error;
    assert!(
        matches!(error, CellError::CallError(m) if m.contains("invalid enum value Clockid")),
        "{error}"
    );
    assert_eq!(
        outcome.stdout, b"before\n",
        "output written before still arrives"
    );
}

#[test]
fn bad_pointers_end_the_program_as_under_wasmtime() {
    // Out of bounds (past the memory, or a buffer running off its end) and misaligned
    // for the type: wasmtime ends the program rather than answering `fault`.
    for (call, message) in [
        (
            "(drop (call $environ_sizes_get (i32.const 0x7fffffff) (i32.const 1028)))",
            "out of bounds",
        ),
        (
            "(drop (call $random_get (i32.const 262100) (i32.const 64)))",
            "out of bounds",
        ),
        (
            "(drop (call $write (i32.const 1) (i32.const 262140) (i32.const 100)))",
            "out of bounds",
        ),
        (
            "(drop (call $args_sizes_get (i32.const 2) (i32.const 8)))",
            "not aligned to 4",
        ),
        (
            "(drop (call $fd_fdstat_get (i32.const 1) (i32.const 12)))",
            "not aligned to 8",
        ),
        (
            "(drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 1028)))",
            "not aligned to 8",
        ),
    ] {
        let outcome = run(&program(&format!("{SAY_BEFORE} {call}")), &config(), b"");
        let error = &failure(&outcome).error;
        assert!(
            matches!(error, CellError::CallError(m) if m.contains(message)),
            "{call}: {error}"
        );
        assert_eq!(
            outcome.stdout, b"before\n",
            "{call}: output written before still arrives"
        );
    }
}
