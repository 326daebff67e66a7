//! The handler a server runs for each request: its template, made here from a module
//! or read from a template file, its compiled code, and the configuration each of its
//! cells starts from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use hyper::http::request::Parts;
use hypercell_host::abi::http::{
    AUTHORITY_VARIABLE, BODY_LENGTH_VARIABLE, HEADERS_VARIABLE, METHOD_VARIABLE, TARGET_VARIABLE,
};
use hypercell_host::compile::is_component;

use hypercell_host::config::Components;
use hypercell_host::persist::{CellSnapshot, SnapshotFile, SnapshotFileError, TemplatePoint};
use hypercell_host::{
    BoundsChecks, CellConfig, CellError, CellPayload, CellStdio, CompileError, CompiledModule,
    Compiler, create_template,
};

use crate::cgi::{RequestError, cgi_request};

/// A handler program, ready to start a cell per request.
pub struct Handler {
    /// Where its cells start: once its module is instantiated, before its program runs.
    pub(crate) template: Arc<CellSnapshot>,
    /// Its code.
    pub(crate) module: Arc<CompiledModule>,
    /// The CPU features its code was compiled for.
    pub(crate) cpu_features: u32,
    /// What each cell starts with before the request adds its own (its arguments
    /// after these).
    base: CellConfig,
    /// A WAGI program or a wasi:http proxy.
    kind: HandlerKind,
    /// The module or template it was loaded from.
    path: PathBuf,
}

/// Why a handler cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The module could not be compiled.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The template file could not be read or does not fit this host.
    #[error(transparent)]
    Template(#[from] SnapshotFileError),
    /// The template stops later than its program's start.
    #[error(
        "template `{0}` was stopped after its program started, so it has read its arguments and environment already; a handler's template is stopped at `start`, where each request's reach the program"
    )]
    Late(PathBuf),
    /// The module failed before its template could be taken.
    #[error("the handler `{path}` failed before it could be made a template: {error}")]
    NoTemplate {
        /// The module.
        path: PathBuf,
        /// What happened.
        error: CellError,
    },
    /// The cells would have no stdout to answer on.
    #[error("the handler `{0}` has no `stdio` component, and a handler answers on stdout")]
    NoStdio(PathBuf),
    /// A scratch file for the template could not be written.
    #[error("cannot write the handler's template to a scratch file: {0}")]
    Scratch(#[source] std::io::Error),
}

impl Handler {
    /// The handler at `path`: a template made by `hypercell template create` (at
    /// `start`), or a module, which is made a template here, compiled with `checks`
    /// (by default, [`HandlerKind::default_bounds_checks`]). Its cells start from
    /// `base`: its memory limit and components give way to a template's own, as
    /// `checks` gives way to its bounds checks.
    pub fn load(
        path: &Path,
        base: CellConfig,
        checks: Option<BoundsChecks>,
    ) -> Result<Self, HandlerError> {
        let (file, module, kind) = if SnapshotFile::is_snapshot(path) {
            let file = SnapshotFile::read_from(path)?;
            if file.snapshot.template != Some(TemplatePoint::Start) {
                return Err(match file.snapshot.template {
                    None => SnapshotFileError::NotTemplate(path.to_path_buf()).into(),
                    Some(_) => HandlerError::Late(path.to_path_buf()),
                });
            }
            let compiler = Compiler::with_bounds_checks(file.bounds_checks())?;
            let bytes = read(&file.module)?;
            let kind = HandlerKind::of(&file.module, &bytes);
            let module = compile(&compiler, &file.module, &bytes, kind)?;
            file.check_host(path, compiler.cpu_features(), compiler.fingerprint())?;
            (file, module, kind)
        } else {
            let bytes = read(path)?;
            let kind = HandlerKind::of(path, &bytes);
            let compiler =
                Compiler::with_bounds_checks(checks.unwrap_or(kind.default_bounds_checks()))?;
            let module = compile(&compiler, path, &bytes, kind)?;
            let file = make_template(
                path,
                &module,
                compiler.cpu_features(),
                compiler.fingerprint(),
                &base,
            )?;
            (file, module, kind)
        };
        let base = file.template_config(path, base, false)?;
        if !base.components.contains(Components::STDIO) {
            return Err(HandlerError::NoStdio(path.to_path_buf()));
        }
        Ok(Self {
            template: Arc::new(file.snapshot),
            module: Arc::new(module),
            cpu_features: file.cpu_features,
            base,
            kind,
            path: path.to_path_buf(),
        })
    }

    /// What kind of handler it is.
    pub fn kind(&self) -> HandlerKind {
        self.kind
    }

    /// How its code checks linear-memory bounds.
    pub fn bounds_checks(&self) -> BoundsChecks {
        self.module.bounds_checks
    }

    /// The module or template the handler was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration of the cell for request `parts`, whose body (`body`, the
    /// cell's stdin) has been read, from `remote` at `local`.
    pub(crate) fn config_for(
        &self,
        parts: &Parts,
        body: &Bytes,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Result<CellConfig, RequestRefused> {
        let (args, env) = match self.kind {
            HandlerKind::Wagi => {
                let request = cgi_request(parts, body.clone(), remote, local)?;
                (request.args, request.env)
            }
            HandlerKind::Proxy => (Vec::new(), proxy_request(parts, body.len())),
        };
        let mut config = self.base.clone();
        config.args.extend(args);
        config.env.extend(env);
        if config.identity_len() > self.template.identity_capacity {
            return Err(RequestRefused::TooLarge);
        }
        Ok(config)
    }
}

/// The kind of program a handler is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    /// A WASI preview1 command following WAGI's (CGI's) conventions.
    Wagi,
    /// A wasi:http proxy component, as `wasmtime serve` runs.
    Proxy,
}

impl HandlerKind {
    /// The kind of the handler `bytes`, read from `path`.
    fn of(path: &Path, bytes: &[u8]) -> Self {
        if is_component(path, bytes) {
            Self::Proxy
        } else {
            Self::Wagi
        }
    }

    /// How a handler of this kind is compiled unless asked otherwise. A component
    /// answers a request with a `handle` call, where exits for growing its memory
    /// would be much of the time: its code checks bounds itself, so that growth needs
    /// none. A WAGI program runs whole for each request, and may be an interpreter
    /// whose start-up computes far more than it grows (CPython's takes half again
    /// as long with checks in the code): guard pages.
    pub fn default_bounds_checks(self) -> BoundsChecks {
        match self {
            Self::Proxy => BoundsChecks::Explicit,
            Self::Wagi => BoundsChecks::GuardPages,
        }
    }
}

/// Why a request cannot be given to a cell.
#[derive(Debug, thiserror::Error)]
pub enum RequestRefused {
    /// It cannot become CGI variables.
    #[error(transparent)]
    Cgi(#[from] RequestError),
    /// Its head takes more room than a cell keeps for its environment.
    #[error("the request's headers and query take more room than a cell keeps for its environment")]
    TooLarge,
}

/// The request head of `parts`, for a proxy component's cell.
fn proxy_request(parts: &Parts, body_length: usize) -> Vec<(String, String)> {
    let mut headers = String::new();
    for (name, value) in &parts.headers {
        headers.push_str(name.as_str());
        headers.push_str(": ");
        headers.push_str(&String::from_utf8_lossy(value.as_bytes()));
        headers.push('\n');
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), ToString::to_string);
    let authority = parts
        .headers
        .get(hyper::header::HOST)
        .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(ToString::to_string))
        .unwrap_or_default();
    vec![
        (METHOD_VARIABLE.into(), parts.method.as_str().into()),
        (TARGET_VARIABLE.into(), target),
        (AUTHORITY_VARIABLE.into(), authority),
        (HEADERS_VARIABLE.into(), headers),
        (BODY_LENGTH_VARIABLE.into(), body_length.to_string()),
    ]
}

/// The file at `path`, a handler's module or component.
fn read(path: &Path) -> Result<Vec<u8>, CompileError> {
    std::fs::read(path).map_err(|source| CompileError::reading(path, source))
}

/// Compiles the handler `bytes`, read from `path`, a module or a component as `kind`
/// says.
fn compile(
    compiler: &Compiler,
    path: &Path,
    bytes: &[u8],
    kind: HandlerKind,
) -> Result<CompiledModule, CompileError> {
    match kind {
        HandlerKind::Proxy => compiler.compile_component(path, bytes),
        HandlerKind::Wagi => compiler.compile_file(path),
    }
}

/// Makes a template of `module` (compiled from `path`) stopped at its start, and reads
/// it back from a scratch file: cells reset in place drop their pages to read the
/// template's again, which a file-backed image allows. The file is removed once read;
/// its pages stay while the template is open.
fn make_template(
    path: &Path,
    module: &CompiledModule,
    cpu_features: u32,
    engine: &str,
    config: &CellConfig,
) -> Result<SnapshotFile, HandlerError> {
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(HandlerError::Scratch)?;
    let stdio = CellStdio {
        stdin: std::os::fd::AsFd::as_fd(&null),
        stdout: std::os::fd::AsFd::as_fd(&null),
        stderr: std::os::fd::AsFd::as_fd(&null),
    };
    let payload = CellPayload::Wasm {
        module,
        cpu_features,
    };
    let snapshot: CellSnapshot = create_template(config, payload, stdio, TemplatePoint::Start)
        .map_err(|failure| HandlerError::NoTemplate {
            path: path.to_path_buf(),
            error: failure.error,
        })?;
    let scratch = tempfile::tempdir().map_err(HandlerError::Scratch)?;
    let file_path = scratch.path().join("handler.tmpl");
    SnapshotFile::new(path, cpu_features, engine, config, snapshot).write_to(&file_path)?;
    Ok(SnapshotFile::read_from(&file_path)?)
}
