//! The `sharegpt` workload: the first human message of each conversation in a
//! ShareGPT-format JSON file is the prompt; the first answer's length (or a fixed
//! length) is the output length.
//!
//! The file is a JSON array of `{"conversations": [{"from": ..., "value": ...}, ...]}`
//! (`"conversation"` is accepted too). Conversations with fewer than two messages, or
//! whose prompt or answer has fewer than 2 tokens, are skipped, as SGLang does.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{BenchRequest, Prompt};
use crate::BenchError;
use crate::tokenizer::TokenCounter;

/// Parameters of the `sharegpt` workload.
#[derive(Debug, Clone, Serialize)]
pub struct SharegptSpec {
    /// Path of the ShareGPT JSON file.
    pub dataset_path: String,
    pub num_prompts: usize,
    /// Output length in tokens for every request, instead of the answer's length.
    pub sharegpt_output_len: Option<usize>,
    /// Skip conversations whose prompt plus output exceed this many tokens.
    pub sharegpt_context_len: Option<usize>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(alias = "conversation", default)]
    conversations: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    value: String,
}

/// Shortest prompt or answer kept, in tokens.
const MIN_LEN: usize = 2;

pub(super) fn build(
    spec: &SharegptSpec,
    tokenizer: &dyn TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<BenchRequest>, BenchError> {
    validate(spec)?;
    let mut pairs = load_pairs(&spec.dataset_path)?;
    pairs.shuffle(rng);

    let mut requests = Vec::with_capacity(spec.num_prompts);
    for (prompt, answer) in pairs {
        if requests.len() == spec.num_prompts {
            break;
        }
        let prompt_len = tokenizer.count(&prompt)?;
        let output_len = match spec.sharegpt_output_len {
            Some(len) => len,
            None => tokenizer.count(&answer)?,
        };
        if prompt_len < MIN_LEN || output_len < MIN_LEN {
            continue;
        }
        if spec
            .sharegpt_context_len
            .is_some_and(|limit| prompt_len + output_len > limit)
        {
            continue;
        }
        requests.push(BenchRequest {
            prompt: Prompt::Text(prompt),
            prompt_len,
            output_len,
            group: None,
        });
    }

    if requests.is_empty() {
        return Err(BenchError::DatasetFormat {
            path: spec.dataset_path.clone(),
            reason: "no conversation passed the length filters".to_string(),
        });
    }
    if requests.len() < spec.num_prompts {
        tracing::warn!(
            n_found = requests.len(),
            n_wanted = spec.num_prompts,
            "sharegpt dataset has fewer usable conversations than requested"
        );
    }
    Ok(requests)
}

fn validate(spec: &SharegptSpec) -> Result<(), BenchError> {
    if spec.num_prompts == 0 {
        return Err(BenchError::InvalidSpec(
            "--num-prompts must be at least 1".to_string(),
        ));
    }
    if spec.sharegpt_output_len.is_some_and(|len| len < MIN_LEN) {
        return Err(BenchError::InvalidSpec(format!(
            "--sharegpt-output-len must be at least {MIN_LEN}"
        )));
    }
    Ok(())
}

/// (first message, second message) of every conversation with at least two.
fn load_pairs(path: &str) -> Result<Vec<(String, String)>, BenchError> {
    let bytes = std::fs::read(path).map_err(|source| BenchError::DatasetIo {
        path: path.to_string(),
        source,
    })?;
    let entries: Vec<Entry> =
        serde_json::from_slice(&bytes).map_err(|e| BenchError::DatasetFormat {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    Ok(entries
        .into_iter()
        .filter(|e| e.conversations.len() >= 2)
        .map(|e| {
            let mut messages = e.conversations.into_iter();
            let prompt = messages.next().map(|m| m.value).unwrap_or_default();
            let answer = messages.next().map(|m| m.value).unwrap_or_default();
            (prompt, answer)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use rand::SeedableRng;

    use super::*;
    use crate::tokenizer::CharTokenizer;

    fn dataset() -> tempfile::NamedTempFile {
        let json = r#"[
          {"id": "a", "conversations": [
             {"from": "human", "value": "What is a radix tree?"},
             {"from": "gpt", "value": "A compressed trie."}]},
          {"id": "b", "conversations": [{"from": "human", "value": "only one turn"}]},
          {"id": "c", "conversation": [
             {"from": "human", "value": "Name a prime."},
             {"from": "gpt", "value": "Seven is prime."},
             {"from": "human", "value": "Another?"}]},
          {"id": "d", "conversations": [
             {"from": "human", "value": "x"},
             {"from": "gpt", "value": "too short a prompt"}]},
          {"id": "e", "conversations": [
             {"from": "human", "value": "A long question about paged attention kernels?"},
             {"from": "gpt", "value": "Pages."}]}
        ]"#;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(json.as_bytes()).unwrap();
        file
    }

    fn spec(path: &str, num_prompts: usize) -> SharegptSpec {
        SharegptSpec {
            dataset_path: path.to_string(),
            num_prompts,
            sharegpt_output_len: None,
            sharegpt_context_len: None,
        }
    }

    fn build_spec(spec: &SharegptSpec, seed: u64) -> Result<Vec<BenchRequest>, BenchError> {
        build(spec, &CharTokenizer, &mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn keeps_first_exchanges_and_skips_short_or_single_turn_conversations() {
        let file = dataset();
        let requests = build_spec(&spec(file.path().to_str().unwrap(), 10), 1).unwrap();
        let mut lens: Vec<(usize, usize)> = requests
            .iter()
            .map(|r| (r.prompt_len, r.output_len))
            .collect();
        lens.sort();
        // "Name a prime." / "Seven is prime.", "What is a radix tree?" / "A compressed
        // trie.", and the paged-attention question / "Pages.": lengths in characters.
        assert_eq!(lens, vec![(13, 15), (21, 18), (46, 6)]);
    }

    #[test]
    fn fixed_output_and_context_limit_apply() {
        let file = dataset();
        let mut s = spec(file.path().to_str().unwrap(), 10);
        s.sharegpt_output_len = Some(4);
        s.sharegpt_context_len = Some(30);
        let requests = build_spec(&s, 1).unwrap();
        let mut lens: Vec<usize> = requests.iter().map(|r| r.prompt_len).collect();
        lens.sort();
        assert_eq!(lens, vec![13, 21]);
        assert!(requests.iter().all(|r| r.output_len == 4));
    }

    #[test]
    fn num_prompts_caps_the_count_and_the_seed_picks_the_order() {
        let file = dataset();
        let s = spec(file.path().to_str().unwrap(), 2);
        let orders: std::collections::HashSet<Vec<usize>> = (0..8)
            .map(|seed| {
                build_spec(&s, seed)
                    .unwrap()
                    .iter()
                    .map(|r| r.prompt_len)
                    .collect()
            })
            .collect();
        assert!(orders.iter().all(|o| o.len() == 2));
        assert!(
            orders.len() > 1,
            "different seeds should sample differently"
        );
        let again: Vec<usize> = build_spec(&s, 3)
            .unwrap()
            .iter()
            .map(|r| r.prompt_len)
            .collect();
        let first: Vec<usize> = build_spec(&s, 3)
            .unwrap()
            .iter()
            .map(|r| r.prompt_len)
            .collect();
        assert_eq!(again, first);
    }

    #[test]
    fn missing_or_malformed_files_give_clear_errors() {
        let missing = build_spec(&spec("/nonexistent/sharegpt.json", 1), 0);
        assert!(matches!(missing, Err(BenchError::DatasetIo { .. })));

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        bad.write_all(b"{\"not\": \"an array\"}").unwrap();
        let malformed = build_spec(&spec(bad.path().to_str().unwrap(), 1), 0);
        assert!(matches!(malformed, Err(BenchError::DatasetFormat { .. })));
    }
}
