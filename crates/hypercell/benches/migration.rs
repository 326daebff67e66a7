//! Migration between two daemons, each in a network namespace of its own joined by a
//! veth pair (on loopback where namespaces cannot be made, as the output then says): a
//! cell moved back and forth, with its downtime (from its pause at the source until the
//! destination runs it) and the whole migration, p50 and p99, for cells of 16, 64 and
//! 256 MiB, idle and dirtying 51 MiB/s (the tests' `dirtier.c`, writing 64 KiB every
//! 1.25 ms).
//!
//! The link itself is measured in the same run: 64 MiB sent over plain TCP from one
//! namespace to the other, five times (this benchmark's own binary at both ends), and
//! each case's total time is given as a ratio to its bytes over that bandwidth.
//!
//! `cargo bench -p hypercell --bench migration` (`HYPERCELL_BENCH_RUNS` sets the moves
//! of each case, default 10). Prints a markdown table.

#[path = "../tests/support/binary.rs"]
mod binary;
#[path = "../tests/support/daemon.rs"]
mod daemon;
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use binary::c_program;
use daemon::{Daemon, wait_for};
use support::{count_from_env, median, percentile};

const SECRET: &str = "a migration secret for the benchmark";

/// Bytes of each transfer that measures the link.
const LINK_BYTES: usize = 64 << 20;
/// Transfers that measure the link; the median counts.
const LINK_RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--link-sink") => return link_sink(&args[2]),
        Some("--link-source") => return link_source(&args[2]),
        _ => {}
    }
    let runs = count_from_env("HYPERCELL_BENCH_RUNS", 10);
    let work = tempfile::tempdir().unwrap();
    let net = netns::NetPair::create();
    let addrs: Vec<String> = (0..2)
        .map(|i| match &net {
            Some(net) => format!("{}:7870", net.addrs[i]),
            None => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
            }
        })
        .collect();
    let daemons: Vec<Daemon> = (0..2)
        .map(|i| {
            let home = work.path().join(i.to_string());
            std::fs::create_dir_all(&home).unwrap();
            let secret = home.join("secret");
            std::fs::write(&secret, SECRET).unwrap();
            let flags = [
                "--migration-secret-file",
                secret.to_str().unwrap(),
                "--migration-listen",
                &addrs[i],
                "--park-after",
                "off",
            ];
            let netns = net.as_ref().map(|net| net.names[i].as_str());
            Daemon::start_in(&home, &flags, None, netns)
        })
        .collect();
    let program = c_program("dirtier");
    let link = net.as_ref().map(link_bandwidth);
    println!(
        "Moving a cell back and forth between two daemons {}, {runs} moves a case (pre-copy: its memory moves while it runs, and the pause holds the last pages it wrote, within a 5 ms budget)\n",
        if net.is_some() {
            "in two network namespaces joined by a veth pair"
        } else {
            "on loopback (network namespaces cannot be made here)"
        }
    );
    if let Some(link) = link {
        println!(
            "The link carried {:.2} GB/s (plain TCP, {} MiB, median of {LINK_RUNS}); `total / link` is a move's total p50 over its bytes sent at that rate.\n",
            link / 1e9,
            LINK_BYTES >> 20
        );
    }
    println!(
        "| cell memory | load | downtime p50 (ms) | downtime p99 (ms) | total p50 (ms) | total p99 (ms) | MiB sent a move | MiB/s moved | total / link |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for mib in [16u64, 64, 256] {
        for dirtying in [false, true] {
            let name = format!("m{mib}{}", if dirtying { "d" } else { "i" });
            // Every page of its buffer written once, then idle on stdin; or dirtying
            // for as long as the case lasts.
            let touch_all = mib * 16;
            let steps = if dirtying { 100_000_000 } else { touch_all };
            let (steps, mib_text) = (steps.to_string(), mib.to_string());
            let args = [
                "create",
                "--name",
                &name,
                "--interactive",
                program.to_str().unwrap(),
                &steps,
                &mib_text,
                "stdin",
            ];
            daemons[0].ok(&args);
            daemons[0].ok(&["start", &name]);
            let (mut follower, lines) = daemons[0].follow(&["logs", "-f", &name]);
            let ready = format!("step {}", touch_all - 1);
            wait_for(&lines, |line| line == ready);
            let _ = follower.kill();
            let _ = follower.wait();
            let (mut downtime, mut total, mut sent) = (Vec::new(), Vec::new(), 0.0);
            for run in 0..runs {
                let (from, to) = (run % 2, 1 - run % 2);
                let said = daemons[from].ok(&["migrate", &name, "--to", &addrs[to]]);
                // moved NAME to ADDR in T ms (D ms paused, M MiB sent)
                let number = |after: &str| -> f64 {
                    said.split(after)
                        .nth(1)
                        .unwrap_or_else(|| panic!("{said}"))
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .trim_start_matches('(')
                        .parse()
                        .unwrap_or_else(|_| panic!("{said}"))
                };
                total.push(number(" in "));
                downtime.push(number("ms ("));
                sent += number("paused, ");
            }
            let holder = &daemons[runs % 2];
            holder.ok(&["kill", &name]);
            let moves = runs as f64;
            let total_ms: f64 = total.iter().sum();
            let total_p50 = percentile(total.clone(), 0.5);
            let over_link = link.map_or("-".to_string(), |link| {
                let link_ms = sent / moves * (1 << 20) as f64 / link * 1e3;
                format!("{:.2}x", total_p50 / link_ms)
            });
            println!(
                "| {mib} MiB | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {over_link} |",
                if dirtying {
                    "dirtying 51 MiB/s"
                } else {
                    "idle"
                },
                percentile(downtime.clone(), 0.5),
                percentile(downtime, 0.99),
                total_p50,
                percentile(total, 0.99),
                sent / moves,
                sent / (total_ms / 1e3),
            );
        }
    }
    drop(daemons);
    drop(net);
}

/// The link's bandwidth in bytes a second: the median of [`LINK_RUNS`] transfers of
/// [`LINK_BYTES`] from the first namespace to the second, over plain TCP.
fn link_bandwidth(net: &netns::NetPair) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let listen = format!("{}:7871", net.addrs[1]);
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &net.names[1]])
        .arg(&exe)
        .args(["--link-sink", &listen])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "listening", "the link's sink did not start");
    let seconds: Vec<f64> = (0..LINK_RUNS)
        .map(|_| {
            let out = Command::new("ip")
                .args(["netns", "exec", &net.names[0]])
                .arg(&exe)
                .args(["--link-source", &listen])
                .output()
                .unwrap();
            assert!(out.status.success(), "the link's source failed");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        })
        .collect();
    let _ = sink.kill();
    let _ = sink.wait();
    LINK_BYTES as f64 / median(seconds)
}

/// Takes transfers on `addr`, one after another: reads each to its end and answers
/// with one byte.
fn link_sink(addr: &str) {
    let listener = TcpListener::bind(addr).unwrap();
    println!("listening");
    std::io::stdout().flush().unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        while stream.read(&mut buffer).unwrap() > 0 {}
        stream.write_all(&[1]).unwrap();
    }
}

/// Sends [`LINK_BYTES`] to the sink at `addr` and prints the seconds until it had them.
fn link_source(addr: &str) {
    let buffer = vec![0x5au8; 1 << 20];
    let mut stream = TcpStream::connect(addr).unwrap();
    let began = Instant::now();
    for _ in 0..LINK_BYTES / buffer.len() {
        stream.write_all(&buffer).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut done = [0u8];
    stream.read_exact(&mut done).unwrap();
    println!("{}", began.elapsed().as_secs_f64());
}
