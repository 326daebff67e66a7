//! The WASI preview1 functions a cell provides, with their core wasm signatures.
//!
//! The guest runtime defines exactly these imports; the host checks a module's imports
//! against this table before it compiles anything, so a missing import is reported by
//! name without booting a cell.

/// WASI preview1 errno values.
pub mod errno {
    #![allow(missing_docs)]
    pub const AGAIN: u16 = 6;
    pub const ACCES: u16 = 2;
    pub const BADF: u16 = 8;
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
    pub const NOSPC: u16 = 51;
    pub const NOSYS: u16 = 52;
    pub const NOTDIR: u16 = 54;
    pub const NOTEMPTY: u16 = 55;
    pub const NOTSOCK: u16 = 57;
    pub const NOTSUP: u16 = 58;
    pub const PERM: u16 = 63;
    pub const ROFS: u16 = 69;
    pub const SPIPE: u16 = 70;
    pub const XDEV: u16 = 75;
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

use WasiType::{I32, I64};

/// A WASI preview1 function: name, parameter types, and whether it returns an errno
/// (`i32`); only `proc_exit` returns nothing.
pub type WasiFunction = (&'static str, &'static [WasiType], bool);

/// Every preview1 function, sorted by name.
pub const WASI_PREVIEW1_FUNCTIONS: &[WasiFunction] = &[
    ("args_get", &[I32, I32], true),
    ("args_sizes_get", &[I32, I32], true),
    ("clock_res_get", &[I32, I32], true),
    ("clock_time_get", &[I32, I64, I32], true),
    ("environ_get", &[I32, I32], true),
    ("environ_sizes_get", &[I32, I32], true),
    ("fd_advise", &[I32, I64, I64, I32], true),
    ("fd_allocate", &[I32, I64, I64], true),
    ("fd_close", &[I32], true),
    ("fd_datasync", &[I32], true),
    ("fd_fdstat_get", &[I32, I32], true),
    ("fd_fdstat_set_flags", &[I32, I32], true),
    ("fd_fdstat_set_rights", &[I32, I64, I64], true),
    ("fd_filestat_get", &[I32, I32], true),
    ("fd_filestat_set_size", &[I32, I64], true),
    ("fd_filestat_set_times", &[I32, I64, I64, I32], true),
    ("fd_pread", &[I32, I32, I32, I64, I32], true),
    ("fd_prestat_dir_name", &[I32, I32, I32], true),
    ("fd_prestat_get", &[I32, I32], true),
    ("fd_pwrite", &[I32, I32, I32, I64, I32], true),
    ("fd_read", &[I32, I32, I32, I32], true),
    ("fd_readdir", &[I32, I32, I32, I64, I32], true),
    ("fd_renumber", &[I32, I32], true),
    ("fd_seek", &[I32, I64, I32, I32], true),
    ("fd_sync", &[I32], true),
    ("fd_tell", &[I32, I32], true),
    ("fd_write", &[I32, I32, I32, I32], true),
    ("path_create_directory", &[I32, I32, I32], true),
    ("path_filestat_get", &[I32, I32, I32, I32, I32], true),
    (
        "path_filestat_set_times",
        &[I32, I32, I32, I32, I64, I64, I32],
        true,
    ),
    ("path_link", &[I32, I32, I32, I32, I32, I32, I32], true),
    (
        "path_open",
        &[I32, I32, I32, I32, I32, I64, I64, I32, I32],
        true,
    ),
    ("path_readlink", &[I32, I32, I32, I32, I32, I32], true),
    ("path_remove_directory", &[I32, I32, I32], true),
    ("path_rename", &[I32, I32, I32, I32, I32, I32], true),
    ("path_symlink", &[I32, I32, I32, I32, I32], true),
    ("path_unlink_file", &[I32, I32, I32], true),
    ("poll_oneoff", &[I32, I32, I32, I32], true),
    ("proc_exit", &[I32], false),
    ("proc_raise", &[I32], true),
    ("random_get", &[I32, I32], true),
    ("sched_yield", &[], true),
    ("sock_accept", &[I32, I32, I32], true),
    ("sock_recv", &[I32, I32, I32, I32, I32, I32], true),
    ("sock_send", &[I32, I32, I32, I32, I32], true),
    ("sock_shutdown", &[I32, I32], true),
];

/// Looks up a preview1 function by name.
pub fn wasi_function(name: &str) -> Option<&'static WasiFunction> {
    WASI_PREVIEW1_FUNCTIONS
        .binary_search_by(|(n, _, _)| (*n).cmp(name))
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
}
