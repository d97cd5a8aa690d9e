//! Arbor's attention kernels over a paged KV cache.
//!
//! The KV pool of one layer is a pair of tensors shaped
//! `[n_pages, page_size, n_kv_heads, head_dim]`; a token's *slot* is
//! `page_id * page_size + offset_in_page`. Each forward pass the model builds one
//! [`PagedAttentionMeta`] from its sequences' page tables, then per layer calls
//! [`write_kv`] for the new K and V rows and [`paged_attention`] for the output.
//!
//! Both ops are Candle custom ops ([`KvWrite`] is an `InplaceOp3`, [`PagedAttention`] a
//! `CustomOp3`) with a multi-threaded CPU body (rayon) for f32, bf16 and f16 storage,
//! accumulating in f32.
//!
//! With the `cuda` feature, both ops also have CUDA bodies (`cuda/*.cu`, compiled to PTX
//! by `build.rs`, launched from `cuda.rs`) with the same contract, except that the CUDA
//! bodies skip out-of-range slots and page ids instead of refusing them (the index arrays
//! stay on the device).
//!
//! [`quantized_matmul_t`] is a CPU matrix product for GGUF Q4_1 and Q8_0 weights whose
//! cost per token falls with the batch size (Candle's own does not for these formats).

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod kv_write;
pub mod paged_attention;
pub mod quantized_matmul;

pub use cpu::is_float_storage;
pub use kv_write::{KvWrite, write_kv};
pub use paged_attention::{PagedAttention, PagedAttentionMeta, SequenceSpan, paged_attention};
pub use quantized_matmul::quantized_matmul_t;
