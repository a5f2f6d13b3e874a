//! `pigeon-bench`: Pigeon against the limit (a bare rdkafka loop) and a peer (Quix Streams),
//! each contender a process of its own on the same broker, the same letters and the same
//! work. Writes `docs/BENCHMARKS.md`, `docs/benchmarks.json` (the chart's input). Run through
//! `scripts/bench`, which builds and installs what this needs.

mod archive;
mod broker;
mod contenders;
mod letters;
mod measure;
mod process;
mod report;
mod rss;
mod verify;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;

use broker::{Binaries, Broker, Kind};
use contenders::{Programs, Run, Work};
use measure::{Bench, Figures};

#[derive(Parser)]
#[command(
    name = "pigeon-bench",
    about = "Pigeon against the limit and a peer, one contender process at a time"
)]
struct Args {
    /// Source letters on Tansu and Kafka (the full comparison).
    #[arg(long, default_value_t = 1_000_000)]
    letters: u64,
    /// Source letters on the mock broker, which keeps only ~5 MB per partition: with 100
    /// keys a partition holds a few rooms' letters, so a million would not fit.
    #[arg(long, default_value_t = 200_000)]
    mock_letters: u64,
    /// Tries of every run, each on a broker of its own; the report shows the median try (by
    /// CPU per output) and the range of all.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 64)]
    partitions: i32,
    /// Brokers to run on, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tansu,kafka,mock")]
    brokers: Vec<Kind>,
    /// Only runs whose name starts with one of these (`limit`, `forward`, `script`, `peer`,
    /// `peer-forward`, `archive`, `rss`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seconds of paced letters for the latency figures.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// The share of each contender's own peak rate the latency letters are sent at.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    latency_fraction: f64,
    #[arg(long, default_value = "target/release/pigeon")]
    pigeon: PathBuf,
    #[arg(long, default_value = "target/release/pigeon-limit")]
    limit: PathBuf,
    #[arg(long, default_value = "tansu")]
    tansu: PathBuf,
    /// `scripts/kafka`, which starts a fresh Apache Kafka broker for each run on Kafka.
    #[arg(long, default_value = "scripts/kafka")]
    kafka: PathBuf,
    /// Keeps the figures of brokers not run now from an earlier run (its `benchmarks.json`),
    /// and its archive and slow-destination figures when those are not run now: e.g.
    /// `--brokers kafka --keep docs/benchmarks.json` adds Kafka to the report.
    #[arg(long, value_name = "JSON")]
    keep: Option<PathBuf>,
    /// A Python with Quix Streams installed (the peer runs on Tansu and Kafka).
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peer/quix_gifts.py"))]
    peer: PathBuf,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mariadb: String,
    /// Peak RSS the router must stay under while its destination is throttled.
    #[arg(long, default_value_t = 512)]
    rss_budget_mib: u64,
    /// Where logs and stores of the runs go.
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
    /// Where BENCHMARKS.md and benchmarks.json are written.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Files of micro-benchmark output to include in the report (NAME=PATH).
    #[arg(long = "include")]
    includes: Vec<String>,
    /// Runs nothing: writes the report again from the figures of an earlier run (its
    /// `benchmarks.json`), with this build's text and the files given with `--include`.
    #[arg(long, value_name = "JSON")]
    rewrite: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.starts_with(o.as_str()));
    std::fs::create_dir_all(&args.work)?;
    let rt = tokio::runtime::Runtime::new()?;
    let programs = Programs {
        pigeon: args.pigeon.clone(),
        limit: args.limit.clone(),
        python: args.python.clone(),
        peer: args.peer.clone(),
    };
    let binaries =
        Binaries { pigeon: args.pigeon.clone(), tansu: args.tansu.clone(), kafka: args.kafka.clone() };
    if let Some(json) = &args.rewrite {
        let mut report = report::Report::read(json)?;
        add_includes(&mut report, &args.includes)?;
        report.write(&args.out)?;
        println!("wrote {} from {}", args.out.join("BENCHMARKS.md").display(), json.display());
        return Ok(());
    }
    let mut report = report::Report::new(
        args.partitions,
        args.letters,
        args.mock_letters,
        args.latency_secs,
        args.latency_fraction,
        args.repeats,
    );

    for &kind in &args.brokers {
        let mut runs: Vec<Run> = contenders::limit_steps()
            .into_iter()
            .filter(|step| kind != Kind::Mock || matches!(step.name, "limit-default" | "limit-tuned"))
            .map(|step| Run {
                name: step.name.into(),
                label: step.label.into(),
                work: Work::Limit(step.settings),
            })
            .collect();
        runs.push(Run { name: "forward".into(), label: "Pigeon forward".into(), work: Work::Forward });
        runs.push(Run { name: "script".into(), label: "Pigeon script".into(), work: Work::Script });
        if kind != Kind::Mock && args.python.is_some() {
            runs.push(Run {
                name: "peer-forward".into(),
                label: "peer forward (Quix Streams)".into(),
                work: Work::PeerForward,
            });
            runs.push(Run {
                name: "peer".into(),
                label: "peer script (Quix Streams)".into(),
                work: Work::Peer,
            });
        }
        runs.retain(|r| wanted(&r.name));
        let archive = kind == args.brokers[0] && wanted("archive");
        if runs.is_empty() && !archive {
            continue;
        }
        let backlog = if kind == Kind::Mock { args.mock_letters } else { args.letters };
        let source = "bench.gift";
        // Every run gets a broker of its own with the same backlog: no run reads another's
        // letters or shares a broker grown by the runs before it.
        let fresh_broker = |destinations: &[String], dir: &Path| -> anyhow::Result<Broker> {
            let mut topics: Vec<(String, i32)> = vec![(source.into(), args.partitions)];
            topics.extend(destinations.iter().map(|d| (d.clone(), args.partitions)));
            topics.extend(pigeon_bus::topics::BUS_TOPICS.iter().map(|t| (t.to_string(), 4)));
            std::fs::create_dir_all(dir)?;
            let broker = Broker::start(kind, &binaries, &topics, dir)?;
            letters::Source::new(&broker.client(), source, 5, 0)?.backlog(backlog)?;
            Ok(broker)
        };
        println!(
            "{}: {backlog} source letters from 100 rooms, topics of {} partitions",
            kind.name(),
            args.partitions
        );
        // Round by round: every run once, then every run again. The machine's speed drifts over
        // tens of minutes, so the runs compared with each other are the ones of one round.
        let mut tries: Vec<Vec<Figures>> = runs.iter().map(|_| Vec::new()).collect();
        for n in 1..=args.repeats {
            for (run, tries) in runs.iter().zip(&mut tries) {
                let dir = args.work.join(format!("{}-{}-{n}", kind.name(), run.name));
                let broker = fresh_broker(&run.destinations(), &dir)?;
                let bench = Bench {
                    broker: &broker,
                    source_topic: source,
                    partitions: args.partitions,
                    latency_secs: args.latency_secs,
                    latency_fraction: args.latency_fraction,
                };
                let group = format!("bench-{}-{}", run.name, uuid::Uuid::now_v7().simple());
                let contender =
                    contenders::start(run, &programs, &broker.bootstrap, source, &group, &dir, &rt)?;
                let mut figures = bench
                    .measure(run, contender, backlog)
                    .with_context(|| format!("{} on {}, try {n}", run.label, kind.name()))?;
                figures.round = n;
                print_figures(&figures, n, args.repeats);
                for c in &figures.completeness {
                    if !c.complete() {
                        bail!("{} on {} is incomplete: {c:?}; no figures written", run.label, kind.name());
                    }
                }
                tries.push(figures);
            }
        }
        report.runs.extend(tries.into_iter().filter_map(Figures::median));
        if archive {
            let dir = args.work.join(format!("{}-archive", kind.name()));
            let broker = fresh_broker(&[], &dir)?;
            let figures = archive::run(&broker, &args.pigeon, &args.mariadb, source, backlog, &dir, &rt)?;
            println!(
                "  {:<34} {:>9.0} rows/s  {:>6.2} CPU-s per million rows; bare INSERT loop {:.0} rows/s: {:.0}%",
                "Pigeon archive",
                figures.archiver_rows_per_sec,
                figures.archiver_cpu_s_per_million_rows,
                figures.bare_rows_per_sec,
                figures.ratio * 100.0
            );
            if figures.distinct_letters != backlog {
                bail!(
                    "the archive holds {} of {backlog} letters; no figures written",
                    figures.distinct_letters
                );
            }
            report.archive = Some(figures);
        }
    }
    if wanted("rss") {
        let figures = rss::run(&args.pigeon, args.rss_budget_mib, &args.work.join("rss"), &rt)?;
        println!(
            "  slow destination: peak RSS {:.0} MiB (budget {} MiB); the router read {} of {} letters, in flight at most \
             {} per partition (cap {}); afterwards {} delivered, {} missing",
            figures.peak_rss_mib,
            figures.budget_mib,
            figures.letters_in_while_slow,
            figures.letters,
            figures.in_flight_peak,
            figures.max_in_flight_per_partition,
            figures.delivered_after,
            figures.missing_after
        );
        if figures.missing_after > 0 {
            bail!("letters were lost behind the slow destination; no figures written");
        }
        report.rss = Some(figures);
    }
    if let Some(json) = &args.keep {
        let run_now: Vec<&str> = args.brokers.iter().map(|k| k.name()).collect();
        report.keep(report::Report::read(json)?, &run_now);
    }
    add_includes(&mut report, &args.includes)?;
    report.write(&args.out)?;
    println!("wrote {}", args.out.join("BENCHMARKS.md").display());
    Ok(())
}

/// Adds the files of `--include NAME=PATH` to the report.
fn add_includes(report: &mut report::Report, includes: &[String]) -> anyhow::Result<()> {
    for include in includes {
        let (name, path) = include.split_once('=').context("--include NAME=PATH")?;
        let text = std::fs::read_to_string(path).with_context(|| path.to_owned())?;
        report.includes.push((name.to_owned(), text));
    }
    Ok(())
}

/// A share of a rate: above 0, at most 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{text}: expected a number above 0 and at most 1 (0.5 is half the peak rate)")),
    }
}

fn print_figures(f: &Figures, try_number: u32, tries: u32) {
    let order: u64 = f.completeness.iter().map(|c| c.order_violations).sum();
    let missing: u64 = f.completeness.iter().map(|c| c.missing).sum();
    let duplicates: u64 = f.completeness.iter().map(|c| c.duplicates).sum();
    println!(
        "  {:<42} {:>9.0} letters/s  {:>6.2} CPU-s per million outputs  p50 {} ms p99 {} ms  \
         missing {missing} duplicates {duplicates} order violations {order}",
        format!("{} ({try_number}/{tries})", f.label),
        f.letters_per_sec,
        f.cpu_s_per_million_outputs,
        f.latency_p50_ms,
        f.latency_p99_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_fraction_is_above_zero_and_at_most_one() {
        assert_eq!(fraction("0.5"), Ok(0.5));
        assert_eq!(fraction("1"), Ok(1.0));
        for bad in ["0", "-0.5", "1.5", "half", ""] {
            assert!(fraction(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_arguments_parse_with_their_defaults() {
        let args = Args::try_parse_from(["pigeon-bench"]).expect("defaults");
        assert_eq!((args.letters, args.repeats, args.latency_fraction), (1_000_000, 3, 0.5));
        assert!(Args::try_parse_from(["pigeon-bench", "--repeats", "0"]).is_err(), "zero tries");
    }
}
