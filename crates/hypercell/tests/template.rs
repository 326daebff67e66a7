//! `hypercell template create` and `hypercell run TEMPLATE`: cells started from one
//! template each have their own arguments, environment, directories, random bytes and
//! current time, and the template file stays as it was.

#[path = "support/binary.rs"]
mod binary;

use binary::*;

/// The lines of `hypercell run` on `args`.
fn run_lines(args: &[&str]) -> Vec<String> {
    let out = run(args, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().map(String::from).collect()
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` in {lines:?}"))
}

#[test]
fn cells_from_one_template_each_have_their_own_identity() {
    let wasm = c_program("identity");
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("identity.tmpl");
    for (name, line) in [("a", "from a\n"), ("b", "from b\n")] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("hello.txt"), line).unwrap();
    }
    let out = run(
        &[
            "template",
            "create",
            "--env",
            "MADE=then",
            wasm.to_str().unwrap(),
            "-o",
            template.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = std::fs::read(&template).unwrap();

    let tmpl = template.to_str().unwrap();
    let a_dir = format!("{}::d", dir.path().join("a").display());
    let b_dir = format!("{}::d", dir.path().join("b").display());
    let first = run_lines(&[
        "run",
        "--env",
        "WHO=first",
        "--dir",
        &a_dir,
        tmpl,
        "one",
        "two",
    ]);
    let second = run_lines(&["run", "--dir", &b_dir, tmpl, "three"]);
    assert_eq!(first[..3], ["arg one", "arg two", "env WHO=first"]);
    assert_eq!(second[0], "arg three");
    assert!(
        second[1].starts_with("random "),
        "no environment: {second:?}"
    );
    assert_eq!(value(&first, "file "), "from a");
    assert_eq!(value(&second, "file "), "from b");
    assert_ne!(value(&first, "random "), value(&second, "random "));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time: u64 = value(&second, "time ").parse().unwrap();
    assert!(time + 5 >= now, "the cell's time {time} is behind {now}");
    assert_eq!(
        std::fs::read(&template).unwrap(),
        before,
        "the template is unchanged"
    );
}

#[test]
fn checkpoints_templates_and_stop_points_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = c_program("identity");
    let out = run(
        &[
            "template",
            "create",
            "--at",
            "init:",
            wasm.to_str().unwrap(),
            "-o",
            dir.path().join("t").to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not `init:`"),
        "{}",
        text(&out.stderr)
    );
    // A snapshot that is not a template is refused by `run`.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"HYPCSNAP and not much else").unwrap();
    let out = run(&["run", junk.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_first_read_template_starts_cells_that_read_their_own_stdin() {
    let wasm = c_program("upcase");
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("upcase.tmpl");
    let tmpl = template.to_str().unwrap();
    // The prompt is written while the template is made; the program then waits for
    // stdin, and that is where the template is taken.
    let out = run(
        &[
            "template",
            "create",
            "--at",
            "first-read",
            wasm.to_str().unwrap(),
            "-o",
            tmpl,
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ready> ");
    for input in ["first cell\n", "second cell, longer input\n"] {
        let out = run(&["run", tmpl], input.as_bytes());
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), input.to_uppercase(), "no prompt again");
        assert_eq!(text(&out.stderr), format!("{} bytes\n", input.len()));
    }
    let out = run(&["run", tmpl, "an argument"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already read its arguments"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_init_template_starts_cells_from_the_state_its_export_left() {
    let wasm = c_program("preinit");
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("preinit.tmpl");
    let tmpl = template.to_str().unwrap();
    let create = |at: &str| {
        run(
            &[
                "template",
                "create",
                "--at",
                at,
                wasm.to_str().unwrap(),
                "-o",
                tmpl,
            ],
            b"",
        )
    };
    let out = create("init:init");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "main does not run in the template");
    // The table is the export's: its sum is 2654435761 times the sum of 0..16384, mod 2^32.
    let sum = (0..16384u32).fold(0u32, |s, i| s.wrapping_add(i.wrapping_mul(2654435761)));
    for input in ["first\n", "second\n"] {
        let out = run(&["run", tmpl], input.as_bytes());
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("initialised 1\ntable {sum}\nstdin {input}"),
            "the export ran once, in the template"
        );
    }
    let out = run(&["run", tmpl, "an argument"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already read its arguments"),
        "{}",
        text(&out.stderr)
    );
    let out = create("init:setup");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no function `setup`"),
        "{}",
        text(&out.stderr)
    );
}
