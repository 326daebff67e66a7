//! WASI clocks, served from the time-stamp counter without leaving the cell.

use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

use hypercell_abi::BootInfo;
use hypercell_abi::hypercall::RESULT_RESTART;

static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(1);
static REALTIME_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static MONOTONIC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
static PHASES: AtomicU64 = AtomicU64::new(0);

/// Start-up phases, in the order of [`hypercell_abi::GuestPhases`]'s fields.
#[derive(Clone, Copy)]
pub enum Phase {
    Entered = 0,
    RuntimeReady = 1,
    ModuleLoaded = 2,
    Instantiated = 3,
    Finished = 4,
}

/// Records that `phase` was reached now, for the host's start-up breakdown.
pub fn mark(phase: Phase) {
    let phases = PHASES.load(Ordering::Relaxed);
    if phases == 0 {
        return;
    }
    let slot = (phases + phase as u64 * 8) as *mut u64;
    // SAFETY: the host reserved a `GuestPhases` block (five u64s) at `phases` for the
    // guest to write; `phase` indexes one of its fields.
    unsafe { slot.write_volatile(rdtsc()) };
}

/// WASI clock ids.
pub const REALTIME: u32 = 0;
pub const MONOTONIC: u32 = 1;
pub const PROCESS_CPUTIME: u32 = 2;
pub const THREAD_CPUTIME: u32 = 3;

fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions and runs natively at CPL 3.
    unsafe { _rdtsc() }
}

pub fn init(boot: &BootInfo) {
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
    TSC_KHZ.store(boot.tsc_khz.max(1), Ordering::Relaxed);
    REALTIME_AT_BOOT.store(boot.realtime_ns, Ordering::Relaxed);
    MONOTONIC_AT_BOOT.store(boot.monotonic_ns, Ordering::Relaxed);
    PHASES.store(boot.phases_addr, Ordering::Relaxed);
    mark(Phase::Entered);
}

/// Nanoseconds since the guest started.
pub fn elapsed_ns() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000 / u128::from(TSC_KHZ.load(Ordering::Relaxed))) as u64
}

/// The current time of clock `id`, or `None` for an unknown clock.
///
/// The cell has one vCPU that runs only while its program does, so its process and
/// thread CPU time is the time since the program started.
pub fn now(id: u32) -> Option<u64> {
    let elapsed = elapsed_ns();
    Some(match id {
        REALTIME => REALTIME_AT_BOOT.load(Ordering::Relaxed) + elapsed,
        MONOTONIC => MONOTONIC_AT_BOOT.load(Ordering::Relaxed) + elapsed,
        PROCESS_CPUTIME | THREAD_CPUTIME => elapsed,
        _ => return None,
    })
}

/// The resolution of clock `id` in nanoseconds, or `None` for an unknown clock.
pub fn resolution(id: u32) -> Option<u64> {
    (id <= THREAD_CPUTIME).then(|| (1_000_000 / TSC_KHZ.load(Ordering::Relaxed)).max(1))
}

/// Waits `ns` nanoseconds: short waits spin (an exit costs more), longer ones ask the
/// host to sleep. A sleep the host abandons for a snapshot is asked for again with the
/// time left, by this clock, which in a restored cell has moved on by the time since.
pub fn sleep(ns: u64) {
    const SPIN_LIMIT_NS: u64 = 200_000;
    let end = elapsed_ns().saturating_add(ns);
    loop {
        let left = end.saturating_sub(elapsed_ns());
        if left == 0 {
            return;
        }
        if left <= SPIN_LIMIT_NS {
            while elapsed_ns() < end {
                core::hint::spin_loop();
            }
            return;
        }
        let asked = [left, 0, 0, 0, 0, 0];
        if crate::hypercall::call_once(hypercell_abi::Hypercall::Sleep, asked) != RESULT_RESTART {
            return;
        }
    }
}
