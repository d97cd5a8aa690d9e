//! Paged attention checked against a plain dense causal attention written out in f64:
//! sequences with cached prefixes, chunks and single decode tokens share one call, pages
//! are shuffled, and grouped-query heads map to their KV heads.

use arbor_kernels::{PagedAttentionMeta, SequenceSpan, paged_attention, write_kv};
use candle_core::{DType, Device, Tensor};

/// Deterministic xorshift values in [-1, 1), so the tests need no RNG crate.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// One test sequence: its cached prefix length and new-token count.
#[derive(Clone, Copy)]
struct Seq {
    n_context: usize,
    n_new: usize,
}

struct Case {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    page_size: usize,
    seqs: Vec<Seq>,
    q_dtype: DType,
    cache_dtype: DType,
}

/// Runs the kernel and the dense reference on the same random data; returns the largest
/// absolute difference.
fn max_error(case: &Case) -> f32 {
    let dev = Device::Cpu;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let (hd, n_kv) = (case.head_dim, case.n_kv_heads);

    // Deal pages to sequences in a scrambled order so no table is contiguous.
    let pages_per_seq: Vec<usize> = case
        .seqs
        .iter()
        .map(|s| (s.n_context + s.n_new).div_ceil(case.page_size))
        .collect();
    let n_pages: usize = pages_per_seq.iter().sum::<usize>() + 3;
    let mut free: Vec<u32> = (0..n_pages as u32)
        .map(|p| (p * 7 + 3) % n_pages as u32)
        .collect();
    let tables: Vec<Vec<u32>> = pages_per_seq
        .iter()
        .map(|&n| free.drain(..n).collect())
        .collect();

    // Every position's K/V (context and new), written through the kernel.
    let shape = (n_pages, case.page_size, n_kv, hd);
    let k_cache = Tensor::zeros(shape, case.cache_dtype, &dev).unwrap();
    let v_cache = Tensor::zeros(shape, case.cache_dtype, &dev).unwrap();
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for (seq, table) in case.seqs.iter().zip(&tables) {
        let n = seq.n_context + seq.n_new;
        let k = noise.vec(n * n_kv * hd);
        let v = noise.vec(n * n_kv * hd);
        let slots: Vec<u32> = (0..n)
            .map(|p| {
                table[p / case.page_size] * case.page_size as u32 + (p % case.page_size) as u32
            })
            .collect();
        let slots = Tensor::new(slots, &dev).unwrap();
        let as_cache = |x: &[f32]| {
            Tensor::from_slice(x, (n, n_kv, hd), &dev)
                .unwrap()
                .to_dtype(case.cache_dtype)
                .unwrap()
        };
        write_kv(&k_cache, &as_cache(&k), &slots).unwrap();
        write_kv(&v_cache, &as_cache(&v), &slots).unwrap();
        keys.push(rounded(&k, case.cache_dtype));
        values.push(rounded(&v, case.cache_dtype));
    }

    let n_tokens: usize = case.seqs.iter().map(|s| s.n_new).sum();
    let q = noise.vec(n_tokens * case.n_heads * hd);
    let q_tensor = Tensor::from_slice(&q, (n_tokens, case.n_heads, hd), &dev)
        .unwrap()
        .to_dtype(case.q_dtype)
        .unwrap();
    let q = rounded(&q, case.q_dtype);
    let spans: Vec<SequenceSpan<'_>> = case
        .seqs
        .iter()
        .zip(&tables)
        .map(|(s, t)| SequenceSpan {
            n_context_tokens: s.n_context,
            n_new_tokens: s.n_new,
            page_table: t,
        })
        .collect();
    let meta = PagedAttentionMeta::new(&spans, case.page_size, &dev).unwrap();
    let scale = 1.0 / (hd as f32).sqrt();
    let out = paged_attention(&q_tensor, &k_cache, &v_cache, &meta, scale).unwrap();
    assert_eq!(out.dtype(), case.q_dtype);
    let out = out.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let out = out.to_vec1::<f32>().unwrap();

    let expected = dense_reference(case, &q, &keys, &values, scale);
    out.iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Values as the given storage dtype holds them.
fn rounded(x: &[f32], dtype: DType) -> Vec<f32> {
    let t = Tensor::from_slice(x, x.len(), &Device::Cpu).unwrap();
    let t = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    t.to_vec1().unwrap()
}

/// Causal softmax attention in f64, one sequence at a time, from contiguous K/V.
fn dense_reference(
    case: &Case,
    q: &[f32],
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    scale: f32,
) -> Vec<f32> {
    let (hd, n_kv, n_heads) = (case.head_dim, case.n_kv_heads, case.n_heads);
    let group = n_heads / n_kv;
    let mut out = Vec::new();
    let mut token = 0;
    for (s, seq) in case.seqs.iter().enumerate() {
        for i in 0..seq.n_new {
            let pos = seq.n_context + i;
            for h in 0..n_heads {
                let kvh = h / group;
                let qh = &q[(token * n_heads + h) * hd..][..hd];
                let scores: Vec<f64> = (0..=pos)
                    .map(|j| {
                        let kj = &keys[s][(j * n_kv + kvh) * hd..][..hd];
                        qh.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (0..=pos)
                        .map(|j| weights[j] * values[s][(j * n_kv + kvh) * hd + d] as f64)
                        .sum();
                    out.push((acc / sum) as f32);
                }
            }
            token += 1;
        }
    }
    out
}

fn mixed_batch() -> Vec<Seq> {
    vec![
        Seq {
            n_context: 0,
            n_new: 9,
        },
        Seq {
            n_context: 21,
            n_new: 1,
        },
        Seq {
            n_context: 16,
            n_new: 5,
        },
        Seq {
            n_context: 3,
            n_new: 1,
        },
        Seq {
            n_context: 0,
            n_new: 1,
        },
    ]
}

#[test]
fn mixed_prefill_and_decode_match_dense_attention_for_several_page_sizes() {
    for page_size in [1, 3, 16] {
        let case = Case {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 32,
            page_size,
            seqs: mixed_batch(),
            q_dtype: DType::F32,
            cache_dtype: DType::F32,
        };
        let err = max_error(&case);
        assert!(err < 1e-5, "page size {page_size}: max error {err}");
    }
}

#[test]
fn multi_query_and_plain_multi_head_layouts_match_dense_attention() {
    for (n_heads, n_kv_heads) in [(6, 1), (4, 4)] {
        let case = Case {
            n_heads,
            n_kv_heads,
            head_dim: 20,
            page_size: 4,
            seqs: mixed_batch(),
            q_dtype: DType::F32,
            cache_dtype: DType::F32,
        };
        let err = max_error(&case);
        assert!(err < 1e-5, "{n_heads}/{n_kv_heads} heads: max error {err}");
    }
}

#[test]
fn half_precision_storage_accumulates_in_f32() {
    for (q_dtype, cache_dtype) in [
        (DType::F32, DType::BF16),
        (DType::BF16, DType::BF16),
        (DType::F16, DType::F16),
        (DType::BF16, DType::F32),
    ] {
        let case = Case {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 64,
            page_size: 16,
            seqs: mixed_batch(),
            q_dtype,
            cache_dtype,
        };
        // The reference sees the same rounded inputs, so only the output rounding of a
        // 16-bit q remains (values are below 1, bf16 keeps 8 bits).
        let err = max_error(&case);
        let bound = if q_dtype == DType::F32 { 1e-5 } else { 8e-3 };
        assert!(
            err < bound,
            "{q_dtype:?} q, {cache_dtype:?} cache: max error {err}"
        );
    }
}

#[test]
fn a_page_id_outside_the_pool_is_an_error() {
    let dev = Device::Cpu;
    let cache = Tensor::zeros((2, 4, 1, 8), DType::F32, &dev).unwrap();
    let q = Tensor::zeros((1, 1, 8), DType::F32, &dev).unwrap();
    let table = [1u32, 5];
    let spans = [SequenceSpan {
        n_context_tokens: 4,
        n_new_tokens: 1,
        page_table: &table,
    }];
    let meta = PagedAttentionMeta::new(&spans, 4, &dev).unwrap();
    let err = paged_attention(&q, &cache, &cache, &meta, 1.0).unwrap_err();
    assert!(err.to_string().contains("page 5"), "{err}");
}

#[test]
fn a_page_table_too_short_for_its_context_is_an_error() {
    let table = [0u32];
    let spans = [SequenceSpan {
        n_context_tokens: 4,
        n_new_tokens: 1,
        page_table: &table,
    }];
    let err = PagedAttentionMeta::new(&spans, 4, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("needs 5 slots"), "{err}");
}
