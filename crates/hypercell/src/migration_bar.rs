//! The progress line `hypercell migrate` draws on a terminal while a cell moves: the
//! step, the bytes sent and the time so far, read from the cell's record, where the
//! source daemon keeps them while the migration runs.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper::Method;
use hypercell_daemon::CellRecord;
use hypercell_daemon::record::MigrationPhase;

use crate::client::Client;
use crate::daemon_commands::{HostArg, path_part};

/// How often the record is read.
const EVERY: Duration = Duration::from_millis(100);

/// A progress line drawn until dropped.
pub struct MigrationBar {
    done: Arc<AtomicBool>,
    drawer: Option<JoinHandle<()>>,
}

impl MigrationBar {
    /// Draws the progress of `cell` moving to `to` on stderr, when stderr is a
    /// terminal; nothing otherwise.
    pub fn show(host: &HostArg, cell: &str, to: &str) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let client = crate::daemon_commands::client(host).ok()?;
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let path = format!("/v1/cells/{}", path_part(cell));
        let (cell, to) = (cell.to_string(), to.to_string());
        let drawer = std::thread::spawn(move || draw(&client, &path, &cell, &to, &stop));
        Some(Self {
            done,
            drawer: Some(drawer),
        })
    }
}

impl Drop for MigrationBar {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(drawer) = self.drawer.take() {
            let _ = drawer.join();
        }
        // Cleared, so that the outcome's sentence stands alone.
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

fn draw(client: &Client, path: &str, cell: &str, to: &str, done: &AtomicBool) {
    const SPINNER: [char; 4] = ['|', '/', '-', '\\'];
    let started = Instant::now();
    let mut tick = 0;
    while !done.load(Ordering::Relaxed) {
        let progress = client
            .call(Method::GET, path, None)
            .ok()
            .and_then(|body| serde_json::from_slice::<CellRecord>(&body).ok())
            .and_then(|record| record.migration);
        let elapsed = started.elapsed().as_secs_f64();
        let line = match progress {
            Some(progress) => {
                // The record counts bytes at each step's start: the module before the
                // copy, the state once it is sent.
                let mib = progress.bytes_sent as f64 / f64::from(1 << 20);
                let step = match progress.phase {
                    MigrationPhase::Offering => "offering its module (the cell runs on)".into(),
                    MigrationPhase::Precopying => {
                        let mut step =
                            format!("copying its memory (the cell runs on), {mib:.1} MiB sent");
                        if let Some(last) = progress.last_round_bytes {
                            let mib_of = |bytes: u64| bytes as f64 / f64::from(1 << 20);
                            step +=
                                &format!(", round {} of {:.1} MiB", progress.rounds, mib_of(last));
                            if let Some(rate) = progress.dirty_rate {
                                step += &format!(" written at {:.0} MiB/s", mib_of(rate));
                            }
                            if let Some(us) = progress.expected_downtime_us {
                                step += &format!(", a pause now {:.1} ms", us as f64 / 1e3);
                            }
                        }
                        step
                    }
                    MigrationPhase::Copying => format!(
                        "copying its last pages and state (the cell is paused), {mib:.1} MiB before them"
                    ),
                };
                format!(
                    "{} moving {cell} to {to}: {step}, {elapsed:.1} s",
                    SPINNER[tick % SPINNER.len()]
                )
            }
            None => format!(
                "{} moving {cell} to {to}: {elapsed:.1} s",
                SPINNER[tick % SPINNER.len()]
            ),
        };
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
        let _ = std::io::stderr().flush();
        tick += 1;
        std::thread::sleep(EVERY);
    }
}
