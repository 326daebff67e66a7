//! Live migration between two daemons, each in a network namespace of its own joined by
//! a veth pair (where namespaces cannot be made, both on loopback, as the test's output
//! says): a running cell that dirties memory moves, and its output across both daemons'
//! logs is exactly an uninterrupted run's; migrations that cannot happen (a wrong
//! secret, a directory the destination cannot grant, a destination that is gone) leave
//! the cell running where it was, and so does a destination killed while the cell's
//! state reaches it; a paused cell moves paused; a cell from a template moves to a
//! daemon that lacks the template; a cell moved back and forth 50 times finishes
//! correctly.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/netns.rs"]
mod netns;

use binary::*;
use daemon::{Daemon, wait_for};
use netns::NetPair;

const SECRET: &str = "a migration secret for the tests";
/// The port of each daemon's migration listener in its namespace.
const PORT: u16 = 7870;

/// Daemons that migrate cells to each other, with what they need.
struct Hosts {
    daemons: Vec<Daemon>,
    /// Each daemon's migration address.
    addrs: Vec<String>,
    // Dropped after the daemons: the namespaces go once nothing runs in them.
    _net: Option<NetPair>,
    /// Daemon N's home is `dir/N`, its state `dir/N/state`.
    dir: tempfile::TempDir,
}

/// A free port on loopback, for daemons that cannot have namespaces.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Daemons, each with its secret and flags: the first in one namespace, the others in
/// the second (each on its own port).
fn hosts(daemons: &[(&str, &[&str])]) -> Hosts {
    let dir = tempfile::tempdir().unwrap();
    let net = NetPair::create();
    if net.is_none() {
        eprintln!(
            "network namespaces cannot be made here: the daemons migrate over loopback instead"
        );
    }
    let mut addrs = Vec::new();
    let mut started = Vec::new();
    for (i, (secret, extra)) in daemons.iter().enumerate() {
        let side = usize::from(i > 0);
        let addr = match &net {
            Some(net) => format!("{}:{}", net.addrs[side], PORT + i as u16),
            None => format!("127.0.0.1:{}", free_port()),
        };
        let home = dir.path().join(i.to_string());
        std::fs::create_dir_all(&home).unwrap();
        let secret_file = home.join("secret");
        std::fs::write(&secret_file, secret).unwrap();
        let mut flags = vec![
            "--migration-secret-file",
            secret_file.to_str().unwrap(),
            "--migration-listen",
            &addr,
            "--park-after",
            "off",
        ];
        flags.extend_from_slice(extra);
        let netns = net.as_ref().map(|net| net.names[side].as_str());
        started.push(Daemon::start_in(&home, &flags, None, netns));
        addrs.push(addr);
    }
    Hosts {
        daemons: started,
        addrs,
        _net: net,
        dir,
    }
}

/// What `dirtier ARGS` prints run without a break.
fn uninterrupted(args: &[&str]) -> String {
    let program = c_program("dirtier");
    let mut all = vec!["run", program.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Creates and starts `dirtier ARGS` as `name` on `daemon` and waits for its step
/// `step`; its id.
fn start_dirtier(daemon: &Daemon, name: &str, flags: &[&str], args: &[&str], step: u32) -> String {
    let program = c_program("dirtier");
    let mut create = vec!["create", "--name", name];
    create.extend_from_slice(flags);
    create.push(program.to_str().unwrap());
    create.extend_from_slice(args);
    let id = daemon.ok(&create).trim().to_string();
    daemon.ok(&["start", name]);
    wait_for_step(daemon, name, step);
    id
}

/// Waits until `name` on `daemon` has printed its step `step`.
fn wait_for_step(daemon: &Daemon, name: &str, step: u32) {
    let (mut follower, lines) = daemon.follow(&["logs", "-f", name]);
    let wanted = format!("step {step}");
    wait_for(&lines, |line| line == wanted);
    let _ = follower.kill();
    let _ = follower.wait();
}

/// Checks that `name`'s output, what `from` logged before it moved and what `to`
/// logged after, once it ended there, is `expected`, and that it exited 0.
fn assert_moved_whole(from: &Daemon, to: &Daemon, name: &str, expected: &str) {
    let after = all_logs(to, name);
    let before = from.ok(&["logs", name]);
    assert_eq!(
        format!("{before}{after}"),
        expected,
        "the output before the move ({} lines) and after it ({} lines)",
        before.lines().count(),
        after.lines().count()
    );
    assert_eq!(to.inspect(name)["exit_code"], 0);
}

/// Everything `logs -f` prints of `cell` on `daemon`, once the cell ends there and its
/// record says so (its logs close as its program's output does, a moment before).
fn all_logs(daemon: &Daemon, cell: &str) -> String {
    let (mut follower, lines) = daemon.follow(&["logs", "-f", cell]);
    let text: String = lines.iter().map(|line| line + "\n").collect();
    let _ = follower.wait();
    let (mut events, lines) = daemon.follow(&["events", "--since", "0"]);
    wait_for(&lines, |line| {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        event["name"] == cell
            && matches!(
                event["state"].as_str(),
                Some("exited" | "failed" | "killed")
            )
    });
    let _ = events.kill();
    let _ = events.wait();
    text
}

#[test]
fn a_running_cell_moves_and_finishes_there_with_nothing_lost_or_repeated() {
    let args = ["1500", "16"];
    let expected = uninterrupted(&args);
    let hosts = hosts(&[(SECRET, &[]), (SECRET, &[])]);
    let [a, b] = [&hosts.daemons[0], &hosts.daemons[1]];
    start_dirtier(a, "mover", &[], &args, 100);
    let said = a.ok(&["migrate", "mover", "--to", &hosts.addrs[1]]);
    assert!(
        said.starts_with(&format!("moved mover to {}", hosts.addrs[1])),
        "{said}"
    );
    let here = a.inspect("mover");
    assert_eq!(here["state"], "migrated", "{here}");
    assert_eq!(here["migrated_to"], hosts.addrs[1].as_str());
    assert!(here.get("migration").is_none(), "{here}");
    // The events told each step: offering, its memory sent while it ran and each
    // round of the pages it wrote meanwhile, the pause, then its end here.
    let (mut events, lines) = a.follow(&["events", "--since", "0"]);
    let mut steps = Vec::new();
    loop {
        let line = wait_for(&lines, |line| line.contains("\"mover\""));
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["state"] == "migrated" {
            break;
        }
        if event["action"] == "migrate" {
            steps.push(event["migration"].clone());
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let phases: Vec<&str> = steps
        .iter()
        .map(|step| step["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"offering"), "{steps:?}");
    assert_eq!(phases.last(), Some(&"copying"), "{steps:?}");
    assert!(
        phases[1..phases.len() - 1]
            .iter()
            .all(|phase| *phase == "precopying"),
        "{steps:?}"
    );
    // The whole memory, then at least one round of what the cell wrote meanwhile, each
    // with its size, the rate it was written at and the pause it would make.
    let rounds: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|step| step.get("last_round_bytes").is_some())
        .collect();
    assert!(rounds.len() >= 2, "{steps:?}");
    // At least the 100 steps of 64 KiB it wrote before it was asked to move (the rest
    // of its buffer may still be zeros, which are not sent).
    assert!(
        rounds[0]["last_round_bytes"].as_u64().unwrap() >= 100 * (64 << 10),
        "{steps:?}"
    );
    assert!(
        rounds[1]["rounds"] == 1 && rounds[1]["dirty_rate"].is_u64(),
        "{steps:?}"
    );
    assert!(
        rounds
            .iter()
            .all(|round| round["expected_downtime_us"].is_u64())
    );
    let sent: Vec<u64> = steps
        .iter()
        .map(|step| step["bytes_sent"].as_u64().unwrap())
        .collect();
    assert!(sent.windows(2).all(|pair| pair[0] <= pair[1]), "{sent:?}");

    assert_moved_whole(a, b, "mover", &expected);
    let there = b.inspect("mover");
    assert_eq!(there["state"], "exited", "{there}");
    assert_eq!(there["id"], here["id"]);
    assert_eq!(there["migrated_from"], hosts.addrs[0].as_str(), "{there}");
}

#[test]
fn a_cell_from_a_template_moves_to_a_daemon_without_the_template() {
    let args = ["1500", "16"];
    let expected = uninterrupted(&args);
    let hosts = hosts(&[(SECRET, &[]), (SECRET, &[])]);
    let [a, b] = [&hosts.daemons[0], &hosts.daemons[1]];
    let program = c_program("dirtier");
    a.ok(&[
        "template",
        "create",
        "--name",
        "dirt",
        program.to_str().unwrap(),
    ]);
    let mut create = vec!["create", "--name", "templated", "dirt"];
    create.extend_from_slice(&args);
    a.ok(&create);
    a.ok(&["start", "templated"]);
    wait_for_step(a, "templated", 100);
    a.ok(&["migrate", "templated", "--to", &hosts.addrs[1]]);
    assert_moved_whole(a, b, "templated", &expected);
}

#[test]
fn a_paused_cell_moves_paused_and_goes_on_when_resumed_there() {
    let args = ["1500", "16"];
    let expected = uninterrupted(&args);
    let hosts = hosts(&[(SECRET, &[]), (SECRET, &[])]);
    let [a, b] = [&hosts.daemons[0], &hosts.daemons[1]];
    start_dirtier(a, "sleeper", &[], &args, 100);
    a.ok(&["pause", "sleeper"]);
    a.ok(&["migrate", "sleeper", "--to", &hosts.addrs[1]]);
    assert_eq!(b.inspect("sleeper")["state"], "paused");
    // While it moves, and once it left, it is not this daemon's to act on.
    let out = a.cli(&["resume", "sleeper"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is migrated"),
        "{}",
        text(&out.stderr)
    );
    let out = a.cli(&["start", "sleeper"]);
    assert!(
        text(&out.stderr).contains("moved to"),
        "{}",
        text(&out.stderr)
    );
    b.ok(&["resume", "sleeper"]);
    assert_moved_whole(a, b, "sleeper", &expected);
}

#[test]
fn a_cell_that_cannot_move_goes_on_where_it_was() {
    let args = ["2500", "16"];
    let expected = uninterrupted(&args);
    let granted = tempfile::tempdir().unwrap();
    let allow = granted.path().to_str().unwrap();
    let mut hosts = hosts(&[
        (SECRET, &["--allow-dir", allow]),
        (SECRET, &[]),
        ("a secret the source does not hold", &[]),
    ]);
    let dir = format!("{allow}::/data");
    start_dirtier(&hosts.daemons[0], "stayer", &["--dir", &dir], &args, 50);
    let refused = |hosts: &Hosts, to: usize, because: &str| {
        let out = hosts.daemons[0].cli(&["migrate", "stayer", "--to", &hosts.addrs[to]]);
        assert!(!out.status.success());
        let said = text(&out.stderr);
        assert!(
            said.contains("was not moved") && said.contains(because),
            "to daemon {to}: {said}"
        );
    };
    refused(&hosts, 2, "does not hold the migration secret");
    refused(&hosts, 1, "may grant to cells");
    hosts.daemons[2].signal(libc::SIGKILL);
    refused(&hosts, 2, "cannot connect");
    let a = &hosts.daemons[0];
    assert_eq!(all_logs(a, "stayer"), expected);
    let record = a.inspect("stayer");
    assert_eq!(record["state"], "exited", "{record}");
    assert!(record.get("migrated_to").is_none(), "{record}");
}

#[test]
fn a_destination_killed_during_pre_copy_leaves_the_cell_running_here() {
    let kill = |hosts: &mut Hosts| hosts.daemons[1].signal(libc::SIGKILL);
    interrupted_move(Interrupted::Precopy, kill);
}

#[test]
fn a_destination_killed_during_the_final_round_leaves_the_cell_running_here() {
    let kill = |hosts: &mut Hosts| hosts.daemons[1].signal(libc::SIGKILL);
    interrupted_move(Interrupted::FinalRound, kill);
}

#[test]
fn a_destination_killed_once_the_state_arrived_leaves_the_cell_running_here() {
    let kill = |hosts: &mut Hosts| hosts.daemons[1].signal(libc::SIGKILL);
    interrupted_move(Interrupted::Arrived, kill);
}

#[test]
fn a_link_cut_while_the_memory_moves_leaves_the_cell_running_here() {
    // Without namespaces there is no link to cut.
    if NetPair::create().is_none() {
        eprintln!("network namespaces cannot be made here: no link to cut, nothing checked");
        return;
    }
    let cut = |hosts: &mut Hosts| hosts._net.as_ref().expect("namespaces").cut();
    interrupted_move(Interrupted::Precopy, cut);
}

/// When a move is interrupted.
#[derive(Clone, Copy, PartialEq)]
enum Interrupted {
    /// While the running cell's memory arrives.
    Precopy,
    /// While the paused cell's last pages and state arrive: its program writes every
    /// page of its memory a thousand times a second, so a pre-copy cannot catch up
    /// and the last round holds it all.
    FinalRound,
    /// Once its state arrived whole, with the same program: the destination then lays
    /// its last pages, nearly all its memory, over what came before, so that the
    /// moment lasts long enough to be caught.
    Arrived,
}

/// Moves a cell of 128 MiB and interrupts the move with `interrupt` (the destination
/// killed, the link cut) at `when`, then checks that the cell finished at the source
/// with the output of an uninterrupted run.
fn interrupted_move(when: Interrupted, interrupt: impl FnOnce(&mut Hosts)) {
    let (program, args, step) = match when {
        Interrupted::FinalRound | Interrupted::Arrived => ("scribble", ["6000", "128"], "pass 100"),
        _ => ("dirtier", ["3600", "128"], "step 2100"),
    };
    let mut hosts = hosts(&[(SECRET, &[]), (SECRET, &[])]);
    let program = c_program(program);
    let mut all = vec!["run", program.to_str().unwrap()];
    all.extend_from_slice(&args);
    let out = run(&all, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = text(&out.stdout);
    let a = &hosts.daemons[0];
    let mut create = vec!["create", "--name", "survivor", program.to_str().unwrap()];
    create.extend_from_slice(&args);
    let id = a.ok(&create).trim().to_string();
    a.ok(&["start", "survivor"]);
    let (mut follower, lines) = a.follow(&["logs", "-f", "survivor"]);
    wait_for(&lines, |line| line == step);
    let _ = follower.kill();
    let _ = follower.wait();
    let destination = hosts.daemons[1].child.id();
    let cell_dir = hosts.dir.path().join(format!("1/state/cells/{id}"));
    let arriving = move || match when {
        Interrupted::Precopy => {
            std::fs::metadata(cell_dir.join("arrived.mem")).is_ok_and(|memory| memory.len() > 0)
        }
        Interrupted::FinalRound => cell_dir
            .join(format!("arrived.snap.{destination}.tmp"))
            .exists(),
        Interrupted::Arrived => cell_dir.join("arrived.snap").exists(),
    };
    let moving = hypercell(&scratch().join("cache"))
        .env(
            "HYPERCELL_HOST",
            format!("unix:{}", hosts.daemons[0].socket.display()),
        )
        .args(["migrate", "survivor", "--to", &hosts.addrs[1]])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + daemon::PATIENCE;
    while !arriving() {
        assert!(
            std::time::Instant::now() < deadline,
            "the move never reached the point to interrupt"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    interrupt(&mut hosts);
    let out = moving.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("was not moved") && said.contains("goes on here"),
        "{said}"
    );
    let a = &hosts.daemons[0];
    assert_eq!(all_logs(a, "survivor"), expected);
    assert_eq!(a.inspect("survivor")["state"], "exited");
}

#[test]
fn a_cell_moved_back_and_forth_fifty_times_finishes_correctly() {
    let args = ["300", "16", "stdin"];
    let expected = uninterrupted(&args);
    let hosts = hosts(&[(SECRET, &[]), (SECRET, &[])]);
    // After its steps it waits for the end of its stdin, and moves meanwhile.
    start_dirtier(
        &hosts.daemons[0],
        "traveller",
        &["--interactive"],
        &args,
        299,
    );
    for round in 0..50 {
        let (from, to) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        let said = hosts.daemons[from].ok(&["migrate", "traveller", "--to", &hosts.addrs[to]]);
        assert!(said.starts_with("moved traveller"), "round {round}: {said}");
    }
    let home = &hosts.daemons[0];
    home.ok(&["stop", "traveller"]);
    let last = all_logs(home, "traveller");
    let ending: Vec<&str> = expected.lines().rev().take(2).collect();
    let ended: Vec<&str> = last.lines().rev().take(2).collect();
    assert_eq!(ended, ending, "{last}");
    let record = home.inspect("traveller");
    assert_eq!(record["state"], "exited", "{record}");
    assert_eq!(record["exit_code"], 0);
}

#[test]
fn a_cell_moves_to_where_its_directory_has_another_path_and_its_open_file_goes_on() {
    // The same storage under two paths, as a shared volume mounted elsewhere.
    let storage = tempfile::tempdir().unwrap();
    let here = storage.path().join("here");
    let there = storage.path().join("there");
    std::fs::create_dir(&here).unwrap();
    std::os::unix::fs::symlink(&here, &there).unwrap();
    let root = storage.path().to_str().unwrap();
    let hosts = hosts(&[
        (SECRET, &["--allow-dir", root]),
        (SECRET, &["--allow-dir", root]),
    ]);
    let (a, b) = (&hosts.daemons[0], &hosts.daemons[1]);
    let program = c_program("journal");
    let dir = format!("{}::/data", here.display());
    a.ok(&[
        "create",
        "--name",
        "journal",
        "--dir",
        &dir,
        program.to_str().unwrap(),
        "3000",
        "/data/journal.txt",
    ]);
    a.ok(&["start", "journal"]);
    wait_for_step(a, "journal", 100);

    let refused = |map: &str, because: &str| {
        let out = a.cli(&[
            "migrate",
            "journal",
            "--to",
            &hosts.addrs[1],
            "--dir-map",
            map,
        ]);
        assert!(!out.status.success(), "{map}");
        let said = text(&out.stderr);
        assert!(said.contains(because), "{map}: {said}");
    };
    // A directory the destination does not have is refused before the cell pauses.
    refused(
        &format!("{}=/nowhere/at/all", here.display()),
        "does not exist here",
    );
    refused(
        "/not/its/directory=/tmp",
        "holds none of cell `journal`'s directories",
    );
    assert_eq!(a.inspect("journal")["state"], "running");

    let map = format!("{}={}", here.display(), there.display());
    a.ok(&[
        "migrate",
        "journal",
        "--to",
        &hosts.addrs[1],
        "--dir-map",
        &map,
    ]);
    let record = b.inspect("journal");
    assert_eq!(
        record["spec"]["dirs"][0]["host"],
        there.display().to_string(),
        "{record}"
    );
    let after = all_logs(b, "journal");
    assert!(after.ends_with("step 2999\ndone\n"), "{after}");
    assert_eq!(b.inspect("journal")["exit_code"], 0);
    let journal = std::fs::read_to_string(here.join("journal.txt")).unwrap();
    let expected: String = (0..3000).map(|i| format!("entry {i}\n")).collect();
    assert!(
        journal == expected,
        "each entry once, in order, across the move"
    );
    let _ = &hosts.dir;
}
