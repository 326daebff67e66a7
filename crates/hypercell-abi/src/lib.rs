//! The contract between a Hypercell cell's guest runtime and its host.
//!
//! Everything here is `#[repr(C)]` plain data shared by both sides of the partition:
//! the guest-physical memory layout, the boot information the host hands the guest,
//! the hypercall request block, and the output buffer the guest fills and the host
//! drains. `docs/abi.md` describes the protocol in prose.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod channel;
pub mod components;
pub mod http;
pub mod hypercall;
pub mod layout;
pub mod output;
pub mod wasi;

pub use boot::{
    BOUNDS_CHECKS_EXPLICIT, BOUNDS_CHECKS_GUARD_PAGES, BootInfo, CpuFeatures, GuestPhases,
    StdioKind, TEMPLATE_STOP_INIT, TEMPLATE_STOP_START,
};
pub use channel::{ChannelHeader, NamedChannel};
pub use components::{Components, Needs};
pub use hypercall::{FileOp, Hypercall, HypercallRequest, IoVec};
pub use output::{OUTPUT_RECORD_HEADER, OutputBuffer};

/// Version of the ABI described by this crate; the host refuses requests that carry
/// another version.
pub const ABI_VERSION: u32 = 12;
