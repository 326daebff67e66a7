//! The partition: a KVM VM with the cell's memory in one slot.

use std::ffi::CString;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hypercell_abi::layout::PAGE_SIZE;
use kvm_bindings::{KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::{GuestMemory, Vcpu, VcpuError};

/// Errors creating a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device does not exist.
    #[error(
        "{0} does not exist: this machine has no KVM; run Hypercell on a Linux host with virtualization enabled"
    )]
    KvmMissing(String),
    /// The KVM device cannot be opened by this user.
    #[error(
        "{0} is not accessible to this user; add the user to the `kvm` group or grant access to {0}"
    )]
    KvmDenied(String),
    /// Opening the KVM device failed for another reason.
    #[error("could not open {path} as a KVM device: {source}")]
    KvmOpen {
        /// The device path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// KVM_CREATE_VM failed.
    #[error("KVM could not create a VM: {0}")]
    CreateVm(io::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM could not map the cell's memory: {0}")]
    SetMemory(io::Error),
    /// A memory range outside the cell's memory or not page-aligned.
    #[error("cannot map guest memory {0:#x?}: it is empty, unaligned or outside the cell's memory")]
    BadRange(Range<u64>),
}

/// The KVM device cells are created on.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// One KVM VM.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM.
    pub fn new() -> Result<Self, VmError> {
        Self::with_device(Path::new(KVM_DEVICE))
    }

    /// Opens the KVM device at `path` and creates a VM.
    pub fn with_device(path: &Path) -> Result<Self, VmError> {
        let shown = path.display().to_string();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| VmError::KvmOpen {
            path: shown.clone(),
            source: e.into(),
        })?;
        let kvm = Kvm::new_with_path(&c_path).map_err(|e| {
            let e = io::Error::from(e);
            match e.kind() {
                io::ErrorKind::NotFound => VmError::KvmMissing(shown),
                io::ErrorKind::PermissionDenied => VmError::KvmDenied(shown),
                _ => VmError::KvmOpen {
                    path: shown,
                    source: e,
                },
            }
        })?;
        let fd = kvm.create_vm().map_err(|e| VmError::CreateVm(e.into()))?;
        Ok(Self { fd })
    }

    /// Maps the whole of `memory` at guest-physical address 0, as one memory slot.
    pub fn set_memory(&self, memory: &GuestMemory) -> Result<(), VmError> {
        self.map_memory(memory, 0, 0..memory.size())
    }

    /// Makes guest-physical `range` of `memory` visible to the guest as KVM memory slot
    /// `slot`. KVM's cost of a slot grows with its size, so cells map what boot needs
    /// and add slots as the guest grows its heap.
    pub fn map_memory(
        &self,
        memory: &GuestMemory,
        slot: u32,
        range: Range<u64>,
    ) -> Result<(), VmError> {
        if range.start >= range.end
            || range.end > memory.size()
            || !range.start.is_multiple_of(PAGE_SIZE)
            || !range.end.is_multiple_of(PAGE_SIZE)
        {
            return Err(VmError::BadRange(range));
        }
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: range.start,
            memory_size: range.end - range.start,
            userspace_addr: memory.host_address() + range.start,
        };
        // SAFETY: the region lies inside `memory`'s own mapping (checked above), which
        // outlives the VM as long as the caller keeps `memory` alive while the VM runs
        // (the cell owns both and drops the VM first).
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|e| VmError::SetMemory(e.into()))
    }

    /// Deletes memory slot `slot`: the guest no longer sees the memory it mapped.
    pub fn remove_memory(&self, slot: u32) -> Result<(), VmError> {
        let delete = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a slot of size zero maps nothing; KVM only deletes the slot.
        unsafe { self.fd.set_user_memory_region(delete) }.map_err(|e| VmError::SetMemory(e.into()))
    }

    /// Makes KVM forget every translation it cached from the guest's page tables, by
    /// deleting memory slot `slot` (which maps `range`) and creating it again: x86 KVM
    /// drops all its shadow page tables when a slot goes away. Needed before the host
    /// reuses a page-table page (see [`crate::paging`]).
    pub fn drop_shadow_tables(
        &self,
        memory: &GuestMemory,
        slot: u32,
        range: Range<u64>,
    ) -> Result<(), VmError> {
        let delete = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: range.start,
            memory_size: 0,
            userspace_addr: memory.host_address() + range.start,
        };
        // SAFETY: a slot of size zero maps nothing; KVM only deletes the slot.
        unsafe { self.fd.set_user_memory_region(delete) }
            .map_err(|e| VmError::SetMemory(e.into()))?;
        self.map_memory(memory, slot, range)
    }

    /// Turns on the AVX register state for `vcpu` (see [`Vcpu::enable_avx`]). Call it
    /// after [`Vcpu::configure`].
    pub fn enable_avx(&self, vcpu: &Vcpu) -> Result<(), VcpuError> {
        vcpu.enable_avx()
    }

    /// Creates the cell's one vCPU.
    pub fn create_vcpu(&self) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(0)
            .map_err(|e| VcpuError::Create(e.into()))?;
        let both = u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
        let synced = self.fd.check_extension_int(Cap::SyncRegs) as u64 & both == both;
        Ok(Vcpu::new(fd, synced))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestMemory;

    #[test]
    fn a_missing_kvm_device_is_named() {
        let error = Vm::with_device(Path::new("/no/such/kvm")).err().unwrap();
        assert!(matches!(error, VmError::KvmMissing(_)));
        assert!(
            error.to_string().starts_with("/no/such/kvm does not exist"),
            "{error}"
        );
    }

    #[test]
    fn memory_is_mapped_in_aligned_slots_inside_the_cell() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let vm = Vm::new().unwrap();
        vm.map_memory(&memory, 0, 0..8 << 20).unwrap();
        vm.map_memory(&memory, 1, 8 << 20..16 << 20).unwrap();
        let reversed = Range {
            start: 8192,
            end: 4096,
        };
        for bad in [0..(16 << 20) + 4096, reversed, 100..8192, 0..0] {
            assert!(matches!(
                vm.map_memory(&memory, 2, bad),
                Err(VmError::BadRange(_))
            ));
        }
    }

    #[test]
    fn a_file_that_is_not_kvm_is_refused() {
        let file = std::env::temp_dir().join(format!("not-kvm-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let error = Vm::with_device(&file).err().unwrap();
        std::fs::remove_file(&file).unwrap();
        assert!(
            matches!(error, VmError::CreateVm(_) | VmError::KvmOpen { .. }),
            "{error}"
        );
    }
}
