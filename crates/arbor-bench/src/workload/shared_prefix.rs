//! The `generated-shared-prefix` workload, as in SGLang's bench_serving: `groups`
//! random system prompts, each followed by `prompts_per_group` random questions, in
//! shuffled order. A server with a prefix cache computes each system prompt once.
//!
//! With `gsp_shared_prefix = false` it is its own control: the same lengths and count,
//! but every request has a system prompt of its own, so nothing can be shared.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::{BenchRequest, Prompt, random_text};
use crate::BenchError;
use crate::tokenizer::TokenCounter;

/// Parameters of the `generated-shared-prefix` workload (SGLang's `--gsp-*` flags).
#[derive(Debug, Clone, Serialize)]
pub struct SharedPrefixSpec {
    pub gsp_num_groups: usize,
    pub gsp_prompts_per_group: usize,
    /// System prompt length, tokens.
    pub gsp_system_prompt_len: usize,
    /// Question length, tokens.
    pub gsp_question_len: usize,
    /// Output length, tokens.
    pub gsp_output_len: usize,
    /// `false` gives every request its own system prompt (the no-sharing control).
    pub gsp_shared_prefix: bool,
}

/// Between the system prompt and the question.
const SEPARATOR: &str = "\n\n";

pub(super) fn build(
    spec: &SharedPrefixSpec,
    tokenizer: &dyn TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<BenchRequest>, BenchError> {
    validate(spec)?;
    let n_requests = spec.gsp_num_groups * spec.gsp_prompts_per_group;

    let n_system_prompts = if spec.gsp_shared_prefix {
        spec.gsp_num_groups
    } else {
        n_requests
    };
    let system_prompts = (0..n_system_prompts)
        .map(|_| random_text(tokenizer, rng, spec.gsp_system_prompt_len).map(|(t, _)| t))
        .collect::<Result<Vec<_>, _>>()?;

    let mut requests = Vec::with_capacity(n_requests);
    for request_idx in 0..n_requests {
        let group = request_idx / spec.gsp_prompts_per_group;
        let system_idx = if spec.gsp_shared_prefix {
            group
        } else {
            request_idx
        };
        let (question, _) = random_text(tokenizer, rng, spec.gsp_question_len)?;
        let text = format!("{}{SEPARATOR}{question}", system_prompts[system_idx]);
        let prompt_len = tokenizer.count(&text)?;
        requests.push(BenchRequest {
            prompt: Prompt::Text(text),
            prompt_len,
            output_len: spec.gsp_output_len,
            group: Some(group),
        });
    }

    requests.shuffle(rng);
    Ok(requests)
}

fn validate(spec: &SharedPrefixSpec) -> Result<(), BenchError> {
    let sizes = [
        spec.gsp_num_groups,
        spec.gsp_prompts_per_group,
        spec.gsp_system_prompt_len,
        spec.gsp_question_len,
        spec.gsp_output_len,
    ];
    if sizes.contains(&0) {
        return Err(BenchError::InvalidSpec(
            "every --gsp-* size must be at least 1".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::SeedableRng;

    use super::*;
    use crate::tokenizer::CharTokenizer;

    const SYSTEM_LEN: usize = 48;

    fn spec(shared: bool) -> SharedPrefixSpec {
        SharedPrefixSpec {
            gsp_num_groups: 3,
            gsp_prompts_per_group: 4,
            gsp_system_prompt_len: SYSTEM_LEN,
            gsp_question_len: 10,
            gsp_output_len: 8,
            gsp_shared_prefix: shared,
        }
    }

    fn build_spec(spec: &SharedPrefixSpec, seed: u64) -> Vec<BenchRequest> {
        build(spec, &CharTokenizer, &mut StdRng::seed_from_u64(seed)).unwrap()
    }

    /// The system prompt of a request: with one token per character, its first
    /// `SYSTEM_LEN` characters.
    fn system_prompt(r: &BenchRequest) -> String {
        let Prompt::Text(text) = &r.prompt else {
            panic!("shared-prefix prompts are text");
        };
        text.chars().take(SYSTEM_LEN).collect()
    }

    #[test]
    fn groups_share_their_system_prompt_and_no_other() {
        let requests = build_spec(&spec(true), 1);
        assert_eq!(requests.len(), 12);

        let mut by_group: HashMap<usize, HashSet<String>> = HashMap::new();
        for r in &requests {
            by_group
                .entry(r.group.unwrap())
                .or_default()
                .insert(system_prompt(r));
            assert_eq!(r.prompt_len, SYSTEM_LEN + 2 + 10);
            assert_eq!(r.output_len, 8);
        }
        assert_eq!(by_group.len(), 3);
        assert!(by_group.values().all(|prefixes| prefixes.len() == 1));
        let distinct: HashSet<&String> = by_group.values().flatten().collect();
        assert_eq!(distinct.len(), 3, "groups must not share a system prompt");

        let questions: HashSet<&Prompt> = requests.iter().map(|r| &r.prompt).collect();
        assert_eq!(questions.len(), 12, "every request has its own question");
    }

    #[test]
    fn control_has_the_same_lengths_but_no_shared_prefix() {
        let shared = build_spec(&spec(true), 2);
        let control = build_spec(&spec(false), 2);
        let total = |v: &[BenchRequest]| v.iter().map(|r| r.prompt_len).sum::<usize>();
        assert_eq!(total(&shared), total(&control));
        let prefixes: HashSet<String> = control.iter().map(system_prompt).collect();
        assert_eq!(prefixes.len(), control.len());
    }

    #[test]
    fn seed_decides_the_prompts_and_their_order() {
        let prompts = |seed| {
            build_spec(&spec(true), seed)
                .into_iter()
                .map(|r| r.prompt)
                .collect::<Vec<_>>()
        };
        assert_eq!(prompts(9), prompts(9));
        assert_ne!(prompts(9), prompts(10));
    }

    #[test]
    fn zero_sizes_are_refused() {
        let mut s = spec(true);
        s.gsp_prompts_per_group = 0;
        assert!(build(&s, &CharTokenizer, &mut StdRng::seed_from_u64(0)).is_err());
    }
}
