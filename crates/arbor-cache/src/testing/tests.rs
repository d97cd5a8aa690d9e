//! The randomized test: thousands of engine-like operation sequences, each step compared
//! with the reference model and followed by a full invariant check.

use proptest::prelude::*;

use super::{Config, Harness, Op, run_bytes};

fn config() -> impl Strategy<Value = Config> {
    (
        prop::sample::select(vec![1usize, 2, 4, 16]),
        4usize..64,
        any::<u64>(),
        1u32..5,
    )
        .prop_map(|(page_size, n_pages, seed, n_token_kinds)| Config {
            page_size,
            n_pages,
            seed,
            n_token_kinds,
        })
}

fn tokens(max_len: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..4, 0..=max_len)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3, 0usize..=48, tokens(20)).prop_map(|(base, prefix_len, suffix)| {
            Op::Admit { base, prefix_len, suffix }
        }),
        3 => (any::<usize>(), tokens(24)).prop_map(|(seq, tokens)| Op::Extend { seq, tokens }),
        3 => any::<usize>().prop_map(|seq| Op::Insert { seq }),
        3 => any::<usize>().prop_map(|seq| Op::Finish { seq }),
        1 => any::<usize>().prop_map(|seq| Op::Abort { seq }),
        3 => (0usize..3, 0usize..=48, tokens(20)).prop_map(|(base, prefix_len, suffix)| {
            Op::Probe { base, prefix_len, suffix }
        }),
        2 => (0usize..8).prop_map(|n_pages| Op::Evict { n_pages }),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_operations_agree_with_the_reference_model_and_keep_invariants(
        config in config(),
        ops in prop::collection::vec(op(), 1..160),
    ) {
        let mut harness = Harness::new(config);
        for (step, op) in ops.iter().enumerate() {
            let result = harness.apply(op);
            prop_assert!(result.is_ok(), "step {step} ({op:?}): {}", result.unwrap_err());
        }
        let result = harness.finish();
        prop_assert!(result.is_ok(), "at the end: {}", result.unwrap_err());
    }

    #[test]
    fn arbitrary_fuzzer_bytes_decode_and_run_cleanly(
        data in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let result = run_bytes(&data);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
