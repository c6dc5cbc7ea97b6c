//! The open-loop schedule: request `i` is due at `start + i / rate`, whether
//! or not earlier requests have returned.
//!
//! A closed-loop generator (N workers each waiting for its answer before
//! sending the next) slows down exactly when the server does, so a stall
//! delays the requests that would have seen it and the percentiles hide it
//! ("coordinated omission"). Here the schedule is fixed in advance and every
//! latency is measured from the instant a request was *meant* to be sent, so
//! time a request spent waiting behind a slow one — in the server, in the
//! connection, or in this process — counts against the server.
//!
//! The pacer is a dedicated OS thread sleeping with `std::thread::sleep` to
//! each due instant: tokio's timer has millisecond granularity (too coarse
//! at 10 000 req/s), and spinning would steal one of the machine's cores
//! from the server under test. When the thread wakes late (the OS overshoots
//! short sleeps by tens of microseconds) it hands out every tick that has
//! become due at once; each tick still carries its own intended instant, so
//! the lateness is charged to the measured latency, never hidden.

use std::io;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One scheduled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Its position in the schedule, from 0.
    pub seq: u64,
    /// When it is meant to be sent; latency is measured from here.
    pub intended: Instant,
}

/// A constant-rate schedule of `count` requests from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When tick 0 is due.
    pub start: Instant,
    /// Ticks per second (> 0).
    pub rate: f64,
    /// How many ticks.
    pub count: u64,
}

impl Schedule {
    /// When tick `seq` is due.
    pub fn intended(&self, seq: u64) -> Instant {
        self.start + offset(seq, self.rate)
    }

    /// When the last tick is due.
    pub fn end(&self) -> Instant {
        self.intended(self.count.saturating_sub(1))
    }
}

/// How long after the start tick `seq` of a `rate` per second schedule is due.
pub fn offset(seq: u64, rate: f64) -> Duration {
    Duration::from_nanos((seq as f64 * 1e9 / rate).round() as u64)
}

/// What the pacer thread observed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacerStats {
    /// Ticks handed out.
    pub sent: u64,
    /// The latest the thread handed out a tick after its intended instant.
    pub max_lag: Duration,
}

/// Starts the pacer thread: it calls `sink` with each tick at (or as soon as
/// possible after) its intended instant, and stops after the last tick or as
/// soon as `sink` returns false.
pub fn spawn<F>(schedule: Schedule, mut sink: F) -> io::Result<JoinHandle<PacerStats>>
where
    F: FnMut(Tick) -> bool + Send + 'static,
{
    thread::Builder::new().name("vitrine-pacer".into()).spawn(move || {
        let mut stats = PacerStats::default();
        for seq in 0..schedule.count {
            let intended = schedule.intended(seq);
            let mut now = Instant::now();
            if intended > now {
                thread::sleep(intended - now);
                now = Instant::now();
            }
            stats.max_lag = stats.max_lag.max(now.saturating_duration_since(intended));
            if !sink(Tick { seq, intended }) {
                break;
            }
            stats.sent += 1;
        }
        stats
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn offsets_follow_the_rate() {
        assert_eq!(offset(0, 1000.0), Duration::ZERO);
        assert_eq!(offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(offset(10_000, 10_000.0), Duration::from_secs(1));
        assert_eq!(offset(3, 3.0), Duration::from_secs(1));
        assert_eq!(offset(30_000_000, 10_000.0), Duration::from_secs(3000));
        let s = Schedule {
            start: Instant::now(),
            rate: 4.0,
            count: 9,
        };
        assert_eq!(s.end() - s.start, Duration::from_secs(2));
    }

    #[test]
    fn every_tick_in_order_never_early() {
        let schedule = Schedule {
            start: Instant::now(),
            rate: 20_000.0,
            count: 2_000,
        };
        let (tx, rx) = mpsc::channel();
        let pacer = spawn(schedule, move |t| tx.send((t, Instant::now())).is_ok()).unwrap();
        let ticks: Vec<(Tick, Instant)> = rx.iter().collect();
        let stats = pacer.join().unwrap();
        assert_eq!(stats.sent, 2_000);
        assert_eq!(ticks.len(), 2_000);
        for (i, (tick, handed)) in ticks.iter().enumerate() {
            assert_eq!(tick.seq, i as u64);
            assert_eq!(tick.intended, schedule.intended(i as u64));
            assert!(*handed >= tick.intended);
        }
    }

    #[test]
    fn stops_when_the_sink_is_gone() {
        let schedule = Schedule {
            start: Instant::now(),
            rate: 1_000_000.0,
            count: u64::MAX,
        };
        let mut left = 10;
        let pacer = spawn(schedule, move |_| {
            left -= 1;
            left > 0
        })
        .unwrap();
        assert_eq!(pacer.join().unwrap().sent, 9);
    }
}
