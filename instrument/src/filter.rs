//! Filters in `RUST_LOG` syntax: the span filter `AWAITSCOPE_SPANS` (which
//! spans the capture keeps) and the log output's `RUST_LOG`.
//!
//! Both are parsed as `tracing_subscriber`'s [`Targets`] (`target=level`
//! directives and a bare default level), directive by directive: those
//! `Targets` does not understand (`EnvFilter`'s span and field directives,
//! `[span{field=1}]=debug`) are skipped and returned, for a warning.
//! Filtering by target and level is what can be decided once per callsite,
//! which is the point: a span the filter rejects is disabled at its
//! callsite and costs what it costs without a subscriber.

use std::str::FromStr;

use tracing_core::{LevelFilter, Metadata};
use tracing_subscriber::filter::Targets;

use crate::names;

/// Parses `spec` directive by directive: the ones `Targets` understands are
/// kept, the others returned. With none kept, `default` (a directive) is
/// the filter.
pub(crate) fn parse_directives(spec: &str, default: &str) -> (Targets, Vec<String>) {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if Targets::from_str(d).is_ok() && !d.contains('[') {
            kept.push(d);
        } else {
            skipped.push(d.to_owned());
        }
    }
    if kept.is_empty() {
        kept.push(default);
    }
    let filter = Targets::from_str(&kept.join(","))
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::WARN));
    (filter, skipped)
}

/// Which spans the capture keeps: `AWAITSCOPE_SPANS`, in `RUST_LOG` syntax
/// (`target=level` directives and a default level); unset or empty, every
/// span. tokio's task spans are always kept (awaitscope's tasks are made of
/// them); everything else, the application's spans and tokio's resource
/// spans included, is kept only if the filter enables its target and level.
#[derive(Clone, Debug, Default)]
pub(crate) struct SpanFilter {
    /// `None`: every span.
    targets: Option<Targets>,
}

impl SpanFilter {
    /// Every span.
    pub fn all() -> Self {
        Self::default()
    }

    /// From a spec in `RUST_LOG` syntax; empty: every span. Directives
    /// `Targets` cannot read are skipped and returned (nothing is kept
    /// when none is left: `off`).
    pub fn parse(spec: &str) -> (Self, Vec<String>) {
        if spec.trim().is_empty() {
            return (Self::all(), Vec::new());
        }
        let (targets, skipped) = parse_directives(spec, "off");
        (
            Self {
                targets: Some(targets),
            },
            skipped,
        )
    }

    /// From `AWAITSCOPE_SPANS`, saying on stderr what it skipped.
    pub fn from_env() -> Self {
        let spec = std::env::var("AWAITSCOPE_SPANS").unwrap_or_default();
        let (filter, skipped) = Self::parse(&spec);
        if !skipped.is_empty() {
            eprintln!(
                "awaitscope: AWAITSCOPE_SPANS: skipped directive(s) {} (only `target=level` \
                 directives and a default level are supported)",
                skipped.join(", ")
            );
        }
        filter
    }

    /// Whether spans of the callsite `meta` (a span callsite) are kept.
    pub fn keeps(&self, meta: &Metadata<'_>) -> bool {
        let Some(targets) = &self.targets else {
            return true;
        };
        let task = meta.name() == names::SPAWN_SPAN
            && (meta.target().starts_with(names::TOKIO_TARGET_PREFIX)
                || meta.target() == names::TASK_TARGET);
        task || targets.would_enable(meta.target(), meta.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_it_cannot_read_are_skipped() {
        let (f, skipped) = parse_directives("warn,my_app=debug,[req{id=1}]=trace", "warn");
        assert_eq!(skipped, vec!["[req{id=1}]=trace".to_owned()]);
        assert!(f.would_enable("my_app::db", &tracing_core::Level::DEBUG));
        assert!(!f.would_enable("other", &tracing_core::Level::INFO));
        let (f, skipped) = parse_directives("", "off");
        assert!(skipped.is_empty());
        assert!(!f.would_enable("anything", &tracing_core::Level::ERROR));
    }
}
