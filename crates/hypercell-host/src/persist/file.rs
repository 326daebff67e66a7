//! The snapshot file: a fixed header (magic, format version, body length, checksum)
//! and a postcard body holding where the snapshot comes from (Hypercell and ABI version,
//! CPU features, compiler, module and configuration) and the [`CellSnapshot`].
//!
//! Loading treats the file as hostile: every length is checked before it is used, the
//! checksum before the body is decoded, and each problem is one sentence naming it.
//! `docs/snapshot.md` describes the format and the compatibility rules.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::snapshot::CellSnapshot;
use crate::config::CellConfig;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"HYPCSNAP";
/// Version of the layout below; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the body: magic, format version, reserved, body length, checksum.
pub const HEADER_LEN: usize = 32;
/// The largest body a file may declare: far more than any cell's touched memory.
pub const MAX_BODY: u64 = 64 << 30;

/// Where a snapshot comes from, with the snapshot itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The Hypercell version that wrote it.
    pub hypercell_version: String,
    /// The guest ABI version of the cell.
    pub abi_version: u32,
    /// The CPU features the compiled code uses (`hypercell_abi::CpuFeatures` bits).
    pub cpu_features: u32,
    /// The compiler's settings, as the compile cache keys them.
    pub engine: String,
    /// The module the cell runs, as given to `hypercell run`.
    pub module: PathBuf,
    /// The program's arguments, its name first.
    pub args: Vec<String>,
    /// The program's environment.
    pub env: Vec<(String, String)>,
    /// Preopened directories: host path, guest name, read-only.
    pub preopens: Vec<(PathBuf, String, bool)>,
    /// The linear-memory limit.
    pub memory_limit: u64,
    /// The output limit, if any.
    pub output_limit: Option<u64>,
    /// The cell.
    pub snapshot: CellSnapshot,
}

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// The file cannot be read or written.
    #[error("cannot {what} snapshot file `{path}`: {source}")]
    Io {
        /// Read or write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Written by another Hypercell, or for another CPU or compiler.
    #[error("snapshot `{path}` cannot be restored here: {reason}")]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not a snapshot at all.
    #[error("`{0}` is not a Hypercell snapshot (its first bytes are not the snapshot magic)")]
    Foreign(PathBuf),
    /// Shorter than it says it is.
    #[error("snapshot `{path}` is truncated: {len} bytes, where its header needs {needed}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its header implies.
        needed: u64,
    },
    /// Of another format version.
    #[error(
        "snapshot `{path}` has format version {found}, and this Hypercell reads version {FORMAT_VERSION} only"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The contents do not match the checksum, or cannot be decoded.
    #[error("snapshot `{path}` is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl SnapshotFile {
    /// A snapshot file for `snapshot`, of a cell that ran `module` (compiled for
    /// `cpu_features` by a compiler with settings `engine`) with `config`. Paths are
    /// made absolute, so that the file can be restored from anywhere.
    pub fn new(
        module: &Path,
        cpu_features: u32,
        engine: &str,
        config: &CellConfig,
        snapshot: CellSnapshot,
    ) -> Self {
        let absolute =
            |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self {
            hypercell_version: env!("CARGO_PKG_VERSION").into(),
            abi_version: hypercell_abi::ABI_VERSION,
            cpu_features,
            engine: engine.into(),
            module: absolute(module),
            args: config.args.clone(),
            env: config.env.clone(),
            preopens: config
                .preopens
                .iter()
                .map(|p| (absolute(&p.host), p.guest.clone(), p.read_only))
                .collect(),
            memory_limit: config.memory_limit,
            output_limit: config.output_limit,
            snapshot,
        }
    }

    /// The configuration to restore the cell with: the saved one, with `timeout`.
    pub fn config(&self, timeout: Option<std::time::Duration>) -> CellConfig {
        CellConfig {
            memory_limit: self.memory_limit,
            timeout,
            output_limit: self.output_limit,
            args: self.args.clone(),
            env: self.env.clone(),
            preopens: self
                .preopens
                .iter()
                .map(|(host, guest, read_only)| crate::fs::Preopen {
                    host: host.clone(),
                    guest: guest.clone(),
                    read_only: *read_only,
                })
                .collect(),
        }
    }

    /// Checks that the snapshot at `path` can run on this host, whose compiler uses
    /// `cpu_features` and has settings `engine`.
    pub fn check_host(
        &self,
        path: &Path,
        cpu_features: u32,
        engine: &str,
    ) -> Result<(), SnapshotFileError> {
        let incompatible = |reason: String| SnapshotFileError::Incompatible {
            path: path.to_path_buf(),
            reason,
        };
        let version = env!("CARGO_PKG_VERSION");
        if self.hypercell_version != version {
            return Err(incompatible(format!(
                "it was written by Hypercell {}, and this is Hypercell {version}",
                self.hypercell_version
            )));
        }
        if self.abi_version != hypercell_abi::ABI_VERSION {
            return Err(incompatible(format!(
                "its cell speaks guest ABI version {}, and this Hypercell speaks {}",
                self.abi_version,
                hypercell_abi::ABI_VERSION
            )));
        }
        let missing = self.cpu_features & !cpu_features;
        if missing != 0 {
            return Err(incompatible(format!(
                "its code uses CPU features this host lacks ({})",
                hypercell_abi::CpuFeatures::NAMES
                    .iter()
                    .filter(|&&(_, bit)| missing & bit != 0)
                    .map(|&(name, _)| name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.engine != engine {
            return Err(incompatible(
                "its code was compiled with other compiler settings".into(),
            ));
        }
        Ok(())
    }

    /// Writes the snapshot to `path` whole or not at all (a temporary file beside it,
    /// renamed into place).
    pub fn write_to(&self, path: &Path) -> Result<(), SnapshotFileError> {
        let io_error = |source| SnapshotFileError::Io {
            what: "write",
            path: path.to_path_buf(),
            source,
        };
        let body = postcard::to_allocvec(self).map_err(|e| io_error(io::Error::other(e)))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&(body.len() as u64).to_le_bytes());
        header.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", std::process::id()));
        let temp = PathBuf::from(name);
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(&header)?;
            file.write_all(&body)?;
            file.sync_all()
        });
        if let Err(error) = written.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error(error));
        }
        Ok(())
    }

    /// Reads the snapshot file at `path`.
    pub fn read_from(path: &Path) -> Result<Self, SnapshotFileError> {
        let bytes = std::fs::read(path).map_err(|source| SnapshotFileError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(path, &bytes)
    }

    /// Decodes the contents `bytes` of snapshot file `path`.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, SnapshotFileError> {
        let path = || path.to_path_buf();
        let truncated = |needed: u64| SnapshotFileError::Truncated {
            path: path(),
            len: bytes.len() as u64,
            needed,
        };
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(SnapshotFileError::Foreign(path()));
        }
        if bytes.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN as u64));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotFileError::Version {
                path: path(),
                found: version,
            });
        }
        let damaged = |reason: String| SnapshotFileError::Damaged {
            path: path(),
            reason,
        };
        if u32_at(12) != 0 {
            return Err(damaged("its reserved header field is not zero".into()));
        }
        let body_len = u64_at(16);
        if body_len > MAX_BODY {
            return Err(damaged(format!(
                "its header declares a body of {body_len} bytes"
            )));
        }
        let needed = HEADER_LEN as u64 + body_len;
        if (bytes.len() as u64) < needed {
            return Err(truncated(needed));
        }
        if bytes.len() as u64 > needed {
            return Err(damaged(format!(
                "{} bytes follow its body",
                bytes.len() as u64 - needed
            )));
        }
        let body = &bytes[HEADER_LEN..];
        if xxhash_rust::xxh3::xxh3_64(body) != u64_at(24) {
            return Err(damaged("its contents do not match its checksum".into()));
        }
        let (file, rest): (Self, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| damaged(format!("its body cannot be decoded ({e})")))?;
        if !rest.is_empty() {
            return Err(damaged("its body has bytes after the snapshot".into()));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::{
        FileTableState, GrowthState, MemoryImage, ModuleIdentity, PageRun, ServicesState,
    };
    use hypercell_vmm::state::XSAVE_WORDS;
    use hypercell_vmm::{TablesState, VcpuState};
    use proptest::prelude::*;

    fn sample() -> SnapshotFile {
        SnapshotFile {
            hypercell_version: env!("CARGO_PKG_VERSION").into(),
            abi_version: hypercell_abi::ABI_VERSION,
            cpu_features: hypercell_abi::CpuFeatures::SSE3 | hypercell_abi::CpuFeatures::AVX2,
            engine: "engine".into(),
            module: "prog.wasm".into(),
            args: vec!["prog.wasm".into(), "x".into()],
            env: vec![("A".into(), "b".into())],
            preopens: vec![("/tmp".into(), "/data".into(), false)],
            memory_limit: 64 << 20,
            output_limit: None,
            snapshot: CellSnapshot {
                module: ModuleIdentity {
                    len: 10,
                    checksum: 7,
                },
                template: None,
                taken_at_ns: 1,
                identity_capacity: 256 << 10,
                vcpu: VcpuState {
                    regs: Default::default(),
                    sregs: Default::default(),
                    xsave: vec![0x5a; XSAVE_WORDS],
                    xcrs: Default::default(),
                    msrs: vec![Default::default(); 2],
                    events: Default::default(),
                },
                services: ServicesState {
                    files: FileTableState::default(),
                    output_written: 12,
                    denied_growth: 0,
                    growth: GrowthState {
                        mapped: 8 << 20,
                        ready: 8 << 20,
                        linear_memory: 65536,
                        tables: TablesState {
                            next: 0x20_0000,
                            free: vec![],
                        },
                    },
                },
                memory: MemoryImage {
                    size: 16 << 20,
                    module: 0x40_0000..0x40_1000,
                    runs: vec![PageRun {
                        addr: 0x40_0000,
                        bytes: vec![1; 4096],
                    }],
                    zero_runs: vec![(0x80_0000, 0x2000)],
                },
            },
        }
    }

    fn encoded() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        sample().write_to(&path).unwrap();
        std::fs::read(&path).unwrap()
    }

    fn one_sentence(error: &SnapshotFileError) {
        let text = error.to_string();
        assert!(!text.contains('\n') && text.contains("s.snap"), "{text}");
    }

    #[test]
    fn a_written_snapshot_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        sample().write_to(&path).unwrap();
        assert_eq!(SnapshotFile::read_from(&path).unwrap(), sample());
        let missing = SnapshotFile::read_from(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, SnapshotFileError::Io { .. }));
    }

    #[test]
    fn every_truncation_up_to_four_kib_is_refused() {
        let bytes = encoded();
        for len in 0..=4096.min(bytes.len() - 1) {
            let error = SnapshotFile::decode(Path::new("s.snap"), &bytes[..len]).unwrap_err();
            assert!(
                matches!(error, SnapshotFileError::Truncated { .. }),
                "{len}: {error}"
            );
            one_sentence(&error);
        }
    }

    #[test]
    fn every_bit_flipped_in_the_header_and_many_in_the_body_is_refused() {
        let bytes = encoded();
        let positions = (0..HEADER_LEN * 8).chain((HEADER_LEN * 8..bytes.len() * 8).step_by(61));
        for bit in positions {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let error = SnapshotFile::decode(Path::new("s.snap"), &flipped).unwrap_err();
            one_sentence(&error);
        }
    }

    #[test]
    fn foreign_files_versions_cpus_and_compilers_are_named() {
        let bytes = encoded();
        let decode = |bytes: &[u8]| SnapshotFile::decode(Path::new("s.snap"), bytes);
        let foreign = decode(b"\x7fELF and the rest of some file").unwrap_err();
        assert!(
            matches!(foreign, SnapshotFileError::Foreign(_)),
            "{foreign}"
        );
        let mut newer = bytes.clone();
        newer[8] = 2;
        let error = decode(&newer).unwrap_err().to_string();
        assert!(error.contains("format version 2"), "{error}");

        let file = sample();
        let here = hypercell_abi::CpuFeatures::SSE3;
        let error = file
            .check_host(Path::new("s.snap"), here, "engine")
            .unwrap_err();
        assert!(error.to_string().contains("lacks (avx2)"), "{error}");
        let all = u32::MAX;
        let error = file
            .check_host(Path::new("s.snap"), all, "other")
            .unwrap_err();
        assert!(error.to_string().contains("compiler settings"), "{error}");
        let old = SnapshotFile {
            hypercell_version: "0.0.1".into(),
            ..sample()
        };
        let error = old
            .check_host(Path::new("s.snap"), all, "engine")
            .unwrap_err();
        assert!(error.to_string().contains("Hypercell 0.0.1"), "{error}");
        assert!(file.check_host(Path::new("s.snap"), all, "engine").is_ok());
    }

    /// Re-seals `bytes` with a correct checksum and length, so that decoding reaches
    /// the body however it was changed.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let body_len = (bytes.len() - HEADER_LEN) as u64;
        bytes[16..24].copy_from_slice(&body_len.to_le_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&bytes[HEADER_LEN..]);
        bytes[24..32].copy_from_slice(&sum.to_le_bytes());
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_decode_to_a_snapshot_or_one_sentence(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = SnapshotFile::decode(Path::new("s.snap"), &bytes) {
                prop_assert!(!error.to_string().contains('\n'));
            }
        }

        #[test]
        fn changed_bodies_with_valid_checksums_never_panic(
            changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = encoded();
            for (at, value) in changes {
                let at = HEADER_LEN + at.index(bytes.len() - HEADER_LEN);
                bytes[at] = value;
            }
            let end = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1);
            bytes.truncate(end);
            let bytes = reseal(bytes);
            if let Err(error) = SnapshotFile::decode(Path::new("s.snap"), &bytes) {
                prop_assert!(!error.to_string().contains('\n'));
            }
        }
    }
}
