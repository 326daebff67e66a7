//! `hypercell serve` against wasmtime on the same handlers, on loopback, in one run:
//! requests per second and p99 latency under `hey` with 16 and 64 connections, the
//! median of 3 runs each. The wasi:http components (the tests' `http_hello.c` and
//! `http_app.py`, CPython and all, built as they build them) run against `wasmtime
//! serve`, a fresh instance per request. The WAGI
//! handlers are the tests' `wagi.c` (a small C handler: hello, and an echo of a 64 KiB
//! POST) and, when
//! `target/bench-programs/python.wasm` is there (`benches/support/fetch-programs`), a
//! CPython 3.12 CGI script; their peer runs `wasmtime run` on the handler's precompiled
//! code once per request, as a CGI server runs a script: the request in the
//! environment, arguments and stdin, the response from stdout, parsed by the same code
//! as Hypercell's. Hypercell runs each request in a cell started afresh from the
//! handler's template, and, in a row of its own, the component with `--reuse`, where
//! one cell answers request after request. A server compiles a component with bounds
//! checks in its code and a WAGI program with guard pages, by default; the rows marked
//! `guard pages` and `checks in the code` measure the other choice
//! (`-O signals-based-traps=y|n`). Also printed: Hypercell's exits per request and
//! where a request's time goes, from its access log.
//!
//! `cargo bench -p hypercell --bench serve` (needs `hey`, which `scripts/setup`
//! installs; `HYPERCELL_BENCH_SECONDS` sets each load run's length, default 4;
//! `HYPERCELL_BENCH_ONLY=TEXT` measures only the handlers whose names hold TEXT).

#[path = "../tests/support/component.rs"]
mod component;
#[path = "../tests/support/lines.rs"]
mod lines;
#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hypercell_serve::cgi::{cgi_request, parse_response};
use lines::lines_of;
use support::{count_from_env, find_wasmtime, median, wasmtime_compile};
use tokio::io::AsyncWriteExt;

/// One load: a handler's path, and a body to POST (GET when empty).
struct Load {
    name: &'static str,
    target: &'static str,
    body: usize,
}

/// A handler served both ways: its module, the arguments every request's program
/// gets, and a directory it is granted as `/app`.
struct Subject {
    name: &'static str,
    /// What it is measured against.
    peer: Peer,
    wasm: PathBuf,
    args: Vec<String>,
    /// `hypercell serve` flags of its own.
    flags: &'static [&'static str],
    app: Option<PathBuf>,
    loads: Vec<Load>,
}

/// The server a subject is measured against.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// `wasmtime run` per request behind a CGI server.
    WasmtimeCgi,
    /// `wasmtime serve`, a fresh instance per request.
    WasmtimeServe,
}

/// The CPython CGI script of the second subject.
const PYTHON_APP: &str = r#"import os, sys, json
body = sys.stdin.read()
print("Content-Type: application/json")
print()
print(json.dumps({"method": os.environ["REQUEST_METHOD"], "path": os.environ["PATH_INFO"], "args": sys.argv[1:], "bytes": len(body)}))
"#;

fn main() {
    let seconds = count_from_env("HYPERCELL_BENCH_SECONDS", 4);
    let work = tempfile::tempdir().unwrap();
    let wasm = work.path().join("wagi.wasm");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/wagi.c");
    let compiled = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2"])
        .arg(&source)
        .arg("-o")
        .arg(&wasm)
        .status()
        .expect("clang (scripts/setup installs it)");
    assert!(compiled.success());
    let body_file = work.path().join("body");
    std::fs::write(&body_file, vec![b'x'; 64 << 10]).unwrap();
    std::fs::write(work.path().join("body-1k"), vec![b'y'; 1 << 10]).unwrap();
    let component = component::build_http_component(&work.path().join("component"));
    let python_component = component::build_python_component(&work.path().join("python"));
    let component_subject = |name, flags| Subject {
        name,
        peer: Peer::WasmtimeServe,
        wasm: component.clone(),
        args: Vec::new(),
        flags,
        app: None,
        loads: vec![Load {
            name: "hello (GET)",
            target: "/hello?name=bench",
            body: 0,
        }],
    };
    let mut subjects = vec![
        component_subject("wasi:http component in C", &[]),
        Subject {
            name: "wasi:http component in Python (componentize-py)",
            peer: Peer::WasmtimeServe,
            wasm: python_component,
            args: Vec::new(),
            flags: &[],
            app: None,
            loads: vec![Load {
                name: "JSON (POST 1 KiB)",
                target: "/py?x=1",
                body: 1 << 10,
            }],
        },
        component_subject(
            "wasi:http component in C, guard pages",
            &["-O", "signals-based-traps=y"],
        ),
        component_subject("wasi:http component in C, `--reuse`", &["--reuse"]),
    ];
    let wagi_subject = |name, flags| Subject {
        name,
        peer: Peer::WasmtimeCgi,
        wasm: wasm.clone(),
        args: Vec::new(),
        flags,
        app: None,
        loads: vec![
            Load {
                name: "hello (GET)",
                target: "/hello?name=bench",
                body: 0,
            },
            Load {
                name: "echo 64 KiB (POST)",
                target: "/echo",
                body: 64 << 10,
            },
        ],
    };
    subjects.push(wagi_subject("WAGI handler in C", &[]));
    subjects.push(wagi_subject(
        "WAGI handler in C, checks in the code",
        &["-O", "signals-based-traps=n"],
    ));
    let python =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-programs/python.wasm");
    if python.exists() {
        let app = work.path().join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::write(app.join("app.py"), PYTHON_APP).unwrap();
        let python_subject = |name, flags| Subject {
            name,
            peer: Peer::WasmtimeCgi,
            wasm: python.clone(),
            args: vec!["/app/app.py".into()],
            flags,
            app: Some(app.clone()),
            loads: vec![Load {
                name: "python (POST 1 KiB)",
                target: "/python?x=1",
                body: 1 << 10,
            }],
        };
        subjects.push(python_subject("CPython 3.12 CGI script", &[]));
        subjects.push(python_subject(
            "CPython 3.12 CGI script, checks in the code",
            &["-O", "signals-based-traps=n"],
        ));
    } else {
        println!(
            "(no target/bench-programs/python.wasm: run crates/hypercell/benches/support/fetch-programs for the CPython row)\n"
        );
    }
    // `HYPERCELL_BENCH_ONLY=TEXT` keeps the handlers whose names hold TEXT.
    if let Ok(only) = std::env::var("HYPERCELL_BENCH_ONLY") {
        subjects.retain(|subject| subject.name.contains(&only));
    }
    let wasmtime = find_wasmtime();
    println!(
        "hypercell serve against wasmtime {}: `wasmtime serve` (a fresh instance per request) for the component, a CGI server running `wasmtime run` per request for the WAGI handlers; hey for {seconds} s per run, median of 3 runs\n",
        version(&wasmtime)
    );
    println!(
        "| handler | load | connections | Hypercell req/s | p99 (ms) | peer | peer req/s | p99 (ms) | req/s ratio | p99 ratio |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut breakdown = Vec::new();
    for subject in &subjects {
        let cwasm = work.path().join(format!("{}.cwasm", breakdown.len()));
        if subject.peer == Peer::WasmtimeCgi {
            wasmtime_compile(&wasmtime, &subject.wasm, &cwasm);
        }
        let mut flags = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--min-cells".into(),
            "2".into(),
        ];
        flags.extend(subject.flags.iter().map(|flag| flag.to_string()));
        let mut peer_flags = Vec::new();
        if let Some(app) = &subject.app {
            let dir = format!("{}::/app", app.display());
            flags.extend(["--dir".to_string(), dir.clone()]);
            peer_flags.extend(["--dir".to_string(), dir]);
        }
        // Stopped even when a load fails and the benchmark panics.
        let mut hypercell = Stopped(
            Command::new(env!("CARGO_BIN_EXE_hypercell"))
                .env("XDG_CACHE_HOME", work.path().join("cache"))
                .arg("serve")
                .args(&flags)
                .arg(&subject.wasm)
                .args(&subject.args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let access = lines_of(hypercell.0.stdout.take().unwrap());
        let errors = lines_of(hypercell.0.stderr.take().unwrap());
        let first = errors.recv_timeout(Duration::from_secs(120)).unwrap();
        let hypercell_addr: SocketAddr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{first}"))
            .parse()
            .unwrap();
        let (peer_addr, mut peer_server, peer_name) = match subject.peer {
            Peer::WasmtimeCgi => (
                start_cgi_server(wasmtime.clone(), cwasm, peer_flags, subject.args.clone()),
                None,
                "wasmtime CGI",
            ),
            Peer::WasmtimeServe => {
                let (addr, child) = start_wasmtime_serve(&wasmtime, &subject.wasm);
                (addr, Some(child), "wasmtime serve")
            }
        };
        for load in &subject.loads {
            let body_path = work
                .path()
                .join(if load.body > 1024 { "body" } else { "body-1k" });
            let body = (load.body > 0).then_some(body_path.as_path());
            for connections in [16, 64] {
                let mut ours = Vec::new();
                let mut theirs = Vec::new();
                let mut sums = Access::default();
                for _ in 0..3 {
                    // Drop what earlier runs logged, so the breakdown is this load's.
                    while access.try_recv().is_ok() {}
                    let run = hey(hypercell_addr, load.target, body, connections, seconds);
                    ours.push(run.unwrap_or_else(|report| {
                        let said: Vec<String> = errors
                            .try_iter()
                            .filter(|line| line.starts_with("hypercell serve: req="))
                            .collect();
                        panic!("{report}\nhypercell serve said:\n{}", said.join("\n"))
                    }));
                    sums.add(drain_access(&access));
                    let run = hey(peer_addr, load.target, body, connections, seconds);
                    theirs.push(run.unwrap_or_else(|report| panic!("{report}")));
                }
                let (rps, p99) = medians(&ours);
                let (peer_rps, peer_p99) = medians(&theirs);
                println!(
                    "| {} | {} | {connections} | {rps:.0} | {p99:.1} | {peer_name} | {peer_rps:.0} | {peer_p99:.1} | {:.2}x | {:.2}x |",
                    subject.name,
                    load.name,
                    rps / peer_rps,
                    p99 / peer_p99
                );
                breakdown.push((subject.name, load.name, connections, sums));
            }
        }
        // SAFETY: kill with a valid signal on our own child's pid.
        unsafe { libc::kill(hypercell.0.id() as i32, libc::SIGTERM) };
        let _ = hypercell.0.wait();
        drop(peer_server.take());
    }
    println!(
        "\nWhere a Hypercell request's time goes (means over the runs, from its access log):\n"
    );
    println!(
        "| handler | load | connections | requests | exits per request | queue (ms) | handler (ms) | reset after the response (ms) | pages reset |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (subject, load, connections, sums) in &breakdown {
        let mean = |value: f64| value / sums.requests;
        println!(
            "| {subject} | {load} | {connections} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {:.1} |",
            sums.requests,
            mean(sums.exits),
            mean(sums.queue),
            mean(sums.handler),
            mean(sums.reset),
            mean(sums.pages),
        );
    }
}

fn version(wasmtime: &Path) -> String {
    let out = Command::new(wasmtime).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string()
}

/// Runs `hey` against `addr` and returns requests per second and p99 in ms, or, when a
/// response was not a success (2xx), hey's report.
fn hey(
    addr: SocketAddr,
    target: &str,
    body: Option<&Path>,
    connections: usize,
    seconds: usize,
) -> Result<(f64, f64), String> {
    let mut command = Command::new("hey");
    command
        .arg("-z")
        .arg(format!("{seconds}s"))
        .arg("-c")
        .arg(connections.to_string());
    if let Some(body) = body {
        command.args(["-m", "POST", "-T", "application/octet-stream", "-D"]);
        command.arg(body);
    }
    let out = command
        .arg(format!("http://{addr}{target}"))
        .output()
        .expect("hey (scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in hey's report:\n{text}"))
    };
    let statuses: Vec<&str> = text
        .lines()
        .filter(|line| line.trim().starts_with('['))
        .collect();
    if !statuses.iter().all(|line| line.trim().starts_with("[2")) {
        return Err(format!("responses other than 2xx at {addr}:\n{text}"));
    }
    // Below 100 responses hey leaves the 99th percentile out: it is the slowest.
    let p99 = if text.contains("99% in") {
        field("99% in")
    } else {
        field("Slowest:")
    };
    Ok((field("Requests/sec:"), p99 * 1e3))
}

fn medians(runs: &[(f64, f64)]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.0).collect()),
        median(runs.iter().map(|r| r.1).collect()),
    )
}

/// Sums over the access-log lines of one load run.
#[derive(Default)]
struct Access {
    requests: f64,
    exits: f64,
    queue: f64,
    handler: f64,
    reset: f64,
    pages: f64,
}

impl Access {
    fn add(&mut self, other: Access) {
        self.requests += other.requests;
        self.exits += other.exits;
        self.queue += other.queue;
        self.handler += other.handler;
        self.reset += other.reset;
        self.pages += other.pages;
    }
}

fn drain_access(lines: &mpsc::Receiver<String>) -> Access {
    let mut sums = Access::default();
    // The last lines are written just after their responses.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .and_then(|value| value.parse::<f64>().ok())
        };
        sums.requests += 1.0;
        sums.exits += field("exits=").unwrap_or(0.0);
        sums.queue += field("queue_ms=").unwrap_or(0.0);
        sums.handler += field("handler_ms=").unwrap_or(0.0);
        sums.reset += field("reset_ms=")
            .or_else(|| field("new_cell_ms="))
            .unwrap_or(0.0);
        sums.pages += field("reset_pages=").unwrap_or(0.0);
    }
    sums
}

/// Starts the peer: a CGI server (hyper, on its own thread) that runs `wasmtime run`
/// with `flags` on `cwasm` and `args` for each request. Returns its address.
fn start_cgi_server(
    wasmtime: PathBuf,
    cwasm: PathBuf,
    flags: Vec<String>,
    args: Vec<String>,
) -> SocketAddr {
    let (ready, addr) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let local = listener.local_addr().unwrap();
            ready.send(local).unwrap();
            loop {
                let (stream, remote) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                let peer = std::sync::Arc::new((
                    wasmtime.clone(),
                    cwasm.clone(),
                    flags.clone(),
                    args.clone(),
                ));
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let peer = std::sync::Arc::clone(&peer);
                        async move {
                            let (wasmtime, cwasm, flags, args) = &*peer;
                            Ok::<_, Infallible>(
                                run_cgi(request, wasmtime, cwasm, flags, args, remote, local).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr.recv().unwrap()
}

async fn run_cgi(
    request: Request<hyper::body::Incoming>,
    wasmtime: &Path,
    cwasm: &Path,
    flags: &[String],
    args: &[String],
    remote: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let request = cgi_request(&parts, body, remote, local).unwrap();
    let mut command = tokio::process::Command::new(wasmtime);
    command.args(["run", "--allow-precompiled"]).args(flags);
    for (name, value) in &request.env {
        command.arg("--env").arg(format!("{name}={value}"));
    }
    let mut child = command
        .arg(cwasm)
        .args(args)
        .args(&request.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = request.body.clone();
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.unwrap();
    let _ = feeder.await;
    match parse_response(Bytes::from(output.stdout), true) {
        Ok(parsed) if output.status.success() => {
            let mut response = Response::new(Full::new(parsed.body));
            *response.status_mut() = parsed.status;
            for (name, value) in parsed.headers {
                response.headers_mut().append(name, value);
            }
            response
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"failed\n")));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// Starts `wasmtime serve` on `component` on a loopback port it picks, a fresh instance
/// per request (its default for wasi:http 0.2 components, said explicitly), and
/// returns its address once it says it serves.
fn start_wasmtime_serve(wasmtime: &Path, component: &Path) -> (SocketAddr, Stopped) {
    let mut child = Stopped(
        Command::new(wasmtime)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "-S",
                "cli",
                "--max-instance-reuse-count",
                "1",
            ])
            .arg(component)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = lines_of(child.0.stderr.take().unwrap());
    let stdout = lines_of(child.0.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "wasmtime serve did not start"
        );
        let line = stderr
            .recv_timeout(Duration::from_millis(100))
            .or_else(|_| stdout.try_recv());
        let Ok(line) = line else { continue };
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest.trim_end_matches('/').parse().unwrap();
            // Its log of each request's stderr is left to drain.
            std::thread::spawn(move || while stderr.recv().is_ok() || stdout.recv().is_ok() {});
            return (addr, child);
        }
    }
}

/// A child process killed and waited for when dropped.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
