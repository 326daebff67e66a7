//! Moving a live cell to another daemon, the source's side (the protocol is in
//! [`crate::migration::wire`]): stop and copy. The cell is offered first, with its
//! module, which the destination checks and compiles while the cell runs on here; then
//! it is paused and its snapshot sent. Once the destination runs it and both commit, it
//! is discarded here, its record saying where it went, and its logs end where its
//! output continues there. Until the commit, any failure resumes it here.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercell_host::persist::SnapshotFile;
use hypercell_host::{CellControl, StopReason};

use super::park::pipe_is_empty;
use super::{DaemonError, Registry, moving, resolve, wrong_state};
use crate::migration::wire::{Message, Offer, WORK_PATIENCE, Wire, WireError};
use crate::record::{
    CellRecord, CellState, DirMapping, DirSpec, MigrationPhase, MigrationProgress,
};

/// How long a source waits to connect to a destination.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a cell went.
#[derive(Clone, Debug)]
pub(super) struct Departure {
    pub to: String,
}

/// What a migration did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Migration {
    /// The cell's record here, which says where it went.
    pub cell: CellRecord,
    /// How long it ran nowhere: from its pause here to the destination's running it,
    /// in milliseconds.
    pub downtime_ms: f64,
    /// The whole migration, in milliseconds: from the request until the destination
    /// kept the cell, which then runs there alone (tearing down the copy here, after,
    /// is not counted).
    pub total_ms: f64,
    /// Bytes of module and snapshot sent.
    pub bytes: u64,
}

impl Registry {
    /// Moves the live cell `reference` names to the daemon whose migration listener is
    /// at `to`, where its directories are found under the paths `dir_map` gives (the
    /// others at the same paths). Its memory moves while it runs, in rounds, until
    /// what is left would take about `downtime_budget` to send; only that moves while
    /// it is paused. Blocks until the destination runs it, or the cell goes on here.
    pub fn migrate(
        self: &Arc<Self>,
        reference: &str,
        to: &str,
        dir_map: &[DirMapping],
        downtime_budget: Duration,
    ) -> Result<Migration, DaemonError> {
        let started = Instant::now();
        let secret = self.migration_secret.get().cloned().ok_or_else(|| {
            DaemonError::Conflict(
                "this daemon has no migration secret, so it cannot send cells".into(),
            )
        })?;
        let (id, record, module, was_paused, stdin, control) = {
            let mut inner = self.awake(reference)?;
            let id = resolve(&inner, reference)?;
            let record = inner.cells[&id].clone();
            if record.joined() {
                return Err(DaemonError::Conflict(format!(
                    "cell `{}` is joined to other cells by channels, and cannot move apart from them",
                    record.name
                )));
            }
            match inner.live.get_mut(&id) {
                Some(live) if live.migrating => return Err(moving(&record, "another migration")),
                Some(live) if record.state.is_live() && live.migrated.is_none() => {
                    live.migrating = true;
                    let paused = record.state == CellState::Paused;
                    let stdin = live.stdin.clone();
                    let control = live.control.clone();
                    (id, record, live.module.clone(), paused, stdin, control)
                }
                _ => return Err(wrong_state(&record, "migrate", "running or paused")),
            }
        };
        // Until the cell has moved, or stays, nothing else acts on it.
        let _reserved = Reservation {
            registry: self,
            id: &id,
        };
        let mut spec = record.spec.clone();
        spec.dirs = mapped_dirs(&record, dir_map)?;
        // Told as it goes, in the record and the events; a record that cannot be
        // saved does not stop the migration.
        let progress = |phase, bytes_sent, round: Option<Round>| {
            let told = self.note_progress(&id, "migrate", |record| {
                let mut progress = record
                    .migration
                    .take()
                    .unwrap_or_else(|| MigrationProgress::new(to.to_string()));
                progress.to = to.to_string();
                progress.phase = phase;
                progress.bytes_sent = bytes_sent;
                if let Some(round) = &round {
                    progress.rounds = round.number;
                    progress.last_round_bytes = Some(round.bytes);
                    progress.dirty_rate = round.dirty_rate;
                    progress.expected_downtime_us = Some(round.expected_downtime_us);
                }
                record.migration = Some(progress);
            });
            if let Err(error) = told {
                tracing::warn!("cannot record the progress of cell {id}'s migration: {error}");
            }
        };
        progress(MigrationPhase::Offering, 0, None);
        let name = record.name.clone();
        let failed = |what: String| {
            DaemonError::Conflict(format!(
                "cell `{name}` was not moved to {to}: {what}; it goes on here"
            ))
        };
        let wire_failed = |error: WireError| failed(error.to_string());
        let addr = to
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| DaemonError::BadRequest {
                field: "to",
                message: format!("`{to}` is not a host:port address"),
            })?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| failed(format!("cannot connect to it: {e}")))?;
        let mut wire = Wire::new(stream).map_err(|e| failed(e.to_string()))?;
        wire.authenticate_as_source(&secret).map_err(wire_failed)?;

        let module_bytes =
            std::fs::read(&module).map_err(|e| failed(format!("cannot read its module: {e}")))?;
        let offer = Offer {
            id: id.clone(),
            name: name.clone(),
            spec,
            paused: was_paused,
            stdin_open: stdin.is_some(),
            source_port: self.migration_port.get().copied(),
            hypercell_version: env!("CARGO_PKG_VERSION").into(),
            cpu_features: self.compiler.cpu_features(),
            engine: self.compiler.fingerprint().to_string(),
            module_extension: module
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("wasm")
                .into(),
            module_len: module_bytes.len() as u64,
        };
        wire.send(&Message::Offer(Box::new(offer)))
            .and_then(|()| wire.send_bytes(&module_bytes))
            .map_err(wire_failed)?;
        match wire.receive_within(WORK_PATIENCE).map_err(wire_failed)? {
            Message::Accepted => {}
            Message::Refused { reason } => return Err(failed(format!("it refused: {reason}"))),
            other => return Err(failed(format!("it answered {other:?}"))),
        }

        // Its memory moves while it runs; the pause then holds only the last pages
        // it wrote.
        let mut sent = module_bytes.len() as u64;
        progress(MigrationPhase::Precopying, sent, None);
        let precopied = precopy(&control, &mut wire, downtime_budget, |bytes, round| {
            sent = module_bytes.len() as u64 + bytes;
            progress(MigrationPhase::Precopying, sent, Some(round));
        });
        // Pages still on their way when the cell pauses would hold it up: the
        // destination writes them all first.
        let written = precopied.and_then(|()| {
            wire.send(&Message::PagesDone)
                .and_then(|()| wire.receive_within(WORK_PATIENCE))
                .map_err(|e| e.to_string())
                .and_then(|answer| match answer {
                    Message::PagesWritten => Ok(()),
                    Message::Refused { reason } => Err(format!("it refused: {reason}")),
                    other => Err(format!("it answered {other:?}")),
                })
        });
        if let Err(error) = written {
            self.go_on_here(&id, was_paused);
            return Err(failed(error));
        }

        // From the pause until the destination runs the cell, it runs nowhere.
        progress(MigrationPhase::Copying, sent, None);
        let paused_at = Instant::now();
        let (mut snapshot, marks) = match self.take_checkpoint(&id, false, true, true) {
            Ok(taken) => taken,
            Err(error) => {
                self.go_on_here(&id, was_paused);
                return Err(failed(error.to_string()));
            }
        };
        // Its files are reopened under its directories as the destination finds them.
        for (host, _, _) in &mut snapshot.preopens {
            *host = DirMapping::apply(dir_map, host);
        }
        // Bytes written to its stdin and not yet read would be lost: it moves once it
        // has read them.
        let unread = stdin.as_deref().is_some_and(|pipe| !pipe_is_empty(pipe));
        let sent_state = match unread {
            true => Err("its stdin holds bytes it has not read yet; move it once it has".into()),
            false => send_state(&mut wire, &snapshot),
        };
        drop(stdin);
        drop(snapshot);
        let snapshot_len = match sent_state {
            Ok(len) => len,
            Err(error) => {
                self.go_on_here(&id, was_paused);
                return Err(failed(error));
            }
        };
        let sent = sent + snapshot_len;
        // The destination runs it once both commit: it is then the destination's.
        let committed = wire
            .send(&Message::Commit)
            .and_then(|()| wire.receive())
            .map_err(|e| e.to_string());
        let downtime = paused_at.elapsed();
        let total = started.elapsed();
        let committed = match committed {
            Ok(Message::Committed) => Ok(()),
            // The destination said it discarded the cell: it goes on here.
            Ok(Message::Refused { reason }) => {
                self.go_on_here(&id, was_paused);
                return Err(failed(format!("it refused: {reason}")));
            }
            Ok(other) => Err(format!("it answered {other:?}")),
            Err(error) => Err(error),
        };
        if let Err(error) = committed {
            // The destination may run the cell or not: this copy stays paused, so
            // that it is neither lost nor run twice, until the operator decides.
            let doubt = format!(
                "the migration of cell `{name}` to {to} broke after the destination took it ({error}): it may run there; here it stays paused, to be resumed only if {to} does not have it"
            );
            if let Err(error) = control.precopy_end() {
                tracing::warn!("cell {id} stays here, but its writes are still logged: {error}");
            }
            self.change(&id, "pause", |record| {
                record.state = CellState::Paused;
                record.error = Some(doubt.clone());
                record.migration = None;
            })?;
            return Err(DaemonError::Conflict(doubt));
        }
        let end = {
            let mut inner = self.lock();
            let Some(live) = inner.live.get_mut(&id) else {
                return Err(DaemonError::Internal(format!(
                    "cell `{name}` ended here while it moved to {to}"
                )));
            };
            live.migrated = Some(Departure { to: to.to_string() });
            // What it had not delivered at the snapshot, the destination delivers: its
            // logs here end where the snapshot left them, whatever its end here writes.
            if let Some(logs) = inner.logs.get(&id) {
                let [stdout, stderr] = marks.written();
                logs.stdout.end_at(stdout);
                logs.stderr.end_at(stderr);
            }
            let live = inner.live.get_mut(&id).expect("looked up above");
            live.control.stop(StopReason::Signal(libc::SIGKILL));
            live.state.subscribe()
        };
        let mut end = end;
        let _ = self
            .runtime
            .block_on(end.wait_for(|state| *state == CellState::Migrated));
        let cell = self.inspect(&id)?;
        Ok(Migration {
            cell,
            downtime_ms: downtime.as_secs_f64() * 1e3,
            total_ms: total.as_secs_f64() * 1e3,
            bytes: sent,
        })
    }
}

/// A pre-copy round, as the migration's progress tells it.
pub(super) struct Round {
    number: u32,
    bytes: u64,
    /// Bytes a second the cell wrote while the round before was sent.
    dirty_rate: Option<u64>,
    /// What a pause now would last, in microseconds, were the last pages as many as
    /// this round's.
    expected_downtime_us: u64,
}

/// Most rounds of written pages a pre-copy sends before it pauses the cell.
const MAX_ROUNDS: u32 = 10;

/// Sends the memory of the running cell `control` controls, then rounds of the pages
/// it wrote meanwhile, until a round is small enough to send within `budget` at the
/// rate the rounds went, stops shrinking, or [`MAX_ROUNDS`] passed. Tells `progress`
/// the bytes sent and each round's number and size. The last pages go with the paused
/// cell's state ([`CellControl::snapshot_dirty`]).
fn precopy(
    control: &CellControl,
    wire: &mut Wire,
    budget: Duration,
    mut progress: impl FnMut(u64, Round),
) -> Result<(), String> {
    let mut began = Instant::now();
    // Each piece goes as soon as it is copied, while the next is.
    let mut sent = 0;
    for piece in control.precopy_start().map_err(|e| e.to_string())? {
        let mut piece = piece.map_err(|e| e.to_string())?;
        sent += wire.send_pages(&mut piece).map_err(|e| e.to_string())?;
        // Its buffer holds the next piece but one, already faulted in.
        control.precopy_recycle(piece);
    }
    // Bytes a second, taking and sending a round together.
    let mut took = began.elapsed().as_secs_f64().max(1e-6);
    let mut rate = sent as f64 / took;
    progress(
        sent,
        Round {
            number: 0,
            bytes: sent,
            dirty_rate: None,
            expected_downtime_us: (sent as f64 / rate * 1e6) as u64,
        },
    );
    let mut previous = u64::MAX;
    // Rounds that do not shrink fast enough would send the memory over and over; a
    // destination takes at most four times a cell's largest memory.
    let most = sent.saturating_mul(3);
    for number in 1..=MAX_ROUNDS {
        let written_over = took;
        began = Instant::now();
        let mut pages = control.precopy_round().map_err(|e| e.to_string())?;
        let len = wire.send_pages(&mut pages).map_err(|e| e.to_string())?;
        took = began.elapsed().as_secs_f64().max(1e-6);
        sent += len;
        if len >= 1 << 20 {
            rate = len as f64 / took;
        }
        progress(
            sent,
            Round {
                number,
                bytes: len,
                dirty_rate: Some((len as f64 / written_over) as u64),
                expected_downtime_us: (len as f64 / rate * 1e6) as u64,
            },
        );
        // What the next round would hold was written while this one went: small
        // enough, and the pause may take it.
        if len as f64 <= rate * budget.as_secs_f64() || len >= previous || sent >= most {
            break;
        }
        previous = len;
    }
    Ok(())
}

/// The directories of `record`'s cell as the destination finds them under `dir_map`;
/// a mapping that is not of an absolute directory of the cell is refused.
fn mapped_dirs(record: &CellRecord, dir_map: &[DirMapping]) -> Result<Vec<DirSpec>, DaemonError> {
    let refuse = |message: String| DaemonError::BadRequest {
        field: "dir_map",
        message,
    };
    for mapping in dir_map {
        if !Path::new(&mapping.from).is_absolute() || !Path::new(&mapping.to).is_absolute() {
            return Err(refuse(format!(
                "map directories between absolute paths, not `{}` to `{}`",
                mapping.from, mapping.to
            )));
        }
        if !record
            .spec
            .dirs
            .iter()
            .any(|dir| Path::new(&dir.host).starts_with(&mapping.from))
        {
            let dirs: Vec<&str> = record.spec.dirs.iter().map(|d| d.host.as_str()).collect();
            return Err(refuse(format!(
                "`{}` holds none of cell `{}`'s directories ({})",
                mapping.from,
                record.name,
                if dirs.is_empty() {
                    "it has none".to_string()
                } else {
                    dirs.join(", ")
                }
            )));
        }
    }
    Ok(record
        .spec
        .dirs
        .iter()
        .map(|dir| {
            let host = DirMapping::apply(dir_map, Path::new(&dir.host))
                .display()
                .to_string();
            // A directory known by its host path keeps that name in the program.
            let guest = dir
                .guest
                .clone()
                .or_else(|| (host != dir.host).then(|| dir.host.clone()));
            DirSpec {
                host,
                guest,
                read_only: dir.read_only,
            }
        })
        .collect())
}

/// Sends the paused cell's state, its `snapshot`, and waits for the destination to run
/// it; the bytes sent.
fn send_state(wire: &mut Wire, snapshot: &SnapshotFile) -> Result<u64, String> {
    wire.send(&Message::State).map_err(|e| e.to_string())?;
    let sent = wire
        .send_snapshot(snapshot)
        .map_err(|e| format!("the connection failed: {e}"))?;
    match wire
        .receive_within(WORK_PATIENCE)
        .map_err(|e| e.to_string())?
    {
        Message::Running => Ok(sent),
        Message::Refused { reason } => Err(format!("it could not run it: {reason}")),
        other => Err(format!("it answered {other:?}")),
    }
}

/// A cell reserved by the migration moving it; the reservation ends with the migration.
struct Reservation<'r> {
    registry: &'r Registry,
    id: &'r str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        // A cell that stays says so; one that left had its record closed as it ended.
        let moving = {
            let mut inner = self.registry.lock();
            if let Some(live) = inner.live.get_mut(self.id) {
                live.migrating = false;
            }
            inner
                .cells
                .get(self.id)
                .is_some_and(|record| record.migration.is_some())
        };
        if moving {
            let _ = self
                .registry
                .change(self.id, "stay", |record| record.migration = None);
        }
    }
}

impl Registry {
    /// Lets a cell whose migration failed go on: resumed, unless it was paused before.
    fn go_on_here(&self, id: &str, was_paused: bool) {
        let Some(control) = self.lock().live.get(id).map(|live| live.control.clone()) else {
            return;
        };
        // Its writes no longer need logging (a cell whose pre-copy never began
        // answers this at once).
        if let Err(error) = control.precopy_end() {
            tracing::warn!("cell {id} goes on here, but its writes are still logged: {error}");
        }
        if !was_paused {
            control.resume();
        }
    }
}
