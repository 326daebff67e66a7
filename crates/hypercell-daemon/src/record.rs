//! What the daemon keeps about a cell, and what the API says: the spec a client asked
//! for, the cell's record and state, and the events that change it. These are plain
//! serialisable types, apart from the live cells that hold threads and descriptors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a directory of a moving cell is found at its destination: the same storage
/// under another path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirMapping {
    /// A directory the cell was granted here (or one above it), absolute.
    pub from: String,
    /// The same directory at the destination, absolute.
    pub to: String,
}

impl DirMapping {
    /// `path` as the destination finds it: under `to` where it lies under `from`.
    pub fn apply(mappings: &[DirMapping], path: &Path) -> PathBuf {
        for mapping in mappings {
            if let Ok(rest) = path.strip_prefix(&mapping.from) {
                let to = Path::new(&mapping.to);
                return match rest.as_os_str().is_empty() {
                    true => to.to_path_buf(),
                    false => to.join(rest),
                };
            }
        }
        path.to_path_buf()
    }
}

/// A directory granted to a cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    /// The directory on the daemon's host (absolute).
    pub host: String,
    /// Its name inside the program; the host path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    /// Whether the program may only read it.
    #[serde(default)]
    pub read_only: bool,
}

/// What a client asks for when it creates a cell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// A name for the cell, unique in the daemon; one is made up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The module (`.wasm` or `.wat`) or template to run, a path on the daemon's host.
    pub module: String,
    /// Arguments after the program's name.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, as `NAME=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Directories granted to the program.
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    /// Most bytes the program's linear memory may grow to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Wall-clock limit in milliseconds, from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Most bytes the program may write to stdout and stderr together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<u64>,
    /// Whether the program's stdin is a pipe the API writes to; otherwise it is
    /// empty (`/dev/null`).
    #[serde(default)]
    pub stdin: bool,
    /// What becomes of the cell, while it runs, when the daemon goes away.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The host components the program is given, of `stdio`, `args`, `env`, `clocks`,
    /// `random` and `fs` (its `dirs`); a call into another answers `notcapable`. All
    /// when absent; a template's cells have the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// Refuse a module that imports a function of a component not given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub components_strict: bool,
    /// Labels, for the operator's own use.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What becomes of a running cell when its daemon goes away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicy {
    /// It is killed when the daemon shuts down, and `lost` after a crash.
    #[default]
    No,
    /// It is checkpointed when the daemon shuts down, and the next daemon restores it
    /// from its last checkpoint (after a crash too, if it has one).
    Checkpoint,
}

/// Where a cell is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Made, not started.
    Created,
    /// Running.
    Running,
    /// Paused: its vCPU computes nothing until resumed.
    Paused,
    /// Its program exited (see `exit_code`).
    Exited,
    /// It trapped, faulted, ran past a limit, or could not start (see `error`).
    Failed,
    /// It was killed, or stopped after its grace period.
    Killed,
    /// It was running when the daemon went away, and was not brought back.
    Lost,
    /// It moved to another daemon (see `migrated_to`), where it goes on.
    Migrated,
}

impl CellState {
    /// Whether the cell has a live partition (running or paused).
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// The state's name, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Killed => "killed",
            Self::Lost => "lost",
            Self::Migrated => "migrated",
        }
    }
}

/// Everything the daemon records of a cell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CellRecord {
    /// The cell's id: 12 hex digits.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// What it was created with.
    pub spec: CellSpec,
    /// Where it is in its life.
    pub state: CellState,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When it last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The program's exit status, once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What its last run did, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CellUsage>,
    /// While the cell is parked (it waited for input long enough that the daemon
    /// released its VM, until input or a request wakes it), since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_ms: Option<u64>,
    /// The migration address of the daemon it moved to, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_to: Option<String>,
    /// The address of the daemon it came from, if it moved here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_from: Option<String>,
    /// While a migration moves it: where to, and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
    /// The id of the cell whose stdout is this cell's stdin, joined by a channel
    /// (`hypercell connect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_from: Option<String>,
    /// The id of the cell whose stdin is this cell's stdout, joined by a channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_to: Option<String>,
    /// The named channels the cell is granted (`hypercell connect A:NAME B:NAME`),
    /// which its program opens as `/channels/NAME`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_channels: Vec<NamedChannelLink>,
}

impl CellRecord {
    /// Whether a channel joins the cell to another.
    pub fn joined(&self) -> bool {
        self.stdin_from.is_some() || self.stdout_to.is_some() || !self.named_channels.is_empty()
    }
}

/// A named channel a cell is granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamedChannelLink {
    /// Its name.
    pub name: String,
    /// The id of the cell at its other end.
    pub peer: String,
    /// Whether this cell writes it (else it reads it).
    pub writes: bool,
}

/// `POST /v1/channels`: join one cell's stdout to another's stdin, or grant two
/// cells a named channel, before either starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The cell that writes the channel (id, unique id prefix or name): its stdout,
    /// or the named channel.
    pub from: String,
    /// The cell that reads it: its stdin, or the named channel.
    pub to: String,
    /// The named channel's name, which both cells open as `/channels/NAME`; without
    /// it, the channel joins `from`'s stdout to `to`'s stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A channel between two cells, as `GET /v1/channels` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelView {
    /// The id of the cell that writes it.
    pub from: String,
    /// That cell's name.
    pub from_name: String,
    /// The id of the cell that reads it.
    pub to: String,
    /// That cell's name, if it is still recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_name: Option<String>,
    /// The named channel's name; none for a channel from stdout to stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How far a migration moving a cell has got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationProgress {
    /// The destination's migration address.
    pub to: String,
    /// The step under way.
    pub phase: MigrationPhase,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Rounds of written pages sent while the cell ran, after its whole memory.
    #[serde(default)]
    pub rounds: u32,
    /// Bytes of the last round: what the cell wrote while the round before it was
    /// sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round_bytes: Option<u64>,
    /// Bytes a second the cell wrote while the round before the last was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate: Option<u64>,
    /// What the pause would last, in microseconds, were its last pages as many as
    /// the last round's, at the rate the rounds went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime_us: Option<u64>,
    /// When the migration began, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

impl MigrationProgress {
    /// A migration to `to` that begins now.
    pub fn new(to: String) -> Self {
        Self {
            to,
            phase: MigrationPhase::Offering,
            bytes_sent: 0,
            rounds: 0,
            last_round_bytes: None,
            dirty_rate: None,
            expected_downtime_us: None,
            started_ms: now_ms(),
        }
    }
}

/// The steps of a migration, as its source sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// The cell runs on while the destination checks it and compiles its module.
    Offering,
    /// The cell runs on while its memory is sent, then rounds of the pages it wrote
    /// meanwhile.
    Precopying,
    /// The cell is paused and the last pages it wrote sent, with its state; then the
    /// destination runs it and both commit (a record saved by a daemon of protocol 2
    /// may say `committing`).
    #[serde(alias = "committing")]
    Copying,
}

impl CellRecord {
    /// The record of a cell just created, at `created_ms`: nothing run yet.
    pub fn created(id: String, name: String, spec: CellSpec, created_ms: u64) -> Self {
        Self {
            id,
            name,
            spec,
            state: CellState::Created,
            created_ms,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            error: None,
            usage: None,
            parked_ms: None,
            migrated_to: None,
            migrated_from: None,
            migration: None,
            stdin_from: None,
            stdout_to: None,
            named_channels: Vec::new(),
        }
    }
}

/// What a cell's run did: so far while it runs, in all once it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CellUsage {
    /// VM exits taken.
    pub exits: u64,
    /// The hypercalls among them, by name.
    pub hypercalls: BTreeMap<String, u64>,
    /// CPU time of its vCPU thread, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_ms: Option<u64>,
    /// Bytes of memory the cell touched: so far, for a live cell, or in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_touched: Option<u64>,
}

impl CellUsage {
    /// Adds what a later part of the same run did.
    pub fn add(&mut self, later: CellUsage) {
        self.exits += later.exits;
        for (call, count) in later.hypercalls {
            *self.hypercalls.entry(call).or_default() += count;
        }
        self.cpu_time_ms = match (self.cpu_time_ms, later.cpu_time_ms) {
            (Some(earlier), Some(later)) => Some(earlier + later),
            (earlier, later) => earlier.or(later),
        };
        self.memory_touched = later.memory_touched.or(self.memory_touched);
    }
}

/// `GET /v1/cells/{cell}/stats`: a cell's state and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CellStatsView {
    /// The cell's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: CellState,
    /// How long its current run has lasted, or its last one lasted, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Bytes of memory pages a parked cell keeps: what it changed over its template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_bytes: Option<u64>,
    /// What the run did.
    pub usage: CellUsage,
}

/// A change of a cell's state, as `GET /v1/events` streams it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    /// Its place in the daemon's sequence of events, from 1.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The cell's id.
    pub cell: String,
    /// The cell's name.
    pub name: String,
    /// What happened: `create`, `connect`, `start`, `pause`, `resume`, `exit`, `fail`,
    /// `kill`, `lose` or `remove`.
    pub action: String,
    /// The state the cell is in afterwards.
    pub state: CellState,
    /// For a `migrate` event: how far the migration got (its step, bytes sent, and the
    /// pre-copy's rounds, dirty rate and expected downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationProgress>,
}

/// What a client asks for when it makes a template (`POST /v1/templates`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// The template's name, unique in the daemon; cells name it as their `module`.
    pub name: String,
    /// The module (`.wasm` or `.wat`) to make it of, a path on the daemon's host.
    pub module: String,
    /// Where the cell stops: `start` (default), `first-read` or `init:EXPORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Arguments after the program's name (a `start` template's cells bring their own).
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment, as `NAME=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Directories granted to the program.
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    /// Most bytes the program's linear memory may grow to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The host components its cells are given (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Vec<String>>,
    /// Refuse a module that imports a function of a component not given.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub components_strict: bool,
}

/// A template the daemon keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateRecord {
    /// Its name.
    pub name: String,
    /// What it was made with.
    pub spec: TemplateSpec,
    /// Its file, under the daemon's state directory: what a cell's `module` may name.
    pub path: String,
    /// The file's size in bytes.
    pub bytes: u64,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_moves_a_directory_and_what_lies_under_it() {
        let map = [DirMapping {
            from: "/srv/data".into(),
            to: "/mnt/data".into(),
        }];
        let apply = |path: &str| DirMapping::apply(&map, Path::new(path));
        assert_eq!(apply("/srv/data"), Path::new("/mnt/data"));
        assert_eq!(apply("/srv/data/logs"), Path::new("/mnt/data/logs"));
        assert_eq!(apply("/srv/database"), Path::new("/srv/database"));
        assert_eq!(apply("/etc"), Path::new("/etc"));
    }
}
