//! Runs the `act-toy` module against a bus.
//!
//! ```sh
//! PIGEON_BROKERS=127.0.0.1:9092 cargo run -p pigeon-sdk --example act-toy
//! ```
//!
//! Wire `act-toy/progress.add` and `act-toy/chest.drop` as pigeon destinations, and a pigeon
//! with id `act-toy.progress-full` that takes the letters the module flies when a progress bar
//! fills. Stops cleanly on Ctrl-C.

mod toy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let brokers = std::env::var("PIGEON_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mut module = toy::module().brokers(brokers);
    if let (Ok(url), Ok(token)) = (std::env::var("PIGEON_BUS"), std::env::var("PIGEON_TOKEN")) {
        module = module.bus(url, token);
    }
    let module = module.start().await?;
    tokio::signal::ctrl_c().await?;
    module.shutdown().await;
    Ok(())
}
