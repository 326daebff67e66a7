//! The vCPU: its start-up state (64-bit mode at CPL 3), the run loop, and KVM exits
//! turned into [`VcpuEvent`]s.

use std::cell::Cell;
use std::io;
use std::sync::{Arc, Mutex, Once, PoisonError};

use hypercell_abi::layout::{EXCEPTION_PORT_BASE, EXCEPTION_VECTORS, HYPERCALL_PORT};
use kvm_bindings::{
    CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, Msrs,
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, kvm_xcr, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;
use crate::state::{SAVED_MSRS, VcpuState, XSAVE_WORDS};
use crate::system::{
    SystemTables, TSS_LIMIT, TSS_SELECTOR, USER_CODE_SELECTOR, USER_DATA_SELECTOR,
};

/// The request numbers of the ioctls the run loop issues.
mod ioctl_numbers {
    use kvm_bindings::{kvm_regs, kvm_sregs};

    /// KVM's ioctl type number.
    const KVMIO: u32 = 0xae;

    vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    vmm_sys_util::ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    vmm_sys_util::ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_bindings::kvm_userspace_memory_region
    );
    vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_bindings::kvm_msrs);
    vmm_sys_util::ioctl_ior_nr!(
        KVM_GET_VCPU_EVENTS,
        KVMIO,
        0x9f,
        kvm_bindings::kvm_vcpu_events
    );
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_bindings::kvm_xsave);
    vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_bindings::kvm_xcrs);
    vmm_sys_util::ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
}

/// The ioctls a running cell issues: `KVM_RUN`, reading registers after an exception
/// ([`Vcpu::run`]), sending the guest to its trap entry ([`Vcpu::enter_trap_handler`]),
/// mapping memory as the guest grows ([`crate::Vm::map_memory`]), reading the rest of
/// its state for a snapshot ([`Vcpu::save_state`]), and reading the pages it wrote
/// while a migration copies it ([`crate::Vm::take_dirty_pages`]). A seccomp filter on
/// the thread that runs the vCPU allows these and no other ioctl.
pub fn run_ioctls() -> [u64; 11] {
    use ioctl_numbers::{
        KVM_GET_DIRTY_LOG, KVM_GET_MSRS, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS,
        KVM_GET_XCRS, KVM_GET_XSAVE, KVM_RUN, KVM_SET_REGS, KVM_SET_SREGS,
        KVM_SET_USER_MEMORY_REGION,
    };
    [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_REGS(),
        KVM_GET_SREGS(),
        KVM_SET_SREGS(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_GET_MSRS(),
        KVM_GET_VCPU_EVENTS(),
        KVM_GET_XSAVE(),
        KVM_GET_XCRS(),
        KVM_GET_DIRTY_LOG(),
    ]
    .map(u64::from)
}

/// Errors of the vCPU itself (not of the guest).
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("KVM could not create the cell's vCPU: {0}")]
    Create(io::Error),
    /// Setting the vCPU's start-up state failed.
    #[error("KVM refused the cell's start-up CPU state ({what}): {source}")]
    Configure {
        /// Which register set.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// KVM_RUN failed.
    #[error("KVM_RUN failed: {0}")]
    Run(io::Error),
    /// Reading vCPU state after an exit failed.
    #[error("could not read the cell's CPU state: {0}")]
    State(io::Error),
}

/// A CPU exception the guest raised, as reported by its CPL 0 stub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestException {
    /// Exception vector (0-31).
    pub vector: u8,
    /// Error code, for the vectors that push one.
    pub error_code: Option<u64>,
    /// Address of the faulting instruction.
    pub rip: u64,
    /// Faulting linear address, for page faults.
    pub cr2: Option<u64>,
    /// The frame pointer (`rbp`) at the fault, for walking the guest's stack.
    pub frame_pointer: u64,
    /// Whether the faulting code ran at CPL 3 (not in an exception stub).
    pub user_mode: bool,
}

impl GuestException {
    /// The exception's conventional name.
    pub fn name(&self) -> &'static str {
        match self.vector {
            0 => "divide error (#DE)",
            1 => "debug exception (#DB)",
            2 => "non-maskable interrupt",
            3 => "breakpoint (#BP)",
            4 => "overflow (#OF)",
            5 => "bound range exceeded (#BR)",
            6 => "invalid opcode (#UD)",
            7 => "device not available (#NM)",
            8 => "double fault (#DF)",
            10 => "invalid TSS (#TS)",
            11 => "segment not present (#NP)",
            12 => "stack-segment fault (#SS)",
            13 => "general protection fault (#GP)",
            14 => "page fault (#PF)",
            16 => "x87 floating-point error (#MF)",
            17 => "alignment check (#AC)",
            18 => "machine check (#MC)",
            19 => "SIMD floating-point exception (#XM)",
            20 => "virtualization exception (#VE)",
            21 => "control protection exception (#CP)",
            _ => "reserved exception",
        }
    }
}

impl std::fmt::Display for GuestException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at rip {:#x}", self.name(), self.rip)?;
        if let Some(code) = self.error_code {
            write!(f, ", error code {code:#x}")?;
        }
        if let Some(cr2) = self.cr2 {
            write!(f, ", address {cr2:#x}")?;
        }
        Ok(())
    }
}

/// What stopped the vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    /// The guest made a hypercall; the request is at this guest-physical address.
    Hypercall(GuestAddress),
    /// The guest raised a CPU exception.
    Exception(GuestException),
    /// The guest touched a guest-physical address that no memory slot maps.
    Unmapped(GuestAddress),
    /// [`VcpuHandle::kick`] interrupted the vCPU.
    Kicked,
    /// The guest triple-faulted.
    Shutdown,
    /// KVM could not emulate a guest instruction.
    InternalError,
    /// Any other exit, described.
    Unexpected(String),
}

/// CR4 bit that lets the guest use XSAVE-managed state such as AVX.
const CR4_OSXSAVE: u64 = 1 << 18;
/// XCR0 bits: x87, SSE and AVX register state.
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// The CPUID leaves (function, index) a vCPU with AVX is given: the highest leaf, the
/// feature flags (SSE to AVX, XSAVE, FMA), the structured flags (AVX2, BMI) and the
/// XSAVE area's layout.
const AVX_CPUID_LEAVES: [(u32, u32); 6] = [(0, 0), (1, 0), (7, 0), (0xd, 0), (0xd, 1), (0xd, 2)];

/// The CPL 3 code and data segments every cell runs in.
fn user_segments() -> (kvm_segment, kvm_segment) {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: USER_DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    (code, data)
}

/// Vectors for which the CPU pushes an error code.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs (null when none), which
    /// the kick handler sets: a kick that lands after the run loop last looked, but
    /// before `KVM_RUN` enters the guest, still makes `KVM_RUN` return at once.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal used to interrupt KVM_RUN and blocking system calls of the vCPU's thread.
/// Installs the process's handler of the signal that kicks vCPUs out of the guest,
/// once: [`Vcpu::bind_to_current_thread`] does, and a thread that binds vCPUs only
/// after a seccomp filter that refuses `rt_sigaction` calls this first.
pub fn prepare_kicks() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Installed without SA_RESTART, so blocking calls return EINTR.
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .expect("registering a real-time signal handler cannot fail");
    });
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let flag = IMMEDIATE_EXIT.with(Cell::get);
    if !flag.is_null() {
        // SAFETY: the pointer is set only while this thread's `VcpuThread` binding
        // lives, and it points into the vCPU's `kvm_run` mapping, which outlives the
        // binding (the binding borrows nothing, but the vCPU is dropped only after the
        // thread that runs it has ended or unbound). A byte store is signal-safe.
        unsafe { flag.write_volatile(1) };
    }
}

/// Interrupts a vCPU from other threads: its `KVM_RUN` returns
/// [`VcpuEvent::Kicked`], and a blocking system call of its thread returns `EINTR`.
/// Kicks never reach a thread that no longer runs the vCPU.
#[derive(Clone, Debug)]
pub struct VcpuHandle {
    thread: Arc<Mutex<Option<libc::pthread_t>>>,
}

impl VcpuHandle {
    /// Kicks the vCPU; false if no thread runs it now (none yet, or it is done).
    pub fn kick(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = *thread else {
            return false;
        };
        // SAFETY: the thread is registered only while its `VcpuThread` binding lives,
        // and the binding unregisters it under this lock before the thread can end, so
        // the id names a live thread. The signal's handler only sets `immediate_exit`.
        unsafe { libc::pthread_kill(thread, kick_signal()) };
        true
    }
}

/// The current thread's claim to run a vCPU; kicks reach this thread until it drops.
#[must_use = "kicks stop reaching the thread when the binding drops"]
pub struct VcpuThread {
    thread: Arc<Mutex<Option<libc::pthread_t>>>,
}

impl Drop for VcpuThread {
    fn drop(&mut self) {
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = None;
        IMMEDIATE_EXIT.with(|flag| flag.set(std::ptr::null_mut()));
    }
}

/// The cell's one vCPU.
pub struct Vcpu {
    fd: VcpuFd,
    exits: u64,
    thread: Arc<Mutex<Option<libc::pthread_t>>>,
    /// Whether KVM takes general and special registers through `kvm_run`'s sync area
    /// at the next `KVM_RUN` (`KVM_CAP_SYNC_REGS`), saving an ioctl for each.
    sync_regs: bool,
    /// Whether registers put in the sync area await the next `KVM_RUN`: until then
    /// they, not KVM's, are the vCPU's.
    regs_in_sync_area: bool,
    /// Whether special registers put in the sync area await the next `KVM_RUN`.
    sregs_in_sync_area: bool,
    /// The special registers the host last put, which a CPL 3 guest cannot change:
    /// what a switch of tables starts from, saving an ioctl to ask KVM.
    known_sregs: Option<kvm_sregs>,
    /// The TSC frequency once asked for: nothing here sets it, and each ioctl costs a
    /// reused partition's every run a load of the vCPU.
    tsc_khz: std::sync::OnceLock<u32>,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, sync_regs: bool) -> Self {
        Self {
            fd,
            exits: 0,
            thread: Arc::new(Mutex::new(None)),
            sync_regs,
            regs_in_sync_area: false,
            sregs_in_sync_area: false,
            known_sregs: None,
            tsc_khz: std::sync::OnceLock::new(),
        }
    }

    /// A handle that kicks this vCPU from any thread.
    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle {
            thread: self.thread.clone(),
        }
    }

    /// Makes the current thread the one that runs this vCPU and receives its kicks,
    /// until the returned binding drops. Installs the kick signal's handler, so call
    /// it before a seccomp filter that refuses `rt_sigaction`.
    pub fn bind_to_current_thread(&mut self) -> VcpuThread {
        prepare_kicks();
        let flag = std::ptr::addr_of_mut!(self.fd.get_kvm_run().immediate_exit);
        IMMEDIATE_EXIT.with(|cell| cell.set(flag));
        // SAFETY: pthread_self has no preconditions.
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(unsafe { libc::pthread_self() });
        VcpuThread {
            thread: self.thread.clone(),
        }
    }

    /// Puts the vCPU in 64-bit mode at CPL 3 at `rip`, with stack `rsp` and `rdi` as
    /// its first argument.
    pub fn configure(
        &mut self,
        tables: &SystemTables,
        rip: u64,
        rsp: u64,
        rdi: u64,
    ) -> Result<(), VcpuError> {
        let configure = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|e| VcpuError::Configure {
                what,
                source: e.into(),
            })
        };
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::State(e.into()))?;
        let (code, data) = user_segments();
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = kvm_segment {
            base: tables.tss_base,
            limit: TSS_LIMIT,
            selector: TSS_SELECTOR,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 0,
            l: 0,
            g: 0,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.ldt = kvm_segment {
            type_: 0x2,
            present: 0,
            unusable: 1,
            ..sregs.tr
        };
        sregs.ldt.base = 0;
        sregs.ldt.limit = 0;
        sregs.ldt.selector = 0;
        sregs.gdt.base = tables.gdt_base;
        sregs.gdt.limit = tables.gdt_limit;
        sregs.idt.base = tables.idt_base;
        sregs.idt.limit = tables.idt_limit;
        sregs.cr3 = tables.cr3;
        // PE | MP | ET | NE | WP | AM | PG
        sregs.cr0 = 0x8005_0033;
        // PAE | OSFXSR | OSXMMEXCPT
        sregs.cr4 = 0x620;
        // LME | LMA
        sregs.efer = 0x500;
        configure("special registers", self.fd.set_sregs(&sregs))?;
        self.known_sregs = Some(sregs);

        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        configure("FPU", self.fd.set_fpu(&fpu))?;

        let regs = kvm_regs {
            rip,
            rsp,
            rdi,
            // IOPL 0: the TSS I/O bitmap decides which ports CPL 3 may use. Bit 1 is
            // reserved and set.
            rflags: 0x2,
            ..Default::default()
        };
        configure("registers", self.fd.set_regs(&regs))
    }

    /// Turns on the AVX register state, so that code compiled with AVX runs in the guest
    /// on any x86 KVM: the host's CPUID leaves that describe the vector extensions and
    /// their XSAVE layout, CR4.OSXSAVE, and XCR0 = x87 | SSE | AVX. (KVM refuses an XCR0
    /// with AVX until the vCPU's CPUID has XSAVE.) Only those leaves are given: asking
    /// KVM for its whole supported table costs 0.3 ms, more than a cell's boot.
    pub(crate) fn enable_avx(&mut self) -> Result<(), VcpuError> {
        let configure = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|e| VcpuError::Configure {
                what,
                source: e.into(),
            })
        };
        self.set_avx_cpuid()?;
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::State(e.into()))?;
        sregs.cr4 |= CR4_OSXSAVE;
        configure("special registers", self.fd.set_sregs(&sregs))?;
        self.known_sregs = Some(sregs);
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: XCR0_X87 | XCR0_SSE | XCR0_AVX,
        };
        configure("XCR0", self.fd.set_xcrs(&xcrs))
    }

    /// Gives the vCPU the host's CPUID leaves that describe AVX and its XSAVE layout.
    fn set_avx_cpuid(&self) -> Result<(), VcpuError> {
        let entries: Vec<kvm_cpuid_entry2> = AVX_CPUID_LEAVES
            .iter()
            .map(|&(function, index)| {
                let leaf = std::arch::x86_64::__cpuid_count(function, index);
                kvm_cpuid_entry2 {
                    function,
                    index,
                    flags: if matches!(function, 7 | 0xd) {
                        KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                    } else {
                        0
                    },
                    eax: leaf.eax,
                    ebx: leaf.ebx,
                    ecx: leaf.ecx,
                    edx: leaf.edx,
                    padding: [0; 3],
                }
            })
            .collect();
        let cpuid = CpuId::from_entries(&entries).map_err(|_| VcpuError::Configure {
            what: "CPUID",
            source: io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| VcpuError::Configure {
                what: "CPUID",
                source: e.into(),
            })
    }

    /// The vCPU's complete state. Call it while the vCPU is out of the guest, after an
    /// exit or a kick.
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let state = |e: kvm_ioctls::Error| VcpuError::State(e.into());
        let entries: Vec<kvm_msr_entry> = SAVED_MSRS
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| VcpuError::State(io::Error::from_raw_os_error(libc::E2BIG)))?;
        let read = self.fd.get_msrs(&mut msrs).map_err(state)?;
        let regs = if self.regs_in_sync_area {
            self.fd.sync_regs().regs
        } else {
            self.fd.get_regs().map_err(state)?
        };
        let sregs = if self.sregs_in_sync_area {
            self.fd.sync_regs().sregs
        } else {
            self.fd.get_sregs().map_err(state)?
        };
        Ok(VcpuState {
            regs,
            sregs,
            xsave: self.fd.get_xsave().map_err(state)?.region.to_vec(),
            xcrs: self.fd.get_xcrs().map_err(state)?,
            msrs: msrs.as_slice()[..read].to_vec(),
            events: self.fd.get_vcpu_events().map_err(state)?,
        })
    }

    /// Puts `state` into this vCPU, which then goes on where the saved one stopped.
    /// The vCPU must not have run yet.
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        if state.xcrs.xcrs[0].value & XCR0_AVX != 0 {
            // The CPUID that allows AVX state, before XCR0 is restored below.
            self.set_avx_cpuid()?;
        }
        self.put_state(state)
    }

    /// Puts `state`, which this vCPU was restored to before, back into it after it ran:
    /// the general, special and vector registers. The rest of the saved state (XCR0,
    /// the MSRs) is out of a CPL 3 guest's reach and still as restored, and the time-
    /// stamp counter has moved on with real time as it would have. Each ioctl costs
    /// about 5 µs on PVM: where KVM has the sync area, the general and special
    /// registers go there for the next `KVM_RUN` to take, and only XSAVE is an ioctl.
    /// CR3 becomes `tables_root`: the saved one, or a copy of its tables (see
    /// [`crate::ReservationTables::fresh_copy`]).
    pub fn reset_state(&mut self, state: &VcpuState, tables_root: u64) -> Result<(), VcpuError> {
        self.put_registers(state, tables_root)?;
        self.set_xsave(state)
    }

    /// The general and special registers of `state`, with CR3 at `tables_root`,
    /// through the sync area where KVM has it.
    fn put_registers(&mut self, state: &VcpuState, tables_root: u64) -> Result<(), VcpuError> {
        let mut sregs = state.sregs;
        sregs.cr3 = tables_root;
        if self.sync_regs {
            let sync = self.fd.sync_regs_mut();
            sync.regs = state.regs;
            sync.sregs = sregs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            self.regs_in_sync_area = true;
            self.sregs_in_sync_area = true;
        } else {
            let configure = |what, r: Result<(), kvm_ioctls::Error>| {
                r.map_err(|e| VcpuError::Configure {
                    what,
                    source: e.into(),
                })
            };
            configure("special registers", self.fd.set_sregs(&sregs))?;
            configure("registers", self.fd.set_regs(&state.regs))?;
        }
        self.known_sregs = Some(sregs);
        Ok(())
    }

    fn put_state(&mut self, state: &VcpuState) -> Result<(), VcpuError> {
        let configure = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|e| VcpuError::Configure {
                what,
                source: e.into(),
            })
        };
        self.put_registers(state, state.sregs.cr3)?;
        configure("XCR0", self.fd.set_xcrs(&state.xcrs))?;
        self.set_xsave(state)?;
        let msrs = Msrs::from_entries(&state.msrs)
            .map_err(|_| VcpuError::State(io::Error::from_raw_os_error(libc::E2BIG)))?;
        let written = self.fd.set_msrs(&msrs).map_err(|e| VcpuError::Configure {
            what: "MSRs",
            source: e.into(),
        })?;
        if written != state.msrs.len() {
            return Err(VcpuError::Configure {
                what: "MSRs",
                source: io::Error::other(format!(
                    "KVM took {written} of {} registers",
                    state.msrs.len()
                )),
            });
        }
        configure("events", self.fd.set_vcpu_events(&state.events))
    }

    fn set_xsave(&self, state: &VcpuState) -> Result<(), VcpuError> {
        let mut xsave = kvm_xsave::default();
        if state.xsave.len() != XSAVE_WORDS {
            return Err(VcpuError::Configure {
                what: "XSAVE state",
                source: io::Error::other(format!(
                    "{} words where KVM's region has {XSAVE_WORDS}",
                    state.xsave.len()
                )),
            });
        }
        xsave.region.copy_from_slice(&state.xsave);
        // SAFETY: `xsave` is a whole `kvm_xsave` with nothing past its fixed region, and
        // KVM reads only that region (no extended XSAVE was enabled).
        unsafe { self.fd.set_xsave(&xsave) }.map_err(|e| VcpuError::Configure {
            what: "XSAVE state",
            source: e.into(),
        })
    }

    /// Has the vCPU go on with CR3 at `tables_root`, tables that map all the current
    /// ones do (see [`crate::ReservationTables::fresh_copy`]).
    pub fn switch_tables(&mut self, tables_root: u64) -> Result<(), VcpuError> {
        let state = |e: kvm_ioctls::Error| VcpuError::State(e.into());
        // Special registers waiting in the sync area are the known ones too.
        let mut sregs = match self.known_sregs {
            Some(known) => known,
            None => self.fd.get_sregs().map_err(state)?,
        };
        sregs.cr3 = tables_root;
        self.known_sregs = Some(sregs);
        if self.sync_regs {
            self.fd.sync_regs_mut().sregs = sregs;
            self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            self.sregs_in_sync_area = true;
            return Ok(());
        }
        self.fd.set_sregs(&sregs).map_err(state)
    }

    /// Leaves the exception stub the guest is in and resumes it at CPL 3 at `entry`, on
    /// the stack whose top is `stack`, with `args` as the first five arguments of the
    /// System V calling convention. This is how a guest exception reaches the runtime's
    /// own trap handling; the stub's frame is abandoned, as the entry never returns to
    /// it.
    pub fn enter_trap_handler(
        &mut self,
        entry: u64,
        stack: u64,
        args: [u64; 5],
    ) -> Result<(), VcpuError> {
        let state = |e: kvm_ioctls::Error| VcpuError::State(e.into());
        let mut sregs = self.fd.get_sregs().map_err(state)?;
        let (code, data) = user_segments();
        sregs.cs = code;
        sregs.ss = data;
        self.fd.set_sregs(&sregs).map_err(state)?;
        self.known_sregs = Some(sregs);
        let [rdi, rsi, rdx, rcx, r8] = args;
        let regs = kvm_regs {
            rip: entry,
            // As after a `call`: the entry sees a return address slot's misalignment.
            rsp: (stack & !15) - 8,
            rdi,
            rsi,
            rdx,
            rcx,
            r8,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(state)
    }

    /// Number of exits (returns from KVM_RUN) so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// The guest's time-stamp counter frequency in kHz.
    pub fn tsc_khz(&self) -> Result<u32, VcpuError> {
        if let Some(&khz) = self.tsc_khz.get() {
            return Ok(khz);
        }
        let khz = self
            .fd
            .get_tsc_khz()
            .map_err(|e| VcpuError::State(e.into()))?;
        Ok(*self.tsc_khz.get_or_init(|| khz))
    }

    /// Runs the guest until its next exit.
    pub fn run(&mut self, memory: &GuestMemory) -> Result<VcpuEvent, VcpuError> {
        // KVM takes registers waiting in the sync area as it enters the guest.
        let regs_were_waiting = std::mem::take(&mut self.regs_in_sync_area);
        let sregs_were_waiting = std::mem::take(&mut self.sregs_in_sync_area);
        let exit = self.fd.run();
        self.exits += 1;
        let port = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == HYPERCALL_PORT && data.len() == 4 {
                    let addr = u32::from_le_bytes(data.try_into().expect("4 bytes"));
                    return Ok(VcpuEvent::Hypercall(GuestAddress(u64::from(addr))));
                }
                port
            }
            Ok(VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _)) => {
                return Ok(VcpuEvent::Unmapped(GuestAddress(addr)));
            }
            Ok(VcpuExit::Shutdown) => return Ok(VcpuEvent::Shutdown),
            Ok(VcpuExit::InternalError) => return Ok(VcpuEvent::InternalError),
            Ok(other) => return Ok(VcpuEvent::Unexpected(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A kick that came first returns before the guest is entered, the
                // registers still waiting; KVM clears the bits once it took them.
                let dirty = self.fd.get_kvm_run().kvm_dirty_regs;
                self.regs_in_sync_area =
                    regs_were_waiting && dirty & u64::from(KVM_SYNC_X86_REGS) != 0;
                self.sregs_in_sync_area =
                    sregs_were_waiting && dirty & u64::from(KVM_SYNC_X86_SREGS) != 0;
                // The kick that interrupted this run is consumed; the next enters.
                self.fd.set_kvm_immediate_exit(0);
                return Ok(VcpuEvent::Kicked);
            }
            Err(e) => return Err(VcpuError::Run(e.into())),
        };
        if (EXCEPTION_PORT_BASE..EXCEPTION_PORT_BASE + EXCEPTION_VECTORS).contains(&port) {
            let vector = (port - EXCEPTION_PORT_BASE) as u8;
            return self.exception(vector, memory).map(VcpuEvent::Exception);
        }
        Ok(VcpuEvent::Unexpected(format!("an `out` to port {port:#x}")))
    }

    /// Reads the exception frame the CPU pushed on the CPL 0 stack.
    fn exception(&self, vector: u8, memory: &GuestMemory) -> Result<GuestException, VcpuError> {
        let regs = self.fd.get_regs().map_err(|e| VcpuError::State(e.into()))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::State(e.into()))?;
        let frame = |index: u64| -> u64 {
            memory
                .mem()
                .read_obj(GuestAddress(regs.rsp.wrapping_add(index * 8)))
                .unwrap_or(0)
        };
        let (error_code, rip, cs) = if has_error_code(vector) {
            (Some(frame(0)), frame(1), frame(2))
        } else {
            (None, frame(0), frame(1))
        };
        Ok(GuestException {
            vector,
            error_code,
            rip,
            cr2: (vector == 14).then_some(sregs.cr2),
            frame_pointer: regs.rbp,
            user_mode: cs & 3 == 3,
        })
    }
}

#[cfg(test)]
mod tests {
    use hypercell_abi::layout::{IMAGE_BASE, LARGE_PAGE_SIZE, SYSTEM_BASE};

    use super::*;
    use crate::Vm;
    use crate::system::write_system_region;

    /// Runs raw machine code at CPL 3 in a fresh 16 MiB cell until its first exit.
    fn run_code(code: &[u8]) -> VcpuEvent {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let vm = Vm::new().unwrap();
        vm.set_memory(&memory).unwrap();
        let tables = write_system_region(&memory, &[]).unwrap();
        memory
            .mem()
            .write_slice(code, GuestAddress(IMAGE_BASE))
            .unwrap();
        let mut vcpu = vm.create_vcpu().unwrap();
        vcpu.configure(&tables, IMAGE_BASE, IMAGE_BASE + LARGE_PAGE_SIZE, 0)
            .unwrap();
        vcpu.run(&memory).unwrap()
    }

    fn exception(code: &[u8]) -> GuestException {
        match run_code(code) {
            VcpuEvent::Exception(exception) => exception,
            other => panic!("expected an exception, got {other:?}"),
        }
    }

    #[test]
    fn a_hypercall_carries_its_request_address() {
        // mov eax, 0x601000; mov dx, HYPERCALL_PORT; out dx, eax
        let [lo, hi] = HYPERCALL_PORT.to_le_bytes();
        let code = [0xb8, 0x00, 0x10, 0x60, 0x00, 0x66, 0xba, lo, hi, 0xef];
        assert_eq!(
            run_code(&code),
            VcpuEvent::Hypercall(GuestAddress(0x60_1000))
        );
    }

    #[test]
    fn an_invalid_opcode_is_reported_with_its_address() {
        let fault = exception(&[0x90, 0x0f, 0x0b]); // nop; ud2
        assert_eq!(
            (fault.vector, fault.rip, fault.error_code),
            (6, IMAGE_BASE + 1, None)
        );
        assert!(fault.to_string().contains("invalid opcode"));
    }

    #[test]
    fn a_null_dereference_is_a_page_fault_at_address_zero() {
        let fault = exception(&[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0]); // mov rax, [0]
        assert_eq!(
            (fault.vector, fault.cr2, fault.rip),
            (14, Some(0), IMAGE_BASE)
        );
        assert_eq!(
            fault.error_code,
            Some(0b100),
            "a user-mode read of a missing page"
        );
    }

    #[test]
    fn the_page_tables_cannot_be_written_from_the_cell() {
        // mov [SYSTEM_BASE], rax
        let addr = (SYSTEM_BASE as u32).to_le_bytes();
        let fault = exception(&[0x48, 0x89, 0x04, 0x25, addr[0], addr[1], addr[2], addr[3]]);
        assert_eq!((fault.vector, fault.cr2), (14, Some(SYSTEM_BASE)));
        assert_eq!(
            fault.error_code,
            Some(0b111),
            "a user-mode write to a present page"
        );
    }

    #[test]
    fn ports_other_than_the_hypercall_port_are_refused() {
        let fault = exception(&[0xe6, 0x80]); // out 0x80, al
        assert_eq!((fault.vector, fault.error_code), (13, Some(0)));
    }

    #[test]
    fn privileged_instructions_fault() {
        assert_eq!(exception(&[0xf4]).vector, 13); // hlt
        assert_eq!(exception(&[0xfa]).vector, 13); // cli
        assert_eq!(exception(&[0x0f, 0x22, 0xd8]).vector, 13); // mov cr3, rax
    }

    #[test]
    fn a_kick_interrupts_an_endless_loop() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let vm = Vm::new().unwrap();
        vm.set_memory(&memory).unwrap();
        let tables = write_system_region(&memory, &[]).unwrap();
        memory
            .mem()
            .write_slice(&[0xeb, 0xfe], GuestAddress(IMAGE_BASE))
            .unwrap(); // jmp $
        let mut vcpu = vm.create_vcpu().unwrap();
        vcpu.configure(&tables, IMAGE_BASE, IMAGE_BASE + LARGE_PAGE_SIZE, 0)
            .unwrap();
        let handle = vcpu.handle();
        assert!(!handle.kick(), "no thread runs the vCPU yet");
        let binding = vcpu.bind_to_current_thread();
        // Kicked at once, most likely before KVM_RUN is entered: immediate_exit keeps
        // the kick from being lost.
        let kicking = std::thread::spawn(move || handle.kick());
        assert_eq!(vcpu.run(&memory).unwrap(), VcpuEvent::Kicked);
        assert!(kicking.join().unwrap());
        drop(binding);
        assert!(
            !vcpu.handle().kick(),
            "kicks never reach a thread that let go"
        );
    }

    /// Where the vector test keeps its inputs (three vectors of four f64) and its result.
    const VECTORS: u64 = IMAGE_BASE + 0x1000;
    /// The request address the vector test's final hypercall carries.
    const DONE: u32 = 0x1234;

    /// `ymm2 = (ymm2 + ymm3) * ymm4`, `iterations` times, with the counter in rcx; then
    /// the result is stored after the inputs and a hypercall reports the end.
    fn vector_loop(iterations: u64) -> Vec<u8> {
        let mut code = vec![0x48, 0xbb]; // mov rbx, VECTORS
        code.extend_from_slice(&VECTORS.to_le_bytes());
        code.extend_from_slice(&[0xc5, 0xfd, 0x10, 0x1b]); // vmovupd ymm3, [rbx]
        code.extend_from_slice(&[0xc5, 0xfd, 0x10, 0x53, 0x20]); // vmovupd ymm2, [rbx+32]
        code.extend_from_slice(&[0xc5, 0xfd, 0x10, 0x63, 0x40]); // vmovupd ymm4, [rbx+64]
        code.extend_from_slice(&[0x48, 0xb9]); // mov rcx, iterations
        code.extend_from_slice(&iterations.to_le_bytes());
        code.extend_from_slice(&[0xc5, 0xed, 0x58, 0xd3]); // vaddpd ymm2, ymm2, ymm3
        code.extend_from_slice(&[0xc5, 0xed, 0x59, 0xd4]); // vmulpd ymm2, ymm2, ymm4
        code.extend_from_slice(&[0x48, 0xff, 0xc9, 0x75, 0xf3]); // dec rcx; jnz back 13
        code.extend_from_slice(&[0xc5, 0xfd, 0x11, 0x53, 0x60]); // vmovupd [rbx+96], ymm2
        let [lo, hi] = HYPERCALL_PORT.to_le_bytes();
        code.extend_from_slice(&[0x66, 0xba, lo, hi, 0xb8]); // mov dx, port; mov eax, DONE
        code.extend_from_slice(&DONE.to_le_bytes());
        code.extend_from_slice(&[0xef, 0xeb, 0xfe]); // out dx, eax; jmp $
        code
    }

    /// Memory holding the vector loop and its inputs, with system tables; and a VM on it.
    fn vector_cell(iterations: u64) -> (GuestMemory, Vm, Vcpu) {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let vm = Vm::new().unwrap();
        vm.set_memory(&memory).unwrap();
        let tables = write_system_region(&memory, &[]).unwrap();
        let mem = memory.mem();
        mem.write_slice(&vector_loop(iterations), GuestAddress(IMAGE_BASE))
            .unwrap();
        let inputs: [f64; 12] = [
            1e-9,
            2e-9,
            3e-9,
            4e-9, // ymm3
            1.0,
            2.0,
            3.0,
            4.0, // ymm2
            0.999_999_9,
            0.999_999_8,
            0.999_999_7,
            0.999_999_6, // ymm4
        ];
        for (i, value) in inputs.iter().enumerate() {
            mem.write_obj(value.to_bits(), GuestAddress(VECTORS + 8 * i as u64))
                .unwrap();
        }
        let mut vcpu = vm.create_vcpu().unwrap();
        vcpu.configure(&tables, IMAGE_BASE, IMAGE_BASE + LARGE_PAGE_SIZE, 0)
            .unwrap();
        vm.enable_avx(&mut vcpu).unwrap();
        (memory, vm, vcpu)
    }

    fn vector_result(memory: &GuestMemory) -> [u8; 32] {
        memory.mem().read_obj(GuestAddress(VECTORS + 96)).unwrap()
    }

    #[test]
    fn a_vcpu_paused_mid_computation_goes_on_bit_identically_in_another_vm() {
        const ITERATIONS: u64 = 100_000_000;
        let (reference_memory, _vm, mut reference) = vector_cell(ITERATIONS);
        assert_eq!(
            reference.run(&reference_memory).unwrap(),
            VcpuEvent::Hypercall(GuestAddress(u64::from(DONE)))
        );
        let expected = vector_result(&reference_memory);

        // Kick the vCPU until a kick lands inside the loop, with AVX state live.
        let (memory, first_vm, mut first) = vector_cell(ITERATIONS);
        let binding = first.bind_to_current_thread();
        let handle = first.handle();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kicking = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    handle.kick();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        let saved = loop {
            match first.run(&memory).unwrap() {
                VcpuEvent::Kicked => {
                    let state = first.save_state().unwrap();
                    if (1..ITERATIONS).contains(&state.regs.rcx) {
                        break state;
                    }
                }
                other => panic!("the loop ended before a kick landed in it: {other:?}"),
            }
        };
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        kicking.join().unwrap();
        drop(binding);
        drop(first);
        drop(first_vm);
        assert_eq!(saved.xcrs.xcrs[0].value & XCR0_AVX, XCR0_AVX);

        // Through bytes, into a new VM on the same memory, and on to the end.
        let bytes = postcard::to_allocvec(&saved).unwrap();
        let restored: VcpuState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(restored, saved);
        let vm = Vm::new().unwrap();
        vm.set_memory(&memory).unwrap();
        let mut vcpu = vm.create_vcpu().unwrap();
        vcpu.restore_state(&restored).unwrap();
        assert_eq!(vcpu.save_state().unwrap().regs, saved.regs);
        assert_eq!(
            vcpu.run(&memory).unwrap(),
            VcpuEvent::Hypercall(GuestAddress(u64::from(DONE)))
        );
        assert_eq!(vector_result(&memory), expected);
    }

    #[test]
    fn a_state_with_a_short_xsave_region_is_refused() {
        let (_memory, _vm, vcpu) = vector_cell(1);
        let mut state = vcpu.save_state().unwrap();
        state.xsave.truncate(10);
        let (_memory, _vm, mut fresh) = vector_cell(1);
        let error = fresh.restore_state(&state).unwrap_err().to_string();
        assert!(error.contains("10 words"), "{error}");
    }
}
