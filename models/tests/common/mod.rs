//! Helpers shared by the model tests: fixture paths and references, a scrambled page
//! allocator, sequences that grow their page tables, and logits comparison.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use arbor_models::{ForwardBatch, KvCache, LoadError, LogitsWanted, Model, SequenceInput};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// `tests/fixtures/<name>` of the workspace.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// One case of a tiny model's `reference.json`, with its logits.
pub struct TinyCase {
    pub prompt_ids: Vec<u32>,
    pub greedy_16: Vec<u32>,
    /// `[n_prompt_tokens, vocab]` f32 logits from transformers.
    pub logits: Tensor,
}

/// All cases of a tiny fixture model.
pub fn tiny_cases(name: &str) -> Vec<TinyCase> {
    let dir = fixture_dir(name);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let logits =
        candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu)
            .unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| TinyCase {
            prompt_ids: ids(&case["prompt_ids"]),
            greedy_16: ids(&case["greedy_16"]),
            logits: logits[case["logits_tensor"].as_str().unwrap()].clone(),
        })
        .collect()
}

/// A JSON array of token ids.
pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Loads a tiny fixture model in `dtype`.
pub fn tiny_model(name: &str, dtype: DType) -> Model {
    Model::load_safetensors_dir(&fixture_dir(name), dtype, &Device::Cpu).unwrap()
}

/// Hands out page ids in a scrambled order, so page tables are never contiguous.
pub struct PageDealer {
    free: Vec<u32>,
}

impl PageDealer {
    pub fn new(n_pages: usize) -> Self {
        // A fixed permutation: multiply by a unit modulo n_pages, then reverse.
        let step = (1..n_pages)
            .rev()
            .find(|s| gcd(*s, n_pages) == 1 && *s > n_pages / 3);
        let step = step.unwrap_or(1);
        let free = (0..n_pages)
            .map(|i| ((i * step + 5) % n_pages) as u32)
            .collect();
        Self { free }
    }

    pub fn allocate(&mut self) -> u32 {
        self.free.pop().expect("test pool has free pages")
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A sequence being fed to the model: its tokens so far and its page table.
pub struct TestSeq {
    pub n_context: usize,
    pub page_table: Vec<u32>,
}

impl TestSeq {
    pub fn new() -> Self {
        Self {
            n_context: 0,
            page_table: Vec::new(),
        }
    }

    /// The batch entry for `n_new` more tokens, allocating pages as needed.
    pub fn input(
        &mut self,
        n_new: usize,
        page_size: usize,
        dealer: &mut PageDealer,
        logits: LogitsWanted,
    ) -> SequenceInput {
        while self.page_table.len() * page_size < self.n_context + n_new {
            self.page_table.push(dealer.allocate());
        }
        let input = SequenceInput {
            n_context_tokens: self.n_context,
            n_new_tokens: n_new,
            page_table: self.page_table.clone(),
            logits,
        };
        self.n_context += n_new;
        input
    }
}

/// Runs one sequence's chunk through the model and returns its logits.
pub fn forward_one(
    model: &Model,
    kv: &mut KvCache,
    seq: &mut TestSeq,
    dealer: &mut PageDealer,
    tokens: &[u32],
    logits: LogitsWanted,
) -> Tensor {
    let input = seq.input(tokens.len(), kv.page_size(), dealer, logits);
    let batch = ForwardBatch {
        token_ids: tokens.to_vec(),
        sequences: vec![input],
    };
    model.forward(&batch, kv).unwrap()
}

/// Logits of every position of `prompt`, run alone in a fresh KV pool of `n_pages`
/// pages of 16 with `kv_dtype` storage on `model`'s device, returned on the CPU.
pub fn prompt_logits(model: &Model, n_pages: usize, kv_dtype: DType, prompt: &[u32]) -> Tensor {
    let mut kv = model.new_kv_cache(n_pages, 16, kv_dtype).unwrap();
    let mut dealer = PageDealer::new(n_pages);
    let mut seq = TestSeq::new();
    let logits = forward_one(
        model,
        &mut kv,
        &mut seq,
        &mut dealer,
        prompt,
        LogitsWanted::All,
    );
    logits.to_device(&Device::Cpu).unwrap()
}

/// Index of the largest value of each row.
pub fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// Largest absolute difference between two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Prefills `prompt` then decodes greedily `n_new` tokens, one forward per token.
pub fn greedy(model: &Model, kv: &mut KvCache, prompt: &[u32], n_new: usize) -> Vec<u32> {
    let mut dealer = PageDealer::new(kv.n_pages());
    let mut seq = TestSeq::new();
    let logits = forward_one(model, kv, &mut seq, &mut dealer, prompt, LogitsWanted::Last);
    let mut out = vec![argmax_rows(&logits)[0]];
    while out.len() < n_new {
        let last = *out.last().unwrap();
        let logits = forward_one(
            model,
            kv,
            &mut seq,
            &mut dealer,
            &[last],
            LogitsWanted::Last,
        );
        out.push(argmax_rows(&logits)[0]);
    }
    out
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `<tmp>/arbor-<label>-<pid>-<n>`, empty.
    pub fn new(label: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("arbor-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// A copy of the files of `tests/fixtures/<name>`.
    pub fn copy_of_fixture(name: &str) -> Self {
        let dir = Self::new(name);
        for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path.join(entry.file_name())).unwrap();
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Asserts that a load error's message names `file` once, says each of `problem`, and
/// fits on one line.
pub fn assert_names(err: &LoadError, file: &Path, problem: &[&str]) {
    let message = err.to_string();
    println!("{message}");
    assert_eq!(
        message.matches(&file.display().to_string()).count(),
        1,
        "{message}"
    );
    for word in problem {
        assert!(message.contains(word), "no `{word}` in: {message}");
    }
    assert!(!message.contains('\n'), "one line expected: {message}");
}
