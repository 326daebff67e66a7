//! Serving one HTTP request with a wasi:http proxy component: the component is loaded
//! and pre-instantiated before the template point; each cell from the template reads
//! its request (the head from its environment, the body from stdin), instantiates the
//! component, calls its `handle`, and writes the response to stdout for the host as a
//! status line, header lines, a blank line and the body. Everything the component
//! imports is served here, in the cell, without an exit. A server that reuses cells
//! then hands the same instance its next request ([`Hypercall::NextRequest`]) rather
//! than letting the cell end.

mod bindings;
mod command;
mod platform;
mod resources;
mod streams;
mod types;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ptr::NonNull;

use hypercell_abi::http::{
    AUTHORITY_VARIABLE, BODY_LENGTH_VARIABLE, HEADERS_VARIABLE, METHOD_VARIABLE, TARGET_VARIABLE,
};
use hypercell_abi::hypercall::FailureKind;
use hypercell_abi::{BootInfo, Hypercall, TEMPLATE_STOP_START};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use crate::clock::{self, Phase};
use crate::platform::{FixedBuffer, fail};
use crate::runtime::{GrowthLimiter, fail_with, finish_with};
use bindings::wasi::http::types::{Method, Scheme};
use resources::Resources;
use types::{Body, IncomingRequest, OutgoingResponse, ResponseOutparam};

/// What the component's imports work on.
pub struct ProxyState {
    table: Resources,
    /// Bodies written in this request, by index less `body_base`.
    bodies: Vec<Body>,
    /// The index of this request's first body: indices are never reused, so that a
    /// handle an earlier request's call kept reaches nothing of this one's.
    body_base: usize,
    /// What the handler set its response to.
    response: Option<Result<OutgoingResponse, bindings::wasi::http::types::ErrorCode>>,
    limiter: GrowthLimiter,
    /// The cell's identity as of the request being handled: its environment and
    /// arguments.
    identity: BootInfo,
}

/// Serves the cell's request with the component `artifact`.
pub fn run(
    engine: &Engine,
    artifact: NonNull<[u8]>,
    boot: &BootInfo,
    boot_ptr: *const BootInfo,
) -> ! {
    // SAFETY: as for a module in `runtime::run`: the host placed an artifact its own
    // wasmtime produced, with the same configuration, in a region kept for it.
    let component = unsafe { Component::deserialize_raw(engine, artifact) }.unwrap_or_else(|e| {
        fail_with(
            FailureKind::Runtime,
            "failed to load the compiled component",
            &e,
        )
    });
    clock::mark(Phase::ModuleLoaded);
    let mut linker = Linker::<ProxyState>::new(engine);
    bindings::HandlerCell::add_to_linker::<ProxyState, HasSelf<ProxyState>>(
        &mut linker,
        &bindings::LinkOptions::default(),
        |state| state,
    )
    .unwrap_or_else(|e| fail_with(FailureKind::Runtime, "failed to define wasi:http", &e));
    // A command's other imports (files, sockets) trap if called; a cell has neither.
    command::refuse_files_and_sockets(&mut linker, &component, engine).unwrap_or_else(|e| {
        fail_with(
            FailureKind::Instantiate,
            "the component imports what this cell cannot define",
            &e,
        )
    });
    let pre = linker
        .instantiate_pre(&component)
        .and_then(bindings::HandlerCellPre::new)
        .unwrap_or_else(|e| {
            fail_with(
                FailureKind::Instantiate,
                "the component is not a wasi:http proxy this cell can serve",
                &e,
            )
        });
    // The instance is made before the template point, as `wasmtime serve` makes one
    // per request: each cell from the template starts with a fresh copy of it, and a
    // request pays only for its own call.
    let mut store = Store::new(
        engine,
        ProxyState {
            table: Resources::new(),
            bodies: Vec::new(),
            body_base: 0,
            response: None,
            limiter: GrowthLimiter::new(boot.wasm_memory_limit as usize),
            identity: *boot,
        },
    );
    store.limiter(|state| &mut state.limiter);
    let handler = match pre.instantiate(&mut store) {
        Ok(handler) => handler,
        Err(e) => finish_with(e),
    };
    clock::mark(Phase::Instantiated);
    // The heap grows now, once, rather than in each cell from the template, where
    // growing it is an exit: what a request needs besides its body, handed back to the
    // allocator, which keeps it.
    drop(Vec::<u8>::with_capacity(REQUEST_HEAP));
    let mut boot = if boot.template_stop == TEMPLATE_STOP_START {
        // The host takes the template here; each cell from it comes back with its own
        // request in its identity.
        crate::hypercall::call(Hypercall::Ready, [0; 6]);
        // SAFETY: as in `guest_main`: the host keeps a `BootInfo` at this address.
        let fresh = unsafe { boot_ptr.read_volatile() };
        crate::stdio::init(&fresh);
        fresh
    } else {
        // SAFETY: as above.
        unsafe { boot_ptr.read_volatile() }
    };
    loop {
        let request = read_request(&boot);
        store.data_mut().identity = boot;
        let table = &mut store.data_mut().table;
        let (request, outparam) = match (table.push(request), table.push(ResponseOutparam)) {
            (Ok(request), Ok(outparam)) => (request, outparam),
            _ => fail(
                FailureKind::Runtime,
                b"failed to hand the request to the component",
            ),
        };
        if let Err(e) = handler
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, outparam)
        {
            if e.is::<command::Ended>() {
                fail_with(FailureKind::CallError, "the handler's request ended", &e)
            }
            finish_with(e);
        }
        clock::mark(Phase::Finished);
        respond(store.data_mut());
        // A server that reuses cells hands this one its next request in place of the
        // last, in the identity and on stdin; a component that leaks its resources
        // gets a fresh cell instead.
        if boot.reuse == 0
            || store.data().table.live() > LEAKED_RESOURCES
            || crate::hypercall::call(Hypercall::NextRequest, [0; 6]) != 1
        {
            crate::stdio::exit(0)
        }
        // SAFETY: as above.
        boot = unsafe { boot_ptr.read_volatile() };
        crate::stdio::init(&boot);
        let state = store.data_mut();
        state.body_base += state.bodies.len();
        state.bodies.clear();
        state.response = None;
    }
}

/// Resources alive between requests past which a component counts as leaking them
/// (a handle it never drops), and its cell takes no more requests; the store fails a
/// call at 100,000.
const LEAKED_RESOURCES: usize = 4096;

/// Heap a request's own structures take, grown before the template point.
const REQUEST_HEAP: usize = 256 << 10;

/// The request the host wrote into this cell's environment and stdin.
fn read_request(boot: &BootInfo) -> IncomingRequest {
    // SAFETY: the host wrote `env_len` bytes of NUL-terminated `NAME=value` strings
    // there, in the cell's identity region, which nothing else writes.
    let block =
        unsafe { core::slice::from_raw_parts(boot.env_addr as *const u8, boot.env_len as usize) };
    let mut body_length = 0;
    let mut request = IncomingRequest {
        method: Method::Get,
        path_with_query: None,
        scheme: Some(Scheme::Http),
        authority: None,
        headers: Vec::new(),
        body: None,
    };
    for variable in block.split(|&b| b == 0) {
        let Some(at) = variable.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (&variable[..at], &variable[at + 1..]);
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            n if n == METHOD_VARIABLE.as_bytes() => request.method = method(&text()),
            n if n == TARGET_VARIABLE.as_bytes() => request.path_with_query = Some(text()),
            n if n == AUTHORITY_VARIABLE.as_bytes() => request.authority = Some(text()),
            n if n == BODY_LENGTH_VARIABLE.as_bytes() => body_length = text().parse().unwrap_or(0),
            n if n == HEADERS_VARIABLE.as_bytes() => {
                for line in value.split(|&b| b == b'\n') {
                    if let Some(colon) = line.iter().position(|&b| b == b':') {
                        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                        // The connection's own fields are the server's, as wasmtime
                        // keeps them from the component.
                        if types::FORBIDDEN.contains(&name.as_str()) {
                            continue;
                        }
                        let value = line[colon + 1..].trim_ascii().to_vec();
                        request.headers.push((name, value));
                    }
                }
            }
            _ => {}
        }
    }
    let mut body = alloc::vec![0u8; body_length];
    let mut read = 0;
    while read < body_length {
        match crate::stdio::read(&mut [&mut body[read..]]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(_) => fail(FailureKind::Runtime, b"failed to read the request's body"),
        }
    }
    body.truncate(read);
    request.body = Some(body);
    request
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.into()),
    }
}

/// Writes the handler's response to stdout; a handler that set none, or set an error,
/// ends the cell failed, with the reason.
fn respond(state: &mut ProxyState) {
    let response = match state.response.take() {
        Some(Ok(response)) => response,
        Some(Err(code)) => {
            let mut message = FixedBuffer::<1024>::new();
            let _ = write!(message, "the handler answered with the error {code:?}");
            fail(FailureKind::CallError, message.as_bytes())
        }
        None => fail(
            FailureKind::CallError,
            b"the handler returned without setting its response",
        ),
    };
    if !(200..600).contains(&response.status) {
        let mut message = FixedBuffer::<256>::new();
        let _ = write!(
            message,
            "the handler answered with status {}, which is no final response",
            response.status
        );
        fail(FailureKind::CallError, message.as_bytes())
    }
    // A body dropped before it was finished was abandoned: the response is corrupt.
    if let Some(body) = response.body.and_then(|index| state.body(index))
        && !body.finished
    {
        fail(
            FailureKind::CallError,
            b"the handler dropped its response body without finishing it",
        )
    }
    let mut head = Vec::new();
    let _ = write!(Buffer(&mut head), "Status: {}\r\n", response.status);
    // A field named `status` would read as the status line to the host.
    for (name, value) in response.headers.iter().filter(|(name, _)| name != "status") {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let body = response
        .body
        .and_then(|index| state.body(index))
        .map_or(&[][..], |body| &body.data[..]);
    if crate::stdio::write(1, &[&head, body]).is_err() {
        fail(FailureKind::Runtime, b"failed to write the response");
    }
}

/// `core::fmt::Write` into a byte vector.
struct Buffer<'a>(&'a mut Vec<u8>);

impl Write for Buffer<'_> {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}
