//! The web console in a real browser: Debian's chromium, headless, driven over the
//! DevTools protocol against the real daemon on loopback. It signs in with the token
//! (and is refused a wrong one), creates a cell from a template, watches its output,
//! pauses and resumes it, snapshots, stops and deletes it, moves through the list with
//! the keyboard, shows what cells print as text and never as HTML, and refuses requests
//! that other origins forge. Screenshots of the list and the cell page are taken on the
//! way (into `docs/console/` with `HYPERCELL_SCREENSHOTS=1`).

#[path = "support/binary.rs"]
mod binary;
#[path = "support/daemon.rs"]
mod daemon;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

use binary::{c_program, text};
use daemon::{Daemon, PATIENCE};

const TOKEN: &str = "console-test-token-0123456789";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon serving the API and the console on a loopback port, with its token.
fn console_daemon(dir: &Path) -> (Daemon, u16) {
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let daemon = Daemon::start_with(
        dir,
        &[
            "--listen",
            &address,
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    (daemon, port)
}

fn browser() -> Browser {
    let chromium = PathBuf::from("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "the console tests need Debian's chromium: run ./scripts/setup"
    );
    Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chromium))
            .headless(true)
            // Root cannot use chromium's sandbox; the pages are the test's own.
            .sandbox(false)
            .window_size(Some((1280, 800)))
            .idle_browser_timeout(Duration::from_secs(600))
            .build()
            .unwrap(),
    )
    .expect("chromium starts")
}

/// The value of the JavaScript expression `expression` in `tab`.
fn eval(tab: &Tab, expression: &str) -> serde_json::Value {
    tab.evaluate(expression, false)
        .unwrap_or_else(|e| panic!("`{expression}` failed: {e}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until `condition`, a JavaScript expression, is true in `tab`.
fn wait_until(tab: &Tab, condition: &str) {
    let deadline = Instant::now() + PATIENCE;
    while eval(tab, &format!("Boolean({condition})")) != serde_json::Value::Bool(true) {
        assert!(
            Instant::now() < deadline,
            "`{condition}` did not come true; the page says: {}",
            eval(tab, "document.body.innerText")
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn click(tab: &Tab, selector: &str) {
    tab.wait_for_element(selector)
        .unwrap_or_else(|e| panic!("no `{selector}`: {e}"))
        .click()
        .unwrap();
}

/// Fills the input `selector` with `value`, as a person would type it.
fn fill(tab: &Tab, selector: &str, value: &str) {
    let element = tab.wait_for_element(selector).unwrap();
    element.click().unwrap();
    eval(
        tab,
        &format!("document.querySelector({selector:?}).value = ''"),
    );
    element.type_into(value).unwrap();
}

/// Answers the console's confirmation dialog, with `value` in its field if given.
fn confirm(tab: &Tab, value: Option<&str>) {
    wait_until(tab, "document.getElementById('confirm').open");
    if let Some(value) = value {
        fill(tab, "#confirm-input", value);
    }
    click(tab, "#confirm-ok");
}

fn text_of(tab: &Tab, selector: &str) -> String {
    eval(
        tab,
        &format!("(document.querySelector({selector:?}) || {{}}).textContent || ''"),
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Where screenshots go: `docs/console/` when asked for, else a scratch directory.
fn screenshot(tab: &Tab, dir: &Path, name: &str) {
    eval(tab, "window.scrollTo(0, 0)");
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name} is a picture"
    );
    let target = if std::env::var_os("HYPERCELL_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console")
    } else {
        dir.to_path_buf()
    };
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join(format!("{name}.png")), png).unwrap();
}

/// Shows pages as a screen `width` by `height` pixels shows them.
fn screen(tab: &Tab, width: u32, height: u32, mobile: bool) {
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width,
        height,
        device_scale_factor: 1.0,
        mobile,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
}

fn sign_in(tab: &Tab, port: u16, token: &str) {
    tab.navigate_to(&format!("http://127.0.0.1:{port}/"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    fill(tab, "input[name=token]", token);
    tab.press_key("Enter").unwrap();
    tab.wait_until_navigated().unwrap();
}

#[test]
fn the_console_signs_in_and_drives_a_cell_through_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = console_daemon(dir.path());
    let ticker = c_program("ticker");
    let greet = c_program("greet");
    daemon.ok(&[
        "template",
        "create",
        "--name",
        "ticker",
        ticker.to_str().unwrap(),
    ]);
    for name in ["alpha", "beta"] {
        daemon.ok(&["create", "--name", name, greet.to_str().unwrap(), name]);
    }
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    screen(&tab, 1280, 800, false);

    // A wrong token is refused, with one sentence; the right one opens the console.
    sign_in(&tab, port, "not-the-token-at-all-0000");
    wait_until(&tab, "document.getElementById('error')");
    assert!(
        text_of(&tab, "#error").contains("not the daemon's token"),
        "{}",
        text_of(&tab, "body")
    );
    sign_in(&tab, port, TOKEN);
    wait_until(
        &tab,
        "document.querySelectorAll('#cell-rows .row').length === 2",
    );

    // A cell from the template, whose output arrives as it runs.
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/create"))
        .unwrap();
    wait_until(
        &tab,
        "[...document.querySelectorAll('#template option')].some(o => o.value === 'ticker')",
    );
    fill(&tab, "#name", "web-ticker");
    click(&tab, "#create-submit");
    wait_until(&tab, "location.hash.startsWith('#/cells/')");
    wait_until(
        &tab,
        "document.querySelector('#cell-state')?.textContent === 'running'",
    );
    wait_until(
        &tab,
        "document.getElementById('log-stdout').textContent.includes('tick 20')",
    );
    wait_until(
        &tab,
        "[...document.querySelectorAll('.chart canvas')].every(c => Number(c.dataset.samples) >= 8)",
    );
    screenshot(&tab, dir.path(), "cell");

    // Paused, its output stops; resumed, it goes on.
    let ticks = "document.getElementById('log-stdout').textContent.split('tick').length";
    click(&tab, "#action-pause");
    wait_until(
        &tab,
        "document.querySelector('#cell-state').textContent === 'paused'",
    );
    let paused_at = eval(&tab, ticks);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(eval(&tab, ticks), paused_at, "no output while paused");
    click(&tab, "#action-resume");
    wait_until(
        &tab,
        "document.querySelector('#cell-state').textContent === 'running'",
    );
    wait_until(&tab, &format!("{ticks} > {paused_at} + 10"));

    // A snapshot, written where the dialog says.
    let snapshot = dir.path().join("web-ticker.snap");
    click(&tab, "#action-snapshot");
    confirm(&tab, Some(snapshot.to_str().unwrap()));
    wait_until(
        &tab,
        "document.getElementById('action-note').textContent.startsWith('Snapshot written')",
    );
    assert!(snapshot.exists(), "the snapshot file is written");
    let cell_page = eval(&tab, "location.hash");

    // Restored from that snapshot, a new cell goes on counting from where it was.
    click(&tab, "#action-restore");
    confirm(&tab, Some("ticker-restored"));
    wait_until(
        &tab,
        "document.querySelector('.cell-head h1')?.textContent === 'ticker-restored'",
    );
    wait_until(
        &tab,
        "document.querySelector('#cell-state')?.textContent === 'running'",
    );
    wait_until(
        &tab,
        "/tick \\d+/.test(document.getElementById('log-stdout').textContent)",
    );
    let first = eval(
        &tab,
        "Number(/tick (\\d+)/.exec(document.getElementById('log-stdout').textContent)[1])",
    );
    assert!(
        first.as_u64().unwrap() > 20,
        "it went on, not from the start: {first}"
    );
    click(&tab, "#action-kill");
    confirm(&tab, None);
    wait_until(
        &tab,
        "document.querySelector('#cell-state').textContent === 'killed'",
    );

    // An error from the API shows next to the field it is about.
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/create"))
        .unwrap();
    wait_until(
        &tab,
        "[...document.querySelectorAll('#template option')].some(o => o.value === 'ticker')",
    );
    fill(&tab, "#name", "outside");
    fill(&tab, "#dirs", "/etc");
    click(&tab, "#create-submit");
    wait_until(
        &tab,
        "document.getElementById('error-dirs').textContent !== ''",
    );
    assert!(
        text_of(&tab, "#error-dirs").starts_with("`dirs`"),
        "{}",
        text_of(&tab, "#error-dirs")
    );

    // A cell from an uploaded module, with its arguments.
    eval(
        &tab,
        "const s = document.getElementById('source'); s.value = 'upload'; s.dispatchEvent(new Event('change'))",
    );
    tab.wait_for_element("#upload")
        .unwrap()
        .set_input_files(&[greet.to_str().unwrap()])
        .unwrap();
    fill(&tab, "#name", "uploaded");
    fill(&tab, "#dirs", "");
    fill(&tab, "#args", "7");
    click(&tab, "#create-submit");
    wait_until(
        &tab,
        "document.querySelector('.cell-head h1')?.textContent === 'uploaded'",
    );
    wait_until(
        &tab,
        "document.querySelector('#cell-state')?.textContent === 'exited'",
    );
    wait_until(
        &tab,
        "document.getElementById('log-stdout').textContent.includes('argv[1]=7')",
    );
    assert!(text_of(&tab, "dl.config").contains("Exit status7"));

    // The templates and the daemon's history.
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/templates"))
        .unwrap();
    wait_until(
        &tab,
        "document.querySelector('main table')?.textContent.includes('ticker')",
    );
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/events"))
        .unwrap();
    wait_until(
        &tab,
        "[...document.querySelectorAll('#events tr')].some(r => r.textContent.includes('uploaded') && r.textContent.includes('exit'))",
    );

    // The list, moved through with the keyboard.
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/cells"))
        .unwrap();
    wait_until(
        &tab,
        "document.querySelectorAll('#cell-rows .row').length === 5 && document.getElementById('cell-rows').textContent.includes('web-ticker')",
    );
    wait_until(
        &tab,
        "[...document.querySelectorAll('#cell-rows .row')].some(r => /\\d+\\.\\d/.test(r.lastChild.textContent))",
    );
    screenshot(&tab, dir.path(), "list");
    eval(&tab, "document.getElementById('cell-rows').focus()");
    tab.press_key("End").unwrap();
    wait_until(
        &tab,
        "document.querySelector('#cell-rows .row[aria-selected=true]')?.textContent.includes('uploaded')",
    );
    for _ in 0..3 {
        tab.press_key("ArrowUp").unwrap();
    }
    tab.press_key("Enter").unwrap();
    wait_until(
        &tab,
        "document.querySelector('.cell-head h1')?.textContent === 'beta'",
    );

    // Stopped, then deleted.
    tab.navigate_to(&format!(
        "http://127.0.0.1:{port}/{}",
        cell_page.as_str().unwrap()
    ))
    .unwrap();
    wait_until(
        &tab,
        "document.querySelector('#cell-state')?.textContent === 'running'",
    );
    click(&tab, "#action-stop");
    confirm(&tab, Some("1"));
    wait_until(
        &tab,
        "['killed', 'exited'].includes(document.querySelector('#cell-state').textContent)",
    );
    click(&tab, "#action-delete");
    confirm(&tab, None);
    wait_until(&tab, "location.hash === '#/cells'");
    assert!(!daemon.cli(&["inspect", "web-ticker"]).status.success());

    // In the dark and on a narrow screen, the list still reads.
    tab.call_method(Emulation::SetEmulatedMedia {
        media: None,
        features: Some(vec![Emulation::MediaFeature {
            name: "prefers-color-scheme".into(),
            value: "dark".into(),
        }]),
    })
    .unwrap();
    screen(&tab, 400, 800, true);
    wait_until(
        &tab,
        "document.querySelectorAll('#cell-rows .row').length === 4",
    );
    assert_eq!(
        eval(
            &tab,
            "document.documentElement.scrollWidth <= window.innerWidth"
        ),
        serde_json::Value::Bool(true),
        "nothing spills sideways on a narrow screen"
    );
    assert_eq!(
        eval(&tab, "getComputedStyle(document.body).backgroundColor"),
        serde_json::json!("rgb(17, 20, 24)"),
        "the dark scheme applies"
    );
    screenshot(&tab, dir.path(), "list-narrow-dark");
}

#[test]
fn what_a_cell_prints_shows_as_text_never_as_html() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = console_daemon(dir.path());
    let greet = c_program("greet");
    let payloads = [
        "<script>window.pwned = 1</script>",
        "<img src=x onerror=\"window.pwned = 2\">",
        "<b>bold</b>",
    ];
    let mut args = vec![
        "create",
        "--start",
        "--name",
        "payloads",
        greet.to_str().unwrap(),
    ];
    args.extend(payloads);
    daemon.ok(&args);
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    sign_in(&tab, port, TOKEN);
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/cells/payloads"))
        .unwrap();
    wait_until(
        &tab,
        "document.getElementById('log-stdout').textContent.includes('onerror')",
    );
    let shown = text_of(&tab, "#log-stdout");
    for payload in payloads {
        assert!(
            shown.contains(payload),
            "`{payload}` shows as text: {shown}"
        );
    }
    assert_eq!(
        eval(
            &tab,
            "window.pwned === undefined && document.querySelectorAll('main img, main script, main b').length === 0"
        ),
        serde_json::Value::Bool(true),
        "nothing the cell printed became an element"
    );
    // The search marks what it finds, as text too.
    fill(&tab, "input[aria-label='Search the output']", "<img");
    wait_until(
        &tab,
        "document.querySelectorAll('#log-stdout mark').length === 1",
    );
    assert_eq!(text_of(&tab, "#log-stdout mark"), "<img");
}

/// One HTTP/1.1 request to `port`; the status and the whole answer.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// A server on another loopback port whose every page is `page`: another origin.
fn other_origin(page: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    port
}

#[test]
fn nothing_works_without_the_token_and_other_origins_cannot_forge_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = console_daemon(dir.path());
    let upcase = c_program("upcase");
    daemon.ok(&[
        "create",
        "--start",
        "-i",
        "--name",
        "victim",
        upcase.to_str().unwrap(),
    ]);

    // Without the token: the sign-in form, and nothing else.
    let (status, page) = http(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        page.contains("name=\"token\"") && !page.contains("app.js"),
        "{page}"
    );
    for path in [
        "/console/app.js",
        "/console/app.css",
        "/v1/cells",
        "/v1/events",
    ] {
        let (status, answer) = http(
            port,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 401, "{path}: {answer}");
    }
    // Signing in makes a session, whose cookie is not the token.
    let form = format!("token={TOKEN}");
    let (status, answer) = http(
        port,
        &format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert_eq!(status, 303, "{answer}");
    let cookie = answer
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_string();
    assert!(
        cookie.starts_with("hypercell_session=") && !cookie.contains(TOKEN),
        "{cookie}"
    );
    let asset = |cookie: &str| {
        http(
            port,
            &format!(
                "GET /console/app.js HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
        .0
    };
    assert_eq!(asset(&cookie), 200, "the session opens the assets");
    let (status, answer) = http(
        port,
        &format!(
            "PUT /v1/cells/victim/kill HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "a change by cookie alone is refused: {answer}");
    // Another site's form cannot sign the user out; the console can, and the session
    // then opens nothing.
    let logout = |origin: &str| {
        http(
            port,
            &format!(
                "POST /logout HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .0
    };
    assert_eq!(logout("http://evil.example"), 403);
    assert_eq!(asset(&cookie), 200);
    assert_eq!(logout(&format!("http://127.0.0.1:{port}")), 303);
    assert_eq!(asset(&cookie), 401, "a session ends when signed out");

    // A page of another origin, in the signed-in browser, tries every way a page can
    // send a request that changes something.
    let base = format!("http://127.0.0.1:{port}");
    let evil = other_origin(format!(
        r#"<!doctype html><html><body>
<form id="f" method="post" action="{base}/v1/cells/victim/stdin" enctype="text/plain" target="sink"><input name="form-evil" value="x"></form>
<iframe name="sink" id="sink"></iframe>
<script>
(async () => {{
  const tried = [];
  try {{ await fetch('{base}/v1/cells/victim/stdin', {{method: 'POST', mode: 'no-cors', credentials: 'include', body: 'fetch-evil\n'}}); tried.push('stdin'); }} catch (e) {{ tried.push('stdin failed'); }}
  try {{ await fetch('{base}/v1/cells?start=true', {{method: 'POST', mode: 'no-cors', credentials: 'include', headers: {{'Content-Type': 'text/plain'}}, body: JSON.stringify({{module: {module:?}, name: 'forged'}})}}); tried.push('create'); }} catch (e) {{ tried.push('create failed'); }}
  try {{ await fetch('{base}/v1/cells/victim/kill', {{method: 'PUT', credentials: 'include', headers: {{'X-Hypercell-Console': '1'}}}}); tried.push('kill'); }} catch (e) {{ tried.push('kill blocked'); }}
  document.getElementById('sink').onload = () => {{ document.title = 'done: ' + tried.join(', '); }};
  document.getElementById('f').submit();
}})();
</script></body></html>"#,
        module = upcase.to_str().unwrap()
    ));
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    sign_in(&tab, port, TOKEN);
    wait_until(&tab, "document.getElementById('cell-rows')");
    tab.navigate_to(&format!("http://127.0.0.1:{evil}/"))
        .unwrap();
    wait_until(&tab, "document.title.startsWith('done')");
    assert!(
        text_of(&tab, "title").contains("kill blocked"),
        "the browser blocks a cross-origin request with the console's header: {}",
        text_of(&tab, "title")
    );

    // Nothing changed: no new cell, the victim runs on and read nothing.
    assert!(!daemon.cli(&["inspect", "forged"]).status.success());
    assert_eq!(daemon.inspect("victim")["state"], "running");
    let logs = text(&daemon.cli(&["logs", "victim"]).stdout);
    assert!(!logs.contains("EVIL"), "{logs}");

    // The console itself can write to the victim's stdin (and close it, so that the
    // program flushes its output and ends): the refusals above were refusals, not a
    // broken path.
    tab.navigate_to(&format!("{base}/#/cells/victim")).unwrap();
    fill(&tab, "#stdin-text", "from the console");
    click(&tab, "#stdin-close");
    wait_until(
        &tab,
        "document.getElementById('log-stdout').textContent.includes('FROM THE CONSOLE')",
    );
    let logs = text(&daemon.cli(&["logs", "victim"]).stdout);
    assert!(
        logs.contains("FROM THE CONSOLE") && !logs.contains("EVIL"),
        "{logs}"
    );
}

#[test]
fn ten_thousand_cells_list_quickly() {
    const CELLS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = console_daemon(dir.path());
    let module = dir.path().join("idle.wat");
    std::fs::write(&module, "(module (func (export \"_start\")))").unwrap();
    let body = |i: usize| {
        format!(
            "{{\"module\": {:?}, \"name\": \"cell-{i:05}\"}}",
            module.to_str().unwrap()
        )
    };
    let made = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let body = &body;
            scope.spawn(move || {
                for i in (worker..CELLS).step_by(4) {
                    let body = body(i);
                    let (status, answer) = http(
                        port,
                        &format!(
                            "POST /v1/cells HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                    );
                    assert_eq!(status, 201, "{answer}");
                }
            });
        }
    });
    eprintln!("{CELLS} cells made in {:?}", made.elapsed());
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    screen(&tab, 1280, 800, false);
    sign_in(&tab, port, TOKEN);
    wait_until(
        &tab,
        &format!("document.getElementById('cell-count')?.textContent === '{CELLS} of {CELLS}'"),
    );
    eprintln!(
        "the list of {CELLS} cells showed within {} ms of the page's navigation",
        eval(&tab, "Math.round(performance.now())")
    );
    let rows = eval(&tab, "document.querySelectorAll('#cell-rows .row').length")
        .as_u64()
        .unwrap();
    assert!(rows < 60, "only the rows in view are in the page: {rows}");
    // The cells were made from four threads at once: the list's order is the daemon's.
    let (_, listed) = http(
        port,
        &format!(
            "GET /v1/cells HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    let last = listed
        .rsplit("\"name\":\"")
        .next()
        .and_then(|tail| tail.split('"').next())
        .unwrap()
        .to_string();
    eval(&tab, "document.getElementById('cell-rows').focus()");
    tab.press_key("End").unwrap();
    wait_until(
        &tab,
        &format!(
            "document.querySelector('#cell-rows .row[aria-selected=true]')?.textContent.includes('{last}')"
        ),
    );
    fill(&tab, "input[aria-label='Filter cells']", "cell-0999");
    wait_until(
        &tab,
        "document.getElementById('cell-count').textContent === '10 of 10000'",
    );
    drop(daemon);
}

#[test]
fn a_cell_page_links_each_end_of_its_channels() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = console_daemon(dir.path());
    let produce = c_program("produce");
    let digest = c_program("digest");
    daemon.ok(&["create", "--name", "gen", produce.to_str().unwrap(), "1"]);
    daemon.ok(&["create", "--name", "sum", digest.to_str().unwrap()]);
    daemon.ok(&["connect", "gen:stdout", "sum:stdin"]);
    daemon.ok(&["connect", "sum:results", "gen:results"]);
    let sum = daemon.inspect("sum")["id"].as_str().unwrap().to_string();
    let producer = daemon.inspect("gen")["id"].as_str().unwrap().to_string();
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    sign_in(&tab, port, TOKEN);
    tab.navigate_to(&format!("http://127.0.0.1:{port}/#/cells/gen"))
        .unwrap();
    wait_until(
        &tab,
        "document.querySelector('dl.config')?.textContent.includes('joined by a channel to')",
    );
    assert!(
        text_of(&tab, "dl.config").contains(&format!("Stdoutjoined by a channel to {sum}:stdin")),
        "{}",
        text_of(&tab, "dl.config")
    );
    // The link leads to the other end, whose page links back.
    click(&tab, &format!("dl.config a[href='#/cells/{sum}']"));
    wait_until(
        &tab,
        &format!("document.querySelector(\"dl.config a[href='#/cells/{producer}']\") !== null"),
    );
    assert!(
        text_of(&tab, "dl.config")
            .contains(&format!("Stdinjoined by a channel to {producer}:stdout")),
        "{}",
        text_of(&tab, "dl.config")
    );
    // Named channels are listed with the way each goes.
    assert!(
        text_of(&tab, "dl.config").contains(&format!(
            "Channels/channels/results, written here, read by {producer}"
        )),
        "{}",
        text_of(&tab, "dl.config")
    );
}
