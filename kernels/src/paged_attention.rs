//! Causal attention of a flattened batch of new tokens over each sequence's paged context.
//!
//! A forward pass mixes sequences that prefill a chunk of their prompt (possibly after a
//! cached prefix) with sequences that decode one token. The model writes the new tokens'
//! K/V into the pool first ([`crate::write_kv`]), then calls [`paged_attention`] once per
//! layer: query token `i` of a sequence with `n_context_tokens` cached tokens sits at
//! position `n_context_tokens + i` and attends to positions `0..=n_context_tokens + i`,
//! read through the sequence's page table. Grouped-query attention maps query head `h`
//! to KV head `h / (n_heads / n_kv_heads)`, as Hugging Face's `repeat_kv` does.
//!
//! [`PagedAttentionMeta`] is built once per forward pass and shared by all layers; it
//! holds its index arrays as device tensors so that a CUDA `cuda_fwd` can read them
//! where they live.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use crate::cpu::{Elem, axpy, contiguous, dot, is_float_storage, other_dtype, u32_slice};

/// One sequence's share of a forward pass, as the host describes it.
#[derive(Clone, Copy, Debug)]
pub struct SequenceSpan<'a> {
    /// Tokens whose K/V was in the pool before this pass (cached prefix plus earlier
    /// chunks).
    pub n_context_tokens: usize,
    /// New tokens of this pass, in the batch's token order; their K/V must already be
    /// written when attention runs.
    pub n_new_tokens: usize,
    /// Page ids covering at least `n_context_tokens + n_new_tokens` slots, in order.
    pub page_table: &'a [u32],
}

/// Per-forward-pass index arrays for [`write_kv`](crate::write_kv) and
/// [`paged_attention`], shared by every layer.
#[derive(Clone, Debug)]
pub struct PagedAttentionMeta {
    /// `[n_seqs, max_pages_per_seq]` u32; rows shorter than the widest are padded with 0
    /// and the padding is never read.
    page_tables: Tensor,
    /// `[n_seqs]` u32: context length after this pass (`n_context_tokens + n_new_tokens`).
    context_lens: Tensor,
    /// `[n_seqs + 1]` u32: offset of each sequence's first new token in the batch.
    query_starts: Tensor,
    /// `[n_tokens]` u32: the slot (`page_id * page_size + offset`) of each new token.
    slots: Tensor,
    /// Token slots per page.
    page_size: usize,
    /// New tokens in the batch (sum of `n_new_tokens`).
    n_tokens: usize,
}

impl PagedAttentionMeta {
    /// Builds the index arrays for `spans` on `device`.
    ///
    /// Fails if `page_size` is zero or a page table is too short for its sequence's
    /// context; page ids are checked against the pool by the kernels.
    pub fn new(spans: &[SequenceSpan<'_>], page_size: usize, device: &Device) -> Result<Self> {
        if page_size == 0 {
            bail!("page size must be at least 1");
        }
        let n_seqs = spans.len();
        let max_pages = spans.iter().map(|s| s.page_table.len()).max().unwrap_or(0);
        let n_tokens: usize = spans.iter().map(|s| s.n_new_tokens).sum();

        let mut page_tables = vec![0u32; n_seqs * max_pages];
        let mut context_lens = Vec::with_capacity(n_seqs);
        let mut query_starts = Vec::with_capacity(n_seqs + 1);
        let mut slots = Vec::with_capacity(n_tokens);
        query_starts.push(0u32);
        for (seq_idx, span) in spans.iter().enumerate() {
            let context_len = span.n_context_tokens + span.n_new_tokens;
            if span.page_table.len() * page_size < context_len {
                bail!(
                    "sequence {seq_idx} needs {context_len} slots but its page table has {} \
                     pages of {page_size}",
                    span.page_table.len()
                );
            }
            page_tables[seq_idx * max_pages..][..span.page_table.len()]
                .copy_from_slice(span.page_table);
            context_lens.push(to_u32(context_len)?);
            for pos in span.n_context_tokens..context_len {
                let page = span.page_table[pos / page_size] as usize;
                slots.push(to_u32(page * page_size + pos % page_size)?);
            }
            query_starts.push(to_u32(slots.len())?);
        }

        Ok(Self {
            page_tables: Tensor::from_vec(page_tables, (n_seqs, max_pages), device)?,
            context_lens: Tensor::from_vec(context_lens, n_seqs, device)?,
            query_starts: Tensor::from_vec(query_starts, n_seqs + 1, device)?,
            slots: Tensor::from_vec(slots, n_tokens, device)?,
            page_size,
            n_tokens,
        })
    }

    /// `[n_tokens]` u32 slots of the new tokens, the `slots` input of
    /// [`write_kv`](crate::write_kv).
    pub fn slots(&self) -> &Tensor {
        &self.slots
    }

    /// `[n_seqs, max_pages_per_seq]` u32 page tables, zero-padded.
    pub fn page_tables(&self) -> &Tensor {
        &self.page_tables
    }

    /// `[n_seqs]` u32 context lengths after this pass, in tokens.
    pub fn context_lens(&self) -> &Tensor {
        &self.context_lens
    }

    /// `[n_seqs + 1]` u32 offsets of each sequence's first new token in the batch.
    pub fn query_starts(&self) -> &Tensor {
        &self.query_starts
    }

    /// Token slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// New tokens in the batch.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
}

/// The paged-attention op over `(q, k_cache, v_cache)`.
///
/// - `q`: `[n_tokens, n_heads, head_dim]`, contiguous, f32/bf16/f16; the output has the
///   same shape and dtype.
/// - `k_cache`, `v_cache`: `[n_pages, page_size, n_kv_heads, head_dim]`, contiguous,
///   one shared f32/bf16/f16 dtype (it may differ from `q`'s).
///
/// Scores are `scale * q.k`, softmax and the weighted sum of V run in f32.
#[derive(Clone, Copy, Debug)]
pub struct PagedAttention<'a> {
    /// Index arrays of this forward pass.
    pub meta: &'a PagedAttentionMeta,
    /// Multiplier of the dot products, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// Runs [`PagedAttention`]: every new token of `meta` attends causally over its
/// sequence's context in `k_cache`/`v_cache`. Returns `[n_tokens, n_heads, head_dim]` in
/// `q`'s dtype.
///
/// Fails on mismatched shapes or dtypes, a page id outside the pool (CPU; the CUDA body
/// skips such pages), or a device without an implementation (Metal).
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &PagedAttentionMeta,
    scale: f32,
) -> Result<Tensor> {
    let (n_tokens, n_heads, head_dim) = q.dims3()?;
    let (_, page_size, n_kv_heads, kv_dim) = k_cache.dims4()?;
    if v_cache.dims() != k_cache.dims() || v_cache.dtype() != k_cache.dtype() {
        bail!(
            "paged attention needs K and V caches of one shape and dtype, got {:?} {:?} and \
             {:?} {:?}",
            k_cache.dims(),
            k_cache.dtype(),
            v_cache.dims(),
            v_cache.dtype()
        );
    }
    if kv_dim != head_dim || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        bail!(
            "paged attention: {n_heads} query heads of {head_dim} cannot use {n_kv_heads} KV \
             heads of {kv_dim}"
        );
    }
    if page_size != meta.page_size || n_tokens != meta.n_tokens {
        bail!(
            "paged attention: cache pages hold {page_size} tokens and q has {n_tokens} rows, \
             metadata says {} and {}",
            meta.page_size,
            meta.n_tokens
        );
    }
    if !is_float_storage(q.dtype()) || !is_float_storage(k_cache.dtype()) {
        bail!(
            "paged attention supports f32/bf16/f16, got q {:?} and cache {:?}",
            q.dtype(),
            k_cache.dtype()
        );
    }
    let q = q.contiguous()?;
    q.apply_op3_no_bwd(k_cache, v_cache, &PagedAttention { meta, scale })
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "arbor-paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n_tokens, n_heads, head_dim) = q_layout.shape().dims3()?;
        let (n_pages, page_size, n_kv_heads, _) = k_layout.shape().dims4()?;
        let geometry = Geometry {
            n_heads,
            n_kv_heads,
            head_dim,
            page_size,
        };

        let (tables_guard, tables_layout) = self.meta.page_tables.storage_and_layout();
        let (lens_guard, lens_layout) = self.meta.context_lens.storage_and_layout();
        let (starts_guard, starts_layout) = self.meta.query_starts.storage_and_layout();
        let index = SequenceIndex {
            tables: u32_slice(cpu(&tables_guard)?, tables_layout, "page tables")?,
            max_pages: tables_layout.dims()[1],
            context_lens: u32_slice(cpu(&lens_guard)?, lens_layout, "context lengths")?,
            query_starts: u32_slice(cpu(&starts_guard)?, starts_layout, "query starts")?,
        };
        index.check(n_tokens, n_pages, page_size)?;
        let token_seq = index.token_sequences(n_tokens);

        macro_rules! run {
            ($q:expr, $k:expr, $v:expr) => {{
                let q = contiguous($q, q_layout, "q")?;
                let k = contiguous($k, k_layout, "k cache")?;
                let v = contiguous($v, v_layout, "v cache")?;
                let out = attend(q, k, v, geometry, &index, &token_seq, self.scale);
                Ok((Elem::into_storage(out), q_layout.shape().clone()))
            }};
        }
        use CpuStorage::{BF16, F16, F32};
        match (q, k, v) {
            (F32(q), F32(k), F32(v)) => run!(q, k, v),
            (F32(q), BF16(k), BF16(v)) => run!(q, k, v),
            (F32(q), F16(k), F16(v)) => run!(q, k, v),
            (BF16(q), F32(k), F32(v)) => run!(q, k, v),
            (BF16(q), BF16(k), BF16(v)) => run!(q, k, v),
            (BF16(q), F16(k), F16(v)) => run!(q, k, v),
            (F16(q), F32(k), F32(v)) => run!(q, k, v),
            (F16(q), BF16(k), BF16(v)) => run!(q, k, v),
            (F16(q), F16(k), F16(v)) => run!(q, k, v),
            (q, k, v) => bail!(
                "paged attention supports f32/bf16/f16 with one K/V dtype, got {:?} {:?} {:?}",
                other_dtype(q),
                other_dtype(k),
                other_dtype(v)
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_layout: &Layout,
        k: &candle_core::CudaStorage,
        k_layout: &Layout,
        v: &candle_core::CudaStorage,
        v_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::paged_attention(self.meta, self.scale, q, q_layout, k, k_layout, v, v_layout)
    }
}

/// The CPU storage behind a metadata tensor, or an error if it lives elsewhere.
fn cpu(storage: &Storage) -> Result<&CpuStorage> {
    match storage {
        Storage::Cpu(s) => Ok(s),
        _ => bail!("paged attention metadata must live on the same device as q"),
    }
}

/// Shapes the inner loops need.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    page_size: usize,
}

/// Host views of the metadata arrays.
struct SequenceIndex<'a> {
    tables: &'a [u32],
    max_pages: usize,
    context_lens: &'a [u32],
    query_starts: &'a [u32],
}

impl SequenceIndex<'_> {
    /// Checks that the arrays agree with each other and that every page a query will
    /// read lies inside the pool.
    fn check(&self, n_tokens: usize, n_pages: usize, page_size: usize) -> Result<()> {
        let n_seqs = self.context_lens.len();
        if self.query_starts.len() != n_seqs + 1
            || self.query_starts.last().copied().unwrap_or(0) as usize != n_tokens
        {
            bail!("paged attention metadata does not match the {n_tokens} query rows");
        }
        for seq in 0..n_seqs {
            let n_used = (self.context_lens[seq] as usize).div_ceil(page_size);
            let table = &self.tables[seq * self.max_pages..][..n_used];
            if let Some(&bad) = table.iter().find(|&&p| p as usize >= n_pages) {
                bail!("sequence {seq} uses page {bad}, the pool has {n_pages} pages");
            }
        }
        Ok(())
    }

    /// The sequence of each new token.
    fn token_sequences(&self, n_tokens: usize) -> Vec<u32> {
        let mut token_seq = Vec::with_capacity(n_tokens);
        for (seq, pair) in self.query_starts.windows(2).enumerate() {
            let n_new = (pair[1] - pair[0]) as usize;
            token_seq.extend(std::iter::repeat_n(seq as u32, n_new));
        }
        token_seq
    }
}

/// Reusable per-worker buffers, so that the inner loops allocate nothing per item.
#[derive(Default)]
struct Scratch {
    /// Scaled queries of one KV-head group, `[group, head_dim]`.
    queries: Vec<f32>,
    /// Scores, then softmax weights, `[group, n_keys]`.
    scores: Vec<f32>,
    /// One K or V row widened to f32.
    row: Vec<f32>,
    /// Weighted sums of V, `[group, head_dim]`.
    acc: Vec<f32>,
    /// `1 / sum(exp)` of each query head's softmax, `[group]`.
    inv_sums: Vec<f32>,
}

/// Computes the attention output for every (token, KV head) pair in parallel. One work
/// item handles the `n_heads / n_kv_heads` query heads sharing a KV head, so each K/V row
/// is read once for the whole group.
fn attend<Q: Elem, C: Elem>(
    q: &[Q],
    k: &[C],
    v: &[C],
    geometry: Geometry,
    index: &SequenceIndex<'_>,
    token_seq: &[u32],
    scale: f32,
) -> Vec<Q> {
    let Geometry {
        n_heads,
        n_kv_heads,
        head_dim,
        ..
    } = geometry;
    let group = n_heads / n_kv_heads;
    let mut out = vec![Q::from_f32(0.0); token_seq.len() * n_heads * head_dim];
    out.par_chunks_mut(group * head_dim)
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (item, out)| {
            let token = item / n_kv_heads;
            let kv_head = item % n_kv_heads;
            let seq = token_seq[token] as usize;
            let q_start = index.query_starts[seq] as usize;
            let n_new = index.query_starts[seq + 1] as usize - q_start;
            let n_keys = index.context_lens[seq] as usize - n_new + (token - q_start) + 1;
            let n_used = n_keys.div_ceil(geometry.page_size);
            let table = &index.tables[seq * index.max_pages..][..n_used];
            let q_rows = &q[(token * n_heads + kv_head * group) * head_dim..][..group * head_dim];
            let item = GroupItem {
                kv_head,
                n_keys,
                table,
            };
            attend_group(q_rows, k, v, geometry, &item, scale, scratch, out);
        });
    out
}

/// What one work item attends over.
struct GroupItem<'a> {
    kv_head: usize,
    /// Keys visible to this query: positions `0..n_keys`.
    n_keys: usize,
    /// The pages holding those keys, in order.
    table: &'a [u32],
}

/// Attention of one token's query heads in one KV-head group: scores, softmax, weighted
/// sum of V, written to `out` (`[group, head_dim]`).
#[allow(clippy::too_many_arguments)]
fn attend_group<Q: Elem, C: Elem>(
    q_rows: &[Q],
    k: &[C],
    v: &[C],
    geometry: Geometry,
    item: &GroupItem<'_>,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [Q],
) {
    let head_dim = geometry.head_dim;
    let group = q_rows.len() / head_dim;
    let n_keys = item.n_keys;
    let Scratch {
        queries,
        scores,
        row,
        acc,
        inv_sums,
    } = scratch;
    queries.clear();
    queries.extend(q_rows.iter().map(|x| x.to_f32() * scale));
    scores.resize(group * n_keys, 0.0);
    row.resize(head_dim, 0.0);

    for_each_key_row(k, geometry, item, |key, k_row| {
        let k_row = C::row_f32(k_row, row);
        for (h, query) in queries.chunks_exact(head_dim).enumerate() {
            scores[h * n_keys + key] = dot(query, k_row);
        }
    });

    inv_sums.resize(group, 0.0);
    for (head_scores, inv_sum) in scores.chunks_exact_mut(n_keys).zip(inv_sums.iter_mut()) {
        let max = head_scores
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in head_scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        *inv_sum = 1.0 / sum;
    }

    acc.clear();
    acc.resize(group * head_dim, 0.0);
    for_each_key_row(v, geometry, item, |key, v_row| {
        let v_row = C::row_f32(v_row, row);
        for (h, acc_h) in acc.chunks_exact_mut(head_dim).enumerate() {
            axpy(scores[h * n_keys + key], v_row, acc_h);
        }
    });
    for ((out_h, acc_h), inv_sum) in out
        .chunks_exact_mut(head_dim)
        .zip(acc.chunks_exact(head_dim))
        .zip(inv_sums.iter())
    {
        for (o, a) in out_h.iter_mut().zip(acc_h) {
            *o = Q::from_f32(a * inv_sum);
        }
    }
}

/// Calls `f(key_position, row)` for the K or V row of every visible key position of
/// `item`'s KV head, walking the page table page by page.
#[inline]
fn for_each_key_row<C: Elem>(
    cache: &[C],
    geometry: Geometry,
    item: &GroupItem<'_>,
    mut f: impl FnMut(usize, &[C]),
) {
    let Geometry {
        n_kv_heads,
        head_dim,
        page_size,
        ..
    } = geometry;
    let mut key = 0;
    for &page in item.table {
        let n_in_page = page_size.min(item.n_keys - key);
        let page_start = page as usize * page_size;
        for offset in 0..n_in_page {
            let slot = page_start + offset;
            let start = (slot * n_kv_heads + item.kv_head) * head_dim;
            f(key, &cache[start..start + head_dim]);
            key += 1;
        }
    }
}

/// Converts a count to the u32 the index arrays hold.
fn to_u32(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{n} does not fit in u32")))
}
