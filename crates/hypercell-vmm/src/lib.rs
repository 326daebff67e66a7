//! Hypercell's KVM layer.
//!
//! A cell is one VM with one vCPU, started directly in 64-bit long mode at CPL 3:
//! [`memory`] allocates its huge-page-backed guest memory, [`system`] writes the page
//! tables, GDT, TSS and IDT the host owns, [`paging`] maps linear memories into the
//! reservation area, [`vm`] creates the partition, and [`vcpu`]
//! runs it and turns each KVM exit into a typed [`vcpu::VcpuEvent`]; [`vm_pool`] makes
//! VMs ahead of need.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod memory;
pub mod page_bitmap;
pub mod paging;
pub mod state;
pub mod system;
pub mod vcpu;
pub mod vm;
pub mod vm_pool;

pub use memory::{GuestMemory, GuestMemoryMap, HostWrites, MemoryError};
pub use paging::{PagingError, ReservationTables};
pub use state::{TablesState, VcpuState};
pub use vcpu::{
    GuestException, Vcpu, VcpuError, VcpuEvent, VcpuHandle, VcpuThread, prepare_kicks, run_ioctls,
};
pub use vm::{CHANNEL_SLOT, FIRST_GROWTH_SLOT, Vm, VmError};
pub use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
pub use vm_pool::{FreshVm, VmPool};
