//! The log output of [`crate::init`]: events the `RUST_LOG` filter lets
//! through, printed to stderr in the layout of `tracing_subscriber::fmt`'s
//! default format (`time LEVEL span{fields}:span: target: message fields`;
//! span field strings are shown unquoted).
//!
//! `tracing_subscriber`'s fmt layer needs the registry's span extensions,
//! which awaitscope's span store does not have; this writes the same lines
//! from the store's span nodes. `RUST_LOG` is parsed as
//! `tracing_subscriber`'s `Targets` (`target=level` directives and a bare
//! default level); `EnvFilter`'s span and field directives
//! (`[span{field=1}]=debug`) are not supported here and are skipped with a
//! warning. Use [`crate::builder`] with your own fmt layer for those.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};

use tracing_core::field::{Field, Visit};
use tracing_core::{Event, Level, LevelFilter, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::names;
use crate::span_node::{render_value, SpanNode};

/// What `RUST_LOG` lets through, and how to print it.
pub(crate) struct LogOutput {
    filter: Targets,
    /// The most verbose level any directive enables: events above it (all
    /// of tokio's TRACE waker events, at the default `warn`) are rejected
    /// without matching targets.
    max_level: LevelFilter,
    ansi: bool,
}

impl LogOutput {
    /// From `RUST_LOG` (default `warn`), printing to stderr (with colours
    /// when stderr is a terminal and `NO_COLOR` is not set).
    pub fn from_env() -> Self {
        let spec = std::env::var("RUST_LOG").unwrap_or_default();
        let (filter, skipped) = parse_filter(&spec);
        if !skipped.is_empty() {
            eprintln!(
                "awaitscope: RUST_LOG: skipped directive(s) {} (span and field filters need \
                 `awaitscope::builder()` with a fmt layer of your own)",
                skipped.join(", ")
            );
        }
        let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let max_level = filter
            .iter()
            .map(|(_, level)| level)
            .chain(filter.default_level())
            .max()
            .unwrap_or(LevelFilter::OFF);
        Self {
            filter,
            max_level,
            ansi,
        }
    }

    /// Whether events of this callsite are printed.
    #[inline]
    pub fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= self.max_level && self.filter.would_enable(meta.target(), meta.level())
    }

    /// Prints `event`, inside `spans` (outermost first).
    pub fn write(&self, event: &Event<'_>, spans: &[std::sync::Arc<SpanNode>]) {
        thread_local! {
            // The line's buffer, reused from line to line (as fmt's layer
            // does): printing a warning allocates nothing once warm.
            static LINE: std::cell::RefCell<String> = const {
                std::cell::RefCell::new(String::new())
            };
        }
        let print = |line: &mut String| {
            line.clear();
            self.format(line, event, spans);
            // One write of the whole line, so lines of threads do not mix;
            // an error (stderr closed) is not the program's problem.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        };
        // A field whose `Debug` logs while its line is formatted, or a
        // thread that is exiting, gets a buffer of its own.
        let reused = LINE.try_with(|l| l.try_borrow_mut().map(|mut l| print(&mut l)).is_ok());
        if reused != Ok(true) {
            print(&mut String::new());
        }
    }

    fn format(&self, out: &mut String, event: &Event<'_>, spans: &[std::sync::Arc<SpanNode>]) {
        out.reserve(128);
        let meta = event.metadata();
        if SystemTime.format_time(&mut Writer::new(out)).is_ok() {
            out.push(' ');
        }
        let level = meta.level();
        let colour = match *level {
            Level::TRACE => "35",
            Level::DEBUG => "34",
            Level::INFO => "32",
            Level::WARN => "33",
            _ => "31",
        };
        // Right-aligned in five columns, as fmt does (" INFO", "ERROR").
        if self.ansi {
            let _ = write!(out, "\x1b[{colour}m{level:>5}\x1b[0m ");
        } else {
            let _ = write!(out, "{level:>5} ");
        }
        // As fmt under a per-layer `RUST_LOG` filter, the spans the filter
        // disables (tokio's TRACE task spans, at the default `warn`) are
        // not shown.
        let shown = spans
            .iter()
            .filter(|n| self.filter.would_enable(n.meta.target(), n.meta.level()));
        let mut any = false;
        for node in shown {
            any = true;
            out.push_str(node.meta.name());
            let fields = node.fields.lock().unwrap_or_else(|e| e.into_inner());
            if !fields.is_empty() {
                out.push('{');
                let names = node.meta.fields();
                for (i, f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    let name = names
                        .iter()
                        .nth(usize::from(f.index))
                        .map_or("?", |n| n.name());
                    let _ = write!(out, "{name}={}", render_value(&f.value));
                }
                out.push('}');
            }
            out.push(':');
        }
        if any {
            out.push(' ');
        }
        let _ = write!(out, "{}: ", meta.target());
        let mut v = EventVisitor { out, first: true };
        event.record(&mut v);
        out.push('\n');
    }
}

/// Parses `RUST_LOG` directive by directive (see
/// [`crate::filter::parse_directives`]). Empty: `warn`.
fn parse_filter(spec: &str) -> (Targets, Vec<String>) {
    crate::filter::parse_directives(spec, "warn")
}

/// Writes an event's fields: the message first, then `name=value`.
struct EventVisitor<'a> {
    out: &'a mut String,
    first: bool,
}

impl EventVisitor<'_> {
    fn sep(&mut self) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
    }
}

impl Visit for EventVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name().starts_with(names::LOG_FIELD_PREFIX) {
            return;
        }
        self.sep();
        if field.name() == names::MESSAGE {
            self.out.push_str(value);
        } else {
            let _ = write!(self.out, "{}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if name.starts_with(names::LOG_FIELD_PREFIX) {
            // `tracing-log`'s metadata of a `log` record: fmt hides it too.
            return;
        }
        self.sep();
        if name == names::MESSAGE {
            let _ = write!(self.out, "{value:?}");
        } else {
            let _ = write!(self.out, "{name}={value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_keeps_what_targets_parses() {
        let (f, skipped) = parse_filter("warn,my_app=debug,[req{id=1}]=trace");
        assert_eq!(skipped, vec!["[req{id=1}]=trace".to_owned()]);
        assert!(f.would_enable("my_app::db", &Level::DEBUG));
        assert!(!f.would_enable("my_app::db", &Level::TRACE));
        assert!(f.would_enable("other", &Level::WARN));
        assert!(!f.would_enable("other", &Level::INFO));
    }

    #[test]
    fn empty_rust_log_is_warn() {
        let (f, skipped) = parse_filter("");
        assert!(skipped.is_empty());
        assert!(f.would_enable("any", &Level::WARN));
        assert!(!f.would_enable("any", &Level::INFO));
    }
}
