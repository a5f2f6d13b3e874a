//! Running the bus: store, route table, router and admin server under one cancellation token.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AppState};
use crate::config::{redact_url, BusConfig};
use crate::kafka;
use crate::route::{RouteTable, VersionedPigeon};
use crate::router::{self, RouterParts, RouterStats};
use crate::store::{self, Store};

/// Opens the store and applies migrations.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::open(url).await.with_context(|| format!("opening store {}", redact_url(url)))?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// Compiles the stored pigeons; every invalid pigeon is reported at once.
pub async fn load_table(store: &dyn Store, config: &BusConfig) -> anyhow::Result<RouteTable> {
    let pigeons: Vec<VersionedPigeon> = store.pigeons().await?.iter().map(|p| p.versioned()).collect();
    Ok(RouteTable::compile(&pigeons, &config.sources)?)
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
    let table = Arc::new(load_table(store.as_ref(), &config).await?);
    let ready = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(RouterStats::default());

    let listener = tokio::net::TcpListener::bind(&config.admin.listen)
        .await
        .with_context(|| format!("binding the admin server to {}", config.admin.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    on_listening(&url);
    let app = admin::app(AppState {
        store: Arc::clone(&store),
        ready: Arc::clone(&ready),
        stats: Arc::clone(&stats),
    });
    let http_cancel = cancel.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(http_cancel.cancelled_owned()).await
    });

    let consumer = kafka::consumer_config(&config.kafka, &config.kafka.router_group);
    let producer = kafka::producer_config(&config.kafka);
    tracing::info!(consumer = %kafka::describe(&consumer), producer = %kafka::describe(&producer), "kafka clients");
    let parts = RouterParts { table, config: config.router.clone(), consumer, producer, store, ready, stats };
    let router = tokio::spawn(router::run(parts, cancel.clone()));

    tokio::spawn(cancel_on_signal(cancel.clone()));
    let routed = router.await.context("router task")?;
    cancel.cancel();
    http.await.context("admin task")?.context("admin server")?;
    routed
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
