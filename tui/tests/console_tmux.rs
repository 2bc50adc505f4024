//! End to end in a real terminal (tmux): `awaitscope --console URL` over a
//! running program that calls `console_subscriber::init()` (and nothing of
//! awaitscope) shows its tasks, marks where its data comes from, shows the
//! long poll planted in it, and quits cleanly. Skipped, saying why, when
//! tmux is missing.

mod console_support;

use std::process::Command;
use std::time::{Duration, Instant};

/// Not a test: the programs, when this binary runs itself as one.
#[test]
fn console_program() {
    console_support::run_program_if_asked();
}

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
fn the_ui_shows_a_console_programs_tasks_and_findings() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux)");
        return;
    }
    let program = console_support::start("blocking", 40);
    let session = format!("awaitscope-console-{}", std::process::id());
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
            "160",
            "-y",
            "40",
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
    let cmd = format!(
        "{bin} --console {} --log {}; echo EXIT\"\"ED:$?",
        program.url(),
        log.display()
    );
    tmux(&["send-keys", "-t", s, &cmd, "Enter"]);
    let tasks = wait_for(s, "checkout", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the program's task is not shown:\n{}", capture(s)));
    assert!(tasks.contains("from console"), "{tasks}");
    assert!(
        tasks.contains(&format!("console {}", program.addr)),
        "{tasks}"
    );
    // Findings view: the blocking task's long poll.
    tmux(&["send-keys", "-t", s, "2"]);
    let findings = wait_for(s, "long_poll", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no long poll on screen:\n{}", capture(s)));
    assert!(findings.contains("checkout"), "{findings}");
    tmux(&["send-keys", "-t", s, "q"]);
    let after = wait_for(s, "EXITED:", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the UI did not quit:\n{}", capture(s)));
    assert!(after.contains("EXITED:0"), "{after}");
    assert!(!after.contains("panicked"), "{after}");
    assert_eq!(
        tmux(&["display", "-p", "-t", s, "#{alternate_on}"]).trim(),
        "0",
        "alternate screen left"
    );
}
