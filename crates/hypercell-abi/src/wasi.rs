//! The WASI preview1 functions a cell provides, with their core wasm signatures.
//!
//! The guest runtime defines exactly these imports; the host checks a module's imports
//! against this table before it compiles anything, so a missing import is reported by
//! name without booting a cell.

/// WASI preview1 errno values.
pub mod errno {
    #![allow(missing_docs)]
    pub const AGAIN: u16 = 6;
    pub const NOTCAPABLE: u16 = 76;
    pub const ACCES: u16 = 2;
    pub const BADF: u16 = 8;
    pub const BUSY: u16 = 10;
    pub const EXIST: u16 = 20;
    pub const FAULT: u16 = 21;
    pub const FBIG: u16 = 22;
    pub const INVAL: u16 = 28;
    pub const IO: u16 = 29;
    pub const ISDIR: u16 = 31;
    pub const LOOP: u16 = 32;
    pub const MLINK: u16 = 34;
    pub const NAMETOOLONG: u16 = 37;
    pub const NOENT: u16 = 44;
    pub const NOMEM: u16 = 48;
    pub const NFILE: u16 = 41;
    pub const NOSPC: u16 = 51;
    pub const NOSYS: u16 = 52;
    pub const NOTDIR: u16 = 54;
    pub const NOTEMPTY: u16 = 55;
    pub const NOTSOCK: u16 = 57;
    pub const NOTSUP: u16 = 58;
    pub const PERM: u16 = 63;
    pub const PIPE: u16 = 64;
    pub const ROFS: u16 = 69;
    pub const SPIPE: u16 = 70;
    pub const XDEV: u16 = 75;
}

/// WASI rights (`rights` bits), in the order of the preview1 witx.
pub mod rights {
    #![allow(missing_docs)]
    pub const FD_DATASYNC: u64 = 1 << 0;
    pub const FD_READ: u64 = 1 << 1;
    pub const FD_SEEK: u64 = 1 << 2;
    pub const FD_FDSTAT_SET_FLAGS: u64 = 1 << 3;
    pub const FD_SYNC: u64 = 1 << 4;
    pub const FD_TELL: u64 = 1 << 5;
    pub const FD_WRITE: u64 = 1 << 6;
    pub const FD_ADVISE: u64 = 1 << 7;
    pub const FD_ALLOCATE: u64 = 1 << 8;
    pub const PATH_CREATE_DIRECTORY: u64 = 1 << 9;
    pub const PATH_CREATE_FILE: u64 = 1 << 10;
    pub const PATH_LINK_SOURCE: u64 = 1 << 11;
    pub const PATH_LINK_TARGET: u64 = 1 << 12;
    pub const PATH_OPEN: u64 = 1 << 13;
    pub const FD_READDIR: u64 = 1 << 14;
    pub const PATH_READLINK: u64 = 1 << 15;
    pub const PATH_RENAME_SOURCE: u64 = 1 << 16;
    pub const PATH_RENAME_TARGET: u64 = 1 << 17;
    pub const PATH_FILESTAT_GET: u64 = 1 << 18;
    pub const PATH_FILESTAT_SET_SIZE: u64 = 1 << 19;
    pub const PATH_FILESTAT_SET_TIMES: u64 = 1 << 20;
    pub const FD_FILESTAT_GET: u64 = 1 << 21;
    pub const FD_FILESTAT_SET_SIZE: u64 = 1 << 22;
    pub const FD_FILESTAT_SET_TIMES: u64 = 1 << 23;
    pub const PATH_SYMLINK: u64 = 1 << 24;
    pub const PATH_REMOVE_DIRECTORY: u64 = 1 << 25;
    pub const PATH_UNLINK_FILE: u64 = 1 << 26;
    pub const POLL_FD_READWRITE: u64 = 1 << 27;
    pub const SOCK_SHUTDOWN: u64 = 1 << 28;
    pub const SOCK_ACCEPT: u64 = 1 << 29;

    /// Every right, as wasmtime counts them (`sock_accept` included).
    pub const ALL: u64 = (1 << 30) - 1;

    /// What wasmtime reports for a preopened directory: the calls on paths beneath
    /// it, listing, and its own times and status.
    pub const PREOPEN_BASE: u64 = PATH_CREATE_DIRECTORY
        | PATH_CREATE_FILE
        | PATH_LINK_SOURCE
        | PATH_LINK_TARGET
        | PATH_OPEN
        | FD_READDIR
        | PATH_READLINK
        | PATH_RENAME_SOURCE
        | PATH_RENAME_TARGET
        | PATH_SYMLINK
        | PATH_REMOVE_DIRECTORY
        | PATH_UNLINK_FILE
        | PATH_FILESTAT_GET
        | PATH_FILESTAT_SET_TIMES
        | FD_FILESTAT_GET
        | FD_FILESTAT_SET_TIMES;

    /// What wasmtime reports a preopened directory passes on to what is opened in
    /// it: [`PREOPEN_BASE`] and the calls on open files.
    pub const PREOPEN_INHERITING: u64 = PREOPEN_BASE
        | FD_DATASYNC
        | FD_READ
        | FD_SEEK
        | FD_FDSTAT_SET_FLAGS
        | FD_SYNC
        | FD_TELL
        | FD_WRITE
        | FD_ADVISE
        | FD_ALLOCATE
        | FD_FILESTAT_SET_SIZE
        | POLL_FD_READWRITE;

    /// What wasmtime reports, as base and inheriting rights, for a directory opened
    /// with `path_open`: everything but seeking, writing and sizes.
    pub const DIRECTORY: u64 =
        ALL & !(FD_SEEK | FD_WRITE | FD_FILESTAT_SET_SIZE | PATH_FILESTAT_SET_SIZE);
}

/// WASI file types (`filetype`).
pub mod filetype {
    #![allow(missing_docs)]
    pub const UNKNOWN: u8 = 0;
    pub const BLOCK_DEVICE: u8 = 1;
    pub const CHARACTER_DEVICE: u8 = 2;
    pub const DIRECTORY: u8 = 3;
    pub const REGULAR_FILE: u8 = 4;
    pub const SOCKET_STREAM: u8 = 6;
    pub const SYMBOLIC_LINK: u8 = 7;
}

/// WASI descriptor flags (`fdflags`).
pub mod fdflags {
    #![allow(missing_docs)]
    pub const APPEND: u64 = 1 << 0;
    pub const DSYNC: u64 = 1 << 1;
    pub const NONBLOCK: u64 = 1 << 2;
    pub const RSYNC: u64 = 1 << 3;
    pub const SYNC: u64 = 1 << 4;
}

/// WASI open flags (`oflags`).
pub mod oflags {
    #![allow(missing_docs)]
    pub const CREAT: u64 = 1 << 0;
    pub const DIRECTORY: u64 = 1 << 1;
    pub const EXCL: u64 = 1 << 2;
    pub const TRUNC: u64 = 1 << 3;
}

/// WASI lookup flags (`lookupflags`).
pub mod lookupflags {
    #![allow(missing_docs)]
    pub const SYMLINK_FOLLOW: u64 = 1 << 0;
}

/// Import module name of WASI preview1.
pub const WASI_PREVIEW1: &str = "wasi_snapshot_preview1";

/// A core wasm value type in a WASI signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasiType {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
}

use crate::components::{Components, Needs};
use Needs::{Component, Descriptor, Directory, Nothing, Poll};
use WasiType::{I32, I64};

/// A WASI preview1 function: name, parameter types, whether it returns an errno
/// (`i32`; only `proc_exit` returns nothing), and what it needs of a cell's components.
pub type WasiFunction = (&'static str, &'static [WasiType], bool, Needs);

/// Every preview1 function, sorted by name.
pub const WASI_PREVIEW1_FUNCTIONS: &[WasiFunction] = &[
    ("args_get", &[I32, I32], true, Component(Components::ARGS)),
    (
        "args_sizes_get",
        &[I32, I32],
        true,
        Component(Components::ARGS),
    ),
    (
        "clock_res_get",
        &[I32, I32],
        true,
        Component(Components::CLOCKS),
    ),
    (
        "clock_time_get",
        &[I32, I64, I32],
        true,
        Component(Components::CLOCKS),
    ),
    ("environ_get", &[I32, I32], true, Component(Components::ENV)),
    (
        "environ_sizes_get",
        &[I32, I32],
        true,
        Component(Components::ENV),
    ),
    ("fd_advise", &[I32, I64, I64, I32], true, Descriptor),
    ("fd_allocate", &[I32, I64, I64], true, Descriptor),
    ("fd_close", &[I32], true, Descriptor),
    ("fd_datasync", &[I32], true, Descriptor),
    ("fd_fdstat_get", &[I32, I32], true, Descriptor),
    ("fd_fdstat_set_flags", &[I32, I32], true, Descriptor),
    ("fd_fdstat_set_rights", &[I32, I64, I64], true, Descriptor),
    ("fd_filestat_get", &[I32, I32], true, Descriptor),
    ("fd_filestat_set_size", &[I32, I64], true, Descriptor),
    (
        "fd_filestat_set_times",
        &[I32, I64, I64, I32],
        true,
        Descriptor,
    ),
    ("fd_pread", &[I32, I32, I32, I64, I32], true, Descriptor),
    ("fd_prestat_dir_name", &[I32, I32, I32], true, Nothing),
    ("fd_prestat_get", &[I32, I32], true, Nothing),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], true, Descriptor),
    ("fd_read", &[I32, I32, I32, I32], true, Descriptor),
    ("fd_readdir", &[I32, I32, I32, I64, I32], true, Descriptor),
    ("fd_renumber", &[I32, I32], true, Descriptor),
    ("fd_seek", &[I32, I64, I32, I32], true, Descriptor),
    ("fd_sync", &[I32], true, Descriptor),
    ("fd_tell", &[I32, I32], true, Descriptor),
    ("fd_write", &[I32, I32, I32, I32], true, Descriptor),
    (
        "path_create_directory",
        &[I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_filestat_get",
        &[I32, I32, I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_link",
        &[I32, I32, I32, I32, I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        true,
        Directory,
    ),
    (
        "path_readlink",
        &[I32, I32, I32, I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_remove_directory",
        &[I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_rename",
        &[I32, I32, I32, I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_symlink",
        &[I32, I32, I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    (
        "path_unlink_file",
        &[I32, I32, I32],
        true,
        Component(Components::FS),
    ),
    ("poll_oneoff", &[I32, I32, I32, I32], true, Poll),
    ("proc_exit", &[I32], false, Nothing),
    ("proc_raise", &[I32], true, Nothing),
    (
        "random_get",
        &[I32, I32],
        true,
        Component(Components::RANDOM),
    ),
    ("sched_yield", &[], true, Nothing),
    (
        "sock_accept",
        &[I32, I32, I32],
        true,
        Component(Components::NET),
    ),
    (
        "sock_recv",
        &[I32, I32, I32, I32, I32, I32],
        true,
        Component(Components::NET),
    ),
    (
        "sock_send",
        &[I32, I32, I32, I32, I32],
        true,
        Component(Components::NET),
    ),
    (
        "sock_shutdown",
        &[I32, I32],
        true,
        Component(Components::NET),
    ),
];

/// Looks up a preview1 function by name.
pub fn wasi_function(name: &str) -> Option<&'static WasiFunction> {
    WASI_PREVIEW1_FUNCTIONS
        .binary_search_by(|(n, ..)| (*n).cmp(name))
        .ok()
        .map(|i| &WASI_PREVIEW1_FUNCTIONS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_complete() {
        assert!(WASI_PREVIEW1_FUNCTIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(WASI_PREVIEW1_FUNCTIONS.len(), 46);
        assert_eq!(wasi_function("fd_write").unwrap().1, &[I32, I32, I32, I32]);
        assert!(wasi_function("fd_writ").is_none());
    }

    #[test]
    fn rights_are_wasmtimes() {
        // The values wasmtime 49 reports through fd_fdstat_get.
        assert_eq!(rights::ALL, 0x3fff_ffff);
        assert_eq!(rights::PREOPEN_BASE, 0x07b7_fe00);
        assert_eq!(rights::PREOPEN_INHERITING, 0x0ff7_ffff);
        assert_eq!(rights::DIRECTORY, 0x3fb7_ffbb);
    }
}
