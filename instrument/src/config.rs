//! Configuration from the environment.

use std::path::PathBuf;

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
        Self {
            enabled,
            addr,
            record,
            token,
        }
    }
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
