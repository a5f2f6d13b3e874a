//! One run of one contender: throughput and CPU while it works through the backlog, then
//! completeness, then latency at half its peak rate.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::broker::Broker;
use crate::contenders::Run;
use crate::letters::Source;
use crate::process::Contender;
use crate::verify::{self, Completeness, Live};

/// The figures of one run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    pub broker: String,
    pub run: String,
    pub label: String,
    /// Source letters in the backlog the contender worked through.
    pub source_letters: u64,
    /// Output messages written in the measured window.
    pub outputs: u64,
    pub seconds: f64,
    /// The contender's CPU over the measured window.
    pub cpu_seconds: f64,
    /// The broker's CPU over the same window.
    pub broker_cpu_seconds: f64,
    pub letters_per_sec: f64,
    pub cpu_s_per_million_outputs: f64,
    pub peak_rss_mib: f64,
    pub latency_rate: f64,
    pub latency_letters: u64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub completeness: Vec<Completeness>,
    /// The round this try ran in (1, 2, …; 0 in reports written before rounds): every round
    /// runs each contender once, one after the other.
    #[serde(default)]
    pub round: u32,
    /// CPU-s/M and letters/s of every try of this run (these figures are the median try's).
    #[serde(default)]
    pub tries: Vec<Try>,
}

/// One try's headline figures.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct Try {
    pub cpu_s_per_million_outputs: f64,
    pub letters_per_sec: f64,
    /// Its round (0: not known).
    #[serde(default)]
    pub round: u32,
}

/// A ratio of two runs taken round by round: the median of the rounds' ratios, and the lowest
/// and highest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub rounds: usize,
}

/// `ratio` of `ours` to `theirs` in every round both ran in. Contenders of one round run
/// minutes apart, tries of one run tens of minutes apart, and this machine's speed drifts over
/// such times (by up to 2×, seen here): a round's ratio is the fair one. `None` when the runs
/// share no round (a report written before rounds).
pub fn paired(ours: &Figures, theirs: &Figures, ratio: impl Fn(&Try, &Try) -> f64) -> Option<Paired> {
    let mut ratios: Vec<f64> = ours
        .tries
        .iter()
        .filter(|t| t.round > 0)
        .filter_map(|o| theirs.tries.iter().find(|t| t.round == o.round).map(|t| ratio(o, t)))
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some(Paired {
        median: *ratios.get(ratios.len().checked_sub(1)? / 2)?,
        low: *ratios.first()?,
        high: *ratios.last()?,
        rounds: ratios.len(),
    })
}

impl Figures {
    /// The try with the median CPU per output, carrying every try's headline figures.
    pub fn median(mut tries: Vec<Figures>) -> Option<Figures> {
        tries.sort_by(|a, b| a.cpu_s_per_million_outputs.total_cmp(&b.cpu_s_per_million_outputs));
        let all: Vec<Try> = tries.iter().map(Figures::headline).collect();
        let middle = tries.len().checked_sub(1)? / 2;
        let mut median = tries.swap_remove(middle);
        median.tries = all;
        Some(median)
    }

    /// This try's headline figures.
    pub fn headline(&self) -> Try {
        Try {
            cpu_s_per_million_outputs: self.cpu_s_per_million_outputs,
            letters_per_sec: self.letters_per_sec,
            round: self.round,
        }
    }

    /// The lowest and highest CPU-s/M of the tries.
    pub fn cpu_range(&self) -> Option<(f64, f64)> {
        let cpu = self.tries.iter().map(|t| t.cpu_s_per_million_outputs);
        Some((cpu.clone().reduce(f64::min)?, cpu.reduce(f64::max)?))
    }
}

/// What a run needs.
pub struct Bench<'a> {
    pub broker: &'a Broker,
    pub source_topic: &'a str,
    pub partitions: i32,
    pub latency_secs: f64,
    /// The share of the contender's peak rate the latency letters are sent at.
    pub latency_fraction: f64,
}

impl Bench<'_> {
    /// Measures `contender` (just started, on `run`'s destinations) until it has written every
    /// letter of the backlog (`0..backlog`) to both destinations; then sends it letters
    /// `backlog..backlog + figures.latency_letters` at `latency_fraction` of that rate and
    /// times them.
    pub fn measure(&self, run: &Run, mut contender: Contender, backlog: u64) -> anyhow::Result<Figures> {
        let destinations = run.destinations();
        let client = self.broker.client();
        let live = Live::start(&client, &destinations, self.partitions, backlog)?;
        let wanted = backlog * destinations.len() as u64;
        let started = Instant::now();
        let bar = indicatif::ProgressBar::new(wanted).with_style(
            indicatif::ProgressStyle::with_template(
                "  {prefix:<34} {bar:30} {human_pos}/{human_len} outputs {eta}",
            )
            .expect("template"),
        );
        bar.set_prefix(run.label.clone());
        // The window opens at the first output: start-up and joining the group are not measured.
        let (t0, cpu0, broker0, out0) = loop {
            contender.check_alive()?;
            let out = live.backlog_outputs();
            if out > 0 {
                break (Instant::now(), contender.cpu(), self.broker.cpu(), out);
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!("{}: no output within two minutes (see its log)", run.label);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut last_progress = (Instant::now(), out0);
        while live.backlog_done() < backlog {
            contender.check_alive()?;
            let out = live.backlog_outputs();
            bar.set_position(out);
            if out > last_progress.1 {
                last_progress = (Instant::now(), out);
            } else if last_progress.0.elapsed() > Duration::from_secs(60) {
                bail!("{}: stuck at {out} of {wanted} outputs for a minute", run.label);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (t1, cpu1, broker1, out1) =
            (Instant::now(), contender.cpu(), self.broker.cpu(), live.backlog_outputs());
        bar.finish_and_clear();
        let seconds = (t1 - t0).as_secs_f64();
        let written = out1 - out0;
        let letters_per_sec = written as f64 / destinations.len() as f64 / seconds;
        let cpu_seconds = (cpu1 - cpu0).as_secs_f64();

        // Latency at a share of the contender's own peak rate (half by default). The source lingers 5 ms, as a
        // gateway's producer would (its letters are stamped before they wait, so the figure
        // includes that wait). Without any linger every letter becomes a batch of its own,
        // and the contender then reads one tiny batch per letter: far costlier than the
        // backlog's batches, so half its peak would be far more than it can take.
        let rate = (letters_per_sec * self.latency_fraction).max(1.0);
        let count = ((rate * self.latency_secs) as u64).max(100);
        let sent = Source::new(&client, self.source_topic, 5, backlog)?
            .paced(count, rate)
            .context("sending the paced letters")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while live.paced_done() < count {
            contender.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{}: {} of {count} paced letters arrived within a minute",
                    run.label,
                    live.paced_done()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let peak_rss_mib = contender.peak_rss() as f64 / (1024.0 * 1024.0);
        drop(contender);
        let verdict = live.finish(backlog + count)?;
        let created: std::collections::HashMap<u64, i64> = sent.into_iter().collect();
        let mut latencies: Vec<i64> =
            verdict.arrivals.iter().filter_map(|(seq, at)| Some(at - created.get(seq)?)).collect();
        let completeness = verdict.completeness;

        Ok(Figures {
            broker: self.broker.kind.name().into(),
            run: run.name.clone(),
            label: run.label.clone(),
            source_letters: backlog,
            outputs: written,
            seconds,
            cpu_seconds,
            broker_cpu_seconds: (broker1 - broker0).as_secs_f64(),
            letters_per_sec,
            cpu_s_per_million_outputs: cpu_seconds * 1e6 / written.max(1) as f64,
            peak_rss_mib,
            latency_rate: rate,
            latency_letters: count,
            latency_p50_ms: verify::quantile(&mut latencies, 0.50),
            latency_p99_ms: verify::quantile(&mut latencies, 0.99),
            completeness,
            round: 0,
            tries: Vec::new(),
        })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn figures(run: &str, cpu: f64, rate: f64) -> Figures {
        Figures {
            broker: "tansu".into(),
            run: run.into(),
            label: run.into(),
            source_letters: 1_000,
            outputs: 2_000,
            seconds: 1.0,
            cpu_seconds: cpu * 2_000.0 / 1e6,
            broker_cpu_seconds: 0.0,
            letters_per_sec: rate,
            cpu_s_per_million_outputs: cpu,
            peak_rss_mib: 10.0,
            latency_rate: rate / 2.0,
            latency_letters: 100,
            latency_p50_ms: 5,
            latency_p99_ms: 9,
            completeness: Vec::new(),
            round: 0,
            tries: Vec::new(),
        }
    }

    /// A run's tries, one a round, with these CPU-s/M and letters/s.
    pub fn rounds(run: &str, tries: &[(f64, f64)]) -> Figures {
        let tries = (1..)
            .zip(tries)
            .map(|(round, &(cpu, rate))| Figures { round, ..figures(run, cpu, rate) })
            .collect();
        Figures::median(tries).expect("at least one try")
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        // The machine slowed down in round 2 for both: the medians' ratio (9/6 = 1.5) says
        // more about that than the rounds' ratios do.
        let ours = rounds("forward", &[(7.0, 90.0), (14.0, 45.0), (9.0, 70.0)]);
        let theirs = rounds("limit-tuned", &[(6.0, 100.0), (12.0, 50.0), (6.5, 95.0)]);
        let cpu = paired(&ours, &theirs, |o, t| o.cpu_s_per_million_outputs / t.cpu_s_per_million_outputs)
            .expect("three shared rounds");
        assert_eq!(cpu.rounds, 3);
        assert!((cpu.median - 14.0 / 12.0).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.low - 7.0 / 6.0).abs() < 1e-9 && (cpu.high - 9.0 / 6.5).abs() < 1e-9, "{cpu:?}");
        // Runs from a report written before rounds share none.
        assert_eq!(paired(&figures("forward", 7.0, 90.0), &theirs, |o, _| o.letters_per_sec), None);
    }

    #[test]
    fn the_median_try_by_cpu_stands_for_the_run_and_keeps_every_try_s_figures() {
        let tries =
            vec![figures("forward", 9.0, 70.0), figures("forward", 7.0, 90.0), figures("forward", 8.0, 80.0)];
        let median = Figures::median(tries).expect("three tries");
        assert_eq!(median.cpu_s_per_million_outputs, 8.0);
        assert_eq!(median.letters_per_sec, 80.0, "the other figures are the median try's own");
        assert_eq!(median.tries.len(), 3);
        assert_eq!(median.cpu_range(), Some((7.0, 9.0)));
        assert!(Figures::median(Vec::new()).is_none());
        let one = Figures::median(vec![figures("forward", 5.0, 1.0)]).unwrap();
        assert_eq!(one.cpu_range(), Some((5.0, 5.0)));
    }
}
