//! A deterministic fake model for tests, benches and examples: no Candle, no weights,
//! but a paged "KV cache" that really is read through the page tables, so a scheduler
//! bug that points a sequence at the wrong pages changes its output.
//!
//! Each slot stores a 64-bit hash of the token written there and the hash in the slot of
//! the previous position, which it reads through the sequence's page table. The next
//! token's logits are derived from the last slot's hash. `FakeModel::reference_greedy`
//! computes the same outputs straight from the token list, without pages: an
//! independent reference for greedy tests.

use std::sync::{Arc, Mutex};

use crate::api::ModelInfo;
use crate::runner::{ForwardBatch, Logits, LogitsWanted, ModelRunner, RunnerError, TokenDecoder};

/// Seed of the context hash.
const HASH_SEED: u64 = 0x5eed_a4b0_4000_0001;

/// A deterministic xorshift generator for test and bench workloads: the same seed gives
/// the same numbers on every run and machine, with no RNG crate. The seed must not be 0.
#[derive(Clone, Debug)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// How the fake picks its favourite next token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextToken {
    /// A hash of the whole context (prompt and output so far).
    Hash,
    /// The last token plus one, modulo the vocabulary (readable outputs for stop tests;
    /// the context hash is still computed through the pages and checked).
    Successor,
}

/// What one forward pass was asked to do, for assertions on scheduling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// Per sequence: (tokens already in its pages, new tokens).
    pub sequences: Vec<(usize, usize)>,
}

impl BatchRecord {
    /// New tokens in the pass.
    pub fn n_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.1).sum()
    }
}

/// The fake model; see the module docs.
#[derive(Debug)]
pub struct FakeModel {
    vocab_size: usize,
    max_context_tokens: usize,
    eos_token_ids: Vec<u32>,
    next_token: NextToken,
    slots: Vec<u64>,
    page_size: usize,
    record: Option<Arc<Mutex<Vec<BatchRecord>>>>,
    fail_at_pass: Option<usize>,
    n_passes: usize,
}

impl FakeModel {
    /// A fake with `vocab_size` tokens, a 4096-token context and no eos.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            max_context_tokens: 4096,
            eos_token_ids: Vec::new(),
            next_token: NextToken::Hash,
            slots: Vec::new(),
            page_size: 1,
            record: None,
            fail_at_pass: None,
            n_passes: 0,
        }
    }

    /// Sets the end-of-sequence ids the model reports.
    pub fn with_eos(mut self, eos_token_ids: Vec<u32>) -> Self {
        self.eos_token_ids = eos_token_ids;
        self
    }

    /// Sets how the next token is chosen.
    pub fn with_next_token(mut self, next_token: NextToken) -> Self {
        self.next_token = next_token;
        self
    }

    /// Sets the context length the model reports.
    pub fn with_max_context(mut self, max_context_tokens: usize) -> Self {
        self.max_context_tokens = max_context_tokens;
        self
    }

    /// Records every forward pass into the returned log.
    pub fn recording(mut self) -> (Self, Arc<Mutex<Vec<BatchRecord>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        self.record = Some(Arc::clone(&log));
        (self, log)
    }

    /// Makes forward pass number `pass` (0-based) fail.
    pub fn failing_at(mut self, pass: usize) -> Self {
        self.fail_at_pass = Some(pass);
        self
    }

    /// The greedy continuation of `prompt` by `n_tokens` tokens, computed from the token
    /// list alone (no pages): what the engine must produce at temperature 0 with no eos.
    pub fn reference_greedy(&self, prompt: &[u32], n_tokens: usize) -> Vec<u32> {
        let mut hash = HASH_SEED;
        for &token in prompt {
            hash = context_hash(hash, token);
        }
        let mut last = *prompt.last().expect("prompt is not empty");
        let mut output = Vec::with_capacity(n_tokens);
        for _ in 0..n_tokens {
            let next = favourite(self.next_token, hash, last, self.vocab_size);
            output.push(next);
            hash = context_hash(hash, next);
            last = next;
        }
        output
    }

    fn write_and_score(&mut self, batch: &ForwardBatch) -> Result<Logits, RunnerError> {
        let mut logits = Logits {
            vocab_size: self.vocab_size,
            data: Vec::with_capacity(batch.n_logit_rows() * self.vocab_size),
        };
        let mut offset = 0;
        for seq in &batch.sequences {
            let new_tokens = &batch.token_ids[offset..offset + seq.n_new_tokens];
            offset += seq.n_new_tokens;
            for (i, &token) in new_tokens.iter().enumerate() {
                let pos = seq.n_context_tokens + i;
                let prev = match pos {
                    0 => HASH_SEED,
                    _ => self.read(&seq.page_table, pos - 1)?,
                };
                let slot = self.slot(&seq.page_table, pos)?;
                self.slots[slot] = context_hash(prev, token);
                if seq.logits == LogitsWanted::All
                    || (seq.logits == LogitsWanted::Last && i + 1 == new_tokens.len())
                {
                    let hash = self.slots[slot];
                    let next = favourite(self.next_token, hash, token, self.vocab_size);
                    push_row(&mut logits.data, hash, next, self.vocab_size);
                }
            }
        }
        Ok(logits)
    }

    fn slot(&self, page_table: &[u32], pos: usize) -> Result<usize, RunnerError> {
        let page = page_table
            .get(pos / self.page_size)
            .ok_or_else(|| RunnerError(format!("page table does not cover position {pos}")))?;
        let slot = *page as usize * self.page_size + pos % self.page_size;
        if slot >= self.slots.len() {
            return Err(RunnerError(format!("page {page} is outside the pool")));
        }
        Ok(slot)
    }

    fn read(&self, page_table: &[u32], pos: usize) -> Result<u64, RunnerError> {
        let value = self.slots[self.slot(page_table, pos)?];
        if value == 0 {
            return Err(RunnerError(format!("position {pos} was never written")));
        }
        Ok(value)
    }
}

impl ModelRunner for FakeModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "fake".into(),
            max_context_tokens: self.max_context_tokens,
            vocab_size: self.vocab_size,
            eos_token_ids: self.eos_token_ids.clone(),
        }
    }

    fn kv_bytes_per_token(&self) -> usize {
        8
    }

    fn allocate_kv(&mut self, n_pages: usize, page_size: usize) -> Result<(), RunnerError> {
        self.slots = vec![0; n_pages * page_size];
        self.page_size = page_size;
        Ok(())
    }

    fn forward(&mut self, batch: &ForwardBatch) -> Result<Logits, RunnerError> {
        let pass = self.n_passes;
        self.n_passes += 1;
        if let Some(record) = &self.record {
            let sequences = batch
                .sequences
                .iter()
                .map(|s| (s.n_context_tokens, s.n_new_tokens))
                .collect();
            record
                .lock()
                .expect("record lock")
                .push(BatchRecord { sequences });
        }
        if self.fail_at_pass == Some(pass) {
            return Err(RunnerError("injected failure".into()));
        }
        self.write_and_score(batch)
    }

    fn decoder(&self) -> Option<Arc<dyn TokenDecoder>> {
        Some(Arc::new(ByteDecoder))
    }
}

/// Decodes token `i < 256` as byte `i` (lossy UTF-8) and larger ids as `<i>`, like a
/// byte-level tokenizer with a few special tokens.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteDecoder;

impl TokenDecoder for ByteDecoder {
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            match u8::try_from(id) {
                Ok(byte) => bytes.push(byte),
                Err(_) if skip_special_tokens => {}
                Err(_) => bytes.extend(format!("<{id}>").bytes()),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Token ids of `text`'s bytes (the inverse of `ByteDecoder`).
pub fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

fn context_hash(prev: u64, token: u32) -> u64 {
    splitmix(prev ^ (u64::from(token) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

fn favourite(rule: NextToken, hash: u64, last: u32, vocab_size: usize) -> u32 {
    match rule {
        NextToken::Hash => (splitmix(hash) % vocab_size as u64) as u32,
        NextToken::Successor => ((last as usize + 1) % vocab_size) as u32,
    }
}

/// A row with pseudo-random logits in `[0, 4)` and `favourite` at 8.
fn push_row(data: &mut Vec<f32>, hash: u64, favourite: u32, vocab_size: usize) {
    let mut state = hash;
    for token in 0..vocab_size as u32 {
        state = splitmix(state);
        let logit = if token == favourite {
            8.0
        } else {
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0
        };
        data.push(logit);
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
