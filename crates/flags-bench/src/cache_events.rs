//! Counts the service's own `cache=hit|miss|unavailable` log events, so a run can tell when the
//! cache was used without instrumenting the service: the evidence is the log operators read.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

#[derive(Debug)]
pub struct CacheEvents {
    start: Instant,
    log: Mutex<EventLog>,
}

#[derive(Debug, Default)]
struct EventLog {
    /// When each cache hit was logged, from `start`.
    hits: Vec<Duration>,
    misses: usize,
    unavailable: usize,
}

/// Counts of each outcome between two points in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: usize,
    pub misses: usize,
    pub unavailable: usize,
}

impl CacheEvents {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            log: Mutex::new(EventLog::default()),
        })
    }

    /// The tracing layer that feeds this counter.
    pub fn layer(self: &Arc<Self>) -> CacheEventLayer {
        CacheEventLayer(Arc::clone(self))
    }

    pub fn counts(&self) -> CacheCounts {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        CacheCounts {
            hits: log.hits.len(),
            misses: log.misses,
            unavailable: log.unavailable,
        }
    }

    /// The first cache hit logged at or after `instant`, as a delay after it.
    pub fn first_hit_after(&self, instant: Instant) -> Option<Duration> {
        let mark = instant.saturating_duration_since(self.start);
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let index = log.hits.partition_point(|at| *at < mark);
        log.hits.get(index).map(|at| *at - mark)
    }

    /// Hits logged between two instants.
    pub fn hits_between(&self, from: Instant, to: Instant) -> usize {
        let (from, to) = (
            from.saturating_duration_since(self.start),
            to.saturating_duration_since(self.start),
        );
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.hits.partition_point(|at| *at < to) - log.hits.partition_point(|at| *at < from)
    }

    fn record(&self, outcome: &str) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            // Recorded under the lock, so the times are in order for the binary searches above.
            "hit" => log.hits.push(self.start.elapsed()),
            "miss" => log.misses += 1,
            "unavailable" => log.unavailable += 1,
            _ => {}
        }
    }
}

#[derive(Debug)]
pub struct CacheEventLayer(Arc<CacheEvents>);

impl<S: Subscriber> Layer<S> for CacheEventLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = CacheField(None);
        event.record(&mut visitor);
        if let Some(outcome) = visitor.0 {
            self.0.record(&outcome);
        }
    }
}

struct CacheField(Option<String>);

impl Visit for CacheField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "cache" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// Installs the counting layer (every `flags_core` event) beside a log output filtered by
/// `RUST_LOG`, else by `default_output` (quiet, so printing does not slow the run down).
pub fn install(events: &Arc<CacheEvents>, default_output: &str) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let output_filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_output));
    let counting_filter = EnvFilter::new("flags_core=info");
    let _ = tracing_subscriber::registry()
        .with(events.layer().with_filter(counting_filter))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(output_filter),
        )
        .try_init();
}
