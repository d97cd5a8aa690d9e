//! Small CPU building blocks shared by the kernels: the element types a KV cache or an
//! activation may be stored in, contiguous views of Candle storage, and the f32 vector
//! loops (dot product, scaled add) the attention inner loops are made of.

use candle_core::{CpuStorage, DType, Layout, Result, bail};
use half::{bf16, f16};

/// A floating-point storage element the kernels read and write; all arithmetic happens
/// in f32.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Widens one element to f32 (exact for every supported type).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round-to-nearest-even for the 16-bit types).
    fn from_f32(value: f32) -> Self;
    /// Wraps a vector of this type as Candle CPU storage.
    fn into_storage(data: Vec<Self>) -> CpuStorage;
    /// Widens a row into `dst`; both have the same length.
    #[inline]
    fn load_row(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    /// The row itself when it is already f32 (no copy needed).
    #[inline]
    fn as_f32(_src: &[Self]) -> Option<&[f32]> {
        None
    }
    /// The row as f32: itself if it is f32, else widened into `buf`.
    #[inline]
    fn row_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        match Self::as_f32(src) {
            Some(row) => row,
            None => {
                Self::load_row(src, buf);
                buf
            }
        }
    }
}

impl Elem for f32 {
    fn into_storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(data)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn from_f32(value: f32) -> Self {
        value
    }
    #[inline]
    fn load_row(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }
}

impl Elem for bf16 {
    fn into_storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::BF16(data)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline]
    fn from_f32(value: f32) -> Self {
        bf16::from_f32(value)
    }
}

impl Elem for f16 {
    fn into_storage(data: Vec<Self>) -> CpuStorage {
        CpuStorage::F16(data)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline]
    fn from_f32(value: f32) -> Self {
        f16::from_f32(value)
    }
}

/// Whether the kernels can store tensors of this dtype (f32, bf16, f16).
pub fn is_float_storage(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// The elements of a contiguous tensor, or an error naming `what` if it is strided.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what} must be contiguous, got strides {:?}",
            layout.stride()
        ),
    }
}

/// Mutable variant of [`contiguous`].
pub(crate) fn contiguous_mut<'a, T>(
    data: &'a mut [T],
    layout: &Layout,
    what: &str,
) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!(
            "{what} must be contiguous, got strides {:?}",
            layout.stride()
        ),
    }
}

/// The u32 elements of a contiguous CPU tensor (page tables, slots, offsets).
pub(crate) fn u32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [u32]> {
    match storage {
        CpuStorage::U32(data) => contiguous(data, layout, what),
        other => bail!("{what} must be u32, got {:?}", other_dtype(other)),
    }
}

/// The dtype of a CPU storage, for error messages.
pub(crate) fn other_dtype(storage: &CpuStorage) -> DType {
    use candle_core::backend::BackendStorage;
    storage.dtype()
}

/// Width of the independent accumulators in [`dot`]; wide enough for the compiler to
/// keep a full 512-bit register busy without reassociating floating-point sums.
const LANES: usize = 16;

/// Dot product of two equally long f32 rows.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES * LANES;
    for (ca, cb) in a[..chunks]
        .chunks_exact(LANES)
        .zip(b[..chunks].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `y += w * x` over equally long f32 rows.
#[inline]
pub(crate) fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += w * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum_for_lengths_around_the_lane_width() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
            let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - expected).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn half_types_round_trip_through_f32() {
        assert_eq!(<bf16 as Elem>::from_f32(1.5).to_f32(), 1.5);
        assert_eq!(<f16 as Elem>::from_f32(-2.25).to_f32(), -2.25);
        let mut row = [0f32; 2];
        bf16::load_row(&[bf16::from_f32(3.0), bf16::from_f32(-1.0)], &mut row);
        assert_eq!(row, [3.0, -1.0]);
    }
}
