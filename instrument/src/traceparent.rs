//! W3C trace context (`traceparent`): a [`Context`](crate::Context) crossing
//! a process boundary.
//!
//! The header is `version-traceid-parentid-flags` in lowercase hex
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>). Parsing and
//! formatting are written here rather than taken from the `opentelemetry`
//! crate: they are a few dozen lines, and every instrumented program would
//! otherwise build OpenTelemetry's API whether it uses it or not. With the
//! `opentelemetry` feature, the ids of a span that `tracing-opentelemetry`
//! follows are OpenTelemetry's own ([`otel`]).
//!
//! Without OpenTelemetry, awaitscope assigns the ids itself, stable for the
//! life of the span: a span's id mixes its awaitscope id with a random
//! per-process salt (so two processes' span 7 differ), and its trace is that
//! of the root of its causal chain (across spawns and in-process queues), or
//! the trace a context taken from a `traceparent` continues.

use std::fmt;
use std::sync::OnceLock;

use awaitscope_wire::{SpanClass, Value};

use crate::names;
use crate::span_node::SpanNode;
/// Name of the field of a context span (`awaitscope.context`) that holds
/// the `traceparent` it continues, when it came from another process.
pub(crate) const FIELD: &str = awaitscope_wire::names::TRACEPARENT;

/// The sampled flag of `trace-flags`.
pub(crate) const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the ids of the parent span in another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TraceParent {
    /// Trace id, never all zero.
    pub trace_id: [u8; 16],
    /// The parent span's id, never all zero.
    pub span_id: [u8; 8],
    /// `trace-flags` (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value, following the W3C rules: two
    /// lowercase hex digits of version (`ff` is invalid), then for version
    /// `00` exactly `-` 32 hex `-` 16 hex `-` 2 hex; a later version may
    /// append `-` and more, which is ignored. All-zero ids are invalid,
    /// uppercase hex is invalid. Surrounding spaces and tabs (optional
    /// whitespace of an HTTP header) are allowed.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']).as_bytes();
        if s.len() < 55 {
            return None;
        }
        let version = hex_byte(&s[0..2])?;
        if version == 0xff {
            return None;
        }
        match version {
            0 if s.len() != 55 => return None,
            // A future version may add fields after a dash.
            _ if s.len() > 55 && s[55] != b'-' => return None,
            _ => {}
        }
        if s[2] != b'-' || s[35] != b'-' || s[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&s[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&s[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&s[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the sampled flag is set.
    #[cfg(test)]
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

impl fmt::Display for TraceParent {
    /// The header value, version `00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.span_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// Two lowercase hex digits.
fn hex_byte(d: &[u8]) -> Option<u8> {
    let v = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(v(d[0])? << 4 | v(d[1])?)
}

/// A random salt for this process's ids, drawn once (from the standard
/// library's randomly keyed hasher: no extra dependency for 64 bits).
fn salt() -> u64 {
    static SALT: OnceLock<u64> = OnceLock::new();
    *SALT.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The W3C span id awaitscope gives the span with awaitscope id `id`
/// (never zero: the mix is a bijection, and the salt's image of a span id
/// is zero for at most one id, which is then moved).
pub(crate) fn span_id_of(id: u64) -> [u8; 8] {
    let v = mix(id ^ salt());
    (if v == 0 { 1 } else { v }).to_be_bytes()
}

/// The trace id awaitscope gives a trace rooted at span `root`.
pub(crate) fn trace_id_of_root(root: u64) -> [u8; 16] {
    let hi = mix(root ^ salt().rotate_left(17));
    let lo = mix(hi ^ root);
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&hi.to_be_bytes());
    t[8..].copy_from_slice(&lo.to_be_bytes());
    if t == [0; 16] {
        t[15] = 1;
    }
    t
}

/// The `traceparent` a context span (`awaitscope.context`) continues, if it
/// came from another process.
pub(crate) fn remote_of(node: &SpanNode) -> Option<TraceParent> {
    if node.class != SpanClass::User || node.meta.target() != names::CONTEXT_TARGET {
        return None;
    }
    match node.field(FIELD)? {
        Value::Str(s) => TraceParent::parse(&s),
        _ => None,
    }
}

/// The ids awaitscope gives `node`'s span: the trace of the root of its
/// causal chain (or the remote trace a context in it continues), and its
/// own span id.
pub(crate) fn ids_of(node: &SpanNode) -> ([u8; 16], [u8; 8]) {
    let span_id = span_id_of(node.id);
    let mut root = node.id;
    let mut cur: Option<&SpanNode> = Some(node);
    // Guards against a (malformed) cycle of links.
    let mut budget = 10_000;
    while let Some(n) = cur {
        budget -= 1;
        if budget == 0 {
            break;
        }
        if let Some(remote) = remote_of(n) {
            return (remote.trace_id, span_id);
        }
        // `Runtime::block_on`'s pseudo-task is the program, not a request.
        if n.class == SpanClass::Task
            && n.field(names::KIND) == Some(Value::Str(names::KIND_BLOCK_ON.into()))
        {
            break;
        }
        root = n.id;
        cur = match n.class {
            SpanClass::Task => n.link.as_deref(),
            _ => n.link.as_deref().or(n.parent.as_deref()),
        };
    }
    (trace_id_of_root(root), span_id)
}

/// OpenTelemetry's ids of the current span, when `tracing-opentelemetry`'s
/// layer follows it (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    /// The current span's OpenTelemetry context, if it has a valid one.
    pub fn current() -> Option<TraceParent> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// Makes `span` a child of the remote span `parent` for OpenTelemetry
    /// (ignored when no `tracing-opentelemetry` layer follows it).
    pub fn set_parent(span: &tracing::Span, parent: &TraceParent) {
        let sc = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_spec_example() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.span_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        assert_eq!(TraceParent::parse(&format!(" {GOOD}\t")), Some(tp));
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        let bad = [
            "",
            "00",
            // version ff is invalid
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // lengths
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            // version 00 has nothing after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // separators and digits
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // a future version's extra part must follow a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // multi-byte characters where hex digits should be
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for b in bad {
            assert_eq!(TraceParent::parse(b), None, "{b:?}");
        }
    }

    #[test]
    fn a_future_version_is_read_for_its_known_fields() {
        let tp = TraceParent::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next",
        )
        .unwrap();
        assert!(!tp.sampled());
        // Written back as version 00.
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn assigned_ids_are_never_zero_and_differ_by_span() {
        for id in 0..1000 {
            assert_ne!(span_id_of(id), [0; 8]);
            assert_ne!(trace_id_of_root(id), [0; 16]);
        }
        assert_ne!(span_id_of(1), span_id_of(2));
        assert_eq!(span_id_of(5), span_id_of(5));
    }
}
