//! `awaitscope report` with the CI formats: every format at once into
//! `--out-dir`, `--out` for one, `--fail-on`, the hidden Perfetto check, and
//! bad arguments.

use std::process::Command;

use awaitscope_collector::export::fixture;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_awaitscope"))
}

fn recording(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("ci.rec");
    std::fs::write(&p, fixture::ci_recording()).unwrap();
    p
}

#[test]
fn every_format_into_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path());
    let out = dir.path().join("out");
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args([
            "--format",
            "json,text,perfetto,chrome,junit,markdown,folded,svg,github",
            "--fail-on",
            "deadlock",
        ])
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "fails on the deadlock: {stderr}");
    assert!(
        stderr.contains("perfetto: size policy: whole recording"),
        "{stderr}"
    );
    for f in [
        "report.json",
        "report.txt",
        "trace.perfetto-trace",
        "trace.chrome.json",
        "junit.xml",
        "summary.md",
        "flame-pending.folded",
        "flame-busy.folded",
        "flame-pending.svg",
        "flame-busy.svg",
        "annotations.txt",
    ] {
        let m = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(m.len() > 0, "{f} is empty");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("[JUnit](junit.xml)"), "{md}");
    assert!(!md.contains("(summary.md)"));
    let v = bin()
        .arg("report")
        .arg("--verify-perfetto")
        .arg(out.join("trace.perfetto-trace"))
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains("perfetto trace ok"));
}

#[test]
fn one_format_to_out_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path());
    let svg = dir.path().join("flame.svg");
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args(["--format", "svg", "--out"])
        .arg(&svg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(svg.exists() && dir.path().join("flame-busy.svg").exists());
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args(["--format", "github"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().count() <= 10 && out.starts_with("::error file="),
        "{out}"
    );
    // Markdown: same bytes twice.
    let md = |_: u8| {
        bin()
            .arg("report")
            .arg(&rec)
            .args(["--format", "markdown"])
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(md(0), md(1));
}

#[test]
fn windowed_and_budgeted_traces_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path());
    let trace = dir.path().join("t.perfetto-trace");
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args([
            "--format",
            "perfetto",
            "--from",
            "2ms",
            "--to",
            "9ms",
            "--max-trace-events",
            "10",
            "--out",
        ])
        .arg(&trace)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("window 2.000ms..9.000ms"), "{stderr}");
    assert!(stderr.contains("budget reached"), "{stderr}");
    let v = bin()
        .arg("report")
        .arg("--verify-perfetto")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}

#[test]
fn bad_arguments_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let rec = recording(dir.path());
    // Several formats need --out-dir.
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args(["--format", "json,junit"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // A file that is not a Perfetto trace.
    let o = bin()
        .arg("report")
        .arg("--verify-perfetto")
        .arg(&rec)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = bin()
        .arg("report")
        .arg(&rec)
        .args(["--format", "perfetto", "--from", "soon"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
