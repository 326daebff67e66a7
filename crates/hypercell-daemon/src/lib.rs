//! hypercelld: many cells in one long-running process. The [`registry`] keeps every
//! cell's record in an embedded database ([`store`]), its output in rotated files
//! ([`logs`]) and its changes as events; the [`api`] serves it over HTTP on a Unix
//! socket ([`server`]), and on TCP with a web [`console`]. `hypercell daemon` runs it; the `hypercell` client verbs (`ps`,
//! `create`, `start`, `logs`...) talk to it. Daemons move live cells between them
//! ([`migration`]).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod console;
pub mod loaded;
pub mod logs;
pub mod migration;
pub mod record;
pub mod registry;
pub mod server;
pub mod store;

pub use record::{CellRecord, CellSpec, CellState, DirSpec, Event};
pub use registry::{DaemonError, Registry};
pub use server::{DaemonOptions, ServeError, default_socket, default_state, serve};
