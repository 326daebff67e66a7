//! Boot information the host writes into a cell before its first instruction.

/// Magic value at the start of [`BootInfo`] ("HYPCELL1").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"HYPCELL1");

/// Everything the guest runtime needs to start, at the guest-physical address the host
/// passes in `rdi`. All addresses are guest-physical (equal to guest-virtual).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`crate::ABI_VERSION`] of the host that booted the cell.
    pub abi_version: u32,
    /// Bit set of [`CpuFeatures`] the guest may use.
    pub cpu_features: u32,
    /// The cell's memory limit in bytes: the heap may grow up to here (a joined cell's
    /// channel windows lie past it).
    pub memory_size: u64,
    /// First byte of the guest heap.
    pub heap_start: u64,
    /// One past the last byte of the heap that is ready at boot; beyond it, up to
    /// `memory_size`, memory is readied on request ([`crate::Hypercall::GrowMemory`]).
    pub heap_end: u64,
    /// Most bytes one wasm linear memory may grow to.
    pub wasm_memory_limit: u64,
    /// Most bytes of native stack wasm code may use.
    pub max_wasm_stack: u64,
    /// Address of the compiled module (a wasmtime artifact), aligned to 2 MiB.
    pub module_addr: u64,
    /// Length of the compiled module.
    pub module_len: u64,
    /// Program arguments: `argc` NUL-terminated strings, back to back.
    pub args_addr: u64,
    /// Length of the argument block.
    pub args_len: u64,
    /// Number of arguments.
    pub argc: u64,
    /// Environment: `envc` NUL-terminated `NAME=VALUE` strings, back to back.
    pub env_addr: u64,
    /// Length of the environment block.
    pub env_len: u64,
    /// Number of environment entries.
    pub envc: u64,
    /// Preopened directories: `preopen_count` NUL-terminated guest names, back to back,
    /// for descriptors 3, 4, ... in order.
    pub preopens_addr: u64,
    /// Length of the preopen name block.
    pub preopens_len: u64,
    /// Number of preopened directories.
    pub preopen_count: u64,
    /// Address of the hypercall request block the guest uses.
    pub request_addr: u64,
    /// Address of the [`crate::OutputBuffer`] header.
    pub output_addr: u64,
    /// Address of the [`GuestPhases`] block the guest fills as it starts up.
    pub phases_addr: u64,
    /// Time-stamp counter frequency in kHz.
    pub tsc_khz: u64,
    /// Wall-clock time (ns since the Unix epoch) at boot.
    pub realtime_ns: u64,
    /// Host monotonic clock (ns) at boot.
    pub monotonic_ns: u64,
    /// [`StdioKind`] of stdin, stdout and stderr.
    pub stdio_kinds: [u8; 3],
    /// Where the host takes a template of this cell, if it does: 0 for none,
    /// [`TEMPLATE_STOP_START`] or [`TEMPLATE_STOP_INIT`]. The runtime then makes the
    /// [`crate::Hypercall::Ready`] call at that point.
    pub template_stop: u8,
    /// The [`crate::Components`] the cell is given, as bits.
    pub components: u32,
    /// Where the host sends the vCPU when the guest raises a CPU exception: the
    /// runtime's trap entry, called with the faulting instruction's address, the frame
    /// pointer, whether a faulting address follows, that address and the vector. Zero
    /// (from the host) until the guest runtime writes it; while zero, an exception ends
    /// the cell.
    pub trap_entry: u64,
    /// Top of the stack the trap entry runs on (written by the guest with
    /// `trap_entry`).
    pub trap_stack: u64,
    /// Accessible bytes the host already mapped at the start of the reservation area
    /// for the module's first linear memory (its initial size), or 0.
    pub premapped_memory: u64,
    /// Guest-physical start of the 2 MiB pages behind `premapped_memory`; the heap
    /// starts after them.
    pub premapped_backing: u64,
    /// With [`TEMPLATE_STOP_INIT`]: the name of the export to run before the template
    /// is taken, `init_export_len` bytes of UTF-8 (not NUL-terminated).
    pub init_export_addr: u64,
    /// Length of that name.
    pub init_export_len: u64,
    /// When not 0: the program's whole stdin is the `input_len` bytes here, in the
    /// identity region (a request's body, which a server lays there when it fits), and
    /// reading it costs no exit; its end is the end of input. When 0, stdin is read
    /// from the host.
    pub input_addr: u64,
    /// Length of that input.
    pub input_len: u64,
    /// Not 0 when the host serves further requests with this cell after its first: a
    /// server's runtime then asks for the next with [`crate::Hypercall::NextRequest`]
    /// rather than ending its program.
    pub reuse: u64,
    /// When not 0: stdin is the reading end of a channel whose
    /// [`crate::ChannelHeader`] is here (see [`crate::channel`]).
    pub stdin_channel: u64,
    /// When not 0: stdout is the writing end of a channel whose header is here.
    pub stdout_channel: u64,
    /// Bytes of each channel's ring, a power of two; 0 without channels.
    pub channel_capacity: u64,
    /// The cell's named channels: `named_channel_count` [`crate::NamedChannel`]
    /// records, back to back, in the identity region (0 without any). The last
    /// preopen is then [`crate::channel::CHANNELS_DIRECTORY`], under which the program
    /// opens them by name.
    pub named_channels_addr: u64,
    /// Number of named channels, at most [`crate::channel::MAX_NAMED_CHANNELS`].
    pub named_channel_count: u64,
    /// How the module's code was compiled to keep accesses inside its linear
    /// memories: [`BOUNDS_CHECKS_GUARD_PAGES`] or [`BOUNDS_CHECKS_EXPLICIT`]. The
    /// runtime configures its engine to match, and with explicit checks asks for each
    /// linear memory's mapping up to the end of its 2 MiB page, so that growing within
    /// the page needs no exit.
    pub bounds_checks: u64,
}

/// [`BootInfo::bounds_checks`]: no checks in the code; only each memory's current size
/// is mapped, and an access past it faults.
pub const BOUNDS_CHECKS_GUARD_PAGES: u64 = 0;

/// [`BootInfo::bounds_checks`]: the code compares each access with the memory's
/// current size; more than the size may be mapped.
pub const BOUNDS_CHECKS_EXPLICIT: u64 = 1;

/// [`BootInfo::template_stop`]: the template is taken once the module is instantiated,
/// before its program runs.
pub const TEMPLATE_STOP_START: u8 = 1;

/// [`BootInfo::template_stop`]: the runtime runs the export named by
/// [`BootInfo::init_export_addr`] (after `_initialize`, if the module has one), then
/// the template is taken; cells from it go on to `_start`.
pub const TEMPLATE_STOP_INIT: u8 = 2;

/// Time-stamp counter readings the guest runtime takes as it starts a program, for the
/// host's start-up breakdown. Zero until reached. The host treats them as untrusted
/// numbers to report, nothing more.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestPhases {
    /// The runtime's first instruction.
    pub entered: u64,
    /// The engine is configured and the heap ready.
    pub runtime_ready: u64,
    /// The compiled module is loaded.
    pub module_loaded: u64,
    /// The module is instantiated; `_start` is about to run.
    pub instantiated: u64,
    /// The program finished (exit or trap).
    pub finished: u64,
}

/// What a host stdio stream is connected to; decides the WASI file type reported.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdioKind {
    /// A pipe, socket or anything else.
    Other = 0,
    /// A terminal.
    Terminal = 1,
    /// A regular file.
    File = 2,
}

/// CPU features the host has checked and the cell may use, as bits of
/// [`BootInfo::cpu_features`]. Compiled code is built for exactly the features the
/// host reports, and the guest answers wasmtime's feature checks from this set
/// instead of executing `cpuid` (an exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures;

impl CpuFeatures {
    /// SSE3.
    pub const SSE3: u32 = 1 << 0;
    /// SSSE3.
    pub const SSSE3: u32 = 1 << 1;
    /// SSE4.1.
    pub const SSE41: u32 = 1 << 2;
    /// SSE4.2.
    pub const SSE42: u32 = 1 << 3;
    /// POPCNT.
    pub const POPCNT: u32 = 1 << 4;
    /// BMI1.
    pub const BMI1: u32 = 1 << 5;
    /// BMI2.
    pub const BMI2: u32 = 1 << 6;
    /// LZCNT.
    pub const LZCNT: u32 = 1 << 7;
    /// AVX (the host enabled AVX state in XCR0 for the cell).
    pub const AVX: u32 = 1 << 8;
    /// AVX2.
    pub const AVX2: u32 = 1 << 9;
    /// FMA.
    pub const FMA: u32 = 1 << 10;
    /// RDRAND, used for `random_get` without an exit.
    pub const RDRAND: u32 = 1 << 11;
    /// CMPXCHG16B.
    pub const CMPXCHG16B: u32 = 1 << 12;

    /// Every feature by its wasmtime/`std_detect` name.
    pub const NAMES: [(&'static str, u32); 13] = [
        ("sse3", Self::SSE3),
        ("ssse3", Self::SSSE3),
        ("sse4.1", Self::SSE41),
        ("sse4.2", Self::SSE42),
        ("popcnt", Self::POPCNT),
        ("bmi1", Self::BMI1),
        ("bmi2", Self::BMI2),
        ("lzcnt", Self::LZCNT),
        ("avx", Self::AVX),
        ("avx2", Self::AVX2),
        ("fma", Self::FMA),
        ("rdrand", Self::RDRAND),
        ("cmpxchg16b", Self::CMPXCHG16B),
    ];

    /// Maps a wasmtime/`std_detect` feature name to its bit.
    pub fn bit(name: &str) -> Option<u32> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, bit)| bit)
    }
}
