//! Logs and traces.
//!
//! Log lines go to standard error, as text or JSON. Traces follow letters: a letter is sampled
//! when its `ce_traceparent` says sampled or by `tracing.sample_ratio`, and only while spans
//! are exported (`tracing.otlp_endpoint`). A sampled letter gets a span per stage (the
//! router's, a retry's, a replay's) as the child of the trace context it came with, and its
//! outputs carry a `ce_traceparent` naming that span. An unsampled letter costs one look at its
//! headers and one random number: no span, no allocation, and its outputs keep its
//! `ce_traceparent` as it came.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{redact_url, LogFormat, TracingConfig};
use crate::source::LetterHeaders;
use pigeon_sdk::header;
pub use pigeon_sdk::trace::{TraceParent, TARGET};

/// Letters whose random draw is below this are sampled; 0 while traces are off.
static THRESHOLD: AtomicU64 = AtomicU64::new(0);
/// `u64::MAX` + 1 as a float: the scale of [`THRESHOLD`].
const SCALE: f64 = 18_446_744_073_709_551_616.0;
/// Whether spans are recorded at all (an exporter runs).
static ON: AtomicBool = AtomicBool::new(false);

/// Turns letter traces on, sampling `ratio` of the letters that do not say sampled themselves.
pub fn sample(ratio: f64) {
    let threshold = if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        // In range: 0 < ratio < 1.
        (ratio * SCALE) as u64
    } else {
        0
    };
    THRESHOLD.store(threshold, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
}

/// Turns letter traces off (nothing is sampled).
pub fn stop_sampling() {
    ON.store(false, Ordering::Relaxed);
    THRESHOLD.store(0, Ordering::Relaxed);
}

/// A letter chosen to be traced, and the trace context it came with (`None`: a new trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampled(pub Option<TraceParent>);

/// Whether to trace the letter whose headers are `input`: its `ce_traceparent` says sampled,
/// or the ratio draws it. A malformed `ce_traceparent` counts as none.
#[inline]
pub fn sampled(input: &LetterHeaders<'_>) -> Option<Sampled> {
    if !ON.load(Ordering::Relaxed) {
        return None;
    }
    let value = input.iter().find(|h| h.is(header::TRACEPARENT)).and_then(|h| h.value);
    let parent_says = value.is_some_and(pigeon_sdk::trace::says_sampled);
    if !parent_says && !drawn(THRESHOLD.load(Ordering::Relaxed)) {
        return None;
    }
    Some(Sampled(value.and_then(TraceParent::parse)))
}

/// One draw of a per-thread xorshift generator against `threshold`.
fn drawn(threshold: u64) -> bool {
    if threshold == 0 {
        return false;
    }
    if threshold == u64::MAX {
        return true;
    }
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            use std::hash::{BuildHasher, Hasher};
            // A per-thread seed; never zero (xorshift would stay at zero).
            x = std::collections::hash_map::RandomState::new().build_hasher().finish() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x < threshold
    })
}

/// Where a letter is, for its span.
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    /// The pigeon (or pigeons, comma-separated) taking it.
    pub pigeon: &'a str,
    /// The topic it was read from.
    pub topic: &'a str,
    /// Its partition (-1 for a letter not read from Kafka).
    pub partition: i32,
    /// Its offset (-1 likewise).
    pub offset: i64,
    /// The letter id.
    pub letter_id: &'a str,
}

/// The span of one stage of a sampled letter, and the trace context its outputs carry.
#[derive(Debug)]
pub struct LetterSpan {
    span: Span,
    /// `ce_traceparent` of the letters sent in this span: the same trace, this span the parent.
    pub traceparent: TraceParent,
}

impl LetterSpan {
    /// Starts the `stage` span of a sampled letter, the child of the context it came with.
    /// `None` when no exporter records it (its outputs then keep the letter's context).
    pub fn start(stage: &'static str, sampled: Sampled, at: At<'_>) -> Option<Self> {
        let span = tracing::info_span!(
            target: TARGET,
            "letter",
            otel.name = stage,
            pigeon = at.pigeon,
            topic = at.topic,
            partition = at.partition,
            offset = at.offset,
            letter_id = at.letter_id,
        );
        if span.is_disabled() {
            return None;
        }
        pigeon_sdk::trace::set_parent(&span, sampled.0);
        let traceparent = pigeon_sdk::trace::traceparent_of(&span)?;
        Some(Self { span, traceparent: TraceParent { flags: TraceParent::SAMPLED, ..traceparent } })
    }

    /// The span.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

/// `headers` of a letter a stage sends again as it was (a retry, a replay to a topic): when the
/// letter is sampled, with the `stage` span's `ce_traceparent`; as they were otherwise.
pub fn retrace(
    stage: &'static str,
    headers: rdkafka::message::OwnedHeaders,
    at: At<'_>,
) -> rdkafka::message::OwnedHeaders {
    let span = sampled(&LetterHeaders::of_headers(&headers)).and_then(|s| LetterSpan::start(stage, s, at));
    match span {
        Some(span) => with_traceparent(&headers, &span.traceparent),
        None => headers,
    }
}

/// `headers` with `ce_traceparent` set to `traceparent` (every other header as it was).
pub fn with_traceparent(
    headers: &rdkafka::message::OwnedHeaders,
    traceparent: &TraceParent,
) -> rdkafka::message::OwnedHeaders {
    use pigeon_headers::RawHeaders;
    use rdkafka::message::Headers;
    let encoded = traceparent.encode();
    let mut out = rdkafka::message::OwnedHeaders::new_with_capacity(headers.count() + 1);
    for h in headers.raw().filter(|h| !h.is(header::TRACEPARENT)) {
        out = pigeon_headers::add(out, h.name, h.value);
    }
    out.insert(rdkafka::message::Header { key: header::TRACEPARENT, value: Some(encoded.as_bytes()) })
}

/// What runs until the process ends: the span exporter, flushed and stopped on drop.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            stop_sampling();
            if let Err(e) = provider.shutdown() {
                eprintln!("traces: the exporter did not stop cleanly: {e}");
            }
        }
    }
}

/// Installs the process's logging (`format`, filtered by `RUST_LOG`, `info` by default) and,
/// when `export` and the configuration name an OTLP endpoint, the span exporter.
pub fn init(format: LogFormat, tracing: &TracingConfig, export: bool) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours only on a terminal: log files and collectors get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed()
        }
    };
    let mut layers = vec![logs];
    let mut telemetry = Telemetry::default();
    if let (true, Some(endpoint)) = (export, &tracing.otlp_endpoint) {
        let provider = provider(endpoint, &tracing.service_name)?;
        let tracer = provider.tracer("pigeon");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.target() == TARGET))
                .boxed(),
        );
        telemetry.provider = Some(provider);
    }
    tracing_subscriber::registry().with(layers).try_init().map_err(|e| e.to_string())?;
    if let Some(endpoint) = tracing.otlp_endpoint.as_deref().filter(|_| telemetry.provider.is_some()) {
        sample(tracing.sample_ratio);
        tracing::info!(
            endpoint = %redact_url(endpoint),
            sample_ratio = tracing.sample_ratio,
            service = %tracing.service_name,
            "exporting traces"
        );
    }
    Ok(telemetry)
}

/// The OTLP/HTTP (JSON) exporter's provider for `endpoint` (`/v1/traces` added).
fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let endpoint = endpoint.trim_end_matches('/');
    let url =
        if endpoint.ends_with("/v1/traces") { endpoint.to_owned() } else { format!("{endpoint}/v1/traces") };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("tracing.otlp_endpoint {}: {e}", redact_url(endpoint)))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // The bus chose the letters already (`sample`): every span it starts is kept.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    fn headers(traceparent: Option<&str>) -> OwnedHeaders {
        let headers = OwnedHeaders::new().insert(Header { key: header::ID, value: Some("id") });
        match traceparent {
            Some(tp) => headers.insert(Header { key: header::TRACEPARENT, value: Some(tp) }),
            None => headers,
        }
    }

    #[test]
    fn a_letter_is_sampled_when_its_context_says_so_or_the_ratio_draws_it() {
        // The other tests of this crate start no span recorder: the switch changes no output.
        const SAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let judge = |tp: Option<&str>| sampled(&LetterHeaders::of_headers(&headers(tp)));
        let parent = TraceParent::parse(SAMPLED.as_bytes());
        sample(0.0);
        assert_eq!(judge(Some(SAMPLED)), Some(Sampled(parent)));
        assert_eq!(judge(Some(UNSAMPLED)), None);
        assert_eq!(judge(None), None);
        assert_eq!(judge(Some("00-garbage-01")), None, "a malformed context is none");
        sample(1.0);
        assert_eq!(judge(None), Some(Sampled(None)), "a new trace");
        assert_eq!(judge(Some("\u{1}\u{2}")), Some(Sampled(None)));
        assert!(judge(Some(UNSAMPLED)).is_some_and(|s| s.0.is_some_and(|p| !p.sampled())));
        stop_sampling();
        assert_eq!(judge(Some(SAMPLED)), None, "off: nothing is looked at");
        // Without a span recorder, a sampled letter's span is none and its headers stay.
        assert!(LetterSpan::start(
            "route",
            Sampled(parent),
            At { pigeon: "p", topic: "t", partition: 0, offset: 0, letter_id: "id" }
        )
        .is_none());
    }

    #[test]
    fn the_ratio_draws_about_its_share() {
        assert!(!drawn(0));
        assert!(drawn(u64::MAX));
        let threshold = (0.25 * SCALE) as u64;
        let hits = (0..100_000).filter(|_| drawn(threshold)).count();
        assert!((20_000..30_000).contains(&hits), "{hits}");
    }
}
