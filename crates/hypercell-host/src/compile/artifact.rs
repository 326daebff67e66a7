//! Compiled code: held in memory, or mapped read-only from a compile-cache entry so that
//! its file pages can back the cell's copy.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use memmap2::Mmap;

/// A wasmtime artifact the guest runtime loads.
pub struct Artifact {
    backing: Backing,
    /// xxh3 of the bytes: with their length, what names this compiled code in snapshots.
    checksum: u64,
}

enum Backing {
    /// Compiled now and not stored in a cache.
    Memory(Vec<u8>),
    /// A cache entry file, mapped whole; the artifact is `map[offset..]`.
    Mapped {
        file: File,
        map: Mmap,
        offset: usize,
    },
}

impl Artifact {
    /// An artifact held in memory.
    pub(super) fn in_memory(bytes: Vec<u8>) -> Self {
        Self {
            checksum: xxhash_rust::xxh3::xxh3_64(&bytes),
            backing: Backing::Memory(bytes),
        }
    }

    /// The artifact at `offset` (a multiple of 4 KiB) to the end of `map`, a mapping of
    /// all of `file`, whose xxh3 checksum is `checksum`.
    pub(super) fn mapped(file: File, map: Mmap, offset: usize, checksum: u64) -> Self {
        debug_assert!(offset.is_multiple_of(4096) && offset <= map.len());
        Self {
            backing: Backing::Mapped { file, map, offset },
            checksum,
        }
    }

    /// The bytes' xxh3 checksum.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The artifact's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Memory(bytes) => bytes,
            Backing::Mapped { map, offset, .. } => &map[*offset..],
        }
    }

    /// The open cache entry file that holds the bytes, and the 4 KiB-aligned offset at
    /// which they start in it, so that its pages can be mapped instead of copied; `None`
    /// when the bytes are only in memory (no cache, or one that cannot be written).
    pub fn file_backing(&self) -> Option<(BorrowedFd<'_>, u64)> {
        match &self.backing {
            Backing::Memory(_) => None,
            Backing::Mapped { file, offset, .. } => Some((file.as_fd(), *offset as u64)),
        }
    }
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Artifact");
        debug.field("len", &self.bytes().len());
        if let Some((fd, offset)) = self.file_backing() {
            debug.field("fd", &fd).field("offset", &offset);
        }
        debug.finish()
    }
}
