//! Spans, callsites, fields and source locations.

use awaitscope_wire::{names, Callsite, Field, SpanClass, SpanId, Value};
use serde::{Deserialize, Serialize};

/// A source location.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// Source file.
    pub file: String,
    /// Line in [`Location::file`], counted from 1.
    pub line: u32,
    /// Column, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub col: Option<u32>,
}

impl Location {
    /// Appends `file:line[:col]`, as [`Location`]'s `Display` writes it,
    /// without the formatting machinery (task labels and group keys are
    /// made for every finding).
    pub fn push_to(&self, s: &mut String) {
        use crate::units::push_decimal;
        s.push_str(&self.file);
        s.push(':');
        push_decimal(s, u64::from(self.line));
        if let Some(c) = self.col {
            s.push(':');
            push_decimal(s, u64::from(c));
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.col {
            Some(c) => write!(f, "{}:{}:{}", self.file, self.line, c),
            None => write!(f, "{}:{}", self.file, self.line),
        }
    }
}

/// A live (not yet closed) span that is not a task.
#[derive(Clone, Debug)]
pub struct Span {
    /// Callsite id.
    pub callsite: u32,
    /// What the span stands for.
    pub class: SpanClass,
    /// The span's explicit or contextual parent; `None` for a root span.
    pub parent: Option<SpanId>,
    /// Task being polled when the span was created.
    pub ctx_task: Option<SpanId>,
    /// When the span was created, ns since the process's start.
    pub created: u64,
    /// First time the span was entered.
    pub first_entered: Option<u64>,
    /// Recorded fields.
    pub fields: Vec<Field>,
    /// Label of a resource (`concrete_type`) or async op (`source`).
    pub label: Option<std::sync::Arc<str>>,
}

/// The value of field `name` among `fields` of `callsite`.
pub fn field<'a>(
    callsite: Option<&Callsite>,
    fields: &'a [Field],
    name: &str,
) -> Option<&'a Value> {
    let cs = callsite?;
    let idx = cs.fields.iter().position(|f| f == name)? as u16;
    fields
        .iter()
        .rev()
        .find(|f| f.index == idx)
        .map(|f| &f.value)
}

/// The values of several fields at once: for each of `names`, what
/// [`field`] returns for it, in one pass over the callsite's names and one
/// over `fields`.
pub fn fields_of<'a, const N: usize>(
    callsite: Option<&Callsite>,
    fields: &'a [Field],
    names: [&str; N],
) -> [Option<&'a Value>; N] {
    values_at(fields, field_indices(callsite, names))
}

/// The index of each of `names` among the fields of `callsite`: its first
/// position there; `None` for a name it does not have (or no callsite).
/// What [`values_at`] takes, to look up the same names in the fields of
/// many spans of one callsite without comparing names each time.
pub fn field_indices<const N: usize>(
    callsite: Option<&Callsite>,
    names: [&str; N],
) -> [Option<u16>; N] {
    let mut idx = [None::<u16>; N];
    let Some(cs) = callsite else {
        return idx;
    };
    let mut missing = N;
    for (i, n) in cs.fields.iter().enumerate() {
        if let Some(k) = names.iter().position(|w| *w == n.as_str()) {
            if idx[k].is_none() {
                idx[k] = Some(i as u16);
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
    }
    idx
}

/// The last value recorded in `fields` under each index of `idx` (see
/// [`field_indices`]).
pub fn values_at<const N: usize>(fields: &[Field], idx: [Option<u16>; N]) -> [Option<&Value>; N] {
    let mut out = [None; N];
    for f in fields.iter().rev() {
        for k in 0..N {
            if out[k].is_none() && idx[k] == Some(f.index) {
                out[k] = Some(&f.value);
            }
        }
    }
    out
}

/// A value as a string (see [`field_str`]).
pub fn as_str(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

/// A value as an unsigned integer (see [`field_u64`]).
pub fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::U64(v) => Some(*v),
        Value::I64(v) if *v >= 0 => Some(*v as u64),
        Value::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string field.
pub fn field_str<'a>(
    callsite: Option<&Callsite>,
    fields: &'a [Field],
    name: &str,
) -> Option<&'a str> {
    as_str(field(callsite, fields, name))
}

/// An unsigned integer field (non-negative signed values accepted).
pub fn field_u64(callsite: Option<&Callsite>, fields: &[Field], name: &str) -> Option<u64> {
    as_u64(field(callsite, fields, name))
}

/// A boolean field.
pub fn field_bool(callsite: Option<&Callsite>, fields: &[Field], name: &str) -> Option<bool> {
    match field(callsite, fields, name)? {
        Value::Bool(b) => Some(*b),
        Value::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// `loc.file`/`loc.line`/`loc.col` fields as a location.
pub fn loc_fields(callsite: Option<&Callsite>, fields: &[Field]) -> Option<Location> {
    let file = field_str(callsite, fields, names::LOC_FILE)?;
    let line = field_u64(callsite, fields, names::LOC_LINE)?;
    Some(Location {
        file: file.to_string(),
        line: line as u32,
        col: field_u64(callsite, fields, names::LOC_COL).map(|c| c as u32),
    })
}

/// The callsite's own file and line as a location.
pub fn callsite_location(callsite: Option<&Callsite>) -> Option<Location> {
    let cs = callsite?;
    Some(Location {
        file: cs.file.clone()?,
        line: cs.line?,
        col: None,
    })
}

/// Merges `new` fields into `fields`: a field with the same index is replaced.
pub fn merge_fields(fields: &mut Vec<Field>, new: &[Field]) {
    if fields.is_empty() {
        // A new span's fields: sized once rather than grown.
        fields.reserve_exact(new.len().min(awaitscope_wire::limits::MAX_FIELDS));
    }
    for f in new {
        if let Some(i) = fields.iter().position(|o| o.index == f.index) {
            fields[i].value = f.value.clone();
        } else if fields.len() < awaitscope_wire::limits::MAX_FIELDS {
            fields.push(f.clone());
        }
    }
}

/// The fields of a new span, `new`, written into `fields` over what it
/// holds (a vector of another span's fields, whose strings are reused):
/// what [`merge_fields`] makes of `new` in an empty vector.
pub fn set_fields(fields: &mut Vec<Field>, new: &[Field]) {
    let mut n = 0;
    for f in new {
        if let Some(i) = fields[..n].iter().position(|o| o.index == f.index) {
            set_value(&mut fields[i].value, &f.value);
        } else if n < awaitscope_wire::limits::MAX_FIELDS {
            match fields.get_mut(n) {
                Some(o) => {
                    o.index = f.index;
                    set_value(&mut o.value, &f.value);
                }
                None => fields.push(f.clone()),
            }
            n += 1;
        }
    }
    fields.truncate(n);
}

/// `v` made `new`, a string written over a string (keeping its allocation).
fn set_value(v: &mut Value, new: &Value) {
    match (v, new) {
        (Value::Str(s), Value::Str(new)) => s.clone_from(new),
        (v, new) => *v = new.clone(),
    }
}

/// Renders a value for display.
pub fn value_string(v: &Value) -> String {
    match v {
        Value::I64(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::F64(v) => v.to_string(),
        Value::Bool(v) => v.to_string(),
        Value::Str(s) => s.clone(),
    }
}

/// Converts a value to JSON.
pub fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::I64(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::F64(v) => serde_json::Number::from_f64(*v)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Bool(v) => (*v).into(),
        Value::Str(s) => s.clone().into(),
    }
}
