//! `hypercell pipe`: stages in cells of their own joined stdout to stdin. 1 GiB through
//! three stages arrives byte-exact (against the same C programs, native, through a
//! shell pipe); a reader that ends early gives its writer EPIPE; a writer that traps
//! gives its reader end of file after what it wrote; every stage's stderr reaches the
//! user; the exit status is a shell's with `pipefail`.

#[path = "support/binary.rs"]
mod binary;

use std::sync::atomic::{AtomicU64, Ordering};

use binary::*;

/// `hypercell pipe STAGES...`, with nothing on stdin.
fn pipe(stages: &[String]) -> Output {
    let mut args = vec!["pipe"];
    args.extend(stages.iter().map(String::as_str));
    run(&args, b"")
}

fn stage(program: &str, args: &str) -> String {
    format!("{} {args}", c_program(program).display())
}

/// `NAME.c` built natively, for the reference output. Tests running at once build it
/// each into a file of its own, renamed into place whole, so that none runs another's
/// half-written binary.
fn native(name: &str) -> PathBuf {
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let out = scratch().join(format!("{name}-native"));
    let building = scratch().join(format!(
        "{name}-native.{}.{}",
        std::process::id(),
        BUILDS.fetch_add(1, Ordering::Relaxed)
    ));
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&building)
        .arg(&source)
        .status()
        .expect("cc builds the native reference");
    assert!(status.success());
    std::fs::rename(&building, &out).unwrap();
    out
}

/// What `produce MIB | transform | digest`, native, through a shell pipe, prints.
fn native_pipeline(mib: u64) -> String {
    let reference = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} {mib} | {} | {}",
            native("produce").display(),
            native("transform").display(),
            native("digest").display()
        ))
        .output()
        .unwrap();
    assert!(reference.status.success());
    let expected = text(&reference.stdout);
    assert!(
        expected.starts_with(&format!("bytes {} hash ", mib << 20)),
        "{expected}"
    );
    expected
}

#[test]
fn a_gibibyte_through_three_stages_arrives_byte_exact() {
    let expected = native_pipeline(1024);

    let out = pipe(&[
        stage("produce", "1024"),
        stage("transform", ""),
        stage("digest", ""),
    ]);
    assert_eq!(text(&out.stdout), expected, "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn a_reader_that_ends_early_gives_its_writer_epipe() {
    let out = pipe(&[stage("produce", "64"), stage("first", "")]);
    assert_eq!(text(&out.stdout), "read 100\n");
    assert_eq!(text(&out.stderr), "produce: write: Broken pipe\n");
    // pipefail: the writer's status, though the last stage succeeded.
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_writer_that_traps_gives_its_reader_what_it_wrote_then_the_end() {
    let out = pipe(&[stage("crash", ""), stage("upcase", "")]);
    assert_eq!(text(&out.stdout), "ready> ABOUT TO ABORT\n");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("stage 1 failed to run main module")
            && stderr.contains("wasm `unreachable` instruction executed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("15 bytes\n"),
        "the reader's own stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(134));
}

#[test]
fn a_stage_that_cannot_run_stops_the_pipeline_before_it_starts() {
    let missing = scratch().join("missing.wasm");
    let out = pipe(&[stage("produce", "1"), format!("{} arg", missing.display())]);
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("error: stage 2: ") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    let out = pipe(&[stage("produce", "1"), "  ".into()]);
    assert_eq!(
        text(&out.stderr),
        "error: stage 2 is empty: give it a module\n"
    );
}

#[test]
fn a_pipeline_saved_mid_stream_goes_on_from_its_checkpoint_losing_nothing() {
    let expected = native_pipeline(2048);

    let saved = tempfile::tempdir().unwrap();
    let dir = saved.path().join("pipeline");
    let mut command = hypercell(&scratch().join("cache"));
    // SIGUSR1 waits, blocked, until the process takes it: sent before the process
    // has set up its signals, it would end it.
    // SAFETY: between fork and exec the closure only calls async-signal-safe
    // functions on a set it initialises itself.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut running = command
        .arg("pipe")
        .arg("--checkpoint")
        .arg(&dir)
        .args([
            stage("produce", "2048"),
            stage("transform", ""),
            stage("digest", ""),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Asked before every stage runs, a checkpoint is refused and the pipeline goes on:
    // ask until one is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !dir.join("pipeline.json").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint was written"
        );
        // SAFETY: kill sends a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(running.id() as i32, libc::SIGUSR1) }, 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    running.kill().unwrap();
    let lost = running.wait_with_output().unwrap();
    assert!(
        lost.stdout.is_empty(),
        "the pipeline ended before it was saved"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("pipeline.json")).unwrap()).unwrap();
    assert!(
        manifest["stages"][2]["ended"].is_null(),
        "the consumer had ended: {manifest}"
    );

    // Restored, every byte in flight and still to come arrives once, in order.
    let out = run(&["restore", dir.to_str().unwrap()], b"");
    assert_eq!(text(&out.stdout), expected, "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));

    // A damaged checkpoint is refused with one sentence naming what is wrong.
    let channel = dir.join("channel-1.bin");
    let bytes = std::fs::read(&channel).unwrap();
    std::fs::write(&channel, &bytes[..bytes.len() - 1]).unwrap();
    let out = run(&["restore", dir.to_str().unwrap()], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("channel-1.bin") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // A FIFO in its place is refused at once, not waited on.
    std::fs::remove_file(&channel).unwrap();
    let fifo = std::ffi::CString::new(channel.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path it is given.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let out = run(&["restore", dir.to_str().unwrap()], b"");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("is not a regular file"), "{stderr}");
    std::fs::write(dir.join("pipeline.json"), b"{\"stages\": []}").unwrap();
    let out = run(&["restore", dir.to_str().unwrap()], b"");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("lists 0 stages"), "{stderr}");
}
