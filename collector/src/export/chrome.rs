//! `--format chrome`: the Chrome JSON trace event format (`{"traceEvents":
//! [...]}`), which ui.perfetto.dev and chrome://tracing open. Simpler and
//! bigger than [`super::perfetto`].
//!
//! Each track is a thread (`tid` = track id) of its process (`pid`), named
//! with `thread_name` metadata; polls and await nodes are complete events
//! (`ph: X`), wakes, spawns, errors, panics and findings instants (`ph: i`),
//! flows `ph: s` / `ph: f` (`bp: e`) pairs. Timestamps are microseconds
//! (with ns decimals) since the first process's start. Track nesting is not
//! expressible; task tracks are sorted by creation (`thread_sort_index`).
//! The size policy is stated in `otherData.size_policy`.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use awaitscope_wire::ProcessKey;

use super::timeline::{Arg, Args, Ev, TimelineSink, TrackKind};
use super::PolicyNote;

/// Default event budget: about 150 bytes per event, ~75 MB of JSON.
pub const DEFAULT_MAX_EVENTS: u64 = 500_000;

struct Open {
    name: String,
    cat: &'static str,
    ts: u64,
    args: String,
}

/// Writes a Chrome JSON trace as it receives timeline events.
pub struct ChromeSink<W: Write> {
    out: W,
    base: Option<u64>,
    first: bool,
    max_events: u64,
    written: u64,
    dropped: u64,
    truncated_at: Option<u64>,
    open: HashMap<u64, Vec<Open>>,
    tracks: HashSet<u64>,
    from: Option<u64>,
    to: Option<u64>,
    /// Flows whose start was written and that have not ended.
    flows: HashSet<u64>,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn args_json(args: &Args) -> String {
    let mut m = serde_json::Map::new();
    for (n, v) in args {
        let v = match v {
            Arg::S(s) => serde_json::Value::String(s.clone()),
            Arg::U(u) => serde_json::Value::from(*u),
        };
        m.insert((*n).to_string(), v);
    }
    serde_json::Value::Object(m).to_string()
}

impl<W: Write> ChromeSink<W> {
    /// A sink writing to `out`.
    pub fn new(out: W, max_events: u64, from: Option<u64>, to: Option<u64>) -> Self {
        Self {
            out,
            base: None,
            first: true,
            max_events,
            written: 0,
            dropped: 0,
            truncated_at: None,
            open: HashMap::new(),
            tracks: HashSet::new(),
            from,
            to,
            flows: HashSet::new(),
        }
    }

    fn us(&mut self, p: ProcessKey, ts: u64) -> String {
        let base = *self.base.get_or_insert(p.start_unix_ns);
        let abs = i128::from(p.start_unix_ns) + i128::from(ts) - i128::from(base);
        let sign = if abs < 0 { "-" } else { "" };
        let a = abs.unsigned_abs();
        format!("{sign}{}.{:03}", a / 1000, a % 1000)
    }

    fn line(&mut self, s: &str) -> io::Result<()> {
        if self.first {
            self.out.write_all(b"{\"traceEvents\":[\n")?;
            self.first = false;
        } else {
            self.out.write_all(b",\n")?;
        }
        self.out.write_all(s.as_bytes())
    }

    /// Ends the flows (arrows) that started earlier and arrive here.
    fn end_flows(&mut self, flows_in: &[u64], pid: u32, track: u64, t: &str) -> io::Result<()> {
        let ended: Vec<u64> = flows_in
            .iter()
            .copied()
            .filter(|f| self.flows.remove(f))
            .collect();
        for f in ended {
            let s = format!(
                "{{\"ph\":\"f\",\"bp\":\"e\",\"name\":\"flow\",\"cat\":\"flow\",\"id\":{f},\"pid\":{pid},\"tid\":{track},\"ts\":{t}}}"
            );
            self.line(&s)?;
        }
        Ok(())
    }

    fn budget(&mut self, ts: u64) -> bool {
        if self.written < self.max_events {
            self.written += 1;
            return true;
        }
        if self.truncated_at.is_none() {
            self.truncated_at = Some(ts);
        }
        self.dropped += 1;
        false
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> TimelineSink for ChromeSink<W> {
    fn event(&mut self, p: ProcessKey, ev: &Ev<'_>) -> io::Result<()> {
        let pid = p.pid;
        match ev {
            Ev::Track(t) => {
                if let Some(parent) = t.parent {
                    if !self.tracks.contains(&parent) {
                        return Ok(());
                    }
                }
                let is_proc = matches!(t.kind, TrackKind::Process { .. });
                if !is_proc && !self.budget(0) {
                    return Ok(());
                }
                self.tracks.insert(t.id);
                let (meta, tid) = if is_proc {
                    ("process_name", 0)
                } else {
                    ("thread_name", t.id)
                };
                let s = format!(
                    "{{\"ph\":\"M\",\"name\":\"{meta}\",\"pid\":{pid},\"tid\":{tid},\"args\":{{\"name\":{}}}}}",
                    json_str(&t.name)
                );
                self.line(&s)?;
                if !is_proc {
                    let s = format!(
                        "{{\"ph\":\"M\",\"name\":\"thread_sort_index\",\"pid\":{pid},\"tid\":{tid},\"args\":{{\"sort_index\":{}}}}}",
                        t.id
                    );
                    self.line(&s)?;
                }
                Ok(())
            }
            Ev::Begin {
                track,
                ts,
                name,
                cat,
                args,
            } => {
                if !self.tracks.contains(track) || !self.budget(*ts) {
                    return Ok(());
                }
                self.open.entry(*track).or_default().push(Open {
                    name: (*name).to_string(),
                    cat,
                    ts: *ts,
                    args: args_json(args),
                });
                Ok(())
            }
            Ev::End { track, ts } => {
                let Some(o) = self.open.get_mut(track).and_then(|s| s.pop()) else {
                    return Ok(());
                };
                let t = self.us(p, o.ts);
                let dur = ts.saturating_sub(o.ts);
                let s = format!(
                    "{{\"ph\":\"X\",\"name\":{},\"cat\":\"{}\",\"pid\":{pid},\"tid\":{track},\"ts\":{t},\"dur\":{}.{:03},\"args\":{}}}",
                    json_str(&o.name),
                    o.cat,
                    dur / 1000,
                    dur % 1000,
                    o.args
                );
                self.line(&s)
            }
            Ev::Complete {
                track,
                start,
                end,
                name,
                cat,
                args,
                flows_in,
            } => {
                if !self.tracks.contains(track) || !self.budget(*start) {
                    return Ok(());
                }
                let t = self.us(p, *start);
                self.end_flows(flows_in, pid, *track, &t)?;
                let dur = end.saturating_sub(*start);
                let s = format!(
                    "{{\"ph\":\"X\",\"name\":{},\"cat\":\"{cat}\",\"pid\":{pid},\"tid\":{track},\"ts\":{t},\"dur\":{}.{:03},\"args\":{}}}",
                    json_str(name),
                    dur / 1000,
                    dur % 1000,
                    args_json(args)
                );
                self.line(&s)
            }
            Ev::Instant {
                track,
                ts,
                name,
                cat,
                args,
                flows_out,
                flows_in,
            } => {
                if !self.tracks.contains(track) || !self.budget(*ts) {
                    return Ok(());
                }
                let t = self.us(p, *ts);
                let s = format!(
                    "{{\"ph\":\"i\",\"s\":\"t\",\"name\":{},\"cat\":\"{cat}\",\"pid\":{pid},\"tid\":{track},\"ts\":{t},\"args\":{}}}",
                    json_str(name),
                    args_json(args)
                );
                self.line(&s)?;
                self.flows.extend(flows_out.iter().copied());
                for f in *flows_out {
                    let s = format!(
                        "{{\"ph\":\"s\",\"name\":\"flow\",\"cat\":\"flow\",\"id\":{f},\"pid\":{pid},\"tid\":{track},\"ts\":{t}}}"
                    );
                    self.line(&s)?;
                }
                self.end_flows(flows_in, pid, *track, &t)?;
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> io::Result<PolicyNote> {
        let note = PolicyNote {
            from_ns: self.from,
            to_ns: self.to,
            max_events: self.max_events,
            written: self.written,
            dropped: self.dropped,
            truncated_at_ns: self.truncated_at,
        };
        if self.first {
            self.out.write_all(b"{\"traceEvents\":[\n")?;
        }
        let other = serde_json::json!({
            "generator": format!("awaitscope {}", env!("CARGO_PKG_VERSION")),
            "size_policy": note.describe(),
            "max_events": note.max_events,
            "written": note.written,
            "dropped": note.dropped,
        });
        write!(
            self.out,
            "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{other}}}\n"
        )?;
        self.out.flush()?;
        Ok(note)
    }
}
