//! Traces end to end: a module in this process flies a letter, the bus (a child process)
//! routes it to the module's handler, and both export their spans over OTLP/HTTP to a
//! receiver inside the test. The handler's span must descend from the fly's, through the
//! router's, in one trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use pigeon_bus::route::DestinationSpec;
use pigeon_sdk::trace::TraceParent;
use pigeon_sdk::{Capability, Context, Letter, Module, Retry};
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{pigeon, Bus, Db, Kafka, Outgoing, DEADLINE};

const MODULE_TOPIC: &str = "pigeon.module.traced";

/// One span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP receiver (JSON encoding) on a free port: `POST /v1/traces`.
async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let kept = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let request: serde_json::Value = match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(_) => return axum::http::StatusCode::BAD_REQUEST,
                };
                kept.lock().unwrap().extend(spans_of(&request));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn spans_of(request: &serde_json::Value) -> Vec<Received> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => {
            o.values().next().map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default()
        }
        other => other.to_string(),
    };
    let attributes = |v: &serde_json::Value| -> HashMap<String, String> {
        v.as_array().into_iter().flatten().map(|kv| (text(&kv["key"]), text(&kv["value"]))).collect()
    };
    let mut out = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service =
            attributes(&resource["resource"]["attributes"]).remove("service.name").unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                out.push(Received {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_id: span["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    out
}

/// Waits until a span `which` picks arrived.
fn wait_for(spans: &Spans, what: &str, which: impl Fn(&Received) -> bool) -> Received {
    let started = Instant::now();
    loop {
        if let Some(span) = spans.lock().unwrap().iter().find(|s| which(s)) {
            return span.clone();
        }
        assert!(started.elapsed() < DEADLINE, "{what}: no such span; got {:#?}", spans.lock().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_handlers_span_descends_from_the_fly_through_the_router_in_one_trace() {
    // The module's spans go to the receiver through a subscriber of this test's own, set on
    // every thread of its runtime (the other tests of this binary keep theirs).
    let setup = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (endpoint, spans) = {
        let _guard = setup.enter();
        let (endpoint, spans) = setup.block_on(receiver());
        (endpoint, spans)
    };
    // The receiver keeps running on a thread of its own.
    std::thread::spawn(move || setup.block_on(std::future::pending::<()>()));

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .build()
        .expect("an exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        // The batch exporter's own thread sends: reqwest's blocking client must not run on the
        // runtime.
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("traced-module").build())
        .build();
    // With one dispatcher alive, tracing judges a span site by the subscriber of the thread
    // that first reaches it: another test's thread (none) would switch the SDK's spans off
    // for this test too. A second one, kept alive, makes it ask every subscriber.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
    );
    let on_thread = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || std::mem::forget(tracing::dispatcher::set_default(&on_thread)))
        .build()
        .unwrap();
    let _main = tracing::dispatcher::set_default(&dispatch);

    let kafka = Kafka::new(1);
    for topic in ["pigeon.registry", "pigeon.ingress", "pigeon.failed", MODULE_TOPIC] {
        kafka.topic(topic, 2);
    }
    let mut traced = pigeon(
        "traced",
        "pigeon.ingress",
        "progress.full",
        vec![DestinationSpec::topic(MODULE_TOPIC, "chest.drop")],
    );
    traced.retry = Some(vec!["1s".into()]);
    let db = runtime.block_on(Db::with_pigeons(&[traced]));
    let config = db.path("bus.toml");
    std::fs::write(
        &config,
        format!(
            "[tracing]\nsample_ratio = 1.0\notlp_endpoint = \"{endpoint}\"\nservice_name = \"pigeon-test\"\n\n[log]\nformat = \"json\"\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let bus = Bus::start_with_env(&kafka, &db, &["--config", &config], &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);

    let (id, carried, retried) = runtime.block_on(async {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Letter>();
        // The letter for room r-retry fails once: reported, stored, sent again by the retrier.
        let failed_once = Arc::new(AtomicBool::new(false));
        let module = Module::builder("traced")
            .brokers(&kafka.bootstrap)
            .kafka_property("session.timeout.ms", "6000")
            .kafka_property("heartbeat.interval.ms", "500")
            .drain_timeout(Duration::from_secs(10))
            .retry(Retry::new(1, Duration::from_millis(10)))
            .capability(Capability::new("chest.drop", move |letter: Letter, _cx: Context| {
                let seen = seen_tx.clone();
                let fail = letter.room_id() == Some("r-retry") && !failed_once.swap(true, Ordering::SeqCst);
                async move {
                    if fail {
                        return Err("not this time".into());
                    }
                    let _ = seen.send(letter);
                    Ok(())
                }
            }))
            .start()
            .await
            .expect("the module starts");

        // Flown with no trace context: the fly's span starts the trace.
        let letter = module.letter("progress.full").room_id("r-1").finish();
        let id = module.fly("traced", letter).await.expect("fly");
        let got = tokio::time::timeout(DEADLINE, seen.recv()).await.expect("the handler got it").unwrap();
        assert_eq!(got.id, id);
        let carried = got.traceparent.as_deref().and_then(|t| TraceParent::parse(t.as_bytes()));
        let carried = carried.expect("the output carries a well-formed ce_traceparent");

        // A letter whose ce_traceparent is malformed is routed all the same, in a new trace.
        let mut bad = Letter::build("progress.full").source("elsewhere").room_id("r-2").finish();
        bad.pigeon = Some("traced".into());
        bad.traceparent = Some("00-not-a-trace-context-01".into());
        kafka.produce("pigeon.ingress", [Outgoing::from(&bad)]);
        let got_bad =
            tokio::time::timeout(DEADLINE, seen.recv()).await.expect("the malformed one too").unwrap();
        assert_eq!(got_bad.id, bad.id);
        let fresh = got_bad.traceparent.as_deref().and_then(|t| TraceParent::parse(t.as_bytes()));
        let fresh = fresh.expect("a sampled letter without a usable context starts a trace");
        assert_ne!(fresh.trace_id, carried.trace_id);

        let again = module.letter("progress.full").room_id("r-retry").finish();
        let retried = module.fly("traced", again).await.expect("fly");
        let got = tokio::time::timeout(DEADLINE, seen.recv()).await.expect("the retried letter").unwrap();
        assert_eq!((got.id, got.attempt), (retried, 2));

        module.shutdown().await;
        (id, carried, retried)
    });
    provider.force_flush().expect("the module's spans are sent");
    let letter_id = id.to_string();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let fly = wait_for(&spans, "the fly's span", |s| {
        s.name == "fly" && s.attributes.get("letter_id") == Some(&letter_id)
    });
    let handle = wait_for(&spans, "the handler's span", |s| {
        s.name == "handle" && s.attributes.get("letter_id") == Some(&letter_id)
    });
    let route = wait_for(&spans, "the router's span", |s| s.name == "route" && s.span_id == handle.parent_id);
    assert_eq!(route.span_id, hex(&carried.parent_id), "the output's ce_traceparent names the router's span");
    assert_eq!(fly.trace_id, hex(&carried.trace_id));
    assert_eq!(fly.service, "traced-module");
    assert_eq!(route.service, "pigeon-test");
    assert_eq!(handle.service, "traced-module");
    assert_eq!(route.trace_id, fly.trace_id, "the router's span is in the fly's trace");
    assert_eq!(handle.trace_id, fly.trace_id, "the handler's span is in the fly's trace");
    assert_eq!(route.parent_id, fly.span_id, "the router's span is the fly's child");
    assert_eq!(route.attributes.get("pigeon").map(String::as_str), Some("traced"));
    assert_eq!(route.attributes.get("topic").map(String::as_str), Some("pigeon.ingress"));
    assert_eq!(route.attributes.get("letter_id"), Some(&letter_id));
    assert!(route.attributes.contains_key("partition") && route.attributes.contains_key("offset"));

    // A retried delivery: the retrier's span is the router's child, the second try's the
    // retrier's.
    let retried = retried.to_string();
    // The module's spans are all in: its provider was flushed.
    let handled: Vec<Received> = {
        let all = spans.lock().unwrap();
        all.iter()
            .filter(|s| s.name == "handle" && s.attributes.get("letter_id") == Some(&retried))
            .cloned()
            .collect()
    };
    let retry = wait_for(&spans, "the retrier's span", |s| {
        s.name == "retry" && s.attributes.get("letter_id") == Some(&retried)
    });
    let first_route = wait_for(&spans, "the retried letter's route span", |s| {
        s.name == "route" && s.attributes.get("letter_id") == Some(&retried)
    });
    assert_eq!(handled.len(), 2, "{handled:#?}");
    assert!(handled.iter().all(|h| h.trace_id == first_route.trace_id), "one trace: {handled:#?}");
    assert!(handled.iter().any(|h| h.parent_id == first_route.span_id), "the first try under the router");
    assert!(handled.iter().any(|h| h.parent_id == retry.span_id), "the second under the retrier");
    assert_eq!(
        (retry.trace_id.as_str(), retry.parent_id.as_str()),
        (first_route.trace_id.as_str(), first_route.span_id.as_str())
    );
    assert_eq!(retry.service, "pigeon-test");

    let log = bus.stop();
    // `[log] format = "json"`: every line is a JSON object.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "not JSON: {line}"
        );
    }
    let _ = provider.shutdown();
}
