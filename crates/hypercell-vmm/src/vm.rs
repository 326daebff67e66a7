//! The partition: a KVM VM with the cell's memory in one slot.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};

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
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|e| VmError::SetMemory(e.into()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
