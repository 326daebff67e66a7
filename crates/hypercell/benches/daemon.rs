//! The daemon under load, through its real API on its Unix socket: the latency of
//! creating and starting a cell from a template (p50 and p99), and idle cells (started
//! from a template, blocked on stdin) alive at once in one daemon, with the system
//! memory, daemon memory and descriptors each costs.
//!
//! `cargo bench -p hypercell --bench daemon` (`HYPERCELL_BENCH_RUNS` sets the
//! create+start count, default 200; `HYPERCELL_BENCH_IDLE_CELLS` the idle cells,
//! default 1000). Prints markdown tables.

// The CLI's own client, of which the benchmark uses a part.
#[allow(dead_code)]
#[path = "../src/client.rs"]
mod client;
#[path = "support/mod.rs"]
mod support;
// The tests' own daemon, which the benchmark starts the same way.
#[path = "../tests/support/binary.rs"]
mod binary;
#[path = "../tests/support/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use hyper::Method;
use support::{WAITER, available_kib, count_from_env, percentile, proc_kib};

fn main() {
    let runs = count_from_env("HYPERCELL_BENCH_RUNS", 200);
    let idle = count_from_env("HYPERCELL_BENCH_IDLE_CELLS", 1000);
    let hypercell = Path::new(env!("CARGO_BIN_EXE_hypercell"));
    let work = tempfile::tempdir().unwrap();
    let module = work.path().join("waiter.wat");
    std::fs::write(&module, WAITER).unwrap();
    let template = work.path().join("waiter.tmpl");
    let made = Command::new(hypercell)
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .args(["template", "create", "--at", "first-read"])
        .arg(&module)
        .arg("-o")
        .arg(&template)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "the template is made");

    let mut daemon = daemon::Daemon::start(work.path());
    let host = format!("unix:{}", daemon.socket.display());
    let client = client::Client::new(Some(&host), None).unwrap();
    let spec = |name: &str| {
        serde_json::to_vec(&serde_json::json!({
            "name": name,
            "module": template,
            "stdin": true,
        }))
        .unwrap()
    };
    let ms = |since: Instant| since.elapsed().as_secs_f64() * 1e3;

    // Latency: create and start from the template, then remove (not timed); then the
    // same in one request.
    let (mut creates, mut starts, mut both, mut one) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let name = format!("lat{run}");
        let began = Instant::now();
        client
            .call(Method::POST, "/v1/cells", Some(spec(&name)))
            .unwrap();
        let created = ms(began);
        let started = Instant::now();
        client
            .call(Method::PUT, &format!("/v1/cells/{name}/start"), None)
            .unwrap();
        starts.push(ms(started));
        creates.push(created);
        both.push(ms(began));
        let remove = |name: &str| {
            client
                .call(
                    Method::DELETE,
                    &format!("/v1/cells/{name}?force=true"),
                    None,
                )
                .unwrap()
        };
        remove(&name);
        let name = format!("one{run}");
        let began = Instant::now();
        client
            .call(Method::POST, "/v1/cells?start=true", Some(spec(&name)))
            .unwrap();
        one.push(ms(began));
        remove(&name);
    }
    println!("Daemon API latency from a template, {runs} cells, one at a time\n");
    println!("| request | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    for (what, times) in [
        ("create", creates),
        ("start", starts),
        ("create, then start", both),
        ("create and start in one request (`?start=true`)", one),
    ] {
        println!(
            "| {what} | {:.3} | {:.3} |",
            percentile(times.clone(), 0.5),
            percentile(times, 0.99)
        );
    }

    // Idle cells alive at once.
    let pid = daemon.child.id();
    let daemon_kib = || {
        proc_kib(
            &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
            "VmRSS:",
        )
    };
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let threads = || {
        proc_kib(
            &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
            "Threads:",
        )
    };
    let (before_available, before_rss, before_fds, before_threads) =
        (available_kib(), daemon_kib(), descriptors(), threads());
    let began = Instant::now();
    let mut alive = 0;
    let mut stopped_by = None;
    for cell in 0..idle {
        let name = format!("idle{cell}");
        let made = client
            .call(Method::POST, "/v1/cells", Some(spec(&name)))
            .and_then(|_| client.call(Method::PUT, &format!("/v1/cells/{name}/start"), None));
        if let Err(error) = made {
            stopped_by = Some(error.to_string());
            break;
        }
        alive += 1;
    }
    let seconds = began.elapsed().as_secs_f64();
    let per =
        |before: u64, after: u64| before.abs_diff(after) as f64 / 1024.0 / alive.max(1) as f64;
    let (after_available, after_rss, after_fds, after_threads) =
        (available_kib(), daemon_kib(), descriptors(), threads());
    println!("\nIdle cells from one template in one daemon (blocked on stdin)\n");
    println!(
        "| cells alive | system memory per cell (MiB) | daemon RSS per cell (MiB) | descriptors per cell | threads per cell | cells started per second |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {alive} | {:.3} | {:.3} | {:.1} | {:.1} | {:.0} |",
        per(after_available, before_available),
        per(after_rss, before_rss),
        (after_fds - before_fds) as f64 / alive.max(1) as f64,
        (after_threads - before_threads) as f64 / alive.max(1) as f64,
        alive as f64 / seconds
    );
    if let Some(reason) = stopped_by {
        println!("\nStopped at {alive} cells: {reason}");
    }
    // SIGTERM: the daemon kills its cells and records their ends.
    daemon.signal(libc::SIGTERM);
}
