//! How a request reaches a wasi:http proxy component's cell and how its response comes
//! back. The request's head travels in the cell's environment, under these names, which
//! the environment a component reads leaves out; its body is
//! the cell's stdin. The guest writes the response to stdout as `Status: CODE`, header
//! lines (`name: value`, CRLF after each), a blank line and the body.

/// What the names of the variables below start with: a component that reads its
/// environment sees the others only.
pub const REQUEST_VARIABLE_PREFIX: &str = "HYPERCELL_HTTP_";
/// The request's method.
pub const METHOD_VARIABLE: &str = "HYPERCELL_HTTP_METHOD";
/// The request's path and query, as sent.
pub const TARGET_VARIABLE: &str = "HYPERCELL_HTTP_TARGET";
/// The request's authority (its `Host` header).
pub const AUTHORITY_VARIABLE: &str = "HYPERCELL_HTTP_AUTHORITY";
/// The request's headers, `name: value` each, separated by line feeds (which no field
/// value holds).
pub const HEADERS_VARIABLE: &str = "HYPERCELL_HTTP_HEADERS";
/// The length of the request's body, all of which is on stdin: a cell reads exactly
/// that much, and nothing (no exit) for an empty body.
pub const BODY_LENGTH_VARIABLE: &str = "HYPERCELL_HTTP_BODY_LENGTH";
