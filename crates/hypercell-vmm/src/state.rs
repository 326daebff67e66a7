//! A vCPU's saved state: everything a paused vCPU needs to go on bit-identically in
//! another vCPU, in another VM or another process. It is plain data, apart from the live
//! [`crate::Vcpu`] (as Firecracker keeps its `persist.rs` types apart), and serialisable.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs};
use serde::{Deserialize, Serialize};

/// The model-specific registers a cell's vCPU state carries: the time-stamp counter,
/// the page attribute table, and the system-call and swapgs registers, which a CPL 3
/// guest cannot change but which define the state it runs in.
pub const SAVED_MSRS: [u32; 10] = [
    0x10,        // IA32_TSC
    0x277,       // IA32_PAT
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
];

/// Words in KVM's XSAVE region.
pub const XSAVE_WORDS: usize = 1024;

/// A paused vCPU's complete state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, descriptor tables, control registers and EFER.
    pub sregs: kvm_sregs,
    /// The x87, SSE and AVX registers with MXCSR: KVM's 4 KiB XSAVE region, as
    /// [`XSAVE_WORDS`] words.
    pub xsave: Vec<u32>,
    /// The extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// [`SAVED_MSRS`] and their values.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions and interrupt shadows.
    pub events: kvm_vcpu_events,
}

/// The reservation area's table bookkeeping (see [`crate::ReservationTables`]); the
/// tables themselves are guest memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablesState {
    /// Next never-used pool page (guest-physical).
    pub next: u64,
    /// Pool pages freed and not used again.
    pub free: Vec<u64>,
}
