//! Deterministic crash points for the fault tests: `WAVELET_TEST_CRASH_AT=NAME:N` aborts
//! the process (no destructors, no flushing: as abrupt as `kill -9`) the N-th time the
//! point NAME is reached; `WAVELET_TEST_CRASH_TRACE=FILE` appends the name of every point
//! reached, so a test can count them in a clean run first. Unset (always, outside tests)
//! a point costs one check of a value read once.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

struct Plan {
    crash_at: Option<(String, u64)>,
    trace: Option<Mutex<std::fs::File>>,
    seen: Mutex<HashMap<&'static str, u64>>,
}

fn plan() -> Option<&'static Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let crash_at = std::env::var("WAVELET_TEST_CRASH_AT").ok().and_then(|v| {
            let (name, n) = v.rsplit_once(':')?;
            Some((name.to_string(), n.parse().ok()?))
        });
        let trace = std::env::var("WAVELET_TEST_CRASH_TRACE")
            .ok()
            .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
            .map(Mutex::new);
        (crash_at.is_some() || trace.is_some()).then(|| Plan { crash_at, trace, seen: Mutex::default() })
    })
    .as_ref()
}

/// A place a crash is tested at.
pub fn point(name: &'static str) {
    let Some(p) = plan() else { return };
    if let Some(t) = &p.trace {
        let mut f = t.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{name}");
    }
    if let Some((at, n)) = &p.crash_at
        && at == name
    {
        let mut seen = p.seen.lock().unwrap_or_else(|e| e.into_inner());
        let count = seen.entry(name).or_insert(0);
        *count += 1;
        if *count == *n {
            std::process::abort();
        }
    }
}
