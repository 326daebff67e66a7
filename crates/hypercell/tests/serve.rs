//! `hypercell serve`, end to end on loopback: a WAGI handler in C answers requests, each
//! in a fresh cell, through the real server and a plain HTTP/1.1 client that keeps its
//! connections alive. Handlers that trap, loop, exhaust their memory or write too much
//! fail their own requests only; a full queue answers 503; SIGTERM lets the requests in
//! flight finish.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/component.rs"]
mod component;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use binary::*;
use daemon::PATIENCE;
use serve::{Server, fnv1a};

fn handler() -> PathBuf {
    c_program("wagi")
}

/// Waits until `path` exists: a handler made it.
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn requests_reach_the_handler_as_cgi_and_its_output_is_the_response() {
    let server = Server::start(&handler(), &["--env", "GREETING=hi"]);
    let mut connection = server.connect();
    let reply = connection.request(
        "POST",
        "/env/a%20b?first=1&second=two+words&flag",
        &[
            ("Content-Type", "text/csv"),
            ("X-Custom", "one"),
            ("X-Custom", "two"),
            ("Cookie", "a=1"),
            ("X_Custom", "spoofed"),
            ("Proxy", "http://proxy.example"),
        ],
        b"abc",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let text = reply.text();
    for line in [
        "env GREETING=hi",
        "env REQUEST_METHOD=POST",
        "env PATH_INFO=/env/a b",
        "env X_RAW_PATH_INFO=/env/a%20b",
        "env QUERY_STRING=first=1&second=two+words&flag",
        "env CONTENT_LENGTH=3",
        "env CONTENT_TYPE=text/csv",
        "env HTTP_X_CUSTOM=one, two",
        "env HTTP_COOKIE=a=1",
        "env HTTP_HOST=test.example:8080",
        "env SERVER_NAME=test.example",
        "env SERVER_PORT=8080",
        "env SERVER_PROTOCOL=HTTP/1.1",
        "env GATEWAY_INTERFACE=CGI/1.1",
        "env REMOTE_ADDR=127.0.0.1",
        "arg1 first=1",
        "arg2 second=two words",
        "arg3 flag",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    // A header that would pass for another as a variable, and `Proxy` (httpoxy), are
    // left out.
    assert!(
        !text.contains("spoofed") && !text.contains("HTTP_PROXY"),
        "{text}"
    );
    let id = reply.header("x-request-id").unwrap().to_string();
    let access = server.access_line(&id);
    assert!(access.contains("\"POST /env/a%20b?"), "{access}");
    for field in [" 200 ", "queue_ms=", "handler_ms=", "reset_ms=", "exits="] {
        assert!(access.contains(field), "no {field} in {access}");
    }

    // The same connection goes on serving: headers, status and redirects.
    let reply = connection.get("/missing");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-why"), Some("no route"));
    assert_eq!(reply.text(), "nothing here\n");
    let reply = connection.get("/redirect");
    assert_eq!(reply.status, 302);
    assert_eq!(reply.header("location"), Some("/count"));
    assert!(
        reply
            .header("server-timing")
            .unwrap()
            .contains("handler;dur=")
    );

    let reply = connection.get("/nocontent");
    assert_eq!((reply.status, reply.body.len()), (204, 0));

    let reply = connection.get("/stderr");
    assert_eq!(reply.text(), "warned\n");
    let id = reply.header("x-request-id").unwrap();
    server.error_line(|line| line == format!("req={id} stderr: a warning from the handler"));

    // Output that is no response, or a failed program, is the server's 500 with the
    // reason in its log under the request's number.
    for (target, reason) in [
        ("/noheaders", "is not `Name: value`"),
        ("/notype", "no Content-Type header"),
        ("/exit3", "exited with status 3"),
    ] {
        let reply = connection.get(target);
        assert_eq!(reply.status, 500, "{target}");
        let id = reply.header("x-request-id").unwrap();
        assert!(
            reply.text().contains(&format!("request {id}")),
            "{}",
            reply.text()
        );
        let line =
            server.error_line(|line| line.starts_with(&format!("hypercell serve: req={id}:")));
        assert!(line.contains(reason), "{target}: {line}");
    }
}

#[test]
fn every_request_gets_a_fresh_cell() {
    let server = Server::start(&handler(), &["--max-cells", "3"]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut connection = serve::Connection::open(addr);
                for _ in 0..50 {
                    let reply = connection.get("/count");
                    assert_eq!((reply.status, reply.text()), (200, "1\n".to_string()));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn bodies_up_to_ten_mib_go_in_and_come_back() {
    let server = Server::start(&handler(), &["--max-body", "12M"]);
    let mut connection = server.connect();
    let body: Vec<u8> = (0..10 << 20)
        .map(|i: u32| (i * 7 + i / 4096) as u8)
        .collect();
    let reply = connection.request("PUT", "/echo", &[], &body);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-length"), Some("10485760"));
    assert_eq!(reply.header("x-declared-length"), Some("10485760"));
    assert_eq!(
        reply.header("x-body-hash"),
        Some(format!("{:016x}", fnv1a(&body)).as_str())
    );
    assert!(reply.body == body, "the body came back changed");
    // The next request on the connection has its own, empty, stdin.
    let reply = connection.request("POST", "/echo", &[], b"");
    assert_eq!(reply.header("x-body-length"), Some("0"));

    let small = Server::start(&handler(), &["--max-body", "1K"]);
    let reply = small.connect().request("POST", "/echo", &[], &[b'x'; 4096]);
    assert_eq!(reply.status, 413);
    assert!(
        reply.text().contains("larger than the server's limit"),
        "{}",
        reply.text()
    );
}

#[test]
fn failing_handlers_fail_their_own_requests_only() {
    let server = Server::start(
        &handler(),
        &[
            "--max-cells",
            "4",
            "--timeout",
            "2s",
            "--memory",
            "16M",
            "--max-output",
            "1M",
        ],
    );
    let bad = [
        ("/trap", 500, "trapped"),
        ("/loop", 504, "time limit of 2s"),
        ("/bomb", 500, "refused a linear memory"),
        ("/big?5000000", 500, "response limit of 1 MiB"),
    ];
    let failing: Vec<_> = bad
        .iter()
        .map(|&(target, status, _)| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut connection = serve::Connection::open(addr);
                (0..3)
                    .map(|_| {
                        let reply = connection.get(target);
                        assert_eq!(reply.status, status, "{target}: {}", reply.text());
                        reply.header("x-request-id").unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let normal: Vec<_> = (0..2)
        .map(|n| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut connection = serve::Connection::open(addr);
                for i in 0..40 {
                    let reply = connection.get("/count");
                    assert_eq!((reply.status, reply.text()), (200, "1\n".to_string()));
                    let body = format!("request {n}/{i}").repeat(100);
                    let reply = connection.request("POST", "/echo", &[], body.as_bytes());
                    assert_eq!(reply.status, 200);
                    assert_eq!(reply.body, body.as_bytes());
                }
            })
        })
        .collect();
    for thread in normal {
        thread.join().unwrap();
    }
    let ids: Vec<Vec<String>> = failing.into_iter().map(|t| t.join().unwrap()).collect();

    // Each failure is in the log with its request's number and cause.
    let mut causes: Vec<(String, &str)> = bad
        .iter()
        .zip(&ids)
        .flat_map(|(&(_, _, cause), ids)| ids.iter().map(move |id| (id.clone(), cause)))
        .collect();
    while !causes.is_empty() {
        let line = server.error_line(|line| line.starts_with("hypercell serve: req="));
        let id = line["hypercell serve: req=".len()..]
            .split(':')
            .next()
            .unwrap();
        if let Some(at) = causes.iter().position(|(wanted, _)| wanted == id) {
            let (_, cause) = causes.remove(at);
            assert!(line.contains(cause), "{line}");
        }
    }
    // The cells that failed were replaced: the server still answers, fresh.
    let reply = server.connect().get("/count");
    assert_eq!(reply.text(), "1\n");
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let dir = format!("{}::/data", data.path().display());
    let server = Server::start(
        &handler(),
        &["--max-cells", "1", "--queue", "1", "--dir", &dir],
    );
    let addr = server.addr;
    let waiting = std::thread::spawn(move || serve::Connection::open(addr).get("/wait"));
    wait_for_file(&data.path().join("started"));
    // The one cell is busy: of two more requests one waits in the queue and the other
    // is refused.
    let others: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || serve::Connection::open(addr).get("/count")))
        .collect();
    let refused = loop {
        if let Some(done) = others.iter().position(|t| t.is_finished()) {
            break done;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut others = others;
    let refused = others.remove(refused).join().unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    std::fs::write(data.path().join("release"), b"").unwrap();
    assert_eq!(waiting.join().unwrap().text(), "released\n");
    let queued = others.pop().unwrap().join().unwrap();
    assert_eq!((queued.status, queued.text()), (200, "1\n".to_string()));
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let data = tempfile::tempdir().unwrap();
    let dir = format!("{}::/data", data.path().display());
    let mut server = Server::start(&handler(), &["--dir", &dir]);
    let addr = server.addr;
    let waiting = std::thread::spawn(move || serve::Connection::open(addr).get("/wait"));
    wait_for_file(&data.path().join("started"));
    // SAFETY: kill with a valid signal on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    server.error_line(|line| line.contains("stopping"));
    std::fs::write(data.path().join("release"), b"").unwrap();
    let reply = waiting.join().unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (200, "released\n".to_string())
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    server.error_line(|line| line.contains("every request taken was answered"));
}

#[test]
fn a_template_serves_and_one_stopped_late_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("wagi.tmpl");
    let made = run(
        &[
            "template",
            "create",
            "-o",
            template.to_str().unwrap(),
            handler().to_str().unwrap(),
        ],
        b"",
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let server = Server::start(&template, &[]);
    let mut connection = server.connect();
    for _ in 0..3 {
        assert_eq!(connection.get("/count").text(), "1\n");
    }
    // `template create` compiles with guard pages, which its cells keep: asking a
    // server for other code is one sentence naming the fix.
    let refused = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "-O",
            "signals-based-traps=n",
            template.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("compiled with guard-pages bounds checks, which its cells keep")
            && stderr.contains("make the template with -O signals-based-traps=n"),
        "{stderr}"
    );
    let reply = connection.get("/env?x");
    assert!(
        reply
            .text()
            .contains(&format!("arg0 {}", handler().display())),
        "{}",
        reply.text()
    );

    let late = work.path().join("late.tmpl");
    let made = run(
        &[
            "template",
            "create",
            "--at",
            "first-read",
            "-o",
            late.to_str().unwrap(),
            c_program("upcase").to_str().unwrap(),
        ],
        b"",
    );
    assert!(made.status.success(), "{}", text(&made.stderr));
    let refused = run(
        &["serve", "--listen", "127.0.0.1:0", late.to_str().unwrap()],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1));
    let said = text(&refused.stderr);
    assert!(
        said.contains("was stopped after its program started"),
        "{said}"
    );

    let not_wasm = work.path().join("handler.wasm");
    std::fs::write(&not_wasm, b"#!/bin/sh\necho hi\n").unwrap();
    let refused = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            not_wasm.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("handler.wasm"),
        "{}",
        text(&refused.stderr)
    );
}

/// The test component, built once per run.
fn http_component() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| component::build_http_component(&scratch().join("http-component")))
        .clone()
}

fn python_component() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| component::build_python_component(&scratch().join("python-component")))
        .clone()
}

/// A component nobody here wrote the runtime of: CPython with a handler, made by
/// componentize-py, which imports what a WASI command does besides the proxy world.
#[test]
fn a_python_component_answers_each_request_in_a_fresh_cell() {
    let server = Server::start_within(
        &python_component(),
        &["--max-cells", "2", "--env", "GREETING=hi"],
        Duration::from_secs(900),
    );
    let mut connection = server.connect();
    let mut exits = u64::MAX;
    for _ in 0..5 {
        let reply = connection.request("POST", "/py?x=1", &[("X-Name", "Ada")], b"twelve bytes");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        // Its environment is the server's `--env`, without the request's head, which
        // reaches the cell in variables of its own; no directory is granted.
        let expected = format!(
            r#"{{"path": "/py?x=1", "served": 1, "bytes": 12, "name": "Ada", "greeting": "hi", "environment": ["GREETING"], "args": ["{}"], "file": "FileNotFoundError"}}"#,
            python_component().display()
        );
        assert_eq!(reply.text(), expected);
        exits = exits.min(exits_of(&server, &reply));
    }
    assert_eq!(exits, 1);
    // Exiting ends its own request, named in the log, and the next gets a fresh cell.
    let reply = connection.get("/exit");
    assert_eq!(reply.status, 500);
    let id = reply.header("x-request-id").unwrap();
    let line = server.error_line(|line| line.starts_with(&format!("hypercell serve: req={id}:")));
    assert!(line.contains("the component exited with status"), "{line}");
    assert_eq!(connection.get("/after").status, 200);
}

#[test]
fn a_wasi_http_component_answers_each_request_in_a_fresh_cell() {
    let server = Server::start(&http_component(), &["--max-cells", "2"]);
    let mut connection = server.connect();
    let reply = connection.request("POST", "/greet?x=1", &[("X-Name", "Ada")], b"twelve bytes");
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(reply.header("x-component"), Some("c"));
    assert_eq!(
        reply.text(),
        "hello from a component: POST /greet?x=1 served=1 name=Ada body=12\n"
    );
    let id = reply.header("x-request-id").unwrap().to_string();
    server.error_line(|line| line == format!("req={id} stderr: handled /greet?x=1"));
    // Each request finds the component's memory as the template left it.
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut connection = serve::Connection::open(addr);
                for _ in 0..30 {
                    let reply = connection.get("/again");
                    assert_eq!(
                        reply.text(),
                        "hello from a component: GET /again served=1 name= body=0\n"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // The request grows the component's memory twice, within the 2 MiB page that the
    // template's tables map ahead (a server compiles explicit bounds checks): its one
    // exit is the one that answers.
    let again = || {
        let reply = connection.get("/again");
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply
    };
    assert_eq!(fewest_exits(&server, again), 1);
    // A component that traps, or returns without a response, fails its own request.
    for (target, cause) in [
        ("/trap", "trapped"),
        ("/silent", "returned without setting its response"),
        ("/abandon", "dropped its response body without finishing it"),
    ] {
        let reply = connection.get(target);
        assert_eq!(reply.status, 500, "{target}");
        let id = reply.header("x-request-id").unwrap();
        let line =
            server.error_line(|line| line.starts_with(&format!("hypercell serve: req={id}:")));
        assert!(line.contains(cause), "{target}: {line}");
    }
    assert_eq!(connection.get("/after").status, 201);

    // A cell has no network: an outgoing request is refused with internal-error (38).
    assert_eq!(
        connection.get("/outgoing").text(),
        "outgoing refused, error 38\n"
    );
    // A body larger than the cell's output buffer arrives whole.
    let reply = connection.get("/big");
    assert_eq!(reply.body.len(), 3 << 20);
    assert!(
        reply
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8)
    );
}

/// The exits of request `reply`, from the access log of `server`.
fn exits_of(server: &Server, reply: &serve::Reply) -> u64 {
    let line = server.access_line(reply.header("x-request-id").unwrap());
    line.rsplit("exits=").next().unwrap().parse().unwrap()
}

/// The fewest exits of five requests that `request` makes to `server` (and checks).
/// A request that a loaded machine keeps in its cell past the output
/// drain interval (10 ms) also leaves the guest once to hand its output over, an exit
/// that timing decides; the fewest counts those the request itself costs.
fn fewest_exits(server: &Server, mut request: impl FnMut() -> serve::Reply) -> u64 {
    (0..5).map(|_| exits_of(server, &request())).min().unwrap()
}

#[test]
fn bounds_checks_suit_the_handler_and_can_be_chosen() {
    // A component left to guard pages takes an exit for each growth of its memory.
    let server = Server::start(
        &http_component(),
        &["--max-cells", "1", "-O", "signals-based-traps=y"],
    );
    let mut connection = server.connect();
    let guarded = || {
        let reply = connection.get("/guarded");
        assert_eq!(reply.status, 201, "{}", reply.text());
        reply
    };
    assert!(fewest_exits(&server, guarded) > 1);
    drop(server);

    // A WAGI program gets guard pages unless asked otherwise: echoing 64 KiB grows its
    // memory, an exit each time; with checks in its code, within pages mapped ahead.
    let body = vec![b'e'; 64 << 10];
    let mut exits = Vec::new();
    for flags in [&[][..], &["-O", "signals-based-traps=n"][..]] {
        let server = Server::start(&handler(), &[&["--max-cells", "1"][..], flags].concat());
        let mut connection = server.connect();
        exits.push(fewest_exits(&server, || {
            let reply = connection.request("POST", "/echo", &[], &body);
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.body, body);
            reply
        }));
    }
    assert!(exits[0] > 1 && exits[1] == 1, "{exits:?}");
}

#[test]
fn with_reuse_one_cell_answers_requests_in_turn() {
    let counted = |reply: &serve::Reply| {
        let text = reply.text();
        let at = text
            .find("served=")
            .expect("the component says how many it served");
        text[at + 7..]
            .split(' ')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    // Up to three requests a cell: its memory counts them, then a fresh cell starts.
    let server = Server::start(&http_component(), &["--max-cells", "1", "--reuse=3"]);
    let mut connection = server.connect();
    let seen: Vec<u32> = (0..7).map(|_| counted(&connection.get("/a"))).collect();
    assert_eq!(seen, [1, 2, 3, 1, 2, 3, 1]);
    let second = connection.get("/b");
    let id = second.header("x-request-id").unwrap();
    assert!(server.access_line(id).contains(" reused "), "{id}");
    drop(server);

    // Without a number, a cell answers requests as long as they come, each within its
    // own time limit however long the cell has run.
    let server = Server::start(
        &http_component(),
        &["--max-cells", "1", "--reuse", "--timeout", "100ms"],
    );
    let mut connection = server.connect();
    let started = Instant::now();
    let mut expected = 0;
    // (Fewer than the requests after which this leaky component gets a fresh cell.)
    while started.elapsed() < Duration::from_millis(250) && expected < 1500 {
        expected += 1;
        assert_eq!(counted(&connection.get("/busy")), expected);
    }
    assert!(started.elapsed() > Duration::from_millis(100));
    // Each request reads its own body, laid in the cell's memory or, when large, read
    // from the host.
    let reply = connection.request("POST", "/post", &[("X-Name", "Ada")], b"twelve bytes");
    assert!(
        reply.text().ends_with(
            "name=Ada body=12
"
        ),
        "{}",
        reply.text()
    );
    let large = vec![b'x'; 300 << 10];
    let reply = connection.request("POST", "/post", &[], &large);
    assert!(
        reply.text().ends_with(
            "name= body=307200
"
        ),
        "{}",
        reply.text()
    );
    assert!(connection.get("/get").text().ends_with(
        "name= body=0
"
    ));
    // A request that fails ends the cell; the next request gets a fresh one.
    for (target, status) in [("/loop", 504), ("/trap", 500), ("/silent", 500)] {
        assert_eq!(connection.get(target).status, status, "{target}");
        assert_eq!(counted(&connection.get("/after")), 1, "after {target}");
    }
    // This component never drops two of the handles each request gives it. Its cell
    // ends while it leaks few enough that no request fails (the store's limit is
    // 100,000 live handles), and a fresh one goes on.
    let mut last = 1;
    let fresh_after = (2..6000).find(|_| {
        let reply = connection.get("/leaky");
        assert_eq!(reply.status, 201, "{}", reply.text());
        let served = counted(&reply);
        let fresh = served <= last;
        last = served;
        fresh
    });
    assert!(
        fresh_after.is_some_and(|requests| requests > 1000),
        "{fresh_after:?}"
    );
}

/// The server's workers (each keeps one cell), counted by their threads' names.
fn workers(server: &Server) -> usize {
    let tasks = format!("/proc/{}/task", server.child.id());
    std::fs::read_dir(tasks)
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("hypercell-serve"))
        .count()
}

/// Waits until the server has `count` workers.
fn wait_for_workers(server: &Server, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while workers(server) != count {
        assert!(
            Instant::now() < deadline,
            "{} workers, not {count}",
            workers(server)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cells_are_added_under_load_and_leave_when_idle() {
    let data = tempfile::tempdir().unwrap();
    let dir = format!("{}::/data", data.path().display());
    let server = Server::start(
        &handler(),
        &[
            "--max-cells",
            "3",
            "--min-cells",
            "1",
            "--idle",
            "300ms",
            "--dir",
            &dir,
        ],
    );
    wait_for_workers(&server, 1);
    // Three requests that wait together need three cells, and get them.
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let addr = server.addr;
            std::thread::spawn(move || serve::Connection::open(addr).get("/wait"))
        })
        .collect();
    wait_for_workers(&server, 3);
    std::fs::write(data.path().join("release"), b"").unwrap();
    for request in waiting {
        assert_eq!(request.join().unwrap().text(), "released\n");
    }
    // Idle, the cells beyond the fewest kept leave, and the one left still serves.
    wait_for_workers(&server, 1);
    assert_eq!(server.connect().get("/count").text(), "1\n");
}
