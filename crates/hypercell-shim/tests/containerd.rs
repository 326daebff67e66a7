//! The Hypercell shim under a real containerd (Debian's, private to each test) driven
//! by `ctr`: images built by `scripts/oci-image`, containers run, paused, killed, many
//! at once, and programs that trap or are not WebAssembly at all.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use support::containerd::{
    Containerd, HYPERCELL, image, mounts_under, text, wait_within, wasm_program,
};

/// The C test programs of the `hypercell` crate and of this one.
fn program(name: &str) -> PathBuf {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    if own.exists() {
        own
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../hypercell/tests/programs/{name}.c"))
    }
}

/// An image tar holding every test program, as `/NAME.wasm`, and a data file, built
/// once for all tests; entrypoint `/greet.wasm`.
fn tools_image() -> &'static Path {
    static TAR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TAR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut adds = Vec::new();
        for name in ["greet", "ticker", "crash", "upcase", "malloc_all", "files"] {
            let wasm = dir.path().join(format!("{name}.wasm"));
            wasm_program(&program(name), &wasm);
            adds.push(format!("{}:/{name}.wasm", wasm.display()));
        }
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "a line from the image\n").unwrap();
        adds.push(format!("{}:/etc/data.txt", data.display()));
        // A native executable, which a cell refuses.
        adds.push("/bin/true:/native".into());
        let tar = dir.path().join("tools.tar");
        image(&dir.path().join("greet.wasm"), "tools", &adds, &tar);
        (dir, tar)
    })
    .1
}

const TOOLS: &str = "docker.io/library/tools:latest";

fn containerd_with_tools() -> Containerd {
    let containerd = Containerd::start();
    containerd.import(tools_image());
    containerd
}

#[test]
fn a_wasm_image_runs_with_its_arguments_environment_and_exit_status() {
    let containerd = containerd_with_tools();
    let output = containerd.run(
        &["--env", "WHO=kubernetes"],
        TOOLS,
        "greet",
        &["/greet.wasm", "3", "four"],
    );
    let stdout = text(&output.stdout);
    assert_eq!(
        stdout,
        "argv[0]=/greet.wasm\nargv[1]=3\nargv[2]=four\nhello, kubernetes\n",
        "stderr: {}",
        text(&output.stderr)
    );
    assert_eq!(text(&output.stderr), "this goes to stderr\n");
    assert_eq!(output.status.code(), Some(3));

    // The image's own entrypoint, and a second container of the image, which starts
    // from the template the first one left.
    let templates: Vec<_> = std::fs::read_dir(containerd.templates())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmpl"))
        .collect();
    assert_eq!(templates.len(), 1, "one template per module");
    let output = containerd.run(&[], TOOLS, "greet2", &[]);
    assert_eq!(text(&output.stdout), "argv[0]=/greet.wasm\nhello, nobody\n");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn the_image_and_bind_mounts_are_the_programs_directories() {
    let containerd = containerd_with_tools();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("in.txt"), "a line from the host\n").unwrap();
    let ro = format!(
        "type=bind,src={},dst=/ro,options=rbind:ro",
        shared.path().display()
    );
    let rw = format!(
        "type=bind,src={},dst=/rw,options=rbind:rw",
        shared.path().display()
    );
    let output = containerd.run(
        &["--mount", &ro, "--mount", &rw],
        TOOLS,
        "files",
        &[
            "/files.wasm",
            "read:/etc/data.txt",
            "read:/ro/in.txt",
            "write:/ro/out.txt",
            "write:/rw/out.txt",
            "read:/etc/../../../etc/passwd",
        ],
    );
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("read:/etc/data.txt: a line from the image\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("read:/ro/in.txt: a line from the host\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write:/ro/out.txt: Operation not permitted\n"),
        "{stdout}"
    );
    assert!(stdout.contains("write:/rw/out.txt: ok\n"), "{stdout}");
    assert!(
        stdout.contains("read:/etc/../../../etc/passwd: Operation not permitted\n"),
        "the host's files stay out of reach: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(shared.path().join("out.txt")).unwrap(),
        "written by the cell\n"
    );
    assert_eq!(output.status.code(), Some(2), "two refusals: {stdout}");
}

#[test]
fn stdin_reaches_the_program_and_its_end_ends_the_input() {
    let containerd = containerd_with_tools();
    let mut command = containerd.ctr_command(&[
        "run",
        "--rm",
        "--runtime",
        HYPERCELL,
        TOOLS,
        "upcase",
        "/upcase.wasm",
    ]);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, b"shout this\n").unwrap();
    drop(stdin);
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = wait_within(&mut child, Duration::from_secs(60)).expect("the container ends");
    assert_eq!(stdout, "ready> SHOUT THIS\n");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_long_running_container_pauses_resumes_and_stops_on_a_signal() {
    let containerd = containerd_with_tools();
    for (id, signal, status) in [("term", "SIGTERM", 143), ("kill", "SIGKILL", 137)] {
        let mut child = containerd
            .ctr_command(&[
                "run",
                "--rm",
                "--runtime",
                HYPERCELL,
                TOOLS,
                id,
                "/ticker.wasm",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next_tick = || lines.next().expect("the ticker goes on").unwrap();
        while next_tick() != "tick 3" {}

        // Its use, as containerd's cgroup metrics report it.
        let metrics = text(&containerd.ctr(&["task", "metrics", id]).stdout);
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().parse::<u64>().ok())
        };
        assert!(
            value("memory.usage_in_bytes").is_some_and(|bytes| bytes > 1 << 20),
            "{metrics}"
        );
        assert_eq!(value("memory.limit_in_bytes"), Some(4 << 30), "{metrics}");
        assert!(
            value("cpuacct.usage ").is_some_and(|ns| ns > 0),
            "{metrics}"
        );

        let output = containerd.ctr(&["task", "pause", id]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let listed = text(&containerd.ctr(&["task", "ls"]).stdout);
        assert!(
            listed
                .lines()
                .any(|line| line.starts_with(id) && line.contains("PAUSED")),
            "{listed}"
        );
        let output = containerd.ctr(&["task", "resume", id]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let resumed_at = next_tick();
        assert!(resumed_at.starts_with("tick "), "{resumed_at}");
        next_tick();

        let output = containerd.ctr(&["task", "kill", "--signal", signal, id]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let ended = wait_within(&mut child, Duration::from_secs(60)).expect("the container stops");
        assert_eq!(ended.code(), Some(status), "{signal}");
    }
    let listed = text(&containerd.ctr(&["task", "ls", "-q"]).stdout);
    assert!(listed.trim().is_empty(), "no task is left: {listed}");
}

#[test]
fn twenty_containers_run_at_once() {
    let containerd = containerd_with_tools();
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..20)
            .map(|i| {
                let containerd = &containerd;
                scope.spawn(move || {
                    let id = format!("many{i}");
                    let code = (i % 7).to_string();
                    containerd.run(
                        &["--env", &format!("WHO={id}")],
                        TOOLS,
                        &id,
                        &["/greet.wasm", &code],
                    )
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (i, output) in outputs.iter().enumerate() {
        assert_eq!(
            text(&output.stdout),
            format!("argv[0]=/greet.wasm\nargv[1]={}\nhello, many{i}\n", i % 7),
            "container {i}: {}",
            text(&output.stderr)
        );
        assert_eq!(output.status.code(), Some((i % 7) as i32), "container {i}");
    }
}

#[test]
fn a_program_that_traps_or_cannot_run_ends_with_its_reason() {
    let containerd = containerd_with_tools();
    let output = containerd.run(&[], TOOLS, "crash", &["/crash.wasm"]);
    assert_eq!(text(&output.stdout), "about to abort\n");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("failed to run main module `/crash.wasm`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wasm `unreachable` instruction executed"),
        "{stderr}"
    );
    assert_eq!(output.status.code(), Some(134));

    for (id, program, reason) in [
        ("native", "/native", "native executable"),
        (
            "missing",
            "/missing.wasm",
            "cannot read the container's program `/missing.wasm`",
        ),
    ] {
        let output = containerd.run(&[], TOOLS, id, &[program]);
        let stderr = text(&output.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(reason),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one sentence: {stderr}");
        assert_eq!(output.status.code(), Some(1), "{id}");
    }
}

#[test]
fn the_memory_limit_bounds_the_programs_memory() {
    let containerd = containerd_with_tools();
    let output = containerd.run(
        &["--memory-limit", &(16u64 << 20).to_string()],
        TOOLS,
        "malloc",
        &["/malloc_all.wasm"],
    );
    assert_eq!(text(&output.stdout), "15 MiB\n", "{}", text(&output.stderr));
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn a_finished_container_leaves_nothing_mounted_and_stopping_containerd_nothing_at_all() {
    let containerd = containerd_with_tools();
    let output = containerd.run(&[], TOOLS, "once", &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // While containerd runs: the shim unmounted the container's root filesystem.
    let dir = containerd.dir().to_path_buf();
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    drop(containerd);
    assert!(!dir.exists());
}
