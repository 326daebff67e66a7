//! `containerd-shim-hypercell-v1`: containerd's shim v2 task API, with each container's
//! WebAssembly program run in a Hypercell cell, so that containerd, `ctr` and
//! Kubernetes (through containerd's CRI) run cells as they run containers.
//!
//! The runtime is named `io.containerd.hypercell.v1`. A container's `process.args[0]`
//! names the `.wasm` file in its image; its root filesystem and bind mounts become the
//! program's preopened directories; `linux.resources.memory.limit` bounds its linear
//! memory. See `docs/containerd.md`.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod container;
pub mod events;
pub mod rootfs;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod task;
pub mod templates;

/// The runtime name containerd knows the shim by.
pub const RUNTIME_NAME: &str = "io.containerd.hypercell.v1";
