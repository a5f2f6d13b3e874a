//! `act-toy`: a toy activity module with a progress bar and a treasure chest.
//!
//! - `progress.add` adds a letter's `giftCount` (or `score`) to its room's progress bar. When
//!   the bar reaches [`GOAL`] it empties and the module flies `progress.full` to the pigeon
//!   [`FULL_PIGEON`]: the operators decide where that goes (in `pigeon dev`, to `chest.drop`).
//! - `chest.drop` drops a treasure chest into the room.
//!
//! This file is the example of the SDK's README grown up, and `pigeon dev` runs it as its demo
//! provider.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pigeon_sdk::{fields, Capability, Context, HandlerResult, Letter, ModuleBuilder};

/// The module's name: its letters arrive on `pigeon.module.act-toy`.
pub const NAME: &str = "act-toy";
/// Points that fill a room's progress bar.
pub const GOAL: i64 = 20;
/// The pigeon a full progress bar flies to.
pub const FULL_PIGEON: &str = "act-toy.progress-full";

/// The module with both capabilities, ready for `.brokers(…)` and `.start()`.
pub fn module() -> ModuleBuilder {
    let bars: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let progress = Capability::new("progress.add", move |letter: Letter, cx: Context| {
        let bars = Arc::clone(&bars);
        async move { add_progress(letter, cx, &bars).await }
    })
    .describe("Adds giftCount (or score) points to the room's progress bar")
    .requires([fields::ROOM_ID]);
    let chest = Capability::new("chest.drop", drop_chest)
        .describe("Drops a treasure chest into the room")
        .requires([fields::ROOM_ID]);
    pigeon_sdk::Module::builder(NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .capability(progress)
        .capability(chest)
        .flies("progress.full", [fields::ROOM_ID, fields::SCORE])
}

async fn add_progress(letter: Letter, cx: Context, bars: &Mutex<HashMap<String, i64>>) -> HandlerResult {
    let room = letter.room_id().ok_or("the letter has no roomId")?.to_owned();
    let points = letter.gift_count().or(letter.score()).unwrap_or(1);
    if points < 0 {
        return Err(format!("negative points ({points})").into());
    }
    let full = {
        let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
        let bar = bars.entry(room.clone()).or_default();
        *bar += points;
        tracing::info!(room = %room, progress = *bar, goal = GOAL, "act-toy: progress");
        let full = *bar >= GOAL;
        if full {
            *bar -= GOAL;
        }
        full
    };
    if full {
        let mut full = cx.letter("progress.full").room_id(room.clone()).score(GOAL).key(room.clone());
        if let Some(user) = letter.user_id() {
            full = full.user_id(user);
        }
        cx.fly(FULL_PIGEON, full.finish()).await?;
    }
    Ok(())
}

async fn drop_chest(letter: Letter, _cx: Context) -> HandlerResult {
    let room = letter.room_id().ok_or("the letter has no roomId")?;
    tracing::info!(room, user = ?letter.user_id(), "act-toy: a treasure chest drops");
    Ok(())
}
