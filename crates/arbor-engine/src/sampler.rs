//! Choosing the next token from one row of logits (the sample phase of a step):
//! logit bias, repetition/frequency/presence penalties, temperature, top-k, min-p and
//! top-p filtering, then a draw from the sequence's own random generator. Logprobs are
//! computed here too, from the biased logits at temperature 1.

use std::collections::HashMap;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::api::SamplingParams;

/// The random generator of one sequence; seeded per sequence so that a seed reproduces
/// its output regardless of what else runs in the batch.
pub type SequenceRng = Xoshiro256PlusPlus;

/// A generator seeded with `seed`.
pub fn rng_from_seed(seed: u64) -> SequenceRng {
    SequenceRng::seed_from_u64(seed)
}

/// Token counts a sequence's penalties read: which tokens appeared in the prompt or the
/// output (repetition penalty) and how often each appeared in the output (frequency and
/// presence penalties). Built only for sequences that use a penalty.
#[derive(Clone, Debug, Default)]
pub struct PenaltyState {
    in_context: HashMap<u32, ()>,
    output_counts: HashMap<u32, u32>,
}

impl PenaltyState {
    /// State for a sequence whose prompt is `prompt_ids` and output so far `output_ids`.
    pub fn new(prompt_ids: &[u32], output_ids: &[u32]) -> Self {
        let mut state = Self::default();
        for &id in prompt_ids {
            state.in_context.insert(id, ());
        }
        for &id in output_ids {
            state.push_output(id);
        }
        state
    }

    /// Records a generated token.
    pub fn push_output(&mut self, id: u32) {
        self.in_context.insert(id, ());
        *self.output_counts.entry(id).or_insert(0) += 1;
    }
}

/// Whether `params` use any penalty (so the sequence needs a `PenaltyState`).
pub fn uses_penalties(params: &SamplingParams) -> bool {
    params.repetition_penalty != 1.0
        || params.frequency_penalty != 0.0
        || params.presence_penalty != 0.0
}

/// The chosen token and, when asked for, its logprob and the top alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token_id: u32,
    /// Logprob of the chosen token and the `k` best (id, logprob), if asked for.
    pub logprobs: Option<(f32, Vec<(u32, f32)>)>,
}

/// Picks the next token from `row` (one row of logits, `vocab_size` long).
///
/// `penalties` must be `Some` when `uses_penalties(params)`; `suppressed` lists token
/// ids that must not be chosen (stop tokens before `min_tokens`).
pub fn sample(
    row: &[f32],
    params: &SamplingParams,
    penalties: Option<&PenaltyState>,
    suppressed: &[u32],
    rng: &mut SequenceRng,
) -> Sampled {
    let mut logits = row.to_vec();
    for &(id, bias) in &params.logit_bias {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit += bias;
        }
    }

    let logprobs = params.logprobs.map(|k| top_logprobs(&logits, k));

    if let Some(state) = penalties {
        apply_penalties(&mut logits, params, state);
    }
    for &id in suppressed {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit = f32::NEG_INFINITY;
        }
    }

    let token_id = if params.temperature == 0.0 {
        argmax(&logits)
    } else {
        draw(&mut logits, params, rng)
    };
    let logprobs = logprobs.map(|(lse, top)| (logprob_of(row, params, token_id, lse), top));
    Sampled { token_id, logprobs }
}

/// Index of the largest logit above `-inf`, NaN ignored (lowest index on ties); 0 if
/// there is none.
pub fn argmax(logits: &[f32]) -> u32 {
    // Two passes that vectorise (a max over independent lanes, then a search for the
    // first index holding it) instead of one compare-and-branch chain: the update phase
    // runs this over a vocabulary-sized row for every greedy sequence of every step.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(value);
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if max == f32::NEG_INFINITY {
        return 0;
    }
    let mut start = 0;
    for chunk in logits.chunks(4 * LANES) {
        // A branch-free test per chunk, then a scalar search in the chunk that holds it.
        if chunk
            .iter()
            .fold(false, |found, &value| found | (value == max))
        {
            let offset = chunk.iter().position(|&value| value == max).unwrap_or(0);
            return (start + offset) as u32;
        }
        start += chunk.len();
    }
    0
}

fn apply_penalties(logits: &mut [f32], params: &SamplingParams, state: &PenaltyState) {
    if params.repetition_penalty != 1.0 {
        for &id in state.in_context.keys() {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit = if *logit > 0.0 {
                    *logit / params.repetition_penalty
                } else {
                    *logit * params.repetition_penalty
                };
            }
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        for (&id, &count) in &state.output_counts {
            if let Some(logit) = logits.get_mut(id as usize) {
                *logit -= params.frequency_penalty * count as f32 + params.presence_penalty;
            }
        }
    }
}

/// Samples from `logits` after temperature, top-k, min-p and top-p.
fn draw(logits: &mut [f32], params: &SamplingParams, rng: &mut SequenceRng) -> u32 {
    let inv_t = 1.0 / params.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    let probs: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
    let filtered = params.top_k > 0 || params.min_p > 0.0 || params.top_p < 1.0;
    if !filtered {
        return draw_from(&probs, 0..probs.len() as u32, rng);
    }
    let candidates = filter_candidates(&probs, params);
    draw_from(&probs, candidates.iter().copied(), rng)
}

/// Token ids that survive top-k, min-p and top-p, most likely first. `probs` are
/// unnormalised (the top token has weight 1).
fn filter_candidates(probs: &[f32], params: &SamplingParams) -> Vec<u32> {
    let total: f32 = probs.iter().sum();
    let min_weight = params.min_p; // The top weight is 1, so min-p is a plain threshold.
    let limit = if params.top_k > 0 {
        params.top_k.min(probs.len())
    } else {
        probs.len()
    };

    // Sorting the whole vocabulary costs milliseconds; most of the mass sits in a few
    // tokens, so sort a growing head until it covers top_p (or the top-k limit).
    let mut head = 64.min(limit);
    loop {
        let sorted = sorted_head(probs, head);
        let mut kept = Vec::with_capacity(head);
        let mut mass = 0.0;
        let mut covered = false;
        for &id in &sorted {
            let weight = probs[id as usize];
            if weight < min_weight && !kept.is_empty() {
                covered = true;
                break;
            }
            kept.push(id);
            mass += weight;
            if mass >= params.top_p * total {
                covered = true;
                break;
            }
        }
        if covered || head >= limit {
            return kept;
        }
        head = (head * 8).min(limit);
    }
}

/// The `n` highest-weight token ids in descending order (ties: lower id first).
fn sorted_head(probs: &[f32], n: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..probs.len() as u32).collect();
    let by_weight = |a: &u32, b: &u32| {
        probs[*b as usize]
            .total_cmp(&probs[*a as usize])
            .then(a.cmp(b))
    };
    if n < ids.len() {
        ids.select_nth_unstable_by(n, by_weight);
        ids.truncate(n);
    }
    ids.sort_unstable_by(by_weight);
    ids
}

/// Draws one of `candidates` with probability proportional to its weight.
fn draw_from(
    weights: &[f32],
    candidates: impl Iterator<Item = u32> + Clone,
    rng: &mut SequenceRng,
) -> u32 {
    let total: f32 = candidates.clone().map(|id| weights[id as usize]).sum();
    let target = rng.random::<f32>() * total;
    let mut acc = 0.0;
    let mut last_with_weight = 0;
    for id in candidates {
        let weight = weights[id as usize];
        acc += weight;
        if acc > target {
            return id;
        }
        if weight > 0.0 {
            last_with_weight = id;
        }
    }
    // Rounding can leave `target` at the very top: take the last token with weight.
    last_with_weight
}

/// Log-sum-exp of `logits` and the `k` most likely tokens with their logprobs.
fn top_logprobs(logits: &[f32], k: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = log_sum_exp(logits);
    let top = sorted_head(logits, k.min(logits.len()))
        .into_iter()
        .map(|id| (id, logits[id as usize] - lse))
        .collect();
    (lse, top)
}

/// Logprob of `token_id` under the biased logits whose log-sum-exp is `lse`.
fn logprob_of(row: &[f32], params: &SamplingParams, token_id: u32, lse: f32) -> f32 {
    let bias: f32 = params
        .logit_bias
        .iter()
        .filter(|(id, _)| *id == token_id)
        .map(|(_, b)| b)
        .sum();
    row[token_id as usize] + bias - lse
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_the_largest_logit_and_the_lowest_id_on_ties() {
        let p = SamplingParams::greedy(1);
        let mut rng = rng_from_seed(0);
        assert_eq!(
            sample(&[0.0, 3.0, 1.0], &p, None, &[], &mut rng).token_id,
            1
        );
        assert_eq!(
            sample(&[2.0, 2.0, 1.0], &p, None, &[], &mut rng).token_id,
            0
        );
    }

    #[test]
    fn argmax_agrees_with_a_plain_scan_over_long_rows_with_nan_and_infinities() {
        // The reference: first index whose value beats everything before it.
        let scan = |row: &[f32]| {
            let (mut best, mut best_value) = (0, f32::NEG_INFINITY);
            for (idx, &value) in row.iter().enumerate() {
                if value > best_value {
                    (best, best_value) = (idx as u32, value);
                }
            }
            best
        };
        let mut rng = rng_from_seed(3);
        for len in [0, 1, 15, 16, 17, 100, 1000] {
            for case in 0..20 {
                let mut row: Vec<f32> = (0..len)
                    .map(|_| (rng.random_range(0..8) as f32) - 4.0)
                    .collect();
                for special in [f32::NAN, f32::NEG_INFINITY, f32::INFINITY, -0.0] {
                    if len > 0
                        && rng.random_range(0..3) == 0
                        && (special != f32::INFINITY || case % 5 == 0)
                    {
                        row[rng.random_range(0..len)] = special;
                    }
                }
                assert_eq!(argmax(&row), scan(&row), "{row:?}");
            }
        }
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, 1.0]), 2);
    }

    #[test]
    fn logit_bias_changes_the_greedy_choice() {
        let p = params(|p| {
            p.temperature = 0.0;
            p.logit_bias = vec![(2, 5.0)];
        });
        let mut rng = rng_from_seed(0);
        assert_eq!(
            sample(&[0.0, 3.0, 1.0], &p, None, &[], &mut rng).token_id,
            2
        );
    }

    #[test]
    fn same_seed_gives_same_draws_and_different_seeds_differ() {
        let row: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams::default();
        let run = |seed| {
            let mut rng = rng_from_seed(seed);
            (0..32)
                .map(|_| sample(&row, &p, None, &[], &mut rng).token_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_temperature() {
        let p = params(|p| {
            p.temperature = 5.0;
            p.top_k = 1;
        });
        let mut rng = rng_from_seed(3);
        for _ in 0..20 {
            assert_eq!(
                sample(&[0.0, 1.0, 0.5], &p, None, &[], &mut rng).token_id,
                1
            );
        }
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two.
        let row = [3.0, 2.0, 1.0, 0.0];
        let p = params(|p| p.top_p = 0.7);
        let mut rng = rng_from_seed(11);
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[sample(&row, &p, None, &[], &mut rng).token_id as usize] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0, "{seen:?}");
    }

    #[test]
    fn min_p_drops_tokens_far_below_the_top() {
        let row = [5.0, 4.9, 0.0, 0.0];
        let p = params(|p| p.min_p = 0.5);
        let mut rng = rng_from_seed(5);
        for _ in 0..200 {
            assert!(sample(&row, &p, None, &[], &mut rng).token_id < 2);
        }
    }

    #[test]
    fn top_p_search_grows_past_the_first_head() {
        // A flat distribution over 1000 tokens: top_p 0.5 needs ~500 of them.
        let row = vec![0.0; 1000];
        let p = params(|p| p.top_p = 0.5);
        let candidates = filter_candidates(&vec![1.0; 1000], &p);
        assert_eq!(candidates.len(), 500);
        let mut rng = rng_from_seed(1);
        assert!(sample(&row, &p, None, &[], &mut rng).token_id < 1000);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let state = PenaltyState::new(&[0, 1], &[]);
        let p = params(|p| p.repetition_penalty = 2.0);
        let mut logits = vec![4.0, -1.0, 3.0];
        apply_penalties(&mut logits, &p, &state);
        assert_eq!(logits, vec![2.0, -2.0, 3.0]);
    }

    #[test]
    fn frequency_and_presence_penalties_follow_output_counts() {
        let state = PenaltyState::new(&[2], &[0, 0, 1]);
        let p = params(|p| {
            p.frequency_penalty = 0.5;
            p.presence_penalty = 1.0;
        });
        let mut logits = vec![4.0, 4.0, 4.0];
        apply_penalties(&mut logits, &p, &state);
        assert_eq!(logits, vec![2.0, 2.5, 4.0]);
    }

    #[test]
    fn suppressed_tokens_are_never_chosen() {
        let p = SamplingParams::greedy(1);
        let mut rng = rng_from_seed(0);
        assert_eq!(
            sample(&[0.0, 3.0, 1.0], &p, None, &[1], &mut rng).token_id,
            2
        );
    }

    #[test]
    fn logprobs_are_log_softmax_of_the_row() {
        let row = [1.0f32, 2.0, 3.0];
        let p = params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(2);
        });
        let mut rng = rng_from_seed(0);
        let sampled = sample(&row, &p, None, &[], &mut rng);
        let z: f32 = row.iter().map(|x| x.exp()).sum();
        let (chosen, top) = sampled.logprobs.unwrap();
        assert!((chosen - (3.0f32.exp() / z).ln()).abs() < 1e-6);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, 2);
        assert_eq!(top[1].0, 1);
        assert!((top[1].1 - (2.0f32.exp() / z).ln()).abs() < 1e-6);
    }
}
