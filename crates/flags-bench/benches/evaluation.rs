//! Criterion micro-benchmarks of the per-request CPU work: evaluating every flag of an
//! environment for one user, and decoding / encoding the cached snapshot (contract §3 JSON).
//! `make bench` runs them; `docs/performance.md` has the figures.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flags_core::cache::{decode_snapshot, encode_snapshot};
use flags_core::domain::{Evaluations, Flag, FlagSet, OverrideType, Timestamp, UserOverrides};
use std::hint::black_box;
use std::sync::Arc;

const SIZES: [usize; 3] = [10, 100, 1_000];

fn flags(count: usize) -> FlagSet {
    (0..count)
        .map(|i| {
            let key = format!("flag-{i:04}");
            let flag = Flag {
                id: uuid::Uuid::new_v4(),
                flag_key: key.clone(),
                environment: "production".into(),
                enabled: i % 4 != 3,
                rollout_percentage: [100, 50, 10, 0][i % 4],
                description: Some(format!("flag number {i}")),
                created_at: Timestamp::now(),
                updated_at: Timestamp::now(),
            };
            (key, flag)
        })
        .collect()
}

fn overrides() -> UserOverrides {
    [
        ("flag-0001".to_owned(), OverrideType::Include),
        ("flag-0002".to_owned(), OverrideType::Exclude),
    ]
    .into()
}

/// `GET /config/flags`'s work after the cache read: every flag evaluated for one user and
/// written out as the JSON body.
fn evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate_all");
    for size in SIZES {
        let set = Arc::new(flags(size));
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &set, |b, set| {
            b.iter(|| {
                let evaluations = Evaluations::new(set.clone(), Some("user-42"), overrides());
                serde_json::to_string(black_box(&evaluations))
            });
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut decode = c.benchmark_group("decode_snapshot");
    for size in SIZES {
        let text = encode_snapshot(&flags(size), now, 300);
        decode.throughput(Throughput::Bytes(text.len() as u64));
        decode.bench_with_input(BenchmarkId::from_parameter(size), &text, |b, text| {
            b.iter(|| decode_snapshot(black_box(text), now));
        });
    }
    decode.finish();
    let mut encode = c.benchmark_group("encode_snapshot");
    for size in SIZES {
        let set = flags(size);
        encode.throughput(Throughput::Elements(size as u64));
        encode.bench_with_input(BenchmarkId::from_parameter(size), &set, |b, set| {
            b.iter(|| encode_snapshot(black_box(set), now, 300));
        });
    }
    encode.finish();
}

criterion_group!(benches, evaluation, snapshot);
criterion_main!(benches);
