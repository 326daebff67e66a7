//! Checkpoints of cells whose restart policy is `checkpoint`: taken every so often while
//! they run, when they are parked and as the daemon shuts down, so that the next daemon
//! restores them from the last one even after a crash.
//!
//! Checkpoint N of a cell is `cells/ID/checkpoint-N.snap` and `checkpoint-N.mark`, the
//! second written (atomically) after the first is complete: a checkpoint counts once its
//! mark exists. The mark holds where the cell's stdout and stderr logs stood at the
//! snapshot, counted from the bytes the cell had delivered; restoring cuts the logs back
//! there, as the restored cell writes what came after again. Nothing is lost, and
//! nothing appears twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DaemonError, Registry, internal};
use crate::logs::{Stream, truncate};
use crate::record::{CellState, RestartPolicy};

/// Where a checkpoint left a cell's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LogMarks {
    stdout: u64,
    stderr: u64,
}

impl LogMarks {
    pub(super) fn new([stdout, stderr]: [u64; 2]) -> Self {
        Self { stdout, stderr }
    }

    /// Bytes of stdout's and stderr's logs.
    pub(super) fn written(self) -> [u64; 2] {
        [self.stdout, self.stderr]
    }
}

/// Complete checkpoints kept of one cell: the newest (an older one goes only once a
/// newer is complete).
const KEPT: usize = 1;

/// Checkpoints every `every` the running and paused cells of `registry` whose policy
/// asks for it, from a thread of its own, until the registry closes or goes.
pub(super) fn watch_policies(registry: &Arc<Registry>, every: Duration) -> std::io::Result<()> {
    super::every(registry, "hypercell-checkpoint", every, |registry| {
        for id in registry.checkpointed_cells() {
            if let Err(error) = registry.checkpoint(&id, true) {
                tracing::warn!("cannot checkpoint cell {id}: {error}");
            }
        }
    })
}

impl Registry {
    /// The live, unparked cells whose restart policy is `checkpoint`.
    fn checkpointed_cells(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .live
            .iter()
            .filter(|(id, live)| {
                live.parked.is_none()
                    && !live.migrating
                    && !live.parking.load(std::sync::atomic::Ordering::SeqCst)
                    && inner.cells.get(*id).is_some_and(|record| {
                        record.spec.restart == RestartPolicy::Checkpoint
                            && matches!(record.state, CellState::Running | CellState::Paused)
                    })
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn cell_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("cells").join(id)
    }

    /// The numbers of the cell `id`'s complete checkpoints, oldest first.
    fn checkpoint_numbers(&self, id: &str) -> Vec<u64> {
        let mut numbers: Vec<u64> = std::fs::read_dir(self.cell_dir(id))
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                let name = name.to_str()?;
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".mark")?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        numbers
    }

    fn checkpoint_file(&self, id: &str, number: u64, extension: &str) -> PathBuf {
        self.cell_dir(id)
            .join(format!("checkpoint-{number}.{extension}"))
    }

    /// Lets go of every checkpoint of the cell `id`: it moved, and goes on from
    /// elsewhere.
    pub(super) fn forget_checkpoints(&self, id: &str) {
        for number in self.checkpoint_numbers(id) {
            let _ = std::fs::remove_file(self.checkpoint_file(id, number, "mark"));
            let _ = std::fs::remove_file(self.checkpoint_file(id, number, "snap"));
        }
    }

    /// The cell `id`'s newest complete checkpoint: its snapshot file and log marks.
    pub(super) fn last_checkpoint(&self, id: &str) -> Option<(PathBuf, LogMarks)> {
        let number = *self.checkpoint_numbers(id).last()?;
        let marks = std::fs::read(self.checkpoint_file(id, number, "mark")).ok()?;
        let marks = serde_json::from_slice(&marks).ok()?;
        Some((self.checkpoint_file(id, number, "snap"), marks))
    }

    /// Cuts the cell `id`'s logs back to `marks`, before a cell restored from the
    /// checkpoint they belong to writes on.
    pub(super) fn rewind_logs(&self, id: &str, marks: LogMarks) -> Result<(), String> {
        let dir = self.cell_dir(id);
        truncate(&dir, Stream::Stdout, marks.stdout)
            .and_then(|()| truncate(&dir, Stream::Stderr, marks.stderr))
            .map_err(|e| format!("cannot cut its logs back to its checkpoint: {e}"))
    }

    /// Takes a checkpoint of the live cell `id` (see [`Self::write_checkpoint`] for
    /// `go_on`) and lets older ones go.
    pub(super) fn checkpoint(&self, id: &str, go_on: bool) -> Result<(), DaemonError> {
        let number = self
            .checkpoint_numbers(id)
            .last()
            .map_or(1, |last| last + 1);
        let marks = self.write_checkpoint(id, &self.checkpoint_file(id, number, "snap"), go_on)?;
        write_atomically(
            &self.checkpoint_file(id, number, "mark"),
            &serde_json::to_vec(&marks).map_err(internal)?,
        )
        .map_err(|e| {
            internal(format!(
                "cannot record checkpoint {number} of cell {id}: {e}"
            ))
        })?;
        let numbers = self.checkpoint_numbers(id);
        for old in &numbers[..numbers.len().saturating_sub(KEPT)] {
            let _ = std::fs::remove_file(self.checkpoint_file(id, *old, "mark"));
            let _ = std::fs::remove_file(self.checkpoint_file(id, *old, "snap"));
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
