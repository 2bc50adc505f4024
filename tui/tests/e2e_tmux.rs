//! End to end in a real terminal (tmux): `awaitscope demo` shows a
//! deadlock finding, Enter opens its task, `q` quits and the terminal is
//! restored (alternate screen left, cursor visible, mouse reporting off).
//! Skipped, saying why, when tmux is missing. With
//! `AWAITSCOPE_WRITE_SCREEN=PATH` it also writes the captured demo screens
//! there (docs/screen.txt; the README's screen is its findings capture,
//! blank rows left out): tasks, tree, the deadlock finding, its task, and
//! a long poll's finding with its trace.

use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn capture(s: &str) -> String {
    tmux(&["capture-pane", "-p", "-t", s])
}

fn wait_for(s: &str, what: &str, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let c = capture(s);
        if c.contains(what) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

#[test]
fn demo_shows_a_deadlock_and_restores_the_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let session = format!("awaitscope-e2e-{}", std::process::id());
    let s = session.as_str();
    let bin = env!("CARGO_BIN_EXE_awaitscope");
    let log = std::env::temp_dir().join(format!("{session}.log"));
    tmux(&["kill-session", "-t", s]);
    let ok = Command::new("tmux")
        .args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            s,
            "-x",
            "150",
            "-y",
            "42",
            "sh",
        ])
        .env("TERM", "xterm-256color")
        .status()
        .expect("tmux starts");
    assert!(ok.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _kill = Kill(session.clone());
    // `EXIT""ED` so that the typed command line itself never matches the
    // marker the shell prints when the UI has exited.
    let cmd = format!("{bin} demo --log {}; echo EXIT\"\"ED:$?", log.display());
    tmux(&["send-keys", "-t", s, &cmd, "Enter"]);
    let tasks = wait_for(s, "Tasks", Duration::from_secs(20)).expect("the UI starts");
    assert_eq!(
        tmux(&["display", "-p", "-t", s, "#{alternate_on}"]).trim(),
        "1",
        "{tasks}"
    );
    // Findings view, filtered to deadlocks.
    tmux(&["send-keys", "-t", s, "2"]);
    let screen = wait_for(s, "deadlock", Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no deadlock finding on screen:\n{}", capture(s)));
    tmux(&[
        "send-keys",
        "-t",
        s,
        "/",
        "d",
        "e",
        "a",
        "d",
        "l",
        "o",
        "c",
        "k",
        "Enter",
    ]);
    tmux(&["send-keys", "-t", s, "j"]);
    let finding = wait_for(s, "Cycle:", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the deadlock's cycle is not drawn:\n{}", capture(s)));
    assert!(finding.contains("waits on Mutex"), "{finding}");
    tmux(&["send-keys", "-t", s, "Enter"]);
    let detail = wait_for(s, "Await tree", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("Enter did not open the task:\n{}", capture(s)));
    assert!(detail.contains("transfer-"), "{detail}");
    if let Ok(path) = std::env::var("AWAITSCOPE_WRITE_SCREEN") {
        for k in ["Escape", "Escape", "1"] {
            tmux(&["send-keys", "-t", s, k]);
            std::thread::sleep(Duration::from_millis(400));
        }
        std::thread::sleep(Duration::from_secs(4));
        let tasks = capture(s);
        tmux(&["send-keys", "-t", s, "t"]);
        std::thread::sleep(Duration::from_millis(800));
        let tree = capture(s);
        // The long poll planted in the demo (`report-export`), with its
        // trace.
        tmux(&["send-keys", "-t", s, "2", "/"]);
        for c in "long_poll report-export".chars() {
            let key = if c == ' ' {
                "Space".into()
            } else {
                c.to_string()
            };
            tmux(&["send-keys", "-t", s, &key]);
        }
        // Its first finding: the top row is the kind's header.
        tmux(&["send-keys", "-t", s, "Enter", "g", "g", "j"]);
        let long_poll = wait_for(s, "▲ long_poll task report-export", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("no long poll on screen:\n{}", capture(s)));
        let doc = format!(
            "$ awaitscope demo   (tmux capture-pane, 150x42; tasks, tree, findings, task detail, a long poll)\n\n{tasks}\n{tree}\n{screen}\n{finding}\n{detail}\n{long_poll}"
        );
        // A relative path is the workspace's (as the README gives it),
        // not this test's working directory (the crate's).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        std::fs::write(&path, doc)
            .unwrap_or_else(|e| panic!("write the screen capture {}: {e}", path.display()));
    }
    tmux(&["send-keys", "-t", s, "q"]);
    let after = wait_for(s, "EXITED:", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the UI did not quit:\n{}", capture(s)));
    assert!(after.contains("EXITED:0"), "{after}");
    assert_eq!(
        tmux(&["display", "-p", "-t", s, "#{alternate_on}"]).trim(),
        "0",
        "alternate screen left"
    );
    assert_eq!(
        tmux(&["display", "-p", "-t", s, "#{cursor_flag}"]).trim(),
        "1",
        "cursor visible"
    );
    assert_eq!(
        tmux(&["display", "-p", "-t", s, "#{mouse_any_flag}"]).trim(),
        "0",
        "mouse reporting off"
    );
    assert!(!after.contains("panicked"), "{after}");
}
