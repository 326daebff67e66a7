//! A cell: one partition running one program, from boot to its last exit.

use std::io::Cursor;
use std::mem::offset_of;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hypercell_abi::boot::BOOT_MAGIC;
use hypercell_abi::channel::{
    CHANNELS_DIRECTORY, MAX_CHANNEL_NAME, MAX_NAMED_CHANNELS, NamedChannel, is_channel_name,
};
use hypercell_abi::hypercall::FailureKind;
use hypercell_abi::layout::{IMAGE_BASE, LARGE_PAGE_SIZE, RESERVATION_BASE};
use hypercell_abi::{
    ABI_VERSION, BootInfo, Components, CpuFeatures, GuestPhases, StdioKind, TEMPLATE_STOP_INIT,
    TEMPLATE_STOP_START,
};
use hypercell_engine::BoundsChecks;
use hypercell_vmm::system::write_system_region;
use hypercell_vmm::{
    CHANNEL_SLOT, FIRST_GROWTH_SLOT, GuestException, GuestMemory, MemoryError, ReservationTables,
    TablesState, Vcpu, VcpuError, VcpuEvent, Vm, VmError, VmPool,
};
use linux_loader::loader::{Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::channel::{CHANNEL_CAPACITY, CellChannels, NamedChannelEnd};
use crate::compile::CompiledModule;
use crate::config::{CellConfig, format_size};
use crate::control::{
    CellControl, KICK_INTERVAL, PRECOPY_PIECE, ParkRequest, PrecopyReply, PrecopyStep,
    SnapshotScope, StopReason, Wake,
};
use crate::fs::{FileTable, PreopenError};
use crate::hypercall::{Completion, HypercallCounts, HypercallError, MemoryGrowth, Services};
use crate::identity::{Identity, IdentityRegion, NextRequest};
use crate::layout::{CellLayout, MAX_WASM_STACK, identity_capacity};
use crate::persist::{
    CellSnapshot, MemoryImage, ModuleIdentity, SavedPages, SnapshotError, TemplatePoint,
};
use crate::seccomp::{self, SeccompError};
use crate::stdio::{CellStdio, OUTPUT_CAPACITY, OutputMeter, drain_output};
use crate::table_variants::TableVariants;
use crate::template_pages::{KEEP_LIMIT, TemplatePages};
use crate::vcpu_runner::VcpuRunner;

/// The guest runtime, built by this crate's build script.
pub static GUEST_ELF: &[u8] = include_bytes!(env!("HYPERCELL_GUEST_ELF"));

/// The guest runtime built to serve wasi:http proxy components too, which only cells
/// of components load: the component model's code makes it nearly twice the size, and
/// every cell copies its runtime in.
pub static GUEST_HTTP_ELF: &[u8] = include_bytes!(env!("HYPERCELL_GUEST_HTTP_ELF"));

/// Why a cell ended other than by its program exiting or trapping.
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    /// The program ended before the point where its template was to be taken.
    #[error("the program ended ({0}) before it reached the point where the template is taken")]
    NoTemplate(String),
    /// A snapshot could not be restored.
    #[error("the snapshot cannot be restored: {0}")]
    Snapshot(String),
    /// The cell was stopped from outside, for example on a signal to the host process.
    #[error("the program was stopped by signal {0}")]
    Stopped(i32),
    /// The program ran past its time limit.
    #[error(
        "the program ran past its time limit of {0:?} and was stopped; raise it with --timeout"
    )]
    Timeout(Duration),
    /// The guest raised a CPU exception.
    #[error("the cell's guest faulted with a {0} and was stopped")]
    Fault(GuestException),
    /// The guest touched memory that was never mapped.
    #[error(
        "the cell's guest touched address {0:#x}, which is inside the cell but was never mapped, and was stopped"
    )]
    Unmapped(u64),
    /// The guest triple-faulted.
    #[error("the cell's guest triple-faulted and was stopped")]
    TripleFault,
    /// KVM could not emulate a guest instruction.
    #[error("KVM could not emulate an instruction of the cell's guest, which was stopped")]
    Emulation,
    /// An exit Hypercell does not expect.
    #[error("the cell's guest caused an unexpected exit ({0}) and was stopped")]
    UnexpectedExit(String),
    /// The program wrote more than its output limit.
    #[error(
        "the program wrote more than its output limit of {0} and was stopped; raise it with --max-output"
    )]
    OutputLimit(String),
    /// A preopened directory could not be opened.
    #[error(transparent)]
    Preopen(#[from] PreopenError),
    /// The vCPU thread could not be confined.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The guest broke the hypercall ABI.
    #[error("the cell's guest broke the hypercall ABI and was stopped: {0}")]
    Hypercall(#[from] HypercallError),
    /// The program needed more memory than the cell has.
    #[error("the program ran out of memory: the cell's limit is {limit}; raise it with --memory")]
    OutOfMemory {
        /// The cell's memory size, formatted.
        limit: String,
    },
    /// The module could not be instantiated.
    #[error("could not instantiate the module: {0}")]
    Instantiate(String),
    /// A WASI call refused its arguments and ended the program.
    #[error("the program was stopped: {0}")]
    CallError(String),
    /// The guest runtime failed.
    #[error("the cell's runtime failed: {0}")]
    Runtime(String),
    /// The module's first linear memory starts larger than the memory limit allows.
    #[error(
        "the module's linear memory starts at {initial}, more than the memory limit of {limit}; raise it with --memory"
    )]
    InitialMemory {
        /// The memory's initial size, formatted.
        initial: String,
        /// The limit, formatted.
        limit: String,
    },
    /// The memory limit is larger than a cell can hold beside its runtime.
    #[error(
        "a memory limit of {0} does not fit in a cell beside the runtime and this module; a cell's linear memory can reach 4 GiB"
    )]
    MemoryLimit(String),
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Creating guest memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Loading the guest failed.
    #[error("could not load the guest runtime into the cell: {0}")]
    Load(String),
    /// A partition could not be put back to its template.
    #[error("the cell could not be put back to its template: {0}")]
    Reset(String),
    /// No thread could be started for the cell's vCPU.
    #[error("the host cannot start a thread for the cell's vCPU: {0}")]
    Thread(String),
    /// Directories are granted without the component that serves them.
    #[error("directories are granted to the cell, but not the `fs` component that serves them")]
    FsNotGiven,
    /// A cell joined to others by channels was to start from a template or a
    /// snapshot of its changes, or in a reused partition.
    #[error(
        "a cell joined to other cells by channels starts from its module or a snapshot of its pipeline, not from a template"
    )]
    ChannelsFromSnapshot,
    /// A snapshot restored with channels was not taken of a cell joined the same way.
    #[error(
        "the snapshot was taken of a cell whose stdin and stdout were joined to other cells otherwise than now"
    )]
    ChannelsDiffer,
    /// Channels are given without the component that carries stdio.
    #[error(
        "the cell's stdio is joined to channels, but the cell is not given the `stdio` component"
    )]
    ChannelsWithoutStdio,
    /// Named channels are granted without the component that serves them.
    #[error(
        "named channels are granted to the cell, but not the `channels` component that serves them"
    )]
    ChannelsNotGiven,
    /// A named channel's name or count is not one a cell can be given.
    #[error(
        "named channel `{0}` cannot be granted: a cell takes at most 16 named channels, each named by 1 to 48 letters, digits, `.`, `_` or `-` (not starting with `.`, nor `stdin`, `stdout` or `stderr`), each name once"
    )]
    ChannelName(String),
    /// A directory is granted under the name the named channels take.
    #[error("a directory is granted as `/channels`, the name the cell's named channels take")]
    ChannelsDirectoryTaken,
}

/// Exit status of a program that trapped, as `wasmtime run` gives it (128 + SIGABRT).
pub const TRAP_EXIT_STATUS: u8 = 134;

/// How the program ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CellExit {
    /// It exited with this status.
    Exited(i32),
    /// It trapped; the runtime's report, with the wasm backtrace.
    Trapped(String),
    /// It became a template before its program ran (see [`CellReport::template`]).
    Template,
}

impl CellExit {
    /// The process exit status it is, as `wasmtime run` gives it: the program's own
    /// (modulo 256), [`TRAP_EXIT_STATUS`] for a trap, 0 for a template.
    pub fn status(&self) -> u8 {
        match self {
            Self::Exited(code) => *code as u8,
            Self::Trapped(_) => TRAP_EXIT_STATUS,
            Self::Template => 0,
        }
    }
}

/// Where the guest runtime's time went, from its own time-stamp counter readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTimings {
    /// First instruction to a configured engine and heap.
    pub runtime_init: Duration,
    /// Loading the compiled module.
    pub module_load: Duration,
    /// Linking WASI and instantiating the module.
    pub instantiate: Duration,
    /// Running the program to its exit or trap.
    pub program: Duration,
}

impl GuestTimings {
    /// Converts the guest's readings; `None` unless the guest reached its end and the
    /// readings run forwards (they come from the guest and prove nothing).
    fn from_phases(phases: &GuestPhases, tsc_khz: u64) -> Option<Self> {
        let marks = [
            phases.entered,
            phases.runtime_ready,
            phases.module_loaded,
            phases.instantiated,
            phases.finished,
        ];
        if tsc_khz == 0 || marks[0] == 0 || marks.windows(2).any(|w| w[1] < w[0]) {
            return None;
        }
        let span = |i: usize| {
            Duration::from_nanos(
                (u128::from(marks[i + 1] - marks[i]) * 1_000_000 / u128::from(tsc_khz)) as u64,
            )
        };
        Some(Self {
            runtime_init: span(0),
            module_load: span(1),
            instantiate: span(2),
            program: span(3),
        })
    }
}

/// Timings and counters of one cell.
#[derive(Clone, Debug)]
pub struct CellStats {
    /// When the cell was asked to start.
    pub started: Instant,
    /// VM and vCPU created.
    pub vm_created: Instant,
    /// Guest memory mapped and system tables written.
    pub memory_ready: Instant,
    /// Guest runtime, boot information and module in place.
    pub guest_loaded: Instant,
    /// First KVM_RUN entered: the guest's first instruction.
    pub first_entry: Instant,
    /// Last exit handled.
    pub finished: Instant,
    /// VM, vCPU and guest memory released.
    pub torn_down: Instant,
    /// VM exits taken.
    pub exits: u64,
    /// The hypercalls among those exits.
    pub hypercalls: HypercallCounts,
    /// Guest memory the host backed, in bytes, apart from a compiled module mapped from
    /// the compile cache (page cache shared with other cells). Not measured (0) for a
    /// cell in a reused partition, which holds what earlier cells touched too, and
    /// whose next cell should not wait on the count.
    pub memory_touched: u64,
    /// Bytes of linear memory mapped for the program's memories, part of
    /// `memory_touched` once used: what they reached, or, with explicit bounds checks,
    /// whole 2 MiB pages of it.
    pub linear_memory: u64,
    /// The guest runtime's own start-up breakdown, when it reported one.
    pub guest: Option<GuestTimings>,
}

/// A finished cell.
#[derive(Clone, Debug)]
pub struct CellReport {
    /// How the program ended.
    pub exit: CellExit,
    /// Most bytes of linear memory a `memory.grow` was refused, if any.
    pub denied_growth: Option<u64>,
    /// Timings and counters.
    pub stats: CellStats,
    /// The template the cell became, when it was started to make one.
    pub template: Option<Box<CellSnapshot>>,
}

/// A cell that failed, with what it measured before it did.
#[derive(Debug)]
pub struct CellFailure {
    /// Why it ended.
    pub error: CellError,
    /// Timings and counters up to the failure, when the cell got that far.
    pub stats: Option<Box<CellStats>>,
}

impl<E: Into<CellError>> From<E> for CellFailure {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            stats: None,
        }
    }
}

/// What a cell runs.
#[derive(Clone, Copy)]
pub enum CellPayload<'a> {
    /// A WebAssembly program, run by the guest runtime on code compiled for
    /// `cpu_features` (see [`crate::Compiler::cpu_features`]).
    Wasm {
        /// The compiled program.
        module: &'a CompiledModule,
        /// CPU features the code was compiled for.
        cpu_features: u32,
    },
    /// Raw x86-64 machine code, loaded at `IMAGE_BASE` in place of the guest runtime and
    /// entered there at CPL 3 with the boot information's address in `rdi`: any code
    /// that finds its way into a cell, as the hostile-guest tests use it.
    MachineCode(&'a [u8]),
}

/// Boots a cell for `payload` and runs it to the end.
pub fn run_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
) -> Result<CellReport, CellFailure> {
    run_cell_with_control(config, payload, stdio, &CellControl::new())
}

/// Boots a cell for `payload` and runs it to the end, or until it is stopped through
/// `control` from another thread.
pub fn run_cell_with_control(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    control: &CellControl,
) -> Result<CellReport, CellFailure> {
    run_joined_cell(config, payload, stdio, control, CellChannels::default())
}

/// Builds a cell from `snapshot`, taken with [`CellControl::snapshot_with_neighbours`]
/// of a cell joined to others by channels, joined again by `channels` (made with the
/// contents the old ones had, see [`crate::channel::channel_with`]), and runs it on
/// from there to the end, or until it is stopped through `control`.
pub fn restore_joined_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    snapshot: &CellSnapshot,
    stdio: CellStdio<'_>,
    control: &CellControl,
    channels: CellChannels<'_>,
) -> Result<CellReport, CellFailure> {
    begin(
        config,
        payload,
        stdio,
        control,
        Start::Restore(snapshot),
        channels,
    )
}

/// Boots a cell for `payload` whose stdin, stdout or both are channels to other cells
/// (see [`crate::channel`]), and runs it to the end, or until it is stopped through
/// `control`; its channel ends are closed when it ends. `stdio`'s descriptors for
/// those streams are not used.
pub fn run_joined_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    control: &CellControl,
    channels: CellChannels<'_>,
) -> Result<CellReport, CellFailure> {
    begin(config, payload, stdio, control, Start::Boot, channels)
}

/// Boots a cell for `payload` and stops it once the module is instantiated, before
/// its program runs: the cell's state there is a template, from which
/// [`start_from_template`] starts cells with identities of their own.
pub fn create_template(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    point: TemplatePoint,
) -> Result<CellSnapshot, CellFailure> {
    take_template(config, payload, stdio, point, "")
}

/// Boots a cell for `payload`, runs its `_initialize` (if it has one) and then the
/// export `export`, a function of no parameters and no results, and stops it there, as
/// Wizer does: the cell's state then is a template whose cells go on to `_start` with
/// what the export left in memory, and with its arguments, environment and preopens.
pub fn create_init_template(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    export: &str,
) -> Result<CellSnapshot, CellFailure> {
    take_template(config, payload, stdio, TemplatePoint::Init, export)
}

fn take_template(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    point: TemplatePoint,
    export: &str,
) -> Result<CellSnapshot, CellFailure> {
    let report = begin(
        config,
        payload,
        stdio,
        &CellControl::new(),
        Start::Template(point, export),
        CellChannels::default(),
    )?;
    match report.template {
        Some(template) => Ok(*template),
        None => Err(CellFailure {
            error: CellError::NoTemplate(format!("{:?}", report.exit)),
            stats: Some(Box::new(report.stats)),
        }),
    }
}

/// Starts a cell from `template` (made by [`create_template`] for `payload`) with the
/// arguments, environment, preopens and stdio of `config` and `stdio`, and runs its
/// program to the end, or until it is stopped through `control`.
pub fn start_from_template(
    config: &CellConfig,
    payload: CellPayload<'_>,
    template: &CellSnapshot,
    stdio: CellStdio<'_>,
    control: &CellControl,
) -> Result<CellReport, CellFailure> {
    begin(
        config,
        payload,
        stdio,
        control,
        Start::FromTemplate(template),
        CellChannels::default(),
    )
}

/// Builds a cell from `changes`, a snapshot of what a cell running `payload` changed
/// since it started from `base` (a snapshot or template; `None` for a booted cell), taken
/// with [`CellControl::snapshot_changes`], and runs it on from there to the end, or
/// until it is stopped through `control`.
pub fn resume_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    base: Option<&CellSnapshot>,
    changes: &CellSnapshot,
    stdio: CellStdio<'_>,
    control: &CellControl,
) -> Result<CellReport, CellFailure> {
    begin(
        config,
        payload,
        stdio,
        control,
        Start::Resume { base, changes },
        CellChannels::default(),
    )
}

/// VMs made ahead for this process's cells (see [`keep_vms_ready`]).
static VM_POOL: OnceLock<VmPool> = OnceLock::new();

/// Keeps `count` VMs made ahead, by a thread of their own, for the cells this process
/// starts from now on, so that each starts without waiting on the kernel to make its
/// VM (about 0.4 ms here): for processes that start many cells. The first call decides
/// the count; the pool lives as long as the process.
pub fn keep_vms_ready(count: usize) -> &'static VmPool {
    VM_POOL.get_or_init(|| VmPool::new(count))
}

/// How a cell starts.
#[derive(Clone, Copy)]
enum Start<'s> {
    /// Booted afresh.
    Boot,
    /// Booted, and stopped as a template at the point given (after running the export
    /// named, for [`TemplatePoint::Init`]).
    Template(TemplatePoint, &'s str),
    /// From a snapshot, going on where it stopped.
    Restore(&'s CellSnapshot),
    /// From a template, with an identity of its own.
    FromTemplate(&'s CellSnapshot),
    /// From the changes a cell made over `base`, going on where it stopped.
    Resume {
        base: Option<&'s CellSnapshot>,
        changes: &'s CellSnapshot,
    },
}

fn begin(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    control: &CellControl,
    start: Start<'_>,
    channels: CellChannels<'_>,
) -> Result<CellReport, CellFailure> {
    control.begin();
    let result = start_cell(config, payload, stdio, control, start, None, channels);
    // However it ended, even before it ran: its neighbours learn of it.
    for end in channels.ends() {
        end.close();
    }
    // However the cell ended, even before its vCPU ran: nobody waits on it any more.
    control.finish();
    result
}

/// Builds a cell from `snapshot`, taken of a cell running `payload` with `config` (and
/// preopens that hold the same files), and runs it on from there to the end, or until
/// it is stopped through `control`.
pub fn restore_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    snapshot: &CellSnapshot,
    stdio: CellStdio<'_>,
    control: &CellControl,
) -> Result<CellReport, CellFailure> {
    restore_joined_cell(
        config,
        payload,
        snapshot,
        stdio,
        control,
        CellChannels::default(),
    )
}

/// Runs a cell from `template` in the partition `reuse.kept` holds, which has been put
/// back to the template in place, or in a new one when it holds none, its vCPU on
/// `reuse.runner`; `reuse.kept` holds the partition afterwards whenever the cell's vCPU
/// ran.
pub(crate) fn run_in_partition(
    config: &CellConfig,
    payload: CellPayload<'_>,
    template: &CellSnapshot,
    stdio: CellStdio<'_>,
    control: &CellControl,
    reuse: Reuse<'_, '_>,
) -> Result<CellReport, CellFailure> {
    control.begin();
    let result = start_cell(
        config,
        payload,
        stdio,
        control,
        Start::FromTemplate(template),
        Some(reuse),
        CellChannels::default(),
    );
    control.finish();
    result
}

/// Where a cell run in a reused partition finds it, and the thread that runs its vCPU.
pub(crate) struct Reuse<'r, 'n> {
    /// The partition, when an earlier run left one; the run leaves its own here.
    pub kept: &'r mut Option<Partition>,
    /// The thread kept for the partition's vCPU.
    pub runner: &'r VcpuRunner,
    /// The whole of the program's stdin, to lay in its memory if it fits there (a
    /// cell from a template stopped at its start only).
    pub input: Option<&'r [u8]>,
    /// For a cell that serves several requests: called on the supervising thread each
    /// time the cell answered one, for the next (`None`: no more).
    pub next: Option<&'r mut NextRequests<'n>>,
}

/// What a cell that serves several requests asks for the next, each time it answered
/// one (see [`crate::ReusableCell::serve`]).
pub type NextRequests<'a> = dyn FnMut() -> Option<NextRequest> + 'a;

/// A cell's VM, vCPU and memory, kept after a run to be put back to its template in
/// place (see [`crate::ReusableCell`]).
pub(crate) struct Partition {
    vm: Vm,
    vcpu: Vcpu,
    memory: GuestMemory,
    /// End of the memory mapped at boot.
    boot_mapping: u64,
    /// The first KVM memory slot not in use.
    next_slot: u32,
    /// The first page of the table pool that no run used since KVM last dropped its
    /// shadows of the pool: where the next run's copy of the tables goes.
    tables_next: u64,
    /// The copy of the template's tables each run starts on, made at a reset, and its
    /// pages' contents then: while it stays as it was (runs grow into copies of it,
    /// see [`TableVariants`]), every run starts on it and finds KVM's shadows of it.
    tables_copy: Option<(std::ops::Range<u64>, Vec<u8>)>,
    /// The copies runs grew into from it; `None` before the first copy is made and
    /// after a run found no room for another.
    variants: Option<TableVariants>,
    /// The template's contents of the pages resets copy back.
    template_pages: TemplatePages,
    /// The end of the memory the last run had mapped: the guest wrote nothing past
    /// it, and the host's writes have a bound of their own.
    mapped_end: u64,
}

/// Pool pages a reset leaves for the next run's copy of the tables and its growth; with
/// fewer, KVM's shadows of the pool are dropped and the pool is used again.
const FRESH_TABLE_PAGES: u64 = 64;

/// Written ranges this close together are dropped with one call, clean pages between
/// them included: each call costs KVM a flush of its mappings, which costs more than
/// the guest's faulting a few clean pages back in.
const DISCARD_GAP: u64 = 16 * 4096;

/// What putting a partition back to its template did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// 4 KiB pages the partition held as its own (written by the guest or the host in
    /// this run or kept from an earlier one), each put back to the template's.
    pub pages: u64,
    /// The ranges they lay in.
    pub ranges: usize,
    /// Memory slots the last run added, removed.
    pub slots: u32,
    /// Whether the run changed the page tables or system structures, so that KVM had to
    /// drop what it derived from them.
    pub system: bool,
    /// Of the pages, those kept as the partition's own with the template's contents
    /// copied back over them (none when they were more than 2048): the next run
    /// likely writes them again, and finds them mapped. They count as its own at the
    /// next reset, run or not.
    pub kept: u64,
    /// Pages of the copy of the template's page tables that the next run starts on.
    pub tables: u64,
}

impl Partition {
    /// Puts the partition back to `template`, which it was started from: every page
    /// the partition holds as its own reads as the template's again, memory slots the
    /// run added are removed, and the vCPU gets the template's state.
    ///
    /// A page the guest wrote is copied back in place from the template's file (or
    /// zeroed past it) and stays the partition's own: the next run likely writes it
    /// again, and dropping it instead would cost the host a fresh copy and KVM a new
    /// mapping, each a fault (copy-on-write through KVM costs about 13 µs a page).
    /// Pages of the system region and of the module go back to the file by being
    /// dropped: KVM must forget what it derived from changed page tables anyway.
    pub(crate) fn reset_to(&mut self, template: &CellSnapshot) -> Result<ResetReport, CellError> {
        let SavedPages::File { file, offset } = &template.memory.pages else {
            return Err(CellError::Reset(
                "its template's memory is not in a file".into(),
            ));
        };
        // Listing the pages of the whole reservation (gigabytes, mostly never mapped)
        // costs more than the rest of a small run's reset.
        let written_end = self
            .mapped_end
            .max(self.memory.host_written_end())
            .max(template.memory.image_len());
        let written = self
            .memory
            .written_ranges(0..written_end)
            .map_err(|e| CellError::Reset(format!("its written pages cannot be listed: {e}")))?;
        let module = &template.memory.module;
        let module = module.start / 4096 * 4096..module.end.next_multiple_of(4096);
        // Pool pages past the template's hold earlier runs' copies of the tables: out
        // of the guest's reach, and written whole before any run uses them again (see
        // `fresh_tables`). Dropping them would cost every VM of the process a flush.
        let floor = template.services.growth.tables.next;
        let spent = floor..hypercell_vmm::paging::table_pool().end;
        let written: Vec<_> = written
            .into_iter()
            .flat_map(|range| {
                [
                    range.start..range.end.min(spent.start),
                    range.start.max(spent.end)..range.end,
                ]
            })
            .filter(|range| range.start < range.end)
            .collect();
        let mut report = ResetReport {
            ranges: written.len(),
            ..ResetReport::default()
        };
        let (mut kept, mut dropped) = (Vec::new(), Vec::new());
        for range in written {
            report.pages += (range.end - range.start) / 4096;
            // Split around the system region and the module, which are dropped.
            let cuts = [IMAGE_BASE, module.start, module.end];
            let mut start = range.start;
            for cut in cuts
                .into_iter()
                .filter(|&cut| cut > range.start && cut < range.end)
                .chain([range.end])
            {
                let piece = start..cut;
                if piece.end <= IMAGE_BASE || (piece.start < module.end && piece.end > module.start)
                {
                    dropped.push(piece);
                } else {
                    kept.push(piece);
                }
                start = cut;
            }
        }
        let keep: u64 = kept
            .iter()
            .map(|range| (range.end - range.start) / 4096)
            .sum();
        if keep > KEEP_LIMIT {
            dropped.append(&mut kept);
            dropped.sort_by_key(|range| range.start);
        }
        // KVM shadows the guest's page tables and does not see the host put them back.
        let system: Vec<_> = dropped
            .iter()
            .filter(|range| range.start < floor)
            .map(|range| range.start..range.end.min(floor))
            .collect();
        // The copy of the template's tables stays, for the next run, unless other
        // tables changed and KVM's shadows of the pool go anyway, or a run had to
        // grow in place.
        let variants = self.variants.take();
        let unchanged = self.tables_copy.take().filter(|(range, made)| {
            let mut now = vec![0u8; made.len()];
            system.is_empty()
                && variants.is_some()
                && self
                    .memory
                    .mem()
                    .read_slice(&mut now, GuestAddress(range.start))
                    .is_ok()
                && now == *made
        });
        let image_end = template.memory.image_len();
        for range in &kept {
            self.template_pages
                .copy_back(&self.memory, range.clone(), file, *offset, image_end)
                .map_err(|e| {
                    CellError::Reset(format!("its template's pages cannot be read: {e}"))
                })?;
            report.kept += (range.end - range.start) / 4096;
        }
        let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(dropped.len());
        for range in dropped.iter().cloned() {
            match merged.last_mut() {
                Some(last) if range.start - last.end <= DISCARD_GAP => last.end = range.end,
                _ => merged.push(range),
            }
        }
        // A page left would carry the last run's data into the next.
        self.memory
            .discard_all(&merged)
            .map_err(|e| CellError::Reset(format!("its written pages cannot be dropped: {e}")))?;
        let template_slots =
            FIRST_GROWTH_SLOT + u32::from(template.services.growth.mapped > self.boot_mapping);
        for slot in template_slots..self.next_slot {
            self.vm.remove_memory(slot)?;
            report.slots += 1;
        }
        self.next_slot = template_slots;
        report.system = self.vm.drop_shadows_of(&self.memory, system)?;
        let root = match unchanged {
            Some((copy, made)) => {
                report.tables = (copy.end - copy.start) / 4096;
                // The root is the copy's first page.
                let root = copy.start;
                self.memory.set_tables_root(root);
                self.tables_copy = Some((copy, made));
                self.variants = variants;
                root
            }
            _ => {
                let (root, copied, dropped) = self.fresh_tables(template, report.system)?;
                report.tables = copied;
                report.system |= dropped;
                root
            }
        };
        // The time-stamp counter stays: it has run on from the template's restore with
        // real time, as a new cell's would be moved on.
        self.vcpu.reset_state(&template.vcpu, root)?;
        Ok(report)
    }

    /// Copies the template's page tables for the next run into pool pages no run used
    /// since KVM last dropped its shadows of the pool (dropping them first where too
    /// few are left, unless `dropped` says the reset just did); returns the copy's
    /// root for the vCPU's CR3, the pages the copy took, and whether KVM's shadows
    /// of the pool were dropped for it.
    fn fresh_tables(
        &mut self,
        template: &CellSnapshot,
        dropped: bool,
    ) -> Result<(u64, u64, bool), CellError> {
        let floor = template.services.growth.tables.next;
        let mut tables = tables_from(if dropped { floor } else { self.tables_next })?;
        let wrap = !dropped && tables.never_used() < FRESH_TABLE_PAGES;
        if wrap {
            self.vm.drop_table_shadows(&self.memory)?;
            tables = tables_from(floor)?;
        }
        let start = tables.state().next;
        let root = tables
            .fresh_copy(&self.memory, template.vcpu.sregs.cr3)
            .map_err(|e| CellError::Reset(format!("its page tables cannot be copied: {e}")))?;
        self.memory.set_tables_root(root);
        let end = tables.state().next;
        self.tables_next = end;
        // The copy's pages are the pool's next ones, in order.
        let mut made = vec![0u8; (end - start) as usize];
        self.memory
            .mem()
            .read_slice(&mut made, GuestAddress(start))
            .map_err(|e| CellError::Reset(format!("its page tables cannot be read: {e}")))?;
        self.tables_copy = Some((start..end, made));
        self.variants = Some(TableVariants::default());
        Ok((root, (end - start) / 4096, wrap))
    }
}

/// The bookkeeping of tables whose next pages come from the pool at `next`, with no
/// freed pages to take first.
fn tables_from(next: u64) -> Result<ReservationTables, CellError> {
    ReservationTables::from_state(&TablesState {
        next,
        free: Vec::new(),
    })
    .ok_or_else(|| CellError::Reset("its table pool is out of bounds".into()))
}

fn start_cell(
    config: &CellConfig,
    payload: CellPayload<'_>,
    stdio: CellStdio<'_>,
    control: &CellControl,
    start: Start<'_>,
    mut reuse: Option<Reuse<'_, '_>>,
    channels: CellChannels<'_>,
) -> Result<CellReport, CellFailure> {
    let started = Instant::now();
    if !config.preopens.is_empty() && !config.components.contains(Components::FS) {
        return Err(CellError::FsNotGiven.into());
    }
    if channels.any() {
        if !matches!(start, Start::Boot | Start::Restore(_)) || reuse.is_some() {
            return Err(CellError::ChannelsFromSnapshot.into());
        }
        if (channels.stdin.is_some() || channels.stdout.is_some())
            && !config.components.contains(Components::STDIO)
        {
            return Err(CellError::ChannelsWithoutStdio.into());
        }
        check_named_channels(config, channels.named)?;
        if !channels.named.is_empty() && !matches!(start, Start::Boot) {
            return Err(CellError::ChannelsFromSnapshot.into());
        }
    }
    let mut kept = reuse.as_mut().and_then(|reuse| reuse.kept.take());
    let input = reuse.as_ref().and_then(|reuse| reuse.input);
    let next = reuse.as_mut().and_then(|reuse| reuse.next.take());
    let serving = next.is_some();
    let in_place = kept.is_some();
    let base = match start {
        Start::Resume { base, .. } => base,
        _ => None,
    };
    let (snapshot, fresh_identity) = match start {
        Start::Boot | Start::Template(..) => (None, true),
        Start::Restore(snapshot)
        | Start::Resume {
            changes: snapshot, ..
        } => (Some(snapshot), false),
        // A template stopped at start has not read its identity yet; one stopped later
        // has, and its cells go on with it.
        Start::FromTemplate(template) => (
            Some(template),
            template.template == Some(TemplatePoint::Start),
        ),
    };
    let mut identity_blocks = Identity::of(config);
    // Named channels are opened under a last preopen of their own.
    if !channels.named.is_empty() {
        identity_blocks
            .preopens
            .extend_from_slice(CHANNELS_DIRECTORY.as_bytes());
        identity_blocks.preopens.push(0);
        identity_blocks.preopen_count += 1;
    }
    let (args, env) = (&identity_blocks.args, &identity_blocks.env);
    // Preopens first: a directory that cannot be opened is the user's to fix, before
    // any VM is made.
    let mut files = match snapshot.filter(|_| !fresh_identity) {
        None => FileTable::with_preopens(&config.preopens)?,
        Some(snapshot) => FileTable::restore(&snapshot.services.files, &config.preopens)
            .map_err(|e| CellError::Snapshot(e.to_string()))?,
    };
    if !channels.named.is_empty() {
        files.add_channels_directory(
            channels
                .named
                .iter()
                .map(|named| (named.name.clone(), !named.end.is_reader()))
                .collect(),
        );
    }
    let preopens = &identity_blocks.preopens;
    // The initialisation export's name follows the preopen names, then the named
    // channels' table, 8-aligned.
    let init_export = match start {
        Start::Template(TemplatePoint::Init, export) => export.as_bytes(),
        _ => &[],
    };
    let named_table_offset = (preopens.len() + init_export.len()).next_multiple_of(8);
    let named_table_len = channels.named.len() * size_of::<NamedChannel>();
    let guest = match payload {
        CellPayload::Wasm { module, .. } if module.component => GUEST_HTTP_ELF,
        _ => GUEST_ELF,
    };
    let (image_end, module, module_identity, cpu_features, initial_memory, bounds_checks) =
        match payload {
            CellPayload::Wasm {
                module,
                cpu_features,
            } => (
                image_end(guest)?,
                module.artifact.bytes(),
                ModuleIdentity::of_artifact(&module.artifact),
                cpu_features,
                module.initial_memory,
                module.bounds_checks,
            ),
            CellPayload::MachineCode(code) => (
                IMAGE_BASE + code.len() as u64,
                &[][..],
                ModuleIdentity::of(&[]),
                0,
                0,
                BoundsChecks::default(),
            ),
        };
    let module_len = module.len() as u64;
    if initial_memory > config.memory_limit {
        return Err(CellError::InitialMemory {
            initial: format_size(initial_memory),
            limit: format_size(config.memory_limit),
        }
        .into());
    }
    let identity_len =
        identity_blocks.bytes() + (named_table_offset - preopens.len() + named_table_len) as u64;
    // Cells of one snapshot keep its layout: its identity region, whatever their own.
    let identity = match snapshot {
        Some(snapshot) if identity_len > snapshot.identity_capacity => {
            return Err(CellError::Snapshot(format!(
                "the arguments, environment and directory names take {}, more than the {} the template has room for",
                format_size(identity_len),
                format_size(snapshot.identity_capacity)
            ))
            .into());
        }
        Some(snapshot) => snapshot.identity_capacity,
        None => identity_capacity(identity_len),
    };
    let planned = CellLayout::plan_with_preopens(
        config.memory_limit,
        image_end,
        args.len() as u64,
        env.len() as u64,
        (named_table_offset + named_table_len) as u64,
        module_len,
        identity,
    );
    // Raw machine code has no runtime and no linear memory: its limit is the cell's
    // whole memory.
    let layout = match payload {
        CellPayload::Wasm { .. } => planned,
        CellPayload::MachineCode(_) => {
            planned.and_then(|layout| layout.with_memory_size(config.memory_limit))
        }
    }
    .and_then(|layout| {
        if channels.any() {
            layout.with_channels(channels.named.len())
        } else {
            Some(layout)
        }
    })
    .ok_or_else(|| CellError::MemoryLimit(format_size(config.memory_limit)))?;
    let boot_mapping = layout.boot_mapping();
    let (kept_tables, kept_copy, kept_variants, template_pages) = match &mut kept {
        Some(kept) => (
            Some(kept.tables_next),
            kept.tables_copy.take(),
            kept.variants.take(),
            std::mem::take(&mut kept.template_pages),
        ),
        None => (None, None, None, TemplatePages::default()),
    };
    let (vm, made_vcpu, memory) = match kept {
        Some(kept) => (kept.vm, Some(kept.vcpu), kept.memory),
        None => {
            let (vm, made_vcpu) = match VM_POOL.get().and_then(VmPool::take) {
                Some((vm, vcpu)) => (vm, Some(vcpu)),
                None => (Vm::new()?, None),
            };
            // Mapping memory costs less before the vCPU exists.
            let memory = GuestMemory::new(layout.memory_size())?;
            vm.map_boot_memory(&memory, boot_mapping)?;
            if channels.any() {
                for index in 0..layout.channel_windows {
                    if let (Some(end), Some(window)) =
                        (channels.end(index), layout.channel_window(index))
                    {
                        end.map_into(&memory, window)?;
                    }
                }
                vm.map_memory(&memory, CHANNEL_SLOT, layout.channels..layout.memory_size())?;
            }
            (vm, made_vcpu, memory)
        }
    };
    // The runtime's first allocations land in the heap's first 2 MiB: back it now (see
    // `Services::grow_memory`).
    // The first linear memory's initial pages come first in the heap, mapped before
    // boot (saving the guest an exit), then the runtime's first allocations.
    let premapped_backing = layout.heap_start;
    let premapped_pages = initial_memory.div_ceil(LARGE_PAGE_SIZE);
    let premapped = if initial_memory <= layout.wasm_memory_limit
        && premapped_backing + (premapped_pages + 1) * LARGE_PAGE_SIZE <= boot_mapping
    {
        initial_memory
    } else {
        0
    };
    let heap_start = premapped_backing + premapped.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE;
    let heap_ready = (heap_start + LARGE_PAGE_SIZE).min(boot_mapping);
    // A memory smaller than its last 2 MiB page is backed by small pages there, so an
    // idle cell holds what its program can reach rather than a whole huge page.
    // A restored cell's memory all comes from its snapshot, into fresh memory: none of
    // the boot below is written, and nothing is populated ahead of the guest.
    let booting = snapshot.is_none();
    let partial = premapped % LARGE_PAGE_SIZE;
    if booting {
        if partial != 0 {
            let last = premapped_backing + premapped - partial;
            memory.use_small_pages(last..last + LARGE_PAGE_SIZE);
        }
        memory.populate(premapped_backing..premapped_backing + premapped);
        memory.populate(heap_start..heap_ready);
    }
    let mut vcpu = match made_vcpu {
        Some(vcpu) => vcpu,
        None => vm.create_vcpu()?,
    };
    let vm_created = Instant::now();
    let mut reservations = ReservationTables::default();
    // With explicit bounds checks the code, not the tables, stops accesses past the
    // memory's size: its whole last 2 MiB page is mapped, for it to grow into without
    // an exit (the guest maps alike, see `BootInfo::bounds_checks`).
    let mapped = bounds_checks.mapped_end(premapped);
    let tables = if booting {
        let tables = write_system_region(&memory, &[layout.stack_guard()]).map_err(load_error)?;
        if mapped > 0 {
            reservations
                .map(&memory, RESERVATION_BASE, premapped_backing, mapped)
                .map_err(load_error)?;
        }
        Some(tables)
    } else {
        None
    };
    let memory_ready = Instant::now();

    let mem = memory.mem();
    match payload {
        // A partition put back to its template already holds the module as the
        // template left it; mapping the file again would make KVM forget its mappings
        // of the code, and the guest fault each page back in.
        CellPayload::Wasm { .. } if in_place => {}
        CellPayload::Wasm {
            module: compiled, ..
        } => match compiled.artifact.file_backing() {
            Some((file, offset)) => memory.map_file(layout.module, module_len, file, offset)?,
            None => mem
                .write_slice(module, GuestAddress(layout.module))
                .map_err(load_error)?,
        },
        CellPayload::MachineCode(_) => {}
    }
    let tsc_khz = u64::from(vcpu.tsc_khz()?);
    let boot = BootInfo {
        magic: BOOT_MAGIC,
        abi_version: ABI_VERSION,
        cpu_features,
        memory_size: layout.heap_end,
        heap_start,
        heap_end: heap_ready,
        wasm_memory_limit: layout.wasm_memory_limit,
        max_wasm_stack: MAX_WASM_STACK,
        module_addr: layout.module,
        module_len,
        args_addr: layout.args,
        args_len: args.len() as u64,
        argc: identity_blocks.argc,
        env_addr: layout.env,
        env_len: env.len() as u64,
        envc: identity_blocks.envc,
        preopens_addr: layout.preopens,
        preopens_len: preopens.len() as u64,
        preopen_count: identity_blocks.preopen_count,
        request_addr: layout.request,
        output_addr: layout.output,
        phases_addr: layout.phases,
        tsc_khz,
        realtime_ns: realtime_ns(),
        monotonic_ns: monotonic_ns(),
        stdio_kinds: stdio_kinds(&stdio, &channels),
        template_stop: match start {
            Start::Template(TemplatePoint::Start, _) => TEMPLATE_STOP_START,
            Start::Template(TemplatePoint::Init, _) => TEMPLATE_STOP_INIT,
            _ => 0,
        },
        components: config.components.0,
        trap_entry: 0,
        trap_stack: 0,
        premapped_memory: premapped,
        premapped_backing,
        init_export_addr: layout.preopens + preopens.len() as u64,
        init_export_len: init_export.len() as u64,
        input_addr: 0,
        input_len: 0,
        reuse: u64::from(serving),
        stdin_channel: channels
            .stdin
            .and_then(|_| layout.channel_window(0))
            .unwrap_or(0),
        stdout_channel: channels
            .stdout
            .and_then(|_| layout.channel_window(1))
            .unwrap_or(0),
        channel_capacity: if channels.any() { CHANNEL_CAPACITY } else { 0 },
        named_channels_addr: if channels.named.is_empty() {
            0
        } else {
            layout.preopens + named_table_offset as u64
        },
        named_channel_count: channels.named.len() as u64,
        bounds_checks: bounds_checks.to_boot(),
    };
    let named_table: Vec<u8> = channels
        .named
        .iter()
        .enumerate()
        .flat_map(|(i, named)| {
            let mut record = NamedChannel {
                header: layout.channel_window(2 + i as u64).unwrap_or(0),
                writer: u32::from(!named.end.is_reader()),
                name_len: named.name.len() as u32,
                name: [0; MAX_CHANNEL_NAME],
            };
            record.name[..named.name.len()].copy_from_slice(named.name.as_bytes());
            named_channel_bytes(&record)
        })
        .collect();
    let region = IdentityRegion {
        boot_info: layout.boot_info,
        start: layout.args,
        capacity: layout.identity_capacity,
    };
    if let Some(tables) = tables {
        let entry = match payload {
            CellPayload::Wasm { .. } => {
                Elf::load(mem, None, &mut Cursor::new(guest), Some(GuestAddress(0)))
                    .map_err(load_error)?
                    .kernel_load
            }
            CellPayload::MachineCode(code) => {
                mem.write_slice(code, GuestAddress(IMAGE_BASE))
                    .map_err(load_error)?;
                GuestAddress(IMAGE_BASE)
            }
        };
        let blocks = [
            (layout.args, &args[..]),
            (layout.env, &env[..]),
            (layout.preopens, &preopens[..]),
            (boot.init_export_addr, init_export),
            (boot.named_channels_addr, &named_table[..]),
            (layout.boot_info, boot_bytes(&boot)),
        ];
        for (at, block) in blocks {
            mem.write_slice(block, GuestAddress(at))
                .map_err(load_error)?;
        }
        let capacity = if config.components.contains(Components::STDIO) {
            OUTPUT_CAPACITY
        } else {
            0
        };
        mem.write_obj(capacity, GuestAddress(layout.output + 8))
            .map_err(load_error)?;
        vcpu.configure(&tables, entry.0, layout.stack_top, layout.boot_info)?;
        if cpu_features & CpuFeatures::AVX != 0 {
            vm.enable_avx(&mut vcpu)?;
        }
    }
    let mut growth = MemoryGrowth {
        vm: &vm,
        mapped: boot_mapping,
        ready: heap_ready,
        end: layout.heap_end,
        next_slot: FIRST_GROWTH_SLOT,
        boot_mapping,
        tables: reservations,
        linear_memory: mapped,
        populate_from: snapshot
            .into_iter()
            .chain(base)
            .map(|snapshot| {
                snapshot
                    .memory
                    .image_len()
                    .next_multiple_of(LARGE_PAGE_SIZE)
            })
            .max()
            .unwrap_or(0),
        variants: kept_variants,
        switch_to: None,
    };
    if let Some(snapshot) = snapshot {
        restore_state(
            snapshot,
            base.map(|base| &base.memory),
            module_identity,
            &memory,
            &mut vcpu,
            &mut growth,
            in_place,
        )?;
        // A partition put back runs on its own copy of the tables, whose growth goes
        // into pool pages past it.
        if let Some(next) = kept_tables {
            growth.tables = tables_from(next)?;
        }
        // The guest goes on with the channels its boot information names: a snapshot
        // taken with others, or none, cannot go on with these.
        let saved = [
            offset_of!(BootInfo, stdin_channel),
            offset_of!(BootInfo, stdout_channel),
        ]
        .map(|offset| {
            mem.read_obj::<u64>(GuestAddress(layout.boot_info + offset as u64))
                .unwrap_or(u64::MAX)
        });
        if saved != [boot.stdin_channel, boot.stdout_channel] {
            return Err(CellError::ChannelsDiffer.into());
        }
    }
    let (meter, denied_growth) = match snapshot {
        None => (OutputMeter::new(config.output_limit), 0),
        Some(_) if fresh_identity => {
            // The template's memory holds its own identity: this cell's goes over it,
            // for the runtime to read when its `Ready` call returns, with its stdin
            // when the caller has it all and it fits, which the program then reads
            // with no exit.
            region
                .lay(mem, &identity_blocks, input)
                .map_err(load_error)?;
            let field = |offset: usize| GuestAddress(layout.boot_info + offset as u64);
            mem.write_obj(boot.components, field(offset_of!(BootInfo, components)))
                .map_err(load_error)?;
            mem.write_obj(boot.reuse, field(offset_of!(BootInfo, reuse)))
                .map_err(load_error)?;
            mem.write_slice(&boot.stdio_kinds, field(offset_of!(BootInfo, stdio_kinds)))
                .map_err(load_error)?;
            (OutputMeter::new(config.output_limit), 0)
        }
        Some(snapshot) => {
            let saved = &snapshot.services;
            // A cell from a template starts its own output; a restored one goes on.
            let written = if snapshot.template.is_some() {
                0
            } else {
                saved.output_written
            };
            (
                OutputMeter::resumed(config.output_limit, written),
                saved.denied_growth,
            )
        }
    };
    let guest_loaded = Instant::now();

    let first_entry = Instant::now();
    let services = Services {
        stdio,
        output: GuestAddress(layout.output),
        control: control.clone(),
        denied_growth,
        meter,
        files,
        growth: Some(growth),
        template_stop: match start {
            Start::Template(point, _) => Some(point),
            _ => None,
        },
        components: config.components,
        requests: serving.then_some(region),
        channels,
    };
    let trap_handler = GuestAddress(layout.boot_info + offset_of!(BootInfo, trap_entry) as u64);
    let mapped_module = MappedModule {
        region: layout.module..layout.module + module_len,
        bytes: module,
        identity: module_identity,
        identity_capacity: layout.identity_capacity,
        base: base.or(snapshot).map(|snapshot| &snapshot.memory),
    };
    let (outcome, vcpu, mut services) = run_on_vcpu_thread(
        vcpu,
        &memory,
        services,
        trap_handler,
        &mapped_module,
        reuse.as_ref().map(|reuse| reuse.runner),
        Requests {
            timeout: config.timeout,
            next,
        },
    );
    // Its neighbours learn at once that it ended, whatever else is left to do.
    for end in channels.ends() {
        end.close();
    }
    // Whatever the program wrote before it ended reaches the user, even after a fault.
    let drained = drain_output(
        &memory,
        services.output,
        services.output_capacity(),
        &services.stdio,
        &mut services.meter,
        control,
    );

    let finished = Instant::now();
    let activity = control.activity();
    let exits = activity.exits;
    let mapped = services.growth.as_ref().map_or(boot_mapping, |g| g.mapped);
    // A compiled module mapped from its cache file is shared page cache, not this
    // cell's memory (and asking about each of its pages is slow): it is left out.
    let module_end = layout.module + module_len.next_multiple_of(4096);
    let linear_memory = services.growth.as_ref().map_or(0, |g| g.linear_memory);
    let memory_touched = if reuse.is_some() {
        0
    } else {
        memory.resident_bytes(0..layout.module) + memory.resident_bytes(module_end..mapped)
    };
    let guest = memory
        .mem()
        .read_obj::<[u64; 5]>(GuestAddress(layout.phases))
        .ok()
        .and_then(
            |[
                entered,
                runtime_ready,
                module_loaded,
                instantiated,
                finished,
            ]| {
                let phases = GuestPhases {
                    entered,
                    runtime_ready,
                    module_loaded,
                    instantiated,
                    finished,
                };
                GuestTimings::from_phases(&phases, tsc_khz)
            },
        );
    let denied_growth = (services.denied_growth > 0).then_some(services.denied_growth);
    let output_exceeded = services.meter.exceeded();
    let hypercalls = activity.hypercalls;
    let next_slot = services
        .growth
        .as_ref()
        .map_or(FIRST_GROWTH_SLOT, |g| g.next_slot);
    let (tables_next, variants, mapped_end) = services
        .growth
        .as_mut()
        .map_or((0, None, memory.size()), |g| {
            (g.tables.state().next, g.variants.take(), g.mapped)
        });
    match reuse {
        Some(reuse) => {
            *reuse.kept = Some(Partition {
                vm,
                vcpu,
                memory,
                boot_mapping,
                next_slot,
                tables_next,
                tables_copy: kept_copy,
                variants,
                template_pages,
                mapped_end,
            });
        }
        None => {
            // The VM goes before the memory it maps.
            drop(vcpu);
            drop(vm);
            drop(memory);
        }
    }
    let stats = CellStats {
        started,
        vm_created,
        memory_ready,
        guest_loaded,
        first_entry,
        finished,
        torn_down: Instant::now(),
        exits,
        hypercalls,
        memory_touched,
        linear_memory,
        guest,
    };
    let fail = |error: CellError| CellFailure {
        error,
        stats: Some(Box::new(stats.clone())),
    };
    let output_limit = || CellError::OutputLimit(format_size(config.output_limit.unwrap_or(0)));
    let mut template = None;
    let exit = match outcome {
        Ok(Completion::Template(snapshot)) => {
            template = Some(snapshot);
            CellExit::Template
        }
        Ok(Completion::Exit(code)) => CellExit::Exited(code),
        Ok(Completion::Trap(report)) => CellExit::Trapped(report),
        Ok(Completion::Fail(FailureKind::OutOfMemory, _)) => {
            return Err(fail(CellError::OutOfMemory {
                limit: format_size(config.memory_limit),
            }));
        }
        Ok(Completion::Fail(FailureKind::Instantiate, message)) => {
            return Err(fail(CellError::Instantiate(message)));
        }
        Ok(Completion::Fail(FailureKind::CallError, message)) => {
            return Err(fail(CellError::CallError(message)));
        }
        Ok(Completion::Fail(FailureKind::Runtime, message)) => {
            return Err(fail(CellError::Runtime(message)));
        }
        Ok(Completion::Stopped(StopReason::Timeout)) => {
            return Err(fail(CellError::Timeout(config.timeout.unwrap_or_default())));
        }
        Ok(Completion::Stopped(StopReason::Signal(signal))) => {
            return Err(fail(CellError::Stopped(signal)));
        }
        Ok(Completion::OutputLimit) => return Err(fail(output_limit())),
        Ok(Completion::Resume | Completion::Unhandled | Completion::TemplateReady) => {
            unreachable!("the run loop only returns final completions")
        }
        Err(error) => return Err(fail(error)),
    };
    match drained {
        Ok(_) if output_exceeded => Err(fail(output_limit())),
        Ok(_) => Ok(CellReport {
            exit,
            denied_growth,
            stats,
            template,
        }),
        Err(error) => Err(fail(error.into())),
    }
}

/// Runs the vCPU on a thread of its own under the seccomp filter, while this thread
/// supervises it: it stops the cell when its time limit passes or a stop is asked for,
/// and has buffered output handed over every [`DRAIN_INTERVAL`] while the guest
/// computes.
fn run_on_vcpu_thread<'a>(
    mut vcpu: Vcpu,
    memory: &GuestMemory,
    mut services: Services<'a>,
    trap_handler: GuestAddress,
    module: &MappedModule<'_>,
    runner: Option<&VcpuRunner>,
    requests: Requests<'_, '_>,
) -> (Result<Completion, CellError>, Vcpu, Services<'a>) {
    let control = services.control.clone();
    let output = services.output;
    // A joined cell's channel windows lie past its heap: shared, not its own.
    let own_end = services.growth.as_ref().map_or(memory.size(), |g| g.end);
    let vm = services.growth.as_ref().map(|growth| growth.vm);
    // The vCPU's part, on a thread confined by the seccomp filter (`confine` makes it
    // so, or says why it is not).
    let work = move |confine: &dyn Fn() -> Result<(), SeccompError>| {
        // However the vCPU's part ends, a panic included, the supervisor learns of it.
        let _finish = FinishOnDrop(services.control.clone());
        // Binding installs the kick's signal handler, which the filter refuses.
        let binding = vcpu.bind_to_current_thread();
        services.control.attach(vcpu.handle());
        let outcome = match confine() {
            Ok(()) => run_loop(&mut vcpu, memory, &mut services, trap_handler, module),
            Err(error) => Err(CellError::Seccomp(error)),
        };
        drop(binding);
        (outcome, vcpu, services)
    };
    let watch = || {
        let cell = Supervised {
            memory,
            vm,
            module,
            own_end,
        };
        supervise(&control, &cell, output, requests)
    };
    match runner {
        Some(runner) => runner
            .run(move |confined| work(&|| confined.clone()), watch)
            // A started runner ends only when its owner drops it.
            .expect("the thread kept for a partition's vCPU outlives it"),
        None => std::thread::scope(|scope| {
            let runner = std::thread::Builder::new()
                .name("hypercell-vcpu".into())
                .spawn_scoped(scope, move || work(&seccomp::install_vcpu_filter))
                .expect("the host can start a thread for the vCPU");
            watch();
            match runner.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }),
    }
}

/// Tells a cell's control, when dropped on its vCPU thread, that the vCPU's part has
/// ended.
struct FinishOnDrop(CellControl);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.detach();
        self.0.finish();
    }
}

/// Longest time output may wait in the guest's buffer while the program computes.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// A cell's requests, as its supervisor sees them: each has the time limit, and a
/// cell that serves several takes each next one from `next`.
struct Requests<'s, 'n> {
    timeout: Option<Duration>,
    next: Option<&'s mut NextRequests<'n>>,
}

/// What a cell's supervisor reaches of it.
struct Supervised<'a, 'm> {
    memory: &'a GuestMemory,
    /// The partition, where the cell's memory can grow (and so be migrated).
    vm: Option<&'a Vm>,
    module: &'a MappedModule<'m>,
    /// End of the cell's own memory (its channel windows follow).
    own_end: u64,
}

/// Watches a running cell until its vCPU thread finishes, handing a cell that serves
/// requests each next one, with its own time limit.
fn supervise(
    control: &CellControl,
    cell: &Supervised<'_, '_>,
    output: GuestAddress,
    Requests { timeout, mut next }: Requests<'_, '_>,
) {
    let (memory, own_end) = (cell.memory, cell.own_end);
    let module = &cell.module.region;
    let mut deadline = timeout.and_then(|limit| Instant::now().checked_add(limit));
    loop {
        match control.wait_for_tick(Instant::now() + DRAIN_INTERVAL, deadline) {
            Wake::Finished => return,
            Wake::Boundary(reply) => {
                let request = next.as_mut().and_then(|next| next());
                match request {
                    // A new request has the whole time limit.
                    Some(_) => {
                        deadline = timeout.and_then(|limit| Instant::now().checked_add(limit))
                    }
                    // Told once that none comes, the cell is not asked again, and its
                    // time runs on: a guest that asks again and again still ends.
                    None => next = None,
                }
                let _ = reply.send(request);
            }
            Wake::Stopping => {
                // A vCPU thread waiting for its next request is not in the guest,
                // where a kick would reach it.
                control.refuse_next_request();
                control.kick();
                if control.wait_for_finish(Instant::now() + KICK_INTERVAL) {
                    return;
                }
            }
            Wake::Timeout if deadline.is_some_and(|d| Instant::now() >= d) => {
                control.stop(StopReason::Timeout);
            }
            Wake::Timeout => {
                let pending = memory.mem().read_obj::<u64>(output).unwrap_or(0);
                if pending != 0 {
                    control.request_drain();
                }
            }
            Wake::Precopy(PrecopyStep::Start, reply) => precopy_start(control, cell, &reply),
            Wake::Precopy(PrecopyStep::Round, reply) => {
                let _ = reply.send(precopy_round(cell));
            }
            Wake::Precopy(PrecopyStep::End, reply) => {
                let _ = reply.send(precopy_end(cell));
            }
            Wake::Measure(replies) => {
                // As the report counts it: the compiled module, shared page cache, left
                // out.
                let end = module.end.next_multiple_of(4096);
                let touched =
                    memory.resident_bytes(0..module.start) + memory.resident_bytes(end..own_end);
                for reply in replies {
                    let _ = reply.send(touched);
                }
            }
        }
    }
}

/// Begins a pre-copy of a running cell (see [`CellControl::precopy_start`]) on its
/// supervising thread: logging comes on before the pages are copied, so a page written
/// during the copy is copied again in the next round. The pieces go to `reply` as they
/// are copied, until the asker stops taking them.
fn precopy_start(control: &CellControl, cell: &Supervised<'_, '_>, reply: &PrecopyReply) {
    let Some(vm) = cell.vm else {
        let _ = reply.send(Err(SnapshotError::NotRunning));
        return;
    };
    if let Err(error) = vm.set_dirty_logging(true) {
        let _ = reply.send(Err(error.into()));
        return;
    }
    cell.memory.track_host_writes(true);
    let module = cell.module;
    MemoryImage::capture_in_pieces(
        cell.memory,
        cell.own_end,
        module.region.clone(),
        module.bytes,
        module.base,
        PRECOPY_PIECE,
        |piece| {
            reply
                .send(Ok(piece))
                .is_ok()
                .then(|| control.piece_buffer())
        },
    );
}

/// Takes a round of a pre-copy of a running cell (see [`CellControl::precopy_start`]),
/// on its supervising thread: what KVM logs and the host marks is taken before the
/// pages are copied, so a page written during the copy is copied again in the next
/// round.
fn precopy_round(cell: &Supervised<'_, '_>) -> Result<MemoryImage, SnapshotError> {
    let vm = cell.vm.ok_or(SnapshotError::NotRunning)?;
    let pages = written_pages(vm, cell.memory, cell.own_end)?;
    Ok(MemoryImage::capture_pages(
        cell.memory,
        cell.module.region.clone(),
        &pages,
    ))
}

/// Ends a pre-copy, on the cell's supervising thread: KVM and the host stop logging
/// its writes. Answers with no pages.
fn precopy_end(cell: &Supervised<'_, '_>) -> Result<MemoryImage, SnapshotError> {
    let vm = cell.vm.ok_or(SnapshotError::NotRunning)?;
    vm.set_dirty_logging(false)?;
    cell.memory.track_host_writes(false);
    Ok(MemoryImage::capture_pages(
        cell.memory,
        cell.module.region.clone(),
        &[],
    ))
}

/// The pages of the cell's own memory (below `end`) that the guest or the host wrote
/// since they were last asked, sorted.
fn written_pages(vm: &Vm, memory: &GuestMemory, end: u64) -> Result<Vec<u64>, SnapshotError> {
    let mut pages = vm.take_dirty_pages()?;
    pages.extend(memory.take_host_written());
    pages.retain(|&page| page < end);
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}

/// Runs the guest until its program ends. `trap_handler` is where the guest runtime
/// writes its trap entry and stack (see [`BootInfo::trap_entry`]).
fn run_loop(
    vcpu: &mut Vcpu,
    memory: &GuestMemory,
    services: &mut Services<'_>,
    trap_handler: GuestAddress,
    module: &MappedModule<'_>,
) -> Result<Completion, CellError> {
    // The exception last handed to the runtime's trap entry, until the runtime's next
    // hypercall: a second exception before it means trap handling itself failed.
    let mut handed_over: Option<GuestException> = None;
    let control = services.control.clone();
    loop {
        // A pause can stop the guest anywhere, even halfway through a record of output:
        // what it hands over meanwhile goes through the same check as a kick's.
        let mut drained = Ok(false);
        control.park_while_paused(|request| match request {
            ParkRequest::Drain => {
                if let Ok(false) = drained {
                    drained = services.drain_between_calls(memory);
                }
            }
            // Its neighbours' state is not the cell's to save; a pipeline's checkpoint
            // saves stdio's channels, and named channels are saved by none.
            ParkRequest::Snapshot(reply, scope)
                if services.channels.any()
                    && (scope != SnapshotScope::WithNeighbours
                        || !services.channels.named.is_empty()) =>
            {
                let _ = reply.send(Err(SnapshotError::Joined));
            }
            ParkRequest::Snapshot(reply, scope) => {
                let _ = reply.send(snapshot(vcpu, memory, services, module, scope));
            }
        });
        if drained? {
            return Ok(Completion::OutputLimit);
        }
        if let Some(reason) = services.control.stop_requested() {
            return Ok(Completion::Stopped(reason));
        }
        let event = vcpu.run(memory)?;
        control.count_exit();
        match event {
            VcpuEvent::Hypercall(addr) => match services.handle(memory, addr)? {
                Completion::Resume => {
                    handed_over = None;
                    if let Some(root) = services.growth.as_mut().and_then(|g| g.switch_to.take()) {
                        vcpu.switch_tables(root)?;
                    }
                }
                Completion::TemplateReady => {
                    let template = snapshot(vcpu, memory, services, module, SnapshotScope::Whole)
                        .map_err(|e| CellError::Runtime(e.to_string()))?;
                    return Ok(Completion::Template(Box::new(template)));
                }
                Completion::Unhandled => {
                    return Err(handed_over.map_or(
                        CellError::Hypercall(HypercallError::NoException),
                        CellError::Fault,
                    ));
                }
                done => return Ok(done),
            },
            VcpuEvent::Kicked => {
                if services.control.take_drain() && services.drain_between_calls(memory)? {
                    return Ok(Completion::OutputLimit);
                }
            }
            VcpuEvent::Exception(exception) => {
                if let Some(first) = handed_over {
                    return Err(CellError::Fault(first));
                }
                let Some((entry, stack)) =
                    trap_entry(memory, trap_handler).filter(|_| exception.user_mode)
                else {
                    return Err(CellError::Fault(exception));
                };
                let address = exception.cr2;
                vcpu.enter_trap_handler(
                    entry,
                    stack,
                    [
                        exception.rip,
                        exception.frame_pointer,
                        u64::from(address.is_some()),
                        address.unwrap_or(0),
                        u64::from(exception.vector),
                    ],
                )?;
                handed_over = Some(exception);
            }
            VcpuEvent::Unmapped(addr) => return Err(CellError::Unmapped(addr.0)),
            VcpuEvent::Shutdown => return Err(CellError::TripleFault),
            VcpuEvent::InternalError => return Err(CellError::Emulation),
            VcpuEvent::Unexpected(what) => return Err(CellError::UnexpectedExit(what)),
        }
    }
}

/// Puts a snapshot's memory, memory mappings and vCPU state into a fresh cell of the
/// same layout (its memory over `base`'s, when it holds only the changes made since
/// that), or, `in_place`, only its bookkeeping into a partition already put back to it
/// (see [`Partition::reset_to`]). Everything in it is checked: it is input from outside.
fn restore_state(
    snapshot: &CellSnapshot,
    base: Option<&MemoryImage>,
    module: ModuleIdentity,
    memory: &GuestMemory,
    vcpu: &mut Vcpu,
    growth: &mut MemoryGrowth<'_>,
    in_place: bool,
) -> Result<(), CellError> {
    let bad = |what: &str| CellError::Snapshot(what.to_string());
    if snapshot.module != module {
        return Err(bad("it was taken of a cell running other compiled code"));
    }
    if snapshot.memory.size != memory.size() {
        return Err(bad(
            "it was taken of a cell of another memory size (another module or memory limit)",
        ));
    }
    let saved = &snapshot.services.growth;
    let aligned = |end: u64| end.is_multiple_of(LARGE_PAGE_SIZE) || end == memory.size();
    if saved.mapped > memory.size()
        || saved.mapped < growth.boot_mapping
        || !aligned(saved.mapped)
        || saved.ready > saved.mapped
    {
        return Err(bad("its mapped memory does not fit the cell"));
    }
    let tables = ReservationTables::from_state(&saved.tables)
        .ok_or_else(|| bad("its page-table bookkeeping lies outside the table pool"))?;
    if saved.mapped > growth.mapped {
        if !in_place {
            growth
                .vm
                .map_memory(memory, growth.next_slot, growth.mapped..saved.mapped)?;
        }
        growth.next_slot += 1;
        growth.mapped = saved.mapped;
    }
    growth.ready = saved.ready;
    growth.linear_memory = saved.linear_memory;
    growth.tables = tables;
    if in_place {
        return Ok(());
    }
    if let Some(base) = base {
        base.restore_into(memory)
            .map_err(|e| bad(&format!("its base: {e}")))?;
    }
    snapshot
        .memory
        .restore_into(memory)
        .map_err(|e| bad(&e.to_string()))?;
    vcpu.restore_state(&state_now(snapshot, vcpu.tsc_khz()?))?;
    // A snapshot of a reused partition's cell runs on that run's copy of the tables.
    let root = snapshot.vcpu.sregs.cr3;
    if !hypercell_vmm::paging::is_tables_root(root) {
        return Err(bad("its page tables lie outside the system region"));
    }
    memory.set_tables_root(root);
    Ok(())
}

/// The vCPU state of `snapshot`, with its time-stamp counter moved on by the time
/// since the snapshot was taken: the guest's clocks run on it, so realtime is current
/// and monotonic time keeps going. (On PVM the guest reads the host's counter
/// natively, which has moved on by itself.)
fn state_now(snapshot: &CellSnapshot, tsc_khz: u32) -> hypercell_vmm::VcpuState {
    let mut state = snapshot.vcpu.clone();
    let since_ns = realtime_ns().saturating_sub(snapshot.taken_at_ns);
    let ticks = u128::from(since_ns) * u128::from(tsc_khz) / 1_000_000;
    for msr in state.msrs.iter_mut().filter(|msr| msr.index == IA32_TSC) {
        msr.data = msr.data.wrapping_add(ticks as u64);
    }
    state
}

/// The time-stamp counter's model-specific register.
const IA32_TSC: u32 = 0x10;

/// Nanoseconds since the Unix epoch, now.
fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Where the compiled module lies in guest memory, and its bytes, which a snapshot
/// leaves out where the guest did not change them.
struct MappedModule<'a> {
    region: std::ops::Range<u64>,
    bytes: &'a [u8],
    /// What names the compiled code.
    identity: ModuleIdentity,
    /// The cell's identity region, which the snapshot records.
    identity_capacity: u64,
    /// The memory image the cell was restored from, if it was: its pages are the
    /// cell's wherever the cell did not write.
    base: Option<&'a MemoryImage>,
}

/// A snapshot of a cell whose vCPU is parked between exits.
fn snapshot(
    vcpu: &Vcpu,
    memory: &GuestMemory,
    services: &mut Services<'_>,
    module: &MappedModule<'_>,
    scope: SnapshotScope,
) -> Result<CellSnapshot, SnapshotError> {
    // What the program wrote goes out first, so that the snapshot holds only what is
    // still to come (a record half written stays in memory, for the guest to finish).
    let _ = services.drain_between_calls(memory);
    let template = services.template_stop;
    let vm = services.growth.as_ref().map(|growth| growth.vm);
    let own_end = services.growth.as_ref().map_or(memory.size(), |g| g.end);
    let vcpu = vcpu.save_state()?;
    let services = services.save_state()?;
    let memory = match scope {
        SnapshotScope::Whole | SnapshotScope::WithNeighbours => MemoryImage::capture(
            memory,
            services.growth.mapped,
            module.region.clone(),
            module.bytes,
            module.base,
        ),
        SnapshotScope::Changes => MemoryImage::capture_written(
            memory,
            services.growth.mapped,
            module.region.clone(),
            module.base,
        )
        .map_err(SnapshotError::Scan)?,
        SnapshotScope::Dirty => {
            let vm = vm.ok_or(SnapshotError::NotRunning)?;
            let pages = written_pages(vm, memory, own_end)?;
            MemoryImage::capture_pages(memory, module.region.clone(), &pages)
        }
    };
    Ok(CellSnapshot {
        module: module.identity,
        template,
        taken_at_ns: realtime_ns(),
        identity_capacity: module.identity_capacity,
        vcpu,
        services,
        memory,
    })
}

/// The trap entry and stack the guest runtime registered, if it did and both lie in
/// the cell's user memory.
fn trap_entry(memory: &GuestMemory, at: GuestAddress) -> Option<(u64, u64)> {
    let [entry, stack]: [u64; 2] = memory.mem().read_obj(at).ok()?;
    let user = IMAGE_BASE..memory.size();
    (user.contains(&entry) && stack > IMAGE_BASE && stack <= memory.size())
        .then_some((entry, stack))
}

fn load_error(error: impl std::fmt::Display) -> CellError {
    CellError::Load(error.to_string())
}

/// End of the guest image's highest loadable segment.
fn image_end(elf: &[u8]) -> Result<u64, CellError> {
    let header = |offset: usize, len: usize| -> Result<u64, CellError> {
        let bytes = elf
            .get(offset..offset + len)
            .ok_or_else(|| load_error("the guest ELF is truncated"))?;
        let mut padded = [0u8; 8];
        padded[..len].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(padded))
    };
    let phoff = header(0x20, 8)? as usize;
    let phentsize = header(0x36, 2)? as usize;
    let phnum = header(0x38, 2)? as usize;
    let mut end = 0;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if header(ph, 4)? == 1 {
            end = end.max(header(ph + 0x10, 8)? + header(ph + 0x28, 8)?);
        }
    }
    Ok(end)
}

/// What each stdio stream is connected to: a channel is a pipe to the program.
fn stdio_kinds(stdio: &CellStdio<'_>, channels: &CellChannels<'_>) -> [u8; 3] {
    let mut kinds = stdio.kinds();
    for (stream, end) in [(0, channels.stdin), (1, channels.stdout)] {
        if end.is_some() {
            kinds[stream] = StdioKind::Other as u8;
        }
    }
    kinds
}

/// A named channel's record as the guest reads it: its fields in order, little-endian,
/// with no padding (64 bytes).
fn named_channel_bytes(record: &NamedChannel) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size_of::<NamedChannel>());
    bytes.extend_from_slice(&record.header.to_le_bytes());
    bytes.extend_from_slice(&record.writer.to_le_bytes());
    bytes.extend_from_slice(&record.name_len.to_le_bytes());
    bytes.extend_from_slice(&record.name);
    bytes
}

/// Refuses named channels a cell cannot be given: without the `channels` component,
/// beside a directory granted as `/channels`, too many, or badly or twice named.
fn check_named_channels(config: &CellConfig, named: &[NamedChannelEnd]) -> Result<(), CellError> {
    if named.is_empty() {
        return Ok(());
    }
    if !config.components.contains(Components::CHANNELS) {
        return Err(CellError::ChannelsNotGiven);
    }
    if config
        .preopens
        .iter()
        .any(|preopen| preopen.guest == CHANNELS_DIRECTORY)
    {
        return Err(CellError::ChannelsDirectoryTaken);
    }
    for (i, channel) in named.iter().enumerate() {
        let repeated = named[..i].iter().any(|other| other.name == channel.name);
        if i >= MAX_NAMED_CHANNELS || repeated || !is_channel_name(channel.name.as_bytes()) {
            return Err(CellError::ChannelName(channel.name.clone()));
        }
    }
    Ok(())
}

fn boot_bytes(boot: &BootInfo) -> &[u8] {
    // SAFETY: BootInfo is repr(C) plain data made only of integers and byte arrays,
    // with explicit padding fields, so all of its bytes are initialised.
    unsafe {
        std::slice::from_raw_parts(
            (boot as *const BootInfo).cast::<u8>(),
            size_of::<BootInfo>(),
        )
    }
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
