//! How much more memory this process can take before an allocation fails: the system's
//! available memory, or less where an address-space limit (`ulimit -v`) is closer. Checked
//! before large host buffers are made, because a failed allocation aborts the process with
//! nothing to say what ran out.

/// Bytes this process can still allocate, as far as Linux tells; `None` where it cannot be
/// read (then callers do not refuse anything).
pub fn headroom() -> Option<u64> {
    let available = available_memory();
    let address_space = address_space_left();
    match (available, address_space) {
        (Some(a), Some(s)) => Some(a.min(s)),
        (a, s) => a.or(s),
    }
}

/// `MemAvailable` from `/proc/meminfo`.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    kib_field(&s, "MemAvailable:")
}

/// The address-space limit less what is mapped already (memory-mapped weights count).
fn address_space_left() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mapped = kib_field(&status, "VmSize:")?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "rlim_t is not u64 on every platform"
    )]
    let limit = lim.rlim_cur as u64;
    Some(limit.saturating_sub(mapped))
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a `bytes`-byte buffer for `what` when it would not fit in [`headroom`], naming both.
pub fn ensure_fits(bytes: u64, what: &str) -> crate::Result<()> {
    match headroom() {
        Some(free) if bytes > free => Err(crate::Error::Invalid(format!(
            "{what} needs {:.2} GiB of memory, but only {:.2} GiB is available",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_fit_and_names_it() {
        let Some(free) = headroom() else {
            eprintln!("skipped: /proc/meminfo is not readable here");
            return;
        };
        assert!(ensure_fits(1 << 20, "a small buffer").is_ok());
        let e = ensure_fits(free.saturating_mul(4).max(1 << 50), "the logits")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the logits") && e.contains("GiB"), "{e}");
    }
}
