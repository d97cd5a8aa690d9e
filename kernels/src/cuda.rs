//! CUDA bodies of [`KvWrite`](crate::KvWrite) and [`PagedAttention`](crate::PagedAttention).
//!
//! The kernels live in `kernels/cuda/*.cu`; `build.rs` compiles them to PTX with nvcc
//! (for `CUDA_COMPUTE_CAP`) when the `cuda` feature is on, and the PTX is embedded here.
//! Candle loads a module once per device ([`CudaDevice::get_or_load_custom_func`]) and
//! every launch goes on the device's stream, so the ops order with Candle's own kernels.
//!
//! Entry points are named by their element types: `arbor_kv_write_<cache>_<rows>` and
//! `arbor_paged_attention_<q>_<cache>_d<dims per lane>` (f32/bf16/f16; see the `.cu`
//! files for the thread layout). The checks that need only shapes and dtypes happen in
//! the public wrappers and again here; the index arrays stay on the device, so unlike the
//! CPU bodies these cannot refuse an out-of-range slot or page id: the kernels skip it
//! instead (see the `.cu` files).

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape, Storage, bail};
use half::{bf16, f16};

use crate::paged_attention::PagedAttentionMeta;

/// PTX of `kernels/cuda/kv_write.cu`.
const KV_WRITE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kv_write.ptx"));
/// PTX of `kernels/cuda/paged_attention.cu`.
const PAGED_ATTENTION_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));

/// Threads per block of the KV-write kernel.
const KV_WRITE_THREADS: u32 = 256;
/// Most blocks the grid-stride KV-write kernel is launched with.
const KV_WRITE_MAX_BLOCKS: u32 = 1 << 16;
/// Query heads per KV head the attention kernel holds in registers (`MAX_GROUP` in
/// `paged_attention.cu`).
const MAX_GROUP: usize = 8;
/// Largest head dimension the attention kernel supports (32 lanes x 8 dims).
const MAX_HEAD_DIM: usize = 256;

/// An element type the kernels are instantiated for, and its name in entry points.
trait KernelElem: DeviceRepr {
    const NAME: &'static str;
}
impl KernelElem for f32 {
    const NAME: &'static str = "f32";
}
impl KernelElem for bf16 {
    const NAME: &'static str = "bf16";
}
impl KernelElem for f16 {
    const NAME: &'static str = "f16";
}

/// The contiguous elements of `slice` under `layout`, or an error naming `what`.
fn view<'a, T>(slice: &'a CudaSlice<T>, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(slice.slice(start..end)),
        None => bail!(
            "{what} must be contiguous, got strides {:?}",
            layout.stride()
        ),
    }
}

/// The contiguous u32 elements of a CUDA storage (slots, page tables, offsets).
fn u32_view<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, u32>> {
    match &storage.slice {
        CudaStorageSlice::U32(slice) => view(slice, layout, what),
        _ => bail!("{what} must be u32, got {:?}", storage.dtype()),
    }
}

/// Converts a size to the u32 a kernel argument holds.
fn arg_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{what} = {n} does not fit in u32")))
}

/// CUDA body of [`KvWrite`](crate::KvWrite): same tensors and contract as its `cpu_fwd`,
/// except that an out-of-range slot is skipped rather than refused.
pub(crate) fn kv_write(
    cache: &mut CudaStorage,
    cache_layout: &Layout,
    new: &CudaStorage,
    new_layout: &Layout,
    slots: &CudaStorage,
    slots_layout: &Layout,
) -> Result<()> {
    let (n_pages, page_size, n_kv_heads, head_dim) = cache_layout.shape().dims4()?;
    let row_len = n_kv_heads * head_dim;
    let n_tokens = slots_layout.shape().elem_count();
    if new_layout.shape().elem_count() != n_tokens * row_len {
        bail!(
            "kv-write rows {:?} do not match {n_tokens} slots of {row_len} elements",
            new_layout.dims()
        );
    }
    if n_tokens == 0 {
        return Ok(());
    }
    let device = cache.device.clone();
    let cache_dtype = cache.dtype();
    let slots = u32_view(slots, slots_layout, "kv-write slots")?;
    let args = KvWriteArgs {
        n_tokens: arg_u32(n_tokens, "kv-write tokens")?,
        row_len: arg_u32(row_len, "kv-write row length")?,
        n_slots: (n_pages * page_size) as u64,
    };

    macro_rules! run {
        ($cache:expr, $new:expr) => {{
            let mut cache = match cache_layout.contiguous_offsets() {
                Some((start, end)) => $cache.slice_mut(start..end),
                None => bail!(
                    "kv cache must be contiguous, got strides {:?}",
                    cache_layout.stride()
                ),
            };
            let new = view($new, new_layout, "new k/v")?;
            launch_kv_write(&device, &mut cache, &new, &slots, &args)
        }};
    }
    use CudaStorageSlice::{BF16, F16, F32};
    match (&mut cache.slice, &new.slice) {
        (F32(c), F32(n)) => run!(c, n),
        (F32(c), BF16(n)) => run!(c, n),
        (F32(c), F16(n)) => run!(c, n),
        (BF16(c), F32(n)) => run!(c, n),
        (BF16(c), BF16(n)) => run!(c, n),
        (BF16(c), F16(n)) => run!(c, n),
        (F16(c), F32(n)) => run!(c, n),
        (F16(c), BF16(n)) => run!(c, n),
        (F16(c), F16(n)) => run!(c, n),
        _ => bail!(
            "kv-write supports f32/bf16/f16, got cache {:?} and new rows {:?}",
            cache_dtype,
            new.dtype()
        ),
    }
}

/// Scalar arguments of the KV-write kernel.
struct KvWriteArgs {
    n_tokens: u32,
    row_len: u32,
    n_slots: u64,
}

fn launch_kv_write<C: KernelElem, S: KernelElem>(
    device: &CudaDevice,
    cache: &mut candle_core::cuda::cudarc::driver::CudaViewMut<'_, C>,
    new: &CudaView<'_, S>,
    slots: &CudaView<'_, u32>,
    args: &KvWriteArgs,
) -> Result<()> {
    let name = format!("arbor_kv_write_{}_{}", C::NAME, S::NAME);
    let func = device.get_or_load_custom_func(&name, "arbor_kv_write", KV_WRITE_PTX)?;
    let n_elems = args.n_tokens as u64 * args.row_len as u64;
    let blocks = n_elems
        .div_ceil(KV_WRITE_THREADS as u64)
        .min(KV_WRITE_MAX_BLOCKS as u64) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (KV_WRITE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(cache);
    builder.arg(new);
    builder.arg(slots);
    builder.arg(&args.n_tokens);
    builder.arg(&args.row_len);
    builder.arg(&args.n_slots);
    // SAFETY: the argument list matches `arbor_kv_write_*` in kv_write.cu; `cache` holds
    // n_slots rows of row_len, `new` n_tokens rows of row_len and `slots` n_tokens u32
    // (checked above); the kernel skips slots >= n_slots.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

/// Sizes and scalars of one paged-attention launch.
struct AttentionArgs {
    n_tokens: u32,
    n_seqs: u32,
    max_pages: u32,
    n_pages: u32,
    page_size: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    group: u32,
    scale: f32,
}

/// CUDA body of [`PagedAttention`](crate::PagedAttention): same tensors, contract and
/// result as its `cpu_fwd`, with the metadata read where it lives on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn paged_attention(
    meta: &PagedAttentionMeta,
    scale: f32,
    q: &CudaStorage,
    q_layout: &Layout,
    k: &CudaStorage,
    k_layout: &Layout,
    v: &CudaStorage,
    v_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n_tokens, n_heads, head_dim) = q_layout.shape().dims3()?;
    let (n_pages, page_size, n_kv_heads, _) = k_layout.shape().dims4()?;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        bail!("paged attention: {n_heads} query heads cannot share {n_kv_heads} KV heads");
    }
    let group = n_heads / n_kv_heads;
    // Limitation: the CUDA kernel keeps one accumulator per (query head of the group,
    // dims-per-lane) in registers, which caps the group at 8 query heads per KV head and
    // head_dim at 256: enough for every Qwen2 and Llama-3 distill, refused otherwise.
    if group > MAX_GROUP || head_dim > MAX_HEAD_DIM {
        bail!(
            "paged attention on CUDA supports at most {MAX_GROUP} query heads per KV head and \
             head_dim {MAX_HEAD_DIM}, got {group} and {head_dim}"
        );
    }
    let device = q.device.clone();
    let shape = q_layout.shape().clone();

    let (tables_guard, tables_layout) = meta.page_tables().storage_and_layout();
    let (lens_guard, lens_layout) = meta.context_lens().storage_and_layout();
    let (starts_guard, starts_layout) = meta.query_starts().storage_and_layout();
    let tables = u32_view(
        on_device(&tables_guard, &device)?,
        tables_layout,
        "page tables",
    )?;
    let lens = u32_view(
        on_device(&lens_guard, &device)?,
        lens_layout,
        "context lengths",
    )?;
    let starts = u32_view(
        on_device(&starts_guard, &device)?,
        starts_layout,
        "query starts",
    )?;
    let n_seqs = lens_layout.shape().elem_count();
    if starts_layout.shape().elem_count() != n_seqs + 1 || tables_layout.dims()[0] != n_seqs {
        bail!("paged attention metadata arrays disagree on the number of sequences");
    }
    let args = AttentionArgs {
        n_tokens: arg_u32(n_tokens, "query rows")?,
        n_seqs: arg_u32(n_seqs, "sequences")?,
        max_pages: arg_u32(tables_layout.dims()[1], "pages per sequence")?,
        n_pages: arg_u32(n_pages, "pages")?,
        page_size: arg_u32(page_size, "page size")?,
        n_heads: arg_u32(n_heads, "query heads")?,
        n_kv_heads: arg_u32(n_kv_heads, "KV heads")?,
        head_dim: arg_u32(head_dim, "head dim")?,
        group: group as u32,
        scale,
    };
    let index = AttentionIndex {
        tables: &tables,
        lens: &lens,
        starts: &starts,
    };

    macro_rules! run {
        ($variant:ident, $q:expr, $k:expr, $v:expr) => {{
            let q = view($q, q_layout, "q")?;
            let k = view($k, k_layout, "k cache")?;
            let v = view($v, v_layout, "v cache")?;
            let out = launch_attention(&device, &q, &k, &v, &index, &args)?;
            CudaStorageSlice::$variant(out)
        }};
    }
    use CudaStorageSlice::{BF16, F16, F32};
    let slice = match (&q.slice, &k.slice, &v.slice) {
        (F32(q), F32(k), F32(v)) => run!(F32, q, k, v),
        (F32(q), BF16(k), BF16(v)) => run!(F32, q, k, v),
        (F32(q), F16(k), F16(v)) => run!(F32, q, k, v),
        (BF16(q), F32(k), F32(v)) => run!(BF16, q, k, v),
        (BF16(q), BF16(k), BF16(v)) => run!(BF16, q, k, v),
        (BF16(q), F16(k), F16(v)) => run!(BF16, q, k, v),
        (F16(q), F32(k), F32(v)) => run!(F16, q, k, v),
        (F16(q), BF16(k), BF16(v)) => run!(F16, q, k, v),
        (F16(q), F16(k), F16(v)) => run!(F16, q, k, v),
        _ => bail!(
            "paged attention supports f32/bf16/f16 with one K/V dtype, got {:?} {:?} {:?}",
            q.dtype(),
            k.dtype(),
            v.dtype()
        ),
    };
    Ok((CudaStorage { slice, device }, shape))
}

/// Device views of the metadata arrays.
struct AttentionIndex<'a, 'b> {
    tables: &'a CudaView<'b, u32>,
    lens: &'a CudaView<'b, u32>,
    starts: &'a CudaView<'b, u32>,
}

/// The CUDA storage behind a metadata tensor, if it lives on `device`.
fn on_device<'a>(storage: &'a Storage, device: &CudaDevice) -> Result<&'a CudaStorage> {
    match storage {
        Storage::Cuda(s) if s.device.id() == device.id() => Ok(s),
        _ => bail!("paged attention metadata must live on the same device as q"),
    }
}

/// Warps per block: more when there are few (token, KV head) blocks, so that a small
/// decode batch still keeps many loads in flight per block.
fn warps_per_block(n_blocks: u64) -> u32 {
    match n_blocks {
        0..256 => 16,
        256..1024 => 8,
        _ => 4,
    }
}

/// Dims per lane of the kernel variant for `head_dim` (<= 256): 1, 2, 4 or 8.
fn dims_per_lane(head_dim: u32) -> u32 {
    head_dim.div_ceil(32).next_power_of_two().max(1)
}

fn launch_attention<Q: KernelElem, C: KernelElem>(
    device: &CudaDevice,
    q: &CudaView<'_, Q>,
    k: &CudaView<'_, C>,
    v: &CudaView<'_, C>,
    index: &AttentionIndex<'_, '_>,
    args: &AttentionArgs,
) -> Result<CudaSlice<Q>> {
    let n_out = args.n_tokens as usize * args.n_heads as usize * args.head_dim as usize;
    // SAFETY: every element is written by the kernel below: block (token, kv head) writes
    // all `group * head_dim` outputs of its query heads.
    let mut out = unsafe { device.alloc::<Q>(n_out) }?;
    if n_out == 0 {
        return Ok(out);
    }
    let name = format!(
        "arbor_paged_attention_{}_{}_d{}",
        Q::NAME,
        C::NAME,
        dims_per_lane(args.head_dim)
    );
    let func =
        device.get_or_load_custom_func(&name, "arbor_paged_attention", PAGED_ATTENTION_PTX)?;
    let n_warps = warps_per_block(args.n_tokens as u64 * args.n_kv_heads as u64);
    let group_dims = args.group * args.head_dim;
    let cfg = LaunchConfig {
        grid_dim: (args.n_tokens, args.n_kv_heads, 1),
        block_dim: (32 * n_warps, 1, 1),
        shared_mem_bytes: 4 * (2 * group_dims + n_warps * args.group + args.group),
    };
    let mut builder = func.builder();
    builder.arg(&mut out);
    builder.arg(q);
    builder.arg(k);
    builder.arg(v);
    builder.arg(index.tables);
    builder.arg(index.lens);
    builder.arg(index.starts);
    builder.arg(&args.n_seqs);
    builder.arg(&args.max_pages);
    builder.arg(&args.n_pages);
    builder.arg(&args.page_size);
    builder.arg(&args.n_heads);
    builder.arg(&args.n_kv_heads);
    builder.arg(&args.head_dim);
    builder.arg(&args.scale);
    // SAFETY: the argument list matches `arbor_paged_attention_*` in paged_attention.cu;
    // shapes were checked by `paged_attention` and above; the kernel reads page ids
    // through `max_pages`-wide rows and skips ids >= n_pages.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}
