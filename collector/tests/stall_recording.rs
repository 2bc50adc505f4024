//! A recording with stalls, as a version-3 producer writes it (frames made
//! by hand with the wire crate), read back by the collector into a report:
//! long polls name the line that blocked and the functions around it,
//! innermost first, whether the stall came before the poll's commit or in a
//! later frame; a poll that mostly waited for a CPU is `descheduled`.

use awaitscope_collector::ingest::recording;
use awaitscope_collector::testing::{native_frame, stall, StreamBuilder, TaskOpts};
use awaitscope_collector::{Model, Report};
use awaitscope_wire::{CloseKind, FrameOrigin, Sched, StackState};
use serde_json::Value;

const MS: u64 = 1_000_000;

fn sched(window_ns: u64, on_cpu_ns: u64, waiting_ns: u64) -> Option<Sched> {
    Some(Sched {
        window_ns,
        on_cpu_ns,
        kernel_ns: 0,
        waiting_ns,
    })
}

fn recording() -> Vec<u8> {
    let mut b = StreamBuilder::new(7, 0);
    b.hello("shop", None, false);
    b.thread(0);
    // `checkout` awaits `charge_card`, which calls a plain fn that blocks.
    let checkout = b.spawn(&TaskOpts::named("checkout"), None, 0);
    let outer = b.user_span("checkout", None, 0);
    let charge = b.user_span("charge_card", Some(outer), 0);
    b.enter(checkout, MS)
        .enter(outer, MS + 1)
        .enter(charge, MS + 2);
    let mut crossing = stall(checkout, MS, 11 * MS, false);
    crossing.spans = vec![charge, outer];
    crossing.stack = StackState::Sampled;
    crossing.frames = vec![
        native_frame(
            "std::thread::sleep",
            "/rustc/0123abcd/library/std/src/thread/mod.rs",
            897,
            FrameOrigin::Runtime,
        ),
        native_frame(
            "shop::auth::hash_password",
            "src/auth.rs",
            12,
            FrameOrigin::User,
        ),
        native_frame(
            "shop::charge_card::{{closure}}",
            "src/main.rs",
            31,
            FrameOrigin::User,
        ),
        native_frame(
            "tokio::runtime::task::harness::poll",
            "/home/u/.cargo/registry/src/index.crates.io-6f17d22bba15001f/tokio-1.47.1/src/runtime/task/harness.rs",
            200,
            FrameOrigin::Runtime,
        ),
        native_frame(
            "std::thread::start",
            "std/src/thread/mod.rs",
            1,
            FrameOrigin::Runtime,
        ),
    ];
    crossing.sched = sched(MS, MS / 2, 0);
    b.stall(crossing);
    b.exit(charge, 301 * MS)
        .close(charge, CloseKind::Completed, 301 * MS)
        .exit(outer, 301 * MS)
        .close(outer, CloseKind::Completed, 301 * MS)
        .poll_end(checkout, 301 * MS, 1);
    // Its next poll commits the long one, in the same frame.
    b.poll(checkout, 310 * MS, 311 * MS);
    b.flush();
    // The half after the poll's end comes in a later frame.
    let mut end = stall(checkout, MS, 302 * MS, true);
    end.sched = sched(300 * MS, 3 * MS, 0);
    b.stall(end);

    // `report`: 15.2 ms, of which 12.9 waiting for a CPU.
    let report = b.spawn(&TaskOpts::named("report"), None, 400 * MS);
    b.enter(report, 401 * MS);
    let mut crossing = stall(report, 401 * MS, 412 * MS, false);
    crossing.stack = StackState::Off;
    crossing.sched = sched(MS, 100_000, 900_000);
    b.stall(crossing);
    b.poll_end(report, 401 * MS + 15_200_000, 1);
    let mut end = stall(report, 401 * MS, 417 * MS, true);
    end.sched = sched(15_200_000, 2_000_000, 12_900_000);
    b.stall(end);
    b.poll(report, 500 * MS, 501 * MS);
    b.recording()
}

fn findings_of(r: &Value, kind: &str) -> Vec<Value> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn a_recording_with_stalls_reports_where_the_polls_blocked() {
    let bytes = recording();
    let mut m = Model::default();
    recording::load_reader(&mut m, "shop.aws", &bytes[..]).unwrap();
    m.finish();
    let r = serde_json::to_value(Report::from_model(&m)).unwrap();

    let long = findings_of(&r, "long_poll");
    assert_eq!(long.len(), 1, "{r:#}");
    let f = &long[0];
    let trace: Vec<&str> = f["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(
        trace,
        [
            "… 1 runtime frame in std::thread::sleep",
            "hash_password @ src/auth.rs:12",
            "charge_card @ src/main.rs:31",
            // The scheduler's frames below the poll are cut, and the span
            // charge_card, a native frame above, is not told twice.
            "checkout @ src/main.rs:100",
            "task #1 \"checkout\" spawned @ src/main.rs:10",
        ]
    );
    assert_eq!(f["location"]["file"], "src/auth.rs");
    assert_eq!(f["location"]["line"], 12);
    assert_eq!(f["count"], 1);
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("in hash_password (src/auth.rs:12)"), "{msg}");
    // The split up to the poll's end (the later frame), not the crossing's.
    assert!(
        msg.contains("on CPU 1% (kernel 0%), waiting for a CPU 0%, blocked/sleeping 99%"),
        "{msg}"
    );
    // No absolute path anywhere in it.
    assert!(!f.to_string().contains("/home/"), "{f}");

    let d = findings_of(&r, "descheduled");
    assert_eq!(d.len(), 1, "{r:#}");
    assert_eq!(d[0]["severity"], "info");
    let msg = d[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("took 15.2ms but waited 12.9ms of it for a CPU"),
        "{msg}"
    );
    assert_eq!(
        d[0]["trace"][0],
        "no native stack: sampling is off (AWAITSCOPE_STACKS=off)"
    );
}

/// A recording of one 15.2ms poll of task `report` that waited 13.3ms for a
/// CPU, committed by its next poll; the stall's halves come in the frame
/// after the commit (`late`) or around the poll's end, in the same frame.
/// With `ran`, the statistics up to the crossing (10ms of it, that half
/// sent in time) say it waited for a CPU, and those up to its end that it
/// ran.
fn one_poll(late: bool, ran: bool) -> Vec<u8> {
    let mut b = StreamBuilder::new(7, 0);
    b.hello("shop", None, false);
    b.thread(0);
    let report = b.spawn(&TaskOpts::named("report"), None, 0);
    let mut crossing = stall(report, MS, 11 * MS, false);
    crossing.stack = StackState::Off;
    crossing.sched = if ran {
        sched(10 * MS, MS, 9 * MS)
    } else {
        sched(MS, 100_000, 900_000)
    };
    let mut end = stall(report, MS, 17 * MS, true);
    end.sched = if ran {
        sched(15_200_000, 14 * MS, MS)
    } else {
        sched(15_200_000, 1_900_000, 13_300_000)
    };
    b.enter(report, MS);
    // With `ran`, the crossing's half always comes in time: the poll is
    // judged at its commit by it.
    let crossing_late = late && !ran;
    if !crossing_late {
        b.stall(crossing.clone());
    }
    b.poll_end(report, MS + 15_200_000, 1);
    if !late {
        b.stall(end.clone());
    }
    b.poll(report, 100 * MS, 101 * MS);
    b.flush();
    if crossing_late {
        b.stall(crossing);
    }
    if late {
        b.stall(end);
        b.flush();
    }
    b.recording()
}

fn report_of(bytes: &[u8]) -> Report {
    let mut m = Model::default();
    recording::load_reader(&mut m, "one.aws", bytes).unwrap();
    m.finish();
    Report::from_model(&m)
}

/// The stall of a poll judged a long poll at its commit comes later and
/// says the poll mostly waited for a CPU: the report has that poll as
/// `descheduled` alone, in every output made from it (JSON, the summary,
/// the `--fail-on` verdict), as when the stall came first.
#[test]
fn a_stall_after_the_commit_has_the_final_word_on_the_poll() {
    for late in [true, false] {
        let report = report_of(&one_poll(late, false));
        let r = serde_json::to_value(&report).unwrap();
        assert_eq!(
            findings_of(&r, "long_poll"),
            Vec::<Value>::new(),
            "late: {late}"
        );
        let d = findings_of(&r, "descheduled");
        assert_eq!(d.len(), 1, "late: {late}: {r:#}");
        assert_eq!(d[0]["count"], 1);
        assert_eq!(d[0]["worst_ns"], 15_200_000);
        let msg = d[0]["message"].as_str().unwrap();
        assert!(msg.contains("waited 13.3ms of it for a CPU"), "{msg}");
        assert_eq!(r["findings"].as_array().unwrap().len(), 1);
        let text = report.summary_text();
        assert!(text.contains("1 finding(s)"), "{text}");
        assert!(!text.contains("long_poll"), "{text}");
        assert!(!report.has_finding(&[awaitscope_collector::FindingKind::LongPoll]));
        assert!(report.has_finding(&[awaitscope_collector::FindingKind::Descheduled]));
    }
}

/// And the other way round: statistics up to the crossing that say the
/// poll waited for a CPU, then up to its end that it ran: a `long_poll`
/// alone.
#[test]
fn a_poll_first_found_descheduled_that_ran_is_a_long_poll() {
    for late in [true, false] {
        let report = report_of(&one_poll(late, true));
        let r = serde_json::to_value(&report).unwrap();
        assert_eq!(
            findings_of(&r, "descheduled"),
            Vec::<Value>::new(),
            "late: {late}"
        );
        let l = findings_of(&r, "long_poll");
        assert_eq!(l.len(), 1, "late: {late}: {r:#}");
        assert_eq!(l[0]["count"], 1);
        let msg = l[0]["message"].as_str().unwrap();
        assert!(msg.contains("waiting for a CPU 7%"), "{msg}");
    }
}

/// How the halves of the stall of a 15.2ms poll that mostly waited for a
/// CPU reach the collector when the task is polled twice more before its
/// statistics arrive (the producer sends the ended half in a later drain).
#[derive(Clone, Copy, Debug)]
enum Later {
    /// The crossing's half in time; the two later polls short (1ms).
    Short,
    /// Both halves after the two later polls.
    BothLate,
    /// The first later poll long too (it stalled in its turn); the ended
    /// halves of both after the two later polls.
    AnotherStall,
}

fn polled_twice_more(later: Later) -> Vec<u8> {
    let mut b = StreamBuilder::new(7, 0);
    b.hello("shop", None, false);
    b.thread(0);
    let report = b.spawn(&TaskOpts::named("report"), None, 0);
    let mut crossing = stall(report, MS, 11 * MS, false);
    crossing.stack = StackState::Off;
    crossing.sched = sched(MS, 100_000, 900_000);
    let mut end = stall(report, MS, 17 * MS, true);
    end.sched = sched(15_200_000, 1_900_000, 13_300_000);
    b.enter(report, MS);
    if !matches!(later, Later::BothLate) {
        b.stall(crossing.clone());
    }
    b.poll_end(report, MS + 15_200_000, 1);
    b.flush();
    // Polled twice more: the first commits the long poll, the second the
    // first.
    let mut second_end = None;
    match later {
        Later::AnotherStall => {
            // A 40ms poll that ran on its CPU.
            b.enter(report, 100 * MS);
            let mut c = stall(report, 100 * MS, 110 * MS, false);
            c.stack = StackState::Off;
            c.sched = sched(MS, MS, 0);
            b.stall(c);
            b.poll_end(report, 140 * MS, 1);
            let mut e = stall(report, 100 * MS, 141 * MS, true);
            e.sched = sched(40 * MS, 39 * MS, MS);
            second_end = Some(e);
        }
        _ => {
            b.poll(report, 100 * MS, 101 * MS);
        }
    }
    b.poll(report, 200 * MS, 201 * MS);
    b.flush();
    if matches!(later, Later::BothLate) {
        b.stall(crossing);
    }
    b.stall(end);
    if let Some(e) = second_end {
        b.stall(e);
    }
    b.flush();
    // A third poll commits the second.
    b.poll(report, 300 * MS, 301 * MS);
    b.recording()
}

/// The statistics of a poll that come after the task was polled twice
/// more still judge that poll: it mostly waited for a CPU, so it is
/// `descheduled` alone, never a `long_poll`.
#[test]
fn statistics_after_two_more_polls_still_judge_their_poll() {
    for later in [Later::Short, Later::BothLate, Later::AnotherStall] {
        let report = report_of(&polled_twice_more(later));
        let r = serde_json::to_value(&report).unwrap();
        let d = findings_of(&r, "descheduled");
        assert_eq!(d.len(), 1, "{later:?}: {r:#}");
        assert_eq!(d[0]["count"], 1, "{later:?}");
        assert_eq!(d[0]["worst_ns"], 15_200_000, "{later:?}");
        let msg = d[0]["message"].as_str().unwrap();
        assert!(msg.contains("waited 13.3ms of it for a CPU"), "{msg}");
        // Described by its own crossing's half, even where a later poll's
        // stall took its place in the task before its statistics came.
        assert_eq!(
            d[0]["trace"][0], "no native stack: sampling is off (AWAITSCOPE_STACKS=off)",
            "{later:?}"
        );
        let long = findings_of(&r, "long_poll");
        match later {
            // The 40ms poll that ran is one, alone.
            Later::AnotherStall => {
                assert_eq!(long.len(), 1, "{later:?}: {r:#}");
                assert_eq!(long[0]["count"], 1);
                assert_eq!(long[0]["worst_ns"], 40 * MS);
            }
            _ => assert_eq!(long, Vec::<Value>::new(), "{later:?}"),
        }
    }
}

/// A recording from a busy machine: the watchdog's first reading of each
/// poll came late, so each poll's statistics cover only its last few
/// milliseconds. An ordinary task's 25ms poll whose covered part mostly
/// waited for a CPU is `descheduled`, saying how much its statistics
/// cover; a poll that blocked (sleeping over the part covered) and a CPU
/// loop long even at the share of waiting covered stay `long_poll`s.
fn busy_machine() -> Vec<u8> {
    let mut b = StreamBuilder::new(7, 0);
    b.hello("shop", None, false);
    b.thread(0);
    // (name, start, duration, statistics of the part covered: window, on
    // CPU, waiting)
    type Poll<'a> = (&'a str, u64, u64, (u64, u64, u64));
    let polls: [Poll; 3] = [
        ("card-charge", MS, 25 * MS, (4_500_000, 800_000, 3_700_000)),
        (
            "report-export",
            100 * MS,
            60 * MS,
            (5 * MS, 100_000, 1_500_000),
        ),
        (
            "cpu-hog",
            200 * MS,
            119 * MS,
            (10 * MS, 1_600_000, 8_400_000),
        ),
    ];
    for (name, start, d, (window, on_cpu, waiting)) in polls {
        let t = b.spawn(&TaskOpts::named(name), None, start - 1);
        b.enter(t, start);
        // The crossing's half, sampled late: its window is short too.
        let mut crossing = stall(t, start, start + d - window / 2, false);
        crossing.stack = StackState::Off;
        crossing.sched = sched(window / 2, on_cpu / 2, waiting / 2);
        b.stall(crossing);
        b.poll_end(t, start + d, 1);
        let mut end = stall(t, start, start + d + 1, true);
        end.sched = sched(window, on_cpu, waiting);
        b.stall(end);
        b.poll(t, start + d + 10 * MS, start + d + 11 * MS);
    }
    b.flush();
    b.recording()
}

#[test]
fn on_a_busy_machine_a_poll_is_judged_by_the_part_its_statistics_cover() {
    let r = serde_json::to_value(report_of(&busy_machine())).unwrap();
    let d = findings_of(&r, "descheduled");
    assert_eq!(d.len(), 1, "{r:#}");
    assert_eq!(d[0]["tasks"][0]["name"], "card-charge");
    let msg = d[0]["message"].as_str().unwrap();
    assert!(
        msg.contains(
            "took 25.0ms; over the 4.5ms of it its worker's statistics cover (18%), it mostly \
             waited for a CPU (on CPU 18% (kernel 0%), waiting for a CPU 82%, blocked/sleeping \
             0%): judged by that part, the machine was busy, not the code (the rest of the poll \
             is not known)"
        ),
        "{msg}"
    );
    let mut long: Vec<String> = findings_of(&r, "long_poll")
        .iter()
        .map(|f| f["tasks"][0]["name"].as_str().unwrap().to_string())
        .collect();
    long.sort();
    assert_eq!(long, ["cpu-hog", "report-export"], "{r:#}");
    for f in findings_of(&r, "long_poll") {
        let msg = f["message"].as_str().unwrap();
        assert!(msg.contains(": over "), "{msg}");
    }
}
