//! Compiling modules on the host with Cranelift, for the cell's CPU, with an on-disk
//! cache keyed by the module's hash, the engine settings and the Hypercell version.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercell_abi::CpuFeatures;
use hypercell_abi::wasi::{WASI_PREVIEW1, WasiType, wasi_function};
use hypercell_engine::CRANELIFT_CPU_FLAGS;
use sha2::{Digest, Sha256};
use wasmparser::{CompositeInnerType, FuncType, Parser, Payload, TypeRef, ValType};

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
    /// The compiler could not be configured.
    #[error("could not set up the compiler: {0}")]
    Engine(String),
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
    pub artifact: Vec<u8>,
    /// Whether it came from the cache.
    pub cache: CacheStatus,
    /// Initial size in bytes of the first linear memory the module defines (rounded up
    /// to 4 KiB, as wasmtime maps it), or 0; the cell maps it before boot.
    pub initial_memory: u64,
    /// Time spent reading, hashing and compiling or loading.
    pub elapsed: Duration,
}

/// CPU features compiled code may use in a cell: what the host CPU has, less AVX and
/// its relatives (cells do not yet enable AVX state), plus RDRAND for `random_get`.
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
    add(
        is_x86_feature_detected!("cmpxchg16b"),
        CpuFeatures::CMPXCHG16B,
    );
    features
}

/// Compiles modules for cells, through the cache.
pub struct Compiler {
    engine: wasmtime::Engine,
    cpu_features: u32,
    fingerprint: String,
    cache_dir: Option<PathBuf>,
}

impl Compiler {
    /// A compiler for this host's cells, caching in the XDG cache directory.
    pub fn new() -> Result<Self, CompileError> {
        Self::with_cache_dir(default_cache_dir())
    }

    /// A compiler caching in `cache_dir` (`None`: no cache).
    pub fn with_cache_dir(cache_dir: Option<PathBuf>) -> Result<Self, CompileError> {
        let cpu_features = cell_cpu_features();
        let mut config = wasmtime::Config::new();
        hypercell_engine::configure(&mut config);
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
            "hypercell {} abi {} cpu {cpu_features:#x} engine {:016x}",
            env!("CARGO_PKG_VERSION"),
            hypercell_abi::ABI_VERSION,
            hasher.finish()
        );
        Ok(Self {
            engine,
            cpu_features,
            fingerprint,
            cache_dir,
        })
    }

    /// The CPU features compiled code uses (to report to the guest).
    pub fn cpu_features(&self) -> u32 {
        self.cpu_features
    }

    /// Reads, checks and compiles the module at `path` (binary or text), or loads its
    /// compiled code from the cache.
    pub fn compile_file(&self, path: &Path) -> Result<CompiledModule, CompileError> {
        let start = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => CompileError::NotFound(path.to_path_buf()),
            _ => CompileError::Unreadable {
                path: path.to_path_buf(),
                source,
            },
        })?;
        self.compile(path, &bytes, start)
    }

    fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        start: Instant,
    ) -> Result<CompiledModule, CompileError> {
        let invalid = |reason: String| CompileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let wasm = if bytes.starts_with(b"\0asm") {
            std::borrow::Cow::Borrowed(bytes)
        } else {
            wat::parse_bytes(bytes).map_err(|e| invalid(e.to_string()))?
        };

        let mut hasher = Sha256::new();
        hasher.update(self.fingerprint.as_bytes());
        hasher.update(&wasm);
        let key: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{key}.cwasm")));
        let initial_memory = first_memory_size(&wasm);
        if let Some(artifact) = cached.as_ref().and_then(|file| std::fs::read(file).ok()) {
            return Ok(CompiledModule {
                artifact,
                cache: CacheStatus::Hit,
                initial_memory,
                elapsed: start.elapsed(),
            });
        }

        check_imports(path, &wasm)?;
        let artifact = self.engine.precompile_module(&wasm).map_err(|e| {
            invalid(
                e.chain()
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            )
        })?;
        if let Some(file) = cached {
            store(&file, &artifact);
        }
        Ok(CompiledModule {
            artifact,
            cache: CacheStatus::Miss,
            initial_memory,
            elapsed: start.elapsed(),
        })
    }
}

/// `$XDG_CACHE_HOME/hypercell`, or `~/.cache/hypercell`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("hypercell"))
}

/// Writes a cache entry atomically; a cache that cannot be written is skipped.
fn store(file: &Path, artifact: &[u8]) {
    let Some(dir) = file.parent() else { return };
    let temp = dir.join(format!(".{}.tmp", std::process::id()));
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&temp, artifact))
        .and_then(|()| std::fs::rename(&temp, file));
    if let Err(e) = result {
        tracing::debug!("not caching compiled code in {}: {e}", dir.display());
        let _ = std::fs::remove_file(&temp);
    }
}

/// Checks every import against what a cell provides. Malformed sections are left to
/// the validator, which reports them better.
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
        compiler.compile(Path::new("test.wat"), text.as_bytes(), Instant::now())
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
        assert_eq!(first.artifact, second.artifact);
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
        let garbage = compiler.compile(Path::new("x.wasm"), b"\0asm\x01\0\0\0\x99", Instant::now());
        assert!(matches!(garbage, Err(CompileError::Invalid { .. })));
    }
}
