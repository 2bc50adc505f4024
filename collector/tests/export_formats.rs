//! The CI report formats of a fixed recording (`export::fixture`): golden
//! (insta) snapshots of every format, the Perfetto trace decoded back and
//! checked, JUnit and SVG parsed as XML, Markdown size and determinism, and
//! the size policy of the timelines.

use std::collections::BTreeMap;

use awaitscope_collector::export::{
    self, fixture, flame, github, junit, markdown, perfetto, TimelineOptions,
};
use prost::Message;

fn render() -> export::Rendered {
    export::render_recording(
        "ci.rec",
        &fixture::ci_recording(),
        TimelineOptions::default(),
    )
    .expect("fixture decodes")
}

fn md(r: &export::Rendered) -> String {
    markdown::render(
        &r.report,
        &r.walk,
        &markdown::Options {
            artifacts: vec![
                ("Perfetto trace".into(), "trace.perfetto-trace".into()),
                ("JUnit".into(), "junit.xml".into()),
            ],
            ..markdown::Options::default()
        },
    )
}

/// Checks that `xml` is well-formed; returns the element names, counted.
fn xml_elements(xml: &str) -> BTreeMap<String, usize> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut out = BTreeMap::new();
    let mut depth = 0i64;
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => {
                depth += 1;
                *out.entry(String::from_utf8_lossy(e.name().as_ref()).into_owned())
                    .or_default() += 1;
            }
            Ok(Event::Empty(e)) => {
                *out.entry(String::from_utf8_lossy(e.name().as_ref()).into_owned())
                    .or_default() += 1;
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Text(t)) => {
                t.unescape().expect("valid entities");
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("not well-formed at {}: {e}", r.buffer_position()),
        }
    }
    assert_eq!(depth, 0, "unbalanced elements");
    out
}

#[test]
fn fixture_has_the_expected_findings() {
    let r = render();
    let mut kinds: Vec<&str> = r.report.findings.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    for k in ["deadlock", "error", "long_poll", "lost_waker", "panic"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
}

#[test]
fn golden_json() {
    let r = render();
    insta::assert_snapshot!(
        "json",
        serde_json::to_string_pretty(&r.report).expect("encodes")
    );
}

#[test]
fn golden_markdown_is_deterministic_and_small() {
    let a = md(&render());
    let b = md(&render());
    assert_eq!(a, b, "same recording, same bytes");
    assert!(a.len() < 1024 * 1024);
    insta::assert_snapshot!("markdown", a);
}

#[test]
fn markdown_is_truncated_with_a_note() {
    let r = render();
    let small = markdown::render(
        &r.report,
        &r.walk,
        &markdown::Options {
            max_bytes: 2_000,
            ..markdown::Options::default()
        },
    );
    assert!(small.len() <= 2_000, "{}", small.len());
    assert!(small.contains("**Truncated**"));
}

#[test]
fn golden_junit_is_well_formed() {
    let r = render();
    let x = junit::render(&r.report, &r.walk);
    let el = xml_elements(&x);
    assert_eq!(el.get("testsuites"), Some(&1));
    assert_eq!(el.get("testsuite"), Some(&1), "one suite per process");
    // Root groups: server, cruncher, flaky, ticker (+ process for findings
    // without a task, if any).
    assert!(el["testcase"] >= 4, "{el:?}");
    assert!(el["failure"] >= 5, "a failure per finding: {el:?}");
    assert!(
        x.contains("testcase name=\"server@src/main.rs:10:5\""),
        "{x}"
    );
    assert!(x.contains("type=\"deadlock\""));
    insta::assert_snapshot!("junit", x);
}

#[test]
fn golden_github_annotations() {
    let r = render();
    let g = github::render(&r.report, None);
    assert!(g.lines().count() <= github::MAX_ANNOTATIONS);
    assert!(g.lines().all(|l| l.starts_with("::error file=")));
    insta::assert_snapshot!("github", g);
}

#[test]
fn golden_folded_stacks() {
    let r = render();
    let mut p = Vec::new();
    flame::write_folded(&r.walk.pending, &mut p).unwrap();
    let mut b = Vec::new();
    flame::write_folded(&r.walk.busy, &mut b).unwrap();
    let p = String::from_utf8(p).unwrap();
    let b = String::from_utf8(b).unwrap();
    // The join! of two spans splits the server's time over both leaves.
    assert!(
        p.contains(
            "shop;server@src/main.rs:10:5;handle @ src/main.rs:100;fetch_db @ src/main.rs:101 "
        ),
        "{p}"
    );
    assert!(p.contains(";fetch_cache @ src/main.rs:102 "), "{p}");
    // The deadlocked workers wait on the other's mutex.
    assert!(
        p.contains("worker-a@src/main.rs:20:5;Mutex @ src/main.rs:31:9;Mutex::lock"),
        "{p}"
    );
    insta::assert_snapshot!("folded_pending", p);
    insta::assert_snapshot!("folded_busy", b);
}

#[test]
fn golden_svg_is_well_formed() {
    let r = render();
    for (w, stacks) in [
        (flame::Weight::Pending, &r.walk.pending),
        (flame::Weight::Busy, &r.walk.busy),
    ] {
        let mut a = Vec::new();
        flame::write_svg(stacks, w, &mut a).unwrap();
        let mut b = Vec::new();
        flame::write_svg(stacks, w, &mut b).unwrap();
        assert_eq!(a, b, "deterministic SVG");
        let s = String::from_utf8(a).unwrap();
        let el = xml_elements(&s);
        assert!(s.contains("<svg"), "{el:?}");
        assert!(el.get("svg").copied().unwrap_or(0) >= 1, "{el:?}");
        assert!(s.contains("server@src/main.rs:10:5"));
        if w == flame::Weight::Pending {
            insta::assert_snapshot!("svg_pending", s);
        }
    }
    let mut empty = Vec::new();
    flame::write_svg(&BTreeMap::new(), flame::Weight::Busy, &mut empty).unwrap();
    xml_elements(&String::from_utf8(empty).unwrap());
}

#[test]
fn golden_chrome_trace() {
    let r = render();
    let s = String::from_utf8(r.chrome.clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
    let evs = v["traceEvents"].as_array().unwrap();
    let count = |ph: &str| evs.iter().filter(|e| e["ph"] == ph).count();
    assert!(count("X") > 10);
    assert!(count("i") > 5);
    assert_eq!(count("s"), count("f"), "every flow starts and ends");
    assert!(v["otherData"]["size_policy"]
        .as_str()
        .unwrap()
        .starts_with("size policy: whole recording"));
    // A finding's instant carries its trace, in the finding's order.
    for f in r.report.findings.iter().filter(|f| !f.trace.is_empty()) {
        let want = f.trace.join("\n");
        assert!(
            evs.iter().any(|e| e["cat"] == "finding"
                && e["args"]["kind"] == f.kind.as_str()
                && e["args"]["trace"] == want.as_str()),
            "no instant of {} with its trace",
            f.kind
        );
    }
    insta::assert_snapshot!("chrome", s);
}

/// A readable dump of a Perfetto trace, one packet a line.
fn dump(bytes: &[u8]) -> String {
    let t = perfetto::Trace::decode(bytes).unwrap();
    let mut out = String::new();
    for p in &t.packet {
        if let Some(d) = &p.track_descriptor {
            out.push_str(&format!(
                "track {} parent={:?} name={:?}{}\n",
                d.uuid.unwrap_or(0),
                d.parent_uuid,
                d.name.as_deref().unwrap_or(""),
                d.process
                    .as_ref()
                    .map_or(String::new(), |p| format!(" process pid={:?}", p.pid))
            ));
        }
        if let Some(e) = &p.track_event {
            let args: Vec<String> = e
                .debug_annotations
                .iter()
                .map(|a| {
                    format!(
                        "{}={}",
                        a.name.as_deref().unwrap_or(""),
                        a.string_value
                            .clone()
                            .unwrap_or_else(|| a.uint_value.unwrap_or(0).to_string())
                            .replace('\n', "\\n")
                    )
                })
                .collect();
            out.push_str(&format!(
                "{} t{} {} {:?} {:?} flows={:?} term={:?} {}\n",
                p.timestamp.unwrap_or(0) - fixture::START_UNIX_NS,
                e.track_uuid.unwrap_or(0),
                match e.r#type {
                    Some(1) => "B",
                    Some(2) => "E",
                    Some(3) => "I",
                    _ => "?",
                },
                e.name.as_deref().unwrap_or(""),
                e.categories,
                e.flow_ids,
                e.terminating_flow_ids,
                args.join(" ")
            ));
        }
    }
    out
}

#[test]
fn golden_perfetto_decodes_back() {
    let r = render();
    let st = perfetto::verify(&r.perfetto).expect("valid trace");
    assert_eq!(st.process_tracks, 1);
    // shop, server, worker-a, worker-b, 3 requests, cruncher, flaky,
    // ticker, their await lanes, and the policy track.
    assert!(st.tracks >= 12, "{st:?}");
    assert!(
        st.nested_tracks >= 5,
        "workers and requests under the server: {st:?}"
    );
    assert!(st.slice_names["poll"] >= 15, "{st:?}");
    assert!(st.slice_names.contains_key("handle"), "{st:?}");
    assert!(st.slice_names.contains_key("Mutex::lock"), "{st:?}");
    // spawn x5 (2 workers, 3 requests), wake by worker-a, one hand-off.
    assert_eq!(st.flows, 7, "{st:?}");
    assert_eq!(st.flows_terminated, 7, "{st:?}");
    assert!(st.policy.as_deref().unwrap().contains("whole recording"));
    let d = dump(&r.perfetto);
    assert!(d.contains("\"finding: deadlock\""), "{d}");
    assert!(d.contains("\"panic: index out of bounds\""), "{d}");
    assert!(d.contains("\"error: upstream refused connection\""), "{d}");
    insta::assert_snapshot!("perfetto", d);
}

#[test]
fn timeline_size_policy_windows_and_budgets() {
    let bytes = fixture::ci_recording();
    // A window: only what happens between 2ms and 9ms.
    let w = export::render_recording(
        "ci.rec",
        &bytes,
        TimelineOptions {
            from_ns: Some(2_000_000),
            to_ns: Some(9_000_000),
            max_events: None,
        },
    )
    .unwrap();
    let st = perfetto::verify(&w.perfetto).expect("valid windowed trace");
    assert!(st
        .policy
        .as_deref()
        .unwrap()
        .contains("window 2.000ms..9.000ms"));
    let t = perfetto::Trace::decode(&w.perfetto[..]).unwrap();
    for p in &t.packet {
        if let (Some(ts), Some(e)) = (p.timestamp, &p.track_event) {
            if e.categories.first().map(String::as_str) == Some("awaitscope") {
                continue;
            }
            let rel = ts - fixture::START_UNIX_NS;
            assert!((2_000_000..=9_000_000).contains(&rel), "{rel} {e:?}");
        }
    }
    // A budget: the trace stays valid (every begun slice ends) and says so.
    let b = export::render_recording(
        "ci.rec",
        &bytes,
        TimelineOptions {
            max_events: Some(25),
            ..TimelineOptions::default()
        },
    )
    .unwrap();
    let st = perfetto::verify(&b.perfetto).expect("valid truncated trace");
    assert!(
        st.policy.as_deref().unwrap().contains("budget reached"),
        "{st:?}"
    );
    assert!(b.notes.iter().all(|n| n.truncated_at_ns.is_some()));
    let v: serde_json::Value = serde_json::from_slice(&b.chrome).expect("valid JSON");
    assert!(v["otherData"]["size_policy"]
        .as_str()
        .unwrap()
        .contains("budget reached"));
}

#[test]
fn load_recording_has_the_requested_size() {
    let bytes = fixture::load_recording(20_000);
    let r = export::render_recording("load.rec", &bytes, TimelineOptions::default()).unwrap();
    let events = r.report.processes[0].events;
    assert!((19_000..=25_000).contains(&events), "{events}");
    perfetto::verify(&r.perfetto).expect("valid");
    assert!(
        r.walk.await_points.contains_key("Mutex @ src/main.rs:30:9"),
        "{:?}",
        r.walk.await_points.keys()
    );
}

/// Trace lines and messages that try to break out of their format: GitHub
/// workflow-command separators and escapes, XML markup, CDATA ends, line
/// breaks and control characters.
const HOSTILE: [&str; 5] = [
    "evil @ src/a,b:c.rs:1::error file=x,line=1::forged",
    "100% done\r\n::warning::injected",
    "</failure></testcase><testcase name=\"x\"> & ]]> <![CDATA[",
    "tab\there bell\u{7} esc\u{1b}[31m",
    "… 14 runtime frames",
];

fn hostile(r: &mut export::Rendered) {
    for f in &mut r.report.findings {
        f.trace = HOSTILE.iter().map(|s| s.to_string()).collect();
        f.message = "msg, with: %0A\nsecond line".into();
        if let Some(l) = &mut f.location {
            l.file = "src/we,ird:name%.rs".into();
        }
    }
}

fn unescape_data(s: &str) -> String {
    s.replace("%0A", "\n")
        .replace("%0D", "\r")
        .replace("%25", "%")
}

#[test]
fn github_annotations_stay_valid_for_any_trace() {
    let mut r = render();
    hostile(&mut r);
    let g = github::render(&r.report, None);
    let with_location = r
        .report
        .findings
        .iter()
        .filter(|f| f.location.is_some())
        .count()
        .min(github::MAX_ANNOTATIONS);
    assert!(with_location > 0);
    assert_eq!(g.lines().count(), with_location, "one line each:\n{g}");
    for line in g.lines() {
        let rest = line.strip_prefix("::error ").expect(line);
        let (props, msg) = rest.split_once("::").expect("properties end at ::");
        // Escaped properties hold no separator of their own.
        let keys: Vec<&str> = props
            .split(',')
            .map(|p| p.split_once('=').expect(p).0)
            .collect();
        assert_eq!(keys[..2], ["file", "line"], "{props}");
        assert_eq!(*keys.last().unwrap(), "title", "{props}");
        assert!(
            props.starts_with("file=src/we%2Cird%3Aname%25.rs,"),
            "{props}"
        );
        assert!(!msg.contains(['\n', '\r']), "{msg}");
        let msg = unescape_data(msg);
        assert!(msg.starts_with("msg, with: %0A\nsecond line"), "{msg}");
        let trace = msg.split_once("trace (innermost first):\n").expect(&msg).1;
        let lines: Vec<&str> = trace.lines().map(str::trim).collect();
        assert_eq!(lines.len(), HOSTILE.len(), "{trace}");
        assert_eq!(lines[0], HOSTILE[0]);
        // A line break inside a step does not start a new line.
        assert_eq!(lines[1], "100% done  ::warning::injected");
        assert_eq!(lines[4], "… 14 runtime frames");
    }
}

#[test]
fn junit_stays_valid_for_any_trace() {
    use quick_xml::events::Event;
    let mut r = render();
    hostile(&mut r);
    let x = junit::render(&r.report, &r.walk);
    let el = xml_elements(&x);
    let failures = r.report.findings.len();
    assert_eq!(el.get("failure"), Some(&failures), "{x}");
    let mut reader = quick_xml::Reader::from_str(&x);
    let (mut inside, mut bodies) = (false, Vec::new());
    loop {
        match reader.read_event().expect("well-formed") {
            Event::Start(e) if e.name().as_ref() == b"failure" => inside = true,
            Event::End(e) if e.name().as_ref() == b"failure" => inside = false,
            Event::Text(t) if inside => bodies.push(t.unescape().expect("escaped").into_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(bodies.len(), failures);
    for b in bodies {
        let trace = b.split_once("trace (innermost first):\n").expect(&b).1;
        let lines: Vec<&str> = trace.lines().map(str::trim).collect();
        assert_eq!(lines[2], HOSTILE[2], "{b}");
        assert_eq!(lines[4], HOSTILE[4], "{b}");
    }
}

/// Every view renders every kind (a new one too) the same way: its name,
/// and its trace under the same heading.
#[test]
fn every_kind_renders_with_its_trace_in_every_format() {
    use awaitscope_collector::FindingKind;
    for kind in FindingKind::ALL {
        let mut r = render();
        for f in &mut r.report.findings {
            f.kind = kind;
            f.severity = kind.severity();
            f.trace = vec!["inner @ src/a.rs:1".into(), "outer @ src/b.rs:2".into()];
        }
        let name = kind.as_str();
        let text = r.report.summary_text();
        let md = md(&r);
        let x = junit::render(&r.report, &r.walk);
        let g = github::render(&r.report, None);
        for (format, out) in [("text", &text), ("markdown", &md), ("junit", &x)] {
            assert!(out.contains(name), "{format} names {name}:\n{out}");
            let trace = out
                .split_once("trace (innermost first):")
                .unwrap_or_else(|| panic!("{format} has the trace of {name}:\n{out}"))
                .1;
            let (inner, outer) = (
                trace.find("inner @").unwrap(),
                trace.find("outer @").unwrap(),
            );
            assert!(inner < outer, "{format} keeps the order:\n{out}");
        }
        assert!(g.contains(&format!("title=awaitscope {name}::")), "{g}");
        let command = match kind.severity() {
            awaitscope_collector::Severity::Info => "::notice file=",
            _ => "::error file=",
        };
        assert!(g.lines().all(|l| l.starts_with(command)), "{g}");
        xml_elements(&x);
    }
}

/// The fixture without its last frame, the `Goodbye`: a process killed
/// after its last flush. Every format says that it did not end, and when
/// its last frame was; appended junk makes the input damaged, an error in
/// JUnit and GitHub annotations.
#[test]
fn a_recording_without_goodbye_or_with_junk_warns_in_every_format() {
    let full = fixture::ci_recording();
    let goodbye = {
        let mut b =
            awaitscope_collector::testing::StreamBuilder::new(4242, 1_700_000_000_000_000_000);
        b.goodbye();
        b.recording().len() - awaitscope_wire::Preamble::LEN
    };
    let cut = &full[..full.len() - goodbye];
    let r = export::render_recording("ci.rec", cut, TimelineOptions::default()).unwrap();
    let warned = "ci.rec: process 4242 (shop) did not end: no goodbye";
    assert_eq!(r.report.warnings.len(), 1, "{:?}", r.report.warnings);
    assert!(
        r.report.warnings[0].starts_with(warned),
        "{:?}",
        r.report.warnings
    );
    assert!(
        r.report.warnings[0].contains("2.00s after the process started (2023-11-14T22:13:22 UTC)"),
        "{}",
        r.report.warnings[0]
    );
    assert!(!r.report.processes[0].ended);
    let json = serde_json::to_string(&r.report).unwrap();
    assert!(json.contains(warned), "{json}");
    assert!(r
        .report
        .summary_text()
        .contains(&format!("warning: {warned}")));
    assert!(md(&r).contains(&format!("> warning: {warned}")));
    let x = junit::render(&r.report, &r.walk);
    let el = xml_elements(&x);
    assert_eq!(el.get("testsuite"), Some(&2), "{x}");
    assert!(x.contains("<testsuite name=\"awaitscope input\""), "{x}");
    assert!(x.contains(&format!("<system-err>{warned}")), "{x}");
    assert!(!el.contains_key("error"), "not ended is not an error: {x}");
    let gh = github::render(&r.report, None);
    assert!(
        gh.contains(&format!("::warning title=awaitscope input::{warned}")),
        "{gh}"
    );

    // Junk after the good frames: read up to it, and said to be damaged.
    let mut junk = full.clone();
    junk.extend_from_slice(b"this is not a frame, it is junk appended to the file\n");
    let r = export::render_recording("ci.rec", &junk, TimelineOptions::default()).unwrap();
    assert_eq!(r.report.inputs[0].frames, 3, "what came before is kept");
    assert!(r.report.inputs[0].damaged());
    assert!(r.report.processes[0].ended);
    assert!(
        r.report.warnings[0].starts_with("ci.rec: damaged: unreadable past byte 2660"),
        "{:?}",
        r.report.warnings
    );
    let x = junit::render(&r.report, &r.walk);
    assert_eq!(xml_elements(&x).get("error"), Some(&1), "{x}");
    assert!(x.contains("errors=\"1\""), "{x}");
    let gh = github::render(&r.report, None);
    assert!(
        gh.contains("::error title=awaitscope input::ci.rec: damaged"),
        "{gh}"
    );
    assert!(md(&r).contains("3 frames, 2650 bytes, damaged"));
}
