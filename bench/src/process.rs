//! A contender as a child process: its CPU time and memory, read from /proc.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running child, killed (and reaped) when dropped.
pub struct Contender {
    child: Child,
    name: String,
}

impl Contender {
    /// Starts `command`; its stdout and stderr go to `log` so a failure can be read later.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("{}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self { child, name: name.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time of the process, all its threads.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Peak resident memory (VmHWM), bytes.
    pub fn peak_rss(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Resident memory now (VmRSS), bytes.
    pub fn rss(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Fails when the process has exited: a contender that dies mid-run invalidates the run.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited early ({status})", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of a process, from /proc/PID/stat (fields 14 and 15, in ticks of
/// 1/100 s, Linux's USER_HZ).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields that follow it are plain.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_shows_cpu_time_and_memory() {
        let own = std::process::id();
        let before = cpu_time(own);
        let mut x = 0u64;
        let started = std::time::Instant::now();
        // Spin until /proc shows CPU time spent (ticks are 10 ms; a loaded machine may take a
        // while to give this thread that much).
        while cpu_time(own) == before && started.elapsed() < Duration::from_secs(20) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
        let spent = cpu_time(own) - before;
        assert!(spent > Duration::ZERO, "no CPU time read after {:?} of spinning", started.elapsed());
        // This test's threads cannot have used more CPU than wall time allows (two test
        // threads at most here), plus one tick.
        assert!(spent <= started.elapsed() * 2 + Duration::from_millis(10), "{spent:?}");
        assert!(status_kib(own, "VmHWM:") > 1024, "a test process holds more than a MiB");
    }
}
