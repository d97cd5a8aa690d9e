//! Criterion benches for `PagePool` allocate/free, the per-step page bookkeeping of the
//! scheduler. Bench names state the pool and batch sizes.
//!
//! Run: `cargo bench --bench page_pool -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use arbor_cache::PagePool;
use criterion::{Criterion, criterion_group, criterion_main};

fn bench_allocate_free(c: &mut Criterion) {
    for n_pages in [1, 256] {
        let mut pool = PagePool::new(65_536, 16);
        // Hold half the pool so the free list is not trivially full.
        let _held = pool.allocate(32_768).expect("fresh pool has room");
        let name = format!("page_pool/allocate_and_free_{n_pages}_pages/65536_page_pool");
        c.bench_function(&name, |b| {
            b.iter(|| {
                let pages = pool.allocate(black_box(n_pages)).expect("pool has room");
                pool.free(black_box(&pages));
            })
        });
    }

    let mut pool = PagePool::new(65_536, 16);
    let pages = pool.allocate(256).expect("fresh pool has room");
    c.bench_function(
        "page_pool/retain_and_free_256_shared_pages/65536_page_pool",
        |b| {
            b.iter(|| {
                pool.retain(black_box(&pages));
                pool.free(black_box(&pages));
            })
        },
    );
}

criterion_group!(benches, bench_allocate_free);
criterion_main!(benches);
