//! Templates the shim keeps per module digest, so that the second container of an
//! image starts from a cell that is already instantiated, as `hypercell run TEMPLATE`
//! does, rather than booting and instantiating its module again.
//!
//! They live in the compile cache's `templates/` (beside the compiled code, and
//! emptied with it by `hypercell cache clean`), one file per module digest and memory
//! limit. Shims of many containers share them: one makes a missing template under a
//! file lock while the others wait for it (for a while; then they boot their cells
//! afresh), and each file is written whole or not at all. Making one may take
//! [`MAKING_PATIENCE`] at most (a module's start function runs before the template
//! point, and may loop); a module that cannot be made a template is marked so, and its
//! containers boot afresh without trying again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercell_host::persist::{SnapshotFile, TemplatePoint};
use hypercell_host::{CellConfig, CellPayload, CompiledModule, create_template};

use crate::stdio::ContainerStdio;

/// Longest a template may take to make.
pub const MAKING_PATIENCE: Duration = Duration::from_secs(10);
/// Longest a shim waits for another to make a template.
const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// The directory of templates.
#[derive(Clone, Debug)]
pub struct TemplateCache {
    dir: PathBuf,
}

/// A module, compiled, for which a template is wanted.
pub struct TemplateRequest<'a> {
    /// The sha256 of the module's bytes, in hex.
    pub digest: &'a str,
    /// The module's name, as the template records it.
    pub name: &'a Path,
    /// Its compiled code.
    pub module: &'a CompiledModule,
    /// The CPU features the code was compiled for.
    pub cpu_features: u32,
    /// The compiler's settings.
    pub engine: &'a str,
    /// The limit of the program's linear memory, which the template keeps.
    pub memory_limit: u64,
}

impl TemplateCache {
    /// Templates under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Templates under Hypercell's cache directory, where there is one.
    pub fn from_env() -> Option<Self> {
        hypercell_host::compile::default_cache_dir()
            .map(|dir| Self::new(hypercell_host::compile::CompileCache::new(dir).templates_dir()))
    }

    /// The template for `request`: the one kept, or one made now and kept. An error
    /// says why none can be had; the caller then boots the cell afresh.
    pub fn template(&self, request: &TemplateRequest<'_>) -> Result<SnapshotFile, String> {
        let path = self
            .dir
            .join(format!("{}-{}.tmpl", request.digest, request.memory_limit));
        if let Some(file) = usable(&path, request) {
            return Ok(file);
        }
        let failed = path.with_extension("failed");
        if let Ok(reason) = std::fs::read_to_string(&failed) {
            return Err(reason);
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot make `{}`: {e}", self.dir.display()))?;
        let _lock = lock(&path.with_extension("lock"))
            .map_err(|e| format!("cannot lock the template `{}`: {e}", path.display()))?;
        // Another shim may have made it, or failed to, while this one waited.
        if let Some(file) = usable(&path, request) {
            return Ok(file);
        }
        if let Ok(reason) = std::fs::read_to_string(&failed) {
            return Err(reason);
        }
        let file = match make(request) {
            Ok(file) => file,
            Err(reason) => {
                let _ = std::fs::write(&failed, &reason);
                return Err(reason);
            }
        };
        file.write_to(&path).map_err(|e| e.to_string())?;
        Ok(file)
    }
}

/// The template at `path`, when there is one this host can start cells from.
fn usable(path: &Path, request: &TemplateRequest<'_>) -> Option<SnapshotFile> {
    let file = SnapshotFile::read_from(path).ok()?;
    file.check_host(path, request.cpu_features, request.engine)
        .ok()
        .map(|()| file)
}

fn make(request: &TemplateRequest<'_>) -> Result<SnapshotFile, String> {
    let config = CellConfig {
        memory_limit: request.memory_limit,
        timeout: Some(MAKING_PATIENCE),
        args: vec![request.name.display().to_string()],
        ..CellConfig::default()
    };
    let payload = CellPayload::Wasm {
        module: request.module,
        cpu_features: request.cpu_features,
    };
    let stdio = ContainerStdio::null().map_err(|e| format!("cannot open /dev/null: {e}"))?;
    let snapshot = create_template(&config, payload, stdio.cell_stdio(), TemplatePoint::Start)
        .map_err(|failure| failure.error.to_string())?;
    Ok(SnapshotFile::new(
        request.name,
        request.cpu_features,
        request.engine,
        &config,
        snapshot,
    ))
}

/// An exclusive lock on the file at `path`, held until the file is dropped; waited
/// for [`LOCK_PATIENCE`] at most.
fn lock(path: &Path) -> io::Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        // SAFETY: flock on a descriptor we own has no memory-safety preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "another shim has been making it for too long",
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
