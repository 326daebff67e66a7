//! One container: its cell from create (spec read, root filesystem mounted, module
//! compiled, template found) through start, pause, kill and exit to delete.
//!
//! A container's program runs in a cell on a thread of the shim; the task's pid is the
//! shim's. A module that cannot run (missing, not WebAssembly, a component) does not
//! fail the create: the task starts, says why on its stderr and exits 1, as
//! `hypercell run` does, so that `ctr run` and `kubectl logs` show the reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::util::timestamp;
use hypercell_host::compile::CompileError;
use hypercell_host::config::DEFAULT_MEMORY_LIMIT;
use hypercell_host::fs::Preopen;
use hypercell_host::persist::SnapshotFile;
use hypercell_host::{
    CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload, CellReport,
    CompiledModule, Compiler, StopReason, run_cell_with_control, start_from_template,
};
use sha2::{Digest, Sha256};

use crate::events::{CreatedIo, Events};
use crate::rootfs::RootFs;
use crate::spec::ContainerSpec;
use crate::stdio::ContainerStdio;
use crate::templates::{TemplateCache, TemplateRequest};

/// Exit status of a program that could not be run at all, as under `hypercell run`.
const FAILURE_EXIT_STATUS: u32 = 1;
/// Largest module a container's image may hold.
const MAX_MODULE: u64 = 1 << 30;

/// Why a request about a container was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The container cannot be made.
    #[error("{0}")]
    Create(String),
    /// Its program has ended, so there is nothing to signal.
    #[error("the container's program has already ended")]
    Ended,
    /// The request does not fit the container's state.
    #[error("{0}")]
    State(String),
    /// A signal a cell does not take.
    #[error(
        "a cell takes SIGTERM, SIGINT, SIGHUP, SIGQUIT and SIGKILL, which end it, and SIGSTOP and SIGCONT, which pause and resume it; not signal {0}"
    )]
    Signal(u32),
}

/// Where a container's program is in its life.
#[derive(Clone, Debug)]
pub enum Phase {
    /// Made, not started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Ended.
    Exited(Exit),
}

/// How and when a container's program ended.
#[derive(Clone, Debug)]
pub struct Exit {
    /// Its exit status.
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

/// What a container runs once started.
enum Plan {
    /// A cell, ready to start.
    Cell(Box<PreparedCell>),
    /// Nothing runnable: the sentence its stderr gets.
    Refused(String),
    /// A pod's placeholder (the CRI's sandbox container): it runs until killed.
    Placeholder,
}

struct PreparedCell {
    config: CellConfig,
    module: CompiledModule,
    cpu_features: u32,
    template: Option<SnapshotFile>,
    program: String,
}

struct State {
    phase: Phase,
    plan: Option<Plan>,
    stdio: Option<ContainerStdio>,
    rootfs: RootFs,
    /// The signal that ends a placeholder.
    ended_by: Option<u32>,
}

/// A container of the shim.
pub struct Container {
    id: String,
    bundle: String,
    io: [String; 3],
    /// The limit of its program's linear memory.
    memory_limit: u64,
    control: CellControl,
    state: Mutex<State>,
    changed: Condvar,
    events: Arc<Events>,
}

/// What `state` reports of a container.
pub struct ContainerState {
    /// The bundle directory.
    pub bundle: String,
    /// The stdin, stdout and stderr FIFOs.
    pub io: [String; 3],
    /// Where its program is.
    pub phase: Phase,
}

impl Container {
    /// Makes the container `id` from the bundle at `bundle`: mounts `rootfs`, opens the
    /// stdio FIFOs `io`, and compiles its module (or finds its code and template in the
    /// caches).
    pub fn create(
        id: &str,
        bundle: &str,
        rootfs: &[containerd_shim::protos::api::Mount],
        io: [String; 3],
        terminal: bool,
        templates: Option<&TemplateCache>,
        events: Arc<Events>,
    ) -> Result<Arc<Self>, ContainerError> {
        let spec = ContainerSpec::read(Path::new(bundle))
            .map_err(|e| ContainerError::Create(e.to_string()))?;
        if terminal || spec.terminal {
            return Err(ContainerError::Create(
                "a cell has no terminal: run the container without a TTY (no -t)".into(),
            ));
        }
        let stdio = ContainerStdio::open(&io[0], &io[1], &io[2]).map_err(|e| {
            ContainerError::Create(format!("cannot open the container's stdio: {e}"))
        })?;
        let root = Path::new(bundle).join(&spec.root);
        let rootfs =
            RootFs::mount(&root, rootfs).map_err(|e| ContainerError::Create(e.to_string()))?;
        let plan = if spec.sandbox {
            Plan::Placeholder
        } else {
            match prepare(&spec, rootfs.path(), templates) {
                Ok(cell) => Plan::Cell(Box::new(cell)),
                Err(refusal) => Plan::Refused(refusal),
            }
        };
        let container = Arc::new(Self {
            id: id.into(),
            bundle: bundle.into(),
            io,
            memory_limit: spec.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT),
            control: CellControl::new(),
            state: Mutex::new(State {
                phase: Phase::Created,
                plan: Some(plan),
                stdio: Some(stdio),
                rootfs,
                ended_by: None,
            }),
            changed: Condvar::new(),
            events,
        });
        container.events.created(
            id,
            bundle,
            CreatedIo {
                stdin: &container.io[0],
                stdout: &container.io[1],
                stderr: &container.io[2],
            },
            pid(),
        );
        Ok(container)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `state` reports.
    pub fn describe(&self) -> ContainerState {
        ContainerState {
            bundle: self.bundle.clone(),
            io: self.io.clone(),
            phase: self.state().phase.clone(),
        }
    }

    /// Starts the program on a thread of its own; returns the task's pid.
    pub fn start(self: &Arc<Self>) -> Result<u32, ContainerError> {
        let mut state = self.state();
        if !matches!(state.phase, Phase::Created) {
            return Err(ContainerError::State(
                "the container has already been started".into(),
            ));
        }
        let (Some(plan), Some(stdio)) = (state.plan.take(), state.stdio.take()) else {
            return Err(ContainerError::State(
                "the container has already been started".into(),
            ));
        };
        state.phase = Phase::Running;
        drop(state);
        self.events.started(&self.id, pid());
        let container = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cell {}", self.id))
            .spawn(move || {
                let status = container.run(plan, &stdio);
                drop(stdio);
                container.exited(status);
            });
        if let Err(e) = spawned {
            // It never ran: it ends as a program that could not be run.
            self.exited(FAILURE_EXIT_STATUS);
            return Err(ContainerError::State(format!(
                "cannot start a thread for the cell: {e}"
            )));
        }
        Ok(pid())
    }

    fn run(&self, plan: Plan, stdio: &ContainerStdio) -> u32 {
        match plan {
            Plan::Refused(refusal) => {
                let _ = writeln!(stdio.stderr(), "error: {refusal}");
                FAILURE_EXIT_STATUS
            }
            Plan::Placeholder => {
                let mut state = self.state();
                loop {
                    if let Some(signal) = state.ended_by {
                        return 128 + signal;
                    }
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            Plan::Cell(cell) => {
                let payload = CellPayload::Wasm {
                    module: &cell.module,
                    cpu_features: cell.cpu_features,
                };
                let result = match &cell.template {
                    Some(template) => start_from_template(
                        &cell.config,
                        payload,
                        &template.snapshot,
                        stdio.cell_stdio(),
                        &self.control,
                    ),
                    None => run_cell_with_control(
                        &cell.config,
                        payload,
                        stdio.cell_stdio(),
                        &self.control,
                    ),
                };
                exit_status(result, &cell, stdio)
            }
        }
    }

    fn exited(&self, status: u32) {
        let exit = self.end(&mut self.state(), status);
        self.events.exited(&self.id, pid(), exit.status, &exit.at);
    }

    /// Records, under the state lock `state`, that the program ended with `status`,
    /// and wakes its waiters; the caller publishes the exit once the lock is gone.
    fn end(&self, state: &mut State, status: u32) -> Exit {
        let exit = Exit {
            status,
            at: timestamp().unwrap_or_default(),
        };
        state.phase = Phase::Exited(exit.clone());
        state.plan = None;
        state.stdio = None;
        self.changed.notify_all();
        exit
    }

    /// Sends `signal` to the program: the ending signals stop its cell (a program not
    /// started yet ends without running), SIGSTOP pauses it and SIGCONT resumes it.
    pub fn kill(&self, signal: u32) -> Result<(), ContainerError> {
        const ENDING: [libc::c_int; 5] = [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGKILL,
        ];
        let number = libc::c_int::try_from(signal).map_err(|_| ContainerError::Signal(signal))?;
        if number == libc::SIGSTOP || number == libc::SIGTSTP {
            return self.pause();
        }
        if number == libc::SIGCONT {
            return self.resume();
        }
        if !ENDING.contains(&number) {
            return Err(ContainerError::Signal(signal));
        }
        // Decided under one lock, so that a start cannot slip in between.
        let mut state = self.state();
        match state.phase {
            Phase::Exited(_) => Err(ContainerError::Ended),
            Phase::Created => {
                let exit = self.end(&mut state, 128 + signal);
                drop(state);
                self.events.exited(&self.id, pid(), exit.status, &exit.at);
                Ok(())
            }
            Phase::Running | Phase::Paused => {
                state.ended_by = Some(signal);
                drop(state);
                self.changed.notify_all();
                self.control.stop(StopReason::Signal(number));
                Ok(())
            }
        }
    }

    /// Pauses the running program: its vCPU leaves the guest and waits.
    pub fn pause(&self) -> Result<(), ContainerError> {
        if !matches!(self.state().phase, Phase::Running) {
            return Err(ContainerError::State(
                "only a running container can be paused".into(),
            ));
        }
        // Waits for the vCPU to park, without the state lock that the exit takes.
        if !self.control.pause() {
            self.control.resume();
            return Err(ContainerError::State(
                "the container's cell is not running (still starting, or ended)".into(),
            ));
        }
        let mut state = self.state();
        if matches!(state.phase, Phase::Running) {
            state.phase = Phase::Paused;
        }
        drop(state);
        self.events.paused(&self.id);
        Ok(())
    }

    /// Resumes a paused program.
    pub fn resume(&self) -> Result<(), ContainerError> {
        let mut state = self.state();
        if !matches!(state.phase, Phase::Paused) {
            return Err(ContainerError::State(
                "only a paused container can be resumed".into(),
            ));
        }
        state.phase = Phase::Running;
        drop(state);
        self.control.resume();
        self.events.resumed(&self.id);
        Ok(())
    }

    /// Waits for the program to end.
    pub fn wait(&self) -> Exit {
        let mut state = self.state();
        loop {
            if let Phase::Exited(exit) = &state.phase {
                return exit.clone();
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Deletes the container: unmounts its root filesystem. A program that is running
    /// must be killed first; one never started ends as if killed.
    pub fn delete(&self) -> Result<Exit, ContainerError> {
        let mut state = self.state();
        let exit = match &state.phase {
            Phase::Running | Phase::Paused => {
                return Err(ContainerError::State(
                    "the container's program is still running: kill it first".into(),
                ));
            }
            // Its waiters learn that it ended, as if killed.
            Phase::Created => {
                let exit = self.end(&mut state, 128 + libc::SIGKILL as u32);
                self.events.exited(&self.id, pid(), exit.status, &exit.at);
                exit
            }
            Phase::Exited(exit) => exit.clone(),
        };
        state.rootfs.unmount().map_err(|e| {
            ContainerError::State(format!("cannot unmount its root filesystem: {e}"))
        })?;
        drop(state);
        self.events.deleted(&self.id, pid(), exit.status, &exit.at);
        Ok(exit)
    }
}

/// What a container's cell has used, as containerd's cgroup metrics (`ctr task
/// metrics`, and the kubelet's stats through the CRI) report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of the cell's vCPU, in nanoseconds.
    pub cpu_ns: u64,
    /// Guest memory the cell touched, in bytes.
    pub memory: u64,
    /// The limit of its program's linear memory, in bytes.
    pub memory_limit: u64,
}

impl Container {
    /// What the cell has used so far (nothing before it starts; what it used in all
    /// once it ends, as far as its control still knows).
    pub fn usage(&self) -> Usage {
        let memory_limit = self.memory_limit;
        let activity = self.control.activity();
        Usage {
            cpu_ns: activity
                .cpu_time
                .map_or(0, |time| u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)),
            memory: self.control.memory_touched().unwrap_or(0),
            memory_limit,
        }
    }
}

/// The task's pid: the shim's own, since its cells run on its threads.
pub fn pid() -> u32 {
    std::process::id()
}

/// Reads and compiles the program `spec` names in the root filesystem at `root`, and
/// finds or makes its template; an error is the sentence the task's stderr gets.
fn prepare(
    spec: &ContainerSpec,
    root: &Path,
    templates: Option<&TemplateCache>,
) -> Result<PreparedCell, String> {
    let dir = cap_std::fs::Dir::open_ambient_dir(root, cap_std::ambient_authority())
        .map_err(|e| format!("cannot open the container's root filesystem: {e}"))?;
    let relative = spec.program.trim_start_matches('/');
    let unreadable = |e: &dyn std::fmt::Display| {
        format!(
            "cannot read the container's program `{}` in its image: {e}; process.args[0] must name a .wasm file in the image",
            spec.program
        )
    };
    // Resolved beneath the root, so that a symlink in a hostile image cannot lead the
    // shim to a host file (an absolute symlink is refused rather than followed), and
    // only a regular file of bounded size is read: a FIFO or a device in an image
    // would block or exhaust the shim.
    let metadata = dir.metadata(relative).map_err(|e| unreadable(&e))?;
    if !metadata.is_file() {
        return Err(unreadable(&"it is not a regular file"));
    }
    if metadata.len() > MAX_MODULE {
        return Err(unreadable(&format!(
            "it is {} bytes, more than a cell's module may be ({MAX_MODULE})",
            metadata.len()
        )));
    }
    let file = dir.open(relative).map_err(|e| unreadable(&e))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_MODULE), &mut bytes)
        .map_err(|e| unreadable(&e))?;
    if bytes.starts_with(b"\x7fELF") {
        return Err(format!(
            "`{}` is a native executable, not a WebAssembly module: this runtime runs .wasm programs, and runc runs native images",
            spec.program
        ));
    }
    let name = PathBuf::from(&spec.program);
    let compiler = Compiler::new().map_err(|e| e.to_string())?;
    let module = compiler.compile_bytes(&name, &bytes).map_err(|e| match e {
        e @ CompileError::Component(_) => format!(
            "{e}; a container runs a WASI preview1 command module, and a wasi:http proxy component is served with `hypercell serve`"
        ),
        e => e.to_string(),
    })?;
    let mut preopens = vec![Preopen {
        host: root.to_path_buf(),
        guest: "/".into(),
        read_only: spec.root_read_only,
    }];
    // Only directories can be preopened; bound files (such as the CRI's /etc/hosts)
    // have no meaning to the program.
    preopens.extend(
        spec.binds
            .iter()
            .filter(|bind| bind.source.is_dir())
            .map(|bind| Preopen {
                host: bind.source.clone(),
                guest: bind.destination.clone(),
                read_only: bind.read_only,
            }),
    );
    let config = CellConfig {
        memory_limit: spec.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT),
        args: spec.args.clone(),
        env: spec.env.clone(),
        preopens,
        ..CellConfig::default()
    };
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let template = templates.and_then(|templates| {
        let request = TemplateRequest {
            digest: &digest,
            name: &name,
            module: &module,
            cpu_features: compiler.cpu_features(),
            engine: compiler.fingerprint(),
            memory_limit: config.memory_limit,
        };
        match templates.template(&request) {
            Ok(template) if config.identity_len() <= template.snapshot.identity_capacity => {
                Some(template)
            }
            Ok(_) => None,
            Err(e) => {
                containerd_shim::warn!("no template for `{}`: {e}", spec.program);
                None
            }
        }
    });
    Ok(PreparedCell {
        config,
        module,
        cpu_features: compiler.cpu_features(),
        template,
        program: spec.program.clone(),
    })
}

/// The exit status of a cell's `result`, as `hypercell run` gives it, with its reasons
/// written to the container's stderr.
fn exit_status(
    result: Result<CellReport, CellFailure>,
    cell: &PreparedCell,
    stdio: &ContainerStdio,
) -> u32 {
    let mut stderr = stdio.stderr();
    match result {
        Ok(report) => {
            if let CellExit::Trapped(trap) = &report.exit {
                let _ = writeln!(
                    stderr,
                    "Error: failed to run main module `{}`\n\n{trap}",
                    cell.program
                );
            }
            let status = u32::from(report.exit.status());
            if let Some(bytes) = report.denied_growth.filter(|_| status != 0) {
                let _ = writeln!(
                    stderr,
                    "note: the program was refused a linear memory of {} by the container's memory limit of {}",
                    hypercell_host::config::format_size(bytes),
                    hypercell_host::config::format_size(cell.config.memory_limit)
                );
            }
            status
        }
        Err(CellFailure {
            error: CellError::Stopped(signal),
            ..
        }) => 128 + signal as u32,
        Err(failure) => {
            let _ = writeln!(stderr, "error: {}", failure.error);
            FAILURE_EXIT_STATUS
        }
    }
}
