//! `NEMOTRON_CPU_PROFILE=1`: wall time per op, and per weight role for the linear layers with
//! the GB/s of stored weights they read, printed when the backend is dropped. Shows which op
//! keeps a decode step from the bandwidth limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Entry {
    calls: usize,
    time: Duration,
    bytes: u64,
}

#[derive(Default)]
pub(crate) struct Profile {
    ops: Mutex<HashMap<String, Entry>>,
}

impl Profile {
    /// A profile when `NEMOTRON_CPU_PROFILE` is set (to anything but `0`).
    pub(crate) fn from_env() -> Option<Profile> {
        std::env::var("NEMOTRON_CPU_PROFILE")
            .ok()
            .filter(|v| v != "0")
            .map(|_| Profile::default())
    }

    pub(crate) fn record(&self, op: &str, time: Duration, bytes: u64) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let e = ops.entry(op.to_string()).or_default();
        e.calls += 1;
        e.time += time;
        e.bytes += bytes;
    }

    /// One line per op, slowest first.
    pub(crate) fn report(&self) -> String {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = ops.iter().collect();
        rows.sort_by_key(|(_, e)| std::cmp::Reverse(e.time));
        let total: f64 = rows.iter().map(|(_, e)| e.time.as_secs_f64()).sum();
        let mut out = format!("cpu profile ({:.1} ms in ops):\n", total * 1e3);
        for (name, e) in rows {
            let secs = e.time.as_secs_f64();
            let rate = if e.bytes > 0 && secs > 0.0 {
                format!("{:>7.1} GB/s", e.bytes as f64 / secs / 1e9)
            } else {
                String::new()
            };
            out += &format!(
                "  {name:<56} {:>7} calls {:>10.2} ms {:>5.1} % {rate}\n",
                e.calls,
                secs * 1e3,
                100.0 * secs / total.max(f64::MIN_POSITIVE)
            );
        }
        out
    }
}

/// A weight's role: its name with the layer (and expert) numbers replaced by `*`, so every
/// layer's `in_proj` adds up in one line.
pub(crate) fn role(name: &str) -> String {
    name.trim_end_matches(".weight")
        .split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                "*"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_merge_layers_and_report_sorts_by_time() {
        assert_eq!(
            role("backbone.layers.12.mixer.in_proj.weight"),
            "backbone.layers.*.mixer.in_proj"
        );
        assert_eq!(role("lm_head.weight"), "lm_head");
        let p = Profile::default();
        p.record("a", Duration::from_millis(1), 0);
        p.record("b", Duration::from_millis(3), 3_000_000);
        p.record("b", Duration::from_millis(1), 1_000_000);
        let r = p.report();
        let (a, b) = (r.find("  a ").unwrap(), r.find("  b ").unwrap());
        assert!(b < a, "{r}");
        assert!(r.contains("2 calls"), "{r}");
        assert!(r.contains("1.0 GB/s"), "{r}");
    }
}
