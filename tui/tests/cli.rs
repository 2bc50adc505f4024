//! The `awaitscope` binary: `report`, `record` and `serve` argument checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use awaitscope_collector::testing::{StreamBuilder, TaskOpts};
use awaitscope_wire::{CloseKind, DropCounts, Level, WakeOp};
use serde_json::{json, Value};

const MS: u64 = 1_000_000;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_awaitscope"));
    c.env_remove("AWAITSCOPE_TOKEN").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The known recording: main (id 2) spawns worker (id 3), which logs an
/// error and waits on a mutex main holds; hot (id 9) polls for 25 ms and
/// completes; the producer dropped 3 events.
fn known_recording() -> Vec<u8> {
    let mut b = StreamBuilder::new(4242, 1_000);
    b.hello("demo", None, false);
    b.thread(0);
    let m = b.resource("Mutex", "Sync", 20, 0);
    let main = b.spawn(&TaskOpts::named("main"), None, 0);
    b.enter(main, MS);
    let worker = b.spawn(
        &TaskOpts {
            line: 11,
            ..TaskOpts::named("worker")
        },
        Some(main),
        2 * MS,
    );
    b.lock(main, m, true, 3 * MS);
    b.exit(main, 4 * MS);
    b.waker(main, WakeOp::Clone, None, 4 * MS);
    let handle = b.user_span("handle", None, 9 * MS);
    b.enter(worker, 10 * MS);
    b.enter(handle, 10 * MS);
    b.event(Level::Error, Some(worker), Some(handle), "boom", 11 * MS);
    b.lock(worker, m, false, 11 * MS);
    b.exit(handle, 12 * MS);
    b.exit(worker, 12 * MS);
    b.waker(worker, WakeOp::Clone, None, 12 * MS);
    let hot = b.spawn(
        &TaskOpts {
            line: 12,
            ..TaskOpts::named("hot")
        },
        None,
        20 * MS,
    );
    b.poll(hot, 21 * MS, 46 * MS);
    b.finish_task(hot, CloseKind::Completed, 50 * MS);
    b.waker(main, WakeOp::Clone, None, 100 * MS);
    b.dropped(DropCounts {
        buffer_full: 3,
        ..DropCounts::default()
    });
    // A clean end: a recording without it is reported with a warning.
    b.goodbye();
    assert_eq!((main.0, worker.0, handle.0, hot.0), (2, 3, 6, 9));
    b.recording()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn report_json(files: &[&Path]) -> (Output, Value) {
    let mut args = vec!["report".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--format".into(), "json".into()]);
    let o = bin().args(&args).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o, v)
}

#[test]
fn report_of_known_recording_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "known.rec", &known_recording());
    let (o, r) = report_json(&[&f]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(r["version"], 1);

    let p = &r["processes"][0];
    assert_eq!(r["processes"].as_array().unwrap().len(), 1);
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["start_unix_ns"], 1000);
    assert_eq!(p["name"], "demo");
    assert_eq!(p["cmdline"], json!(["demo", "--flag"]));
    assert_eq!(p["tasks_live"], 2);
    assert_eq!(p["tasks_retained"], 1);
    assert_eq!(p["error_events"], 1);
    let res = &p["resources"][0];
    assert_eq!(res["concrete_type"], "Mutex");
    assert_eq!(res["holders"], json!([2]));
    assert_eq!(res["waiters"], json!([3]));

    let tasks = r["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    let main = &tasks[0];
    assert_eq!(main["id"], 2);
    assert_eq!(main["name"], "main");
    assert_eq!(main["parent"], Value::Null);
    assert_eq!(
        main["spawned_at"],
        json!({"file": "src/main.rs", "line": 10, "col": 5})
    );
    assert_eq!(main["state"], "idle");
    assert_eq!(main["polls"], 1);
    assert_eq!(main["busy_ns"], 3 * MS);
    assert_eq!(main["scheduled_ns"], MS);
    assert_eq!(main["idle_ns"], 96 * MS);

    let worker = &tasks[1];
    assert_eq!(worker["id"], 3);
    assert_eq!(worker["name"], "worker");
    assert_eq!(worker["parent"], 2);
    assert_eq!(worker["spawned_at"]["line"], 11);
    assert_eq!(worker["state"], "idle");
    assert_eq!(worker["polls"], 1);
    assert_eq!(worker["busy_ns"], 2 * MS);
    assert_eq!(worker["scheduled_ns"], 8 * MS);
    assert_eq!(worker["idle_ns"], 88 * MS);
    assert_eq!(worker["error_count"], 1);
    assert_eq!(worker["waiting_on"], json!([1]));
    let tree = &worker["await_tree"];
    assert_eq!(tree[0]["name"], "handle");
    assert_eq!(tree[0]["kind"], "span");
    assert_eq!(tree[0]["elapsed_ns"], 90 * MS);
    assert_eq!(tree[0]["children"][0]["name"], "Mutex");
    assert_eq!(tree[0]["children"][0]["kind"], "resource");
    assert_eq!(tree[0]["children"][0]["children"][0]["name"], "Mutex::lock");
    assert_eq!(
        tree[0]["children"][0]["children"][0]["location"],
        json!({"file": "src/main.rs", "line": 20, "col": 9})
    );

    let hot = &tasks[2];
    assert_eq!(hot["id"], 9);
    assert_eq!(hot["state"], "completed");
    assert_eq!(hot["polls"], 1, "the drop is not a poll");
    assert_eq!(hot["busy_ns"], 25 * MS);
    assert_eq!(hot["scheduled_ns"], MS);
    assert_eq!(hot["idle_ns"], 4 * MS + 2);
    assert_eq!(hot["closed_ns"], 50 * MS + 2);
    assert_eq!(hot["await_tree"], json!([]));

    let findings = r["findings"].as_array().unwrap();
    let kinds: Vec<_> = findings
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["error", "long_poll", "dropped_events"]);
    let err = &findings[0];
    assert_eq!(err["severity"], "error");
    assert_eq!(err["pid"], 4242);
    assert_eq!(err["message"], "boom");
    assert_eq!(err["location"], json!({"file": "src/main.rs", "line": 70}));
    assert_eq!(err["tasks"][0]["id"], 3);
    assert_eq!(err["tasks"][0]["name"], "worker");
    assert_eq!(
        err["trace"],
        // Innermost first: the span, its task, the task that spawned it.
        json!([
            "span handle @ src/main.rs:100",
            "task worker#3 @ src/main.rs:11:5",
            "task main#2 @ src/main.rs:10:5"
        ])
    );
    assert_eq!(err["count"], 1);
    assert_eq!(err["first_seen"], 11 * MS);
    assert_eq!(err["last_seen"], 11 * MS);
    let lp = &findings[1];
    assert_eq!(lp["severity"], "warning");
    assert_eq!(lp["tasks"][0]["id"], 9);
    assert_eq!(lp["tasks"][0]["spawned_at"]["line"], 12);
    assert_eq!(lp["location"]["line"], 12);
    assert_eq!(lp["worst_ns"], 25 * MS);
    assert_eq!(lp["count"], 1);
    assert_eq!(lp["first_seen"], 21 * MS);
    let dr = &findings[2];
    assert_eq!(dr["severity"], "info");
    assert!(dr["message"].as_str().unwrap().contains("dropped 3 events"));

    assert_eq!(r["dropped"]["producer_buffer_full"], 3);
    assert_eq!(r["dropped"]["collector"], 0);
    assert_eq!(r["dropped"]["total"], 3);
    assert_eq!(r["inputs"][0]["truncated"], false);
    assert_eq!(r["warnings"], json!([]));
}

#[test]
fn fail_on_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "known.rec", &known_recording());
    let f = f.to_str().unwrap();
    assert_eq!(
        run(&["report", f, "--fail-on", "deadlock,stuck"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        run(&["report", f, "--fail-on", "long_poll"]).status.code(),
        Some(1)
    );
    assert_eq!(
        run(&["report", f, "--fail-on", "any"]).status.code(),
        Some(1)
    );
    let bad = run(&["report", f, "--fail-on", "slow"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown finding kind"));
}

#[test]
fn out_and_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "known.rec", &known_recording());
    let out = dir.path().join("r.json");
    let o = run(&[
        "report",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    let t = run(&["report", f.to_str().unwrap(), "--format", "text"]);
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(text.contains("[long_poll]"), "{text}");
}

#[test]
fn several_recordings_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.rec", &known_recording());
    let mut b = StreamBuilder::new(7, 5);
    b.hello("other", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("x"), None, 1);
    b.poll(t, 2, 3);
    let bfile = write(dir.path(), "b.rec", &b.recording());
    let (o, r) = report_json(&[&a, &bfile]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(r["processes"].as_array().unwrap().len(), 2);
    assert_eq!(r["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(r["inputs"].as_array().unwrap().len(), 2);
}

#[test]
fn truncated_recording_is_reported_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = known_recording();
    bytes.truncate(bytes.len() - 3);
    let f = write(dir.path(), "cut.rec", &bytes);
    let (o, r) = report_json(&[&f]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert_eq!(r["inputs"][0]["truncated"], true);
    assert!(r["warnings"][0].as_str().unwrap().contains("truncated"));
    assert_eq!(r["tasks"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_inputs_exit_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.rec", b"");
    let text = write(dir.path(), "notes.txt", b"hello world, not a recording");
    let mut newer = awaitscope_wire::MAGIC.to_vec();
    newer.extend((awaitscope_wire::VERSION + 1).to_le_bytes());
    let newer = write(dir.path(), "newer.rec", &newer);
    let missing = dir.path().join("missing.rec");
    for (file, reason) in [
        (&empty, "empty input"),
        (&text, "not an awaitscope stream"),
        (&newer, "unsupported format version"),
        (&missing, "cannot open"),
    ] {
        let o = run(&["report", file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{file:?}");
        assert!(stderr(&o).contains(reason), "{file:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

#[cfg(unix)]
#[test]
fn record_runs_the_command_and_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "src.rec", &known_recording());
    let out = dir.path().join("run.rec");
    let sh = |code: u32, extra: &[&str]| {
        let mut args = vec!["record", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let script = format!("cp \"$SRC\" \"$AWAITSCOPE_RECORD\"; exit {code}");
        args.extend(["--", "sh", "-c"]);
        let mut c = bin();
        c.args(&args).arg(script).env("SRC", &src);
        c.output().unwrap()
    };
    let o = sh(3, &[]);
    assert_eq!(o.status.code(), Some(3), "exit code passed through");
    assert!(stderr(&o).contains("[long_poll]"), "{}", stderr(&o));
    assert!(out.exists());
    assert_eq!(sh(0, &["--fail-on", "long_poll"]).status.code(), Some(1));
    assert_eq!(sh(0, &["--fail-on", "deadlock"]).status.code(), Some(0));
    assert_eq!(sh(4, &["--fail-on", "deadlock"]).status.code(), Some(4));
    // A program that writes no recording.
    let none = dir.path().join("none.rec");
    let o = run(&[
        "record",
        "--out",
        none.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 0",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("no recording was written"));
}

/// `record` turns the program's stream off (the recording is what was
/// asked for; nobody need listen at the default address), unless the
/// environment names a collector to watch the run live as well.
#[cfg(unix)]
#[test]
fn record_streams_only_to_an_address_the_user_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.rec");
    let seen = |addr: Option<&str>| {
        let mut c = bin();
        c.args(["record", "--out", out.to_str().unwrap(), "--", "sh", "-c"])
            .arg("echo \"addr=${AWAITSCOPE_ADDR-unset}\"");
        match addr {
            Some(a) => c.env("AWAITSCOPE_ADDR", a),
            None => c.env_remove("AWAITSCOPE_ADDR"),
        };
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(seen(None), "addr=off");
    assert_eq!(seen(Some("127.0.0.1:7001")), "addr=127.0.0.1:7001");
}

/// `-o` is `--out`; an option `record` does not know is said as such,
/// not as a program named like it that could not be run.
#[cfg(unix)]
#[test]
fn record_takes_dash_o_and_names_an_unknown_option() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("short.rec");
    // `true` is not instrumented: what matters is which path `record`
    // looked for the recording at.
    let o = run(&["record", "-o", out.to_str().unwrap(), "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("no recording was written to {}", out.display())),
        "{}",
        stderr(&o)
    );

    let o = run(&["record", "--output", "x.rec", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("unknown option --output"), "{err}");
    assert!(!err.contains("cannot run"), "{err}");
    assert!(!dir.path().join("x.rec").exists());

    // `report` takes `-o` for `--out` too.
    let f = write(dir.path(), "known.rec", &known_recording());
    let report = dir.path().join("r.json");
    let o = run(&[
        "report",
        f.to_str().unwrap(),
        "-o",
        report.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(r["findings"].is_array(), "{r}");
}

#[test]
fn serve_refuses_remote_without_allow_and_token() {
    let o = run(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--allow-remote"), "{}", stderr(&o));
    let o = run(&["serve", "--listen", "0.0.0.0:0", "--allow-remote"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("requires a token"), "{}", stderr(&o));
}

/// Starts `serve` (its command line in `cmd`) and waits for its address;
/// its log is read in the background (so it never blocks on it) and
/// handed back by the thread.
#[cfg(unix)]
fn spawn_serve(
    mut cmd: Command,
) -> (
    std::process::Child,
    String,
    std::thread::JoinHandle<Vec<String>>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve logs its address").unwrap();
        if let Some(a) = line.split("listening on ").nth(1) {
            break a.trim().to_string();
        }
    };
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (child, addr, log)
}

#[cfg(unix)]
#[test]
fn serve_ingests_records_and_reports_on_interrupt() {
    use std::io::Write;
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("recs");
    let report = dir.path().join("serve.json");
    let mut cmd = bin();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--record-dir"])
        .arg(&rec_dir)
        .arg("--report")
        .arg(&report);
    let (mut child, addr, log) = spawn_serve(cmd);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&known_recording()).unwrap();
    s.flush().unwrap();
    drop(s);
    // Wait (generously) for the recording to hold every frame.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let expected = known_recording().len() as u64;
    loop {
        let size: u64 = std::fs::read_dir(&rec_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if size == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recording not written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("producer connected"), "{log}");
    let v: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(v["processes"][0]["pid"], 4242);
    assert_eq!(v["tasks"].as_array().unwrap().len(), 3);
    // The recording made by serve reads back the same.
    let rec = std::fs::read_dir(&rec_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (o, r) = report_json(&[&rec]);
    assert_eq!(o.status.code(), Some(0));
    // Same tasks; times differ (the live model advances a silent
    // producer's clock by wall time, the recording cannot).
    let shape = |tasks: &Value| -> Vec<Value> {
        tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                serde_json::json!([t["id"], t["name"], t["parent"], t["spawned_at"], t["polls"]])
            })
            .collect()
    };
    assert_eq!(shape(&r["tasks"]), shape(&v["tasks"]));
}

#[test]
fn record_merges_the_recordings_of_every_process() {
    // A command that starts two instrumented processes (as `cargo test`
    // does, one per test binary): each writes its own part; `record`
    // merges them into one recording holding both processes.
    let dir = tempfile::tempdir().unwrap();
    let one = write(dir.path(), "one.rec", &known_recording());
    let mut b = StreamBuilder::new(5151, 2_000);
    b.hello("second", None, false);
    b.thread(0);
    let t = b.spawn(&TaskOpts::named("other"), None, 0);
    b.enter(t, MS);
    b.exit(t, 2 * MS);
    b.goodbye();
    let two = write(dir.path(), "two.rec", &b.recording());
    let out = dir.path().join("merged.rec");
    let script = "for src in \"$ONE\" \"$TWO\"; do \
                  cp \"$src\" \"$(dirname \"$AWAITSCOPE_RECORD\")/$(basename \"$src\")\"; done";
    let o = bin()
        .args([
            "record",
            "--out",
            out.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("ONE", &one)
        .env("TWO", &two)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (o, r) = report_json(&[&out]);
    assert_eq!(o.status.code(), Some(0));
    let pids: Vec<u64> = r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    assert!(pids.contains(&4242) && pids.contains(&5151), "{pids:?}");
    assert!(
        !dir.path().join("merged.rec.parts").exists(),
        "parts cleaned up"
    );
}

/// A function of this test binary for a native stack to point at.
#[inline(never)]
fn blocked_in_this_fn() -> usize {
    blocked_in_this_fn as *const () as usize
}

/// `record` symbolises the native stacks of the program's stalls while the
/// program's binary is still there, so the recording reads on a machine
/// without it: here the "program" is a copy of this test binary, removed
/// before the report.
#[cfg(target_os = "linux")]
#[test]
fn record_symbolises_native_stacks_so_the_recording_reads_anywhere() {
    use awaitscope_collector::testing::this_executable;
    use awaitscope_wire::{Body, Event, FrameReader};
    let dir = tempfile::tempdir().unwrap();
    let (exe, base) = this_executable();
    let app = dir.path().join("app");
    std::fs::copy(&exe, &app).unwrap();
    let address = blocked_in_this_fn() as u64 - base;

    let mut b = StreamBuilder::new(4243, 1_000);
    b.hello("app", None, false);
    let t = b.spawn(&TaskOpts::named("checkout"), None, 0);
    b.stalled_poll(t, [MS, 12 * MS, 40 * MS], &app.to_string_lossy(), address);
    b.finish_task(t, CloseKind::Completed, 50 * MS).goodbye();
    let src = write(dir.path(), "src.rec", &b.recording());

    let out = dir.path().join("run.rec");
    let o = bin()
        .args(["record", "--out", out.to_str().unwrap(), "--", "sh", "-c"])
        .arg("cp \"$SRC\" \"$AWAITSCOPE_RECORD\"")
        .env("SRC", &src)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::remove_file(&app).unwrap();

    // The stack is in the stall now, and no raw stack is left.
    let mut reader = FrameReader::new(std::fs::File::open(&out).unwrap()).unwrap();
    let mut frames_in_stall = Vec::new();
    while let Some(f) = reader.next_frame().unwrap() {
        if let Body::Events(events) = f.body {
            for e in events {
                match e {
                    Event::NativeStack(_) => panic!("a raw stack was left"),
                    Event::Stall(st) if !st.ended => frames_in_stall = st.frames,
                    _ => {}
                }
            }
        }
    }
    assert!(
        frames_in_stall
            .iter()
            .any(|f| f.function.ends_with("blocked_in_this_fn")),
        "{frames_in_stall:?}"
    );
    let (_, r) = report_json(&[&out]);
    let long = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "long_poll")
        .unwrap_or_else(|| panic!("{r:#}"));
    let trace: Vec<&str> = long["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        trace
            .iter()
            .any(|l| l.starts_with("blocked_in_this_fn @ tui/tests/cli.rs:")),
        "{trace:#?}"
    );
}

/// `serve --record-dir` recordings: a `serve` restarted (its connection
/// ids start at 0 again) and the same producer again write two files, not
/// one over the other; each is its owner's alone and holds no token; and
/// SIGTERM ends `serve` with its report written, as SIGINT does.
#[cfg(unix)]
#[test]
fn serve_recordings_are_unique_private_tokenless_and_sigterm_reports() {
    use std::io::Write;
    use std::net::TcpStream;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "s3cret-token-for-the-test";
    let dir = tempfile::tempdir().unwrap();
    let rec_dir = dir.path().join("recs");
    let mut b = StreamBuilder::new(4244, 1_000);
    b.hello("app", Some(TOKEN), false);
    let t = b.spawn(&TaskOpts::named("main"), None, 0);
    b.poll(t, MS, 2 * MS).goodbye();
    let bytes = b.recording();
    for round in 1..=2 {
        let report = dir.path().join(format!("serve{round}.json"));
        let mut cmd = bin();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--record-dir",
        ])
        .arg(&rec_dir)
        .arg("--report")
        .arg(&report);
        let (mut child, addr, log) = spawn_serve(cmd);
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&bytes).unwrap();
        s.flush().unwrap();
        drop(s);
        // Wait (generously) for this round's recording to be complete.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let files: Vec<_> = std::fs::read_dir(&rec_dir)
                .map(|d| d.filter_map(|e| e.ok()).collect())
                .unwrap_or_default();
            let done = files
                .iter()
                .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
                .count();
            if done == round {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "recording not written"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Let the writer flush the frames after the hello.
        std::thread::sleep(std::time::Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let log = log.join().unwrap().join("\n");
        assert_eq!(status.code(), Some(0), "{log}");
        let v: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(v["processes"][0]["pid"], 4244, "{v:#}");
    }
    let files: Vec<_> = std::fs::read_dir(&rec_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        let content = std::fs::read(f).unwrap();
        assert!(
            !content.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "{} holds the token",
            f.display()
        );
        let (o, r) = report_json(&[f]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(r["processes"][0]["pid"], 4244);
    }
}

/// `demo` writes what its workload streams to `AWAITSCOPE_RECORD` too:
/// the recording (its name's `{pid}` replaced) reads into a report with
/// the demo's tasks.
#[test]
fn demo_records_its_workload_under_awaitscope_record() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("demo-{pid}.aws");
    let live = dir.path().join("live.json");
    let o = bin()
        .args(["demo", "--headless", "--duration", "2s", "--report"])
        .arg(&live)
        .env("AWAITSCOPE_RECORD", &rec)
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", stderr(&o));
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "aws"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(!name.contains("{pid}"), "{name}");
    let (o, r) = report_json(&[&files[0]]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<&str> = r["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for n in [
        "load-generator",
        "signups",
        "legacy-lookups",
        "fault-injector",
    ] {
        assert!(names.contains(&n), "{n} not in {names:?}");
    }
    assert!(live.exists());
}
