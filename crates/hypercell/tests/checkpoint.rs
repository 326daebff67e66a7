//! `hypercell run --checkpoint` and `hypercell restore`: a snapshot taken on SIGUSR1
//! while the program computes goes on in a new process to the same end, with no byte
//! of output lost or repeated and open files at their offsets; broken snapshots and
//! missing directories get one sentence.

#[path = "support/binary.rs"]
mod binary;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use binary::*;

const PATIENCE: Duration = Duration::from_secs(120);
const LINES: usize = 30;

/// A directory with `input.txt` of `LINES` numbered lines.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.path().join("input.txt"), lines).unwrap();
    dir
}

/// Reads the child's stdout line by line on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if sender.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Starts `progress` with `data` preopened and checkpointing to `snapshot`.
fn run_checkpointed(data: &Path, snapshot: &Path, stderr: Stdio) -> Child {
    let dir = format!("{}::data", data.display());
    hypercell(&scratch().join("cache"))
        .args(["run", "--dir", &dir, "--checkpoint"])
        .arg(snapshot)
        .arg(c_program("progress"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Sends SIGUSR1 to `child` and waits for the snapshot file it writes.
fn checkpoint(child: &Child, snapshot: &Path) {
    // SAFETY: kill sends a signal to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    let deadline = Instant::now() + PATIENCE;
    while !snapshot.exists() {
        assert!(Instant::now() < deadline, "no snapshot was written");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_checkpoint_goes_on_in_a_new_process_with_no_byte_lost_or_repeated() {
    let data = data_dir();
    let snapshot = std::path::absolute(data.path().join("../checkpoint.snap")).unwrap();
    let mut child = run_checkpointed(data.path(), &snapshot, Stdio::piped());
    let lines = lines_of(&mut child);
    let mut original = Vec::new();
    for _ in 0..5 {
        original.push(lines.recv_timeout(PATIENCE).unwrap());
    }
    checkpoint(&child, &snapshot);
    original.extend(lines.iter());
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        original.len(),
        LINES,
        "the checkpointed run goes on to its end"
    );

    let restored = hypercell(&scratch().join("cache"))
        .arg("restore")
        .arg(&snapshot)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let after: Vec<String> = text(&restored.stdout).lines().map(String::from).collect();
    assert!(
        !after.is_empty() && after.len() < LINES,
        "{} lines after the snapshot",
        after.len()
    );
    // The lines after the snapshot point, read from the file at the saved offset and
    // computed from the saved floating-point state, to the bit.
    assert_eq!(after, original[LINES - after.len()..]);
}

#[test]
fn broken_snapshots_and_missing_directories_get_one_sentence() {
    let scratch_dir = tempfile::tempdir().unwrap();
    let junk = scratch_dir.path().join("junk.snap");
    std::fs::write(&junk, b"HYPCSNAP\x01\0\0\0").unwrap();
    let out = hypercell(&scratch().join("cache"))
        .arg("restore")
        .arg(&junk)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is truncated") && stderr.lines().count() == 1,
        "{stderr}"
    );

    // A snapshot whose preopened directory is gone.
    let data = data_dir();
    let snapshot = scratch_dir.path().join("moved.snap");
    let mut child = run_checkpointed(data.path(), &snapshot, Stdio::null());
    let lines = lines_of(&mut child);
    lines.recv_timeout(PATIENCE).unwrap();
    checkpoint(&child, &snapshot);
    child.kill().unwrap();
    child.wait().unwrap();
    let gone = data.path().to_path_buf();
    drop(data);
    let out = hypercell(&scratch().join("cache"))
        .arg("restore")
        .arg(&snapshot)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&gone.display().to_string()) && stderr.lines().count() == 1,
        "{stderr}"
    );
}
