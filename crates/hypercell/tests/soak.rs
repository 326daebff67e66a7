//! Churn: clients create, start, stop and remove cells in parallel for a bounded time
//! against one daemon; no request may fail, and no descriptor or thread of a cell may
//! be left. (The daemon's VMs made ahead, and tokio's idle blocking threads, come and
//! go on their own and are not counted.) `HYPERCELL_SOAK_SECONDS` (default 20) and
//! `HYPERCELL_SOAK_CLIENTS` (default 8) size it; the note of the session that added it
//! records a 10-minute run.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/daemon.rs"]
mod daemon;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use binary::*;
use daemon::Daemon;

fn count_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The daemon's open descriptors other than KVM's (the VMs it keeps made ahead), and
/// its threads that belong to cells.
fn footprint(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| !target.to_string_lossy().contains("kvm"))
        .count();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| {
            ["hypercell-cell", "hypercell-vcpu", "hypercell-wait"].contains(&name.trim())
        })
        .count();
    (fds, threads)
}

/// The daemon's resident memory, reported (an allocator keeps what it freed, so it is
/// not asserted).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn parallel_churn_leaves_the_daemon_as_it_found_it() {
    let seconds = count_from_env("HYPERCELL_SOAK_SECONDS", 20);
    let clients = count_from_env("HYPERCELL_SOAK_CLIENTS", 8);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let cli = |args: &[&str]| daemon.cli(args);
    let ticker = c_program("ticker");
    let count = c_program("count");
    // One cell run through first, so that compiling and the first VMs are behind us.
    let warm = cli(&[
        "create",
        "--start",
        "--name",
        "warm",
        count.to_str().unwrap(),
        "1",
    ]);
    assert!(warm.status.success(), "{}", text(&warm.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !text(&cli(&["inspect", "warm"]).stdout).contains("\"exited\"") {
        assert!(Instant::now() < deadline, "the first cell ends");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cli(&["rm", "warm"]).status.success());
    // The ticker's code, too, is loaded once and kept (with its cache file open).
    let warm = cli(&[
        "create",
        "--start",
        "--name",
        "warm",
        ticker.to_str().unwrap(),
    ]);
    assert!(warm.status.success(), "{}", text(&warm.stderr));
    assert!(cli(&["rm", "-f", "warm"]).status.success());
    // The warm cells' output readers end just after them: the baseline is taken once
    // the count holds still.
    let mut before = footprint(daemon.child.id());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = footprint(daemon.child.id());
        if now == before {
            break;
        }
        before = now;
    }
    let rss_before = rss_kib(daemon.child.id());

    let until = Instant::now() + Duration::from_secs(seconds);
    let cycles = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for client in 0..clients {
            let cycles = Arc::clone(&cycles);
            let (cli, ticker, count) = (&cli, &ticker, &count);
            scope.spawn(move || {
                let mut round = 0;
                while Instant::now() < until {
                    let name = format!("c{client}-{round}");
                    round += 1;
                    // Alternately a cell that runs until stopped and one that ends.
                    let program = if round % 2 == 0 { ticker } else { count };
                    let steps: [&[&str]; 3] = [
                        &[
                            "create",
                            "--start",
                            "--name",
                            &name,
                            program.to_str().unwrap(),
                            "50",
                        ],
                        &["stop", "-t", "0", &name],
                        &["rm", "-f", &name],
                    ];
                    for step in steps {
                        let out = cli(step);
                        assert!(
                            out.status.success(),
                            "client {client}, {step:?}: {}",
                            text(&out.stderr)
                        );
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let listed = cli(&["ps", "--format", "json"]);
    assert_eq!(text(&listed.stdout).trim(), "[]", "every cell was removed");
    // The waiters and log readers of the last cells end just after their cells.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = footprint(daemon.child.id());
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = footprint(daemon.child.id());
    }
    println!(
        "{} cycles by {clients} clients in {seconds} s; descriptors and cell threads before {before:?}, after {after:?}; daemon RSS before {} KiB, after {} KiB",
        cycles.load(Ordering::Relaxed),
        rss_before,
        rss_kib(daemon.child.id()),
    );
    drop(daemon);
    assert_eq!(
        after, before,
        "descriptors and threads back to where they were"
    );
}
