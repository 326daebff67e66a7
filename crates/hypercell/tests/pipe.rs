//! `hypercell pipe`: stages in cells of their own joined stdout to stdin. 1 GiB through
//! three stages arrives byte-exact (against the same C programs, native, through a
//! shell pipe); a reader that ends early gives its writer EPIPE; a writer that traps
//! gives its reader end of file after what it wrote; every stage's stderr reaches the
//! user; the exit status is a shell's with `pipefail`.

#[path = "support/binary.rs"]
mod binary;

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

/// `NAME.c` built natively, for the reference output.
fn native(name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let out = scratch().join(format!("{name}-native"));
    let status = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("cc builds the native reference");
    assert!(status.success());
    out
}

#[test]
fn a_gibibyte_through_three_stages_arrives_byte_exact() {
    let reference = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} 1024 | {} | {}",
            native("produce").display(),
            native("transform").display(),
            native("digest").display()
        ))
        .output()
        .unwrap();
    assert!(reference.status.success());
    let expected = text(&reference.stdout);
    assert!(expected.starts_with("bytes 1073741824 hash "), "{expected}");

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
