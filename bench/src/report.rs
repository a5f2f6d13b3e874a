//! `docs/BENCHMARKS.md` and `docs/benchmarks.json` from the figures of one run of the bench.

use std::fmt::Write as _;

use anyhow::Context;
use std::path::Path;
use std::process::Command;

use crate::archive::ArchiveFigures;
use crate::contenders;
use crate::measure::{self, Figures, Paired, Try};
use crate::rss::RssFigures;

/// The brokers of the report, in its order.
const BROKERS: [&str; 3] = ["tansu", "kafka", "mock"];

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub machine: String,
    pub revision: String,
    pub partitions: i32,
    pub letters: u64,
    pub mock_letters: u64,
    pub latency_secs: f64,
    #[serde(default = "half")]
    pub latency_fraction: f64,
    #[serde(default = "one")]
    pub repeats: u32,
    pub runs: Vec<Figures>,
    pub archive: Option<ArchiveFigures>,
    pub rss: Option<RssFigures>,
    /// Figures kept from earlier runs (`--keep`): what, and the revision they were measured at.
    #[serde(default)]
    pub kept: Vec<String>,
    #[serde(skip)]
    pub includes: Vec<(String, String)>,
}

impl Report {
    pub fn new(
        partitions: i32,
        letters: u64,
        mock_letters: u64,
        latency_secs: f64,
        latency_fraction: f64,
        repeats: u32,
    ) -> Self {
        Self {
            machine: machine(),
            revision: git(&["describe", "--always", "--dirty"]),
            partitions,
            letters,
            mock_letters,
            latency_secs,
            latency_fraction,
            repeats,
            runs: Vec::new(),
            archive: None,
            rss: None,
            kept: Vec::new(),
            includes: Vec::new(),
        }
    }

    /// The figures of an earlier run, from its `benchmarks.json`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report of pigeon-bench", path.display()))
    }

    /// Takes from `earlier` the runs of brokers not in `run_now`, and its archive and
    /// slow-destination figures where this run has none; the report says which were kept.
    pub fn keep(&mut self, earlier: Report, run_now: &[&str]) {
        let mut kept_brokers: Vec<String> = Vec::new();
        for figures in earlier.runs.into_iter().filter(|f| !run_now.contains(&f.broker.as_str())) {
            if !kept_brokers.contains(&figures.broker) {
                kept_brokers.push(figures.broker.clone());
            }
            self.runs.push(figures);
        }
        let mut kept: Vec<String> = kept_brokers.iter().map(|b| format!("the {b} runs")).collect();
        if self.archive.is_none() && earlier.archive.is_some() {
            self.archive = earlier.archive;
            kept.push("the archive run".into());
        }
        if self.rss.is_none() && earlier.rss.is_some() {
            self.rss = earlier.rss;
            kept.push("the slow-destination run".into());
        }
        if !kept.is_empty() {
            self.kept.push(format!(
                "{} (revision `{}`, {}; {})",
                kept.join(", "),
                earlier.revision,
                earlier.machine,
                match earlier.repeats {
                    1 => "each run tried once".to_owned(),
                    n => format!("each run tried {n} times, in rounds"),
                }
            ));
        }
        // What the earlier run had kept stays said.
        self.kept.extend(earlier.kept);
    }

    fn find(&self, broker: &str, run: &str) -> Option<&Figures> {
        self.runs.iter().find(|f| f.broker == broker && f.run == run)
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("benchmarks.json"), serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(out.join("BENCHMARKS.md"), self.markdown())?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Written by `scripts/bench` (revision `{}`) on {}. Every contender is a process of its own, and \
             every run has a broker of its own holding the same source letters: realistic gift letters from \
             100 rooms (the key), topics of {} partitions. A contender's CPU time is read from `/proc` over the \
             window from its first output to its last, so start-up is not counted. {} **CPU-s/M** is CPU-seconds \
             per million output letters (each source letter makes two outputs, one per destination topic), so \
             outputs per CPU-second are 1,000,000 / CPU-s/M and source letters per CPU-second half that, \
             500,000 / CPU-s/M. Each run is verified as it is written: every \
             source letter on both destinations (missing), no letter of a room after a later one (order), \
             duplicates counted; an incomplete run writes no figures.\n",
            self.revision,
            self.machine,
            self.partitions,
            tries(self.repeats)
        );
        let _ = writeln!(
            md,
            "Latency is the verifier's receive time minus the source letter's CreateTime, for {} s of letters \
             sent at {:.0}% of the contender's own peak rate by a producer that lingers 5 ms, as a gateway's \
             would. Read it with care: on two cores the source, the broker, the contender and the verifier \
             share the machine, and letters sent at a pace travel in batches of one or two per partition, \
             which cost every process several times more per letter than the backlog's full batches. Tansu \
             and the mock also answer a fetch that finds nothing only when its wait (`fetch.wait.max.ms`, 500 ms \
             by default) runs out, where Kafka answers as soon as a letter arrives. So the figures say more \
             about this machine and these brokers than about the contenders; compare them with each other \
             only. `--latency-fraction` sends at another share of the peak.\n",
            self.latency_secs,
            100.0 * self.latency_fraction
        );
        if !self.kept.is_empty() {
            let _ = writeln!(md, "Kept from earlier runs of `scripts/bench`: {}.\n", self.kept.join("; "));
        }
        let _ = writeln!(md, "![CPU per million outputs and letters per second](benchmarks.png)\n");
        for broker in BROKERS {
            let runs: Vec<&Figures> = self.runs.iter().filter(|f| f.broker == broker).collect();
            if runs.is_empty() {
                continue;
            }
            // The runs' own backlog: runs kept from an earlier report may have had another.
            let letters = runs.iter().map(|f| f.source_letters).max().unwrap_or(self.letters);
            let title = match broker {
                "tansu" => format!("Tansu (in-memory storage), {letters} letters"),
                "kafka" => format!("Apache Kafka 4 (`scripts/kafka`), {letters} letters"),
                _ => format!("librdkafka's mock cluster (`pigeon dev-broker`), {letters} letters"),
            };
            let _ = writeln!(md, "## {title}\n");
            if broker == "kafka" {
                let _ = writeln!(
                    md,
                    "What differs from Tansu: the broker users run. One KRaft node, broker and controller, a \
                     JVM with a 512 MiB heap (its CPU, garbage collection included, is the broker CPU-s/M \
                     column); the log is written to disk through the page cache (Kafka's defaults: no sync per \
                     write), one replica; a fetch is answered as soon as letters arrive. The contenders, their \
                     settings, the letters and the goals are the same as on Tansu.\n"
                );
            }
            let limit = self.find(broker, "limit-tuned");
            let _ = writeln!(
                md,
                "| contender | letters/s | CPU-s/M | CPU-s/M of the tries | × limit CPU | % limit rate | p50 ms | p99 ms | missing | duplicates | order | broker CPU-s/M | peak RSS MiB |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            for f in &runs {
                let sum =
                    |g: fn(&crate::verify::Completeness) -> u64| f.completeness.iter().map(g).sum::<u64>();
                let (cpu_ratio, rate_ratio) = limit.map_or((String::new(), String::new()), |l| {
                    (
                        format!("{:.2}", f.cpu_s_per_million_outputs / l.cpu_s_per_million_outputs),
                        format!("{:.0}%", 100.0 * f.letters_per_sec / l.letters_per_sec),
                    )
                });
                let range = f.cpu_range().map_or(String::new(), |(low, high)| format!("{low:.2}–{high:.2}"));
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.2} | {range} | {cpu_ratio} | {rate_ratio} | {} | {} | {} | {} | {} | {:.2} | {:.0} |",
                    f.label,
                    f.letters_per_sec,
                    f.cpu_s_per_million_outputs,
                    f.latency_p50_ms,
                    f.latency_p99_ms,
                    sum(|c| c.missing),
                    sum(|c| c.duplicates),
                    sum(|c| c.order_violations),
                    f.broker_cpu_seconds * 1e6 / f.outputs.max(1) as f64,
                    f.peak_rss_mib
                );
            }
            let _ = writeln!(md);
            self.tuning(&mut md, broker);
        }
        self.archive_section(&mut md);
        self.rss_section(&mut md);
        self.goals(&mut md);
        for (name, text) in &self.includes {
            let _ = writeln!(md, "## {name}\n\n```text\n{}\n```\n", text.trim_end());
        }
        self.peer_section(&mut md);
        md
    }

    fn tuning(&self, md: &mut String, broker: &str) {
        let steps = contenders::limit_steps();
        let measured: Vec<(&Figures, &contenders::Settings)> =
            steps.iter().filter_map(|step| Some((self.find(broker, step.name)?, &step.settings))).collect();
        if measured.len() < 2 {
            return;
        }
        let _ = writeln!(md, "What each step of tuning buys the limit (each adds to the one above):\n");
        let _ = writeln!(md, "| step | adds | letters/s | CPU-s/M | CPU vs previous |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|");
        let mut previous: Option<(&Figures, &contenders::Settings)> = None;
        for (f, props) in &measured {
            let added: Vec<String> = props
                .iter()
                .filter(|p| previous.is_none_or(|(_, before)| !before.contains(p)))
                .map(|(k, v)| format!("`{k}={v}`"))
                .collect();
            let change = previous.map_or(String::new(), |(p, _)| {
                format!("{:+.0}%", 100.0 * (f.cpu_s_per_million_outputs / p.cpu_s_per_million_outputs - 1.0))
            });
            let adds =
                if added.is_empty() { "nothing (librdkafka's defaults)".to_owned() } else { added.join(" ") };
            let _ = writeln!(
                md,
                "| {} | {adds} | {:.0} | {:.2} | {change} |",
                f.label, f.letters_per_sec, f.cpu_s_per_million_outputs
            );
            previous = Some((f, props));
        }
        let _ = writeln!(md);
    }

    fn archive_section(&self, md: &mut String) {
        let Some(a) = &self.archive else { return };
        let _ = writeln!(
            md,
            "## Archive into MariaDB ({})\n\n{} letters archived ({} distinct). The bare loop inserts the same rows \
             into an identical table, 1,000 rows per statement, each its own transaction, on one connection, in the \
             order the archiver read them (its batches in turn, in a batch each partition's letters in turn); the \
             archiver writes each batch in letter id order, its primary key.\n\n\
             | contender | rows/s | CPU-s per million rows |\n|---|---:|---:|\n| Pigeon archiver | {:.0} | {:.2} |\n\
             | bare multi-row INSERT loop | {:.0} | |\n\nThe archiver reaches **{:.0}%** of the bare rate.\n",
            a.broker,
            a.rows,
            a.distinct_letters,
            a.archiver_rows_per_sec,
            a.archiver_cpu_s_per_million_rows,
            a.bare_rows_per_sec,
            100.0 * a.ratio
        );
    }

    fn rss_section(&self, md: &mut String) {
        let Some(r) = &self.rss else { return };
        let _ = writeln!(
            md,
            "## A slow destination\n\n{} letters wait on the source; the destination's broker answers after {} ms \
             for {:.0} s (a mock cluster of two brokers). The router reads {} letters in that time, holds at most {} \
             letters of a partition in flight (its cap: {}) and pauses the rest; {} outputs got through. \
             **Peak RSS {:.0} MiB**, budget {} MiB. Then the destination is quick again: {} of {} letters arrive \
             on both destinations, {} missing.\n",
            r.letters,
            r.slow_rtt_ms,
            r.slow_seconds,
            r.letters_in_while_slow,
            r.in_flight_peak,
            r.max_in_flight_per_partition,
            r.delivered_while_slow,
            r.peak_rss_mib,
            r.budget_mib,
            r.delivered_after / 2,
            r.letters,
            r.missing_after
        );
    }

    fn goals(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Goals\n\nA ratio of two runs is taken round by round when they ran in rounds (each round runs \
             every contender once, one after the other): the median of the rounds' ratios, with the lowest and \
             highest in brackets. This machine's speed drifts by up to 2× over tens of minutes, so contenders \
             of one round, minutes apart, are the fair comparison; the tables above show each run's median \
             try.\n\n| goal | figure | met |\n|---|---|---|"
        );
        let mut row = |goal: &str, figure: String, met: bool| {
            let _ = writeln!(md, "| {goal} | {figure} | {} |", if met { "yes" } else { "**no**" });
        };
        let cpu = |t: &Try| t.cpu_s_per_million_outputs;
        let rate = |t: &Try| t.letters_per_sec;
        for broker in BROKERS {
            let (Some(forward), Some(limit)) =
                (self.find(broker, "forward"), self.find(broker, "limit-tuned"))
            else {
                continue;
            };
            let r = ratio(forward, limit, cpu);
            row(&format!("{broker}: forward ≤ 1.5× the tuned limit's CPU"), times(&r, 2), r.median <= 1.5);
            let r = ratio(forward, limit, rate);
            row(&format!("{broker}: forward ≥ 90% of its throughput"), percent(&r), r.median >= 0.9);
            if let Some(default) = self.find(broker, "limit-default") {
                let r = ratio(forward, default, cpu);
                row(
                    &format!("{broker}: forward ≤ 1.5× the default limit's CPU"),
                    times(&r, 2),
                    r.median <= 1.5,
                );
                let r = ratio(forward, default, rate);
                row(
                    &format!("{broker}: forward ≥ 90% of the default limit's throughput"),
                    percent(&r),
                    r.median >= 0.9,
                );
            }
            if let Some(script) = self.find(broker, "script") {
                let r = ratio(script, forward, cpu);
                row(&format!("{broker}: script ≤ 5× forward's CPU"), times(&r, 2), r.median <= 5.0);
            }
            // Letters per CPU-second is the inverse of CPU per output: both make two outputs a letter.
            for (ours, theirs, work) in [("forward", "peer-forward", "forward"), ("script", "peer", "script")]
            {
                if let (Some(ours), Some(theirs)) = (self.find(broker, ours), self.find(broker, theirs)) {
                    let r = ratio(theirs, ours, cpu);
                    row(
                        &format!(
                            "{broker}: ≥ 2.5× the peer's letters per CPU-second ({work} against its peer)"
                        ),
                        times(&r, 1),
                        r.median >= 2.5,
                    );
                }
            }
        }
        if let Some(a) = &self.archive {
            row("archive ≥ 80% of the bare insert rate", format!("{:.0}%", 100.0 * a.ratio), a.ratio >= 0.8);
        }
        if let Some(r) = &self.rss {
            row(
                "peak RSS under the budget behind a slow destination",
                format!("{:.0} of {} MiB", r.peak_rss_mib, r.budget_mib),
                r.peak_rss_mib <= r.budget_mib as f64 && r.missing_after == 0,
            );
        }
        let _ = writeln!(md);
    }

    fn peer_section(&self, md: &mut String) {
        let settings: Vec<String> = contenders::pigeon_settings()
            .into_iter()
            .filter(|(k, _)| k.starts_with("producer."))
            .map(|(k, v)| format!("{}={v}", &k["producer.".len()..]))
            .collect();
        let _ = writeln!(
            md,
            "## The peer\n\nQuix Streams {} (from PyPI), its producer given Pigeon's producer settings ({}); \
             everything else is Quix Streams' defaults (at-least-once, commit every 5 s). `bench/peer/quix_gifts.py`:\n\n\
             ```python\n{}```\n",
            pip_version("quixstreams"),
            settings.join(", "),
            contenders::PEER
        );
    }
}

/// `figure` of `ours` over `theirs`: round by round when the runs share rounds, else the ratio
/// of the median tries (a report written before rounds), as a "round" of its own.
fn ratio(ours: &Figures, theirs: &Figures, figure: fn(&Try) -> f64) -> Paired {
    measure::paired(ours, theirs, |o, t| figure(o) / figure(t)).unwrap_or_else(|| {
        let value = figure(&ours.headline()) / figure(&theirs.headline());
        Paired { median: value, low: value, high: value, rounds: 0 }
    })
}

/// A ratio as `1.19×`, with the rounds' range when there were rounds.
fn times(r: &Paired, digits: usize) -> String {
    let range =
        (r.rounds > 1).then(|| format!(" ({:.digits$}–{:.digits$}× in {} rounds)", r.low, r.high, r.rounds));
    format!("{:.digits$}×{}", r.median, range.unwrap_or_default())
}

/// A ratio as `82%`, with the rounds' range when there were rounds.
fn percent(r: &Paired) -> String {
    let range = (r.rounds > 1)
        .then(|| format!(" ({:.0}–{:.0}% in {} rounds)", 100.0 * r.low, 100.0 * r.high, r.rounds));
    format!("{:.0}%{}", 100.0 * r.median, range.unwrap_or_default())
}

/// How the report's runs were tried.
fn tries(repeats: u32) -> String {
    if repeats > 1 {
        format!(
            "Each run is tried {repeats} times, in {repeats} rounds of every run, each try on a fresh broker; \
             a row is the try with the median CPU, and the range of all tries stands beside it (differences \
             smaller than that range are noise)."
        )
    } else {
        "Each run is tried once, so differences of 10–20% between runs can be noise (the same run varies by \
         that much from try to try here)."
            .to_owned()
    }
}

fn half() -> f64 {
    0.5
}

fn one() -> u32 {
    1
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn pip_version(package: &str) -> String {
    std::env::var(format!("BENCH_{}_VERSION", package.to_uppercase()))
        .unwrap_or_else(|_| "(version unknown)".into())
}

/// CPU model, cores and memory, from /proc.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "an unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0));
    format!("{cores} cores of {model}, {mem_gib:.0} GiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::tests::figures;

    /// A report written from the figures of a run, then read back from its JSON (as
    /// `--rewrite` does), gives the same page: the limits' ratios, the tries' range, the goals.
    #[test]
    fn a_report_reads_back_from_its_json_and_shows_ratios_ranges_and_goals() {
        let mut report = Report::new(64, 1_000, 200, 5.0, 0.5, 3);
        let tries = vec![
            figures("forward", 9.0, 90.0),
            figures("forward", 8.0, 95.0),
            figures("forward", 10.0, 85.0),
        ];
        report.runs.push(Figures::median(tries).unwrap());
        report.runs.push(figures("limit-tuned", 6.0, 100.0));
        report.runs.push(figures("limit-default", 4.0, 110.0));
        let out = tempfile::tempdir().unwrap();
        report.write(out.path()).unwrap();
        let page = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).unwrap();
        let again = Report::read(&out.path().join("benchmarks.json")).unwrap();
        assert_eq!(again.markdown(), page, "the JSON holds everything the page shows");

        let forward_row = page.lines().find(|l| l.starts_with("| forward |")).expect("a row for forward");
        assert!(forward_row.contains("| 9.00 | 8.00–10.00 | 1.50 | 90% |"), "{forward_row}");
        assert!(page.contains("| tansu: forward ≤ 1.5× the tuned limit's CPU | 1.50× | yes |"), "{page}");
        assert!(
            page.contains("| tansu: forward ≤ 1.5× the default limit's CPU | 2.25× | **no** |"),
            "{page}"
        );
        assert!(
            page.contains("| tansu: forward ≥ 90% of the default limit's throughput | 82% | **no** |"),
            "{page}"
        );
        assert!(page.contains("tried 3 times"), "{page}");
        assert!(!page.contains("rounds)"), "figures without rounds are compared by their medians");
        assert!(Report::read(&out.path().join("BENCHMARKS.md")).is_err(), "markdown is not a report");
    }

    /// Runs tried in rounds are compared round by round, and the page says so.
    #[test]
    fn goals_of_runs_tried_in_rounds_are_the_median_of_the_rounds_ratios() {
        let mut report = Report::new(64, 1_000, 200, 5.0, 0.5, 3);
        report.runs.push(crate::measure::tests::rounds("forward", &[(7.0, 90.0), (14.0, 45.0), (9.0, 70.0)]));
        report
            .runs
            .push(crate::measure::tests::rounds("limit-tuned", &[(6.0, 100.0), (12.0, 50.0), (6.5, 95.0)]));
        let page = report.markdown();
        // Medians: 9.0 against 6.5 would be 1.38×; the rounds say 1.17×, 1.17× and 1.38×.
        assert!(
            page.contains(
                "| tansu: forward ≤ 1.5× the tuned limit's CPU | 1.17× (1.17–1.38× in 3 rounds) | yes |"
            ),
            "{page}"
        );
        // Rates: 90%, 90% and 74%.
        assert!(
            page.contains("| tansu: forward ≥ 90% of its throughput | 90% (74–90% in 3 rounds) | yes |"),
            "{page}"
        );
    }

    /// `--brokers kafka --keep docs/benchmarks.json`: Kafka's new runs beside the earlier run's
    /// Tansu runs, each broker with its own section and goals, and the page says what was kept.
    #[test]
    fn a_run_on_kafka_keeps_the_earlier_runs_of_the_other_brokers() {
        let mut earlier = Report::new(64, 1_000, 200, 5.0, 0.5, 3);
        earlier.revision = "a64b29a".into();
        earlier.runs.push(figures("forward", 8.0, 90.0));
        earlier.runs.push(figures("limit-tuned", 6.0, 100.0));
        let kafka =
            |run: &str, cpu: f64, rate: f64| Figures { broker: "kafka".into(), ..figures(run, cpu, rate) };
        let mut now = Report::new(64, 1_000, 200, 5.0, 0.5, 3);
        now.runs.push(kafka("forward", 12.0, 60.0));
        now.runs.push(kafka("limit-tuned", 6.0, 100.0));
        now.keep(earlier, &["kafka"]);
        let page = now.markdown();
        assert!(
            page.contains("## Tansu (in-memory storage)") && page.contains("## Apache Kafka 4"),
            "{page}"
        );
        assert!(page.contains("| tansu: forward ≤ 1.5× the tuned limit's CPU | 1.33× | yes |"), "{page}");
        assert!(page.contains("| kafka: forward ≤ 1.5× the tuned limit's CPU | 2.00× | **no** |"), "{page}");
        assert!(
            page.contains("Kept from earlier runs of `scripts/bench`: the tansu runs (revision `a64b29a`, "),
            "{page}"
        );
        assert_eq!(now.runs.iter().filter(|f| f.broker == "tansu").count(), 2);
    }
}
