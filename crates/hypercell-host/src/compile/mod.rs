//! Compiling modules on the host with Cranelift, for the cell's CPU, with an on-disk
//! cache ([`cache`]) keyed by the module's hash, the engine settings and the Hypercell
//! version, and indexed by the module file's identity so that a hit reads no module.

mod artifact;
pub mod cache;

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercell_abi::wasi::{WASI_PREVIEW1, WasiType, wasi_function};
use hypercell_abi::{Components, CpuFeatures};
use hypercell_engine::{BoundsChecks, CRANELIFT_CPU_FLAGS};
use wasmparser::{CompositeInnerType, FuncType, Parser, Payload, TypeRef, ValType};

pub use artifact::Artifact;
pub use cache::{CacheError, CompileCache, default_cache_dir};
use cache::{FileIdentity, Key};

/// Errors turning a file into compiled code.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The module file does not exist.
    #[error("module `{0}` does not exist; check the path")]
    NotFound(PathBuf),
    /// The module file exists but cannot be read.
    #[error("cannot read module `{path}`: {source}; check its permissions")]
    Unreadable {
        /// The module's path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes are not valid WebAssembly (binary or text).
    #[error("`{path}` is not a valid WebAssembly module: {reason}")]
    Invalid {
        /// The module's path.
        path: PathBuf,
        /// The validator's reason.
        reason: String,
    },
    /// The file is a component, not a core module.
    #[error(
        "`{0}` is a WebAssembly component, and programs run as core modules: WASI preview1 commands, such as programs built for wasm32-wasip1"
    )]
    Component(PathBuf),
    /// The module imports something a cell does not provide.
    #[error(
        "`{path}` imports {kind} `{module}::{name}`, which a cell does not provide; cells provide only the WASI preview1 functions of `wasi_snapshot_preview1`, so build the program for wasm32-wasip1 or remove the import"
    )]
    UnknownImport {
        /// The module's path.
        path: PathBuf,
        /// What kind of item is imported.
        kind: &'static str,
        /// Import module name.
        module: String,
        /// Import field name.
        name: String,
    },
    /// A WASI function is imported with the wrong signature.
    #[error(
        "`{path}` imports `wasi_snapshot_preview1::{name}` with type {found}, but WASI preview1 defines it as {expected}; rebuild the program against a current wasi-libc"
    )]
    ImportSignature {
        /// The module's path.
        path: PathBuf,
        /// Import field name.
        name: String,
        /// The module's signature.
        found: String,
        /// WASI's signature.
        expected: String,
    },
    /// With strict components: the module imports a function of a component the cell
    /// is not given.
    #[error(
        "`{path}` imports `wasi_snapshot_preview1::{name}`, which needs {needs}, and the cell is not given it"
    )]
    Ungranted {
        /// The module's path.
        path: PathBuf,
        /// Import field name.
        name: String,
        /// The components that would serve it, in words.
        needs: String,
    },
    /// The compiler could not be configured.
    #[error("could not set up the compiler: {0}")]
    Engine(String),
    /// The compile cache's settings are wrong.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Whether compiled code came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from the cache: nothing was compiled.
    Hit,
    /// Compiled now (and stored, if the cache is writable).
    Miss,
}

/// A module compiled for cells.
pub struct CompiledModule {
    /// The wasmtime artifact the guest runtime loads.
    pub artifact: Artifact,
    /// Whether it came from the cache.
    pub cache: CacheStatus,
    /// Whether the module's contents were hashed to look its code up: false when the
    /// cache's index knew the file by its identity, or when there is no cache.
    pub hashed: bool,
    /// Initial size in bytes of the first linear memory the module defines (rounded up
    /// to 4 KiB, as wasmtime maps it), or 0; the cell maps it before boot.
    pub initial_memory: u64,
    /// Whether it is a component (a wasi:http proxy), whose cells load the guest
    /// runtime built to serve one.
    pub component: bool,
    /// How its code keeps linear-memory accesses in bounds (the cell's runtime
    /// configures its engine alike).
    pub bounds_checks: BoundsChecks,
    /// Time spent reading, hashing and compiling or loading.
    pub elapsed: Duration,
}

/// CPU features compiled code may use in a cell: what the host CPU has of those
/// Cranelift uses, AVX, AVX2 and FMA among them (the cell turns AVX state on for its
/// vCPU), plus RDRAND for `random_get`.
pub fn cell_cpu_features() -> u32 {
    let mut features = 0;
    let mut add = |present: bool, bit: u32| {
        if present {
            features |= bit;
        }
    };
    add(is_x86_feature_detected!("sse3"), CpuFeatures::SSE3);
    add(is_x86_feature_detected!("ssse3"), CpuFeatures::SSSE3);
    add(is_x86_feature_detected!("sse4.1"), CpuFeatures::SSE41);
    add(is_x86_feature_detected!("sse4.2"), CpuFeatures::SSE42);
    add(is_x86_feature_detected!("popcnt"), CpuFeatures::POPCNT);
    add(is_x86_feature_detected!("bmi1"), CpuFeatures::BMI1);
    add(is_x86_feature_detected!("bmi2"), CpuFeatures::BMI2);
    add(is_x86_feature_detected!("lzcnt"), CpuFeatures::LZCNT);
    add(is_x86_feature_detected!("rdrand"), CpuFeatures::RDRAND);
    add(is_x86_feature_detected!("avx"), CpuFeatures::AVX);
    add(is_x86_feature_detected!("avx2"), CpuFeatures::AVX2);
    add(is_x86_feature_detected!("fma"), CpuFeatures::FMA);
    add(
        is_x86_feature_detected!("cmpxchg16b"),
        CpuFeatures::CMPXCHG16B,
    );
    features
}

/// Where a compiler's fingerprint names its bounds checks.
const CHECKS_TOKEN: &str = "checks ";

/// The bounds checks of code compiled with settings `fingerprint` (a compiler's
/// [`Compiler::fingerprint`], as a snapshot file records it): the compiler to load a
/// snapshot's module with is configured so.
pub fn bounds_checks_of(fingerprint: &str) -> BoundsChecks {
    if fingerprint.contains(&format!(
        " {CHECKS_TOKEN}{} ",
        BoundsChecks::Explicit.name()
    )) {
        BoundsChecks::Explicit
    } else {
        BoundsChecks::GuardPages
    }
}

impl CompileError {
    /// The module file at `path` could not be read, for `source`.
    pub fn reading(path: &Path, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => Self::NotFound(path.to_path_buf()),
            _ => Self::Unreadable {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Compiles modules for cells, through the cache.
pub struct Compiler {
    engine: wasmtime::Engine,
    bounds_checks: BoundsChecks,
    cpu_features: u32,
    fingerprint: String,
    cache: Option<CompileCache>,
}

impl Compiler {
    /// A compiler for this host's cells, caching in the XDG cache directory, bounded by
    /// `HYPERCELL_CACHE_MAX`.
    pub fn new() -> Result<Self, CompileError> {
        Self::with_cache(CompileCache::from_env()?)
    }

    /// A compiler caching in `cache_dir` (`None`: no cache), with the default bound.
    pub fn with_cache_dir(cache_dir: Option<PathBuf>) -> Result<Self, CompileError> {
        Self::with_cache(cache_dir.map(CompileCache::new))
    }

    /// A compiler caching in `cache` (`None`: no cache).
    pub fn with_cache(cache: Option<CompileCache>) -> Result<Self, CompileError> {
        Self::with_options(cache, BoundsChecks::default())
    }

    /// A compiler like [`Compiler::new`]'s whose code keeps linear-memory accesses in
    /// bounds as `bounds_checks` says.
    pub fn with_bounds_checks(bounds_checks: BoundsChecks) -> Result<Self, CompileError> {
        Self::with_options(CompileCache::from_env()?, bounds_checks)
    }

    /// A compiler caching in `cache` (`None`: no cache) whose code keeps linear-memory
    /// accesses in bounds as `bounds_checks` says.
    pub fn with_options(
        cache: Option<CompileCache>,
        bounds_checks: BoundsChecks,
    ) -> Result<Self, CompileError> {
        let cpu_features = cell_cpu_features();
        let mut config = wasmtime::Config::new();
        hypercell_engine::configure(&mut config, bounds_checks);
        // An explicit target stops wasmtime from inferring settings from the host;
        // the CPU features are exactly those the cell reports to its guest.
        config
            .target("x86_64-unknown-linux-gnu")
            .map_err(|e| CompileError::Engine(e.to_string()))?;
        for &(bit, flag) in CRANELIFT_CPU_FLAGS {
            if cpu_features & bit != 0 {
                // SAFETY: the flag is enabled only when the host CPU has the feature,
                // and the cell's guest runs on this CPU.
                unsafe {
                    config.cranelift_flag_enable(flag);
                }
            }
        }
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| CompileError::Engine(e.to_string()))?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!(
            "hypercell {} abi {} cpu {cpu_features:#x} {CHECKS_TOKEN}{} engine {:016x}",
            env!("CARGO_PKG_VERSION"),
            hypercell_abi::ABI_VERSION,
            bounds_checks.name(),
            hasher.finish()
        );
        Ok(Self {
            engine,
            bounds_checks,
            cpu_features,
            fingerprint,
            cache,
        })
    }

    /// The CPU features compiled code uses (to report to the guest).
    pub fn cpu_features(&self) -> u32 {
        self.cpu_features
    }

    /// The settings that shape compiled code: Hypercell and ABI version, CPU features,
    /// bounds checks and the engine's compatibility hash.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Reads, checks and compiles the module at `path` (binary or text), or loads its
    /// compiled code from the cache.
    pub fn compile_file(&self, path: &Path) -> Result<CompiledModule, CompileError> {
        let start = Instant::now();
        let unreadable = |source| CompileError::reading(path, source);
        let mut file = File::open(path).map_err(unreadable)?;
        let identity = FileIdentity::of(&file.metadata().map_err(unreadable)?);
        if let Some(cache) = &self.cache {
            cache.sweep_temp();
            if let Some(found) = cache.find_by_identity(&self.fingerprint, &identity) {
                tracing::debug!(
                    "compile cache: hit by file identity for {}, module not read",
                    path.display()
                );
                return Ok(CompiledModule {
                    artifact: found.artifact,
                    cache: CacheStatus::Hit,
                    hashed: false,
                    initial_memory: found.initial_memory,
                    // Components are never indexed by identity.
                    component: false,
                    bounds_checks: self.bounds_checks,
                    elapsed: start.elapsed(),
                });
            }
        }
        let mut bytes = Vec::with_capacity(identity.size() as usize);
        file.read_to_end(&mut bytes).map_err(unreadable)?;
        // A file that changed while it was read has no one content to index.
        let unchanged = file
            .metadata()
            .is_ok_and(|metadata| FileIdentity::of(&metadata) == identity);
        let indexable = unchanged && self.cache.as_ref().is_some_and(|c| c.may_index(&identity));
        self.compile(path, &bytes, indexable.then_some(&identity), start)
    }

    /// Checks and compiles a module read from elsewhere (standard input), named `name`
    /// in messages, or loads its compiled code from the cache.
    pub fn compile_bytes(&self, name: &Path, bytes: &[u8]) -> Result<CompiledModule, CompileError> {
        self.compile(name, bytes, None, Instant::now())
    }

    /// Compiles the component `bytes` (binary or text), read from `path`, or loads its
    /// compiled code from the cache: a wasi:http proxy, which only a server's cells run.
    /// Never indexed by the file's identity, so that `run` of the same file, which
    /// refuses components, does not find it.
    pub fn compile_component(
        &self,
        path: &Path,
        bytes: &[u8],
    ) -> Result<CompiledModule, CompileError> {
        let start = Instant::now();
        let wasm = to_binary(path, bytes)?;
        self.compile_binary(path, &wasm, None, start, true)
    }

    /// Compiles `bytes`, the contents of `path`, through the cache; indexes them under
    /// `identity`, the file's, when given one.
    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        identity: Option<&FileIdentity>,
        start: Instant,
    ) -> Result<CompiledModule, CompileError> {
        let wasm = to_binary(path, bytes)?;
        if Parser::is_component(&wasm) {
            return Err(CompileError::Component(path.to_path_buf()));
        }
        self.compile_binary(path, &wasm, identity, start, false)
    }

    /// Compiles the binary module or (with `component`) component `wasm`, read from
    /// `path`, through the cache, or loads its code from there; indexes it under
    /// `identity`, the file's, when given one.
    fn compile_binary(
        &self,
        path: &Path,
        wasm: &[u8],
        identity: Option<&FileIdentity>,
        start: Instant,
        component: bool,
    ) -> Result<CompiledModule, CompileError> {
        // A component's memories are its core modules', made as it is instantiated.
        let initial_memory = || {
            if component {
                0
            } else {
                first_memory_size(wasm)
            }
        };
        let precompile = || {
            if component {
                self.engine
                    .precompile_component(wasm)
                    .map_err(|e| invalid(path, &e))
            } else {
                self.precompile(path, wasm)
            }
        };
        let compiled = |artifact, cache, hashed, initial_memory| CompiledModule {
            artifact,
            cache,
            hashed,
            initial_memory,
            component,
            bounds_checks: self.bounds_checks,
            elapsed: start.elapsed(),
        };
        let Some(cache) = &self.cache else {
            let artifact = Artifact::in_memory(precompile()?);
            return Ok(compiled(
                artifact,
                CacheStatus::Miss,
                false,
                initial_memory(),
            ));
        };
        let key = Key::of(&self.fingerprint, wasm);
        tracing::debug!("compile cache: hashed {}", path.display());
        let record = || identity.is_some_and(|id| cache.record(&self.fingerprint, id, &key));
        if let Some(found) = cache.load(&key) {
            if record() {
                cache.evict();
            }
            return Ok(compiled(
                found.artifact,
                CacheStatus::Hit,
                true,
                found.initial_memory,
            ));
        }
        let initial_memory = initial_memory();
        let artifact = cache.store(&key, initial_memory, precompile()?);
        if artifact.file_backing().is_some() {
            record();
            cache.evict();
        }
        Ok(compiled(artifact, CacheStatus::Miss, true, initial_memory))
    }

    /// Checks the imports of `wasm` and compiles it.
    fn precompile(&self, path: &Path, wasm: &[u8]) -> Result<Vec<u8>, CompileError> {
        check_imports(path, wasm)?;
        self.engine
            .precompile_module(wasm)
            .map_err(|e| invalid(path, &e))
    }
}

/// Whether `bytes` (binary or text, read from `path`) are a component rather than a
/// core module.
pub fn is_component(path: &Path, bytes: &[u8]) -> bool {
    to_binary(path, bytes).is_ok_and(|wasm| Parser::is_component(&wasm))
}

/// The module or component at `path` does not validate or compile, for `error`.
fn invalid(path: &Path, error: &wasmtime::Error) -> CompileError {
    CompileError::Invalid {
        path: path.to_path_buf(),
        reason: error
            .chain()
            .last()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// Checks that a cell given only `granted` can serve every WASI function the module
/// `bytes` (binary or text, read from `path`) imports: one that only a missing
/// component serves is refused, named.
pub fn check_components(
    path: &Path,
    bytes: &[u8],
    granted: Components,
) -> Result<(), CompileError> {
    let wasm = to_binary(path, bytes)?;
    for payload in Parser::new(0).parse_all(&wasm) {
        match payload {
            Ok(Payload::ImportSection(reader)) => {
                for import in reader.into_imports().flatten() {
                    let Some(function) = (import.module == WASI_PREVIEW1)
                        .then(|| wasi_function(import.name))
                        .flatten()
                    else {
                        continue;
                    };
                    let needs = function.3.any_of();
                    if needs != Components::NONE && !needs.intersects(granted) {
                        return Err(CompileError::Ungranted {
                            path: path.to_path_buf(),
                            name: import.name.to_string(),
                            needs: describe_needs(needs),
                        });
                    }
                }
            }
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The module `bytes` (read from `path`) in binary form: text is parsed.
fn to_binary<'a>(path: &Path, bytes: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, CompileError> {
    if bytes.starts_with(b"\0asm") {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    wat::parse_bytes(bytes).map_err(|e| CompileError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// `needs`, in words: "the `fs` component", "the `stdio`, `fs` or `channels` component".
fn describe_needs(needs: Components) -> String {
    if needs == Components::NET {
        return "the `net` component, which Hypercell does not offer yet".into();
    }
    let names: Vec<String> = Components::NAMES
        .iter()
        .filter(|&&(_, component)| needs.contains(component))
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let listed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    format!("the {listed} component")
}

/// Initial bytes of the first memory `wasm` defines, rounded up to 4 KiB; 0 when it
/// defines none (or is malformed, which compiling reports).
fn first_memory_size(wasm: &[u8]) -> u64 {
    for payload in Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::MemorySection(reader)) => {
                let Some(Ok(memory)) = reader.into_iter().next() else {
                    return 0;
                };
                let page_size = 1u64 << memory.page_size_log2.unwrap_or(16);
                return memory
                    .initial
                    .checked_mul(page_size)
                    .and_then(|bytes| bytes.checked_next_multiple_of(4096))
                    .unwrap_or(0);
            }
            Ok(Payload::CodeSectionStart { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    0
}

/// Checks every import against what a cell provides. Malformed sections are left to
/// the validator, which reports them better.
fn check_imports(path: &Path, wasm: &[u8]) -> Result<(), CompileError> {
    let mut func_types: Vec<Option<FuncType>> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else { return Ok(()) };
        match payload {
            Payload::TypeSection(reader) => {
                for group in reader {
                    let Ok(group) = group else { return Ok(()) };
                    func_types.extend(group.into_types().map(|ty| match ty.composite_type.inner {
                        CompositeInnerType::Func(f) => Some(f),
                        _ => None,
                    }));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let Ok(import) = import else { return Ok(()) };
                    check_import(path, &import, &func_types)?;
                }
            }
            Payload::CodeSectionStart { .. } => break,
            _ => {}
        }
    }
    Ok(())
}

fn check_import(
    path: &Path,
    import: &wasmparser::Import<'_>,
    func_types: &[Option<FuncType>],
) -> Result<(), CompileError> {
    let unknown = |kind| CompileError::UnknownImport {
        path: path.to_path_buf(),
        kind,
        module: import.module.to_string(),
        name: import.name.to_string(),
    };
    let type_index = match import.ty {
        TypeRef::Func(index) => index,
        TypeRef::Memory(_) => return Err(unknown("memory")),
        TypeRef::Table(_) => return Err(unknown("table")),
        TypeRef::Global(_) => return Err(unknown("global")),
        _ => return Err(unknown("tag")),
    };
    let wasi = (import.module == WASI_PREVIEW1)
        .then(|| wasi_function(import.name))
        .flatten()
        .ok_or_else(|| unknown("function"))?;
    let Some(Some(found)) = func_types.get(type_index as usize) else {
        return Ok(());
    };
    let expected_params: Vec<ValType> = wasi
        .1
        .iter()
        .map(|t| match t {
            WasiType::I32 => ValType::I32,
            WasiType::I64 => ValType::I64,
        })
        .collect();
    let expected_results: &[ValType] = if wasi.2 { &[ValType::I32] } else { &[] };
    if found.params() != expected_params.as_slice() || found.results() != expected_results {
        let describe = |params: &[ValType], results: &[ValType]| {
            let list = |types: &[ValType]| {
                types
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("({}) -> ({})", list(params), list(results))
        };
        return Err(CompileError::ImportSignature {
            path: path.to_path_buf(),
            name: import.name.to_string(),
            found: describe(found.params(), found.results()),
            expected: describe(&expected_params, expected_results),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiler(dir: &Path) -> Compiler {
        Compiler::with_cache_dir(Some(dir.to_path_buf())).unwrap()
    }

    fn compile_text(compiler: &Compiler, text: &str) -> Result<CompiledModule, CompileError> {
        compiler.compile(Path::new("test.wat"), text.as_bytes(), None, Instant::now())
    }

    /// A compiler that indexes module files and stamps verified entries at once, not
    /// after [`cache::SETTLE_TIME`].
    fn indexing_compiler(dir: &Path) -> Compiler {
        let cache = CompileCache::new(dir.to_path_buf()).settling_at_once();
        Compiler::with_cache(Some(cache)).unwrap()
    }

    /// A module whose code returns `value`, as text of the same length for any digit.
    fn module_returning(value: u8) -> String {
        assert!(value < 10);
        format!(r#"(module (func (export "_start") (result i32) i32.const {value}))"#)
    }

    /// The cache's only entry file.
    fn only_entry(dir: &Path) -> PathBuf {
        let entries: Vec<_> = std::fs::read_dir(dir.join("v1/entries"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().unwrap()
    }

    fn uncached(text: &str) -> Vec<u8> {
        let compiler = Compiler::with_cache_dir(None).unwrap();
        compile_text(&compiler, text)
            .unwrap()
            .artifact
            .bytes()
            .to_vec()
    }

    #[test]
    fn second_compile_is_a_cache_hit_with_the_same_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(dir.path());
        let text = r#"(module (func (export "_start")))"#;
        let first = compile_text(&compiler, text).unwrap();
        let second = compile_text(&compiler, text).unwrap();
        assert_eq!(first.cache, CacheStatus::Miss);
        assert_eq!(second.cache, CacheStatus::Hit);
        assert_eq!(first.artifact.bytes(), second.artifact.bytes());
        assert_eq!(first.artifact.bytes(), uncached(text));
    }

    #[test]
    fn cached_artifacts_are_backed_by_the_entry_file_at_a_page_aligned_offset() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(dir.path());
        let text = module_returning(1);
        for status in [CacheStatus::Miss, CacheStatus::Hit] {
            let module = compile_text(&compiler, &text).unwrap();
            assert_eq!(module.cache, status);
            let (fd, offset) = module.artifact.file_backing().expect("file-backed");
            assert_eq!(offset % 4096, 0);
            let file = File::from(fd.try_clone_to_owned().unwrap());
            let mut on_disk = vec![0; module.artifact.bytes().len()];
            file.read_exact_at(&mut on_disk, offset).unwrap();
            assert_eq!(on_disk, module.artifact.bytes());
            assert_eq!(
                file.metadata().unwrap().len(),
                offset + on_disk.len() as u64
            );
        }
    }

    #[test]
    fn without_a_writable_cache_artifacts_are_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let text = module_returning(1);
        let none = Compiler::with_cache_dir(None).unwrap();
        let module = compile_text(&none, &text).unwrap();
        assert!(module.artifact.file_backing().is_none() && !module.hashed);
        // A cache directory beneath a plain file cannot be made, even by root.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let unwritable = compiler(&blocker.join("cache"));
        let module = compile_text(&unwritable, &text).unwrap();
        assert_eq!(module.cache, CacheStatus::Miss);
        assert!(module.artifact.file_backing().is_none());
        assert_eq!(module.artifact.bytes(), uncached(&text));
    }

    #[test]
    fn a_known_module_file_hits_by_identity_without_being_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = indexing_compiler(&dir.path().join("cache"));
        let module = dir.path().join("m.wat");
        std::fs::write(&module, module_returning(1)).unwrap();
        let first = compiler.compile_file(&module).unwrap();
        assert_eq!((first.cache, first.hashed), (CacheStatus::Miss, true));
        let second = compiler.compile_file(&module).unwrap();
        assert_eq!((second.cache, second.hashed), (CacheStatus::Hit, false));
        assert_eq!(second.artifact.bytes(), first.artifact.bytes());
        assert_eq!(second.initial_memory, first.initial_memory);
    }

    #[test]
    fn a_young_module_file_is_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(&dir.path().join("cache"));
        let module = dir.path().join("m.wat");
        std::fs::write(&module, module_returning(1)).unwrap();
        compiler.compile_file(&module).unwrap();
        let second = compiler.compile_file(&module).unwrap();
        assert_eq!((second.cache, second.hashed), (CacheStatus::Hit, true));
    }

    #[test]
    fn a_module_rewritten_in_place_with_its_mtime_restored_gets_its_new_code() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let compiler = indexing_compiler(&dir.path().join("cache"));
        let module = dir.path().join("m.wat");
        std::fs::write(&module, module_returning(1)).unwrap();
        let mtime = std::fs::metadata(&module).unwrap().modified().unwrap();
        compiler.compile_file(&module).unwrap();
        assert!(!compiler.compile_file(&module).unwrap().hashed, "indexed");
        // Past the timestamp granularity of filesystems without fine-grained ctimes.
        std::thread::sleep(Duration::from_millis(20));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&module)
            .unwrap();
        file.write_all(module_returning(2).as_bytes()).unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        let after = std::fs::metadata(&module).unwrap();
        assert_eq!(after.modified().unwrap(), mtime);
        let rewritten = compiler.compile_file(&module).unwrap();
        assert!(rewritten.hashed);
        assert_eq!(rewritten.artifact.bytes(), uncached(&module_returning(2)));
    }

    #[test]
    fn a_replaced_module_file_gets_its_new_code() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = indexing_compiler(&dir.path().join("cache"));
        let module = dir.path().join("m.wat");
        std::fs::write(&module, module_returning(1)).unwrap();
        compiler.compile_file(&module).unwrap();
        let other = dir.path().join("new.wat");
        std::fs::write(&other, module_returning(3)).unwrap();
        std::fs::rename(&other, &module).unwrap();
        let replaced = compiler.compile_file(&module).unwrap();
        assert_eq!(replaced.artifact.bytes(), uncached(&module_returning(3)));
    }

    #[test]
    fn damaged_entries_are_removed_and_compiled_again() {
        type Damage = fn(&Path);
        let damages: [(&str, Damage); 3] = [
            ("truncated", |entry| {
                let len = std::fs::metadata(entry).unwrap().len();
                File::options()
                    .write(true)
                    .open(entry)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
            ("bit-flipped", |entry| {
                let mut bytes = std::fs::read(entry).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                std::fs::write(entry, bytes).unwrap();
            }),
            ("emptied", |entry| std::fs::write(entry, "").unwrap()),
        ];
        for (damage, apply) in damages {
            let dir = tempfile::tempdir().unwrap();
            let compiler = indexing_compiler(dir.path());
            let text = module_returning(4);
            compile_text(&compiler, &text).unwrap();
            // A hit verifies the entry and stamps it: damage done after that changes
            // the entry's identity, so the body is hashed again.
            assert_eq!(
                compile_text(&compiler, &text).unwrap().cache,
                CacheStatus::Hit
            );
            assert!(dir.path().join("v1/verified").read_dir().unwrap().count() == 1);
            // The stamp's tick is over before the damage (file times move in ticks).
            std::thread::sleep(std::time::Duration::from_millis(20));
            apply(&only_entry(dir.path()));
            let again = compile_text(&compiler, &text).unwrap();
            assert_eq!(again.cache, CacheStatus::Miss, "{damage}");
            assert_eq!(again.artifact.bytes(), uncached(&text), "{damage}");
            let third = compile_text(&compiler, &text).unwrap();
            assert_eq!(third.cache, CacheStatus::Hit, "{damage}: stored again");
        }
    }

    #[test]
    fn an_entry_holding_another_modules_code_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(dir.path());
        compile_text(&compiler, &module_returning(5)).unwrap();
        let five = only_entry(dir.path());
        let five_code = std::fs::read(&five).unwrap();
        std::fs::remove_file(&five).unwrap();
        compile_text(&compiler, &module_returning(6)).unwrap();
        std::fs::write(only_entry(dir.path()), five_code).unwrap();
        let six = compile_text(&compiler, &module_returning(6)).unwrap();
        assert_eq!(six.cache, CacheStatus::Miss);
        assert_eq!(six.artifact.bytes(), uncached(&module_returning(6)));
    }

    #[test]
    fn an_index_record_whose_entry_was_evicted_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let compiler = indexing_compiler(&cache);
        let module = dir.path().join("m.wat");
        std::fs::write(&module, module_returning(7)).unwrap();
        compiler.compile_file(&module).unwrap();
        std::fs::remove_file(only_entry(&cache)).unwrap();
        let again = compiler.compile_file(&module).unwrap();
        assert_eq!((again.cache, again.hashed), (CacheStatus::Miss, true));
        assert_eq!(again.artifact.bytes(), uncached(&module_returning(7)));
        let indexed = compiler.compile_file(&module).unwrap();
        assert_eq!((indexed.cache, indexed.hashed), (CacheStatus::Hit, false));
    }

    #[test]
    fn storing_evicts_the_least_recently_used_entries() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let unbounded = compiler(dir.path());
        let entry_of = |value| {
            let module = compile_text(&unbounded, &module_returning(value)).unwrap();
            let (fd, _) = module.artifact.file_backing().unwrap();
            let ino = File::from(fd.try_clone_to_owned().unwrap())
                .metadata()
                .unwrap()
                .ino();
            std::fs::read_dir(dir.path().join("v1/entries"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .find(|path| std::fs::metadata(path).unwrap().ino() == ino)
                .unwrap()
        };
        let (a, b) = (entry_of(1), entry_of(2));
        let usage = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
        let hours_ago =
            |hours: u64| std::time::SystemTime::now() - Duration::from_secs(hours * 3600);
        for (entry, age) in [(&a, 2), (&b, 1)] {
            File::open(entry)
                .unwrap()
                .set_modified(hours_ago(age))
                .unwrap();
        }
        // Room for two entries: a hit makes `a` the most recently used, so storing a
        // third evicts `b`.
        let max = usage(&a) + usage(&b) + 4096;
        let bounded = Compiler::with_cache(Some(
            CompileCache::new(dir.path().to_path_buf()).with_max_size(max),
        ))
        .unwrap();
        let hit = compile_text(&bounded, &module_returning(1)).unwrap();
        assert_eq!(hit.cache, CacheStatus::Hit);
        compile_text(&bounded, &module_returning(3)).unwrap();
        assert!(a.exists() && !b.exists());
        let total: u64 = std::fs::read_dir(dir.path().join("v1/entries"))
            .unwrap()
            .map(|entry| usage(&entry.unwrap().path()))
            .sum();
        assert!(total <= max, "{total} > {max}");
        let evicted = compile_text(&bounded, &module_returning(2)).unwrap();
        assert_eq!(evicted.cache, CacheStatus::Miss);
    }

    #[test]
    fn an_artifact_larger_than_the_bound_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path().to_path_buf()).with_max_size(4096);
        let compiler = Compiler::with_cache(Some(cache)).unwrap();
        let module = compile_text(&compiler, &module_returning(1)).unwrap();
        assert!(module.artifact.file_backing().is_none());
        assert!(!dir.path().join("v1/entries").exists());
    }

    #[test]
    fn the_first_defined_memory_is_measured() {
        let size = |text: &str| first_memory_size(&wat::parse_str(text).unwrap());
        assert_eq!(size("(module)"), 0);
        assert_eq!(size("(module (memory 3))"), 3 << 16);
        assert_eq!(size("(module (memory 2) (memory 9))"), 2 << 16);
        assert_eq!(
            size(r#"(module (import "a" "m" (memory 5)) (memory 1))"#),
            1 << 16,
            "imported memories are not the cell's to map"
        );
        assert_eq!(size("(module (memory 5 (pagesize 1)))"), 4096);
    }

    #[test]
    fn unknown_and_mistyped_imports_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(dir.path());
        let unknown = compile_text(&compiler, r#"(module (import "env" "foo" (func)))"#);
        let message = unknown.err().unwrap().to_string();
        assert!(message.contains("`env::foo`"), "{message}");
        let mistyped = compile_text(
            &compiler,
            r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32))))"#,
        );
        let message = mistyped.err().unwrap().to_string();
        assert!(
            message.contains("(i32) -> ()") && message.contains("(i32, i32, i32, i32) -> (i32)"),
            "{message}"
        );
    }

    #[test]
    fn invalid_modules_carry_the_validator_reason() {
        let dir = tempfile::tempdir().unwrap();
        let compiler = compiler(dir.path());
        let invalid = compile_text(&compiler, r#"(module (func (result i32)))"#);
        let message = invalid.err().unwrap().to_string();
        assert!(message.contains("type mismatch"), "{message}");
        let garbage = compiler.compile(
            Path::new("x.wasm"),
            b"\0asm\x01\0\0\0\x99",
            None,
            Instant::now(),
        );
        assert!(matches!(garbage, Err(CompileError::Invalid { .. })));
    }
}
