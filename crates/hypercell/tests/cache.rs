//! End-to-end runs of the `hypercell` binary against its compile cache: the identity
//! index, damaged entries, abandoned temporary files, the size bound and `hypercell
//! cache`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Longer than the cache waits before it indexes a module file by its identity.
const SETTLE: Duration = Duration::from_millis(2200);

/// `hypercell` with its compile cache in `cache/hypercell`.
fn hypercell(cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hypercell"));
    command
        .env("XDG_CACHE_HOME", cache)
        .env_remove("HYPERCELL_LOG")
        .env_remove("HYPERCELL_CACHE_MAX");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

/// Runs `module` with `--stats`, logging how the cache found it.
fn run_module(cache: &Path, module: &Path) -> Output {
    run(hypercell(cache)
        .env("HYPERCELL_LOG", "hypercell_host::compile=debug")
        .args(["run", "--stats"])
        .arg(module))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A module that prints `word` and a newline; the same length for words of one length.
fn printer(word: &str) -> String {
    format!(
        r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 16) "{word}\n")
            (func (export "_start")
              (i32.store (i32.const 0) (i32.const 16))
              (i32.store (i32.const 4) (i32.const {len}))
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = word.len() + 1
    )
}

fn write_printer(dir: &Path, name: &str, word: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, printer(word)).unwrap();
    path
}

/// Checks a run printed `expected`, and returns its stderr.
fn expect_output(out: &Output, expected: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(text(&out.stdout), expected, "{stderr}");
    stderr
}

fn layout(cache: &Path) -> PathBuf {
    cache.join("hypercell/v1")
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(layout(cache).join("entries")) {
        Ok(dir) => dir.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn only_entry(cache: &Path) -> PathBuf {
    let entries = entries(cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

/// Bytes the cache's entries and index records take on disk.
fn cache_usage(cache: &Path) -> u64 {
    ["entries", "index"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(layout(cache).join(sub)).ok())
        .flatten()
        .map(|entry| entry.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

const MISS: &str = "compile cache:            miss";
const HIT: &str = "compile cache:            hit";
const BY_IDENTITY: &str = "hit by file identity";
const HASHED: &str = "compile cache: hashed";

#[test]
fn a_second_run_finds_the_module_by_its_identity_without_hashing_it() {
    let dir = tempfile::tempdir().unwrap();
    let module = write_printer(dir.path(), "m.wat", "indexed");
    std::thread::sleep(SETTLE);
    let first = expect_output(&run_module(dir.path(), &module), "indexed\n");
    assert!(first.contains(MISS) && first.contains(HASHED), "{first}");
    let second = expect_output(&run_module(dir.path(), &module), "indexed\n");
    assert!(
        second.contains(HIT) && second.contains(BY_IDENTITY),
        "{second}"
    );
    assert!(!second.contains(HASHED), "{second}");
}

#[test]
fn a_module_rewritten_in_place_with_its_mtime_restored_runs_its_new_code() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let module = write_printer(dir.path(), "m.wat", "one");
    let mtime = std::fs::metadata(&module).unwrap().modified().unwrap();
    std::thread::sleep(SETTLE);
    expect_output(&run_module(dir.path(), &module), "one\n");
    let indexed = expect_output(&run_module(dir.path(), &module), "one\n");
    assert!(indexed.contains(BY_IDENTITY), "{indexed}");
    // Same inode, same size, and the mtime set back as `touch -d` would: only the
    // ctime tells.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&module)
        .unwrap();
    file.write_all(printer("two").as_bytes()).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(
        std::fs::metadata(&module).unwrap().modified().unwrap(),
        mtime
    );
    let rewritten = expect_output(&run_module(dir.path(), &module), "two\n");
    assert!(!rewritten.contains(BY_IDENTITY), "{rewritten}");
}

/// Damages the cache entry of a module, then checks the next run warns once naming
/// the entry, prints the right output and stores the code again.
fn check_damaged_entry(damage: impl FnOnce(&Path), problem: &str) {
    let dir = tempfile::tempdir().unwrap();
    let module = write_printer(dir.path(), "m.wat", "intact");
    expect_output(&run_module(dir.path(), &module), "intact\n");
    let entry = only_entry(dir.path());
    damage(&entry);
    let damaged = expect_output(&run_module(dir.path(), &module), "intact\n");
    let warning = format!(
        "warning: ignoring compile-cache entry `{}`",
        entry.display()
    );
    assert_eq!(damaged.matches("warning:").count(), 1, "{damaged}");
    assert!(
        damaged.contains(&warning) && damaged.contains(problem) && damaged.contains(MISS),
        "{damaged}"
    );
    let again = expect_output(&run_module(dir.path(), &module), "intact\n");
    assert!(again.contains(HIT) && !again.contains("warning"), "{again}");
}

#[test]
fn a_truncated_entry_is_reported_removed_and_compiled_again() {
    check_damaged_entry(
        |entry| {
            let len = std::fs::metadata(entry).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(entry).unwrap();
            file.set_len(len - 100).unwrap();
        },
        "is truncated",
    );
}

#[test]
fn an_entry_with_a_flipped_bit_is_detected() {
    check_damaged_entry(
        |entry| {
            let mut bytes = std::fs::read(entry).unwrap();
            let middle = 4096 + (bytes.len() - 4096) / 2;
            bytes[middle] ^= 0x04;
            std::fs::write(entry, bytes).unwrap();
        },
        "do not match its checksum",
    );
}

#[test]
fn a_file_that_is_not_an_entry_is_replaced() {
    check_damaged_entry(
        |entry| std::fs::write(entry, "not compiled code").unwrap(),
        "is not a Hypercell compile-cache entry",
    );
}

#[test]
fn a_temporary_file_left_by_a_dead_writer_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let temp = layout(dir.path()).join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let abandoned = temp.join(format!("{dead}-00000000deadbeef"));
    std::fs::write(&abandoned, vec![0; 1 << 20]).unwrap();
    // This test process is alive: its file may still be being written.
    let in_progress = temp.join(format!("{}-00000000cafef00d", std::process::id()));
    std::fs::write(&in_progress, "partial").unwrap();
    let module = write_printer(dir.path(), "m.wat", "swept");
    expect_output(&run_module(dir.path(), &module), "swept\n");
    assert!(!abandoned.exists());
    assert!(in_progress.exists());
}

#[test]
fn eviction_keeps_the_cache_under_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let words = ["alpha", "bravo", "delta", "gamma", "kappa"];
    // Each module is written just before its run, too young to be indexed: the
    // cache holds entries only.
    let module = |word: &str| write_printer(dir.path(), &format!("{word}.wat"), word);
    expect_output(&run_module(dir.path(), &module(words[0])), "alpha\n");
    let one_entry = cache_usage(dir.path());
    // Room for two entries, not three.
    let bound = one_entry * 5 / 2;
    let mut modules = vec![dir.path().join("alpha.wat")];
    for word in &words[1..] {
        modules.push(module(word));
        let out = run(hypercell(dir.path())
            .env("HYPERCELL_CACHE_MAX", bound.to_string())
            .arg("run")
            .arg(modules.last().unwrap()));
        expect_output(&out, &format!("{word}\n"));
        let usage = cache_usage(dir.path());
        assert!(usage <= bound, "{usage} bytes cached, bound {bound}");
    }
    assert_eq!(entries(dir.path()).len(), 2);
    let newest = expect_output(&run_module(dir.path(), &modules[4]), "kappa\n");
    assert!(newest.contains(HIT), "the newest entry stays: {newest}");
    let oldest = expect_output(&run_module(dir.path(), &modules[0]), "alpha\n");
    assert!(oldest.contains(MISS), "the oldest entry went: {oldest}");
}

#[test]
fn a_bad_cache_bound_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let module = write_printer(dir.path(), "m.wat", "bound");
    let out = run(hypercell(dir.path())
        .env("HYPERCELL_CACHE_MAX", "lots")
        .arg("run")
        .arg(&module));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("HYPERCELL_CACHE_MAX is `lots`, which is not a size"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cache_clean_empties_the_cache_and_says_how_much_it_freed() {
    let dir = tempfile::tempdir().unwrap();
    for word in ["first", "other"] {
        let module = write_printer(dir.path(), &format!("{word}.wat"), word);
        expect_output(&run_module(dir.path(), &module), &format!("{word}\n"));
    }
    std::fs::write(layout(dir.path()).join("tmp/1-abandoned"), "partial").unwrap();
    let used = cache_usage(dir.path());
    let out = run(hypercell(dir.path()).args(["cache", "clean"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.starts_with("Freed ")
            && said.contains(
                "by removing 2 compiled modules, 0 index records, 0 templates and 1 temporary file."
            ),
        "{said}"
    );
    assert!(used > 0 && entries(dir.path()).is_empty());
    assert!(!layout(dir.path()).join("tmp/1-abandoned").exists());
    let again = run(hypercell(dir.path()).args(["cache", "clean"]));
    assert_eq!(
        text(&again.stdout),
        "Freed 0 bytes by removing 0 compiled modules, 0 index records, 0 templates and 0 temporary files.\n"
    );
}

#[test]
fn cache_dir_prints_the_directory_and_ignores_a_relative_xdg_cache_home() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(hypercell(dir.path()).args(["cache", "dir"]));
    assert_eq!(
        text(&out.stdout),
        format!("{}\n", dir.path().join("hypercell").display())
    );

    let home = dir.path().join("home");
    let relative = |command: &mut Command| {
        run(command
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", "relative")
            .env("HOME", &home))
    };
    let out = relative(hypercell(dir.path()).args(["cache", "dir"]));
    let expected = home.join(".cache/hypercell");
    assert_eq!(text(&out.stdout), format!("{}\n", expected.display()));
    let module = write_printer(dir.path(), "m.wat", "home");
    expect_output(
        &relative(hypercell(dir.path()).arg("run").arg(&module)),
        "home\n",
    );
    assert_eq!(entries(&home.join(".cache")).len(), 1);
    assert!(!dir.path().join("relative").exists());
}
