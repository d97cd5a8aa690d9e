//! `x W^T` on the CPU for GGUF weights in Q4_1 or Q8_0, the formats of SmolLM2's GGUF
//! (Q4_1 matrices, Q8_0 tied embedding and LM head).
//!
//! Candle computes these products as one integer dot product per (row of `x`, row of
//! `W`) after quantizing `x` to 8 bits; for Q4_1 that dot product is scalar code on
//! x86-64, so every extra sequence in a batch costs as much as the first and batching
//! does not pay. Here each task dequantizes a few rows of `W` to f32 once and takes
//! their dot products with up to 64 rows of `x` (f32 fused multiply-adds in 16 lanes,
//! AVX2 where the CPU has it), so the unpacking is shared by the whole batch and the
//! inner loop runs at the speed of a dense f32 product.
//!
//! Each output element is one dot product computed the same way whatever the batch size
//! and thread count (same lanes, same order, no activation quantization), so a sequence
//! gets the same logits alone or in a batch.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, bail};
use half::f16;
use rayon::prelude::*;

/// Values per Q4_1 / Q8_0 block.
const BLOCK: usize = 32;
/// Bytes per Q4_1 block: f16 scale, f16 minimum, 16 bytes of 4-bit values.
const Q4_1_BYTES: usize = 20;
/// Bytes per Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Rows of `W` one task dequantizes (a few tens of KiB of f32, kept in L1/L2).
const W_ROWS_PER_TASK: usize = 8;
/// Rows of `x` one task multiplies them with: a decode batch fits in one task, and a
/// long prefill chunk is cut so that each task's rows of `x` stay in cache.
const X_ROWS_PER_TASK: usize = 64;
/// Independent accumulators per dot product (16 f32: two 256-bit AVX2 registers).
const LANES: usize = 16;

/// Whether [`quantized_matmul_t`] handles weights of this type.
pub fn supports(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
}

/// `x W^T` for `x` `[m, k]` f32 on the CPU and `w` `[n, k]` in Q4_1 or Q8_0; `[m, n]`
/// f32. `Ok(None)` when this kernel does not apply (other device, dtype or weight
/// type): the caller falls back to Candle's `QMatMul`.
pub fn quantized_matmul_t(x: &Tensor, w: &QTensor) -> Result<Option<Tensor>> {
    let block_bytes = match w.dtype() {
        GgmlDType::Q4_1 => Q4_1_BYTES,
        GgmlDType::Q8_0 => Q8_0_BYTES,
        _ => return Ok(None),
    };
    if !matches!(x.device(), Device::Cpu) || x.dtype() != DType::F32 || x.rank() != 2 {
        return Ok(None);
    }
    let (n, k) = w.shape().dims2()?;
    let (m, x_k) = x.dims2()?;
    if x_k != k || !k.is_multiple_of(BLOCK) {
        bail!("quantized matmul: x is [{m}, {x_k}], the weight [{n}, {k}]");
    }
    let w_bytes: Cow<'_, [u8]> = w.data()?;
    if w_bytes.len() != n * k / BLOCK * block_bytes {
        bail!(
            "quantized matmul: {} weight bytes for [{n}, {k}]",
            w_bytes.len()
        );
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let x_data = match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => match layout.contiguous_offsets() {
            Some((start, end)) => &data[start..end],
            None => bail!("quantized matmul: x is not contiguous"),
        },
        _ => bail!("quantized matmul: x must be f32 on the CPU"),
    };
    let kernel = Kernel::detect(w.dtype());
    let out = matmul_t(x_data, &w_bytes, (m, k, n), block_bytes, kernel);
    Tensor::from_vec(out, (m, n), &Device::Cpu).map(Some)
}

/// The two halves of the kernel for one weight type on this CPU.
#[derive(Clone, Copy)]
struct Kernel {
    /// Dequantizes one row of blocks into `out` (`BLOCK` values per block).
    dequantize: fn(&[u8], &mut [f32]),
    /// `out[j] = x . w_rows[j]` for the rows of `w_rows` (each `x.len()` long).
    dot_rows: fn(&[f32], &[f32], &mut [f32]),
}

impl Kernel {
    /// The AVX2 + FMA kernel where the CPU has them, the portable one otherwise. Both
    /// compute a product the same way for every batch size.
    fn detect(dtype: GgmlDType) -> Self {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            return match dtype {
                GgmlDType::Q4_1 => Self {
                    dequantize: avx2::dequantize_q4_1,
                    dot_rows: avx2::dot_rows,
                },
                _ => Self {
                    dequantize: avx2::dequantize_q8_0,
                    dot_rows: avx2::dot_rows,
                },
            };
        }
        match dtype {
            GgmlDType::Q4_1 => Self {
                dequantize: portable::dequantize_q4_1,
                dot_rows: portable::dot_rows,
            },
            _ => Self {
                dequantize: portable::dequantize_q8_0,
                dot_rows: portable::dot_rows,
            },
        }
    }
}

fn matmul_t(
    x: &[f32],
    w: &[u8],
    (m, k, n): (usize, usize, usize),
    block_bytes: usize,
    kernel: Kernel,
) -> Vec<f32> {
    let row_bytes = k / BLOCK * block_bytes;
    let n_w_tiles = n.div_ceil(W_ROWS_PER_TASK);
    let n_tasks = m.div_ceil(X_ROWS_PER_TASK) * n_w_tiles;
    // Task (x tile, w tile): the dot products of `X_ROWS_PER_TASK` rows of x with
    // `W_ROWS_PER_TASK` rows of W dequantized once, as `[x rows, w rows]`. Tasks go x tile
    // major, so a worker taking a run of them keeps one x tile in cache.
    let tiles: Vec<Vec<f32>> = (0..n_tasks)
        .into_par_iter()
        .map_init(Vec::new, |w_rows: &mut Vec<f32>, task| {
            let (x_first, x_n, w_first, w_n) = task_span(task, n_w_tiles, m, n);
            w_rows.resize(w_n * k, 0.0);
            let bytes = &w[w_first * row_bytes..(w_first + w_n) * row_bytes];
            for (row, out) in bytes
                .chunks_exact(row_bytes)
                .zip(w_rows.chunks_exact_mut(k))
            {
                (kernel.dequantize)(row, out);
            }
            let x_tile = &x[x_first * k..(x_first + x_n) * k];
            let mut tile = vec![0f32; x_n * w_n];
            for (x_row, out) in x_tile.chunks_exact(k).zip(tile.chunks_exact_mut(w_n)) {
                (kernel.dot_rows)(x_row, &w_rows[..w_n * k], out);
            }
            tile
        })
        .collect();

    let mut out = vec![0f32; m * n];
    for (task, tile) in tiles.iter().enumerate() {
        let (x_first, x_n, w_first, w_n) = task_span(task, n_w_tiles, m, n);
        let out_rows = out[x_first * n..(x_first + x_n) * n].chunks_exact_mut(n);
        for (out_row, tile_row) in out_rows.zip(tile.chunks_exact(w_n)) {
            out_row[w_first..w_first + w_n].copy_from_slice(tile_row);
        }
    }
    out
}

/// Task `task`'s first x row, x rows, first W row and W rows.
fn task_span(task: usize, n_w_tiles: usize, m: usize, n: usize) -> (usize, usize, usize, usize) {
    let x_first = task / n_w_tiles * X_ROWS_PER_TASK;
    let w_first = task % n_w_tiles * W_ROWS_PER_TASK;
    let x_n = X_ROWS_PER_TASK.min(m - x_first);
    let w_n = W_ROWS_PER_TASK.min(n - w_first);
    (x_first, x_n, w_first, w_n)
}

/// Sums the 16 lanes of a dot product in order.
#[inline(always)]
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    acc.iter().sum()
}

/// Plain Rust with the same arithmetic as the AVX2 kernel: lane `i` accumulates
/// elements `i, i + 16, ...` with fused multiply-adds; Q4_1 values are
/// `fma(q, d, min)`, Q8_0 values `q * d`.
mod portable {
    use super::{BLOCK, LANES, Q4_1_BYTES, Q8_0_BYTES, f16, sum_lanes};

    pub fn dequantize_q4_1(row: &[u8], out: &mut [f32]) {
        for (block, out) in row
            .chunks_exact(Q4_1_BYTES)
            .zip(out.chunks_exact_mut(BLOCK))
        {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let min = f16::from_le_bytes([block[2], block[3]]).to_f32();
            let (low, high) = out.split_at_mut(BLOCK / 2);
            for ((&q, lo), hi) in block[4..].iter().zip(low).zip(high) {
                *lo = f32::from(q & 0x0f).mul_add(d, min);
                *hi = f32::from(q >> 4).mul_add(d, min);
            }
        }
    }

    pub fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
        for (block, out) in row
            .chunks_exact(Q8_0_BYTES)
            .zip(out.chunks_exact_mut(BLOCK))
        {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            for (&q, o) in block[2..].iter().zip(out) {
                *o = f32::from(q as i8) * d;
            }
        }
    }

    pub fn dot_rows(x: &[f32], w_rows: &[f32], out: &mut [f32]) {
        for (w, o) in w_rows.chunks_exact(x.len()).zip(out) {
            let mut acc = [0f32; LANES];
            for (xc, wc) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
                for i in 0..LANES {
                    acc[i] = xc[i].mul_add(wc[i], acc[i]);
                }
            }
            *o = sum_lanes(&acc);
        }
    }
}

/// The same arithmetic with AVX2 and FMA intrinsics (16 lanes as two 8-float halves).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, LANES, Q4_1_BYTES, Q8_0_BYTES, f16, sum_lanes};

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    pub fn dequantize_q4_1(row: &[u8], out: &mut [f32]) {
        assert!(available() && out.len() / BLOCK == row.len() / Q4_1_BYTES);
        // SAFETY: the CPU has AVX2 and FMA, and `out` holds a block per block of `row`.
        unsafe { dequantize_q4_1_avx2(row, out) }
    }

    pub fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
        assert!(available() && out.len() / BLOCK == row.len() / Q8_0_BYTES);
        // SAFETY: as above.
        unsafe { dequantize_q8_0_avx2(row, out) }
    }

    pub fn dot_rows(x: &[f32], w_rows: &[f32], out: &mut [f32]) {
        let k = x.len();
        assert!(available() && k.is_multiple_of(LANES) && w_rows.len() == out.len() * k);
        let mut quads = w_rows.chunks_exact(4 * k);
        let mut j = 0;
        for quad in &mut quads {
            // SAFETY: the CPU has AVX2 and FMA; each row is `k` long, a multiple of 16.
            let dots = unsafe { dots_avx2::<4>(x, quad) };
            out[j..j + 4].copy_from_slice(&dots);
            j += 4;
        }
        for w in quads.remainder().chunks_exact(k) {
            // SAFETY: as above.
            out[j] = unsafe { dots_avx2::<1>(x, w) }[0];
            j += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dequantize_q4_1_avx2(row: &[u8], out: &mut [f32]) {
        let mask = _mm_set1_epi8(0x0f);
        for (block, out) in row
            .chunks_exact(Q4_1_BYTES)
            .zip(out.chunks_exact_mut(BLOCK))
        {
            let d = _mm256_set1_ps(f16::from_le_bytes([block[0], block[1]]).to_f32());
            let min = _mm256_set1_ps(f16::from_le_bytes([block[2], block[3]]).to_f32());
            // SAFETY (loads and stores): a block is 20 bytes, the values are its last 16;
            // `out` is one block of 32 floats.
            unsafe {
                let qs = _mm_loadu_si128(block.as_ptr().add(4).cast());
                let low = _mm_and_si128(qs, mask);
                let high = _mm_and_si128(_mm_srli_epi16::<4>(qs), mask);
                let parts = [
                    low,
                    _mm_srli_si128::<8>(low),
                    high,
                    _mm_srli_si128::<8>(high),
                ];
                for (part, &bytes) in parts.iter().enumerate() {
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * part), _mm256_fmadd_ps(q, d, min));
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dequantize_q8_0_avx2(row: &[u8], out: &mut [f32]) {
        for (block, out) in row
            .chunks_exact(Q8_0_BYTES)
            .zip(out.chunks_exact_mut(BLOCK))
        {
            let d = _mm256_set1_ps(f16::from_le_bytes([block[0], block[1]]).to_f32());
            // SAFETY (loads and stores): a block is 34 bytes, the values its last 32;
            // `out` is one block of 32 floats.
            unsafe {
                let first = _mm_loadu_si128(block.as_ptr().add(2).cast());
                let second = _mm_loadu_si128(block.as_ptr().add(18).cast());
                let parts = [
                    first,
                    _mm_srli_si128::<8>(first),
                    second,
                    _mm_srli_si128::<8>(second),
                ];
                for (part, &bytes) in parts.iter().enumerate() {
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * part), _mm256_mul_ps(q, d));
                }
            }
        }
    }

    /// Dot products of `x` with the `R` rows of `w` (each `x.len()` long, a multiple
    /// of 16), each chunk of `x` loaded once for all of them.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2<const R: usize>(x: &[f32], w: &[f32]) -> [f32; R] {
        let k = x.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut i = 0;
        while i < k {
            // SAFETY: `i + 16 <= k`, and row `r` of `w` spans `r * k..(r + 1) * k`.
            unsafe {
                let x0 = _mm256_loadu_ps(x.as_ptr().add(i));
                let x1 = _mm256_loadu_ps(x.as_ptr().add(i + 8));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let w_r = w.as_ptr().add(r * k + i);
                    acc_r[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w_r), acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w_r.add(8)), acc_r[1]);
                }
            }
            i += LANES;
        }
        acc.map(|[low, high]| {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds 16 floats.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), low);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), high);
            }
            sum_lanes(&lanes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights `[n, k]` quantized by Candle, and their dequantization by Candle.
    fn quantized(dtype: GgmlDType, n: usize, k: usize) -> (QTensor, Vec<f32>) {
        let values: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let w = Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dequantized = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        (q, dequantized.to_vec1().unwrap())
    }

    fn x(m: usize, k: usize) -> Tensor {
        let values: Vec<f32> = (0..m * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
            .collect();
        Tensor::from_vec(values, (m, k), &Device::Cpu).unwrap()
    }

    #[test]
    fn products_match_candles_dequantized_weights_for_q4_1_and_q8_0() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            // Three tiles of x rows, three tiles of W rows (the last ones partial).
            let (m, k, n) = (130, 96, 21);
            let (q, w) = quantized(dtype, n, k);
            let x = x(m, k);
            let got = quantized_matmul_t(&x, &q).unwrap().unwrap();
            assert_eq!(got.dims(), &[m, n]);
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for r in 0..m {
                for j in 0..n {
                    let expected: f32 = (0..k).map(|i| xs[r * k + i] * w[j * k + i]).sum();
                    let value = got[r * n + j];
                    assert!(
                        (value - expected).abs() < 1e-3,
                        "{dtype:?} [{r}, {j}]: {value} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_row_of_the_output_is_the_same_alone_or_in_a_batch() {
        let (m, k, n) = (9, 64, 13);
        let (q, _) = quantized(GgmlDType::Q4_1, n, k);
        let x = x(m, k);
        let batch: Vec<f32> = quantized_matmul_t(&x, &q)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for r in 0..m {
            let row = x.narrow(0, r, 1).unwrap();
            let alone: Vec<f32> = quantized_matmul_t(&row, &q)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(alone, batch[r * n..(r + 1) * n], "row {r}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_kernel_gives_bit_identical_results_to_the_portable_one() {
        if !avx2::available() {
            println!("skipping: this CPU has no AVX2 and FMA");
            return;
        }
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (m, k, n) = (3, 128, 11);
            let (q, _) = quantized(dtype, n, k);
            let bytes = q.data().unwrap();
            let xs: Vec<f32> = x(m, k).flatten_all().unwrap().to_vec1().unwrap();
            let block_bytes = bytes.len() / (n * k / BLOCK);
            let portable = match dtype {
                GgmlDType::Q4_1 => Kernel {
                    dequantize: portable::dequantize_q4_1,
                    dot_rows: portable::dot_rows,
                },
                _ => Kernel {
                    dequantize: portable::dequantize_q8_0,
                    dot_rows: portable::dot_rows,
                },
            };
            let slow = matmul_t(&xs, &bytes, (m, k, n), block_bytes, portable);
            let fast = matmul_t(&xs, &bytes, (m, k, n), block_bytes, Kernel::detect(dtype));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&slow), "{dtype:?}");
        }
    }

    #[test]
    fn other_weight_types_are_left_to_candle() {
        let (q, _) = quantized(GgmlDType::Q4_0, 4, 32);
        assert!(quantized_matmul_t(&x(1, 32), &q).unwrap().is_none());
        assert!(!supports(GgmlDType::Q4K));
    }
}
