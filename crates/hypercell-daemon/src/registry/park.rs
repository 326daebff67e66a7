//! Parking: a cell that has waited for input longer than the daemon's threshold gives
//! up its VM, its threads and its descriptors. What it changed since it started (the
//! pages it made its own over its template, and its vCPU and services) is kept in
//! memory, and the cell wakes, restored over its template, when the API writes to its
//! stdin or acts on it. It stays `running` throughout: parking is the daemon's
//! business, not a state of the program.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use std::time::Duration;

use hypercell_host::persist::CellSnapshot;
use hypercell_host::{Cell, CellConfig, CompiledModule, StopReason};
use tokio::sync::watch;

use super::{CellLogs, DaemonError, Inner, Live, Registry, resolve};
use crate::record::{CellRecord, CellState, CellUsage, Event, RestartPolicy, now_ms};

/// A parked cell: what it needs to go on where it stopped.
pub(super) struct Parked {
    config: CellConfig,
    compiled: Arc<CompiledModule>,
    module: std::path::PathBuf,
    base: Option<Arc<CellSnapshot>>,
    changes: CellSnapshot,
    state: watch::Sender<CellState>,
    /// What it did before it was parked.
    pub(super) earlier: CellUsage,
}

impl Parked {
    /// Bytes of memory pages it keeps.
    pub(super) fn bytes(&self) -> u64 {
        self.changes.memory.saved_len()
    }

    /// Writes into `record` that the cell was killed while parked.
    fn record_killed(&self, record: &mut CellRecord) {
        record.state = CellState::Killed;
        record.finished_ms = Some(now_ms());
        record.usage = Some(self.earlier.clone());
        record.parked_ms = None;
    }
}

/// Threads that park cells at once.
const PARKERS: usize = 4;

/// Parks, from a thread of its own, every cell of `registry` that has waited `after`
/// for input, looking a few times per `after`, until the registry closes or goes.
pub(super) fn watch_idle(registry: &Arc<Registry>, after: Duration) -> std::io::Result<()> {
    let tick = (after / 4).clamp(Duration::from_millis(1), Duration::from_secs(1));
    super::every(registry, "hypercell-park", tick, move |registry| {
        // Parking waits mostly on the cells' vCPU threads: several at once keep up
        // with cells started quickly.
        let idle = registry.idle_cells(after);
        let share = idle.len().div_ceil(PARKERS).max(1);
        std::thread::scope(|scope| {
            for ids in idle.chunks(share) {
                scope.spawn(move || {
                    for id in ids {
                        registry.park(id);
                    }
                });
            }
        });
    })
}

impl Registry {
    /// The running cells that have waited `after` for input on a stdin the API holds.
    fn idle_cells(&self, after: Duration) -> Vec<String> {
        let inner = self.lock();
        inner
            .live
            .iter()
            .filter(|(id, live)| {
                inner.cells.get(*id).is_some_and(|record| {
                    record.state == CellState::Running
                        && record.spec.timeout_ms.is_none()
                        && !record.joined()
                }) && live.stdin.is_some()
                    && !live.migrating
                    && !live.parking.load(Ordering::SeqCst)
                    && live
                        .control
                        .waiting_for_input()
                        .is_some_and(|waited| waited >= after)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Parks the cell `id` if it still waits for input and nothing writes to it: its
    /// changes are taken and its partition stopped; the end of the partition (see
    /// [`Self::finish_parking`]) completes the parking.
    fn park(&self, id: &str) {
        let (control, stdin, durable) = {
            let mut inner = self.lock();
            let running = inner
                .cells
                .get(id)
                .is_some_and(|record| record.state == CellState::Running);
            let durable = inner
                .cells
                .get(id)
                .is_some_and(|record| record.spec.restart == RestartPolicy::Checkpoint);
            let Some(live) = inner.live.get_mut(id) else {
                return;
            };
            if !running || live.migrating || live.parking.load(Ordering::SeqCst) {
                return;
            }
            let Some(stdin) = live.stdin.take() else {
                return;
            };
            // Clones are made under the lock, by writers: another one means a write
            // is under way.
            if Arc::strong_count(&stdin) > 1 {
                live.stdin = Some(stdin);
                return;
            }
            live.parking.store(true, Ordering::SeqCst);
            (live.control.clone(), stdin, durable)
        };
        // A parked cell's state is in memory only: one that is to outlive its daemon
        // gets a checkpoint first.
        if durable && let Err(error) = self.checkpoint(id, true) {
            tracing::warn!("cannot checkpoint cell {id} before parking it: {error}");
        }
        // Bytes still in the pipe (written just before, and not read yet) would be
        // lost with it: such a cell is not idle.
        let changes = control
            .snapshot_changes()
            .ok()
            .filter(|_| pipe_is_empty(&stdin));
        let mut inner = self.lock();
        let Some(live) = inner.live.get_mut(id) else {
            return;
        };
        match changes {
            Some(changes) => {
                live.parked = Some(changes);
                drop(inner);
                control.stop(StopReason::Signal(libc::SIGKILL));
            }
            None => {
                live.parking.store(false, Ordering::SeqCst);
                live.stdin = Some(stdin);
                drop(inner);
                control.resume();
                self.settled.notify_all();
            }
        }
    }

    /// On the wait thread of the cell `id`, as its partition ends: if the partition was
    /// stopped to park the cell, waits for its output to reach the logs and keeps the
    /// cell as parked, its logs holding no descriptor. Returns whether it did.
    pub(super) fn finish_parking(&self, id: &str) -> bool {
        let captures = match self.lock().live.get_mut(id) {
            Some(live) if live.parked.is_some() => std::mem::take(&mut live.captures),
            _ => return false,
        };
        for capture in captures {
            let _ = self.runtime.block_on(capture);
        }
        let mut inner = self.lock();
        let Some(live) = inner.live.remove(id) else {
            return true;
        };
        let usage = live.usage();
        let Live {
            config,
            compiled,
            module,
            base,
            state,
            parked: Some(changes),
            ..
        } = live
        else {
            return true;
        };
        if let Some(logs) = inner.logs.get(id) {
            logs.release();
        }
        inner.parked.insert(
            id.to_string(),
            Parked {
                config,
                compiled,
                module,
                base,
                changes,
                state,
                earlier: usage,
            },
        );
        if let Some(record) = inner.cells.get_mut(id) {
            record.parked_ms = Some(now_ms());
        }
        drop(inner);
        self.settled.notify_all();
        true
    }

    /// The registry's lock, once the cell `reference` names is not being parked.
    pub(super) fn settle(&self, reference: &str) -> Result<MutexGuard<'_, Inner>, DaemonError> {
        let mut inner = self.lock();
        loop {
            let id = resolve(&inner, reference)?;
            let parking = inner
                .live
                .get(&id)
                .is_some_and(|live| live.parking.load(Ordering::SeqCst));
            if !parking {
                return Ok(inner);
            }
            inner = self
                .settled
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The registry's lock, once the cell `reference` names is awake: a parked cell
    /// is restored into a new partition first.
    pub(super) fn awake(
        self: &Arc<Self>,
        reference: &str,
    ) -> Result<MutexGuard<'_, Inner>, DaemonError> {
        let mut inner = self.settle(reference)?;
        let id = resolve(&inner, reference)?;
        if inner.parked.contains_key(&id) {
            self.check_room(&inner)?;
        }
        if let Some(parked) = inner.parked.remove(&id) {
            self.wake(&mut inner, &id, parked)?;
        }
        Ok(inner)
    }

    /// Restores the parked cell `id` into a new partition, with new pipes to the same
    /// logs; on failure it stays parked.
    fn wake(
        self: &Arc<Self>,
        inner: &mut Inner,
        id: &str,
        parked: Parked,
    ) -> Result<(), DaemonError> {
        let logs = inner.logs.get(id).map(Arc::clone);
        let plumbing = logs
            .as_deref()
            .ok_or_else(|| "its logs are gone".to_string())
            .and_then(|logs: &CellLogs| self.plumb(logs, true));
        let plumbing = match plumbing {
            Ok(plumbing) => plumbing,
            Err(reason) => {
                let name = inner.cells.get(id).map(|r| r.name.clone());
                inner.parked.insert(id.to_string(), parked);
                return Err(DaemonError::Conflict(format!(
                    "cell `{}` is parked and cannot be woken now: {reason}",
                    name.unwrap_or_default()
                )));
            }
        };
        let log_start = logs.as_deref().map_or([0; 2], |logs| logs.written());
        let cell = Cell::resume_changes(
            parked.config.clone(),
            Arc::clone(&parked.compiled),
            self.compiler.cpu_features(),
            plumbing.stdio,
            parked.base.clone(),
            parked.changes,
        );
        inner.live.insert(
            id.to_string(),
            Live {
                control: cell.control().clone(),
                config: parked.config,
                compiled: parked.compiled,
                module: parked.module,
                base: parked.base,
                earlier: parked.earlier,
                stdin: plumbing.stdin,
                captures: plumbing.captures,
                log_start,
                parking: plumbing.parking,
                parked: None,
                state: parked.state,
                killed: false,
                checkpointed: false,
                migrated: None,
                migrating: false,
            },
        );
        if let Some(record) = inner.cells.get_mut(id) {
            record.parked_ms = None;
        }
        self.watch_end(id, cell).map_err(DaemonError::Internal)
    }

    /// As the daemon shuts down: records every parked cell whose policy does not ask for
    /// a checkpoint killed, all in one transaction (one fsync for a hundred thousand
    /// cells rather than one each).
    pub(super) fn end_parked_at_shutdown(&self) -> Result<(), DaemonError> {
        let saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        let ending: Vec<String> = inner
            .parked
            .keys()
            .filter(|id| {
                inner
                    .cells
                    .get(*id)
                    .is_some_and(|record| record.spec.restart != RestartPolicy::Checkpoint)
            })
            .cloned()
            .collect();
        let mut records = Vec::with_capacity(ending.len());
        let mut events = Vec::with_capacity(ending.len());
        let mut ended = Vec::with_capacity(ending.len());
        for id in ending {
            let seq = inner.next_event;
            let inner = &mut *inner;
            let (Some(parked), Some(record)) = (inner.parked.remove(&id), inner.cells.get_mut(&id))
            else {
                continue;
            };
            parked.record_killed(record);
            events.push(Event {
                seq,
                time_ms: now_ms(),
                cell: record.id.clone(),
                name: record.name.clone(),
                action: "kill".into(),
                state: CellState::Killed,
                migration: None,
            });
            records.push(record.clone());
            inner.next_event += 1;
            if let Some(logs) = inner.logs.get(&id) {
                logs.close();
            }
            ended.push(parked);
        }
        drop(inner);
        self.store.save_all(&records, &events)?;
        for event in events {
            let _ = self.events.send(event);
        }
        drop(saving);
        for parked in ended {
            parked.state.send_replace(CellState::Killed);
        }
        Ok(())
    }

    /// Records the parked cell `id` killed; a receiver that sees it.
    pub(super) fn end_parked(
        &self,
        id: &str,
        parked: Parked,
    ) -> Result<watch::Receiver<CellState>, DaemonError> {
        self.change(id, "kill", |record| parked.record_killed(record))?;
        if let Some(logs) = self.lock().logs.get(id) {
            logs.close();
        }
        parked.state.send_replace(CellState::Killed);
        Ok(parked.state.subscribe())
    }
}

/// Whether nothing waits to be read in the pipe whose write end is `pipe`.
pub(super) fn pipe_is_empty(pipe: &File) -> bool {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, the bytes queued in the pipe, into `queued`,
    // which outlives the call; it works on either end of a pipe.
    let asked = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut queued) };
    asked == 0 && queued == 0
}
