//! Subcommands.

pub mod demo;
pub mod otlp;
pub mod record;
pub mod record_console;
pub mod replay;
pub mod report;
pub mod serve;
pub mod tui;

use awaitscope_collector::FindingKind;

/// Exit code: a finding of a `--fail-on` kind exists.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: bad input or usage.
pub const EXIT_BAD_INPUT: u8 = 2;

/// The kinds of `--fail-on`.
#[derive(Clone, Debug, PartialEq)]
pub struct FailOn(pub Vec<FindingKind>);

/// Parses `--fail-on`: a comma-separated list of finding kinds, or `any`.
pub fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    let mut kinds = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "any" {
            return Ok(FailOn(FindingKind::ALL.to_vec()));
        }
        match FindingKind::parse(part) {
            Some(k) => kinds.push(k),
            None => {
                let all: Vec<_> = FindingKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "unknown finding kind `{part}` (expected `any` or some of: {})",
                    all.join(", ")
                ));
            }
        }
    }
    if kinds.is_empty() {
        return Err("no finding kind given".into());
    }
    Ok(FailOn(kinds))
}

/// Logs to stderr at `default` level unless `RUST_LOG` says otherwise.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_on_parses_lists_and_any() {
        assert_eq!(
            parse_fail_on("deadlock, lost_waker").unwrap().0,
            vec![FindingKind::Deadlock, FindingKind::LostWaker]
        );
        assert_eq!(
            parse_fail_on("any").unwrap().0.len(),
            FindingKind::ALL.len()
        );
        // A poll that waited for a CPU is not a long poll: CI can fail on
        // one and not the other.
        assert_eq!(
            parse_fail_on("long_poll").unwrap().0,
            vec![FindingKind::LongPoll]
        );
        assert_eq!(
            parse_fail_on("descheduled").unwrap().0,
            vec![FindingKind::Descheduled]
        );
        assert!(parse_fail_on("nope")
            .unwrap_err()
            .contains("unknown finding kind"));
        assert!(parse_fail_on(",").is_err());
    }
}
