//! Nothing lost, nothing hidden: write errors reach the program, output is streamed
//! while it computes and delivered however the process ends, limits fire in every
//! state, and exit statuses follow `wasmtime run`.

#[path = "support/binary.rs"]
mod binary;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use binary::*;

/// Longest a test waits for an event that should come at once; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

/// Starts `hypercell run` on `wasm` with the given stdio.
fn spawn(args: &[&str], stdin: Stdio, stdout: Stdio) -> Child {
    hypercell(&scratch().join("cache"))
        .arg("run")
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The first line the child writes to its stdout pipe, read on a thread so that a
/// program that never writes fails the test instead of hanging it.
fn first_line(child: &mut Child) -> (String, BufReader<std::process::ChildStdout>) {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let _ = sender.send((line, reader));
    });
    receiver
        .recv_timeout(PATIENCE)
        .expect("the cell's first line arrives while it still runs")
}

/// Waits for the child to end, failing the test if it does not.
fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    let (sender, receiver) = mpsc::channel();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).unwrap();
        let status = child.wait().unwrap();
        let _ = sender.send((status, text));
    });
    receiver
        .recv_timeout(PATIENCE)
        .expect("the cell ends on its own")
}

#[test]
fn a_closed_pipe_fails_the_next_write_so_the_program_stops() {
    let wasm = c_program("yes");
    let mut child = spawn(&[wasm.to_str().unwrap()], Stdio::null(), Stdio::piped());
    let (line, reader) = first_line(&mut child);
    assert_eq!(line, "y\n");
    drop(reader);
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(3), "puts saw the failure: {stderr}");
}

#[test]
fn a_full_disk_is_reported_to_the_program() {
    let wasm = c_program("fill");
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let child = spawn(&[wasm.to_str().unwrap()], Stdio::null(), full.into());
    let (status, stderr) = finish(child);
    assert_eq!(stderr, "write failed: No space left on device\n");
    assert_eq!(status.code(), Some(7));
}

#[test]
fn flushed_output_arrives_while_the_program_computes() {
    let wasm = c_program("spin");
    let mut child = spawn(&[wasm.to_str().unwrap()], Stdio::null(), Stdio::piped());
    let (line, _reader) = first_line(&mut child);
    assert_eq!(line, "computing\n");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn output_taken_while_the_program_writes_is_exact() {
    // A million small writes take long enough for many hand-overs to land in the middle
    // of one; each line must arrive once, in order.
    let wasm = c_program("count");
    let last = 1_000_000;
    let out = run(&["run", wasm.to_str().unwrap(), &last.to_string()], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected: String = (0..=last).map(|i| format!("{i}\n")).collect();
    assert!(
        text(&out.stdout) == expected,
        "lines lost, repeated or out of order"
    );
}

#[test]
fn signals_end_the_cell_with_their_own_status_after_its_output() {
    let wasm = c_program("spin");
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let mut child = spawn(&[wasm.to_str().unwrap()], Stdio::null(), Stdio::piped());
        let (line, _reader) = first_line(&mut child);
        assert_eq!(line, "computing\n");
        // SAFETY: kill sends a signal to the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let (status, stderr) = finish(child);
        assert_eq!(status.signal(), Some(signal), "{stderr}");
    }
}

#[test]
fn a_signal_stops_a_program_blocked_reading_stdin_and_its_prompt_arrives() {
    let wasm = c_program("upcase");
    let mut child = spawn(&[wasm.to_str().unwrap()], Stdio::piped(), Stdio::piped());
    let _stdin = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut prompt = [0u8; 7];
        BufReader::new(stdout).read_exact(&mut prompt).unwrap();
        let _ = sender.send(prompt);
    });
    assert_eq!(&receiver.recv_timeout(PATIENCE).unwrap(), b"ready> ");
    // SAFETY: kill sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let (status, _) = finish(child);
    assert_eq!(status.signal(), Some(libc::SIGTERM));
}

#[test]
fn the_time_limit_fires_while_the_program_waits_for_stdin() {
    let wasm = c_program("upcase");
    let mut child = spawn(
        &["--timeout", "300ms", wasm.to_str().unwrap()],
        Stdio::piped(),
        Stdio::piped(),
    );
    // Stdin stays open and empty: the program waits in a read.
    let _stdin = child.stdin.take();
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("time limit of 300ms"), "{stderr}");
}

#[test]
fn the_time_limit_fires_while_a_write_blocks_on_a_full_pipe() {
    let wasm = c_program("yes");
    // Nobody reads stdout: the pipe fills and the cell's write blocks.
    let child = spawn(
        &["--timeout", "300ms", wasm.to_str().unwrap()],
        Stdio::null(),
        Stdio::piped(),
    );
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("time limit of 300ms"), "{stderr}");
}

#[test]
fn exit_statuses_follow_wasmtime() {
    for (code, expected) in [(0, 0), (125, 125), (126, 1), (255, 1), (256, 1), (-1, 1)] {
        let module = write_module(
            &format!("exit{code}.wat"),
            &format!(
                r#"(module
                    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                    (memory (export "memory") 1)
                    (func (export "_start") (call $exit (i32.const {code}))))"#
            ),
        );
        let out = run(&["run", &module], b"");
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(expected),
            "proc_exit({code}): {stderr}"
        );
        if expected != code {
            assert!(
                stderr.contains("exit with invalid exit status outside of [0..126)"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn stdin_that_is_a_directory_or_write_only_fails_as_under_wasmtime() {
    let wasm = c_program("stdin_error");
    let directory = std::fs::File::open(scratch()).unwrap();
    let write_only = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    for (stdin, expected) in [
        (directory, "read -1 errno 31\n"),
        (write_only, "read -1 errno 8\n"),
    ] {
        let child = spawn(&[wasm.to_str().unwrap()], stdin.into(), Stdio::piped());
        let output = child.wait_with_output().unwrap();
        assert_eq!(text(&output.stdout), expected);
    }
}
