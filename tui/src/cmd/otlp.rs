//! Sending OTLP over HTTP (protobuf), to the endpoint the standard
//! OpenTelemetry exporter environment names:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full URL traces are posted to |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; traces go to `<base>/v1/traces` (default `http://localhost:4318`) |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_HEADERS` | `key=value,...` (values percent-encoded) sent with every request, e.g. an API key |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` | per request, in ms (default 10000) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | only `http/protobuf` is spoken |
//!
//! Header values are secrets (API keys): never printed or written.

use std::time::Duration;

use awaitscope_collector::export::otlp::OtlpTraces;
use awaitscope_collector::Report;
use awaitscope_wire::FrameReader;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// Largest response body read back (an error message from the receiver).
const MAX_RESPONSE: u64 = 64 * 1024;

/// Where traces go, and what goes with them.
pub struct Endpoint {
    /// The URL traces are posted to.
    pub url: String,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
}

impl Endpoint {
    /// The endpoint the environment names (see the module's table).
    pub fn from_env() -> Result<Endpoint, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(p) =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            if p.trim() != "http/protobuf" {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={p}: only http/protobuf is supported"
                ));
            }
        }
        let url = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => full.trim().to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim().trim_end_matches('/')),
            (None, None) => "http://localhost:4318/v1/traces".to_owned(),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "OTLP endpoint {url:?}: not an http:// or https:// URL"
            ));
        }
        let mut headers = Vec::new();
        for k in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(v) = var(k) {
                for (name, value) in parse_headers(&v).map_err(|e| format!("{k}: {e}"))? {
                    headers.retain(|(n, _): &(String, String)| !n.eq_ignore_ascii_case(&name));
                    headers.push((name, value));
                }
            }
        }
        let timeout_ms = match var("OTEL_EXPORTER_OTLP_TIMEOUT") {
            Some(t) => t
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("OTEL_EXPORTER_OTLP_TIMEOUT={t}: not a number of ms"))?,
            None => 10_000,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(timeout_ms)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Endpoint {
            url,
            headers,
            agent,
        })
    }

    /// Posts one request; an error says what the receiver answered.
    pub fn send(&self, req: &ExportTraceServiceRequest) -> Result<(), String> {
        let body = req.encode_to_vec();
        let mut r = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf");
        for (k, v) in &self.headers {
            r = r.header(k.as_str(), v.as_str());
        }
        let mut resp = r
            .send(&body[..])
            .map_err(|e| format!("OTLP export to {}: {e}", self.url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .unwrap_or_default();
        Err(format!(
            "OTLP export to {}: the receiver answered {status}{}",
            self.url,
            if text.is_empty() {
                String::new()
            } else {
                format!(": {}", text.trim())
            }
        ))
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas,
/// values percent-encoded (the OpenTelemetry specification's format).
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| "expected key=value pairs separated by commas".to_string())?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(format!("bad header name {k:?}"));
        }
        let v = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| format!("header {k}: value is not UTF-8 once decoded"))?;
        if v.chars().any(|c| c.is_control()) {
            return Err(format!("header {k}: value has control characters"));
        }
        out.push((k.to_owned(), v.into_owned()));
    }
    Ok(out)
}

/// `awaitscope report FILE... --format otlp`: the recordings' spans, tasks
/// and `report`'s findings, sent to the environment's endpoint.
pub fn export(files: &[std::path::PathBuf], report: &Report) -> Result<String, String> {
    let endpoint = Endpoint::from_env()?;
    let mut traces = OtlpTraces::new();
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let reader = FrameReader::new(std::io::BufReader::new(file))
            .map_err(|e| format!("{}: {e}", f.display()))?;
        // Damage was already reported by the report: what is before it
        // goes out.
        for frame in reader.map_while(Result::ok) {
            traces.add_frame(&frame);
        }
    }
    let requests = traces.requests(
        &report.findings,
        awaitscope_collector::export::otlp::DEFAULT_BATCH,
    );
    for r in &requests {
        endpoint.send(r)?;
    }
    let mut said = format!(
        "sent {} span(s) and {} finding(s) to {} in {} request(s)",
        traces.span_count(),
        report.findings.len(),
        endpoint.url,
        requests.len()
    );
    if traces.dropped_spans > 0 {
        said.push_str(&format!(
            "; {} span(s) left out past the cap",
            traces.dropped_spans
        ));
    }
    Ok(said)
}

/// Frames queued for `serve --otlp`'s forwarder; past it frames are
/// dropped (their spans are then missing from what is forwarded), never
/// waited for: serve's ingest does not slow down for the backend.
pub const LIVE_QUEUE: usize = 8192;

/// How often `serve --otlp` sends what is settled.
const LIVE_PERIOD: Duration = Duration::from_secs(2);

/// `serve --otlp`: reads the frames serve applies, and every
/// [`LIVE_PERIOD`] sends the spans that ended (once their trace is
/// settled) and the findings made final since (each once, by kind, process
/// and key; see `live_findings`); a last time when `stop` is set.
/// A failed send is logged and its spans are not retried. What it does
/// not send (findings past the most it sends, spans past the most it
/// keeps) is counted in the server's stats and logged as it grows.
pub fn forward_live(
    endpoint: Endpoint,
    frames: std::sync::mpsc::Receiver<awaitscope_collector::ingest::server::TappedFrame>,
    server: awaitscope_collector::ingest::server::ServerHandle,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::RecvTimeoutError;
    let mut traces = OtlpTraces::new();
    let mut next = std::time::Instant::now() + LIVE_PERIOD;
    let mut failures = 0u64;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match frames.recv_timeout(Duration::from_millis(100)) {
            Ok(t) => {
                traces.add_frame(&t.frame);
                if !stopping && std::time::Instant::now() < next {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) if !stopping && std::time::Instant::now() < next => {
                continue
            }
            Err(_) => {}
        }
        // Drains what is queued before the last flush.
        if stopping {
            while let Ok(t) = frames.try_recv() {
                traces.add_frame(&t.frame);
            }
        }
        // Only what is final (a finding that may still be taken back
        // is not told to a backend that cannot take it back).
        let findings =
            server.with_model(|m| awaitscope_collector::export::otlp::live_findings(m, stopping));
        let mut requests = traces.take_finished(awaitscope_collector::export::otlp::DEFAULT_BATCH);
        requests.extend(traces.take_findings(&findings, stopping));
        for r in &requests {
            if let Err(e) = endpoint.send(r) {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!("{e} ({failures} failed request(s) so far)");
                }
            }
        }
        report_unsent(&traces, server.stats());
        if stopping {
            return;
        }
        next = std::time::Instant::now() + LIVE_PERIOD;
    }
}

/// Moves what `traces` did not send into the server's stats, and logs
/// it when it grew past a power of two (the first time, then ever more
/// rarely): a forwarder that stops sending findings says so.
fn report_unsent(traces: &OtlpTraces, stats: &awaitscope_collector::ingest::server::ServerStats) {
    use std::sync::atomic::Ordering;
    let grew = |counter: &std::sync::atomic::AtomicU64, now: u64| {
        let before = counter.swap(now, Ordering::Relaxed);
        // A power of two crossed since the last report.
        now > before && (before == 0 || now.ilog2() > before.ilog2())
    };
    if grew(&stats.otlp_unsent_findings, traces.unsent_findings) {
        tracing::warn!(
            findings = traces.unsent_findings,
            "findings not forwarded over OTLP: past the {} sent (each is sent once), or of a \
             process whose frames did not reach the forwarder",
            awaitscope_collector::export::otlp::MAX_SENT_FINDINGS
        );
    }
    if grew(&stats.otlp_dropped_spans, traces.dropped_spans) {
        tracing::warn!(
            spans = traces.dropped_spans,
            "spans not forwarded over OTLP: past the {} kept",
            awaitscope_collector::export::otlp::MAX_SPANS
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_as_the_specification_writes_them() {
        assert_eq!(
            parse_headers("api-key=s%20cret, x-tenant = team1,").unwrap(),
            [
                ("api-key".to_string(), "s cret".to_string()),
                ("x-tenant".to_string(), "team1".to_string())
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("=v").is_err());
        assert!(parse_headers("k=a%0Ab").is_err());
    }

    #[test]
    fn what_the_forwarder_did_not_send_is_in_the_servers_stats() {
        use std::sync::atomic::Ordering;
        let stats = awaitscope_collector::ingest::server::ServerStats::default();
        let mut t = OtlpTraces::new();
        report_unsent(&t, &stats);
        assert_eq!(stats.otlp_unsent_findings.load(Ordering::Relaxed), 0);
        t.unsent_findings = 3;
        t.dropped_spans = 5;
        report_unsent(&t, &stats);
        assert_eq!(stats.otlp_unsent_findings.load(Ordering::Relaxed), 3);
        assert_eq!(stats.otlp_dropped_spans.load(Ordering::Relaxed), 5);
        t.unsent_findings = 4;
        report_unsent(&t, &stats);
        assert_eq!(stats.otlp_unsent_findings.load(Ordering::Relaxed), 4);
    }
}
