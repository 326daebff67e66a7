//! A snapshot of only what a cell changed since it started (what a daemon keeps of a
//! parked cell): taken while the cell waits for stdin, it holds a fraction of a whole
//! snapshot, and a cell resumed from it over the template (or, for a booted cell, over
//! nothing) goes on where the first stopped, again and again.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{PATTERN_FUNCTIONS, compile, first_read_template_file, pipe};
use hypercell_host::persist::CellSnapshot;
use hypercell_host::{
    Cell, CellConfig, CellError, CellExit, CellFailure, CompiledModule, Compiler, OwnedStdio,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// Fills the 128 KiB from 64 KiB with 0x5a, then, for each 8-byte id it reads from
/// stdin: checks that the 128 KiB hold the previous id (else exit 3), fills them with
/// this one and writes it back to stdout. At the end of stdin it exits 0.
fn echo_ids() -> String {
    format!(
        r#"
(module
{PATTERN_FUNCTIONS}  (func (export "_start")
    (local $id i64)
    (local $previous i64)
    (local.set $previous (i64.const 0x5a5a5a5a5a5a5a5a))
    (call $fill (local.get $previous))
    (loop $next
      (local.set $id (call $read8))
      (if (i64.eqz (local.get $id))
        (then (call $proc_exit (i32.const 0))))
      (if (i32.eqz (call $holds (local.get $previous)))
        (then (call $proc_exit (i32.const 3))))
      (call $fill (local.get $id))
      (local.set $previous (local.get $id))
      (i32.store (i32.const 40) (i32.const 16))
      (i32.store (i32.const 44) (i32.const 8))
      (drop (call $fd_write (i32.const 1) (i32.const 40) (i32.const 1) (i32.const 48)))
      (br $next))))
"#
    )
}

/// A cell with its stdin and stdout as pipes the test holds.
struct Echo {
    cell: Cell,
    stdin: File,
    stdout: File,
}

impl Echo {
    fn stdio() -> (OwnedStdio, File, File) {
        let (stdin_read, stdin) = pipe();
        let (stdout, stdout_write) = pipe();
        let stdio = OwnedStdio {
            stdin: stdin_read.into(),
            stdout: stdout_write.into(),
            stderr: File::options()
                .write(true)
                .open("/dev/null")
                .unwrap()
                .into(),
        };
        (stdio, stdin, stdout)
    }

    /// A cell booted for `module`.
    fn boot(module: &Arc<CompiledModule>) -> Self {
        let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
        let (stdio, stdin, stdout) = Self::stdio();
        let cell = Cell::start(config(), Arc::clone(module), cpu_features, stdio);
        Self {
            cell,
            stdin,
            stdout,
        }
    }

    /// Sends `id` and reads it back.
    fn echo(&mut self, id: u64) {
        self.stdin.write_all(&id.to_le_bytes()).unwrap();
        let mut stdout = self.stdout.try_clone().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut bytes = [0; 8];
            let _ = sender.send(stdout.read_exact(&mut bytes).map(|()| bytes));
        });
        let bytes = receiver
            .recv_timeout(PATIENCE)
            .expect("the id comes back")
            .unwrap();
        assert_eq!(u64::from_le_bytes(bytes), id);
    }

    /// Waits until the cell waits for stdin, takes its changes and ends it.
    fn park(self) -> CellSnapshot {
        let deadline = Instant::now() + PATIENCE;
        while self.cell.control().waiting_for_input().is_none() {
            assert!(Instant::now() < deadline, "the cell waits for input");
            thread::sleep(Duration::from_millis(1));
        }
        let changes = self.cell.control().snapshot_changes().unwrap();
        self.cell.kill();
        match self.cell.wait() {
            Err(CellFailure {
                error: CellError::Stopped(9),
                ..
            }) => {}
            other => panic!("expected a killed cell, got {other:?}"),
        }
        changes
    }

    /// Ends its stdin and checks that it exits 0.
    fn finish(self) {
        drop(self.stdin);
        assert_eq!(self.cell.wait().unwrap().exit, CellExit::Exited(0));
    }
}

fn config() -> CellConfig {
    CellConfig {
        timeout: Some(PATIENCE),
        ..CellConfig::default()
    }
}

/// Resumes a cell from `changes` over `base` and sends it `id`.
fn resume(
    module: &Arc<CompiledModule>,
    base: Option<&Arc<CellSnapshot>>,
    changes: CellSnapshot,
    id: u64,
) -> Echo {
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let (stdio, stdin, stdout) = Echo::stdio();
    let cell = Cell::resume_changes(
        config(),
        Arc::clone(module),
        cpu_features,
        stdio,
        base.cloned(),
        changes,
    );
    let mut echo = Echo {
        cell,
        stdin,
        stdout,
    };
    echo.echo(id);
    echo
}

#[test]
fn a_cell_from_a_template_goes_on_from_its_changes_over_the_template() {
    let module = Arc::new(compile(&echo_ids()));
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let dir = tempfile::tempdir().unwrap();
    let template = Arc::new(first_read_template_file(
        &module,
        &config(),
        &dir.path().join("echo.snap"),
    ));

    let (stdio, stdin, stdout) = Echo::stdio();
    let cell = Cell::from_template(
        config(),
        Arc::clone(&module),
        cpu_features,
        stdio,
        Arc::clone(&template),
    );
    let mut echo = Echo {
        cell,
        stdin,
        stdout,
    };
    echo.echo(11);
    let whole = echo.cell.control().snapshot().unwrap();
    echo.cell.control().resume();
    let changes = echo.park();
    // The 32 pages the program filled, its stack and the runtime's few writes; the
    // template's pages stay with the template.
    let saved = changes.memory.saved_len();
    assert!(saved >= 32 * 4096, "{saved} bytes");
    assert!(
        saved * 4 < whole.memory.saved_len(),
        "changes {saved} bytes, whole {} bytes",
        whole.memory.saved_len()
    );
    // Parked and woken again and again, over the same template.
    let echo = resume(&module, Some(&template), changes, 22);
    let changes = echo.park();
    let mut echo = resume(&module, Some(&template), changes, 33);
    echo.echo(44);
    echo.finish();
}

#[test]
fn a_booted_cell_goes_on_from_its_changes_over_nothing() {
    let module = Arc::new(compile(&echo_ids()));
    let mut echo = Echo::boot(&module);
    echo.echo(5);
    let changes = echo.park();
    let mut echo = resume(&module, None, changes, 6);
    echo.echo(7);
    echo.finish();
}

#[test]
fn changes_that_do_not_hold_what_they_describe_are_refused() {
    let module = Arc::new(compile(&echo_ids()));
    let mut echo = Echo::boot(&module);
    echo.echo(5);
    let mut changes = echo.park();
    let last = changes.memory.runs.last_mut().unwrap();
    last.len += 4096;
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let (stdio, _stdin, _stdout) = Echo::stdio();
    let cell = Cell::resume_changes(config(), module, cpu_features, stdio, None, changes);
    match cell.wait() {
        Err(CellFailure {
            error: CellError::Snapshot(reason),
            ..
        }) => assert!(reason.contains("more pages than it holds"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
