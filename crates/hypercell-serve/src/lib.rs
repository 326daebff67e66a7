//! `hypercell serve`: HTTP requests answered each in a fresh hardware-isolated cell.
//!
//! A handler is a WASI command following WAGI's conventions (CGI's, for WebAssembly):
//! the request reaches it as environment variables, arguments and stdin, and it writes
//! its response to stdout as headers, a blank line and the body. The server makes the
//! handler a template once, stopped where its program starts, and runs every request in
//! a cell started from that template, in a partition put back to it after each request.
#![deny(unsafe_op_in_unsafe_fn)]

mod access_log;
pub mod cgi;
mod front;
mod handler;
mod pool;

pub use access_log::AccessLog;
pub use front::{ServeOptions, serve};
pub use handler::{Handler, HandlerError, HandlerKind};
pub use pool::PoolLimits;
