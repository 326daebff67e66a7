//! Schemathesis (from PyPI, installed by `scripts/setup`) fuzzes the live daemon's API
//! from the OpenAPI document the daemon serves, for a bounded time: every answer must
//! be documented, match its schema and never be a 5xx. Its check that schema-valid
//! requests are accepted is left out: no schema can say that `module` names a file on
//! the daemon's host.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/daemon.rs"]
mod daemon;

use binary::*;
use daemon::Daemon;

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "fuzzing-token-0123456789\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            token.to_str().unwrap(),
        ],
    );

    let fuzzed = Command::new("python3")
        // It keeps a cache where it runs.
        .current_dir(dir.path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://127.0.0.1:{port}/v1/openapi.json"))
        .args([
            "--header",
            "Authorization: Bearer fuzzing-token-0123456789",
            // A stream that lasts as long as the daemon.
            "--exclude-path",
            "/v1/events",
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "coverage,fuzzing,stateful",
            "--request-timeout",
            "10",
            "--max-examples",
            "20",
            "--max-time",
            "60",
            "--seed",
            "1",
        ])
        .output()
        .expect("schemathesis is needed for this test: run scripts/setup");
    drop(daemon);
    let report = text(&fuzzed.stdout);
    assert!(
        fuzzed.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        text(&fuzzed.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
