//! A cell as an object: started on a thread of its own, then paused, resumed,
//! snapshotted, stopped and waited on from any thread, as a service hosting many cells
//! needs.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::cell::{
    CellFailure, CellPayload, CellReport, restore_cell, resume_cell, run_joined_cell,
    start_from_template,
};
use crate::channel::OwnedChannels;
use crate::compile::CompiledModule;
use crate::config::CellConfig;
use crate::control::{CellControl, StopReason};
use crate::persist::{CellSnapshot, SnapshotError};
use crate::stdio::CellStdio;

/// Where a [`Cell`] starts from.
enum Origin {
    Boot(OwnedChannels),
    Snapshot(Box<CellSnapshot>),
    Template(Arc<CellSnapshot>),
    Changes {
        base: Option<Arc<CellSnapshot>>,
        changes: Box<CellSnapshot>,
    },
}

/// The descriptors a [`Cell`] owns as its stdin, stdout and stderr.
#[derive(Debug)]
pub struct OwnedStdio {
    /// The program's stdin.
    pub stdin: OwnedFd,
    /// The program's stdout.
    pub stdout: OwnedFd,
    /// The program's stderr.
    pub stderr: OwnedFd,
}

/// A running cell. Dropping it stops the cell and waits for it.
#[derive(Debug)]
pub struct Cell {
    control: CellControl,
    thread: Option<JoinHandle<Result<CellReport, CellFailure>>>,
}

impl Cell {
    /// Boots a cell for `module` (compiled for `cpu_features`) with `config` and runs
    /// it on a thread of its own.
    pub fn start(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
    ) -> Self {
        Self::start_joined(
            config,
            module,
            cpu_features,
            stdio,
            OwnedChannels::default(),
        )
    }

    /// Boots a cell as [`Self::start`] does, its stdin, stdout or both joined to other
    /// cells by `channels` (whose ends close as it ends).
    pub fn start_joined(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
        channels: OwnedChannels,
    ) -> Self {
        Self::spawn(
            config,
            module,
            cpu_features,
            stdio,
            Origin::Boot(channels),
            false,
        )
    }

    /// Builds a cell from `snapshot` (taken of a cell running `module` with `config`)
    /// and runs it on from there on a thread of its own; with `paused`, it is paused
    /// before its guest runs a single instruction, until [`CellControl::resume`].
    pub fn restore(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
        snapshot: CellSnapshot,
        paused: bool,
    ) -> Self {
        Self::spawn(
            config,
            module,
            cpu_features,
            stdio,
            Origin::Snapshot(Box::new(snapshot)),
            paused,
        )
    }

    /// Starts a cell from `template` (made for `module`) with the identity of `config`
    /// and runs it on a thread of its own. Cells of one template share it, and, where
    /// it was loaded from a file, its memory, until they write.
    pub fn from_template(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
        template: Arc<CellSnapshot>,
    ) -> Self {
        Self::spawn(
            config,
            module,
            cpu_features,
            stdio,
            Origin::Template(template),
            false,
        )
    }

    /// Builds a cell from `changes`, taken with [`CellControl::snapshot_changes`] of a
    /// cell running `module` with `config` that started from `base` (a template or
    /// snapshot; `None` if it booted), and runs it on from there on a thread of its own.
    pub fn resume_changes(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
        base: Option<Arc<CellSnapshot>>,
        changes: CellSnapshot,
    ) -> Self {
        Self::spawn(
            config,
            module,
            cpu_features,
            stdio,
            Origin::Changes {
                base,
                changes: Box::new(changes),
            },
            false,
        )
    }

    fn spawn(
        config: CellConfig,
        module: Arc<CompiledModule>,
        cpu_features: u32,
        stdio: OwnedStdio,
        origin: Origin,
        held: bool,
    ) -> Self {
        let control = CellControl::new();
        // Begun before the thread starts, so that a pause asked for at once waits for
        // the vCPU instead of finding no cell.
        control.begin();
        if held {
            control.hold();
        }
        let cell_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("hypercell-cell".into())
            .spawn(move || {
                let borrowed = CellStdio {
                    stdin: stdio.stdin.as_fd(),
                    stdout: stdio.stdout.as_fd(),
                    stderr: stdio.stderr.as_fd(),
                };
                let payload = CellPayload::Wasm {
                    module: &module,
                    cpu_features,
                };
                match &origin {
                    Origin::Boot(channels) => run_joined_cell(
                        &config,
                        payload,
                        borrowed,
                        &cell_control,
                        channels.borrowed(),
                    ),
                    Origin::Snapshot(snapshot) => {
                        restore_cell(&config, payload, snapshot, borrowed, &cell_control)
                    }
                    Origin::Template(template) => {
                        start_from_template(&config, payload, template, borrowed, &cell_control)
                    }
                    Origin::Changes { base, changes } => resume_cell(
                        &config,
                        payload,
                        base.as_deref(),
                        changes,
                        borrowed,
                        &cell_control,
                    ),
                }
            })
            .expect("the host can start a thread for a cell");
        Self {
            control,
            thread: Some(thread),
        }
    }

    /// The cell's control, for other threads.
    pub fn control(&self) -> &CellControl {
        &self.control
    }

    /// Pauses the cell; false if it is not running.
    pub fn pause(&self) -> bool {
        self.control.pause()
    }

    /// Lets a paused cell go on.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Pauses the cell and takes a snapshot; it stays paused until resumed.
    pub fn snapshot(&self) -> Result<CellSnapshot, SnapshotError> {
        self.control.snapshot()
    }

    /// Stops the cell, as a signal would (its output is delivered first).
    pub fn kill(&self) {
        self.control.stop(StopReason::Signal(libc::SIGKILL));
    }

    /// Waits for the cell to end, and reports how.
    pub fn wait(mut self) -> Result<CellReport, CellFailure> {
        let thread = self.thread.take().expect("a cell is waited on once");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.control.stop(StopReason::Signal(libc::SIGKILL));
            let _ = thread.join();
        }
    }
}
