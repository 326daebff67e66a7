//! The saved state of a cell's descriptors: each by the preopened directory it lives
//! under and its path there, with its open mode and offset, so that restoring opens the
//! same files again beneath the same (or a moved) set of preopens.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Why a cell's descriptors could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An open file no longer has a name: it was deleted, or moved out of its preopen.
    #[error(
        "descriptor {fd} has no path under preopened directory `{preopen}` any more (its file was deleted or moved out), so it cannot be saved"
    )]
    Unnamed {
        /// The descriptor.
        fd: u32,
        /// The preopen's guest name.
        preopen: String,
    },
    /// A descriptor is a named channel or their directory, which live with the cell's
    /// neighbours.
    #[error("descriptor {fd} is a named channel, which a snapshot of one cell cannot hold")]
    Channel {
        /// The descriptor.
        fd: u32,
    },
    /// The host refused to tell where a descriptor is or where it stands.
    #[error("cannot inspect descriptor {fd}: {source}")]
    Inspect {
        /// The descriptor.
        fd: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// A saved descriptor names a preopen the cell being restored does not have.
    #[error(
        "descriptor {fd} was saved under preopened directory number {index}, but only {count} directories are preopened now: a restored cell needs the directories it was saved with"
    )]
    MissingPreopen {
        /// The descriptor.
        fd: u32,
        /// The preopen's index in the saved cell.
        index: usize,
        /// How many preopens the restored cell has.
        count: usize,
    },
    /// A saved file or directory cannot be opened again.
    #[error("cannot open `{path}` again for descriptor {fd}: {source}")]
    Reopen {
        /// The descriptor.
        fd: u32,
        /// Its path under its preopen.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One saved descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DescriptorState {
    /// A stdio stream's number.
    Stream,
    /// Preopened directory number `index` (in `--dir` order).
    Preopen {
        /// Its index among the preopens.
        index: usize,
    },
    /// A directory the program opened.
    Dir {
        /// The preopen it lives under.
        root: usize,
        /// Its path under that preopen.
        path: PathBuf,
    },
    /// A file the program opened.
    File {
        /// The preopen it lives under.
        root: usize,
        /// Its path under that preopen.
        path: PathBuf,
        /// Opened for reading.
        readable: bool,
        /// Opened for writing.
        writable: bool,
        /// Every write goes to the end.
        append: bool,
        /// The program asked for non-blocking reads and writes.
        nonblock: bool,
        /// The file offset.
        offset: u64,
    },
}

/// A cell's saved descriptor table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTableState {
    /// Every descriptor by its number.
    pub descriptors: Vec<(u32, DescriptorState)>,
    /// Numbers freed and not yet handed out again.
    pub free: Vec<u32>,
}
