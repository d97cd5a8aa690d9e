//! The engine rebuilds each step's batch from the last one, extending the page tables
//! of sequences that kept running. These scenarios churn the running set between steps
//! (finishes, preemption and resume, aborts, late arrivals) at page sizes 1 and 4, so a
//! stale or misaligned page table would make the fake model read the wrong slots and
//! diverge from `FakeModel::reference_greedy` (or fail on an unwritten slot).

mod common;

use arbor_engine::testing::{FakeModel, XorShift};
use arbor_engine::{RequestId, SamplingParams};
use common::*;

const VOCAB: u32 = 97;

fn churn(page_size: usize, n_pages: usize) {
    let reference = FakeModel::new(VOCAB as usize);
    let mut config = config(n_pages, page_size);
    config.max_running_requests = 12;
    config.chunked_prefill_size = 16;
    let mut core = core(FakeModel::new(VOCAB as usize), config);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let system = prompt(3, 20, VOCAB);
    let mut requests = Vec::new();
    let mut aborted = Vec::new();
    for i in 0..60u64 {
        let question = prompt(i as u32 * 5, 1 + rng.below(12), VOCAB);
        let p = match i % 3 {
            0 => question,
            _ => [system.clone(), question].concat(),
        };
        let n_tokens = 1 + rng.below(30);
        let rx = submit(&mut core, i, &p, SamplingParams::greedy(n_tokens));
        requests.push((p, n_tokens, rx));
        for _ in 0..rng.below(4) {
            if core.has_work() {
                core.step().expect("step succeeds");
                core.check_invariants().expect("invariants hold");
            }
        }
        if i % 11 == 7 {
            core.abort(RequestId(i - 3));
            aborted.push(i as usize - 3);
        }
    }
    run_to_end(&mut core, 10_000);

    for (i, (p, n_tokens, rx)) in requests.iter_mut().enumerate() {
        let out = collect_one(rx);
        if aborted.contains(&i) {
            let expected = reference.reference_greedy(p, out.token_ids.len());
            assert_eq!(
                out.token_ids, expected,
                "aborted request {i} up to its abort"
            );
            continue;
        }
        assert_eq!(
            out.token_ids,
            reference.reference_greedy(p, *n_tokens),
            "request {i}"
        );
    }
    assert!(
        core.stats().preemptions > 0,
        "the pool is small enough to preempt"
    );
    assert_no_leak(&core);
}

#[test]
fn page_tables_stay_right_through_finishes_preemptions_and_aborts_with_one_token_pages() {
    churn(1, 160);
}

#[test]
fn page_tables_stay_right_through_finishes_preemptions_and_aborts_with_four_token_pages() {
    churn(4, 40);
}
