//! The `cairn` binary on a real database file: list, history, show, stats and verify; a
//! closed pipe;
//! a missing file; an unknown id; a file a host holds; and the same commands against the
//! running host through its HTTP API (`--server --token`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn::{workflow, Ctx, Runtime, WorkflowError};

#[workflow]
async fn greet(ctx: Ctx, name: String) -> Result<String, WorkflowError> {
    let stamp = ctx.side_effect("stamp", || 7u32).await;
    Ok(format!("hello {name} #{stamp}"))
}

/// A long history: its JSON is far larger than a pipe's buffer.
#[workflow]
async fn chatty(ctx: Ctx, steps: u32) -> Result<u32, WorkflowError> {
    for n in 0..steps {
        ctx.side_effect("tick", move || n).await;
    }
    Ok(steps)
}

async fn populate(path: &Path) -> Runtime {
    let rt = Runtime::builder().workflow(greet).open(path).await.unwrap();
    for n in 0..3 {
        rt.start(greet, &format!("g-{n}"), format!("n{n}"))
            .await
            .unwrap()
            .result()
            .await
            .unwrap()
            .unwrap();
    }
    let daily = cairn::Recurrence::every(std::time::Duration::from_secs(86_400));
    rt.schedule(greet, "daily-hello", "world".to_owned(), daily)
        .await
        .unwrap();
    rt
}

fn cairn(path: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn list_history_and_verify_read_a_closed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greetings.redb");
    populate(&path).await.shutdown().await;

    let list = cairn(&path, &["list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let lines: Vec<String> = text(&list.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        lines,
        [
            "g-0\tgreet\tCompleted\t3 events",
            "g-1\tgreet\tCompleted\t3 events",
            "g-2\tgreet\tCompleted\t3 events"
        ]
    );

    let schedules = cairn(&path, &["schedules"]);
    assert!(schedules.status.success(), "{}", text(&schedules.stderr));
    let listed = text(&schedules.stdout);
    assert!(
        listed.starts_with("daily-hello\tgreet\tevery 1d\tnext 20") && listed.ends_with(" UTC\n"),
        "{listed}"
    );
    let offline_pause = cairn(
        &path,
        &["schedules", "pause", "daily-hello", "--reason", "x"],
    );
    assert_eq!(offline_pause.status.code(), Some(2));
    assert!(
        text(&offline_pause.stderr).contains("give --server"),
        "{}",
        text(&offline_pause.stderr)
    );

    let history = cairn(&path, &["history", "g-1"]);
    assert!(history.status.success(), "{}", text(&history.stderr));
    let events: Vec<serde_json::Value> = text(&history.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["WorkflowStarted", "SideEffect", "WorkflowCompleted"]
    );

    let verify = cairn(&path, &["verify"]);
    assert!(verify.status.success());
    assert_eq!(
        text(&verify.stdout),
        "ok    g-0  3 events\nok    g-1  3 events\nok    g-2  3 events\n3 runs: 3 intact, 0 damaged\n"
    );

    // The same history as a table: a header, then one row per event in order.
    let show = cairn(&path, &["show", "g-1"]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    let shown = text(&show.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    assert!(
        lines[0].starts_with("g-1  greet  Completed  3 events"),
        "{shown}"
    );
    assert!(
        lines[1].contains("seq") && lines[1].contains("event"),
        "{shown}"
    );
    assert_eq!(lines.len(), 2 + 3, "{shown}");
    assert!(
        lines[2].contains("WorkflowStarted") && lines[2].contains("\"n1\""),
        "{shown}"
    );
    assert!(
        lines[3].contains("SideEffect") && lines[3].contains("stamp"),
        "{shown}"
    );
    assert!(
        lines[4].contains("WorkflowCompleted") && lines[4].contains("hello n1 #7"),
        "{shown}"
    );
    // Commit times in UTC, to the millisecond.
    let when = lines[2].split_whitespace().nth(1).unwrap();
    assert_eq!(when.len(), "2026-12-03".len(), "{shown}");
    let unknown = cairn(&path, &["show", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("CAIRN-E0007"));

    let stats = cairn(&path, &["stats"]);
    assert!(stats.status.success(), "{}", text(&stats.stderr));
    let counted = text(&stats.stdout);
    for expected in [
        "runs        3",
        "events      9",
        "status      Completed",
        "type        greet",
    ] {
        assert!(
            counted.contains(expected),
            "{expected:?} missing from:\n{counted}"
        );
    }
    assert!(
        counted
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with(" 3")),
        "{counted}"
    );
}

#[tokio::test]
async fn bad_requests_get_a_message_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = cairn(&dir.path().join("nope.redb"), &["list"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("does not exist"),
        "{}",
        text(&missing.stderr)
    );

    let path = dir.path().join("greetings.redb");
    let rt = populate(&path).await;
    // A host holds the file: the tool is refused with a clear error, not a wrong read.
    let held = cairn(&path, &["list"]);
    assert_eq!(held.status.code(), Some(2));
    assert!(
        text(&held.stderr).contains("CAIRN-E0005"),
        "{}",
        text(&held.stderr)
    );
    rt.shutdown().await;

    let unknown = cairn(&path, &["history", "nobody"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("CAIRN-E0007"),
        "{}",
        text(&unknown.stderr)
    );
}

#[tokio::test]
async fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chatty.redb");
    // Built the plain way in every pass: this test is about the CLI's output, and
    // always-replay mode would rebuild the run after each of its steps.
    let rt = Runtime::builder()
        .workflow(chatty)
        .always_replay(false)
        .open(&path)
        .await
        .unwrap();
    let steps = rt
        .start(chatty, "c-1", 1_500)
        .await
        .unwrap()
        .result()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(steps, 1_500);
    rt.shutdown().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--db")
        .arg(&path)
        .args(["history", "c-1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe (as `| head -1` does) with most still unwritten.
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert!(first.contains("WorkflowStarted"), "{first}");
    let output = child.wait_with_output().unwrap();
    assert!(
        !text(&output.stderr).contains("panicked"),
        "{}",
        text(&output.stderr)
    );
    assert!(output.status.success(), "{:?}", output.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_commands_read_a_running_host_through_its_api() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greetings.redb");
    let rt = populate(&path).await;
    let mut tokens = cairn::server::Tokens::new();
    tokens
        .add(
            "auditor-token-0123456789",
            cairn::Actor::new("audrey", ["auditor"]),
        )
        .unwrap();
    let running = rt
        .http_server(tokens)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = format!("http://{}", running.addr());
    let remote = |args: &[&str]| {
        let server = server.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_cairn"))
                    .args(["--server", &server, "--token", "auditor-token-0123456789"])
                    .args(&args)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    // The file is held by the host: offline, the tool is refused; through the API it reads.
    let list = remote(&["list"]).await;
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(
        text(&list.stdout),
        "g-0\tgreet\tCompleted\t3 events\ng-1\tgreet\tCompleted\t3 events\ng-2\tgreet\tCompleted\t3 events\n"
    );
    let filtered = remote(&["list", "--id-contains", "1", "--status", "completed"]).await;
    assert_eq!(text(&filtered.stdout), "g-1\tgreet\tCompleted\t3 events\n");

    let history = remote(&["history", "g-1"]).await;
    let events: Vec<serde_json::Value> = text(&history.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["body"]["output"], "hello n1 #7");

    let show = remote(&["show", "g-1"]).await;
    let shown = text(&show.stdout);
    assert!(
        shown.starts_with("g-1  greet  Completed  3 events"),
        "{shown}"
    );
    assert!(shown.contains("WorkflowCompleted"), "{shown}");

    let stats = remote(&["stats"]).await;
    let counted = text(&stats.stdout);
    assert!(counted.contains("instances   3"), "{counted}");
    assert!(
        counted.contains("status      Completed        3"),
        "{counted}"
    );

    let export = remote(&["export"]).await;
    let lines: Vec<serde_json::Value> = text(&export.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 9);
    assert!(lines.iter().all(|l| l["run"].as_str().unwrap().len() == 32));

    // Anchors taken through the API verify through the API.
    let anchors = remote(&["anchors", "export"]).await;
    assert!(anchors.status.success(), "{}", text(&anchors.stderr));
    let anchors_file = dir.path().join("anchors.jsonl");
    std::fs::write(&anchors_file, &anchors.stdout).unwrap();
    let verify = remote(&["verify", "--anchors", anchors_file.to_str().unwrap()]).await;
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert!(
        text(&verify.stdout).ends_with(
            "3 instances: 3 intact, 0 damaged; 3 checked against anchors, 0 anchored instances missing\n"
        ),
        "{}",
        text(&verify.stdout)
    );

    // Schedules: listed, paused (the pause names the token's actor), started now, resumed.
    let listed = remote(&["schedules"]).await;
    assert!(
        text(&listed.stdout).starts_with("daily-hello\tgreet\tevery 1d\tnext 20"),
        "{}",
        text(&listed.stdout)
    );
    let paused = remote(&[
        "schedules",
        "pause",
        "daily-hello",
        "--reason",
        "quiet week",
    ])
    .await;
    assert!(paused.status.success(), "{}", text(&paused.stderr));
    let paused = text(&paused.stdout);
    assert!(paused.contains("\tpaused by audrey at 20"), "{paused}");
    assert!(paused.ends_with(" UTC: quiet week\n"), "{paused}");
    let triggered = remote(&["schedules", "trigger", "daily-hello"]).await;
    assert!(
        text(&triggered.stdout).starts_with("started daily-hello@"),
        "{}",
        text(&triggered.stderr)
    );
    let resumed = remote(&["schedules", "resume", "daily-hello"]).await;
    assert!(
        text(&resumed.stdout).contains("\tnext 20"),
        "{}",
        text(&resumed.stdout)
    );
    let unknown = remote(&["schedules", "pause", "weekly", "--reason", "x"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("CAIRN-E0027"),
        "{}",
        text(&unknown.stderr)
    );

    // Refusals: a wrong token, no token, an unknown id; each a message and exit code 2.
    let wrong = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--server", &server, "--token", "nope", "list"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(
        text(&wrong.stderr).contains("refused the token"),
        "{}",
        text(&wrong.stderr)
    );
    let tokenless = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env_remove("CAIRN_TOKEN")
        .args(["--server", &server, "list"])
        .output()
        .unwrap();
    assert_eq!(tokenless.status.code(), Some(2));
    assert!(text(&tokenless.stderr).contains("--server needs --token"));
    let unknown = remote(&["history", "nobody"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        text(&unknown.stderr).contains("CAIRN-E0007"),
        "{}",
        text(&unknown.stderr)
    );
    running.stop().await;
    rt.shutdown().await;
    let unreachable = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--server", &server, "--token", "x", "list"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        text(&unreachable.stderr).contains("cannot reach"),
        "{}",
        text(&unreachable.stderr)
    );
}

#[tokio::test]
async fn the_tool_never_writes_over_the_database_or_an_existing_file_and_reads_what_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greetings.redb");
    populate(&path).await.shutdown().await;
    let size = std::fs::metadata(&path).unwrap().len();
    let db = path.to_str().unwrap();

    // `--out` naming the database read is refused, even with --force, and the file is
    // untouched (it was emptied before).
    for args in [
        vec!["export", "--out", db],
        vec!["export", "--out", db, "--force"],
        vec!["anchors", "export", "--out", db, "--force"],
    ] {
        let refused = cairn(&path, &args);
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        assert!(
            text(&refused.stderr).contains("is the database being read"),
            "{args:?}: {}",
            text(&refused.stderr)
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "{args:?}");
    }
    // An existing file (say, anchors kept as evidence) is replaced only with --force.
    let anchors = dir.path().join("anchors.jsonl");
    let anchors_arg = anchors.to_str().unwrap();
    assert!(cairn(&path, &["anchors", "export", "--out", anchors_arg])
        .status
        .success());
    let kept = std::fs::read(&anchors).unwrap();
    let again = cairn(&path, &["anchors", "export", "--out", anchors_arg]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(std::fs::read(&anchors).unwrap(), kept);
    assert!(cairn(
        &path,
        &["anchors", "export", "--out", anchors_arg, "--force"]
    )
    .status
    .success());

    // An anchors file with no anchors checks nothing: refused, not passed.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let nothing = cairn(&path, &["verify", "--anchors", empty.to_str().unwrap()]);
    assert_eq!(nothing.status.code(), Some(2), "{}", text(&nothing.stdout));
    assert!(
        text(&nothing.stderr).contains("holds no anchors"),
        "{}",
        text(&nothing.stderr)
    );

    // A file named on the command line is read even when CAIRN_SERVER names a host,
    // and an empty CAIRN_SERVER counts as unset.
    for server in ["http://127.0.0.1:1", ""] {
        let read = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("CAIRN_SERVER", server)
            .env("CAIRN_TOKEN", "some-token")
            .args(["--db", db, "verify", "--quiet"])
            .output()
            .unwrap();
        assert!(
            read.status.success(),
            "CAIRN_SERVER={server:?}: {}",
            text(&read.stderr)
        );
        assert!(
            text(&read.stdout).starts_with("3 runs: 3 intact"),
            "{}",
            text(&read.stdout)
        );
    }
}

#[tokio::test]
async fn a_damaged_or_short_file_gets_its_own_reason_and_no_panic_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greetings.redb");
    populate(&path).await.shutdown().await;
    let bytes = std::fs::read(&path).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the file is empty"),
        ("short", bytes[..100].to_vec(), "ends before"),
        (
            "cut short",
            bytes[..bytes.len() / 2].to_vec(),
            "a copy cut short",
        ),
    ];
    for (what, content, says) in cases {
        let copy = dir.path().join(format!("{}.redb", what.replace(' ', "-")));
        std::fs::write(&copy, &content).unwrap();
        let refused = cairn(&copy, &["list"]);
        assert_eq!(refused.status.code(), Some(2), "{what}");
        let stderr = text(&refused.stderr);
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    let directory = cairn(dir.path(), &["list"]);
    assert!(
        text(&directory.stderr).contains("is a directory"),
        "{}",
        text(&directory.stderr)
    );
    // Single-byte flips in the recorded audit file (some of these offsets make redb
    // panic): whatever each does, the tool answers with its own error or verdict, never
    // redb's panic message or a backtrace.
    let golden = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/audit.redb"),
    )
    .unwrap();
    let flipped = dir.path().join("flipped.redb");
    let mut contained = 0;
    let offsets = [4096, 12288, 16384, 57352, 61442]
        .into_iter()
        .chain((4096..golden.len().min(64 * 1024)).step_by(1021));
    for offset in offsets {
        let mut damaged = golden.clone();
        damaged[offset] ^= 0xff;
        std::fs::write(&flipped, &damaged).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .env("RUST_BACKTRACE", "1")
            .args(["--db", flipped.to_str().unwrap(), "verify"])
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
            "byte {offset}: {stderr}"
        );
        assert_ne!(output.status.code(), None, "byte {offset}: killed");
        contained += usize::from(stderr.contains("redb failed on the file's contents"));
    }
    assert!(
        contained > 0,
        "no flip made redb panic: the check above checked nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_a_cairn_host_fails_verify_instead_of_passing_it() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Answers every request 200 with a web page, as a proxy's login page would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let page = "<html>sign in</html>";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let server = format!("http://{addr}");
    for command in [&["verify"][..], &["list"], &["anchors", "export"]] {
        let output = tokio::task::spawn_blocking({
            let server = server.clone();
            let command = command.to_vec();
            move || {
                Command::new(env!("CARGO_BIN_EXE_cairn"))
                    .args(["--server", &server, "--token", "auditor-token-0123"])
                    .args(&command)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(2), "{command:?}");
        assert!(
            text(&output.stderr).contains("not JSON from a Cairn host"),
            "{command:?}: {}",
            text(&output.stderr)
        );
    }
    // A token with a stray newline is refused before anything is sent.
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--server", &server, "--token", "abc\n", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("control character"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test]
async fn schedules_says_when_there_are_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    let rt = Runtime::builder()
        .workflow(greet)
        .open(&path)
        .await
        .unwrap();
    rt.shutdown().await;
    let listed = cairn(&path, &["schedules"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_eq!(
        text(&listed.stdout),
        "",
        "a script still reads an empty list"
    );
    assert_eq!(text(&listed.stderr), "no schedules\n");
}
