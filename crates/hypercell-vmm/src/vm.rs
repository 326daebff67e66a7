//! The partition: a KVM VM with the cell's memory in one slot.

use std::io;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};

use crate::{GuestMemory, Vcpu, VcpuError};

/// Errors creating a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error(
        "/dev/kvm does not exist: this machine has no KVM; run Hypercell on a Linux host with virtualization enabled"
    )]
    KvmMissing,
    /// /dev/kvm cannot be opened by this user.
    #[error(
        "/dev/kvm is not accessible to this user; add the user to the `kvm` group or grant access to /dev/kvm"
    )]
    KvmDenied,
    /// Opening /dev/kvm failed for another reason.
    #[error("could not open /dev/kvm: {0}")]
    KvmOpen(io::Error),
    /// KVM_CREATE_VM failed.
    #[error("KVM could not create a VM: {0}")]
    CreateVm(io::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM could not map the cell's memory: {0}")]
    SetMemory(io::Error),
}

/// One KVM VM.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates a VM.
    pub fn new() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(|e| {
            let e = io::Error::from(e);
            match e.kind() {
                io::ErrorKind::NotFound => VmError::KvmMissing,
                io::ErrorKind::PermissionDenied => VmError::KvmDenied,
                _ => VmError::KvmOpen(e),
            }
        })?;
        let fd = kvm.create_vm().map_err(|e| VmError::CreateVm(e.into()))?;
        Ok(Self { fd })
    }

    /// Maps `memory` at guest-physical address 0.
    pub fn set_memory(&self, memory: &GuestMemory) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: memory.size(),
            userspace_addr: memory.host_address(),
        };
        // SAFETY: the region describes `memory`'s own mapping, which outlives the VM as
        // long as the caller keeps `memory` alive while the VM runs (the cell owns both
        // and drops the VM first).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| VmError::SetMemory(e.into()))
    }

    /// Creates the cell's one vCPU.
    pub fn create_vcpu(&self) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(0)
            .map_err(|e| VcpuError::Create(e.into()))?;
        Ok(Vcpu::new(fd))
    }
}
