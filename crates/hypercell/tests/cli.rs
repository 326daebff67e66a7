//! End-to-end runs of the `hypercell` binary: WAT and C programs (compiled to
//! `wasm32-wasi` by clang during the test) in real cells.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/sqlite.rs"]
mod sqlite;

use binary::*;

const TRAP_STATUS: i32 = 134;

#[test]
fn the_bundled_example_says_hello() {
    let example = repo_root().join("examples/hello.wat");
    let out = run(&["run", example.to_str().unwrap()], b"");
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_c_program_sees_its_arguments_and_environment_and_sets_the_status() {
    let wasm = c_program("greet");
    let out = run(
        &[
            "run",
            "--env",
            "WHO=cell",
            wasm.to_str().unwrap(),
            "7",
            "-x",
        ],
        b"",
    );
    let expected = format!(
        "argv[0]={}\nargv[1]=7\nargv[2]=-x\nhello, cell\n",
        wasm.display()
    );
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(text(&out.stderr), "this goes to stderr\n");
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn a_c_program_reads_stdin_after_its_prompt() {
    let wasm = c_program("upcase");
    let input: Vec<u8> = b"hypercell cells\n".repeat(10_000);
    let out = run(&["run", wasm.to_str().unwrap()], &input);
    let expected = [b"ready> ".as_slice(), &input.to_ascii_uppercase()].concat();
    assert!(
        out.stdout == expected,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    assert_eq!(text(&out.stderr), "160000 bytes\n");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_c_program_sleeps_reads_clocks_and_gets_entropy() {
    let wasm = c_program("timing");
    let out = run(&["run", wasm.to_str().unwrap()], b"");
    assert_eq!(
        text(&out.stdout),
        "slept at least 25 ms: yes\nrealtime after 2020: yes\ncpu clock runs: yes\nentropy differs: yes\n"
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_trap_prints_a_backtrace_exits_like_wasmtime_and_keeps_output() {
    let wasm = c_program("crash");
    let out = run(&["run", wasm.to_str().unwrap()], b"");
    assert_eq!(text(&out.stdout), "about to abort\n");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("failed to run main module"), "{stderr}");
    assert!(
        stderr.contains("wasm `unreachable` instruction executed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("abort") && stderr.contains("__original_main"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(TRAP_STATUS));
}

/// `-O signals-based-traps=n` compiles bounds checks into the code, as wasmtime's flag
/// does: the memory's tables then map whole 2 MiB pages, yet the byte past its end
/// still traps as under wasmtime; a template keeps its code's checks.
#[test]
fn explicit_bounds_checks_trap_past_the_end_and_templates_keep_them() {
    let module = write_module(
        "past_the_end.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write"
              (func $fd_write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "grown\n")
            (func (export "_start")
              (drop (memory.grow (i32.const 1)))
              (i32.store8 (i32.const 131071) (i32.const 1))
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 6))
              (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
              (drop (i32.load8_u (i32.const 131072)))))"#,
    );
    for flag in ["signals-based-traps=n", "signals-based-traps=y"] {
        let out = run(&["run", "-O", flag, &module], b"");
        assert_eq!(text(&out.stdout), "grown\n", "{flag}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("out of bounds memory access"),
            "{flag}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(TRAP_STATUS), "{flag}");
    }
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("checked.tmpl");
    let template = template.to_str().unwrap();
    let made = run(
        &[
            "template",
            "create",
            "-O",
            "signals-based-traps=n",
            "-o",
            template,
            &module,
        ],
        b"",
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let out = run(&["run", template], b"");
    assert_eq!(text(&out.stdout), "grown\n");
    assert_eq!(
        out.status.code(),
        Some(TRAP_STATUS),
        "{}",
        text(&out.stderr)
    );
    let refused = run(&["run", "-O", "signals-based-traps=y", template], b"");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains(
            "was compiled with explicit bounds checks, which its cells keep; make the template with -O signals-based-traps=y instead"
        ),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn the_timeout_stops_an_endless_loop() {
    let module = write_module(
        "loop.wat",
        r#"(module (func (export "_start") (loop $l (br $l))))"#,
    );
    let out = run(&["run", "--timeout", "200ms", &module], b"");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("time limit of 200ms") && stderr.contains("--timeout"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn the_memory_limit_is_named_when_growth_is_refused() {
    let module = write_module(
        "grow.wat",
        r#"(module (memory 1)
            (func (export "_start")
              (if (i32.eq (memory.grow (i32.const 2000)) (i32.const -1)) (then unreachable))))"#,
    );
    let out = run(&["run", "--memory", "64M", &module], b"");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("memory limit of 64 MiB") && stderr.contains("--memory"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(TRAP_STATUS));
    let out = run(&["run", "--memory", "256M", &module], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn the_memory_limit_is_the_programs_own_as_under_wasmtime() {
    // wasmtime with `-W max-memory-size` of 16, 32 and 64 MiB lets this loop reach 15,
    // 31 and 63 MiB (the rest is the program's stack and data); the runtime's own
    // memory is apart from the limit.
    let wasm = c_program("malloc_all");
    for (limit, reached) in [
        ("16M", "15 MiB\n"),
        ("32M", "31 MiB\n"),
        ("64M", "63 MiB\n"),
    ] {
        let out = run(&["run", "--memory", limit, wasm.to_str().unwrap()], b"");
        assert_eq!(text(&out.stdout), reached, "{}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0));
    }
    // Without the flag, as under wasmtime, a memory may grow past 1 GiB.
    let grow = write_module(
        "grow_past_a_gib.wat",
        r#"(module (memory 1)
            (func (export "_start")
              (if (i32.eq (memory.grow (i32.const 20000)) (i32.const -1)) (then unreachable))
              (i32.store (i32.const 1310000000) (i32.const 7))))"#,
    );
    let out = run(&["run", &grow], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let large = write_module(
        "large_memory.wat",
        r#"(module (memory 100) (func (export "_start")))"#,
    );
    let out = run(&["run", "--memory", "1M", &large], b"");
    assert_eq!(
        text(&out.stderr),
        "error: the module's linear memory starts at 6.2 MiB, more than the memory limit of 1 MiB; raise it with --memory\n"
    );
}

#[test]
fn bad_input_gets_one_clear_sentence() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["run", "/no/such/module.wasm"],
            "module `/no/such/module.wasm` does not exist",
        ),
        (
            &["run", &write_module("junk.wasm", "junk")],
            "is not a valid WebAssembly module",
        ),
        (
            &[
                "run",
                &write_module("imports.wat", r#"(module (import "env" "now" (func)))"#),
            ],
            "imports function `env::now`, which a cell does not provide",
        ),
        (
            &["run", "--memory", "lots", "x.wasm"],
            "invalid memory size `lots`",
        ),
        (
            &["run", "--timeout", "10", "x.wasm"],
            "invalid duration `10`",
        ),
        (
            &["run", "--env", "=value", "x.wasm"],
            "invalid environment variable `=value`",
        ),
        (
            &["run", "-O", "opt-level=2", "x.wasm"],
            "`opt-level` is not a setting Hypercell knows; -O takes signals-based-traps=y|n",
        ),
        (
            &["run", "-O", "signals-based-traps=maybe", "x.wasm"],
            "signals-based-traps takes y or n, not `maybe`",
        ),
    ];
    for (args, expected) in cases {
        let out = run(args, b"");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(0));
    }
}

#[test]
fn stats_report_timings_exits_memory_and_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/hello.wat");
    let example = example.to_str().unwrap();
    let first = text(&run_with_cache(cache.path(), &["run", "--stats", example], b"").stderr);
    let second = text(&run_with_cache(cache.path(), &["run", "--stats", example], b"").stderr);
    assert!(first.contains("compile cache:            miss"), "{first}");
    assert!(second.contains("compile cache:            hit"), "{second}");
    for line in [
        "first guest instruction:",
        "total:",
        "exits:                    1 (hypercalls: Exit 1)",
        "guest memory touched:",
    ] {
        assert!(second.contains(line), "missing `{line}` in {second}");
    }
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("hypercell"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1, "one artifact in the cache");
}

#[test]
fn the_output_limit_stops_a_flood_and_delivers_what_fits() {
    // Writes "flood\n" forever.
    let module = write_module(
        "flood.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "flood\n")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const 6))
              (loop $again (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))) (br $again))))"#,
    );
    let out = run(&["run", "--max-output", "1M", &module], b"");
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout.starts_with(b"flood\nflood\n"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("output limit of 1 MiB") && stderr.contains("--max-output"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
}

/// Runs `tests/programs/NAME.c` in a fresh `sandbox` preopen beside a host file it must
/// not reach; checks its output against the one recorded from `wasmtime run --dir
/// SANDBOX::sandbox NAME.wasm` and that nothing outside the sandbox changed.
fn check_file_program(name: &str, expected: &str) {
    let wasm = c_program(name);
    let root = tempfile::tempdir().unwrap();
    let sandbox = root.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    std::fs::write(root.path().join("outside.txt"), "secret\n").unwrap();
    let dir = format!("{}::sandbox", sandbox.display());
    let out = run(&["run", "--dir", &dir, wasm.to_str().unwrap()], b"");
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(root.path().join("outside.txt")).unwrap(),
        "secret\n"
    );
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(std::fs::read_dir(&sandbox).unwrap().count(), 0);
}

#[test]
fn file_calls_in_a_preopened_directory_match_wasmtime_and_nothing_escapes() {
    check_file_program("files", include_str!("programs/files.expected"));
}

#[test]
fn renumbering_flags_times_links_and_bad_descriptors_match_wasmtime() {
    check_file_program("files2", include_str!("programs/files2.expected"));
}

#[test]
fn open_flags_offsets_listing_and_wrong_kinds_match_wasmtime() {
    check_file_program("files3", include_str!("programs/files3.expected"));
}

#[test]
fn an_invalid_seek_whence_ends_the_program_as_under_wasmtime() {
    let module = write_module(
        "whence.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "_start") (drop (call $seek (i32.const 3) (i64.const 0) (i32.const 99) (i32.const 16)))))"#,
    );
    let out = run(&["run", &module], b"");
    // wasmtime ends with status 1 (an error, not a trap) for invalid arguments.
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid enum value Whence"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_read_only_directory_refuses_writes() {
    let module = write_module(
        "create.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "new.txt")
            (func (export "_start")
              ;; O_CREAT with write rights in preopen 3: exit with the errno
              (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
                (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 100)))))"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{}::data", dir.path().display());
    let out = run(&["run", "--dir-ro", &spec, &module], b"");
    assert_eq!(out.status.code(), Some(63), "EPERM: {}", text(&out.stderr));
    assert!(!dir.path().join("new.txt").exists());
    let out = run(&["run", "--dir", &spec, &module], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("new.txt").exists());
}

#[test]
fn a_missing_directory_is_named() {
    let out = run(
        &[
            "run",
            "--dir",
            "/no/such/dir",
            &repo_root().join("examples/hello.wat").display().to_string(),
        ],
        b"",
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot open directory `/no/such/dir` for --dir"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sqlite_builds_queries_and_reopens_a_database_file_like_wasmtime() {
    let source = sqlite::sqlite_source(scratch());
    let args: Vec<String> = std::iter::once(format!("-I{}", source.display()))
        .chain(sqlite::SQLITE_WASM_FLAGS.iter().map(|f| f.to_string()))
        .collect();
    let wasm = c_program_with("sqlite_file", &[source.join("sqlite3.c")], &args);
    let data = tempfile::tempdir().unwrap();
    let dir = format!("{}::data", data.path().display());
    let out = run(&["run", "--dir", &dir, wasm.to_str().unwrap()], b"");
    // Recorded from `wasmtime run --dir DATA::data sqlite_file.wasm`.
    assert_eq!(
        text(&out.stdout),
        include_str!("programs/sqlite_file.expected")
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let size = std::fs::metadata(data.path().join("test.db"))
        .unwrap()
        .len();
    assert!(size > 1 << 20, "a {size}-byte database");
}

#[test]
fn a_hundred_mib_pass_through_stdin_and_stdout_byte_exact() {
    let wasm = c_program("copy");
    let input: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = run(&["run", wasm.to_str().unwrap()], &input);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), format!("{} bytes\n", 100u32 << 20));
    assert!(
        out.stdout == input,
        "stdout differs from stdin ({} bytes)",
        out.stdout.len()
    );
}

#[test]
fn a_symlink_swapped_in_during_opens_never_leads_outside() {
    let wasm = c_program("race");
    let root = tempfile::tempdir().unwrap();
    let sandbox = root.path().join("sandbox");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(sandbox.join("flip")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(sandbox.join("flip/secret.txt"), "inside\n").unwrap();
    std::fs::write(outside.join("secret.txt"), "outside\n").unwrap();
    // `parked` holds whichever of the two is not `flip`: first a symlink to the outer
    // directory. Each swap parks `flip` under `tmp`, moves `parked` in, and parks the
    // old one, while the program runs.
    std::os::unix::fs::symlink("../outside", sandbox.join("parked")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, sandbox) = (stop.clone(), sandbox.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::rename(sandbox.join("flip"), sandbox.join("tmp")).unwrap();
                std::fs::rename(sandbox.join("parked"), sandbox.join("flip")).unwrap();
                std::fs::rename(sandbox.join("tmp"), sandbox.join("parked")).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let dir = format!("{}::sandbox", sandbox.display());
    let out = run(&["run", "--dir", &dir, wasm.to_str().unwrap()], b"");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("ESCAPED"),
        "read a file outside the sandbox"
    );
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", text(&out.stderr));
    assert!(swaps > 10, "only {swaps} swaps happened during the run");
}

#[test]
fn components_limit_what_a_program_may_call() {
    let wasm = c_program("greet");
    let wasm = wasm.to_str().unwrap();
    // Given what it uses, it runs as before.
    let out = run(
        &[
            "run",
            "--components",
            "stdio,args,env",
            "--env",
            "WHO=cell",
            wasm,
            "3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello, cell"));
    // Without stdio it runs to its end and writes nothing anywhere.
    let out = run(&["run", "--components", "args,env", wasm], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!((out.stdout.len(), out.stderr.len()), (0, 0));
    // Without env, wasi-libc's getenv gets `notcapable` and the program exits as
    // wasi-libc does when the environment cannot be read.
    let out = run(&["run", "--components", "stdio,args", wasm], b"");
    assert_eq!(out.status.code(), Some(71), "{}", text(&out.stderr));
    // Strict: refused before it runs, the import named.
    let out = run(&["run", "--components", "stdio,args,strict", wasm], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "error: `{wasm}` imports `wasi_snapshot_preview1::environ_get`, which needs the `env` component, and the cell is not given it; give the cell that component in --components, or drop `strict`"
        )
    );
    let dir = scratch().to_str().unwrap();
    let out = run(&["run", "--components", "stdio", "--dir", dir, wasm], b"");
    assert!(
        text(&out.stderr)
            .contains("directories are granted to the cell, but not the `fs` component"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["run", "--components", "stdio,sockets", wasm], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`sockets` is not a component"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &["run", "--components", "stdio,args,env", "--stats", wasm],
        b"",
    );
    assert!(
        text(&out.stderr).contains("components:               stdio,args,env\n"),
        "{}",
        text(&out.stderr)
    );

    // A template keeps the components it was made with.
    let template = scratch().join("greet-components.tmpl");
    let made = run(
        &[
            "template",
            "create",
            "--components",
            "stdio,args,env",
            wasm,
            "-o",
            template.to_str().unwrap(),
        ],
        b"",
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let out = run(&["run", template.to_str().unwrap()], b"");
    assert!(
        text(&out.stdout).contains("hello, nobody"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &["run", "--components", "all", template.to_str().unwrap()],
        b"",
    );
    assert!(
        text(&out.stderr)
            .contains("was made with the components stdio,args,env, which its cells keep"),
        "{}",
        text(&out.stderr)
    );
}
