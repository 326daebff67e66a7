//! The snapshot file: a fixed header (magic, format version, the body's length and
//! checksum, the memory image's offset, length and checksum), a postcard body holding
//! where the snapshot comes from (Hypercell and ABI version, CPU features, compiler,
//! module and configuration) and the [`CellSnapshot`] less its pages, and then, from the
//! next page boundary, the memory image: guest memory as a sparse file, each saved page
//! at its guest-physical address and holes elsewhere, so that cells can map it.
//!
//! Loading treats the file as hostile: every length is checked before it is used, the
//! checksum before the body is decoded, and each problem is one sentence naming it.
//! `docs/snapshot.md` describes the format and the compatibility rules.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3Default;

use serde::{Deserialize, Serialize};

use super::snapshot::{CellSnapshot, PageRun, SavedPages};
use crate::config::CellConfig;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"HYPCSNAP";
/// Version of the layout below; a file of another version is refused.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes before the body: magic, format version, reserved, body length and checksum,
/// memory image offset, length and checksum, reserved.
pub const HEADER_LEN: usize = 64;
/// The largest body a file may declare: its memory is in the image, so the body is
/// state and descriptions only.
pub const MAX_BODY: u64 = 1 << 30;
/// The largest memory image a file may declare: a cell's whole memory.
pub const MAX_MEMORY_IMAGE: u64 = hypercell_abi::layout::MAX_MEMORY_SIZE;
/// Alignment of the memory image in the file: a page, so that it can be mapped.
const IMAGE_ALIGN: u64 = 4096;

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
    /// The components the cell was given (bits of [`crate::config::Components`]):
    /// cells from the snapshot get the same.
    pub components: u32,
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
    /// A cell from a template that has read its identity was given another.
    #[error(
        "the program in `{0}` has already read its arguments, environment and directories; a cell from it takes only its own stdin"
    )]
    IdentityRead(PathBuf),
    /// A checkpoint was given where a template was expected.
    #[error("`{0}` is a checkpoint, not a template")]
    NotTemplate(PathBuf),
}

impl SnapshotFile {
    /// Whether the file at `path` starts with the snapshot magic: a template or a
    /// checkpoint rather than a module.
    pub fn is_snapshot(path: &Path) -> bool {
        let mut magic = [0u8; 8];
        std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
            .is_ok_and(|()| magic == MAGIC)
    }

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
            components: config.components.0,
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
            components: crate::config::Components(self.components).known(),
        }
    }

    /// The configuration of a cell started from this template (read from `path`) with
    /// `requested`. From a `start` template the cell takes the requested identity, under
    /// the template's memory limit and components and with its module's name as the
    /// program's; from a
    /// template that has read its identity, the template's, and only the requested time
    /// limit (`identity_given` says whether arguments, environment or directories were
    /// asked for, which such a template refuses).
    pub fn template_config(
        &self,
        path: &Path,
        requested: CellConfig,
        identity_given: bool,
    ) -> Result<CellConfig, SnapshotFileError> {
        match self.snapshot.template {
            None => Err(SnapshotFileError::NotTemplate(path.to_path_buf())),
            Some(crate::persist::TemplatePoint::Start) => {
                let mut config = requested;
                config.memory_limit = self.memory_limit;
                config.components = crate::config::Components(self.components).known();
                let name = self.module.display().to_string();
                match config.args.first_mut() {
                    Some(first) => *first = name,
                    None => config.args.push(name),
                }
                Ok(config)
            }
            Some(_) if identity_given => Err(SnapshotFileError::IdentityRead(path.to_path_buf())),
            Some(_) => Ok(self.config(requested.timeout)),
        }
    }

    /// How its code checks linear-memory bounds: the compiler that loads its module
    /// must be configured alike.
    pub fn bounds_checks(&self) -> hypercell_engine::BoundsChecks {
        crate::compile::bounds_checks_of(&self.engine)
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
        let checks = crate::compile::bounds_checks_of(engine);
        if self.bounds_checks() != checks {
            return Err(incompatible(format!(
                "its code was compiled with {} bounds checks, and this compiler makes {}",
                self.bounds_checks().name(),
                checks.name()
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
        let memory = &self.snapshot.memory;
        let runs = memory.run_contents().ok_or_else(|| {
            io_error(io::Error::other(
                "the snapshot's saved pages are not all at hand",
            ))
        })?;
        let body = postcard::to_allocvec(self).map_err(|e| io_error(io::Error::other(e)))?;
        let memory_offset = memory_offset(body.len() as u64);
        let mut memory_sum = Xxh3Default::new();
        runs.iter().for_each(|run| memory_sum.update(run));
        let header = header(&body, memory.image_len(), memory_sum.digest());
        let temp = temp_beside(path);
        let written = std::fs::File::create(&temp).and_then(|mut file| {
            file.write_all(&header)?;
            file.write_all(&body)?;
            // Pages that were not saved stay holes: they read as zeros and take no disk.
            file.set_len(memory_offset + memory.image_len())?;
            for (run, bytes) in memory.runs.iter().zip(&runs) {
                file.write_all_at(bytes, memory_offset + run.addr)?;
            }
            file.sync_all()
        });
        if let Err(error) = written.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(io_error(error));
        }
        Ok(())
    }

    /// Writes the snapshot to `out` as a stream, for [`Self::receive_stream`] to make a
    /// file of at the other end of a connection: the body's length and the body, the
    /// saved pages' contents back to back (no holes, and no file at this end), and their
    /// checksum. Returns the bytes written.
    pub fn send_stream(&self, out: &mut impl Write) -> io::Result<u64> {
        let body = postcard::to_allocvec(self).map_err(io::Error::other)?;
        out.write_all(&(body.len() as u64).to_le_bytes())?;
        out.write_all(&body)?;
        let mut sum = Xxh3Default::new();
        let mut sent = 0;
        let memory = &self.snapshot.memory;
        match &memory.pages {
            SavedPages::InMemory(bytes) if bytes.len() as u64 == memory.saved_len() => {
                sum.update(bytes);
                out.write_all(bytes)?;
                sent += bytes.len();
            }
            _ => {
                let runs = memory.run_contents().ok_or_else(|| {
                    io::Error::other("the snapshot's saved pages are not all at hand")
                })?;
                for run in &runs {
                    sum.update(run);
                    out.write_all(run)?;
                    sent += run.len();
                }
            }
        }
        out.write_all(&sum.digest().to_le_bytes())?;
        Ok(8 + body.len() as u64 + sent as u64 + 8)
    }

    /// Makes the snapshot file `path` of a stream that [`Self::send_stream`] wrote,
    /// read from `input`, naming `module` as its module: the file [`Self::write_to`]
    /// would write, whole or not at all, its pages written as they arrive. The stream
    /// is hostile: its lengths are bounded as a file's are, its runs checked, and its
    /// pages must match its checksum. Returns what it describes, its pages read from
    /// the file written.
    pub fn receive_stream(
        input: &mut impl Read,
        path: &Path,
        module: &Path,
    ) -> Result<Self, SnapshotFileError> {
        let io_error = |what, source| SnapshotFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let damaged = |reason: String| SnapshotFileError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let mut word = [0; 8];
        input
            .read_exact(&mut word)
            .map_err(|e| io_error("receive", e))?;
        let body_len = u64::from_le_bytes(word);
        if body_len > MAX_BODY {
            return Err(damaged(format!("it declares a body of {body_len} bytes")));
        }
        let mut body = vec![0; body_len as usize];
        input
            .read_exact(&mut body)
            .map_err(|e| io_error("receive", e))?;
        let (mut file, rest): (Self, &[u8]) = postcard::take_from_bytes(&body)
            .map_err(|e| damaged(format!("its body cannot be decoded ({e})")))?;
        if !rest.is_empty() {
            return Err(damaged("its body has bytes after the snapshot".into()));
        }
        let memory = &file.snapshot.memory;
        memory.check_runs().map_err(|e| damaged(e.to_string()))?;
        let image_len = memory.image_len();
        if image_len > MAX_MEMORY_IMAGE {
            return Err(damaged(format!(
                "its memory image is {image_len} bytes long"
            )));
        }
        file.module = module.to_path_buf();
        let body =
            postcard::to_allocvec(&file).map_err(|e| io_error("write", io::Error::other(e)))?;
        let memory_offset = memory_offset(body.len() as u64);
        let temp = temp_beside(path);
        let written = (|| -> Result<(), SnapshotFileError> {
            let out = std::fs::File::create(&temp).map_err(|e| io_error("write", e))?;
            out.set_len(memory_offset + image_len)
                .and_then(|()| out.write_all_at(&body, HEADER_LEN as u64))
                .map_err(|e| io_error("write", e))?;
            let mut sum = Xxh3Default::new();
            // No larger than its longest run: a migrated cell waits, paused, for this.
            let longest = file.snapshot.memory.runs.iter().map(|run| run.len).max();
            let mut buffer = vec![0; longest.unwrap_or(0).min(1 << 20) as usize];
            for run in &file.snapshot.memory.runs {
                let mut at = memory_offset + run.addr;
                let mut left = run.len;
                while left > 0 {
                    let piece = &mut buffer[..left.min(1 << 20) as usize];
                    input
                        .read_exact(piece)
                        .map_err(|e| io_error("receive", e))?;
                    sum.update(piece);
                    out.write_all_at(piece, at)
                        .map_err(|e| io_error("write", e))?;
                    at += piece.len() as u64;
                    left -= piece.len() as u64;
                }
            }
            input
                .read_exact(&mut word)
                .map_err(|e| io_error("receive", e))?;
            let memory_sum = sum.digest();
            if memory_sum != u64::from_le_bytes(word) {
                return Err(damaged("its memory does not match its checksum".into()));
            }
            out.write_all_at(&header(&body, image_len, memory_sum), 0)
                .map_err(|e| io_error("write", e))?;
            std::fs::rename(&temp, path).map_err(|e| io_error("write", e))
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(error);
        }
        let written = std::fs::File::open(path).map_err(|e| io_error("read", e))?;
        file.snapshot.memory.pages = SavedPages::File {
            file: Arc::new(written),
            offset: memory_offset,
        };
        Ok(file)
    }

    /// Reads the snapshot file at `path`. Its memory image stays in the file, mapped
    /// privately into each cell restored from it: the file must not be changed while
    /// such cells run.
    pub fn read_from(path: &Path) -> Result<Self, SnapshotFileError> {
        let io_error = |source| SnapshotFileError::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_error)?;
        // SAFETY: the mapping is read-only and private to this function; a file changed
        // under it changes only the bytes read, which are all checked.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        let data = |image: Range<u64>| data_extents(&file, image);
        let (mut snapshot, memory_offset) = Self::decode_checked(path, &map, data)?;
        snapshot.snapshot.memory.pages = SavedPages::File {
            file: Arc::new(file),
            offset: memory_offset,
        };
        Ok(snapshot)
    }

    /// Decodes the contents `bytes` of snapshot file `path`, with its memory in memory.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, SnapshotFileError> {
        let whole = |image: Range<u64>| vec![image];
        let (mut snapshot, memory_offset) = Self::decode_checked(path, bytes, whole)?;
        let memory = &mut snapshot.snapshot.memory;
        let mut pages = Vec::with_capacity(memory.saved_len() as usize);
        for run in &memory.runs {
            let at = (memory_offset + run.addr) as usize;
            pages.extend_from_slice(&bytes[at..at + run.len as usize]);
        }
        memory.pages = SavedPages::InMemory(pages);
        Ok(snapshot)
    }

    /// Checks and decodes the contents `bytes` of snapshot file `path`; returns the
    /// snapshot without its pages, and where its memory image starts in `bytes`.
    /// `data` gives the parts of a range of the file that may hold data (not holes):
    /// those outside the saved pages must hold zeros.
    fn decode_checked(
        path: &Path,
        bytes: &[u8],
        data: impl Fn(Range<u64>) -> Vec<Range<u64>>,
    ) -> Result<(Self, u64), SnapshotFileError> {
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
        if u32_at(12) != 0 || u64_at(56) != 0 {
            return Err(damaged("its reserved header fields are not zero".into()));
        }
        let body_len = u64_at(16);
        let memory_len = u64_at(40);
        if body_len > MAX_BODY || memory_len > MAX_MEMORY_IMAGE {
            return Err(damaged(format!(
                "its header declares a body of {body_len} bytes and a memory image of {memory_len}"
            )));
        }
        let offset = memory_offset(body_len);
        if u64_at(32) != offset {
            return Err(damaged(format!(
                "its header places the memory image at byte {}, where it starts at {offset}",
                u64_at(32)
            )));
        }
        let needed = offset + memory_len;
        let len = bytes.len() as u64;
        if len < needed {
            return Err(truncated(needed));
        }
        if len > needed {
            return Err(damaged(format!(
                "{} bytes follow its memory image",
                len - needed
            )));
        }
        let body_end = HEADER_LEN + body_len as usize;
        let body = &bytes[HEADER_LEN..body_end];
        if bytes[body_end..offset as usize].iter().any(|&b| b != 0) {
            return Err(damaged(
                "the padding before its memory image is not zeros".into(),
            ));
        }
        if xxhash_rust::xxh3::xxh3_64(body) != u64_at(24) {
            return Err(damaged("its contents do not match its checksum".into()));
        }
        let (file, rest): (Self, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| damaged(format!("its body cannot be decoded ({e})")))?;
        if !rest.is_empty() {
            return Err(damaged("its body has bytes after the snapshot".into()));
        }
        let memory = &file.snapshot.memory;
        memory.check_runs().map_err(|e| damaged(e.to_string()))?;
        if memory.image_len() != memory_len {
            return Err(damaged(format!(
                "its memory image is {memory_len} bytes long, where its pages end at {}",
                memory.image_len()
            )));
        }
        let mut memory_sum = Xxh3Default::new();
        for run in &memory.runs {
            let at = (offset + run.addr) as usize;
            memory_sum.update(&bytes[at..at + run.len as usize]);
        }
        if memory_sum.digest() != u64_at(48) {
            return Err(damaged("its memory does not match its checksum".into()));
        }
        // Bytes between the saved pages are not checksummed: they must be zeros (and are
        // holes, unless the file was copied without them).
        for extent in data(offset..needed) {
            for gap in gaps(&memory.runs, extent.start - offset..extent.end - offset) {
                let gap = &bytes[(offset + gap.start) as usize..(offset + gap.end) as usize];
                if gap.iter().any(|&b| b != 0) {
                    return Err(damaged(
                        "its memory image holds data outside its saved pages".into(),
                    ));
                }
            }
        }
        Ok((file, offset))
    }
}

/// The parts of `range` that no run of `runs` (in order, apart) covers.
fn gaps(runs: &[PageRun], range: Range<u64>) -> Vec<Range<u64>> {
    let mut gaps = Vec::new();
    let mut at = range.start;
    for run in runs {
        let (start, end) = (run.addr, run.addr + run.len);
        if end <= at {
            continue;
        }
        if start >= range.end {
            break;
        }
        if start > at {
            gaps.push(at..start);
        }
        at = end;
    }
    if at < range.end {
        gaps.push(at..range.end);
    }
    gaps
}

/// The parts of `range` of `file` that hold data rather than holes, as
/// `SEEK_DATA`/`SEEK_HOLE` report them; all of it where the filesystem cannot say.
fn data_extents(file: &std::fs::File, range: Range<u64>) -> Vec<Range<u64>> {
    let seek = |offset: u64, whence: libc::c_int| {
        // SAFETY: lseek only moves this descriptor's offset, which nothing else uses
        // (the file is read through a mapping).
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        u64::try_from(at).ok()
    };
    let mut extents = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let Some(start) = seek(at, libc::SEEK_DATA) else {
            // ENXIO: no data after `at`. Anything else: the filesystem cannot say.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO) {
                extents.push(at..range.end);
            }
            break;
        };
        if start >= range.end {
            break;
        }
        let end = seek(start, libc::SEEK_HOLE).map_or(range.end, |end| end.min(range.end));
        extents.push(start.max(at)..end.max(start + 1).min(range.end));
        at = end.max(start + 1);
    }
    extents
}

/// Where the memory image starts in a file whose body is `body_len` bytes: on the first
/// page boundary after it, so that the image can be mapped.
/// The header of a file whose body is `body`, with a memory image of `image_len` bytes
/// whose saved pages have the checksum `memory_sum`.
fn header(body: &[u8], image_len: u64, memory_sum: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    header.extend_from_slice(&memory_offset(body.len() as u64).to_le_bytes());
    header.extend_from_slice(&image_len.to_le_bytes());
    header.extend_from_slice(&memory_sum.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);
    header
}

/// A temporary file beside `path`, renamed into place once written.
fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

fn memory_offset(body_len: u64) -> u64 {
    (HEADER_LEN as u64 + body_len).next_multiple_of(IMAGE_ALIGN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::{
        FileTableState, GrowthState, MemoryImage, ModuleIdentity, PageRun, SavedPages,
        ServicesState,
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
            components: hypercell_abi::Components::ALL.0,
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
                    module: 0x4000..0x5000,
                    runs: vec![
                        PageRun {
                            addr: 0x1000,
                            len: 0x2000,
                        },
                        PageRun {
                            addr: 0x4000,
                            len: 0x1000,
                        },
                    ],
                    pages: SavedPages::InMemory((0..0x3000).map(|i| (i % 251) as u8).collect()),
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
    fn a_streamed_snapshot_becomes_the_file_naming_the_module_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = Vec::new();
        let sent = sample().send_stream(&mut stream).unwrap();
        assert_eq!(sent, stream.len() as u64);
        let path = dir.path().join("s.snap");
        let module = Path::new("/here/prog.wasm");
        SnapshotFile::receive_stream(&mut &stream[..], &path, module).unwrap();
        let received = SnapshotFile::read_from(&path).unwrap();
        assert_eq!(received.module, module);
        assert_eq!(
            SnapshotFile {
                module: "prog.wasm".into(),
                ..received
            },
            sample()
        );
        // A flipped page byte, a stream cut short and an absurd body length are refused,
        // and leave no file.
        let page = stream.len() - 8 - 100;
        let mut flipped = stream.clone();
        flipped[page] ^= 1;
        let short = &stream[..stream.len() - 9];
        let mut huge = stream.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let other = dir.path().join("t.snap");
        for bad in [&flipped[..], short, &huge[..]] {
            let error = SnapshotFile::receive_stream(&mut &bad[..], &other, module).unwrap_err();
            assert!(!error.to_string().contains('\n'), "{error}");
            assert!(!other.exists());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn memory_between_saved_pages_is_a_hole_and_must_read_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        sample().write_to(&path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let offset = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
        let file = std::fs::File::open(&path).unwrap();
        let data = data_extents(&file, offset..bytes.len() as u64);
        assert!(
            data.iter()
                .all(|extent| !extent.contains(&(offset + 0x3000))),
            "the unsaved page between the runs is a hole: {data:x?}"
        );
        // A copy made without holes reads the same.
        let dense = dir.path().join("dense.snap");
        std::fs::write(&dense, &bytes).unwrap();
        assert_eq!(SnapshotFile::read_from(&dense).unwrap(), sample());
        // Data where no page was saved is refused, from a file as from bytes.
        bytes[offset as usize + 0x3100] = 1;
        std::fs::write(&dense, &bytes).unwrap();
        for error in [
            SnapshotFile::read_from(&dense).unwrap_err(),
            SnapshotFile::decode(Path::new("s.snap"), &bytes).unwrap_err(),
        ] {
            assert!(
                error.to_string().contains("outside its saved pages"),
                "{error}"
            );
        }
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
        newer[8] = 3;
        let error = decode(&newer).unwrap_err().to_string();
        assert!(error.contains("format version 3"), "{error}");

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
