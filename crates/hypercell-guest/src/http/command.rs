//! What a component built as a WASI command imports besides the proxy world, as
//! componentize-py's components do: its environment and arguments (the server's
//! `--env` variables and ARGS, without the request's head, which travels in the
//! environment under names of its own), exit, which ends the request as a trap does,
//! and no terminals. Its other imports (files, sockets) are defined to trap when
//! called: a cell grants a handler neither.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hypercell_abi::http::REQUEST_VARIABLE_PREFIX;
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Resource, ResourceType};

use super::ProxyState;
use super::bindings::wasi::cli::{
    environment, exit, terminal_input, terminal_output, terminal_stderr, terminal_stdin,
    terminal_stdout,
};

/// The NUL-terminated strings of a block of the cell's identity.
fn strings(addr: u64, len: u64) -> impl Iterator<Item = String> {
    // SAFETY: the host wrote `len` bytes of NUL-terminated strings at `addr`, in the
    // cell's identity region, which nothing else writes while the cell runs.
    let block = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
    block
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

impl environment::Host for ProxyState {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(strings(self.identity.env_addr, self.identity.env_len)
            .filter(|variable| !variable.starts_with(REQUEST_VARIABLE_PREFIX))
            .filter_map(|variable| {
                let (name, value) = variable.split_once('=')?;
                Some((name.into(), value.into()))
            })
            .collect())
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(strings(self.identity.args_addr, self.identity.args_len).collect())
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(None)
    }
}

impl exit::Host for ProxyState {
    fn exit(&mut self, status: Result<(), ()>) -> wasmtime::Result<()> {
        let code = if status.is_ok() { 0 } else { 1 };
        self.exit_with_code(code)
    }

    fn exit_with_code(&mut self, status_code: u8) -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Ended(format!(
            "the component exited with status {status_code}"
        ))))
    }
}

impl terminal_input::Host for ProxyState {}

impl terminal_input::HostTerminalInput for ProxyState {
    fn drop(&mut self, _: Resource<terminal_input::TerminalInput>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl terminal_output::Host for ProxyState {}

impl terminal_output::HostTerminalOutput for ProxyState {
    fn drop(&mut self, _: Resource<terminal_output::TerminalOutput>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl terminal_stdin::Host for ProxyState {
    fn get_terminal_stdin(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_input::TerminalInput>>> {
        Ok(None)
    }
}

impl terminal_stdout::Host for ProxyState {
    fn get_terminal_stdout(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        Ok(None)
    }
}

impl terminal_stderr::Host for ProxyState {
    fn get_terminal_stderr(
        &mut self,
    ) -> wasmtime::Result<Option<Resource<terminal_output::TerminalOutput>>> {
        Ok(None)
    }
}

/// Interfaces of the command world a cell grants no handler: the component may import
/// them, and a call into one traps.
const REFUSED_INTERFACES: [&str; 2] = ["wasi:filesystem/", "wasi:sockets/"];

/// Defines each function of `component`'s imports from [`REFUSED_INTERFACES`] to trap
/// with a sentence naming it, and their own resources as resources nobody can make.
/// A resource such an interface only uses from another (a stream, a pollable) is the
/// other's: it is left to the definitions already in `linker`.
pub fn refuse_files_and_sockets(
    linker: &mut Linker<ProxyState>,
    component: &Component,
    engine: &Engine,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    let refused = |name: &str| REFUSED_INTERFACES.iter().any(|p| name.starts_with(p));
    let served: Vec<ResourceType> = ty
        .imports(engine)
        .filter(|(name, _)| !refused(name))
        .filter_map(|(_, item)| match item.ty {
            ComponentItem::ComponentInstance(instance) => Some(instance),
            _ => None,
        })
        .flat_map(|instance| {
            instance
                .exports(engine)
                .filter_map(|(_, item)| match item.ty {
                    ComponentItem::Resource(resource) => Some(resource),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (name, item) in ty.imports(engine).filter(|(name, _)| refused(name)) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            continue;
        };
        let mut defined = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            match item.ty {
                // No directories: opening a file fails as with none granted.
                ComponentItem::ComponentFunc(_)
                    if name.starts_with(PREOPENS) && export == "get-directories" =>
                {
                    defined.func_wrap(export, |_, ()| {
                        Ok((Vec::<(Resource<Refused>, String)>::new(),))
                    })?;
                }
                ComponentItem::ComponentFunc(_) => {
                    let what = format!("{name}#{export}");
                    defined.func_new(export, move |_, _, _, _| {
                        Err(wasmtime::Error::new(Ended(format!(
                            "the component called `{what}`, and a cell grants a handler no files or sockets"
                        ))))
                    })?;
                }
                ComponentItem::Resource(resource) if !served.contains(&resource) => {
                    defined.resource(export, ResourceType::host::<Refused>(), |_, _| Ok(()))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The resources of the refused interfaces: no value of one is ever made.
struct Refused;

/// The interface whose directories a handler is given: none.
const PREOPENS: &str = "wasi:filesystem/preopens@";

/// Why a call into a command import ended the component's request.
#[derive(Debug)]
pub struct Ended(String);

impl core::fmt::Display for Ended {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for Ended {}
