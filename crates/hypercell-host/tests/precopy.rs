//! Pre-copy, as a migration uses it: the pages of a running cell copied while it runs,
//! then rounds of the pages written since, then the last of them with the cell paused.
//! Laid over one another in order, the copies are the paused cell's memory, page for
//! page, though the guest kept writing memory and the host kept writing into it
//! (stdin read ahead, output drained) throughout.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{compile, pipe};
use hypercell_host::persist::MemoryImage;
use hypercell_host::{Cell, CellConfig, CellExit, Compiler, OwnedStdio};

/// Writes its loop counter into one page of its first 8 MiB after another, for ever;
/// every 4,096 pages it reads stdin straight into one of eight 512 KiB buffers in its
/// next 4 MiB (pages only the host writes) and writes 8 bytes to stdout.
const DIRTIER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 256)
  (func (export "_start") (local $i i32) (local $at i32)
    (loop $more
      (local.set $at (i32.add (i32.const 65536)
        (i32.rem_u (i32.mul (local.get $i) (i32.const 151552)) (i32.const 8323072))))
      (i64.store (local.get $at) (i64.extend_i32_u (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.eqz (i32.and (local.get $i) (i32.const 4095)))
        (then
          (i32.store (i32.const 0)
            (i32.add (i32.const 8388608) (i32.shl (i32.and (i32.shr_u (local.get $i) (i32.const 12)) (i32.const 7)) (i32.const 19))))
          (i32.store (i32.const 4) (i32.const 524288))
          (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
          (i32.store (i32.const 0) (i32.const 8192))
          (i32.store (i32.const 4) (i32.const 8))
          (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
      (br $more))))"#;

/// Pages by guest-physical address.
type Pages = BTreeMap<u64, Vec<u8>>;

/// Lays `image`'s pages over `pages`.
fn lay(pages: &mut Pages, image: &MemoryImage) {
    let contents = image.run_contents().expect("the pages are in memory");
    for (run, bytes) in image.runs.iter().zip(contents) {
        for (i, page) in bytes.chunks(4096).enumerate() {
            pages.insert(run.addr + i as u64 * 4096, page.to_vec());
        }
    }
}

#[test]
fn rounds_of_written_pages_laid_in_order_are_the_paused_cells_memory() {
    let module = Arc::new(compile(DIRTIER));
    let artifact = module.artifact.bytes().to_vec();
    let (stdin_read, mut stdin) = pipe();
    // Stdin never runs dry: the host reads it ahead into the guest's memory while the
    // rounds are copied.
    let feeder = std::thread::spawn(move || {
        let mut n: u64 = 0;
        while stdin.write_all(&n.to_le_bytes().repeat(512)).is_ok() {
            n += 1;
        }
    });
    let stdio = OwnedStdio {
        stdin: stdin_read.into(),
        stdout: File::options()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into(),
        stderr: File::options()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into(),
    };
    let config = CellConfig {
        memory_limit: 64 << 20,
        ..CellConfig::default()
    };
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let cell = Cell::start(config, Arc::clone(&module), cpu_features, stdio);
    let control = cell.control();
    while control
        .activity()
        .cpu_time
        .is_none_or(|t| t < Duration::from_millis(20))
    {
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut copied = Pages::new();
    // The first copy comes in pieces, as it is taken.
    let mut first = 0;
    let mut pieces = 0;
    for piece in control.precopy_start().unwrap() {
        let piece = piece.unwrap();
        first += piece.saved_len();
        pieces += 1;
        lay(&mut copied, &piece);
    }
    assert!(first >= 8 << 20, "{first}");
    assert!(pieces > 1, "{pieces}");
    for _ in 0..3 {
        let round = control.precopy_round().unwrap();
        assert!(round.saved_len() > 0, "the cell writes all the time");
        lay(&mut copied, &round);
    }
    let last = control.snapshot_dirty().unwrap();
    lay(&mut copied, &last.memory);
    // The cell is paused: a whole snapshot now is what the copies must add up to.
    let whole = control.snapshot().unwrap();
    let mut expected = Pages::new();
    lay(&mut expected, &whole.memory);
    let module_range = whole.memory.module.clone();
    // A page not saved holds zeros, or, in the module's range, the module.
    let unsaved = |page: u64| -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        if module_range.contains(&page) {
            let from = (page - module_range.start) as usize;
            let original = artifact.get(from..).unwrap_or_default();
            let n = original.len().min(4096);
            bytes[..n].copy_from_slice(&original[..n]);
        }
        bytes
    };
    let mut differing = Vec::new();
    for page in copied.keys().chain(expected.keys()) {
        let got = copied.get(page).cloned().unwrap_or_else(|| unsaved(*page));
        let want = expected
            .get(page)
            .cloned()
            .unwrap_or_else(|| unsaved(*page));
        if got != want {
            differing.push(*page);
        }
    }
    differing.dedup();
    assert!(
        differing.is_empty(),
        "{} pages differ, first at {:#x}",
        differing.len(),
        differing[0]
    );
    assert!(last.memory.saved_len() < first);

    // A cell whose pre-copy ends goes on here, unlogged.
    control.precopy_end().unwrap();
    control.resume();
    let before = control.activity().cpu_time.unwrap();
    while control.activity().cpu_time.unwrap() < before + Duration::from_millis(20) {
        std::thread::sleep(Duration::from_millis(1));
    }
    cell.kill();
    let report = cell.wait();
    assert!(
        !matches!(report, Ok(ref r) if matches!(r.exit, CellExit::Exited(_))),
        "{report:?}"
    );
    drop(feeder);
}
