//! Endpoint choice per request: `Balancer::choose` over 3, 10 and 100 endpoints, P2C over
//! peak EWMA and round robin, with learned latencies and some requests in flight. Also the
//! whole per-request cycle (choose, start, finish) and P2C with half the set ejected (the
//! most the default limit allows), where candidates are redrawn.
//!
//! `cargo bench -p weft-proxy --bench balance`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tokio::time::Instant;
use weft_proxy::traffic::balance::{Balancer, Endpoint, InFlight, LoadBalancer, Outcome};

/// `n` endpoints with latencies from 1 to 20 ms learned, and a few requests in flight
/// (returned, to keep them in flight).
fn endpoints(n: usize, now: Instant) -> (Vec<Arc<Endpoint>>, Vec<InFlight>) {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    let set: Vec<_> = (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            let endpoint = Endpoint::new(addr, None);
            let rtt = Duration::from_millis(rng.u64(1..=20));
            endpoint.start(now).finish(now + rtt, Outcome::Success);
            endpoint
        })
        .collect();
    let in_flight = set
        .iter()
        .flat_map(|e| (0..rng.usize(0..3)).map(|_| e.start(now)))
        .collect();
    (set, in_flight)
}

fn choose(c: &mut Criterion) {
    let now = Instant::now() + Duration::from_secs(1);
    let mut group = c.benchmark_group("choose");
    for (name, kind) in [
        ("p2c_ewma", LoadBalancer::P2cEwma),
        ("round_robin", LoadBalancer::RoundRobin),
    ] {
        for n in [3, 10, 100] {
            let (set, _in_flight) = endpoints(n, now - Duration::from_secs(1));
            let balancer = Balancer::new(kind);
            let mut rng = fastrand::Rng::with_seed(1);
            group.bench_with_input(BenchmarkId::new(name, n), &set, |b, set| {
                b.iter(|| balancer.choose(black_box(set), now, &mut rng))
            });
        }
    }
    group.finish();
}

fn request_cycle(c: &mut Criterion) {
    let now = Instant::now() + Duration::from_secs(1);
    let mut group = c.benchmark_group("choose_start_finish");
    for n in [3, 100] {
        let (set, _in_flight) = endpoints(n, now - Duration::from_secs(1));
        let balancer = Balancer::new(LoadBalancer::P2cEwma);
        let mut rng = fastrand::Rng::with_seed(2);
        group.bench_with_input(BenchmarkId::new("p2c_ewma", n), &set, |b, set| {
            b.iter(|| {
                let endpoint = balancer.choose(black_box(set), now, &mut rng).unwrap();
                endpoint
                    .start(now)
                    .finish(now + Duration::from_millis(2), Outcome::Success);
            })
        });
    }
    group.finish();
}

fn half_ejected(c: &mut Criterion) {
    let now = Instant::now() + Duration::from_secs(1);
    let (set, _in_flight) = endpoints(100, now - Duration::from_secs(1));
    let balancer = Balancer::new(LoadBalancer::P2cEwma);
    let mut rng = fastrand::Rng::with_seed(3);
    // Every other endpoint fails five times in a row; choosing ejects them (50 of 100).
    for endpoint in set.iter().step_by(2) {
        for _ in 0..5 {
            endpoint.start(now).finish(now, Outcome::Failure);
        }
    }
    for _ in 0..10_000 {
        balancer.choose(&set, now, &mut rng);
    }
    c.bench_function("choose_half_ejected/p2c_ewma/100", |b| {
        b.iter(|| balancer.choose(black_box(&set), now, &mut rng))
    });
}

criterion_group!(benches, choose, request_cycle, half_ejected);
criterion_main!(benches);
