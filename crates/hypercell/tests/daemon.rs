//! `hypercell daemon` driven by the real CLI over its Unix socket: create, start, logs,
//! pause (output stops), resume, stop, kill, rm and events; clear sentences for bad
//! requests; and what the daemon reports after SIGTERM and after SIGKILL.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/daemon.rs"]
mod daemon;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use binary::*;
use daemon::{Daemon, PATIENCE, wait_for};

fn tick_number(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.parse().ok()
}

/// Creates and starts the ticker `durable` with the checkpoint policy and waits for its
/// tick `ticks`; its id.
fn start_durable_ticker(daemon: &Daemon, ticks: u64) -> String {
    let ticker = c_program("ticker");
    let id = daemon.ok(&[
        "create",
        "--name",
        "durable",
        "--restart",
        "checkpoint",
        ticker.to_str().unwrap(),
    ]);
    daemon.ok(&["start", "durable"]);
    let (_, output) = daemon.follow(&["logs", "-f", "durable"]);
    wait_for(&output, |line| {
        tick_number(line).is_some_and(|n| n >= ticks)
    });
    id.trim().to_string()
}

/// Checks that the ticker `cell`'s log holds every tick from the first, one by one,
/// and goes on to three past what it held when this was called.
fn ticks_go_on_once_each(daemon: &Daemon, cell: &str) {
    let held = daemon.ok(&["logs", cell]).lines().count() as u64;
    let (_, output) = daemon.follow(&["logs", "-f", cell]);
    for expected in 0..held + 3 {
        let line = wait_for(&output, |_| true);
        assert_eq!(tick_number(&line), Some(expected), "{line:?}");
    }
}

#[test]
fn cells_are_created_run_paused_stopped_and_removed_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "only the daemon's user may use the socket"
    );
    // From the first event, however soon the client connects.
    let (mut events, event_lines) = daemon.follow(&["events", "--since", "0"]);

    let ticker = c_program("ticker");
    let id = daemon.ok(&["create", "--name", "ticker", ticker.to_str().unwrap()]);
    let id = id.trim();
    assert_eq!(id.len(), 12, "{id}");
    assert_eq!(daemon.inspect("ticker")["state"], "created");
    assert_eq!(
        daemon.inspect(&id[..5])["id"],
        id,
        "an id prefix names the cell"
    );
    daemon.ok(&["start", "ticker"]);
    let (mut follower, output) = daemon.follow(&["logs", "-f", "ticker"]);
    wait_for(&output, |line| tick_number(line).is_some_and(|n| n >= 3));

    // Paused, it writes nothing; resumed, it goes on from where it was.
    daemon.ok(&["pause", "ticker"]);
    assert_eq!(daemon.inspect("ticker")["state"], "paused");
    let paused_at = daemon.ok(&["logs", "ticker"]).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        daemon.ok(&["logs", "ticker"]).len(),
        paused_at,
        "no output while paused"
    );
    let last = text(
        daemon
            .ok(&["logs", "ticker"])
            .lines()
            .last()
            .unwrap()
            .as_bytes(),
    );
    let last = tick_number(&last).unwrap();
    daemon.ok(&["resume", "ticker"]);
    wait_for(&output, |line| tick_number(line) == Some(last + 2));

    // Stats while it runs: it has slept (one exit a tick) and written.
    let stats: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["stats", "--format", "json", "ticker"])).unwrap();
    let usage = &stats[0]["usage"];
    assert_eq!(stats[0]["state"], "running");
    assert!(usage["exits"].as_u64().unwrap() >= 3, "{stats}");
    assert!(
        usage["hypercalls"]["sleep"].as_u64().unwrap() >= 3,
        "{stats}"
    );
    assert!(
        usage["memory_touched"].as_u64().unwrap() > 0,
        "a live cell's memory touched is measured: {stats}"
    );
    assert!(usage["cpu_time_ms"].is_u64(), "{stats}");
    assert!(stats[0]["uptime_ms"].as_u64().unwrap() > 0, "{stats}");
    let table = daemon.ok(&["stats", "ticker"]);
    assert!(table.contains("sleep"), "{table}");

    let table = daemon.ok(&["ps"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("ticker") && l.contains("running")),
        "{table}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["ps", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["name"], "ticker");

    // The ticker does not read stdin: stop closes it, waits, then kills.
    daemon.ok(&["stop", "-t", "0", "ticker"]);
    assert_eq!(daemon.inspect("ticker")["state"], "killed");
    assert!(
        follower.wait().unwrap().success(),
        "logs -f ends with the cell"
    );

    // Bad requests get one sentence each.
    let out = daemon.cli(&["start", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: no cell has the id or name `nosuch`"
    );
    let out = daemon.cli(&["create", "--name", "ticker", ticker.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("exists already"),
        "{}",
        text(&out.stderr)
    );
    let out = daemon.cli(&["create", "/no/such/module.wasm"]);
    assert!(
        text(&out.stderr).contains("`module`: `/no/such/module.wasm` is not a file"),
        "{}",
        text(&out.stderr)
    );
    let out = daemon.cli(&["pause", "ticker"]);
    assert!(
        text(&out.stderr).contains("cell `ticker` is killed; pause needs a cell that is running"),
        "{}",
        text(&out.stderr)
    );

    // A program that ends by itself; its output stays readable after it ended.
    let count = c_program("count");
    // Created and started in one request, as `docker run`.
    daemon.ok(&[
        "create",
        "--start",
        "--name",
        "count",
        count.to_str().unwrap(),
        "3",
    ]);
    let (_, counted) = daemon.follow(&["logs", "-f", "count"]);
    wait_for(&counted, |line| line == "3");
    let deadline = Instant::now() + PATIENCE;
    while daemon.inspect("count")["state"] != "exited" {
        assert!(Instant::now() < deadline, "count ends");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(daemon.inspect("count")["exit_code"], 0);
    let ended: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["stats", "--format", "json", "count"])).unwrap();
    assert!(
        ended[0]["usage"]["memory_touched"].as_u64().unwrap() > 0,
        "an ended run knows what it touched: {ended}"
    );
    assert_eq!(daemon.ok(&["logs", "count"]), "0\n1\n2\n3\n");

    daemon.ok(&["rm", "ticker", "count"]);
    assert_eq!(daemon.ok(&["ps", "--format", "json"]).trim(), "[]");

    let actions: Vec<String> = [
        "create", "start", "pause", "resume", "kill", "create", "start", "exit", "remove", "remove",
    ]
    .iter()
    .map(|action| {
        let line = wait_for(&event_lines, |_| true);
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["action"], *action, "{line}");
        event["name"].as_str().unwrap().to_string()
    })
    .collect();
    assert_eq!(actions[..5], ["ticker"; 5]);
    let _ = events.kill();
}

#[test]
fn the_daemon_keeps_its_records_across_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let ticker = c_program("ticker");
    let mut daemon = Daemon::start(dir.path());
    daemon.ok(&["create", "--name", "first", ticker.to_str().unwrap()]);
    daemon.ok(&["start", "first"]);
    let (_, output) = daemon.follow(&["logs", "-f", "first"]);
    wait_for(&output, |line| tick_number(line).is_some());

    // SIGTERM: the running cell is killed and its end recorded before the daemon goes.
    daemon.signal(libc::SIGTERM);
    assert!(!daemon.socket.exists(), "the socket is removed");
    let mut daemon = Daemon::start(dir.path());
    assert_eq!(daemon.inspect("first")["state"], "killed");
    assert!(
        daemon.ok(&["logs", "first"]).starts_with("tick 0\n"),
        "logs are kept"
    );

    // SIGKILL: nothing is recorded at the end; the next daemon finds the cell lost.
    daemon.ok(&["start", "first"]);
    daemon.ok(&["create", "--name", "second", ticker.to_str().unwrap()]);
    daemon.signal(libc::SIGKILL);
    let daemon = Daemon::start(dir.path());
    let first = daemon.inspect("first");
    assert_eq!(first["state"], "lost");
    assert_eq!(first["error"], "the daemon that ran it went away");
    assert_eq!(daemon.inspect("second")["state"], "created");
    let (_, replay) = daemon.follow(&["events", "--since", "0"]);
    let line = wait_for(&replay, |line| line.contains("\"lose\""));
    assert!(line.contains("\"first\""), "{line}");
}

#[test]
fn a_cell_with_the_checkpoint_policy_outlives_its_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let ticker = c_program("ticker");
    let mut daemon = Daemon::start(dir.path());
    start_durable_ticker(&daemon, 3);

    // SIGTERM checkpoints it; the next daemon restores it, and its output goes on in
    // the same log with no tick repeated or skipped.
    daemon.signal(libc::SIGTERM);
    let daemon = Daemon::start(dir.path());
    assert_eq!(daemon.inspect("durable")["state"], "running");
    // Every tick from the first, across the restore, one by one, to three past what
    // the log held when the new daemon came up.
    ticks_go_on_once_each(&daemon, "durable");
    let out = daemon.cli(&["create", "--restart", "sometimes", ticker.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a restart policy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_snapshot_taken_through_the_daemon_goes_on_in_a_new_cell() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let ticker = c_program("ticker");
    daemon.ok(&["create", "--name", "original", ticker.to_str().unwrap()]);
    daemon.ok(&["start", "original"]);
    let (_, output) = daemon.follow(&["logs", "-f", "original"]);
    wait_for(&output, |line| tick_number(line).is_some_and(|n| n >= 3));
    let checkpoint = dir.path().join("ticker.ckpt");
    let written = daemon.ok(&["snapshot", "original", "-o", checkpoint.to_str().unwrap()]);
    assert_eq!(written.trim(), checkpoint.to_str().unwrap());
    // The original goes on after its snapshot.
    let after = wait_for(&output, |line| tick_number(line).is_some());
    wait_for(&output, |line| tick_number(line) > tick_number(&after));
    daemon.ok(&["kill", "original"]);

    // A checkpoint goes on with its own identity: a new one is refused at the start.
    daemon.ok(&[
        "create",
        "--name",
        "with-args",
        checkpoint.to_str().unwrap(),
        "an argument",
    ]);
    let out = daemon.cli(&["start", "with-args"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("goes on with its own arguments, environment and directories"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(daemon.inspect("with-args")["state"], "failed");
    daemon.ok(&["create", "--name", "restored", checkpoint.to_str().unwrap()]);
    daemon.ok(&["start", "restored"]);
    let (_, restored) = daemon.follow(&["logs", "-f", "restored"]);
    let first = tick_number(&wait_for(&restored, |_| true)).expect("a tick");
    assert!(
        first >= 3,
        "the restored cell goes on from its snapshot, at tick {first}"
    );
    let second = tick_number(&wait_for(&restored, |_| true)).expect("a tick");
    assert_eq!(second, first + 1);
    daemon.ok(&["rm", "-f", "restored", "original", "with-args"]);

    let out = daemon.cli(&["snapshot", "restored", "-o", "/tmp/x"]);
    assert!(
        text(&out.stderr).contains("no cell has the id or name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tcp_needs_the_token_bodies_are_bounded_and_directories_stay_inside_their_roots() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");

    // No token, or one too short: no daemon.
    let out = hypercell(&scratch().join("cache"))
        .args(["daemon", "--listen", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").unwrap();
    let out = hypercell(&scratch().join("cache"))
        .args(["daemon", "--socket"])
        .arg(dir.path().join("s.sock"))
        .args(["--state"])
        .arg(dir.path().join("s"))
        .args(["--listen", &address, "--token-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("as the API's token"),
        "{}",
        text(&out.stderr)
    );

    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--listen",
            &address,
            "--token-file",
            token.to_str().unwrap(),
            "--allow-dir",
            allowed.to_str().unwrap(),
        ],
    );
    let over_tcp = |secret: &str| {
        hypercell(&scratch().join("cache"))
            .env("HYPERCELL_TOKEN", secret)
            .args([
                "ps",
                "--format",
                "json",
                "--host",
                &format!("http://{address}"),
            ])
            .output()
            .unwrap()
    };
    let refused = over_tcp("wrong-token-0123456789");
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr).trim(),
        "error: this API needs the daemon's token: send `Authorization: Bearer TOKEN`"
    );
    let out = over_tcp("s3cret-token-0123456789");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[]");

    // A body over the limit: 413, with a sentence.
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let body = vec![b' '; 2 << 20];
    write!(
        stream,
        "POST /v1/cells HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let _ = stream.write_all(&body);
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the API takes"), "{answer}");

    // Directories: only under --allow-dir roots.
    let program = c_program("count");
    let inside = format!("{}::data", allowed.join("sub").display());
    daemon.ok(&["create", "--dir", &inside, program.to_str().unwrap()]);
    for outside in [
        dir.path().join("other").display().to_string(),
        format!("{}/..", allowed.display()),
    ] {
        let out = daemon.cli(&["create", "--dir", &outside, program.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("is not inside a directory this daemon may grant"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn hostile_cells_end_alone_beside_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let ticker = c_program("ticker");
    daemon.ok(&["create", "--name", "steady", ticker.to_str().unwrap()]);
    daemon.ok(&["start", "steady"]);
    let (_, steady) = daemon.follow(&["logs", "-f", "steady"]);
    wait_for(&steady, |line| tick_number(line).is_some());

    let recursion = dir.path().join("recursion.wat");
    std::fs::write(
        &recursion,
        r#"(module (func $f (call $f)) (func (export "_start") (call $f)))"#,
    )
    .unwrap();
    let wild = dir.path().join("wild.wat");
    std::fs::write(
        &wild,
        r#"(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 70000)))))"#,
    )
    .unwrap();
    let crash = c_program("crash");
    let spin = c_program("spin");
    let yes = c_program("yes");
    let malloc_all = c_program("malloc_all");
    let hostile: [(&str, Vec<&str>, &str); 6] = [
        (
            "aborts",
            vec![crash.to_str().unwrap()],
            "trapped: wasm `unreachable` instruction executed",
        ),
        (
            "recurses",
            vec![recursion.to_str().unwrap()],
            "trapped: call stack exhausted",
        ),
        (
            "strays",
            vec![wild.to_str().unwrap()],
            "trapped: out of bounds memory access",
        ),
        (
            "spins",
            vec!["--timeout", "300ms", spin.to_str().unwrap()],
            "time limit",
        ),
        (
            "floods",
            vec!["--max-output", "64K", yes.to_str().unwrap()],
            "output limit",
        ),
        (
            "hoards",
            vec!["--memory", "16M", malloc_all.to_str().unwrap()],
            "",
        ),
    ];
    for (name, args, _) in &hostile {
        let mut create = vec!["create", "--name", name];
        create.extend(args);
        daemon.ok(&create);
        daemon.ok(&["start", name]);
    }
    for (name, _, reason) in &hostile {
        let deadline = Instant::now() + PATIENCE;
        let record = loop {
            let record = daemon.inspect(name);
            if record["state"] != "running" {
                break record;
            }
            assert!(Instant::now() < deadline, "{name} ends");
            std::thread::sleep(Duration::from_millis(10));
        };
        if reason.is_empty() {
            assert_eq!(record["state"], "exited", "{name}: {record}");
        } else {
            assert_eq!(record["state"], "failed", "{name}: {record}");
            let error = record["error"].as_str().unwrap();
            assert!(error.contains(reason), "{name}: {error}");
        }
    }
    // The steady cell ticked on through all of it, and still does.
    let before = tick_number(&wait_for(&steady, |line| tick_number(line).is_some())).unwrap();
    wait_for(&steady, |line| tick_number(line) == Some(before + 3));
    assert_eq!(daemon.inspect("steady")["state"], "running");
}

#[test]
fn cells_get_only_the_components_their_spec_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--allow-dir", data.to_str().unwrap()]);
    let greet = c_program("greet");
    let greet = greet.to_str().unwrap();
    let out = daemon.cli(&["create", "--components", "stdio,args,strict", greet]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(
            &format!(
                "`components`: `{greet}` imports `wasi_snapshot_preview1::environ_get`, which needs the `env` component"
            )
        ),
        "{}",
        text(&out.stderr)
    );
    let out = daemon.cli(&[
        "create",
        "--components",
        "stdio,args,env",
        "--dir",
        data.to_str().unwrap(),
        greet,
    ]);
    assert!(
        text(&out.stderr)
            .contains("`components`: directories are granted, but not the `fs` component"),
        "{}",
        text(&out.stderr)
    );
    daemon.ok(&[
        "create",
        "--start",
        "--name",
        "quiet",
        "--components",
        "args,env",
        greet,
    ]);
    let (_, ended) = daemon.follow(&["events", "--since", "0"]);
    wait_for(&ended, |line| {
        line.contains("\"quiet\"") && line.contains("\"exit\"")
    });
    let quiet = daemon.inspect("quiet");
    assert_eq!(
        (&quiet["state"], &quiet["exit_code"]),
        (&"exited".into(), &0.into())
    );
    assert_eq!(
        quiet["spec"]["components"],
        serde_json::json!(["args", "env"])
    );
    assert_eq!(daemon.ok(&["logs", "quiet"]), "", "no stdio, no output");
}

#[test]
fn templates_are_made_listed_used_and_removed_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let greet = c_program("greet");
    let greet = greet.to_str().unwrap();
    assert_eq!(
        daemon
            .ok(&["template", "create", "--name", "greeter", greet])
            .trim(),
        "greeter"
    );
    let out = daemon.cli(&["template", "create", "--name", "greeter", greet]);
    assert!(
        text(&out.stderr).contains("a template named `greeter` exists already"),
        "{}",
        text(&out.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["template", "ls", "--format", "json"])).unwrap();
    assert_eq!(listed[0]["name"], "greeter");
    assert!(listed[0]["bytes"].as_u64().unwrap() > 0);
    let table = daemon.ok(&["template", "ls"]);
    assert!(table.lines().any(|l| l.starts_with("greeter")), "{table}");

    // A cell names the template; it brings its own arguments and environment.
    daemon.ok(&[
        "create", "--start", "--name", "g1", "--env", "WHO=cell", "greeter", "5",
    ]);
    let (_, events) = daemon.follow(&["events", "--since", "0"]);
    wait_for(&events, |line| {
        line.contains("\"g1\"") && line.contains("\"exit\"")
    });
    assert_eq!(daemon.inspect("g1")["exit_code"], 5);
    assert!(daemon.ok(&["logs", "g1"]).contains("hello, cell"));
    assert!(
        daemon.inspect("g1")["spec"]["module"]
            .as_str()
            .unwrap()
            .ends_with("templates/greeter.tmpl")
    );

    assert_eq!(daemon.ok(&["template", "rm", "greeter"]).trim(), "greeter");
    let out = daemon.cli(&["template", "rm", "greeter"]);
    assert_eq!(
        text(&out.stderr).trim(),
        "error: no template is named `greeter`"
    );
    let out = daemon.cli(&["create", "greeter"]);
    assert!(
        text(&out.stderr).contains("`greeter` is neither an absolute path nor a template's name"),
        "{}",
        text(&out.stderr)
    );
    let out = daemon.cli(&[
        "template", "create", "--name", "bad", "--at", "later", greet,
    ]);
    assert!(
        text(&out.stderr).contains("`at`: `later` is not a stop point"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_checkpointed_cell_survives_sigkill_with_its_log_cut_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_with(dir.path(), &["--checkpoint-every", "100ms"]);
    let id = start_durable_ticker(&daemon, 5);
    // Two checkpoints at least, so that one was taken while it ticked on.
    let cell_dir = dir.path().join("state/cells").join(&id);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let marks: Vec<u64> = std::fs::read_dir(&cell_dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().into_string().unwrap();
                name.strip_prefix("checkpoint-")?
                    .strip_suffix(".mark")?
                    .parse()
                    .ok()
            })
            .collect();
        if marks.iter().any(|&n| n >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "checkpoints are taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal(libc::SIGKILL);

    // The next daemon restores it from the last checkpoint; the ticks it wrote after
    // that checkpoint are cut from the log and written again, once.
    let daemon = Daemon::start(dir.path());
    assert_eq!(daemon.inspect("durable")["state"], "running");
    ticks_go_on_once_each(&daemon, "durable");
    let (_, events) = daemon.follow(&["events", "--since", "0"]);
    wait_for(&events, |line| {
        line.contains("\"restore\"") && line.contains("\"durable\"")
    });
}

/// FNV-1a of `len` bytes of `produce`'s pattern, as `digest` prints it.
fn produce_digest(len: u64) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for at in 0..len {
        let byte = (at ^ (at >> 9) ^ (at >> 17)) as u8;
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3);
    }
    format!("bytes {len} hash {hash:016x}")
}

#[test]
fn cells_joined_by_a_channel_run_as_a_pipeline_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a migration secret of some length\n").unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &["--migration-secret-file", secret.to_str().unwrap()],
    );
    let produce = c_program("produce");
    let digest = c_program("digest");
    let (produce, digest) = (produce.to_str().unwrap(), digest.to_str().unwrap());
    daemon.ok(&["create", "--name", "producer", produce, "16"]);
    daemon.ok(&["create", "--name", "hasher", digest]);
    assert_eq!(
        daemon
            .ok(&["connect", "producer:stdout", "hasher:stdin"])
            .trim(),
        "producer:stdout -> hasher:stdin"
    );
    let (producer, hasher) = (daemon.inspect("producer"), daemon.inspect("hasher"));
    assert_eq!(producer["stdout_to"], hasher["id"]);
    assert_eq!(hasher["stdin_from"], producer["id"]);

    // Each stream joins once, a cell never to itself, and only as CELL:stdout to
    // CELL:stdin (or a name to the same name).
    daemon.ok(&["create", "--name", "other", digest]);
    daemon.refused(
        &["connect", "producer:stdout", "other:stdin"],
        "`producer`'s stdout is already joined to cell `hasher`",
    );
    daemon.refused(
        &["connect", "other:stdout", "hasher:stdin"],
        "`hasher`'s stdin is already joined to cell `producer`'s stdout",
    );
    daemon.refused(
        &["connect", "other:stdout", "other:stdin"],
        "cannot be joined to itself",
    );
    daemon.refused(
        &["connect", "other:stdin", "hasher:stdin"],
        "`stdin` to `stdin` is no channel",
    );
    daemon.refused(&["connect", "nothing:stdout", "other:stdin"], "nothing");

    // The reader starts first and waits; the writer's bytes then reach it, and only it:
    // the writer's own log stays empty.
    daemon.ok(&["start", "hasher"]);
    daemon.ok(&["start", "producer"]);
    let (mut follower, lines) = daemon.follow(&["logs", "-f", "hasher"]);
    let line = wait_for(&lines, |line| line.starts_with("bytes "));
    assert_eq!(line, produce_digest(16 << 20));
    assert!(follower.wait().unwrap().success());
    let (mut follower, _) = daemon.follow(&["logs", "-f", "producer"]);
    assert!(follower.wait().unwrap().success());
    for cell in ["producer", "hasher"] {
        assert_eq!(daemon.inspect(cell)["state"], "exited", "{cell}");
        assert_eq!(daemon.inspect(cell)["exit_code"], 0, "{cell}");
    }
    assert!(daemon.ok(&["logs", "producer"]).is_empty());

    // A joined cell runs once, and a cell that ran joins nothing.
    daemon.refused(&["start", "producer"], "a joined cell runs once");
    daemon.refused(
        &["connect", "hasher:stdout", "other:stdin"],
        "`hasher` has started already",
    );

    // A writer whose reader has not started fills the ring and waits; it cannot be
    // snapshotted or moved apart from its reader. Killed, it leaves the reader what
    // it wrote, then the end.
    let yes = c_program("yes");
    daemon.ok(&["create", "--name", "yes", yes.to_str().unwrap()]);
    daemon.ok(&["connect", "yes:stdout", "other:stdin"]);
    daemon.ok(&["start", "yes"]);
    let checkpoint = dir.path().join("yes.snapshot");
    daemon.refused(
        &["snapshot", "-o", checkpoint.to_str().unwrap(), "yes"],
        "joined to other cells by channels",
    );
    daemon.refused(
        &["migrate", "yes", "--to", "127.0.0.1:9"],
        "joined to other cells by channels",
    );
    daemon.ok(&["kill", "yes"]);
    daemon.ok(&["start", "other"]);
    let (_, lines) = daemon.follow(&["logs", "-f", "other"]);
    let line = wait_for(&lines, |line| line.starts_with("bytes "));
    assert!(line.starts_with("bytes 1048576 "), "{line}");

    // A reader removed before it starts closes its end: its writer gets EPIPE.
    daemon.ok(&["create", "--name", "late", produce, "4"]);
    daemon.ok(&["create", "--name", "gone", digest]);
    daemon.ok(&["connect", "late:stdout", "gone:stdin"]);
    daemon.ok(&["rm", "gone"]);
    daemon.ok(&["start", "late"]);
    let (mut follower, _) = daemon.follow(&["logs", "-f", "late"]);
    assert!(follower.wait().unwrap().success());
    assert_eq!(daemon.inspect("late")["exit_code"], 2);
    let logs = daemon.cli(&["logs", "late"]);
    assert_eq!(text(&logs.stderr), "produce: write: Broken pipe\n");

    // Cells joined but not started are joined again by the next daemon.
    daemon.ok(&["create", "--name", "again", produce, "4"]);
    daemon.ok(&["create", "--name", "after", digest]);
    daemon.ok(&["connect", "again:stdout", "after:stdin"]);
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    let daemon = Daemon::start_with(
        dir.path(),
        &["--migration-secret-file", secret.to_str().unwrap()],
    );
    daemon.ok(&["start", "after"]);
    daemon.ok(&["start", "again"]);
    let (_, lines) = daemon.follow(&["logs", "-f", "after"]);
    assert_eq!(
        wait_for(&lines, |line| line.starts_with("bytes ")),
        produce_digest(4 << 20)
    );
}

/// The bytes `requester COUNT` sends: "msg N\n" for each N.
fn requests_len(count: u64) -> u64 {
    (0..count).map(|i| format!("msg {i}\n").len() as u64).sum()
}

#[test]
fn cells_talk_through_named_channels_in_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let program = |name: &str| c_program(name).to_str().unwrap().to_string();
    let (requester, upcaser) = (program("requester"), program("upcaser"));

    // A request and reply loop between two long-lived cells: each channel is granted
    // by name, one way, and the server waits for requests with poll().
    daemon.ok(&["create", "--name", "client", &requester, "2000"]);
    daemon.ok(&["create", "--name", "server", &upcaser]);
    assert_eq!(
        daemon
            .ok(&["connect", "client:requests", "server:requests"])
            .trim(),
        "client:requests -> server:requests"
    );
    daemon.ok(&["connect", "server:replies", "client:replies"]);
    let client = daemon.inspect("client");
    let server = daemon.inspect("server");
    assert_eq!(client["named_channels"][0]["name"], "requests");
    assert_eq!(client["named_channels"][0]["peer"], server["id"]);
    assert_eq!(client["named_channels"][0]["writes"], true);
    assert_eq!(server["named_channels"][0]["writes"], false);
    let listed: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["channels", "--format", "json"])).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|channel| channel["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["requests", "replies"]);

    // Names are plain words, each once per cell, and both cells need the component.
    daemon.ok(&[
        "create",
        "--name",
        "plain",
        &upcaser,
        "--components",
        "stdio",
    ]);
    daemon.ok(&["create", "--name", "other", &upcaser]);
    daemon.refused(
        &["connect", "other:../x", "server:../x"],
        "`../x` cannot name a channel",
    );
    daemon.refused(
        &["connect", "other:requests", "server:requests"],
        "cell `server` already has a channel named `requests`, joined to cell `client`",
    );
    daemon.refused(
        &["connect", "plain:jobs", "other:jobs"],
        "cell `plain` is not given the `channels` component",
    );
    daemon.refused(&["connect", "other:stdout", "server:jobs"], "is no channel");
    daemon.refused(
        &["connect", "other:jobs", "other:jobs"],
        "cannot be joined to itself",
    );

    // Cells granted named channels but not started are joined again by the next
    // daemon.
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    let daemon = Daemon::start(dir.path());
    daemon.ok(&["start", "server"]);
    daemon.ok(&["start", "client"]);
    let (_, lines) = daemon.follow(&["logs", "-f", "client"]);
    assert_eq!(
        wait_for(&lines, |line| line.starts_with("replies")),
        "replies 2000 ok"
    );
    let (_, lines) = daemon.follow(&["logs", "-f", "server"]);
    assert_eq!(
        wait_for(&lines, |line| line.starts_with("served")),
        format!("served {} bytes", requests_len(2000))
    );
    for cell in ["client", "server"] {
        assert_eq!(daemon.inspect(cell)["exit_code"], 0, "{cell}");
    }

    // One reader waits on three writers at once with poll(), and every line of each
    // arrives.
    let (merge, say) = (program("merge"), program("say"));
    daemon.ok(&["create", "--name", "merger", &merge, "a", "b", "c"]);
    for (cell, channel, count) in [("sa", "a", "50000"), ("sb", "b", "20000"), ("sc", "c", "3")] {
        daemon.ok(&["create", "--name", cell, &say, channel, cell, count]);
        daemon.ok(&[
            "connect",
            &format!("{cell}:{channel}"),
            &format!("merger:{channel}"),
        ]);
    }
    daemon.ok(&["start", "merger"]);
    for cell in ["sc", "sa", "sb"] {
        daemon.ok(&["start", cell]);
    }
    let (mut follower, _) = daemon.follow(&["logs", "-f", "merger"]);
    assert!(follower.wait().unwrap().success());
    assert_eq!(daemon.ok(&["logs", "merger"]), "a 50000\nb 20000\nc 3\n");

    // What a program may do with its channels, as wasi-libc's calls see it.
    daemon.ok(&["create", "--name", "rules", &program("channel_rules")]);
    daemon.ok(&["create", "--name", "echo", &upcaser]);
    daemon.ok(&["connect", "rules:requests", "echo:requests"]);
    daemon.ok(&["connect", "echo:replies", "rules:replies"]);
    daemon.ok(&["start", "rules"]);
    daemon.ok(&["start", "echo"]);
    let (mut follower, _) = daemon.follow(&["logs", "-f", "rules"]);
    assert!(follower.wait().unwrap().success());
    assert_eq!(
        daemon.ok(&["logs", "rules"]),
        "listed requests
listed replies
open missing: ENOENT
create missing: ENOTCAPABLE
open the writing end to read: EACCES
open as a directory: ENOTDIR
open requests: ok
open requests again: EBUSY
read requests: EBADF
seek requests: ESPIPE
stat requests: ok
open replies: ok
write replies: EBADF
write requests: ok
close requests: ok
write requests once closed: EBADF
open requests once closed: EBUSY
HELLO
read replies to its end: ok
"
    );

    // A cell whose peer is removed before it starts reads the end of the channel.
    daemon.ok(&["create", "--name", "lonely", &upcaser]);
    daemon.ok(&["create", "--name", "vanished", &requester, "5"]);
    daemon.ok(&["connect", "vanished:requests", "lonely:requests"]);
    daemon.ok(&["connect", "lonely:replies", "vanished:replies"]);
    daemon.ok(&["rm", "vanished"]);
    daemon.ok(&["start", "lonely"]);
    let (_, lines) = daemon.follow(&["logs", "-f", "lonely"]);
    assert_eq!(
        wait_for(&lines, |line| line.starts_with("served")),
        "served 0 bytes"
    );
}
