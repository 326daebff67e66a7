//! The on-disk compile cache.
//!
//! Under the cache directory (`$XDG_CACHE_HOME/hypercell`), `v1/` holds:
//! - `entries/KEY`: the compiled code of one module for one compiler, KEY being the hex
//!   sha256 of the compiler fingerprint and the module's binary. A 4 KiB header (magic,
//!   format version, body offset and length, the module's initial memory, KEY, the
//!   body's xxh3 checksum, which also names the compiled code in snapshots, and an xxh3
//!   checksum of those fields), then the artifact at offset 4096, so that its pages can
//!   be mapped straight into a cell.
//! - `index/ID`: the KEY of a module file known by its identity (device, inode, size,
//!   mtime and ctime) and the compiler fingerprint, ID hashing both; a run that finds
//!   one neither reads nor hashes the module.
//! - `tmp/PID-RANDOM`: files being written, renamed into place once complete.
//! - `verified/KEY`: the identity (inode, size, mtime, ctime) entry KEY had when its
//!   checksum last passed. While the entry keeps that identity its body is not hashed
//!   again: any write or truncation changes its ctime, so a changed entry is always
//!   verified whole, and an unchanged one costs no read of its 10-200 MB.
//! - `templates/DIGEST-LIMIT.tmpl`: templates the containerd shim made of the modules
//!   it ran (`hypercell-shim`'s `templates.rs`), removed by [`CompileCache::clean`] with
//!   the rest.
//!
//! Files in place are never written again: replacing or evicting one unlinks it, which
//! leaves the mappings of running cells intact. Nothing is synced either: an entry
//! damaged by a crash fails its checksum and is compiled again.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memmap2::Mmap;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

use super::artifact::Artifact;
use crate::config::{format_size, parse_memory_size};

/// The cache's size bound when `HYPERCELL_CACHE_MAX` does not set one.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;
/// The environment variable that bounds the cache's size, such as `512M`.
pub const MAX_SIZE_VAR: &str = "HYPERCELL_CACHE_MAX";

/// The directory of this layout and entry format, under the cache directory.
const LAYOUT: &str = "v1";
const ENTRIES: &str = "entries";
const INDEX: &str = "index";
const TEMP: &str = "tmp";
const VERIFIED: &str = "verified";
const TEMPLATES: &str = "templates";

const MAGIC: [u8; 8] = *b"HCENTRY\0";
const FORMAT_VERSION: u32 = 2;
/// Where the artifact starts in an entry: page-aligned, so the file can be mapped.
const BODY_OFFSET: usize = 4096;
/// Header bytes covered by the checksum, which follows them.
const HEADER_FIELDS: usize = 72;
const HEADER_LEN: usize = HEADER_FIELDS + 8;

const INDEX_MAGIC: &str = "hypercell index 1";
/// How long a module file's ctime must lie in the past before its identity is indexed.
/// A file rewritten within one timestamp tick of the filesystem (up to 2 s on some)
/// keeps its ctime, so a younger identity may not yet name one content.
const SETTLE_TIME: Duration = Duration::from_secs(2);
/// Hits refresh an entry's mtime, the LRU clock, at most this often.
const TOUCH_AFTER: Duration = Duration::from_secs(3600);
/// Temporary files this old are removed even if their writer seems alive.
const TEMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// Errors managing the compile cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The size bound in the environment is not a size.
    #[error("{MAX_SIZE_VAR} is `{0}`, which is not a size such as 512M or 2G")]
    MaxSize(String),
    /// A cache directory cannot be listed.
    #[error("cannot list the compile-cache directory `{path}`: {source}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A cache file cannot be removed.
    #[error("cannot remove `{path}` from the compile cache: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// `$XDG_CACHE_HOME/hypercell`, or `~/.cache/hypercell`; `None` when neither is set to
/// an absolute path.
pub fn default_cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

fn cache_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG base directory spec: a relative path is invalid and must be ignored.
    let absolute = |dir: OsString| Some(PathBuf::from(dir)).filter(|dir| dir.is_absolute());
    let base = xdg_cache_home
        .and_then(absolute)
        .or_else(|| home.and_then(absolute).map(|home| home.join(".cache")))?;
    Some(base.join("hypercell"))
}

/// The cache's size bound: `HYPERCELL_CACHE_MAX`, or [`DEFAULT_MAX_SIZE`].
pub fn max_size_from_env() -> Result<u64, CacheError> {
    match std::env::var_os(MAX_SIZE_VAR) {
        None => Ok(DEFAULT_MAX_SIZE),
        Some(value) if value.is_empty() => Ok(DEFAULT_MAX_SIZE),
        Some(value) => {
            let text = value.to_string_lossy();
            parse_memory_size(&text).map_err(|_| CacheError::MaxSize(text.into_owned()))
        }
    }
}

/// What [`CompileCache::clean`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Compiled modules.
    pub entries: u64,
    /// Index records (which compiled module a module file has).
    pub index_records: u64,
    /// Temporary files left by interrupted writers.
    pub temp_files: u64,
    /// Templates the containerd shim kept.
    pub templates: u64,
    /// Disk space freed, in bytes.
    pub bytes: u64,
}

/// The content key of compiled code: sha256 of the compiler fingerprint and the
/// module's binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key([u8; 32]);

impl Key {
    pub(super) fn of(fingerprint: &str, wasm: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(fingerprint.as_bytes());
        hasher.update(wasm);
        Self(hasher.finalize().into())
    }

    fn from_hex(text: &str) -> Option<Self> {
        let mut key = [0; 32];
        if text.len() != 64 {
            return None;
        }
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(key))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What identifies one version of a module file without reading it. The ctime is
/// there because a user can set the mtime back but not the ctime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    pub(super) fn of(metadata: &Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// The file's size in bytes.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Whether the ctime lies at least `settle` before `now`.
    fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let (secs, nanos) = self.ctime;
        let ctime = u64::try_from(secs)
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32)));
        ctime.is_none_or(|ctime| now.duration_since(ctime).is_ok_and(|age| age >= settle))
    }
}

impl fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dev {} ino {} size {} mtime {}.{:09} ctime {}.{:09}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

/// Compiled code found in the cache.
pub(super) struct Found {
    pub(super) artifact: Artifact,
    pub(super) initial_memory: u64,
}

/// Why an entry cannot be used.
#[derive(Debug, PartialEq, Eq)]
enum Problem {
    Truncated { len: u64, expected: Option<u64> },
    Foreign,
    Version(u32),
    Misplaced,
    Damaged,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated {
                len,
                expected: Some(expected),
            } => write!(f, "it is truncated ({len} of {expected} bytes)"),
            Self::Truncated {
                len,
                expected: None,
            } => {
                write!(f, "it is truncated ({len} bytes, shorter than its header)")
            }
            Self::Foreign => f.write_str("it is not a Hypercell compile-cache entry"),
            Self::Version(version) => {
                write!(f, "it has format version {version}, not {FORMAT_VERSION}")
            }
            Self::Misplaced => f.write_str("it holds the code of another module"),
            Self::Damaged => f.write_str("its contents do not match its checksum"),
        }
    }
}

/// The header of an entry.
struct Header {
    body_len: u64,
    initial_memory: u64,
    key: Key,
    /// xxh3 of the body (set by `check`; `encode` computes it).
    body_checksum: u64,
}

impl Header {
    /// The header block for `body`, padded to [`BODY_OFFSET`].
    fn encode(&self, body: &[u8]) -> Vec<u8> {
        let mut block = Vec::with_capacity(BODY_OFFSET);
        block.extend_from_slice(&MAGIC);
        block.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        block.extend_from_slice(&(BODY_OFFSET as u32).to_le_bytes());
        block.extend_from_slice(&self.body_len.to_le_bytes());
        block.extend_from_slice(&self.initial_memory.to_le_bytes());
        block.extend_from_slice(&self.key.0);
        block.extend_from_slice(&xxh3_64(body).to_le_bytes());
        debug_assert_eq!(block.len(), HEADER_FIELDS);
        let sum = xxh3_64(&block);
        block.extend_from_slice(&sum.to_le_bytes());
        block.resize(BODY_OFFSET, 0);
        block
    }

    /// Checks a whole entry file, `file`, against `key`; returns the header. The
    /// body's checksum is verified when `verify_body` is set.
    fn check(file: &[u8], key: &Key, verify_body: bool) -> Result<Self, Problem> {
        let len = file.len() as u64;
        let truncated = Problem::Truncated {
            len,
            expected: None,
        };
        if !file.starts_with(&MAGIC) {
            return Err(if MAGIC.starts_with(file) {
                truncated
            } else {
                Problem::Foreign
            });
        }
        if file.len() < HEADER_LEN {
            return Err(truncated);
        }
        let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(Problem::Version(version));
        }
        let header = Self {
            body_len: u64_at(16),
            initial_memory: u64_at(24),
            key: Key(file[32..64].try_into().unwrap()),
            body_checksum: u64_at(64),
        };
        if u32_at(12) as usize != BODY_OFFSET {
            return Err(Problem::Damaged);
        }
        let expected = (BODY_OFFSET as u64).saturating_add(header.body_len);
        if len < expected {
            return Err(Problem::Truncated {
                len,
                expected: Some(expected),
            });
        }
        if len > expected {
            return Err(Problem::Damaged);
        }
        if header.key != *key {
            return Err(Problem::Misplaced);
        }
        if xxh3_64(&file[..HEADER_FIELDS]) != u64_at(HEADER_FIELDS)
            || verify_body && xxh3_64(&file[BODY_OFFSET..]) != header.body_checksum
        {
            return Err(Problem::Damaged);
        }
        Ok(header)
    }
}

/// The on-disk compile cache: compiled code by content, an index of module files by
/// identity, a size bound kept by evicting the least recently used files.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_size: u64,
    settle: Duration,
}

impl CompileCache {
    /// A cache in `dir`, bounded to [`DEFAULT_MAX_SIZE`].
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_size: DEFAULT_MAX_SIZE,
            settle: SETTLE_TIME,
        }
    }

    /// The cache in [`default_cache_dir`], bounded by [`max_size_from_env`]; `None`
    /// when there is no cache directory.
    pub fn from_env() -> Result<Option<Self>, CacheError> {
        let Some(dir) = default_cache_dir() else {
            return Ok(None);
        };
        Ok(Some(Self::new(dir).with_max_size(max_size_from_env()?)))
    }

    /// The same cache bounded to `bytes` on disk.
    pub fn with_max_size(self, bytes: u64) -> Self {
        Self {
            max_size: bytes,
            ..self
        }
    }

    /// Indexes module files by identity however young their ctime, so that tests need
    /// not wait [`SETTLE_TIME`].
    #[cfg(test)]
    pub(super) fn settling_at_once(self) -> Self {
        Self {
            settle: Duration::ZERO,
            ..self
        }
    }

    /// Where the containerd shim keeps the templates it made.
    pub fn templates_dir(&self) -> PathBuf {
        self.path(TEMPLATES)
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.join(LAYOUT).join(sub)
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        self.path(ENTRIES).join(key.to_string())
    }

    fn index_path(&self, fingerprint: &str, identity: &FileIdentity) -> PathBuf {
        let id = Sha256::new()
            .chain_update(fingerprint)
            .chain_update(identity.to_string())
            .finalize();
        let name: String = id[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.path(INDEX).join(name)
    }

    fn index_record(fingerprint: &str, identity: &FileIdentity) -> String {
        format!("{INDEX_MAGIC}\n{fingerprint}\n{identity}\n")
    }

    /// The compiled code the index names for the module file `identity`; `None` when
    /// the index does not know it or its entry is gone or unusable.
    pub(super) fn find_by_identity(
        &self,
        fingerprint: &str,
        identity: &FileIdentity,
    ) -> Option<Found> {
        if !self.may_index(identity) {
            return None;
        }
        let path = self.index_path(fingerprint, identity);
        let file = File::open(&path).ok()?;
        let mut record = String::new();
        // A record is a few hundred bytes; anything longer is not one.
        (&file).take(4096).read_to_string(&mut record).ok()?;
        let key = record
            .strip_prefix(&Self::index_record(fingerprint, identity))
            .and_then(|rest| rest.strip_suffix('\n'))
            .and_then(Key::from_hex)?;
        let found = self.load(&key)?;
        if let Ok(metadata) = file.metadata() {
            refresh(&file, &metadata);
        }
        Some(found)
    }

    /// Whether a module file read just now with `identity` may be indexed: whether its
    /// ctime is old enough that any later change to the file gets another.
    pub(super) fn may_index(&self, identity: &FileIdentity) -> bool {
        identity.settled(SystemTime::now(), self.settle)
    }

    /// Records that the module file `identity` (see [`Self::may_index`]) has the
    /// compiled code `key`; returns whether it wrote the record.
    pub(super) fn record(&self, fingerprint: &str, identity: &FileIdentity, key: &Key) -> bool {
        let path = self.index_path(fingerprint, identity);
        let record = format!("{}{key}\n", Self::index_record(fingerprint, identity));
        match self.install(&path, &[record.as_bytes()]) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("not indexing in {}: {e}", path.display());
                false
            }
        }
    }

    /// The compiled code stored under `key`; `None` when there is none, or only an
    /// unusable entry, which is reported and removed.
    pub(super) fn load(&self, key: &Key) -> Option<Found> {
        let path = self.entry_path(key);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!("cannot open compile-cache entry {}: {e}", path.display());
                }
                return None;
            }
        };
        let metadata = file.metadata().ok()?;
        // SAFETY: entries are never written once in place (see the module docs): the
        // mapping sees fixed contents, unless someone outside Hypercell writes to or
        // truncates the file, which no cache that maps its entries can defend against.
        let map = match unsafe { Mmap::map(&file) } {
            Ok(map) => map,
            Err(e) => {
                tracing::debug!("cannot map compile-cache entry {}: {e}", path.display());
                return None;
            }
        };
        let verified = self.verified(key, &metadata);
        match Header::check(&map, key, !verified) {
            Ok(header) => {
                let touched = refresh(&file, &metadata);
                if let Some(metadata) = (touched || !verified)
                    .then(|| file.metadata().ok())
                    .flatten()
                {
                    self.stamp_verified(key, &metadata);
                }
                Some(Found {
                    artifact: Artifact::mapped(file, map, BODY_OFFSET, header.body_checksum),
                    initial_memory: header.initial_memory,
                })
            }
            Err(problem) => {
                self.discard(&path, &problem);
                None
            }
        }
    }

    /// Whether entry `key`, now with `metadata`, is as it was when its checksum last
    /// passed.
    fn verified(&self, key: &Key, metadata: &Metadata) -> bool {
        let stamp = fs::read_to_string(self.path(VERIFIED).join(key.to_string()));
        stamp.is_ok_and(|stamp| stamp == FileIdentity::of(metadata).to_string())
    }

    /// Records that entry `key`, with `metadata`, passed its checksum, once its ctime
    /// is old enough that any later change to it gets another (file times move in
    /// coarse ticks: a write in the tick of the stamp would keep its ctime).
    fn stamp_verified(&self, key: &Key, metadata: &Metadata) {
        let identity = FileIdentity::of(metadata);
        if !identity.settled(SystemTime::now(), self.settle) {
            return;
        }
        let path = self.path(VERIFIED).join(key.to_string());
        let stamp = identity.to_string();
        if let Err(e) = self.install(&path, &[stamp.as_bytes()]) {
            tracing::debug!("not recording a verified entry in {}: {e}", path.display());
        }
    }

    /// Reports an unusable entry once, by removing it.
    fn discard(&self, path: &Path, problem: &Problem) {
        let outcome = match fs::remove_file(path) {
            Ok(()) => "removed it".to_string(),
            Err(e) => format!("could not remove it ({e})"),
        };
        // Compiling again costs time, not the run: a warning, and on stderr because the
        // default log level hides warnings.
        let _ = writeln!(
            io::stderr(),
            "warning: ignoring compile-cache entry `{}`: {problem}; {outcome} and compiling the module again",
            path.display()
        );
    }

    /// Stores `artifact` under `key` and returns it mapped from the new entry; returns
    /// it in memory when the cache cannot take it.
    pub(super) fn store(&self, key: &Key, initial_memory: u64, artifact: Vec<u8>) -> Artifact {
        let size = (BODY_OFFSET + artifact.len()).next_multiple_of(4096) as u64;
        if size > self.max_size {
            tracing::debug!(
                "not caching {} of compiled code: the cache is bounded to {}",
                format_size(size),
                format_size(self.max_size)
            );
            return Artifact::in_memory(artifact);
        }
        let checksum = xxh3_64(&artifact);
        let header = Header {
            body_len: artifact.len() as u64,
            initial_memory,
            key: *key,
            body_checksum: checksum,
        }
        .encode(&artifact);
        let path = self.entry_path(key);
        let mapped = self.install(&path, &[&header, &artifact]).and_then(|file| {
            // SAFETY: as in `load`: the entry is in place and never written again.
            let map = unsafe { Mmap::map(&file) }?;
            Ok(Artifact::mapped(file, map, BODY_OFFSET, checksum))
        });
        match mapped {
            Ok(mapped) => mapped,
            Err(e) => {
                tracing::debug!("not caching compiled code in {}: {e}", path.display());
                Artifact::in_memory(artifact)
            }
        }
    }

    /// Writes `parts` to a new temporary file and renames it to `dest`; returns the
    /// file, opened read-only.
    fn install(&self, dest: &Path, parts: &[&[u8]]) -> io::Result<File> {
        let (temp, mut file) = self.create_temp()?;
        let result = (|| {
            for part in parts {
                file.write_all(part)?;
            }
            // The temporary name is this process's alone, so this is the file written.
            let written = File::open(&temp)?;
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&temp, dest)?;
            Ok(written)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn create_temp(&self) -> io::Result<(PathBuf, File)> {
        let dir = self.path(TEMP);
        fs::create_dir_all(&dir)?;
        loop {
            // The pid tells `sweep_temp` whether the writer is alive; the random part
            // keeps a process's own files apart.
            let random = std::hash::RandomState::new().hash_one(Instant::now());
            let path = dir.join(format!("{}-{random:016x}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes temporary files whose writer is gone or that are over an hour old.
    /// Cheap: `tmp/` is empty unless a writer was interrupted.
    pub(super) fn sweep_temp(&self) {
        let Ok(dir) = fs::read_dir(self.path(TEMP)) else {
            return;
        };
        let now = SystemTime::now();
        for file in dir.flatten() {
            let name = file.file_name();
            let writer_gone = name
                .to_str()
                .and_then(|name| name.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<i32>().ok())
                .is_some_and(process_gone);
            let stale = || {
                file.metadata()
                    .and_then(|metadata| metadata.modified())
                    .is_ok_and(|modified| {
                        now.duration_since(modified)
                            .is_ok_and(|age| age > TEMP_MAX_AGE)
                    })
            };
            if writer_gone || stale() {
                let path = file.path();
                match fs::remove_file(&path) {
                    Ok(()) => tracing::debug!("removed abandoned {}", path.display()),
                    Err(e) => tracing::debug!("cannot remove {}: {e}", path.display()),
                }
            }
        }
    }

    /// Removes the least recently used entries and index records until the cache
    /// fits its bound.
    pub(super) fn evict(&self) {
        let mut files = Vec::new();
        let mut total = 0;
        for sub in [ENTRIES, INDEX, VERIFIED] {
            let Ok(dir) = fs::read_dir(self.path(sub)) else {
                continue;
            };
            for file in dir.flatten() {
                let Ok(metadata) = file.metadata() else {
                    continue;
                };
                let used = disk_usage(&metadata);
                total += used;
                files.push((metadata.modified().unwrap_or(UNIX_EPOCH), used, file.path()));
            }
        }
        if total <= self.max_size {
            return;
        }
        files.sort_unstable();
        for (_, used, path) in files {
            if total <= self.max_size {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => tracing::debug!("evicted {}", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!("cannot evict {}: {e}", path.display());
                    continue;
                }
            }
            total -= used;
        }
    }

    /// Removes every entry, index record and temporary file, including those of
    /// earlier Hypercell versions.
    pub fn clean(&self) -> Result<Cleaned, CacheError> {
        let mut cleaned = Cleaned::default();
        let all = |_: &str| true;
        cleaned.entries = remove_files(&self.path(ENTRIES), all, &mut cleaned.bytes)?;
        cleaned.index_records = remove_files(&self.path(INDEX), all, &mut cleaned.bytes)?;
        cleaned.temp_files = remove_files(&self.path(TEMP), all, &mut cleaned.bytes)?;
        remove_files(&self.path(VERIFIED), all, &mut cleaned.bytes)?;
        cleaned.templates = remove_files(
            &self.path(TEMPLATES),
            |name| name.ends_with(".tmpl"),
            &mut cleaned.bytes,
        )?;
        // Their locks, and files of writers that were interrupted.
        remove_files(&self.path(TEMPLATES), all, &mut cleaned.bytes)?;
        // Earlier versions kept `KEY.cwasm` entries and `.PID.tmp` files at the top.
        cleaned.entries += remove_files(
            &self.dir,
            |name| name.ends_with(".cwasm"),
            &mut cleaned.bytes,
        )?;
        cleaned.temp_files += remove_files(
            &self.dir,
            |name| name.starts_with('.') && name.ends_with(".tmp"),
            &mut cleaned.bytes,
        )?;
        for sub in [ENTRIES, INDEX, TEMP, VERIFIED, TEMPLATES] {
            let _ = fs::remove_dir(self.path(sub));
        }
        let _ = fs::remove_dir(self.dir.join(LAYOUT));
        Ok(cleaned)
    }
}

/// Bytes a file takes on disk.
fn disk_usage(metadata: &Metadata) -> u64 {
    metadata.blocks() * 512
}

/// Refreshes a cache file's mtime, the LRU clock, unless it is recent; returns whether
/// it did.
fn refresh(file: &File, metadata: &Metadata) -> bool {
    let now = SystemTime::now();
    let recent = metadata.modified().is_ok_and(|modified| {
        now.duration_since(modified)
            .is_ok_and(|age| age < TOUCH_AFTER)
    });
    if !recent {
        // Best effort: another user's shared cache refuses it, and LRU order is a hint.
        return file
            .set_times(FileTimes::new().set_accessed(now).set_modified(now))
            .is_ok();
    }
    false
}

/// Whether no process `pid` exists.
fn process_gone(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing: kill only checks that the process exists; a
    // positive pid names one process, never a group.
    let result = unsafe { libc::kill(pid, 0) };
    result == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Removes the plain files in `dir` whose names pass `wanted`; returns how many, and
/// adds the space they took to `bytes`. A missing directory holds none.
fn remove_files(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
    bytes: &mut u64,
) -> Result<u64, CacheError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(CacheError::List {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut count = 0;
    for file in listing {
        let file = file.map_err(|source| CacheError::List {
            path: dir.to_path_buf(),
            source,
        })?;
        let Ok(metadata) = file.metadata() else {
            continue;
        };
        if !metadata.is_file() || !file.file_name().to_str().is_some_and(&wanted) {
            continue;
        }
        let path = file.path();
        match fs::remove_file(&path) {
            Ok(()) => {
                count += 1;
                *bytes += disk_usage(&metadata);
            }
            // Removed by another process meanwhile: not ours to count.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(CacheError::Remove { path, source }),
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_or_empty_xdg_cache_home_is_ignored() {
        let dir = |xdg: Option<&str>, home: Option<&str>| {
            cache_dir_from(xdg.map(OsString::from), home.map(OsString::from))
        };
        let hypercell = |base: &str| Some(Path::new(base).join("hypercell"));
        assert_eq!(
            dir(Some("/x/cache"), Some("/home/u")),
            hypercell("/x/cache")
        );
        assert_eq!(
            dir(Some("cache"), Some("/home/u")),
            hypercell("/home/u/.cache")
        );
        assert_eq!(dir(Some(""), Some("/home/u")), hypercell("/home/u/.cache"));
        assert_eq!(dir(Some("./c"), None), None);
        assert_eq!(dir(None, Some("home")), None);
    }

    fn key(byte: u8) -> Key {
        Key([byte; 32])
    }

    fn entry(body: &[u8]) -> Vec<u8> {
        let header = Header {
            body_len: body.len() as u64,
            initial_memory: 65536,
            key: key(1),
            body_checksum: 0,
        };
        [header.encode(body), body.to_vec()].concat()
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let key = Key::of("fingerprint", b"\0asm");
        assert_eq!(Key::from_hex(&key.to_string()), Some(key));
        assert_eq!(Key::from_hex("00"), None);
        assert_eq!(Key::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn an_intact_entry_passes_its_checks() {
        let file = entry(b"artifact");
        let header = Header::check(&file, &key(1), true).unwrap();
        assert_eq!((header.body_len, header.initial_memory), (8, 65536));
        assert_eq!(&file[BODY_OFFSET..], b"artifact");
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = entry(b"artifact");
        let check = |file: &[u8]| Header::check(file, &key(1), true).err();
        let changed = |at: usize, byte: u8| {
            let mut file = good.clone();
            file[at] ^= byte;
            file
        };
        let len = good.len() as u64;
        assert_eq!(
            check(&good[..good.len() - 1]),
            Some(Problem::Truncated {
                len: len - 1,
                expected: Some(len)
            })
        );
        assert_eq!(
            check(&good[..40]),
            Some(Problem::Truncated {
                len: 40,
                expected: None
            })
        );
        assert_eq!(
            check(&good[..3]),
            Some(Problem::Truncated {
                len: 3,
                expected: None
            })
        );
        assert_eq!(check(b"\0asm\x01\0\0\0"), Some(Problem::Foreign));
        assert_eq!(
            check(&changed(8, 2)),
            Some(Problem::Version(FORMAT_VERSION ^ 2))
        );
        assert_eq!(
            Header::check(&good, &key(2), true).err(),
            Some(Problem::Misplaced)
        );
        assert_eq!(
            check(&[good.as_slice(), b"x"].concat()),
            Some(Problem::Damaged)
        );
        assert_eq!(
            check(&changed(good.len() - 1, 0x10)),
            Some(Problem::Damaged),
            "body"
        );
        assert_eq!(
            check(&changed(24, 1)),
            Some(Problem::Damaged),
            "initial memory"
        );
        assert_eq!(check(&changed(64, 1)), Some(Problem::Damaged), "checksum");
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn temporary_files_of_gone_writers_and_old_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path().to_path_buf());
        let temp = cache.path(TEMP);
        fs::create_dir_all(&temp).unwrap();
        let make = |name: String| {
            let path = temp.join(name);
            fs::write(&path, "partial").unwrap();
            path
        };
        let mine = std::process::id();
        let dead = make(format!("{}-0123456789abcdef", dead_pid()));
        let live = make(format!("{mine}-0123456789abcdef"));
        let old = make(format!("{mine}-fedcba9876543210"));
        let odd = make("unnamed".to_string());
        let two_hours_ago = SystemTime::now() - 2 * TEMP_MAX_AGE;
        File::open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        cache.sweep_temp();
        assert!(!dead.exists() && !old.exists());
        assert!(live.exists() && odd.exists());
    }

    #[test]
    fn cleaning_removes_everything_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::new(dir.path().to_path_buf()).settling_at_once();
        assert!(matches!(
            cache.store(&key(1), 0, vec![7; 10_000]).file_backing(),
            Some((_, 4096))
        ));
        cache.store(&key(2), 0, vec![8; 100]);
        let module = dir.path().join("m.wasm");
        fs::write(&module, "module").unwrap();
        let identity = FileIdentity::of(&fs::metadata(&module).unwrap());
        assert!(cache.record("fingerprint", &identity, &key(1)));
        fs::create_dir_all(cache.path(TEMP)).unwrap();
        fs::write(cache.path(TEMP).join("1-abc"), "partial").unwrap();
        fs::write(dir.path().join("0123.cwasm"), "old entry").unwrap();
        fs::write(dir.path().join(".77.tmp"), "old partial").unwrap();
        fs::write(dir.path().join("notes.txt"), "not the cache's").unwrap();

        let cleaned = cache.clean().unwrap();
        assert_eq!(
            (cleaned.entries, cleaned.index_records, cleaned.temp_files),
            (3, 1, 2)
        );
        assert!(cleaned.bytes >= 4096 + 10_000, "{cleaned:?}");
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["m.wasm", "notes.txt"].map(OsString::from).to_vec());
        assert_eq!(cache.clean().unwrap(), Cleaned::default());
    }
}
