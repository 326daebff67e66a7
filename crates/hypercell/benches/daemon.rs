//! The daemon under load, through its real API on its Unix socket: the latency of
//! creating and starting a cell from a template (p50 and p99); idle cells (started
//! from a template, blocked on stdin) alive at once in one daemon, with the system
//! memory, daemon memory and descriptors each costs; the same for parked cells (in a
//! second daemon that parks them); and the latency of waking a parked cell with input,
//! against writing to a live one.
//!
//! `cargo bench -p hypercell --bench daemon` (`HYPERCELL_BENCH_RUNS` sets the
//! create+start and wake counts, default 200; `HYPERCELL_BENCH_IDLE_CELLS` the live
//! idle cells, default 1000; `HYPERCELL_BENCH_PARKED_CELLS` the parked ones, default
//! 10,000). Prints markdown tables.

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
    let parked = count_from_env("HYPERCELL_BENCH_PARKED_CELLS", 10_000);
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

    let mut daemon = daemon::Daemon::start_with(work.path(), &["--park-after", "off"]);
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
    let live = idle_cells(&daemon, &client, &spec, idle, false);
    print_idle(
        "Idle cells from one template in one daemon (blocked on stdin, VMs live)",
        &live,
    );
    let live_writes = writes(&client, live.alive.min(runs));
    // Its VMs would slow the next daemon's: the kernel's cost of making a VM grows
    // with the VMs alive.
    daemon.signal(libc::SIGTERM);

    // The same, parked.
    let parked_dir = work.path().join("parked");
    std::fs::create_dir(&parked_dir).unwrap();
    let mut parking = daemon::Daemon::start_with(&parked_dir, &["--park-after", "50ms"]);
    let parking_client =
        client::Client::new(Some(&format!("unix:{}", parking.socket.display())), None).unwrap();
    let parked = idle_cells(&parking, &parking_client, &spec, parked, true);
    print_idle(
        "Idle cells from one template in one daemon, parked (`--park-after 50ms`)",
        &parked,
    );
    let wakes = writes(&parking_client, parked.alive.min(runs));
    println!(
        "\nWriting a byte to an idle cell's stdin (`POST /v1/cells/NAME/stdin`), {} cells\n",
        wakes.len()
    );
    println!("| cell | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    for (what, times) in [
        ("live (its VM waits in `read`)", live_writes),
        ("parked (woken: restored over its template)", wakes),
    ] {
        println!(
            "| {what} | {:.3} | {:.3} |",
            percentile(times.clone(), 0.5),
            percentile(times, 0.99)
        );
    }
    parking.signal(libc::SIGTERM);
}

/// What a daemon's idle cells cost.
struct Idle {
    alive: usize,
    system_mib: f64,
    daemon_mib: f64,
    descriptors: f64,
    threads: f64,
    per_second: f64,
    parked_kib: Option<f64>,
    /// Requests answered 503 (too many live partitions) and asked again.
    busy: usize,
    stopped_by: Option<String>,
}

/// Creates and starts `count` idle cells named `idle0`... in `daemon`, waits for them
/// all to be parked if `parked`, and measures what they cost.
fn idle_cells(
    daemon: &daemon::Daemon,
    client: &client::Client,
    spec: &dyn Fn(&str) -> Vec<u8>,
    count: usize,
    parked: bool,
) -> Idle {
    let pid = daemon.child.id();
    let status = |field: &str| {
        proc_kib(
            &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap(),
            field,
        )
    };
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as u64
    };
    let (before_available, before_rss, before_fds, before_threads) = (
        available_kib(),
        status("VmRSS:"),
        descriptors(),
        status("Threads:"),
    );
    let began = Instant::now();
    let mut alive = 0;
    let mut busy = 0;
    let mut stopped_by = None;
    for cell in 0..count {
        let name = format!("idle{cell}");
        // A busy daemon (503) is asked again, as its Retry-After says.
        let made = loop {
            match client.call(Method::POST, "/v1/cells?start=true", Some(spec(&name))) {
                Err(client::ClientError::Busy(_)) => {
                    busy += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                made => break made,
            }
        };
        if let Err(error) = made {
            stopped_by = Some(error.to_string());
            break;
        }
        alive += 1;
    }
    let seconds = began.elapsed().as_secs_f64();
    let mut parked_kib = None;
    if parked {
        loop {
            let listed = client.call(Method::GET, "/v1/cells", None).unwrap();
            let cells: Vec<serde_json::Value> = serde_json::from_slice(&listed).unwrap();
            if cells.iter().all(|cell| cell.get("parked_ms").is_some()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let stats = client
            .call(Method::GET, "/v1/cells/idle0/stats", None)
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
        parked_kib = stats["parked_bytes"]
            .as_u64()
            .map(|bytes| bytes as f64 / 1024.0);
    }
    let per = |before: u64, after: u64| before.abs_diff(after) as f64 / alive.max(1) as f64;
    Idle {
        alive,
        system_mib: per(available_kib(), before_available) / 1024.0,
        daemon_mib: per(status("VmRSS:"), before_rss) / 1024.0,
        descriptors: per(descriptors(), before_fds),
        threads: per(status("Threads:"), before_threads),
        per_second: alive as f64 / seconds,
        parked_kib,
        busy,
        stopped_by,
    }
}

fn print_idle(title: &str, idle: &Idle) {
    println!("\n{title}\n");
    println!(
        "| cells alive | system memory per cell (MiB) | daemon RSS per cell (MiB) | descriptors per cell | threads per cell | cells started per second | memory pages kept per parked cell (KiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {} |",
        idle.alive,
        idle.system_mib,
        idle.daemon_mib,
        idle.descriptors,
        idle.threads,
        idle.per_second,
        idle.parked_kib
            .map_or("-".into(), |kib| format!("{kib:.0}"))
    );
    if idle.busy > 0 {
        println!(
            "\n{} requests were answered 503 (as many live partitions as the daemon's open-file limit allows) and asked again.",
            idle.busy
        );
    }
    if let Some(reason) = &idle.stopped_by {
        println!("\nStopped at {} cells: {reason}", idle.alive);
    }
}

/// Times writing a byte to the stdin of each of the first `count` idle cells, one
/// every 10 ms, so that each is timed on its own rather than beside the end of the
/// cell before it (which the byte lets exit).
fn writes(client: &client::Client, count: usize) -> Vec<f64> {
    (0..count)
        .map(|cell| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let began = Instant::now();
            client
                .call(
                    Method::POST,
                    &format!("/v1/cells/idle{cell}/stdin"),
                    Some(b"x".to_vec()),
                )
                .unwrap();
            began.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}
