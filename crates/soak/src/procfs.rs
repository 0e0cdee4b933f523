//! Samples processes from `/proc` while a run holds its streams: resident
//! memory (VmRSS, VmHWM), thread count and CPU time (utime + stime), each
//! sample tagged with the number of streams open at that moment so the
//! plateau (all streams open) can be picked out afterwards.

use serde_json::{json, Value};

/// One reading of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    pub threads: u64,
    /// utime + stime, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat` (`pid` may be `"self"`).
/// `None` if the process is gone.
pub fn read(pid: &str) -> Option<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut r = Reading::default();
    for line in status.lines() {
        let (key, value) = line.split_once(':')?;
        let number = || value.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "VmRSS" => r.rss_kb = number(),
            "VmHWM" => r.hwm_kb = number(),
            "Threads" => r.threads = number(),
            _ => {}
        }
    }
    // Fields after the command name (which may contain spaces): state is the
    // first, utime the 12th and stime the 13th.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    r.cpu_ticks = tick(11) + tick(12);
    Some(r)
}

/// A watched process and its readings over the run.
pub struct Watch {
    pub name: String,
    pub pid: String,
    /// (seconds since the run started, open streams, reading).
    pub samples: Vec<(f64, u64, Reading)>,
}

impl Watch {
    pub fn new(name: &str, pid: &str) -> Watch {
        Watch { name: name.to_owned(), pid: pid.to_owned(), samples: Vec::new() }
    }

    pub fn sample(&mut self, t: f64, open: u64) {
        if let Some(r) = read(&self.pid) {
            self.samples.push((t, open, r));
        }
    }

    /// Summary: RSS before the load (first sample), at the plateau (median of
    /// the samples with at least 99% of the most streams ever seen open), peak
    /// (VmHWM at the last sample), max threads, CPU seconds from the first
    /// sample to the last.
    pub fn summary(&self, clk_tck: u64) -> Value {
        let (Some(first), Some(last)) = (self.samples.first(), self.samples.last()) else {
            return json!({"pid": self.pid, "samples": 0});
        };
        let most_open = self.samples.iter().map(|s| s.1).max().unwrap_or(0);
        let mut plateau: Vec<u64> =
            self.samples.iter().filter(|s| most_open > 0 && s.1 * 100 >= most_open * 99).map(|s| s.2.rss_kb).collect();
        plateau.sort_unstable();
        let cpu_ticks = last.2.cpu_ticks.saturating_sub(first.2.cpu_ticks);
        json!({
            "pid": self.pid,
            "samples": self.samples.len(),
            "rss_before_kb": first.2.rss_kb,
            "rss_plateau_kb": plateau.get(plateau.len() / 2),
            "plateau_samples": plateau.len(),
            "plateau_open": most_open,
            "rss_max_kb": self.samples.iter().map(|s| s.2.rss_kb).max(),
            "hwm_kb": last.2.hwm_kb,
            "threads_max": self.samples.iter().map(|s| s.2.threads).max(),
            "cpu_s": cpu_ticks as f64 / clk_tck.max(1) as f64,
            "wall_s": last.0 - first.0,
            // Compact series for plots: [t, open, rss_kb, threads, cpu_ticks].
            "series": self.samples.iter().map(|(t, open, r)| json!([(t * 10.0).round() / 10.0, open, r.rss_kb, r.threads, r.cpu_ticks])).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        let r = read("self").unwrap();
        assert!(r.rss_kb > 0 && r.hwm_kb >= r.rss_kb && r.threads >= 1, "{r:?}");
        assert!(read("999999999").is_none());
        let mut w = Watch::new("self", "self");
        w.sample(0.0, 0);
        w.sample(0.5, 10);
        w.sample(1.0, 10);
        w.sample(1.5, 2);
        let s = w.summary(100);
        assert_eq!(s["samples"], 4);
        assert_eq!(s["plateau_samples"], 2);
        assert!(s["rss_plateau_kb"].as_u64().unwrap() > 0);
    }
}
