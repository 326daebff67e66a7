//! The partition: a KVM VM with the cell's memory in one slot.

use std::ffi::CString;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hypercell_abi::layout::{IMAGE_BASE, PAGE_SIZE, SYSTEM_BASE};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use kvm_bindings::{
    KVM_CAP_DISABLE_QUIRKS2, KVM_MEM_LOG_DIRTY_PAGES, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS,
    KVM_X86_QUIRK_SLOT_ZAP_ALL, kvm_enable_cap, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::page_bitmap::set_pages;
use crate::system::RESERVATION_PDPT_OFFSET;
use crate::{GuestMemory, Vcpu, VcpuError};

/// The memory slots of a cell's boot mapping: the memory below the reservation area's
/// page tables, those tables (up to the image), and the image onwards. The tables
/// change as linear memories grow and have a slot of their own, so that KVM can be
/// made to forget its shadows of them alone ([`Vm::drop_table_shadows`]).
const LOW_SLOT: u32 = 0;
const TABLES_SLOT: u32 = 1;
const IMAGE_SLOT: u32 = 2;
/// The slot of a cell's channel windows, past the end of its heap.
pub const CHANNEL_SLOT: u32 = 3;
/// The first slot free for memory mapped after boot.
pub const FIRST_GROWTH_SLOT: u32 = 4;
/// Where the reservation area's tables start, in guest-physical memory.
const TABLES_START: u64 = SYSTEM_BASE + RESERVATION_PDPT_OFFSET;

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
    /// KVM_GET_DIRTY_LOG failed.
    #[error("KVM could not say which of the cell's pages were written: {0}")]
    DirtyLog(io::Error),
    /// A memory range outside the cell's memory or not page-aligned.
    #[error("cannot map guest memory {0:#x?}: it is empty, unaligned or outside the cell's memory")]
    BadRange(Range<u64>),
}

/// The KVM device cells are created on.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// One KVM VM.
pub struct Vm {
    fd: VmFd,
    /// The cell's memory slots, and whether KVM logs the guest's writes to them.
    slots: Mutex<Slots>,
}

/// The memory slots of a VM, as the host set them, and their dirty logging.
#[derive(Default)]
struct Slots {
    regions: BTreeMap<u32, kvm_userspace_memory_region>,
    /// KVM logs writes to every slot but the channel windows' (shared with other
    /// cells, whose pages are not this cell's to send).
    logging: bool,
    /// Guest-physical pages logged in slots deleted since the log was last taken.
    orphaned: Vec<u64>,
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
        // By default x86 KVM drops every shadow page table whenever a slot goes away;
        // where it can be told to drop only those of the slot, dropping the reservation
        // tables' shadows leaves the rest of what the guest touched mapped. Older
        // kernels keep the default, which is correct, only slower.
        let quirks = fd.check_extension_raw(KVM_CAP_DISABLE_QUIRKS2.into()) as u64;
        if quirks & u64::from(KVM_X86_QUIRK_SLOT_ZAP_ALL) != 0 {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_DISABLE_QUIRKS2,
                ..Default::default()
            };
            cap.args[0] = KVM_X86_QUIRK_SLOT_ZAP_ALL.into();
            fd.enable_cap(&cap)
                .map_err(|e| VmError::CreateVm(e.into()))?;
        }
        Ok(Self {
            fd,
            slots: Mutex::default(),
        })
    }

    /// Maps guest-physical `0..end` of `memory`, the memory a cell boots with, as its
    /// first slots: the reservation area's page tables in one of their own (see
    /// [`Self::drop_table_shadows`]). `end` lies past the system region.
    pub fn map_boot_memory(&self, memory: &GuestMemory, end: u64) -> Result<(), VmError> {
        if end <= IMAGE_BASE {
            return Err(VmError::BadRange(0..end));
        }
        self.map_memory(memory, LOW_SLOT, 0..TABLES_START)?;
        self.map_memory(memory, TABLES_SLOT, TABLES_START..IMAGE_BASE)?;
        self.map_memory(memory, IMAGE_SLOT, IMAGE_BASE..end)
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
        let mut slots = self.slots();
        let region = kvm_userspace_memory_region {
            slot,
            flags: if slots.logging && slot != CHANNEL_SLOT {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: range.start,
            memory_size: range.end - range.start,
            userspace_addr: memory.host_address() + range.start,
        };
        // SAFETY: the region lies inside `memory`'s own mapping (checked above), which
        // outlives the VM as long as the caller keeps `memory` alive while the VM runs
        // (the cell owns both and drops the VM first).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| VmError::SetMemory(e.into()))?;
        slots.regions.insert(slot, region);
        Ok(())
    }

    /// Deletes memory slot `slot`: the guest no longer sees the memory it mapped.
    /// What KVM logged in it is kept for the next [`Self::take_dirty_pages`].
    pub fn remove_memory(&self, slot: u32) -> Result<(), VmError> {
        let mut slots = self.slots();
        if slots.logging
            && let Some(region) = slots.regions.get(&slot).copied()
            && region.flags & KVM_MEM_LOG_DIRTY_PAGES != 0
        {
            let pages = self.logged_pages(&region)?;
            slots.orphaned.extend(pages);
        }
        let delete = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a slot of size zero maps nothing; KVM only deletes the slot.
        unsafe { self.fd.set_user_memory_region(delete) }
            .map_err(|e| VmError::SetMemory(e.into()))?;
        slots.regions.remove(&slot);
        Ok(())
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Has KVM log (or stop logging) the guest's writes to the cell's memory, for
    /// [`Self::take_dirty_pages`]; slots mapped later follow. Writes the host makes
    /// through the memory's mapping are not logged (see
    /// [`crate::GuestMemory::take_host_written`]).
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmError> {
        let mut slots = self.slots();
        slots.logging = on;
        slots.orphaned.clear();
        let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        for (&slot, region) in slots.regions.iter_mut() {
            if slot == CHANNEL_SLOT || region.flags == flags {
                continue;
            }
            region.flags = flags;
            // SAFETY: the region is one this VM mapped, unchanged but for its flags.
            unsafe { self.fd.set_user_memory_region(*region) }
                .map_err(|e| VmError::SetMemory(e.into()))?;
        }
        Ok(())
    }

    /// The guest-physical pages the guest wrote since logging began or this was last
    /// asked, sorted; KVM's log starts afresh. Pages only read may be among them.
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, VmError> {
        let mut slots = self.slots();
        let mut pages = std::mem::take(&mut slots.orphaned);
        for region in slots.regions.values() {
            if region.flags & KVM_MEM_LOG_DIRTY_PAGES != 0 {
                pages.extend(self.logged_pages(region)?);
            }
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }

    /// The pages KVM logged in `region`, as guest-physical addresses; its log starts
    /// afresh.
    fn logged_pages(&self, region: &kvm_userspace_memory_region) -> Result<Vec<u64>, VmError> {
        let bitmap = self
            .fd
            .get_dirty_log(region.slot, region.memory_size as usize)
            .map_err(|e| VmError::DirtyLog(e.into()))?;
        Ok(set_pages(bitmap, region.guest_phys_addr).collect())
    }

    /// Makes KVM forget what it cached from the reservation area's page tables, after
    /// the host changed or freed them (see [`crate::paging`]), by deleting their slot
    /// (mapped by [`Self::map_boot_memory`]) and creating it again: x86 KVM drops the
    /// shadows of the page tables a slot holds when it goes away (and by default every
    /// other shadow too).
    pub fn drop_table_shadows(&self, memory: &GuestMemory) -> Result<(), VmError> {
        self.remove_memory(TABLES_SLOT)?;
        self.map_memory(memory, TABLES_SLOT, TABLES_START..IMAGE_BASE)
    }

    /// Makes KVM forget what it derived from the page tables and system structures
    /// below the image, given the guest-physical ranges the host wrote there (or put
    /// back): the reservation area's tables alone where only they changed, as they do
    /// when a linear memory grows. Returns whether anything had changed.
    pub fn drop_shadows_of(
        &self,
        memory: &GuestMemory,
        written: impl IntoIterator<Item = Range<u64>>,
    ) -> Result<bool, VmError> {
        let (mut low, mut tables) = (false, false);
        for range in written {
            low |= range.start < TABLES_START;
            tables |= range.start < IMAGE_BASE && range.end > TABLES_START;
        }
        if low {
            self.remove_memory(LOW_SLOT)?;
            self.map_memory(memory, LOW_SLOT, 0..TABLES_START)?;
        }
        if low || tables {
            self.drop_table_shadows(memory)?;
        }
        Ok(low || tables)
    }

    /// Turns on the AVX register state for `vcpu` (see [`Vcpu::enable_avx`]). Call it
    /// after [`Vcpu::configure`].
    pub fn enable_avx(&self, vcpu: &mut Vcpu) -> Result<(), VcpuError> {
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
    fn the_boot_mapping_keeps_the_reservation_tables_in_a_slot_of_their_own() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let vm = Vm::new().unwrap();
        assert!(matches!(
            vm.map_boot_memory(&memory, IMAGE_BASE),
            Err(VmError::BadRange(_))
        ));
        vm.map_boot_memory(&memory, 8 << 20).unwrap();
        // Growth slots do not overlap the boot mapping's.
        vm.map_memory(&memory, FIRST_GROWTH_SLOT, 8 << 20..16 << 20)
            .unwrap();
        let image = IMAGE_BASE..IMAGE_BASE + 4096;
        let system = SYSTEM_BASE..SYSTEM_BASE + 4096;
        assert!(!vm.drop_shadows_of(&memory, []).unwrap());
        assert!(!vm.drop_shadows_of(&memory, vec![image.clone()]).unwrap());
        let table = TABLES_START + 4096..TABLES_START + 8192;
        assert!(vm.drop_shadows_of(&memory, [table, image.clone()]).unwrap());
        assert!(vm.drop_shadows_of(&memory, [system, image]).unwrap());
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
