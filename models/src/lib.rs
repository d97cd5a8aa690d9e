//! Qwen2 and Llama on Candle over a paged KV cache, with the weight, tokenizer and
//! chat-template loading that turns a model directory, a Hugging Face repo id or a GGUF
//! file into something the engine can run.

pub mod batch;
pub mod chat_template;
pub mod generation;
pub mod source;
pub mod tokenizer;

pub use batch::{ForwardBatch, LogitsWanted, SequenceInput};
