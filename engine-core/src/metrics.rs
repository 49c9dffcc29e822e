//! Per-engine counters: operations, bytes, errors, retries and a latency histogram per
//! operation kind, and the copies a hosted runtime's buffer type forces. Recording is a
//! handful of relaxed atomic adds: no lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Op, Result};

/// Latency buckets: bucket `i` counts latencies in `[2^i, 2^(i+1))` nanoseconds (bucket 0
/// also holds 0; the last bucket holds everything from 2^31 ns, about 2.1 s, up).
pub const LATENCY_BUCKETS: usize = 32;

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// The live counters of one engine.
#[derive(Default)]
pub struct Metrics {
    kinds: [Counters; 7],
    copies: AtomicU64,
    copied_bytes: AtomicU64,
    slot_waits: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl Metrics {
    /// Records one finished request of `op` (one of [`Op::IO`]; others are not counted).
    pub fn record(&self, op: Op, result: &Result<usize>, latency: Duration, retries: u32) {
        let Some(index) = op.io_index() else {
            debug_assert!(false, "{op} is not a request operation");
            return;
        };
        let c = &self.kinds[index];
        c.ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(n) => c.bytes.fetch_add(*n as u64, Ordering::Relaxed),
            Err(_) => c.errors.fetch_add(1, Ordering::Relaxed),
        };
        if retries > 0 {
            c.retries.fetch_add(u64::from(retries), Ordering::Relaxed);
        }
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (63 - ns.max(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        c.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one copy of `bytes` between a request's buffer and a buffer of a hosted
    /// runtime's own type (glommio's `DmaBuffer`), which its file operations insist on.
    pub fn record_copy(&self, bytes: usize) {
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.copied_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one async request that found all of the engine's `queue_depth` slots taken
    /// and waited in line for one.
    pub fn record_slot_wait(&self) {
        self.slot_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let take = |c: &Counters| OpMetrics {
            ops: c.ops.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            latency_ns_buckets: std::array::from_fn(|i| c.latency[i].load(Ordering::Relaxed)),
        };
        MetricsSnapshot {
            read: take(&self.kinds[0]),
            write: take(&self.kinds[1]),
            sync_data: take(&self.kinds[2]),
            sync_all: take(&self.kinds[3]),
            allocate: take(&self.kinds[4]),
            set_len: take(&self.kinds[5]),
            metadata: take(&self.kinds[6]),
            copies: self.copies.load(Ordering::Relaxed),
            copied_bytes: self.copied_bytes.load(Ordering::Relaxed),
            slot_waits: self.slot_waits.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one operation kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpMetrics {
    /// Requests finished, successful or not.
    pub ops: u64,
    /// Bytes transferred by the successful ones.
    pub bytes: u64,
    /// Requests that finished with an error.
    pub errors: u64,
    /// EINTR/EAGAIN retries made inside the engine.
    pub retries: u64,
    /// The latency histogram; see [`LATENCY_BUCKETS`]. A request's latency runs from its
    /// admission (a future's first poll, a push on a queue) to the engine settling its
    /// completion, every retry and resumed piece included (a request refused before it
    /// reaches the kernel counts 0). It leaves out the wait from there to the caller: until
    /// the future is polled again, or the queue's completion is taken. On a thread that
    /// submits many requests one after another that wait can be the larger part: measure at
    /// the caller for the latency a caller sees.
    pub latency_ns_buckets: [u64; LATENCY_BUCKETS],
}

impl OpMetrics {
    /// An upper bound of the latency at quantile `q` (0.0 to 1.0), in nanoseconds: the top of
    /// the bucket holding it. 0 when nothing was recorded.
    pub fn latency_ns_quantile(&self, q: f64) -> u64 {
        let total: u64 = self.latency_ns_buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.latency_ns_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return (2u64 << i) - 1;
            }
        }
        u64::MAX
    }
}

/// A copy of an engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Reads.
    pub read: OpMetrics,
    /// Writes.
    pub write: OpMetrics,
    /// `sync_data` calls.
    pub sync_data: OpMetrics,
    /// `sync_all` calls.
    pub sync_all: OpMetrics,
    /// `allocate` calls (bytes: 0).
    pub allocate: OpMetrics,
    /// `set_len` calls (bytes: 0).
    pub set_len: OpMetrics,
    /// `metadata` calls (bytes: 0).
    pub metadata: OpMetrics,
    /// Copies between request buffers and a hosted runtime's own buffers, made because the
    /// runtime's file operations take only buffers of its type (glommio); 0 on the backends
    /// that read into and write from the request's buffer.
    pub copies: u64,
    /// Bytes those copies moved.
    pub copied_bytes: u64,
    /// Async requests that found every slot taken (as many requests in flight as
    /// [`crate::EngineConfig::queue_depth`]) and waited in line for one. A count that grows
    /// with the requests means the program keeps more in flight than the depth admits, so
    /// they take turns: raise the depth to what it keeps in flight (the queue API is bounded
    /// by its own depth instead, and does not count here).
    pub slot_waits: u64,
}

impl MetricsSnapshot {
    /// The counters of `op`; `None` for operations that are not requests.
    pub fn of(&self, op: Op) -> Option<&OpMetrics> {
        match op {
            Op::Read => Some(&self.read),
            Op::Write => Some(&self.write),
            Op::SyncData => Some(&self.sync_data),
            Op::SyncAll => Some(&self.sync_all),
            Op::Allocate => Some(&self.allocate),
            Op::SetLen => Some(&self.set_len),
            Op::Metadata => Some(&self.metadata),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};

    #[test]
    fn counts_and_quantiles() {
        let m = Metrics::default();
        m.record(Op::Read, &Ok(4096), Duration::from_nanos(1000), 0);
        m.record(Op::Read, &Ok(4096), Duration::from_nanos(3000), 2);
        m.record(
            Op::Read,
            &Err(Error::new(ErrorKind::Io, Op::Read, "")),
            Duration::from_micros(100),
            0,
        );
        let s = m.snapshot();
        assert_eq!(
            (s.read.ops, s.read.bytes, s.read.errors, s.read.retries),
            (3, 8192, 1, 2)
        );
        assert_eq!(s.write.ops, 0);
        assert_eq!(
            s.read.latency_ns_quantile(0.0),
            1023,
            "1000 ns is in [512, 1024)"
        );
        assert_eq!(
            s.read.latency_ns_quantile(0.5),
            4095,
            "3000 ns is in [2048, 4096)"
        );
        assert!(s.read.latency_ns_quantile(1.0) >= 100_000);
        assert_eq!(s.write.latency_ns_quantile(0.5), 0);
    }
}
