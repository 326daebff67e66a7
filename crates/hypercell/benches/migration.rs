//! Migration between two daemons, each in a network namespace of its own joined by a
//! veth pair (on loopback where namespaces cannot be made, as the output then says): a
//! cell moved back and forth, with its downtime (from its pause at the source until the
//! destination runs it) and the whole migration, p50 and p99, for cells of 16, 64 and
//! 256 MiB, idle and dirtying 51 MiB/s (the tests' `dirtier.c`, writing 64 KiB every
//! 1.25 ms).
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

use binary::c_program;
use daemon::{Daemon, wait_for};
use support::{count_from_env, percentile};

const SECRET: &str = "a migration secret for the benchmark";

fn main() {
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
    println!(
        "Moving a cell back and forth between two daemons {}, {runs} moves a case (pre-copy: its memory moves while it runs, and the pause holds the last pages it wrote, within a 5 ms budget)\n",
        if net.is_some() {
            "in two network namespaces joined by a veth pair"
        } else {
            "on loopback (network namespaces cannot be made here)"
        }
    );
    println!(
        "| cell memory | load | downtime p50 (ms) | downtime p99 (ms) | total p50 (ms) | total p99 (ms) | MiB sent a move | MiB/s moved |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
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
            println!(
                "| {mib} MiB | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
                if dirtying {
                    "dirtying 51 MiB/s"
                } else {
                    "idle"
                },
                percentile(downtime.clone(), 0.5),
                percentile(downtime, 0.99),
                percentile(total.clone(), 0.5),
                percentile(total, 0.99),
                sent / moves,
                sent / (total_ms / 1e3),
            );
        }
    }
    drop(daemons);
    drop(net);
}
