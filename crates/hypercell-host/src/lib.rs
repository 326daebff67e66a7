//! Hypercell cells: compile a WebAssembly program on the host, boot a KVM partition
//! with the guest runtime and the compiled code, and serve its hypercalls until the
//! program ends.
#![deny(unsafe_op_in_unsafe_fn)]

pub use hypercell_abi as abi;
pub use hypercell_engine::BoundsChecks;

pub mod cell;
pub mod channel;
pub mod compile;
pub mod config;
pub mod control;
pub mod fs;
mod guest_access;
pub mod hypercall;
pub mod identity;
pub mod layout;
pub mod persist;
mod reusable;
mod running;
pub mod seccomp;
pub mod stdio;
mod table_variants;
mod template_pages;
mod vcpu_runner;

pub use cell::{
    CellError, CellExit, CellFailure, CellPayload, CellReport, CellStats, GuestTimings,
    ResetReport, create_init_template, create_template, keep_vms_ready, restore_cell,
    restore_joined_cell, run_cell, run_cell_with_control, run_joined_cell, start_from_template,
};
pub use channel::{
    CellChannels, ChannelEnd, ChannelMemory, NamedChannelEnd, OwnedChannels, channel, channel_with,
};
pub use compile::{CacheStatus, CompileError, CompiledModule, Compiler};
pub use config::{CellConfig, ConfigError};
pub use control::{CellActivity, CellControl, StopReason};
pub use identity::NextRequest;
pub use reusable::ReusableCell;
pub use running::{Cell, OwnedStdio};
pub use stdio::CellStdio;
pub use table_variants::TableVariants;
