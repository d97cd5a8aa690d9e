//! Workloads: the requests of one run, built before the run starts so that every
//! server sees the same prompts for the same seed.
//!
//! - `random`: prompt and output lengths drawn from a range, as token ids or text;
//! - `sharegpt`: first exchange of each conversation in a ShareGPT-format JSON file;
//! - `generated-shared-prefix`: groups of prompts that share a long system prompt
//!   (or, as a control, the same lengths with no sharing);
//! - `multi-turn`: conversations whose next turn extends the previous one, so the
//!   prompt of turn k+1 is turn k's prompt plus its answer plus a new message.
//!
//! Prompt lengths are counted with the model's tokenizer ([`TokenCounter`]).

mod multi_turn;
mod random;
mod shared_prefix;
mod sharegpt;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::BenchError;
use crate::tokenizer::TokenCounter;

pub use multi_turn::{ChatMessage, History, MultiTurnSpec};
pub use random::{PromptKind, RandomSpec};
pub use shared_prefix::SharedPrefixSpec;
pub use sharegpt::SharegptSpec;

/// The prompt of one request as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prompt {
    Text(String),
    /// Token ids, sent as-is (completions and `/generate` only).
    TokenIds(Vec<u32>),
    /// Chat messages (chat API only); multi-turn runs build these as they go.
    Chat(Vec<ChatMessage>),
}

/// One request of a single-turn workload.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    pub prompt: Prompt,
    /// Prompt length in tokens, counted with the model's tokenizer.
    pub prompt_len: usize,
    /// Output length in tokens the request asks for (`max_tokens`).
    pub output_len: usize,
    /// Shared-prefix group of the request, for workloads that have groups.
    pub group: Option<usize>,
}

/// One conversation of a multi-turn workload. The runner sends its turns in order,
/// each prompt holding the whole history so far.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// The user message of each turn.
    pub user_turns: Vec<String>,
    /// Output length in tokens asked for at every turn.
    pub output_len: usize,
}

/// The requests of one run.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Independent requests, sent in this order.
    Single(Vec<BenchRequest>),
    /// Conversations; their turns depend on the answers, so prompts are completed
    /// while the run goes.
    MultiTurn(Vec<Conversation>),
}

impl Workload {
    /// Number of requests the run sends (every turn counts), warmup excluded.
    pub fn n_requests(&self) -> usize {
        match self {
            Workload::Single(requests) => requests.len(),
            Workload::MultiTurn(conversations) => {
                conversations.iter().map(|c| c.user_turns.len()).sum()
            }
        }
    }
}

/// Which workload to build, with its parameters. Serialises flat into the run's
/// record under SGLang's key names (`dataset_name`, `random_input_len`, ...).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "dataset_name", rename_all = "kebab-case")]
pub enum WorkloadSpec {
    Random(RandomSpec),
    Sharegpt(SharegptSpec),
    GeneratedSharedPrefix(SharedPrefixSpec),
    MultiTurn(MultiTurnSpec),
}

impl WorkloadSpec {
    /// A short human-readable summary, e.g. `random in=128 out=64`.
    pub fn describe(&self) -> String {
        match self {
            WorkloadSpec::Random(s) => format!(
                "random in={} out={} ratio={} {}",
                s.random_input_len, s.random_output_len, s.random_range_ratio, s.random_prompt
            ),
            WorkloadSpec::Sharegpt(s) => match s.sharegpt_output_len {
                Some(out) => format!("sharegpt out={out}"),
                None => "sharegpt".to_string(),
            },
            WorkloadSpec::GeneratedSharedPrefix(s) => format!(
                "gsp{} {}x{} sys={} q={} out={}",
                if s.gsp_shared_prefix { "" } else { "-unshared" },
                s.gsp_num_groups,
                s.gsp_prompts_per_group,
                s.gsp_system_prompt_len,
                s.gsp_question_len,
                s.gsp_output_len
            ),
            WorkloadSpec::MultiTurn(s) => format!(
                "multi-turn {}x{} first={} turn={} out={}",
                s.mt_num_conversations,
                s.mt_num_turns,
                s.mt_first_turn_len,
                s.mt_turn_len,
                s.mt_output_len
            ),
        }
    }
}

/// Builds the workload of `spec`; the same seed gives the same requests.
pub fn build(
    spec: &WorkloadSpec,
    tokenizer: &dyn TokenCounter,
    seed: u64,
) -> Result<Workload, BenchError> {
    let mut rng = StdRng::seed_from_u64(seed);
    match spec {
        WorkloadSpec::Random(s) => random::build(s, tokenizer, &mut rng).map(Workload::Single),
        WorkloadSpec::Sharegpt(s) => sharegpt::build(s, tokenizer, &mut rng).map(Workload::Single),
        WorkloadSpec::GeneratedSharedPrefix(s) => {
            shared_prefix::build(s, tokenizer, &mut rng).map(Workload::Single)
        }
        WorkloadSpec::MultiTurn(s) => {
            multi_turn::build(s, tokenizer, &mut rng).map(Workload::MultiTurn)
        }
    }
}

/// `n_tokens` token ids drawn uniformly from the vocabulary.
fn random_ids(tokenizer: &dyn TokenCounter, rng: &mut StdRng, n_tokens: usize) -> Vec<u32> {
    let vocab_size = tokenizer.vocab_size() as u32;
    (0..n_tokens)
        .map(|_| rng.random_range(0..vocab_size))
        .collect()
}

/// Random text that the tokenizer counts as `n_tokens` tokens, or as close as a few
/// rounds of decode/re-encode get. Returns the text and its counted length.
///
/// Decoding random ids and encoding the text again rarely gives the same ids (special
/// tokens vanish, BPE merges differ), so the text is trimmed or extended and counted
/// again; the count returned is always the tokenizer's count of the returned text.
fn random_text(
    tokenizer: &dyn TokenCounter,
    rng: &mut StdRng,
    n_tokens: usize,
) -> Result<(String, usize), BenchError> {
    const MAX_ROUNDS: usize = 6;
    let mut ids = random_ids(tokenizer, rng, n_tokens);
    let mut text = tokenizer.decode(&ids)?;
    for _ in 0..MAX_ROUNDS {
        let counted = tokenizer.encode(&text)?;
        if counted.len() == n_tokens {
            return Ok((text, n_tokens));
        }
        ids = counted;
        if ids.len() > n_tokens {
            ids.truncate(n_tokens);
        } else {
            let missing = n_tokens - ids.len();
            ids.extend(random_ids(tokenizer, rng, missing));
        }
        text = tokenizer.decode(&ids)?;
    }
    let n_counted = tokenizer.count(&text)?;
    Ok((text, n_counted))
}

/// Uniform length in `[max(floor(len * ratio), min), len]`, SGLang's range rule.
fn length_in_range(rng: &mut StdRng, len: usize, ratio: f64, min: usize) -> usize {
    let low = ((len as f64 * ratio) as usize).max(min).min(len);
    rng.random_range(low..=len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    #[test]
    fn random_text_is_counted_with_the_tokenizer() {
        let mut rng = StdRng::seed_from_u64(7);
        let (text, n) = random_text(&CharTokenizer, &mut rng, 40).unwrap();
        assert_eq!(n, 40);
        assert_eq!(CharTokenizer.count(&text).unwrap(), 40);
    }

    #[test]
    fn length_in_range_stays_within_bounds() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let n = length_in_range(&mut rng, 100, 0.5, 1);
            assert!((50..=100).contains(&n));
        }
        assert_eq!(length_in_range(&mut rng, 8, 1.0, 1), 8);
        assert_eq!(length_in_range(&mut rng, 0, 0.0, 0), 0);
    }

    #[test]
    fn describe_names_the_workload_and_its_sizes() {
        let spec = WorkloadSpec::GeneratedSharedPrefix(SharedPrefixSpec {
            gsp_num_groups: 4,
            gsp_prompts_per_group: 8,
            gsp_system_prompt_len: 512,
            gsp_question_len: 32,
            gsp_output_len: 16,
            gsp_shared_prefix: false,
        });
        assert_eq!(spec.describe(), "gsp-unshared 4x8 sys=512 q=32 out=16");
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["dataset_name"], "generated-shared-prefix");
        assert_eq!(json["gsp_system_prompt_len"], 512);
    }
}
