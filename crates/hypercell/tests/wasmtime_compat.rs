//! Where `hypercell run` and `wasmtime run` could differ in small ways, cells do what
//! wasmtime does or refuse with one clear sentence.

#[path = "support/binary.rs"]
mod binary;

use binary::*;

#[test]
fn a_reactor_runs_its_initialize_export() {
    let module = write_module(
        "reactor.wat",
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 0) "\10\00\00\00\09\00\00\00")
            (data (i32.const 16) "init ran\n")
            (func (export "_initialize")
              (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32)))))"#,
    );
    let out = run(&["run", &module], b"");
    assert_eq!(text(&out.stdout), "init ran\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let neither = write_module("neither.wat", "(module)");
    let out = run(&["run", &neither], b"");
    assert!(
        text(&out.stderr).contains("exports neither a `_start` nor an `_initialize`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bare_env_name_passes_the_hosts_value_on() {
    let wasm = c_program("environ");
    let out = hypercell(&scratch().join("cache"))
        .args([
            "run",
            "--env",
            "SET_HERE",
            "--env",
            "UNSET_HERE",
            "--env",
            "A=b",
        ])
        .arg(&wasm)
        .env("SET_HERE", "from the host")
        .env_remove("UNSET_HERE")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "[SET_HERE=from the host]\n[A=b]\n");
}

#[test]
fn a_dash_reads_the_module_from_stdin() {
    let module = std::fs::read(repo_root().join("examples/hello.wat")).unwrap();
    let out = run(&["run", "-"], &module);
    assert_eq!(text(&out.stdout), "Hello, world!\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn components_and_odd_directory_names_get_one_sentence() {
    let component = write_module("component.wat", "(component)");
    let out = run(&["run", &component], b"");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: `{component}` is a WebAssembly component, and programs run as core modules: WASI preview1 commands, such as programs built for wasm32-wasip1; a wasi:http proxy component is served with `hypercell serve`\n"
        )
    );
    let hello = repo_root().join("examples/hello.wat");
    let out = run(
        &["run", "--dir", "/tmp::b::c", hello.to_str().unwrap()],
        b"",
    );
    assert_eq!(
        text(&out.stderr),
        "error: invalid directory `/tmp::b::c`: write it as HOST or HOST::GUEST, with one `::` at most\n"
    );
    assert_eq!(out.status.code(), Some(1));
}
