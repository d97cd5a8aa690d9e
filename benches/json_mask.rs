//! JSON mode's per-token cost on DeepSeek-R1-Distill-Qwen's real vocabulary (151,665
//! tokens, the tokenizer in `tests/fixtures`): building the token texts once, masking a
//! logits row in a state seen for the first time (every token tried on the automaton)
//! and in a state seen before (the allowed ids come from the cache), against the greedy
//! pick that every step pays anyway (`argmax` over the row).
//!
//! States are taken from a real JSON object, one per character, so the figures cover
//! the mix a model writes (mostly inside strings, some structure).
//!
//! Run: `cargo bench --bench json_mask`.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use arbor_engine::TokenDecoder;
use arbor_engine::parts::{JsonMachine, JsonVocab, argmax};

const OBJECT: &str = r#"{"city": "Paris", "temperature_c": 21.5, "tags": ["sunny", "dry"], "wind": {"kmh": 12, "dir": "NW"}, "ok": true}"#;

struct Decoder(tokenizers::Tokenizer);

impl TokenDecoder for Decoder {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        self.0.decode(ids, skip_special_tokens).unwrap_or_default()
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/deepseek-r1-distill-qwen/tokenizer.json");
    let decoder = Decoder(tokenizers::Tokenizer::from_file(&path).expect("fixture tokenizer"));
    let vocab_size = decoder.0.get_vocab_size(true);

    let start = Instant::now();
    let vocab = JsonVocab::new(&decoder, vocab_size);
    let build = start.elapsed();

    let states: Vec<JsonMachine> = OBJECT
        .char_indices()
        .map(|(at, _)| {
            let mut machine = JsonMachine::default();
            assert!(machine.feed(&OBJECT[..at]));
            machine
        })
        .collect();
    let row: Vec<f32> = (0..vocab_size)
        .map(|i| ((i * 7919) % 1000) as f32)
        .collect();
    let mut work = row.clone();

    let mut first = Duration::ZERO;
    let mut seen = HashSet::new();
    for machine in &states {
        work.copy_from_slice(&row);
        let start = Instant::now();
        vocab.mask(machine, &mut work);
        // Repeated states hit the cache already; count only the first sight of each.
        if seen.insert(*machine) {
            first += start.elapsed();
        }
    }
    let n_first = seen.len();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this once as a
    // smoke test.
    let rounds = match std::env::args().any(|a| a == "--bench") {
        true => 20,
        false => 1,
    };
    let start = Instant::now();
    for _ in 0..rounds {
        for machine in &states {
            work.copy_from_slice(&row);
            vocab.mask(machine, &mut work);
        }
    }
    let cached = start.elapsed() / (rounds * states.len()) as u32;
    let start = Instant::now();
    let mut sink = 0;
    for _ in 0..rounds {
        for _ in &states {
            sink ^= argmax(&row);
        }
    }
    let pick = start.elapsed() / (rounds * states.len()) as u32;
    std::hint::black_box(sink);

    println!(
        "vocabulary: {vocab_size} tokens; {} states from a {}-character object",
        states.len(),
        OBJECT.len()
    );
    println!(
        "build token texts (once per engine): {:.1} ms",
        build.as_secs_f64() * 1e3
    );
    println!(
        "mask, state seen first ({n_first} distinct): {:.0} us per token",
        micros(first) / n_first.max(1) as f64
    );
    println!("mask, state cached: {:.0} us per token", micros(cached));
    println!(
        "greedy argmax over the row: {:.0} us per token (cached mask / argmax: {:.1}x)",
        micros(pick),
        cached.as_secs_f64() / pick.as_secs_f64()
    );
}
