//! Configuration from the environment.

use std::path::PathBuf;
use std::time::Duration;

/// Default address of the collector (`awaitscope serve`, or the TUI).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6670";

/// What `AWAITSCOPE`, `AWAITSCOPE_ADDR`, `AWAITSCOPE_RECORD` and
/// `AWAITSCOPE_TOKEN` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EnvConfig {
    /// `AWAITSCOPE=off` (or `0`, `false`, `no`): install nothing.
    pub enabled: bool,
    /// `AWAITSCOPE_ADDR`: collector to stream to; `off` or empty: no stream.
    pub addr: Option<String>,
    /// `AWAITSCOPE_RECORD`: recording file to write; `{pid}` in it is
    /// replaced by the process id (one file per process when a command
    /// starts several instrumented processes).
    pub record: Option<PathBuf>,
    /// `AWAITSCOPE_TOKEN`: token to present to a collector that needs one.
    pub token: Option<String>,
    /// `AWAITSCOPE_LONG_POLL` (`25ms`, `1s`, `500us`; a bare number is
    /// milliseconds): the stall threshold, when set and valid.
    pub long_poll: Option<Duration>,
    /// `AWAITSCOPE_STACKS=off` (or `0`, `false`, `no`): no native stacks.
    pub stacks: bool,
    /// `AWAITSCOPE_WHOLE_TREE` (a duration as `AWAITSCOPE_LONG_POLL`): a
    /// poll at least this long sends its await tree with the spans that
    /// closed during it, when set and valid.
    pub whole_tree: Option<Duration>,
}

impl EnvConfig {
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let off = |v: &str| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        };
        let enabled = var("AWAITSCOPE").is_none_or(|v| !off(&v));
        let addr = match var("AWAITSCOPE_ADDR") {
            Some(v) if off(&v) || v.trim().is_empty() => None,
            Some(v) => Some(v.trim().to_owned()),
            None => Some(DEFAULT_ADDR.to_owned()),
        };
        let record = var("AWAITSCOPE_RECORD")
            .filter(|v| !v.trim().is_empty())
            .map(|v| PathBuf::from(v.replace("{pid}", &std::process::id().to_string())));
        let token = var("AWAITSCOPE_TOKEN").filter(|v| !v.is_empty());
        let long_poll = var("AWAITSCOPE_LONG_POLL").and_then(|v| parse_duration(&v));
        let stacks = var("AWAITSCOPE_STACKS").is_none_or(|v| !off(&v));
        let whole_tree = var("AWAITSCOPE_WHOLE_TREE").and_then(|v| parse_duration(&v));
        Self {
            enabled,
            addr,
            record,
            token,
            long_poll,
            stacks,
            whole_tree,
        }
    }
}

/// A duration as `AWAITSCOPE_LONG_POLL` gives it: a number with a unit
/// (`ns`, `us`, `ms`, `s`), milliseconds without one.
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let ns = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "" | "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| Duration::from_nanos((n * ns) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> EnvConfig {
        EnvConfig::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_stream_to_loopback() {
        let c = cfg(&[]);
        assert!(c.enabled);
        assert_eq!(c.addr.as_deref(), Some("127.0.0.1:6670"));
        assert_eq!(c.record, None);
        assert_eq!(c.long_poll, None);
        assert!(c.stacks);
    }

    #[test]
    fn long_poll_and_stacks() {
        let ms = Duration::from_millis;
        assert_eq!(
            cfg(&[("AWAITSCOPE_LONG_POLL", "25ms")]).long_poll,
            Some(ms(25))
        );
        assert_eq!(
            cfg(&[("AWAITSCOPE_LONG_POLL", "1.5s")]).long_poll,
            Some(ms(1500))
        );
        assert_eq!(
            cfg(&[("AWAITSCOPE_LONG_POLL", "40")]).long_poll,
            Some(ms(40))
        );
        assert_eq!(
            cfg(&[("AWAITSCOPE_LONG_POLL", "500us")]).long_poll,
            Some(Duration::from_micros(500))
        );
        assert_eq!(cfg(&[("AWAITSCOPE_LONG_POLL", "soon")]).long_poll, None);
        assert_eq!(
            cfg(&[("AWAITSCOPE_WHOLE_TREE", "100ms")]).whole_tree,
            Some(Duration::from_millis(100))
        );
        assert_eq!(cfg(&[]).whole_tree, None);
        assert!(!cfg(&[("AWAITSCOPE_STACKS", "off")]).stacks);
        assert!(cfg(&[("AWAITSCOPE_STACKS", "on")]).stacks);
    }

    #[test]
    fn off_and_overrides() {
        assert!(!cfg(&[("AWAITSCOPE", "off")]).enabled);
        assert!(!cfg(&[("AWAITSCOPE", "0")]).enabled);
        assert!(cfg(&[("AWAITSCOPE", "on")]).enabled);
        assert_eq!(cfg(&[("AWAITSCOPE_ADDR", "off")]).addr, None);
        assert_eq!(
            cfg(&[("AWAITSCOPE_ADDR", "127.0.0.1:9")]).addr.as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(
            cfg(&[("AWAITSCOPE_RECORD", "/tmp/x.rec")]).record,
            Some(PathBuf::from("/tmp/x.rec"))
        );
        assert_eq!(
            cfg(&[("AWAITSCOPE_RECORD", "/tmp/run-{pid}.rec")]).record,
            Some(PathBuf::from(format!(
                "/tmp/run-{}.rec",
                std::process::id()
            )))
        );
    }
}
