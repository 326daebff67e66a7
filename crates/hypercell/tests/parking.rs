//! Parking, through the real daemon: a cell that waits for stdin past `--park-after`
//! gives up its VM and threads; input written through the API wakes it, and it goes on
//! with every byte of its memory (a checksum over 1 MiB shows it), its output in the
//! same log. A parked cell is killed or stopped like any other, and one with the
//! checkpoint policy outlives its daemon.

#[path = "support/binary.rs"]
mod binary;
// The CLI's own client, to write to a cell's stdin.
#[allow(dead_code)]
#[path = "../src/client.rs"]
mod client;
#[path = "support/daemon.rs"]
mod daemon;

use std::time::Instant;

use binary::*;
use daemon::{Daemon, PATIENCE, wait_for};
use hyper::Method;

/// What `notes.c` prints for each line: its number, the line and the checksum of its
/// 1 MiB table.
struct Notes {
    table: Vec<u8>,
    used: usize,
    count: u32,
}

impl Notes {
    fn new() -> Self {
        Self {
            table: vec![b'.'; 1 << 20],
            used: 0,
            count: 0,
        }
    }

    fn note(&mut self, line: &str) -> String {
        let bytes = format!("{line}\n");
        if self.used + bytes.len() > self.table.len() {
            self.used = 0;
        }
        self.table[self.used..self.used + bytes.len()].copy_from_slice(bytes.as_bytes());
        self.used += bytes.len();
        self.count += 1;
        let sum = self.table.iter().fold(0u32, |sum, &b| {
            sum.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        format!("{}: {line} {sum:08x}", self.count)
    }
}

fn write_stdin(daemon: &Daemon, cell: &str, bytes: &str) {
    let host = format!("unix:{}", daemon.socket.display());
    client::Client::new(Some(&host), None)
        .unwrap()
        .call(
            Method::POST,
            &format!("/v1/cells/{cell}/stdin"),
            Some(bytes.as_bytes().to_vec()),
        )
        .unwrap();
}

/// Waits until the daemon reports the cell parked.
fn wait_parked(daemon: &Daemon, cell: &str) {
    let deadline = Instant::now() + PATIENCE;
    while daemon.inspect(cell).get("parked_ms").is_none() {
        assert!(Instant::now() < deadline, "cell {cell} is parked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The daemon's threads running or waiting on cells.
fn cell_threads(daemon: &Daemon) -> usize {
    let tasks = format!("/proc/{}/task", daemon.child.id());
    std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "hypercell-cell" || name.trim() == "hypercell-wait")
        .count()
}

#[test]
fn idle_cells_are_parked_and_woken_by_input_with_all_their_memory() {
    let dir = tempfile::tempdir().unwrap();
    let notes = c_program("notes");
    let template = dir.path().join("notes.tmpl");
    let made = hypercell(&scratch().join("cache"))
        .args(["template", "create", "--at", "first-read"])
        .arg(&notes)
        .arg("-o")
        .arg(&template)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let mut daemon = Daemon::start_with(dir.path(), &["--park-after", "200ms"]);
    // One cell from the template (it has filled its table already), one booted.
    daemon.ok(&["create", "-i", "--name", "t", template.to_str().unwrap()]);
    daemon.ok(&["create", "-i", "--name", "b", notes.to_str().unwrap()]);
    daemon.ok(&[
        "create",
        "-i",
        "--name",
        "durable",
        "--restart",
        "checkpoint",
        template.to_str().unwrap(),
    ]);
    let mut expected = [Notes::new(), Notes::new(), Notes::new()];
    let mut follows = Vec::new();
    for cell in ["t", "b", "durable"] {
        daemon.ok(&["start", cell]);
        follows.push(daemon.follow(&["logs", "-f", cell]));
    }
    wait_for(&follows[1].1, |line| line == "ready");

    for round in ["alpha", "beta", "gamma"] {
        for (index, cell) in ["t", "b", "durable"].into_iter().enumerate() {
            wait_parked(&daemon, cell);
            let stats: serde_json::Value =
                serde_json::from_str(&daemon.ok(&["stats", "--format", "json", cell])).unwrap();
            let kept = stats[0]["parked_bytes"].as_u64().unwrap();
            if cell == "b" {
                assert!(kept >= 1 << 20, "the booted cell keeps its table: {kept}");
            } else {
                assert!(kept < 256 << 10, "{cell} keeps only its changes: {kept}");
            }
            assert_eq!(stats[0]["state"], "running", "{stats}");
            write_stdin(&daemon, cell, &format!("{round}\n"));
            let line = wait_for(&follows[index].1, |line| line != "ready");
            assert_eq!(line, expected[index].note(round), "cell {cell}");
        }
    }
    for cell in ["t", "b", "durable"] {
        wait_parked(&daemon, cell);
    }
    assert_eq!(cell_threads(&daemon), 0, "parked cells hold no threads");

    // Killed while parked; stopped while parked (it wakes to read the end of its
    // input and exits).
    daemon.ok(&["kill", "t"]);
    assert_eq!(daemon.inspect("t")["state"], "killed");
    daemon.ok(&["stop", "b"]);
    let b = daemon.inspect("b");
    assert_eq!(
        (&b["state"], &b["exit_code"]),
        (&"exited".into(), &0.into())
    );
    let log = daemon.ok(&["logs", "b"]);
    let mut replay = Notes::new();
    let want: Vec<String> = std::iter::once("ready".to_string())
        .chain(["alpha", "beta", "gamma"].map(|round| replay.note(round)))
        .collect();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        want,
        "no line lost or repeated"
    );

    // The checkpoint policy holds for a parked cell: the next daemon has it. A parked
    // cell without it is recorded killed at shutdown.
    daemon.ok(&[
        "create",
        "-i",
        "--start",
        "--name",
        "idle",
        template.to_str().unwrap(),
    ]);
    wait_parked(&daemon, "idle");
    daemon.signal(libc::SIGTERM);
    let daemon = Daemon::start_with(dir.path(), &["--park-after", "200ms"]);
    assert_eq!(daemon.inspect("durable")["state"], "running");
    assert_eq!(daemon.inspect("idle")["state"], "killed");
    let (_, output) = daemon.follow(&["logs", "-f", "durable"]);
    for _ in 0..3 {
        wait_for(&output, |_| true);
    }
    write_stdin(&daemon, "durable", "delta\n");
    let line = wait_for(&output, |_| true);
    assert_eq!(line, expected[2].note("delta"));
}

#[test]
fn a_daemon_out_of_descriptors_answers_busy_and_parking_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let notes = c_program("notes");
    // Room for 256 descriptors of its own and four live cells of ten each.
    let daemon = Daemon::start_limited(dir.path(), &["--park-after", "off"], Some(256 + 45));
    for cell in 0..4 {
        daemon.ok(&[
            "create",
            "-i",
            "--start",
            "--name",
            &format!("c{cell}"),
            notes.to_str().unwrap(),
        ]);
    }
    let out = daemon.cli(&[
        "create",
        "-i",
        "--start",
        "--name",
        "c4",
        notes.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("as many as its limit of open files allows; try again"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        daemon.cli(&["inspect", "c4"]).status.code() == Some(1),
        "nothing is recorded of a refused create-and-start"
    );
    daemon.ok(&["create", "-i", "--name", "c4", notes.to_str().unwrap()]);
    let out = daemon.cli(&["start", "c4"]);
    assert!(
        text(&out.stderr).contains("try again"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        daemon.inspect("c4")["state"],
        "created",
        "a refused start leaves the cell as it was"
    );
    drop(daemon);

    // With parking, the idle ones make room.
    let parking = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_limited(parking.path(), &["--park-after", "100ms"], Some(256 + 45));
    for cell in 0..12 {
        let name = format!("p{cell}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = daemon.cli(&[
                "create",
                "-i",
                "--start",
                "--name",
                &name,
                notes.to_str().unwrap(),
            ]);
            if out.status.success() {
                break;
            }
            assert!(
                text(&out.stderr).contains("try again"),
                "{}",
                text(&out.stderr)
            );
            assert!(Instant::now() < deadline, "room is made for {name}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for cell in 0..12 {
        wait_parked(&daemon, &format!("p{cell}"));
    }
    write_stdin(&daemon, "p0", "one\n");
    let (_, output) = daemon.follow(&["logs", "-f", "p0"]);
    wait_for(&output, |line| line == "ready");
    assert_eq!(wait_for(&output, |_| true), Notes::new().note("one"));
}
