//! Cells from one template share its memory until they write, and never see one
//! another's writes: 1000 cells from one template file each fill the same 128 KiB of
//! the template's memory with a pattern of their own while a hundred of them are alive
//! at once, and each finds only the template's bytes before and only its own after.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use common::{PATTERN_FUNCTIONS, compile, first_read_template_file, pipe};
use hypercell_host::{Cell, CellConfig, CellExit, Compiler, OwnedStdio};

/// Fills 128 KiB with 0x5a, then reads an 8-byte pattern from stdin (where the template
/// stops), checks the 128 KiB still hold 0x5a, fills them with the pattern, says `w`,
/// waits for another 8 bytes, and checks that the 128 KiB hold its pattern. Exit 3 or 4
/// says which check failed.
fn patterns() -> String {
    format!(
        r#"
(module
{PATTERN_FUNCTIONS}  (func (export "_start")
    (local $id i64)
    (call $fill (i64.const 0x5a5a5a5a5a5a5a5a))
    (local.set $id (call $read8))
    (if (i32.eqz (call $holds (i64.const 0x5a5a5a5a5a5a5a5a)))
      (then (call $proc_exit (i32.const 3))))
    (call $fill (local.get $id))
    (i32.store (i32.const 40) (i32.const 32))
    (i32.store (i32.const 44) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 40) (i32.const 1) (i32.const 48)))
    (drop (call $read8))
    (if (i32.eqz (call $holds (local.get $id)))
      (then (call $proc_exit (i32.const 4))))
    (call $proc_exit (i32.const 0))))
"#
    )
}

const CELLS: u64 = 1000;
const ALIVE_AT_ONCE: u64 = 100;

fn file_hash(path: &std::path::Path) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&std::fs::read(path).unwrap())
}

#[test]
fn a_thousand_cells_from_one_template_never_see_one_another() {
    let module = Arc::new(compile(&patterns()));
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let null = File::options().write(true).open("/dev/null").unwrap();
    let config = CellConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patterns.snap");
    let template = Arc::new(first_read_template_file(&module, &config, &path));
    let before = file_hash(&path);

    for batch in 0..CELLS / ALIVE_AT_ONCE {
        let mut alive = Vec::new();
        for index in 0..ALIVE_AT_ONCE {
            let id = 0xc300_0000_0000_0000u64 | (batch * ALIVE_AT_ONCE + index + 1);
            let (stdin, mut feed) = pipe();
            let (said, stdout) = pipe();
            feed.write_all(&id.to_le_bytes()).unwrap();
            let stdio = OwnedStdio {
                stdin: OwnedFd::from(stdin),
                stdout: OwnedFd::from(stdout),
                stderr: OwnedFd::from(null.try_clone().unwrap()),
            };
            let cell = Cell::from_template(
                config.clone(),
                Arc::clone(&module),
                cpu_features,
                stdio,
                Arc::clone(&template),
            );
            alive.push((id, cell, feed, said));
        }
        // Every cell of the batch has written its pattern before any checks it again.
        for (id, _, _, said) in &mut alive {
            let mut byte = [0u8; 1];
            said.read_exact(&mut byte)
                .unwrap_or_else(|e| panic!("cell {id:#x} said nothing: {e}"));
            assert_eq!(&byte, b"w");
        }
        for (id, cell, mut feed, _) in alive {
            feed.write_all(&[0; 8]).unwrap();
            let report = cell
                .wait()
                .unwrap_or_else(|failure| panic!("cell {id:#x} failed: {}", failure.error));
            assert!(
                matches!(report.exit, CellExit::Exited(0)),
                "cell {id:#x} saw memory not its own: {:?}",
                report.exit
            );
        }
    }
    assert_eq!(
        file_hash(&path),
        before,
        "the template file is unchanged by the cells that ran from it"
    );
}
