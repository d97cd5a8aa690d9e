//! Hugging Face checkpoints: `config.json` plus either `model.safetensors` or shards
//! listed in `model.safetensors.index.json`. Files are memory-mapped; each tensor is
//! converted to the requested dtype as the decoder asks for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use safetensors::Dtype;
use serde_json::Value;

use super::{WeightSource, plain_error, tensor_error};
use crate::error::LoadError;
use crate::linear::{Embedding, Linear};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Memory-mapped safetensors files and which file holds each tensor.
pub(crate) struct SafetensorsWeights {
    /// What errors name when a tensor is missing: the single file or the index.
    origin: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name to index in `files`.
    routing: HashMap<String, usize>,
    dtype: DType,
    device: Device,
}

impl SafetensorsWeights {
    /// Maps the checkpoint files of `dir`, delivering tensors in `dtype` on `device`.
    pub fn open_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let (origin, paths) = if index.is_file() {
            let shards = shard_files(&index)?;
            (index, shards.iter().map(|f| dir.join(f)).collect())
        } else if single.is_file() {
            (single.clone(), vec![single])
        } else {
            return Err(LoadError::Format {
                path: dir.to_owned(),
                message: format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            });
        };

        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for path in paths {
            if !path.is_file() {
                return Err(LoadError::Format {
                    path: path.clone(),
                    message: format!("this shard, listed in {INDEX_FILE}, does not exist"),
                });
            }
            // SAFETY: the mapping is read-only; like every mmap-based loader we rely on the
            // checkpoint not being truncated while the model is loaded.
            let mapped =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| LoadError::Format {
                    path: path.clone(),
                    message: format!("not a readable safetensors file: {}", plain_error(e)),
                })?;
            for (name, _) in mapped.tensors() {
                routing.insert(name, files.len());
            }
            files.push((path, mapped));
        }
        Ok(Self {
            origin,
            files,
            routing,
            dtype,
            device: device.clone(),
        })
    }

    /// Loads `name` after checking its dtype and shape; `Ok(None)` if absent.
    fn load(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>, LoadError> {
        let Some(&file_idx) = self.routing.get(name) else {
            return Ok(None);
        };
        let (path, file) = &self.files[file_idx];
        let view = file.get(name).map_err(tensor_error(path, name))?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16) {
            return Err(LoadError::UnsupportedTensorDtype {
                path: path.clone(),
                name: name.to_owned(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(LoadError::ShapeMismatch {
                path: path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let tensor = file
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(tensor_error(path, name))?;
        Ok(Some(tensor))
    }
}

impl WeightSource for SafetensorsWeights {
    fn path(&self) -> &Path {
        &self.origin
    }

    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        self.load(name, shape)?
            .ok_or_else(|| LoadError::MissingTensor {
                path: self.origin.clone(),
                name: name.to_owned(),
            })
    }

    fn linear(
        &mut self,
        prefix: &str,
        n_out: usize,
        n_in: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        let weight = self.tensor(&format!("{prefix}.weight"), &[n_out, n_in])?;
        let bias = match bias {
            true => Some(self.tensor(&format!("{prefix}.bias"), &[n_out])?),
            false => None,
        };
        Ok(Linear::dense(weight, bias))
    }

    fn embedding(
        &mut self,
        prefix: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Embedding, LoadError> {
        let table = self.tensor(&format!("{prefix}.weight"), &[vocab, hidden])?;
        Ok(Embedding::Dense(table))
    }
}

/// The distinct shard file names of an index, in first-seen order.
fn shard_files(index: &Path) -> Result<Vec<String>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_owned(),
        source,
    })?;
    let format_error = |message: String| LoadError::Format {
        path: index.to_owned(),
        message,
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format_error(format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format_error("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| format_error(format!("weight_map entry `{name}` is not a string")))?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_owned());
        }
    }
    Ok(files)
}
