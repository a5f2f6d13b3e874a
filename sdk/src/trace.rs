//! Trace context: letters carry W3C trace context in `ce_traceparent`, and spans follow it.
//!
//! With the `otel` feature, [`Context::fly`](crate::Context::fly) runs in a `fly` span and,
//! when the letter has no `ce_traceparent` yet, sets it from that span; a handler runs in a
//! `handle` span whose parent is the letter's `ce_traceparent`. Both go through the
//! `tracing-opentelemetry` layer the module installs (with the exporter it chooses); without
//! one, the spans are plain `tracing` spans and letters keep whatever context they carry.

use tracing::Span;

pub use pigeon_wire::trace::{says_sampled, TraceParent};

/// The `tracing` target of letter spans (the SDK's and the bus's): a layer can pick them out.
pub const TARGET: &str = "pigeon::letter";

/// The OpenTelemetry context whose remote parent is `parent`; an empty one (a new trace)
/// without.
#[cfg(feature = "otel")]
pub fn context_of(parent: Option<TraceParent>) -> opentelemetry::Context {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    match parent {
        Some(p) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.parent_id),
            TraceFlags::new(p.flags),
            true,
            TraceState::NONE,
        )),
        None => opentelemetry::Context::new(),
    }
}

/// The trace context a letter sent from inside `span` carries: `span` as its parent. `None`
/// when no OpenTelemetry layer records the span.
#[cfg(feature = "otel")]
pub fn traceparent_of(span: &Span) -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| TraceParent {
        trace_id: span_context.trace_id().to_bytes(),
        parent_id: span_context.span_id().to_bytes(),
        flags: span_context.trace_flags().to_u8(),
    })
}

/// Makes `parent` the parent of `span` (before the span is first used).
#[cfg(feature = "otel")]
pub fn set_parent(span: &Span, parent: Option<TraceParent>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // An error only says no OpenTelemetry layer records the span: nothing to link then.
    let _ = span.set_parent(context_of(parent));
}

/// The span `fly` runs in; sets the letter's `ce_traceparent` from it if the letter has none.
pub(crate) fn fly_span(pigeon: &str, letter: &mut crate::Letter) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "fly",
        otel.kind = "producer",
        pigeon,
        letter_id = %letter.id,
        tag = %letter.tag,
    );
    #[cfg(feature = "otel")]
    if letter.traceparent.is_none() {
        letter.traceparent = traceparent_of(&span).map(|tp| tp.to_string());
    }
    span
}

/// The span a handler runs in: the child of the letter's `ce_traceparent` (a malformed one is
/// ignored).
pub(crate) fn handle_span(module: &str, message: &impl rdkafka::Message, letter: &crate::Letter) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "handle",
        otel.kind = "consumer",
        module,
        tag = %letter.tag,
        letter_id = %letter.id,
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset(),
    );
    #[cfg(feature = "otel")]
    if let Some(parent) = letter.traceparent.as_deref().and_then(|t| TraceParent::parse(t.as_bytes())) {
        set_parent(&span, Some(parent));
    }
    span
}
