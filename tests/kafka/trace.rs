//! A letter's trace on the real broker (the mock cannot look offsets up by time): a module in
//! this process flies a letter through the bus; its trace shows where the router read it (found
//! on `pigeon.ingress` by its id's time), the pigeon and its output, acknowledged, and the
//! handler's receipt, through the API and `pigeon trace`.

use std::time::{Duration, Instant};

use pigeon_bus::route::DestinationSpec;
use pigeon_bus::token::Role;
use pigeon_sdk::{Capability, Context, Letter, Module};
use tokio::sync::mpsc;

use crate::support::{pigeon, pigeon_bin, Bus, Db, DEADLINE, FAST_GROUP};
use crate::{broker, ensure_topics, unique};

#[tokio::test(flavor = "multi_thread")]
async fn a_flown_letters_trace_shows_every_hop_and_the_handlers_receipt() {
    let bootstrap = broker();
    // A module of this test's own: its topic is new on the shared broker.
    let module_name = unique("act-toy").replace('.', "-");
    let module_topic = format!("pigeon.module.{module_name}");
    let pigeon_id = unique("full-chest").replace('.', "-");
    let flown = pigeon(
        &pigeon_id,
        "pigeon.ingress",
        "progress.full",
        vec![DestinationSpec::capability(&format!("{module_name}/chest.drop"))],
    );
    let db = Db::with_pigeons(&[flown]).await;
    ensure_topics(&bootstrap, &db, 4);
    let store = db.store().await;
    let viewer = pigeon::cli::tokens::create(store.as_ref(), "ops", Role::Viewer, "tests").await.unwrap();
    let module_token =
        pigeon::cli::tokens::create(store.as_ref(), &module_name, Role::Module, "tests").await.unwrap();
    let config = db.path("pigeon.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nrouter_group = \"{}\"\n\n[receipts]\nsample_ratio = 1.0\nflush_ms = 200\n",
            unique("pigeon-router")
        ),
    )
    .unwrap();
    let args: Vec<&str> = ["-c", config.to_str().unwrap()].into_iter().chain(FAST_GROUP).collect();
    let bus = Bus::launch(&bootstrap, &db, &args, &[]).unwrap_or_else(|log| panic!("pigeon serve:\n{log}"));
    bus.wait_healthy();

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let module = Module::builder(&module_name)
        .brokers(&bootstrap)
        .kafka_property("session.timeout.ms", "6000")
        .kafka_property("heartbeat.interval.ms", "500")
        .heartbeat(Duration::from_millis(500))
        .capability(Capability::new("chest.drop", move |letter: Letter, _cx: Context| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(letter);
                Ok(())
            }
        }))
        .bus(&bus.admin, &module_token)
        .start()
        .await
        .expect("the module starts");

    let id = module
        .fly(&pigeon_id, module.letter("progress.full").room_id("r-1").key("r-1").finish())
        .await
        .expect("fly");
    let got = tokio::time::timeout(DEADLINE, seen.recv()).await.expect("the handler gets the letter");
    assert_eq!(got.map(|l| l.id), Some(id));

    // The receipt reaches the store a flush later; the router commits within a second.
    let client = reqwest::Client::new();
    let get = |path: String| client.get(format!("{}/api/v1{path}", bus.admin)).bearer_auth(&viewer).send();
    let deadline = Instant::now() + DEADLINE;
    let trace = loop {
        let response = get(format!("/letters/{id}/trace")).await.expect("the API answers");
        let status = response.status().as_u16();
        let trace: serde_json::Value = response.json().await.unwrap_or_default();
        let receipts = trace["receipts"].as_array().map_or(0, Vec::len);
        if status == 200 && trace["acknowledged"] == true && receipts > 0 {
            break trace;
        }
        assert!(Instant::now() < deadline, "no whole trace before the deadline: {status} {trace}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let source = &trace["source"];
    assert_eq!(
        (source["topic"].as_str(), source["found_by"].as_str(), source["tag"].as_str()),
        (Some("pigeon.ingress"), Some("kafka"), Some("progress.full")),
        "{trace}"
    );
    let flown = &trace["pigeons"][0];
    assert_eq!(
        (flown["id"].as_str(), flown["version"].as_i64()),
        (Some(pigeon_id.as_str()), Some(1)),
        "{trace}"
    );
    let output = &flown["outputs"][0];
    assert_eq!(
        (output["topic"].as_str(), output["tag"].as_str(), output["status"].as_str()),
        (Some(module_topic.as_str()), Some("chest.drop"), Some("acknowledged")),
        "{trace}"
    );
    let receipt = &trace["receipts"][0];
    assert_eq!(
        (receipt["module"].as_str(), receipt["capability"].as_str(), receipt["outcome"].as_str()),
        (Some(module_name.as_str()), Some("chest.drop"), Some("handled")),
        "{trace}"
    );
    assert_eq!(receipt["instance"], module.instance(), "{trace}");
    assert!(trace["dead_letters"].as_array().is_some_and(Vec::is_empty), "{trace}");

    // The CLI prints the same hops.
    let out = std::process::Command::new(pigeon_bin())
        .args(["trace", &id.to_string(), "--url", &bus.admin, "--token", &viewer])
        .output()
        .expect("run pigeon trace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("found on Kafka by its id's time"), "{text}");
    assert!(text.contains(&format!("  → {module_topic} tag chest.drop acknowledged")), "{text}");
    assert!(
        text.contains(&format!("receipt  {module_name}/{} chest.drop handled", module.instance())),
        "{text}"
    );

    // A letter the bus never saw: 404, saying where it looked.
    let unknown = pigeon_sdk::LetterId::new();
    let response = get(format!("/letters/{unknown}/trace")).await.expect("the API answers");
    assert_eq!(response.status().as_u16(), 404);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("not found on the pigeons' source topics or pigeon.ingress"), "{body}");
    module.shutdown().await;
    bus.stop();
}
