//! WASI behaviour that the official wasi-testsuite checks, pinned by programs of our
//! own: C programs that make raw WASI calls and print what they get back, with the
//! expected output recorded from wasmtime 49 (`wasmtime run --dir sandbox::sandbox`,
//! stdin and stdout pipes).

#[path = "support/binary.rs"]
mod binary;

use binary::*;

/// Runs `tests/programs/NAME.c` with an empty preopened directory (descriptor 3) and
/// compares its stdout with `expected`; the program must leave the directory empty.
fn check_conformance(name: &str, expected: &str) {
    let wasm = c_program(name);
    let sandbox = tempfile::tempdir().unwrap();
    let dir = format!("{}::sandbox", sandbox.path().display());
    let out = run(&["run", "--dir", &dir, wasm.to_str().unwrap()], b"");
    assert_eq!(text(&out.stdout), expected);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(sandbox.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Preopens and directories report wasmtime's rights, so that a program can open a
/// directory again with the rights it was shown; only `fd_write` keeps a directory
/// from opening; files are readable unless only writing is asked and writable when
/// asked, created or truncated; directories refuse file calls with `badf`.
#[test]
fn rights_and_open_modes_match_wasmtime() {
    check_conformance("wasi_rights", include_str!("programs/wasi_rights.expected"));
}

/// Append works with truncation and always writes at the end, `fd_pwrite` included,
/// which leaves the offset alone; synchronous-write flags are refused (`notsup` when
/// opening, `inval` when set later) while nonblock is kept; `path_link` refuses to
/// follow symlinks; a file given as a directory is `badf` (`notdir` for `path_open`).
#[test]
fn fdflags_appends_links_and_wrong_kinds_match_wasmtime() {
    check_conformance("wasi_flags", include_str!("programs/wasi_flags.expected"));
}

/// Stdio descriptors have a file status (zeros but the file type), refuse file calls
/// as wasmtime does, and move with `fd_renumber`: onto a file's number, from a file
/// onto stdin's, and from one stream onto another; freed numbers come back highest
/// first.
#[test]
fn stdio_status_and_renumbering_match_wasmtime() {
    check_conformance("wasi_stdio", include_str!("programs/wasi_stdio.expected"));
}
