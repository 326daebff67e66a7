//! What wasmtime's custom-platform build needs from the guest: TLS slots, code memory,
//! CPU feature answers; plus the panic handler.

use core::arch::asm;
use core::fmt::Write;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use hypercell_abi::hypercall::FailureKind;
use hypercell_abi::{BootInfo, CpuFeatures, Hypercall};

static CPU_FEATURES: AtomicU32 = AtomicU32::new(0);
static TLS: [AtomicPtr<u8>; 2] = [
    AtomicPtr::new(core::ptr::null_mut()),
    AtomicPtr::new(core::ptr::null_mut()),
];

pub fn init(boot: &BootInfo) {
    CPU_FEATURES.store(boot.cpu_features, Ordering::Relaxed);
}

/// Whether the host reported `feature` (one of [`CpuFeatures`]'s bits) for this cell.
pub fn has_feature(feature: u32) -> bool {
    CPU_FEATURES.load(Ordering::Relaxed) & feature != 0
}

/// Answers wasmtime's CPU feature checks from the host's report; executing `cpuid`
/// would cost an exit per question.
pub fn detect_cpu_feature(name: &str) -> Option<bool> {
    CpuFeatures::bit(name).map(has_feature)
}

/// Stops the guest with an invalid-opcode fault, which the host reports.
pub fn halt() -> ! {
    loop {
        // SAFETY: `ud2` only raises #UD, which the CPL 0 stubs report to the host.
        unsafe { asm!("ud2", options(nomem, nostack)) }
    }
}

/// wasmtime's TLS getter: the cell has one thread, so a static per slot suffices.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_tls_get(slot: usize) -> *mut u8 {
    TLS[slot].load(Ordering::Relaxed)
}

/// wasmtime's TLS setter.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_tls_set(slot: usize, ptr: *mut u8) {
    TLS[slot].store(ptr, Ordering::Relaxed);
}

/// The prebuilt `alloc` references the unwinder even with `panic = "abort"`; the guest
/// never unwinds.
#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    halt()
}

/// Referenced by the prebuilt `core` even with `panic = "abort"`; never called.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

/// Code memory for wasmtime: guest memory is mapped read-write-execute at CPL 3 by the
/// host (2 MiB pages leave no room for finer permissions), so publishing is a no-op.
pub struct GuestCodeMemory;

impl wasmtime::CustomCodeMemory for GuestCodeMemory {
    fn required_alignment(&self) -> usize {
        1
    }

    fn publish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }

    fn unpublish_executable(&self, _ptr: *const u8, _len: usize) -> wasmtime::Result<()> {
        Ok(())
    }
}

/// Formats into a fixed buffer, so reporting works even with the heap exhausted.
pub struct FixedBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FixedBuffer<N> {
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> Write for FixedBuffer<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Ends the cell with a runtime failure report.
pub fn fail(kind: FailureKind, message: &[u8]) -> ! {
    crate::hypercall::call_final(
        Hypercall::Fail,
        [
            message.as_ptr() as u64,
            message.len() as u64,
            kind as u64,
            crate::runtime::denied_growth(),
            0,
            0,
        ],
    )
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut message = FixedBuffer::<1024>::new();
    let _ = write!(message, "{info}");
    let kind = if crate::heap::exhausted() {
        FailureKind::OutOfMemory
    } else {
        FailureKind::Runtime
    };
    fail(kind, message.as_bytes())
}
