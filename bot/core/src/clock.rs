//! Where time comes from. The core never reads a clock: the edges hand it [`Millis`] from
//! a [`Clock`], which is the system's (`wavelet`'s `SystemClock`) when Wavelet runs, and a
//! [`ManualClock`] in transcripts, tests and benchmarks, which moves only when told to.

use crate::Millis;
use std::sync::Mutex;

/// Where time comes from: the system clock, or a simulated one for transcripts.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Millis>);

impl ManualClock {
    pub fn new(start: Millis) -> ManualClock {
        ManualClock(Mutex::new(start))
    }

    pub fn advance(&self, d: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.plus(d);
    }

    pub fn now_millis(&self) -> Millis {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now_millis()
    }
}
