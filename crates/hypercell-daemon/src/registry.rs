//! The cells a daemon hosts: their records (kept in the [`Store`]), the live ones'
//! controls and stdin, their logs, and the events their changes send. Every operation
//! of the API is a method here; the API only translates HTTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hypercell_host::compile::check_components;
use hypercell_host::config::{Components, DEFAULT_MEMORY_LIMIT, component_names};
use hypercell_host::fs::Preopen;
use hypercell_host::persist::{CellSnapshot, SnapshotFile};
use hypercell_host::stdio::pipe;
use hypercell_host::{
    Cell, CellActivity, CellConfig, CellControl, CellError, CellExit, CellFailure, CellReport,
    CompiledModule, Compiler, OwnedChannels, OwnedStdio, StopReason,
};
use tokio::sync::{broadcast, watch};

use crate::loaded::Loaded;
use crate::logs::{Stream, StreamLog, capture};
use crate::record::{
    CellRecord, CellSpec, CellState, CellStatsView, CellUsage, Event, RestartPolicy, now_ms,
};
use crate::store::{DEFAULT_EVENTS_KEPT, Store, StoreError};

mod arrive;
mod channels;
mod checkpoint;
mod migrate;
mod park;
mod precopied;
mod templates;

pub use migrate::Migration;
use park::Parked;

/// Bytes kept of each output stream of a cell, in each of its two files.
pub const DEFAULT_LOG_CAP: u64 = 16 << 20;

/// Why an operation on the daemon's cells failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No cell has that id, id prefix or name.
    #[error("no cell has the id or name `{0}`")]
    NotFound(String),
    /// No template has that name.
    #[error("no template is named `{0}`")]
    NoTemplate(String),
    /// The cell is not in a state the operation applies to.
    #[error("cell `{name}` is {state}; {action} needs a cell that is {needed}")]
    WrongState {
        /// The cell's name.
        name: String,
        /// Its state.
        state: &'static str,
        /// The operation.
        action: &'static str,
        /// The states it applies to.
        needed: &'static str,
    },
    /// A field of the request is wrong.
    #[error("`{field}`: {message}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong with it, in one sentence.
        message: String,
    },
    /// The name is another cell's.
    #[error("a cell named `{0}` exists already; choose another name")]
    NameTaken(String),
    /// The cell cannot do it now, for a reason of its own (one sentence).
    #[error("{0}")]
    Conflict(String),
    /// The cell could not start; its record says so too.
    #[error("cell `{name}` could not start: {reason}")]
    Start {
        /// The cell's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The daemon holds as many live partitions as it can: the request may succeed
    /// later, once cells are parked or end.
    #[error("{0}")]
    Busy(String),
    /// The records could not be kept.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host failed at something it should not.
    #[error("the daemon failed: {0}")]
    Internal(String),
}

fn internal(error: impl std::fmt::Display) -> DaemonError {
    DaemonError::Internal(error.to_string())
}

/// A cell's two output streams.
pub struct CellLogs {
    /// Its stdout.
    pub stdout: Arc<StreamLog>,
    /// Its stderr.
    pub stderr: Arc<StreamLog>,
}

impl CellLogs {
    /// Bytes each stream has ever written: stdout's, then stderr's.
    fn written(&self) -> [u64; 2] {
        [self.stdout.mark().written, self.stderr.mark().written]
    }

    /// Marks both streams as ended.
    fn close(&self) {
        self.stdout.close();
        self.stderr.close();
    }

    /// Closes both streams' files until their next append.
    fn release(&self) {
        self.stdout.release();
        self.stderr.release();
    }

    /// One of the two.
    pub fn stream(&self, stream: Stream) -> &Arc<StreamLog> {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }
}

/// The checkpoint a partition is restored from, and whether it starts paused.
#[derive(Clone)]
struct Restore<'p> {
    path: &'p Path,
    paused: bool,
    /// Whether the record of its start may reach the disk only with the next sync: an
    /// arriving cell's, made while its source holds it paused, so that no `fsync`
    /// lengthens the pause. The arrival syncs once the cell is its own.
    record_later: bool,
    /// What the checkpoint holds, when it is at hand already (a migrated cell's,
    /// whose memory came apart from its file).
    loaded: Option<Arc<LoadedSnapshot>>,
}

/// A new partition's stdio, and the daemon's ends of it.
struct Plumbing {
    stdio: OwnedStdio,
    stdin: Option<Arc<File>>,
    captures: Vec<tokio::task::JoinHandle<()>>,
    parking: Arc<AtomicBool>,
}

/// A snapshot file, and its cell state as the cells of a template share it.
struct LoadedSnapshot {
    file: SnapshotFile,
    shared: Arc<CellSnapshot>,
}

/// A cell with a partition.
struct Live {
    control: CellControl,
    /// What the cell runs with, and the module its code comes from, for snapshots.
    config: CellConfig,
    compiled: Arc<CompiledModule>,
    module: PathBuf,
    /// What it started from, which a snapshot of its changes goes over.
    base: Option<Arc<CellSnapshot>>,
    /// What it did before it was last parked.
    earlier: CellUsage,
    /// The write end of its stdin, while open; clones are made only under the
    /// registry's lock, by writers.
    stdin: Option<Arc<File>>,
    /// The tasks copying its output into its logs.
    captures: Vec<tokio::task::JoinHandle<()>>,
    /// Where its stdout and stderr logs stood when this partition began: with what the
    /// partition delivered, where a checkpoint leaves them.
    log_start: [u64; 2],
    /// Set as it is parked: the end of its output pipes does not end its logs.
    parking: Arc<AtomicBool>,
    /// Its changes, once taken to park it: its end parks it rather than ending it.
    parked: Option<CellSnapshot>,
    /// Its state, for those waiting for its end.
    state: watch::Sender<CellState>,
    /// Whether a kill was asked for: its end is then a kill, not a failure.
    killed: bool,
    /// Whether it was checkpointed as the daemon shuts down: its record stays live,
    /// for the next daemon to restore it.
    checkpointed: bool,
    /// Where it went, once another daemon runs it: its end here is its departure.
    migrated: Option<migrate::Departure>,
    /// Set while a migration moves it: nothing else pauses, resumes, snapshots, parks,
    /// stops or feeds it meanwhile.
    migrating: bool,
}

impl Live {
    /// What the cell has done, in this partition and before it was parked.
    fn usage(&self) -> CellUsage {
        let mut usage = self.earlier.clone();
        usage.add(usage_of(&self.control.activity()));
        usage
    }
}

struct Inner {
    cells: BTreeMap<String, CellRecord>,
    /// Each cell's id by its name.
    names: HashMap<String, String>,
    live: HashMap<String, Live>,
    /// Cells whose VMs were released while they waited for input.
    parked: HashMap<String, Parked>,
    logs: HashMap<String, Arc<CellLogs>>,
    /// Cells migrating here, not recorded yet: their names, by id.
    arriving: HashMap<String, String>,
    /// The channel ends of joined cells that have not started, by id.
    channel_ends: HashMap<String, OwnedChannels>,
    /// Cells a start is under way for (compiling, making their partition): no second
    /// start, and no channel, until it is done.
    starting: HashSet<String>,
    next_event: u64,
}

/// The cells of one daemon.
pub struct Registry {
    state_dir: PathBuf,
    /// Snapshot files (templates, checkpoints) as loaded, with a template's cell
    /// state shared by its cells.
    snapshots: Loaded<LoadedSnapshot>,
    /// Compiled modules, by source path.
    modules: Loaded<CompiledModule>,
    /// Directories under which cells may be granted directories.
    allowed_dirs: Vec<PathBuf>,
    store: Store,
    compiler: Compiler,
    log_cap: u64,
    inner: Mutex<Inner>,
    /// Most cells with live partitions at once, by the limit of open files.
    max_live: usize,
    /// Held while a template is made, so that two cannot take one name.
    making_template: Mutex<()>,
    /// Held while records are changed and saved, taken before the lock on `inner`,
    /// which is let go before the save: saves keep the order of the changes.
    saving: Mutex<()>,
    /// Signalled when a cell being parked is parked.
    settled: Condvar,
    events: broadcast::Sender<Event>,
    /// Becomes true as the daemon shuts down: event streams end.
    closing: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
    /// The secret migration peers prove they hold, once set.
    migration_secret: std::sync::OnceLock<Vec<u8>>,
    /// The port this daemon takes migrations on, if it does: cells it sends say where
    /// they came from with it.
    migration_port: std::sync::OnceLock<u16>,
}

impl Registry {
    /// The registry kept under `state_dir`: its database, compile cache and logs.
    /// Cells the records show as running were lost with the daemon that ran them: they
    /// are marked `lost`, their logs kept. With `park_after`, a cell that waits that
    /// long for input is parked; with `checkpoint_every`, cells whose policy is
    /// `checkpoint` are checkpointed that often. Call it inside the tokio runtime that
    /// is to read the cells' output.
    pub fn open(
        state_dir: &Path,
        allowed_dirs: &[PathBuf],
        log_cap: u64,
        park_after: Option<Duration>,
        checkpoint_every: Option<Duration>,
    ) -> Result<Arc<Self>, DaemonError> {
        let allowed_dirs = allowed_dirs
            .iter()
            .map(|dir| {
                dir.canonicalize()
                    .map_err(|e| internal(format!("cannot grant cells `{}`: {e}", dir.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        std::fs::create_dir_all(state_dir.join("cells")).map_err(|e| {
            internal(format!(
                "cannot make the state directory `{}`: {e}",
                state_dir.display()
            ))
        })?;
        let store = Store::open(&state_dir.join("hypercell.redb"), DEFAULT_EVENTS_KEPT)?;
        let compiler = Compiler::with_cache_dir(Some(state_dir.join("cache"))).map_err(internal)?;
        let next_event = store.last_event()? + 1;
        let cells: BTreeMap<String, CellRecord> = store
            .cells()?
            .into_iter()
            .map(|mut record| {
                record.parked_ms = None;
                (record.id.clone(), record)
            })
            .collect();
        let registry = Arc::new(Self {
            state_dir: state_dir.to_path_buf(),
            snapshots: Loaded::default(),
            modules: Loaded::default(),
            allowed_dirs,
            store,
            compiler,
            log_cap,
            inner: Mutex::new(Inner {
                names: cells
                    .values()
                    .map(|record| (record.name.clone(), record.id.clone()))
                    .collect(),
                cells,
                live: HashMap::new(),
                parked: HashMap::new(),
                logs: HashMap::new(),
                arriving: HashMap::new(),
                channel_ends: HashMap::new(),
                starting: HashSet::new(),
                next_event,
            }),
            max_live: max_live_partitions(),
            making_template: Mutex::new(()),
            saving: Mutex::new(()),
            settled: Condvar::new(),
            events: broadcast::channel(1024).0,
            closing: watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
            migration_secret: std::sync::OnceLock::new(),
            migration_port: std::sync::OnceLock::new(),
        });
        let lost: Vec<String> = registry
            .lock()
            .cells
            .values()
            .filter(|record| record.state.is_live() && !registry.restorable(record))
            .map(|record| record.id.clone())
            .collect();
        for id in lost {
            registry.change(&id, "lose", |record| {
                record.state = CellState::Lost;
                record.error = Some("the daemon that ran it went away".into());
            })?;
        }
        registry.rejoin_unstarted()?;
        if let Some(after) = park_after {
            park::watch_idle(&registry, after).map_err(internal)?;
        }
        if let Some(every) = checkpoint_every {
            checkpoint::watch_policies(&registry, every).map_err(internal)?;
        }
        Ok(registry)
    }

    /// Sets the secret that migration peers must prove they hold, to send cells to other
    /// daemons and take theirs (see [`crate::migration`]).
    pub fn set_migration_secret(&self, secret: Vec<u8>) {
        let _ = self.migration_secret.set(secret);
    }

    /// Records the port of this daemon's migration listener.
    pub fn set_migration_port(&self, port: u16) {
        let _ = self.migration_port.set(port);
    }

    /// Refuses a new live partition when the daemon holds as many as its limit of open
    /// files allows, rather than let the cell fail for want of a descriptor.
    fn check_room(&self, inner: &Inner) -> Result<(), DaemonError> {
        let live = inner.live.len();
        if live < self.max_live {
            return Ok(());
        }
        Err(DaemonError::Busy(format!(
            "the daemon holds {live} cells with live partitions, as many as its limit of open files allows; try again once idle cells are parked or cells end"
        )))
    }

    /// Whether a cell the records show as live is to be restored from its checkpoint.
    fn restorable(&self, record: &CellRecord) -> bool {
        record.spec.restart == RestartPolicy::Checkpoint
            && self.last_checkpoint(&record.id).is_some()
    }

    /// Restores, from their last checkpoints, the cells that were running when the last
    /// daemon went away and whose policy asks for it; a cell that cannot be restored is
    /// marked `lost` with the reason. Compiles: call it where blocking is allowed.
    pub fn restore_checkpointed(self: &Arc<Self>) -> Result<(), DaemonError> {
        let waiting: Vec<CellRecord> = self
            .lock()
            .cells
            .values()
            .filter(|record| record.state.is_live())
            .cloned()
            .collect();
        for record in waiting {
            let restored = self
                .last_checkpoint(&record.id)
                .ok_or_else(|| "its checkpoint is gone".to_string())
                .and_then(|(checkpoint, marks)| {
                    self.rewind_logs(&record.id, marks)?;
                    let restore = Restore {
                        path: &checkpoint,
                        paused: false,
                        record_later: false,
                        loaded: None,
                    };
                    self.launch(&record, Some(restore), &[], "restore")
                });
            match restored {
                Ok(record) => record,
                Err(reason) => self.change(&record.id, "lose", |record| {
                    record.state = CellState::Lost;
                    record.error = Some(format!(
                        "it could not be restored from its checkpoint: {reason}"
                    ));
                })?,
            };
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every cell's record, oldest first.
    pub fn list(&self) -> Vec<CellRecord> {
        let mut cells: Vec<CellRecord> = self.lock().cells.values().cloned().collect();
        cells.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        cells
    }

    /// The record of the cell `reference` names (id, unique id prefix or name).
    pub fn inspect(&self, reference: &str) -> Result<CellRecord, DaemonError> {
        let inner = self.lock();
        let id = resolve(&inner, reference)?;
        Ok(inner.cells[&id].clone())
    }

    /// Receives every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sees the daemon begin to shut down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends the event streams, as the daemon shuts down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The events after `after`, from the records.
    pub fn events_after(&self, after: u64) -> Result<Vec<Event>, DaemonError> {
        Ok(self.store.events_after(after)?)
    }

    /// Creates a cell from `spec`, not started.
    pub fn create(&self, spec: CellSpec) -> Result<CellRecord, DaemonError> {
        let id = self.add(spec, false)?;
        self.change(&id, "create", |_| {})
    }

    /// Creates a cell from `spec` and starts it, recording both in one transaction, as
    /// `docker run` does. Compiles its module first: call it where blocking is allowed.
    pub fn run(self: &Arc<Self>, spec: CellSpec) -> Result<CellRecord, DaemonError> {
        self.check_room(&self.lock())?;
        let id = self.add(spec, true)?;
        let record = self.lock().cells[&id].clone();
        let started = self.start_or_fail(&record, &[("create", CellState::Created)]);
        self.lock().starting.remove(&id);
        started
    }

    /// Starts `record`'s cell, recording the events of `earlier` first; a cell that
    /// cannot start is recorded as failed, with the reason.
    fn start_or_fail(
        self: &Arc<Self>,
        record: &CellRecord,
        earlier: &[(&str, CellState)],
    ) -> Result<CellRecord, DaemonError> {
        self.launch(record, None, earlier, "start")
            .or_else(|reason| {
                self.change_after(&record.id, earlier, "fail", |record| {
                    record.state = CellState::Failed;
                    record.error = Some(reason.clone());
                    record.finished_ms = Some(now_ms());
                })?;
                Err(DaemonError::Start {
                    name: record.name.clone(),
                    reason,
                })
            })
    }

    /// Checks `spec` and adds a cell for it, not yet recorded, as being started when
    /// `starting`; its id.
    fn add(&self, mut spec: CellSpec, starting: bool) -> Result<String, DaemonError> {
        if let Some(path) = self.template_path(&spec.module) {
            spec.module = path;
        }
        check_spec(&spec)?;
        check_components_of(self, &spec)?;
        self.check_dirs(&spec.dirs)?;
        let id = new_id();
        let name = match &spec.name {
            Some(name) => name.clone(),
            None => format!(
                "{}-{}",
                Path::new(&spec.module)
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| valid_name(s))
                    .unwrap_or("cell"),
                &id[..6]
            ),
        };
        let record = CellRecord::created(id.clone(), name.clone(), spec, now_ms());
        let mut inner = self.lock();
        if inner.names.contains_key(&name) || inner.arriving.values().any(|n| *n == name) {
            return Err(DaemonError::NameTaken(name));
        }
        inner.names.insert(name, id.clone());
        inner.cells.insert(id.clone(), record);
        if starting {
            inner.starting.insert(id.clone());
        }
        Ok(id)
    }

    /// The snapshot file (template or checkpoint) at `path`, loaded once while it is
    /// unchanged; why not, in one sentence.
    fn load_snapshot(&self, path: &Path) -> Result<Arc<LoadedSnapshot>, String> {
        self.snapshots
            .get_or_load(path, || {
                SnapshotFile::read_from(path).map(|file| LoadedSnapshot {
                    shared: Arc::new(file.snapshot.clone()),
                    file,
                })
            })
            .map_err(|e| e.to_string())
    }

    /// Refuses directories outside the daemon's `--allow-dir` roots.
    fn check_dirs(&self, dirs: &[crate::record::DirSpec]) -> Result<(), DaemonError> {
        for dir in dirs {
            let inside = Path::new(&dir.host)
                .canonicalize()
                .is_ok_and(|dir| self.allowed_dirs.iter().any(|root| dir.starts_with(root)));
            if !inside {
                return Err(DaemonError::BadRequest {
                    field: "dirs",
                    message: format!(
                        "`{}` is not inside a directory this daemon may grant to cells",
                        dir.host
                    ),
                });
            }
        }
        Ok(())
    }

    /// Starts the cell `reference` names (again, if it ran before). Compiles its module
    /// first: call it where blocking is allowed.
    pub fn start(self: &Arc<Self>, reference: &str) -> Result<CellRecord, DaemonError> {
        let record = {
            let mut inner = self.lock();
            let id = resolve(&inner, reference)?;
            let record = inner.cells[&id].clone();
            if record.state.is_live()
                || inner.live.contains_key(&id)
                || inner.starting.contains(&id)
            {
                return Err(wrong_state(&record, "start", "not running"));
            }
            if let Some(to) = &record.migrated_to
                && record.state == CellState::Migrated
            {
                return Err(DaemonError::Conflict(format!(
                    "cell `{}` moved to {to}, where it goes on; it starts only there",
                    record.name
                )));
            }
            self.check_room(&inner)?;
            inner.starting.insert(id);
            record
        };
        let started = self.start_or_fail(&record, &[]);
        self.lock().starting.remove(&record.id);
        started
    }

    /// Makes and starts the partition of `record`'s cell, from the checkpoint
    /// `checkpoint` if given, and records it running with an event of `action` (after
    /// those of `earlier`); the reason in one sentence when it cannot.
    fn launch(
        self: &Arc<Self>,
        record: &CellRecord,
        checkpoint: Option<Restore<'_>>,
        earlier: &[(&str, CellState)],
        action: &str,
    ) -> Result<CellRecord, String> {
        let held = checkpoint.as_ref().is_some_and(|restore| restore.paused);
        let durable = !checkpoint
            .as_ref()
            .is_some_and(|restore| restore.record_later);
        let started = match held {
            true => CellState::Paused,
            false => CellState::Running,
        };
        let loaded = checkpoint
            .as_ref()
            .and_then(|restore| restore.loaded.clone());
        let checkpoint = checkpoint.map(|restore| restore.path);
        let spec = &record.spec;
        let module_path = checkpoint.unwrap_or(Path::new(&spec.module));
        let config = cell_config(spec);
        let template = if loaded.is_some() || SnapshotFile::is_snapshot(module_path) {
            let file = match loaded {
                Some(loaded) => loaded,
                None => self.load_snapshot(module_path)?,
            };
            let identity_given = checkpoint.is_none()
                && (!spec.args.is_empty() || !spec.env.is_empty() || !spec.dirs.is_empty());
            let config = match file.file.snapshot.template {
                // A checkpoint goes on with the identity it had.
                None if identity_given => {
                    return Err(format!(
                        "`{}` is a checkpoint, which goes on with its own arguments, environment and directories; give none",
                        spec.module
                    ));
                }
                None => file.file.config(config.timeout),
                Some(_) => file
                    .file
                    .template_config(module_path, config.clone(), identity_given)
                    .map_err(|e| e.to_string())?,
            };
            Some((file, config))
        } else {
            None
        };
        let source = template
            .as_ref()
            .map_or(module_path, |(file, _)| file.file.module.as_path());
        let module = self
            .modules
            .get_or_load(source, || self.compiler.compile_file(source))
            .map_err(|e| e.to_string())?;
        let cpu_features = self.compiler.cpu_features();
        if let Some((file, _)) = &template {
            file.file
                .check_host(module_path, cpu_features, self.compiler.fingerprint())
                .map_err(|e| e.to_string())?;
        }

        let dir = self.state_dir.join("cells").join(&record.id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make its log directory: {e}"))?;
        let open_log = |stream| {
            StreamLog::open(&dir, stream, self.log_cap)
                .map(Arc::new)
                .map_err(|e| format!("cannot open its log: {e}"))
        };
        let logs = Arc::new(CellLogs {
            stdout: open_log(Stream::Stdout)?,
            stderr: open_log(Stream::Stderr)?,
        });
        let plumbing = self.plumb(&logs, spec.stdin)?;
        let stdio = plumbing.stdio;
        let compiled = Arc::clone(&module);
        let source = source.to_path_buf();
        let channels = self.take_channel_ends(record)?;
        if template.is_some() && (channels.stdin.is_some() || channels.stdout.is_some()) {
            self.return_channel_ends(&record.id, channels);
            return Err("it is joined to another cell by a channel, and joined cells boot from a module, not a snapshot".into());
        }
        let (cell, config, base) = match template {
            Some((file, config)) if file.file.snapshot.template.is_none() => (
                Cell::restore(
                    config.clone(),
                    module,
                    cpu_features,
                    stdio,
                    file.file.snapshot.clone(),
                    held,
                ),
                config,
                Some(Arc::clone(&file.shared)),
            ),
            Some((file, config)) => (
                Cell::from_template(
                    config.clone(),
                    module,
                    cpu_features,
                    stdio,
                    Arc::clone(&file.shared),
                ),
                config,
                Some(Arc::clone(&file.shared)),
            ),
            None => (
                Cell::start_joined(config.clone(), module, cpu_features, stdio, channels),
                config,
                None,
            ),
        };
        let log_start = logs.written();
        let mut inner = self.lock();
        inner.live.insert(
            record.id.clone(),
            Live {
                control: cell.control().clone(),
                config,
                compiled,
                module: source,
                base,
                earlier: CellUsage::default(),
                stdin: plumbing.stdin,
                captures: plumbing.captures,
                log_start,
                parking: plumbing.parking,
                parked: None,
                state: watch::channel(started).0,
                killed: false,
                checkpointed: false,
                migrated: None,
                migrating: false,
            },
        );
        inner.logs.insert(record.id.clone(), logs);
        drop(inner);
        // Recorded running before anything waits on its end, so that the end, however
        // soon, is recorded after.
        let running = self
            .record_change(
                &record.id,
                earlier,
                action,
                |record| {
                    record.state = started;
                    record.started_ms = Some(now_ms());
                    record.finished_ms = None;
                    record.exit_code = None;
                    record.error = None;
                    record.usage = None;
                },
                durable,
            )
            .map_err(|e| e.to_string());
        self.watch_end(&record.id, cell)?;
        running
    }

    /// Stdio for a cell whose output goes to `logs`: a pipe the API writes to as its
    /// stdin (else `/dev/null`), and pipes copied into the logs as its stdout and stderr.
    fn plumb(&self, logs: &CellLogs, stdin: bool) -> Result<Plumbing, String> {
        let (stdin, stdin_writer) = if stdin {
            let (read, write) = pipe().map_err(|e| format!("cannot make its stdin: {e}"))?;
            (read, Some(Arc::new(File::from(write))))
        } else {
            let null =
                File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
            (OwnedFd::from(null), None)
        };
        let (stdout_read, stdout) = pipe().map_err(|e| format!("cannot make its stdout: {e}"))?;
        let (stderr_read, stderr) = pipe().map_err(|e| format!("cannot make its stderr: {e}"))?;
        let parking = Arc::new(AtomicBool::new(false));
        let captures = vec![
            self.runtime.spawn(capture(
                stdout_read,
                Arc::clone(&logs.stdout),
                Arc::clone(&parking),
            )),
            self.runtime.spawn(capture(
                stderr_read,
                Arc::clone(&logs.stderr),
                Arc::clone(&parking),
            )),
        ];
        Ok(Plumbing {
            stdio: OwnedStdio {
                stdin,
                stdout,
                stderr,
            },
            stdin: stdin_writer,
            captures,
            parking,
        })
    }

    /// Waits, on a thread of its own, for the end of `cell`, the cell `id`'s partition,
    /// and records it.
    fn watch_end(self: &Arc<Self>, id: &str, cell: Cell) -> Result<(), String> {
        let registry = Arc::clone(self);
        let id = id.to_string();
        std::thread::Builder::new()
            .name("hypercell-wait".into())
            .spawn(move || {
                let result = cell.wait();
                registry.finish(&id, result);
            })
            .map(drop)
            .map_err(|e| format!("cannot start a thread to wait on it: {e}"))
    }

    /// Records how the cell `id` ended.
    fn finish(&self, id: &str, result: Result<CellReport, CellFailure>) {
        if self.finish_parking(id) {
            return;
        }
        let (killed, checkpointed, migrated, mut usage) =
            self.lock()
                .live
                .get(id)
                .map_or((false, false, None, CellUsage::default()), |live| {
                    (
                        live.killed,
                        live.checkpointed,
                        live.migrated.clone(),
                        live.usage(),
                    )
                });
        let stats = match &result {
            Ok(report) => Some(&report.stats),
            Err(failure) => failure.stats.as_deref(),
        };
        usage.memory_touched = stats.map(|stats| stats.memory_touched);
        let outcome = self.change(id, "exit", |record| {
            // A cell checkpointed as it left keeps its departure, not its checkpoint.
            if checkpointed && migrated.is_none() {
                return;
            }
            record.usage = Some(usage);
            record.finished_ms = Some(now_ms());
            if let Some(departure) = &migrated {
                record.state = CellState::Migrated;
                record.migrated_to = Some(departure.to.clone());
                record.migration = None;
                return;
            }
            match &result {
                Ok(report) => match &report.exit {
                    CellExit::Exited(code) => {
                        record.state = CellState::Exited;
                        record.exit_code = Some(*code);
                    }
                    CellExit::Trapped(report) => {
                        record.state = CellState::Failed;
                        record.error = Some(format!("the program trapped: {}", trap_cause(report)));
                    }
                    CellExit::Template => {
                        record.state = CellState::Failed;
                        record.error = Some("the cell stopped as a template".into());
                    }
                },
                Err(failure) if killed || matches!(failure.error, CellError::Stopped(_)) => {
                    record.state = CellState::Killed;
                }
                Err(failure) => {
                    record.state = CellState::Failed;
                    record.error = Some(failure.error.to_string());
                }
            }
        });
        if let Err(error) = outcome {
            tracing::error!("cannot record the end of cell {id}: {error}");
        }
        let mut inner = self.lock();
        let state = inner.cells.get(id).map_or(CellState::Lost, |r| r.state);
        let live = inner.live.remove(id);
        drop(inner);
        if let Some(live) = live {
            // A cell that came from another daemon ran from the snapshot it came as,
            // which nothing needs once it ended.
            let arrived = self.cell_dir(id).join(arrive::ARRIVED);
            self.snapshots.forget(&arrived);
            let _ = std::fs::remove_file(&arrived);
            let _ = std::fs::remove_file(self.cell_dir(id).join(arrive::ARRIVED_MEMORY));
            let _ = live.state.send(state);
        }
    }

    /// Changes the record of cell `id` with `change`, saves it with an event of
    /// `action`, and tells the subscribers.
    fn change(
        &self,
        id: &str,
        action: &str,
        change: impl FnOnce(&mut CellRecord),
    ) -> Result<CellRecord, DaemonError> {
        self.change_after(id, &[], action, change)
    }

    /// [`Self::change`], recording first the events of `earlier` (an action and the
    /// state it left), all in one transaction.
    fn change_after(
        &self,
        id: &str,
        earlier: &[(&str, CellState)],
        action: &str,
        change: impl FnOnce(&mut CellRecord),
    ) -> Result<CellRecord, DaemonError> {
        self.record_change(id, earlier, action, change, true)
    }

    /// [`Self::change`] for progress worth nothing after a crash (see
    /// [`Store::save_unsynced`]): told at once, on disk with the next change.
    fn note_progress(
        &self,
        id: &str,
        action: &str,
        change: impl FnOnce(&mut CellRecord),
    ) -> Result<CellRecord, DaemonError> {
        self.record_change(id, &[], action, change, false)
    }

    fn record_change(
        &self,
        id: &str,
        earlier: &[(&str, CellState)],
        action: &str,
        change: impl FnOnce(&mut CellRecord),
        durable: bool,
    ) -> Result<CellRecord, DaemonError> {
        // Saves keep the order of the changes; the registry's lock is not held while
        // waiting for another save, so that waking or starting cells does not wait on
        // another's fsync.
        let saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        let first = inner.next_event;
        let record = inner
            .cells
            .get_mut(id)
            .ok_or_else(|| DaemonError::NotFound(id.to_string()))?;
        change(record);
        let record = record.clone();
        let action = match (action, record.state) {
            ("exit", CellState::Failed) => "fail",
            ("exit", CellState::Killed) => "kill",
            ("exit", state) if state.is_live() => "checkpoint",
            _ => action,
        };
        let events: Vec<Event> = earlier
            .iter()
            .copied()
            .chain([(action, record.state)])
            .zip(first..)
            .map(|((action, state), seq)| Event {
                seq,
                time_ms: now_ms(),
                cell: record.id.clone(),
                name: record.name.clone(),
                action: action.into(),
                state,
                migration: (action == "migrate")
                    .then(|| record.migration.clone())
                    .flatten(),
            })
            .collect();
        inner.next_event += events.len() as u64;
        drop(inner);
        match durable {
            true => self.store.save(&record, &events)?,
            false => self.store.save_unsynced(&record, &events)?,
        }
        for event in events {
            let _ = self.events.send(event);
        }
        drop(saving);
        Ok(record)
    }

    /// The state of the cell `reference` names and what its run has done: so far, for a
    /// live cell (its memory touched measured now); in all, for one whose run ended.
    /// Blocks while a live cell's memory is measured.
    pub fn stats(&self, reference: &str) -> Result<CellStatsView, DaemonError> {
        let (view, live) = {
            let inner = self.lock();
            let id = resolve(&inner, reference)?;
            let record = &inner.cells[&id];
            let live = inner.live.get(&id);
            let parked = inner.parked.get(&id);
            let usage = match (live, parked, &record.usage) {
                (Some(live), _, _) => live.usage(),
                (None, Some(parked), _) => parked.earlier.clone(),
                (None, None, Some(usage)) => usage.clone(),
                (None, None, None) => CellUsage::default(),
            };
            let uptime_ms = record.started_ms.map(|started| {
                record
                    .finished_ms
                    .filter(|_| live.is_none() && parked.is_none())
                    .unwrap_or_else(now_ms)
                    .saturating_sub(started)
            });
            let view = CellStatsView {
                id: record.id.clone(),
                name: record.name.clone(),
                state: record.state,
                uptime_ms,
                parked_bytes: parked.map(Parked::bytes),
                usage,
            };
            (view, live.map(|live| live.control.clone()))
        };
        // Measured by the cell's supervisor, without the registry's lock.
        let mut view = view;
        if let Some(control) = live {
            view.usage.memory_touched = control.memory_touched();
        }
        Ok(view)
    }

    /// [`Registry::stats`] of every cell that is live or parked, oldest first: what a
    /// console shows of them all in one request.
    pub fn live_stats(&self) -> Vec<CellStatsView> {
        let ids: Vec<String> = {
            let inner = self.lock();
            let mut ids: Vec<(u64, String)> = inner
                .live
                .keys()
                .chain(inner.parked.keys())
                .filter_map(|id| Some((inner.cells.get(id)?.created_ms, id.clone())))
                .collect();
            ids.sort();
            ids.into_iter().map(|(_, id)| id).collect()
        };
        // A cell that ended or went since is left out.
        ids.iter().filter_map(|id| self.stats(id).ok()).collect()
    }

    /// Keeps `bytes`, a module uploaded through the API, under the state directory by
    /// its sha256, and returns its path there, which cell specs can name as their
    /// module.
    pub fn store_module(&self, bytes: &[u8]) -> Result<(PathBuf, String), DaemonError> {
        use sha2::Digest;
        let digest = hex(&sha2::Sha256::digest(bytes));
        let dir = self.state_dir.join("modules");
        let path = dir.join(format!("{digest}.wasm"));
        // Kept already, whole (a file is only ever renamed into place complete).
        if std::fs::metadata(&path).is_ok_and(|kept| kept.len() == bytes.len() as u64) {
            return Ok((path, digest));
        }
        let failed = |e: std::io::Error| {
            DaemonError::Internal(format!(
                "cannot keep the module in `{}`: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(&dir).map_err(failed)?;
        // A file of its own per upload, removed if it is not kept: uploads of the same
        // module at once each write whole, and the last rename wins with the same bytes.
        let mut partial = tempfile::NamedTempFile::new_in(&dir).map_err(failed)?;
        std::io::Write::write_all(&mut partial, bytes).map_err(failed)?;
        partial.as_file().sync_all().map_err(failed)?;
        partial.persist(&path).map_err(|e| failed(e.error))?;
        Ok((path, digest))
    }

    /// Pauses the running cell `reference` names.
    pub fn pause(self: &Arc<Self>, reference: &str) -> Result<CellRecord, DaemonError> {
        let (id, control) = self.live_control(reference, "pause", CellState::Running)?;
        if !control.pause() {
            let record = self.inspect(&id)?;
            return Err(wrong_state(&record, "pause", "running"));
        }
        self.change(&id, "pause", |record| record.state = CellState::Paused)
    }

    /// Lets the paused cell `reference` names go on.
    pub fn resume(self: &Arc<Self>, reference: &str) -> Result<CellRecord, DaemonError> {
        let (id, control) = self.live_control(reference, "resume", CellState::Paused)?;
        control.resume();
        self.change(&id, "resume", |record| record.state = CellState::Running)
    }

    fn live_control(
        self: &Arc<Self>,
        reference: &str,
        action: &'static str,
        needed: CellState,
    ) -> Result<(String, CellControl), DaemonError> {
        let inner = self.awake(reference)?;
        let id = resolve(&inner, reference)?;
        let record = &inner.cells[&id];
        match inner.live.get(&id) {
            Some(live) if live.migrating => Err(moving(record, action)),
            Some(live) if record.state == needed => Ok((id, live.control.clone())),
            _ => Err(wrong_state(record, action, needed.as_str())),
        }
    }

    /// Writes a snapshot of the live cell `reference` names to `path` (absolute): a
    /// checkpoint that a cell created from it goes on from. A running cell is paused
    /// for the snapshot and goes on after it; a paused one stays paused. Blocks while
    /// the file is written.
    pub fn snapshot(
        self: &Arc<Self>,
        reference: &str,
        path: &Path,
    ) -> Result<CellRecord, DaemonError> {
        if !path.is_absolute() {
            return Err(DaemonError::BadRequest {
                field: "path",
                message: format!("`{}` is not an absolute path", path.display()),
            });
        }
        let id = resolve(&*self.awake(reference)?, reference)?;
        self.write_checkpoint(&id, path, true)?;
        self.change(&id, "snapshot", |_| {})
    }

    /// Writes a checkpoint of the live cell `id` to `path`. With `go_on`, a running
    /// cell goes on afterwards; without, it stays paused, so that nothing it does
    /// after the checkpoint is seen (its output would be written twice once a cell
    /// goes on from the checkpoint).
    ///
    /// Returns where the cell's logs stood at the snapshot.
    fn write_checkpoint(
        &self,
        id: &str,
        path: &Path,
        go_on: bool,
    ) -> Result<checkpoint::LogMarks, DaemonError> {
        let (file, marks) = self.take_checkpoint(id, go_on, false, false)?;
        file.write_to(path).map_err(|e| DaemonError::BadRequest {
            field: "path",
            message: e.to_string(),
        })?;
        Ok(marks)
    }

    /// A checkpoint of the live cell `id` (see [`Self::write_checkpoint`] for `go_on`),
    /// and where its logs stood at the snapshot. Only the migration moving a cell (the
    /// `mover`) takes one of it meanwhile.
    fn take_checkpoint(
        &self,
        id: &str,
        go_on: bool,
        mover: bool,
        dirty: bool,
    ) -> Result<(SnapshotFile, checkpoint::LogMarks), DaemonError> {
        let (control, config, module, paused, log_start) = {
            let inner = self.lock();
            let record = inner
                .cells
                .get(id)
                .ok_or_else(|| DaemonError::NotFound(id.to_string()))?;
            let Some(live) = inner.live.get(id) else {
                return Err(wrong_state(record, "snapshot", "running or paused"));
            };
            if live.migrating && !mover {
                return Err(moving(record, "snapshot"));
            }
            (
                live.control.clone(),
                live.config.clone(),
                live.module.clone(),
                record.state == CellState::Paused,
                live.log_start,
            )
        };
        // A migration's pre-copy sent the rest of its memory already.
        let taken = match dirty {
            true => control.snapshot_dirty(),
            false => control.snapshot(),
        };
        // Read while the cell is paused: what it delivered before the snapshot.
        let delivered = control.delivered();
        let marks =
            checkpoint::LogMarks::new([log_start[0] + delivered[0], log_start[1] + delivered[1]]);
        if go_on && !paused {
            control.resume();
        }
        let snapshot = taken.map_err(|e| {
            let name = self
                .lock()
                .cells
                .get(id)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            DaemonError::Conflict(format!("cell `{name}` cannot be snapshotted now: {e}"))
        })?;
        let file = SnapshotFile::new(
            &module,
            self.compiler.cpu_features(),
            self.compiler.fingerprint(),
            &config,
            snapshot,
        );
        Ok((file, marks))
    }

    /// Asks the live cell `reference` names to end: with `kill`, at once; without,
    /// its stdin is closed, for a program that ends at the end of its input. Returns
    /// the cell's id and a receiver that sees its end, or `None` if it is not live.
    pub fn ask_to_end(
        self: &Arc<Self>,
        reference: &str,
        kill: bool,
    ) -> Result<(String, Option<watch::Receiver<CellState>>), DaemonError> {
        let mut inner = self.settle(reference)?;
        let id = resolve(&inner, reference)?;
        if kill && let Some(parked) = inner.parked.remove(&id) {
            drop(inner);
            return self.end_parked(&id, parked).map(|end| (id, Some(end)));
        }
        if inner.parked.contains_key(&id) {
            drop(inner);
            inner = self.awake(&id)?;
        }
        let Some(live) = inner.live.get_mut(&id) else {
            return Ok((id, None));
        };
        if kill {
            live.killed = true;
            live.control.stop(StopReason::Signal(libc::SIGKILL));
        } else if live.migrating {
            return Err(moving(&inner.cells[&id], "stop"));
        } else {
            live.stdin = None;
            // A paused cell cannot read the end of its input.
            live.control.resume();
        }
        Ok((id, Some(live.state.subscribe())))
    }

    /// Writes `bytes` to the stdin of the cell `reference` names; with `close`, closes
    /// it afterwards. Blocks while the cell's pipe is full.
    pub fn write_stdin(
        self: &Arc<Self>,
        reference: &str,
        bytes: &[u8],
        close: bool,
    ) -> Result<(), DaemonError> {
        let (id, stdin) = {
            let inner = self.awake(reference)?;
            let id = resolve(&inner, reference)?;
            let record = inner.cells[&id].clone();
            if inner.live.get(&id).is_some_and(|live| live.migrating) {
                return Err(moving(&record, "writing stdin"));
            }
            let open = inner
                .live
                .get(&id)
                .and_then(|live| live.stdin.as_ref())
                .map(Arc::clone);
            match open {
                Some(stdin) => (id, stdin),
                None if !record.spec.stdin => {
                    return Err(DaemonError::BadRequest {
                        field: "stdin",
                        message: format!(
                            "cell `{}` was created without stdin; create it with `\"stdin\": true`",
                            record.name
                        ),
                    });
                }
                None => {
                    return Err(wrong_state(
                        &record,
                        "writing stdin",
                        "running with stdin open",
                    ));
                }
            }
        };
        if let Err(error) = (&*stdin).write_all(bytes) {
            return Err(DaemonError::BadRequest {
                field: "stdin",
                message: format!("the cell no longer reads its stdin: {error}"),
            });
        }
        if close && let Some(live) = self.lock().live.get_mut(&id) {
            live.stdin = None;
        }
        Ok(())
    }

    /// The logs of the cell `reference` names: its id and its streams (opened from
    /// its files for a cell this daemon has not run).
    pub fn logs(&self, reference: &str) -> Result<(String, Arc<CellLogs>), DaemonError> {
        let mut inner = self.lock();
        let id = resolve(&inner, reference)?;
        if let Some(logs) = inner.logs.get(&id) {
            return Ok((id, Arc::clone(logs)));
        }
        let dir = self.state_dir.join("cells").join(&id);
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let open = |stream| {
            let log = StreamLog::open(&dir, stream, self.log_cap).map_err(internal)?;
            log.close();
            Ok::<_, DaemonError>(Arc::new(log))
        };
        let logs = Arc::new(CellLogs {
            stdout: open(Stream::Stdout)?,
            stderr: open(Stream::Stderr)?,
        });
        inner.logs.insert(id.clone(), Arc::clone(&logs));
        Ok((id, logs))
    }

    /// Removes the cell `reference` names, which must not be live, with its logs.
    pub fn remove(&self, reference: &str) -> Result<CellRecord, DaemonError> {
        let saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        let id = resolve(&inner, reference)?;
        let record = inner.cells[&id].clone();
        if inner.live.contains_key(&id) || inner.parked.contains_key(&id) {
            return Err(wrong_state(
                &record,
                "removing",
                "not running (stop it, or remove it with force)",
            ));
        }
        let event = Event {
            seq: inner.next_event,
            time_ms: now_ms(),
            cell: record.id.clone(),
            name: record.name.clone(),
            action: "remove".into(),
            state: record.state,
            migration: None,
        };
        self.store.remove(&record, &event)?;
        inner.next_event += 1;
        inner.cells.remove(&id);
        inner.names.remove(&record.name);
        inner.logs.remove(&id);
        // Its channel ends close: a joined cell that runs reads the end or gets EPIPE.
        inner.channel_ends.remove(&id);
        drop(inner);
        let _ = self.events.send(event);
        drop(saving);
        let _ = std::fs::remove_dir_all(self.state_dir.join("cells").join(&id));
        Ok(record)
    }

    /// Ends every live cell as the daemon shuts down: cells whose policy asks for it
    /// are checkpointed (their records stay live, for the next daemon to restore them),
    /// the rest killed; waits up to `grace` for their ends to be recorded.
    pub async fn shut_down(self: &Arc<Self>, grace: Duration) {
        let registry = Arc::clone(self);
        match tokio::task::spawn_blocking(move || registry.end_parked_at_shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("cannot record the end of parked cells: {error}"),
            Err(error) => tracing::warn!("cannot record the end of parked cells: {error}"),
        }
        let ids: Vec<String> = {
            let inner = self.lock();
            inner
                .live
                .keys()
                .chain(inner.parked.keys())
                .cloned()
                .collect()
        };
        let mut waiting = Vec::new();
        for id in ids {
            let wants_checkpoint = self
                .lock()
                .cells
                .get(&id)
                .is_some_and(|record| record.spec.restart == RestartPolicy::Checkpoint);
            if wants_checkpoint {
                let registry = Arc::clone(self);
                let cell = id.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    drop(registry.awake(&cell)?);
                    registry.checkpoint(&cell, false)
                })
                .await;
                match saved {
                    Ok(Ok(())) => {
                        if let Some(live) = self.lock().live.get_mut(&id) {
                            live.checkpointed = true;
                        }
                    }
                    Ok(Err(error)) => tracing::warn!("cannot checkpoint cell {id}: {error}"),
                    Err(error) => tracing::warn!("cannot checkpoint cell {id}: {error}"),
                }
            }
            let registry = Arc::clone(self);
            let asked = tokio::task::spawn_blocking(move || registry.ask_to_end(&id, true)).await;
            if let Ok(Ok((_, Some(end)))) = asked {
                waiting.push(end);
            }
        }
        let _ = tokio::time::timeout(grace, async {
            for end in &mut waiting {
                let _ = end.wait_for(|state| !state.is_live()).await;
            }
        })
        .await;
    }
}

/// The cause in a wasm trap report (its backtrace left to the logs): the last line
/// under "Caused by:", without wasmtime's "wasm trap: " prefix.
fn trap_cause(report: &str) -> &str {
    let cause = report
        .split("Caused by:")
        .nth(1)
        .and_then(|causes| causes.lines().map(str::trim).rfind(|line| !line.is_empty()))
        .or_else(|| report.lines().next())
        .unwrap_or("");
    let cause = cause.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':' || c == ' ');
    cause.strip_prefix("wasm trap: ").unwrap_or(cause)
}

/// A cell's activity as the API reports it.
fn usage_of(activity: &CellActivity) -> CellUsage {
    CellUsage {
        exits: activity.exits,
        hypercalls: activity
            .hypercalls
            .made()
            .map(|(call, count)| (format!("{call:?}").to_lowercase(), count))
            .collect(),
        cpu_time_ms: activity.cpu_time.map(|time| time.as_millis() as u64),
        memory_touched: None,
    }
}

/// The refusal of `action` on a cell a migration is moving.
fn moving(record: &CellRecord, action: &str) -> DaemonError {
    DaemonError::Conflict(format!(
        "cell `{}` is being moved to another daemon; {action} can wait until it has moved or stayed",
        record.name
    ))
}

fn wrong_state(record: &CellRecord, action: &'static str, needed: &'static str) -> DaemonError {
    DaemonError::WrongState {
        name: record.name.clone(),
        state: record.state.as_str(),
        action,
        needed,
    }
}

/// The id of the cell `reference` names: an id, a name, or a prefix of one id only.
fn resolve(inner: &Inner, reference: &str) -> Result<String, DaemonError> {
    if inner.cells.contains_key(reference) {
        return Ok(reference.to_string());
    }
    if let Some(id) = inner.names.get(reference) {
        return Ok(id.clone());
    }
    let mut matching = inner
        .cells
        .range(reference.to_string()..)
        .map(|(id, _)| id)
        .take_while(|id| !reference.is_empty() && id.starts_with(reference));
    match (matching.next(), matching.next()) {
        (Some(id), None) => Ok(id.clone()),
        _ => Err(DaemonError::NotFound(reference.to_string())),
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn check_spec(spec: &CellSpec) -> Result<(), DaemonError> {
    let bad = |field, message: String| Err(DaemonError::BadRequest { field, message });
    if let Some(name) = &spec.name
        && !valid_name(name)
    {
        return bad(
            "name",
            format!(
                "`{name}` is not a name: use up to 64 letters, digits, `_`, `.` and `-`, starting with a letter or digit"
            ),
        );
    }
    let module = Path::new(&spec.module);
    if !module.is_absolute() {
        return bad(
            "module",
            format!(
                "`{}` is neither an absolute path nor a template's name",
                spec.module
            ),
        );
    }
    if !module.is_file() {
        return bad(
            "module",
            format!("`{}` is not a file the daemon can read", spec.module),
        );
    }
    if let Some(entry) = spec
        .env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(n, _)| n.is_empty()))
    {
        return bad("env", format!("`{entry}` is not NAME=VALUE"));
    }
    for dir in &spec.dirs {
        let host = Path::new(&dir.host);
        if !host.is_absolute() || !host.is_dir() {
            return bad(
                "dirs",
                format!("`{}` is not an absolute path to a directory", dir.host),
            );
        }
    }
    if spec.memory == Some(0) {
        return bad("memory", "a cell needs some memory".into());
    }
    let components = spec_components(spec)?;
    if !spec.dirs.is_empty() && !components.contains(Components::FS) {
        return bad(
            "components",
            "directories are granted, but not the `fs` component that serves them".into(),
        );
    }
    Ok(())
}

/// The components `spec` names (all when it names none).
fn spec_components(spec: &CellSpec) -> Result<Components, DaemonError> {
    let Some(names) = &spec.components else {
        return Ok(Components::ALL);
    };
    names.iter().try_fold(Components::NONE, |all, name| {
        Components::named(name)
            .map(|component| all.union(component))
            .ok_or_else(|| DaemonError::BadRequest {
                field: "components",
                message: format!(
                    "`{name}` is not a component: choose from stdio, args, env, clocks, random, fs and channels"
                ),
            })
    })
}

/// With `components_strict`: refuses a module that imports a function of a component
/// the cell is not given. A template's cells have its components, which `spec` may
/// only repeat.
fn check_components_of(registry: &Registry, spec: &CellSpec) -> Result<(), DaemonError> {
    // Nothing asked of the components: a template's cells have the template's.
    if spec.components.is_none() && !spec.components_strict {
        return Ok(());
    }
    let bad = |message: String| DaemonError::BadRequest {
        field: "components",
        message,
    };
    let mut components = spec_components(spec)?;
    let mut module = PathBuf::from(&spec.module);
    if SnapshotFile::is_snapshot(&module) {
        let loaded =
            registry
                .load_snapshot(&module)
                .map_err(|message| DaemonError::BadRequest {
                    field: "module",
                    message,
                })?;
        let file = &loaded.file;
        let made_with = Components(file.components).known();
        if spec.components.is_some() && components != made_with {
            return Err(bad(format!(
                "`{}` was made with the components {}, which its cells keep",
                spec.module,
                component_names(made_with)
            )));
        }
        components = made_with;
        module = file.module.clone();
    }
    if !spec.components_strict {
        return Ok(());
    }
    let bytes = std::fs::read(&module)
        .map_err(|e| bad(format!("cannot read `{}`: {e}", module.display())))?;
    check_components(&module, &bytes, components).map_err(|e| bad(e.to_string()))
}

fn cell_config(spec: &CellSpec) -> CellConfig {
    let mut args = vec![spec.module.clone()];
    args.extend(spec.args.iter().cloned());
    CellConfig {
        // Checked when the cell was created.
        components: spec_components(spec).unwrap_or(Components::ALL),
        memory_limit: spec.memory.unwrap_or(DEFAULT_MEMORY_LIMIT),
        timeout: spec.timeout_ms.map(Duration::from_millis),
        output_limit: spec.max_output,
        args,
        env: spec
            .env
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        preopens: spec
            .dirs
            .iter()
            .map(|dir| Preopen {
                host: PathBuf::from(&dir.host),
                guest: dir.guest.clone().unwrap_or_else(|| dir.host.clone()),
                read_only: dir.read_only,
            })
            .collect(),
    }
}

/// Runs `work` on `registry` every `period`, on a thread named `name`, until the
/// registry closes or goes.
fn every(
    registry: &Arc<Registry>,
    name: &str,
    period: Duration,
    work: impl Fn(&Registry) + Send + 'static,
) -> std::io::Result<()> {
    let registry = Arc::downgrade(registry);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                if *registry.closing.borrow() {
                    return;
                }
                work(&registry);
            }
        })
        .map(drop)
}

/// Descriptors a live partition holds: its VM and vCPU, its three pipes' two ends and
/// its two log files (`benches/daemon.rs` counts them).
const DESCRIPTORS_PER_CELL: u64 = 10;

/// Descriptors kept for the daemon's own use: its database, sockets, clients and
/// compile cache.
const DESCRIPTORS_KEPT: u64 = 256;

/// How many live partitions this process's limit of open files leaves room for.
fn max_live_partitions() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let open_files = if known { limit.rlim_cur } else { 1024 };
    (open_files.saturating_sub(DESCRIPTORS_KEPT) / DESCRIPTORS_PER_CELL).max(1) as usize
}

/// 12 random hex digits.
fn new_id() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // The clock, if the kernel has no randomness to give: ids need only be unique.
        bytes.copy_from_slice(&now_ms().to_le_bytes()[..6]);
    }
    hex(&bytes)
}

/// `bytes` as lower-case hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
