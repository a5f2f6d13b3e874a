//! Running the bus: store, route table, router and admin server under one cancellation token.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use pigeon_admin::{self as admin, AppState};
use pigeon_bus::archive::archiver::{self, ArchiverParts, ArchiverStats};
use pigeon_bus::archive::replay::{self, ReplayParts, ReplayStats};
use pigeon_bus::config::{redact_url, BusConfig, Role};
use pigeon_bus::control::{self, WatchConfig, Watcher};
use pigeon_bus::kafka;
use pigeon_bus::retrier::{self, RetrierParts, RetrierStats};
use pigeon_bus::router::{self, RouterParts, RouterStats};
use pigeon_bus::store::{self, Store};
use pigeon_bus::supervise::{supervise, Health};

/// Opens the store and applies migrations, saying which store failed (its password hidden).
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    store::open_migrated(url).await.with_context(|| format!("opening store {}", redact_url(url)))
}

/// Runs every role until `cancel` fires (or SIGTERM/SIGINT, which fire it), then drains.
///
/// `on_listening` is called with the admin URL once the HTTP port is bound.
pub async fn run(
    config: BusConfig,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
    on_listening: impl FnOnce(&str),
) -> anyhow::Result<()> {
    // Before any table is built or any role's counters made: handles resolved earlier count
    // nowhere.
    pigeon_bus::prometheus::install();
    pigeon_bus::prometheus::start_upkeep();
    let ready = Arc::new(AtomicBool::new(false));
    let health = Arc::new(Health::default());
    let stats = Arc::new(RouterStats::default());

    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding the admin server to {}", config.admin.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    on_listening(&url);
    let retrier_stats = Arc::new(RetrierStats::default());
    let archiver_stats = Arc::new(ArchiverStats::default());
    let replay_stats = Arc::new(ReplayStats::default());
    let producer = kafka::producer_config(&config.kafka);
    let fly_producer = match config.roles.contains(&Role::Admin) {
        true => Some(producer.create().context("creating the producer for flown letters")?),
        false => None,
    };
    // The one table builder: every role reads the tables it publishes.
    let watch_config = WatchConfig {
        check: Duration::from_millis(config.router.reload_check_ms),
        window_lead_ms: config.router.window_lead_ms as i64,
        window_grace_ms: config.router.window_grace_ms as i64,
        sources: config.sources.clone(),
    };
    let watcher = Watcher::new(Arc::clone(&store), watch_config);
    let notices = kafka::assigned_consumer_config(&config.kafka, "pigeon-control");
    let (tables, watching) =
        control::start(watcher, Some(notices), cancel.clone()).await.context("loading the pigeons")?;
    let mut roles = tokio::task::JoinSet::new();
    roles.spawn(watching);
    let app = admin::app(
        AppState {
            store: Arc::clone(&store),
            ready: Arc::clone(&ready),
            stats: Arc::clone(&stats),
            retrier: Arc::clone(&retrier_stats),
            archiver: Arc::clone(&archiver_stats),
            replays: Arc::clone(&replay_stats),
            sources: Arc::new(config.sources.clone()),
            producer: fly_producer.clone(),
            tables: Some(tables.clone()),
            health: Arc::clone(&health),
            scripts: pigeon_admin::gate::ScriptGate::default(),
            draining: cancel.clone(),
            kafka: Some(Arc::new(
                kafka::admin_config(&config.kafka)
                    .create()
                    .context("creating the readiness check's Kafka client")?,
            )),
            lookup: Some(pigeon_bus::trace::KafkaLookup {
                client: kafka::assigned_consumer_config(&config.kafka, "pigeon-trace"),
                router_group: config.kafka.router_group.clone(),
            }),
        },
        config.roles.contains(&Role::Admin),
    );
    // HTTP serves until the roles have drained, so /readyz says the instance is draining.
    let http_stop = CancellationToken::new();
    let http_cancel = http_stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(http_cancel.cancelled_owned()).await
    });

    // Counts are flushed until every role has drained, so the last letters count too.
    let counting_stop = CancellationToken::new();
    let counting = tokio::spawn(pigeon_bus::counters::run(Arc::clone(&store), counting_stop.clone()));
    if config.roles.contains(&Role::Admin) {
        // The groups' lag, the registry's instances and the stored dead letters, measured
        // here so they show while the roles that would see them are down.
        use pigeon_bus::survey::{Group, Reads};
        let groups = vec![
            Group {
                name: config.kafka.router_group.clone(),
                client: kafka::lag_reader_config(&config.kafka, &config.kafka.router_group),
                reads: Reads::Router,
            },
            Group {
                name: config.archiver.group.clone(),
                client: kafka::lag_reader_config(&config.kafka, &config.archiver.group),
                reads: Reads::Archiver,
            },
        ];
        let survey = pigeon_bus::survey::run(groups, tables.clone(), Arc::clone(&store), cancel.clone());
        roles.spawn(async move {
            survey.await;
            Ok(())
        });
    }
    if config.roles.contains(&Role::Registry) {
        let registry = kafka::consumer_config(&config.kafka, pigeon_bus::registry::GROUP);
        let (registry_store, stop) = (Arc::clone(&store), cancel.clone());
        roles.spawn(supervise("registry", Arc::clone(&health), cancel.clone(), move || {
            pigeon_bus::registry::run(registry.clone(), Arc::clone(&registry_store), stop.clone())
        }));
        let receipts = kafka::consumer_config(&config.kafka, pigeon_bus::receipts::GROUP);
        let (receipt_store, stop, kept) = (Arc::clone(&store), cancel.clone(), config.receipts.clone());
        roles.spawn(supervise("receipts", Arc::clone(&health), cancel.clone(), move || {
            pigeon_bus::receipts::run(
                receipts.clone(),
                Arc::clone(&receipt_store),
                kept.clone(),
                stop.clone(),
            )
        }));
    }
    if config.roles.contains(&Role::Retrier) {
        let parts = RetrierParts {
            config: config.retrier.clone(),
            tables: tables.clone(),
            producer: producer.clone(),
            store: Arc::clone(&store),
            instance: instance_name("retrier"),
            stats: Arc::clone(&retrier_stats),
        };
        let stop = cancel.clone();
        roles.spawn(supervise("retrier", Arc::clone(&health), cancel.clone(), move || {
            retrier::run(parts.clone(), stop.clone())
        }));
        let failed = kafka::consumer_config(&config.kafka, pigeon_bus::failures::GROUP);
        let (store, stop) = (Arc::clone(&store), cancel.clone());
        roles.spawn(supervise("failures", Arc::clone(&health), cancel.clone(), move || {
            pigeon_bus::failures::run(failed.clone(), Arc::clone(&store), stop.clone())
        }));
    }
    if let Some(producer) = fly_producer {
        let parts = ReplayParts {
            store: Arc::clone(&store),
            producer,
            config: config.replay.clone(),
            tables: tables.clone(),
            owner: instance_name("replay"),
            stats: replay_stats,
        };
        let stop = cancel.clone();
        roles.spawn(supervise("replay", Arc::clone(&health), cancel.clone(), move || {
            replay::run(parts.clone(), stop.clone())
        }));
    }
    if config.roles.contains(&Role::Archiver) {
        let parts = ArchiverParts {
            routes: tables.subscribe(),
            config: config.archiver.clone(),
            consumer: kafka::consumer_config(&config.kafka, &config.archiver.group),
            store: Arc::clone(&store),
            stats: archiver_stats,
        };
        let stop = cancel.clone();
        roles.spawn(supervise("archiver", Arc::clone(&health), cancel.clone(), move || {
            archiver::run(parts.clone(), stop.clone())
        }));
    }
    if config.roles.contains(&Role::Router) {
        let routes = tables.subscribe();
        let consumer = kafka::router_consumer_config(&config.kafka);
        tracing::info!(consumer = %kafka::describe(&consumer), producer = %kafka::describe(&producer), "kafka clients");
        let parts =
            RouterParts { routes, config: config.router.clone(), consumer, producer, store, ready, stats };
        let stop = cancel.clone();
        roles.spawn(supervise("router", Arc::clone(&health), cancel.clone(), move || {
            router::run(parts.clone(), stop.clone())
        }));
    } else {
        ready.store(true, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(roles = ?config.roles, "bus running");

    tokio::spawn(cancel_on_signal(cancel.clone()));
    // Roles are started again when they fail; one ends only on a signal (or the watcher, if
    // it cannot read pigeon.control at all): the first to end ends them all.
    let mut result = Ok(());
    while let Some(ended) = roles.join_next().await {
        cancel.cancel();
        if let Err(e) = ended.context("role task").and_then(|r| r) {
            tracing::error!(error = %e, "role failed");
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    cancel.cancel();
    http_stop.cancel();
    let served = http.await.context("admin task").and_then(|r| r.context("admin server"));
    counting_stop.cancel();
    let _ = counting.await;
    served?;
    result
}

/// This process in dead-letter histories and replay jobs: the role, host and process id.
fn instance_name(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{role}@{}/{}", host.trim(), std::process::id())
}

/// Fires `cancel` on SIGTERM or SIGINT.
pub async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = cancel.cancelled() => return,
    }
    cancel.cancel();
}
