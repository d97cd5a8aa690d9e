//! The `random` workload: prompt and output lengths drawn uniformly from
//! `[len * ratio, len]`, prompts made of random token ids or of their decoded text.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use serde::Serialize;

use super::{BenchRequest, Prompt, length_in_range, random_ids, random_text};
use crate::BenchError;
use crate::tokenizer::TokenCounter;

/// How random prompts go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKind {
    /// Token ids: exact lengths, but only completions and `/generate` accept them.
    Ids,
    /// Decoded text: works everywhere; lengths are re-counted with the tokenizer.
    Text,
}

impl FromStr for PromptKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ids" => Ok(PromptKind::Ids),
            "text" => Ok(PromptKind::Text),
            _ => Err(format!("unknown prompt kind {s:?}; expected ids or text")),
        }
    }
}

impl fmt::Display for PromptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PromptKind::Ids => "ids",
            PromptKind::Text => "text",
        })
    }
}

/// Parameters of the `random` workload, named as SGLang's bench_serving names them.
#[derive(Debug, Clone, Serialize)]
pub struct RandomSpec {
    pub num_prompts: usize,
    /// Largest prompt length, tokens.
    pub random_input_len: usize,
    /// Largest output length, tokens.
    pub random_output_len: usize,
    /// Lengths are drawn from `[len * ratio, len]`; 1.0 fixes them.
    pub random_range_ratio: f64,
    pub random_prompt: PromptKind,
}

pub(super) fn build(
    spec: &RandomSpec,
    tokenizer: &dyn TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<BenchRequest>, BenchError> {
    validate(spec)?;

    let mut requests = Vec::with_capacity(spec.num_prompts);
    for _ in 0..spec.num_prompts {
        let input_len = length_in_range(rng, spec.random_input_len, spec.random_range_ratio, 1);
        let output_len = length_in_range(rng, spec.random_output_len, spec.random_range_ratio, 1);
        let (prompt, prompt_len) = match spec.random_prompt {
            PromptKind::Ids => (
                Prompt::TokenIds(random_ids(tokenizer, rng, input_len)),
                input_len,
            ),
            PromptKind::Text => {
                let (text, n_tokens) = random_text(tokenizer, rng, input_len)?;
                (Prompt::Text(text), n_tokens)
            }
        };
        requests.push(BenchRequest {
            prompt,
            prompt_len,
            output_len,
            group: None,
        });
    }
    Ok(requests)
}

fn validate(spec: &RandomSpec) -> Result<(), BenchError> {
    if spec.num_prompts == 0 || spec.random_input_len == 0 || spec.random_output_len == 0 {
        return Err(BenchError::InvalidSpec(
            "random workload needs --num-prompts, --random-input-len and \
             --random-output-len of at least 1"
                .to_string(),
        ));
    }
    if !(0.0..=1.0).contains(&spec.random_range_ratio) {
        return Err(BenchError::InvalidSpec(format!(
            "--random-range-ratio must be within [0, 1], got {}",
            spec.random_range_ratio
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::tokenizer::CharTokenizer;

    fn spec(kind: PromptKind, ratio: f64) -> RandomSpec {
        RandomSpec {
            num_prompts: 50,
            random_input_len: 64,
            random_output_len: 16,
            random_range_ratio: ratio,
            random_prompt: kind,
        }
    }

    fn build_with_seed(spec: &RandomSpec, seed: u64) -> Vec<BenchRequest> {
        build(spec, &CharTokenizer, &mut StdRng::seed_from_u64(seed)).unwrap()
    }

    #[test]
    fn lengths_fall_in_the_requested_range() {
        let requests = build_with_seed(&spec(PromptKind::Ids, 0.25), 1);
        assert_eq!(requests.len(), 50);
        for r in &requests {
            assert!((16..=64).contains(&r.prompt_len), "{}", r.prompt_len);
            assert!((4..=16).contains(&r.output_len), "{}", r.output_len);
            let Prompt::TokenIds(ids) = &r.prompt else {
                panic!("ids workload made a text prompt");
            };
            assert_eq!(ids.len(), r.prompt_len);
        }
        let distinct: std::collections::HashSet<_> =
            requests.iter().map(|r| r.prompt_len).collect();
        assert!(distinct.len() > 5, "lengths should vary: {distinct:?}");
    }

    #[test]
    fn ratio_one_fixes_lengths_and_text_prompts_count_exactly() {
        let requests = build_with_seed(&spec(PromptKind::Text, 1.0), 2);
        for r in &requests {
            assert_eq!((r.prompt_len, r.output_len), (64, 16));
            let Prompt::Text(text) = &r.prompt else {
                panic!("text workload made an ids prompt");
            };
            assert_eq!(CharTokenizer.count(text).unwrap(), 64);
        }
    }

    #[test]
    fn same_seed_gives_same_prompts_and_another_seed_does_not() {
        let s = spec(PromptKind::Text, 0.5);
        let a = build_with_seed(&s, 5);
        let b = build_with_seed(&s, 5);
        let c = build_with_seed(&s, 6);
        let prompts = |v: &[BenchRequest]| v.iter().map(|r| r.prompt.clone()).collect::<Vec<_>>();
        assert_eq!(prompts(&a), prompts(&b));
        assert_ne!(prompts(&a), prompts(&c));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut s = spec(PromptKind::Ids, 1.5);
        assert!(build(&s, &CharTokenizer, &mut StdRng::seed_from_u64(0)).is_err());
        s.random_range_ratio = 0.5;
        s.num_prompts = 0;
        assert!(build(&s, &CharTokenizer, &mut StdRng::seed_from_u64(0)).is_err());
    }
}
