//! Instructions and allocations per letter on the forward path, with 10, 1,000 and 10,000
//! pigeons configured. Prints figures; asserts nothing. Run with
//! `cargo bench -p pigeon-bus --bench per_letter`.
//!
//! The step is the router's per-letter work up to the producer call: read the tag and id, look
//! the pigeons up, count the letter (the pigeon's book and its Prometheus series, in the
//! recorder the bus installs), plan its outputs (`pigeon_core::plan::forwards`, as the
//! router does), build each output's headers and count it as its delivery report does (one
//! pigeon matches, with two destinations). The other pigeons wait on other tags of the same topic (exact tags), on 100
//! other topics, and one in ten on a tag pattern, as a busy bus would have them.
//!
//! Allocations come from a counting global allocator (`stats_alloc`). Instructions come from callgrind
//! (valgrind), which counts instructions, not time, so the figure repeats run after run: this
//! binary runs itself under callgrind twice per size, with 2,000 and 12,000 letters, counting
//! only inside the step (`--toggle-collect` on `common::forward`), and divides the difference by
//! 10,000.

use std::alloc::System;
use std::process::Command;

use common::{forward, table};
use pigeon_bus::route::RouteTable;
use rdkafka::message::OwnedMessage;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

mod common;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Set (to a pigeon count) in the copy of this binary that callgrind runs.
const CHILD: &str = "PIGEON_PER_LETTER_PIGEONS";
const CHILD_LETTERS: &str = "PIGEON_PER_LETTER_LETTERS";
const CHILD_PATTERNS: &str = "PIGEON_PER_LETTER_PATTERNS";

fn letters(count: usize) -> Vec<OwnedMessage> {
    common::gift_messages(
        count,
        |n, room| serde_json::json!({"userId": n, "anchorId": n % 100, "roomId": room, "giftId": 7, "giftCount": 1 + n % 5}),
    )
}

fn run(table: &RouteTable, messages: &[OwnedMessage]) -> usize {
    messages.iter().map(|m| forward(table, m)).sum()
}

/// Instructions per letter by callgrind, or why there are none.
fn instructions(pigeons: usize, patterns: bool) -> Result<f64, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut totals = Vec::new();
    for letters in [2_000u64, 12_000] {
        let out = dir.path().join(format!("callgrind.{pigeons}.{letters}"));
        let status = Command::new("valgrind")
            // Only what the step itself runs: the letters' making and the process's one-time
            // work (the metrics recorder calibrates its clock for as long as it takes) vary
            // from run to run and would not cancel out.
            .args(["--tool=callgrind", "--quiet", "--toggle-collect=per_letter::common::forward*"])
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&me)
            .env(CHILD, pigeons.to_string())
            .env(CHILD_LETTERS, letters.to_string())
            .env(CHILD_PATTERNS, if patterns { "1" } else { "0" })
            .status()
            .map_err(|e| format!("valgrind: {e} (install the valgrind package)"))?;
        if !status.success() {
            return Err(format!("valgrind exited with {status}"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        let total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or("no summary in the callgrind output")?;
        totals.push((letters, total));
    }
    let ((l1, i1), (l2, i2)) = (totals[0], totals[1]);
    Ok(i2.saturating_sub(i1) as f64 / (l2 - l1) as f64)
}

fn main() {
    // Traces on at the default ratio, with no exporter: every letter is looked at for its
    // trace context and drawn, and a drawn one finds no span recorder (the unsampled cost).
    pigeon_bus::telemetry::sample(0.01);
    // The copy callgrind runs: build, route, exit.
    if let (Ok(pigeons), Ok(count)) = (std::env::var(CHILD), std::env::var(CHILD_LETTERS)) {
        let patterns = std::env::var(CHILD_PATTERNS).is_ok_and(|p| p == "1");
        let table = table(pigeons.parse().expect("a pigeon count"), patterns);
        let messages = letters(count.parse().expect("a letter count"));
        std::hint::black_box(run(&table, &messages));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks what benchmarks there are
    }
    let messages = letters(20_000);
    let messages = &messages[..];
    println!(
        "forward path, one matching pigeon with two destinations, {} letters; half the other",
        messages.len()
    );
    println!("pigeons on the gifts' topic (other tags), half on 100 other topics");
    println!("(allocations are Rust's; librdkafka allocates the output headers in C, not counted)");
    println!(
        "{:>8}  {:>9}  {:>13}  {:>14}  {:>14}  {:>18}",
        "pigeons", "patterns", "table allocs", "allocs/letter", "bytes/letter", "instr/letter"
    );
    for patterns in [false, true] {
        let mut first = None;
        for n in SIZES {
            measure(n, patterns, messages, &mut first);
        }
    }
    println!("goal: instructions per letter flat (±10%) from 10 to 10,000 pigeons");
}

fn measure(n: usize, patterns: bool, messages: &[OwnedMessage], first: &mut Option<f64>) {
    {
        let building = Region::new(ALLOCATOR);
        let table = table(n, patterns);
        let built = building.change().allocations;
        assert_eq!(table.len(), n, "every pigeon compiled");
        run(&table, &messages[..1_000]); // warm up
        let region = Region::new(ALLOCATOR);
        let outputs = run(&table, messages);
        let change = region.change();
        let letters = messages.len() as f64;
        let allocs = (change.allocations + change.reallocations) as f64 / letters;
        let bytes = (change.bytes_allocated + change.bytes_reallocated.max(0) as usize) as f64 / letters;
        std::hint::black_box(outputs);
        let instr = match instructions(n, patterns) {
            Ok(i) => {
                let base = *first.get_or_insert(i);
                format!("{i:>9.0} ({:+.1}%)", (i / base - 1.0) * 100.0)
            }
            Err(why) => format!("— ({why})"),
        };
        let kind = if patterns { "1 in 10" } else { "none" };
        println!("{n:>8}  {kind:>9}  {built:>13}  {allocs:>14.2}  {bytes:>14.1}  {instr:>18}");
    }
}
