//! Downloads a model repo (or one GGUF of it) from the Hugging Face hub into the
//! standard Hugging Face cache with `hf-hub`, or finds it there when offline.
//!
//! Files already cached are used without asking the hub. A whole-model repo needs
//! `config.json`, `tokenizer.json` and its safetensors weights (one file, or the shards
//! an index names); the tokenizer config, generation config and chat template are
//! fetched when the repo has them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo};

use super::{ModelSource, SourceError};

/// Files a whole-model repo must have, besides its weights.
const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json"];
/// Files fetched when present.
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];
/// Index of sharded safetensors weights.
const WEIGHT_INDEX: &str = "model.safetensors.index.json";
/// Unsharded safetensors weights.
const SINGLE_WEIGHTS: &str = "model.safetensors";
/// The public hub, which `hf-hub` uses when no endpoint is set.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How to reach the hub and where its cache lives.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache (`.../huggingface/hub`), holding `models--owner--name` folders.
    pub cache_dir: PathBuf,
    /// Hub address; `None` for the public hub.
    pub endpoint: Option<String>,
    /// Access token for gated or private repos.
    pub token: Option<String>,
    /// Use only what the cache holds, never the network.
    pub offline: bool,
    /// Show a progress bar on stderr while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Settings from `HF_HUB_CACHE`, `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN` and
    /// `HF_HUB_OFFLINE` (any of `1`, `true`, `yes`, `on`), as the Python tools read them.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
                let cache = var("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home_dir().join(".cache"));
                cache.join("huggingface")
            });
            hf_home.join("hub")
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let token = var("HF_TOKEN").or_else(|| Cache::new(cache_dir.clone()).token());
        Self {
            cache_dir,
            endpoint: var("HF_ENDPOINT"),
            token,
            offline,
            progress: true,
        }
    }
}

/// The user's home directory (`$HOME`), or the current directory without one.
pub(super) fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// Resolves `repo_id` (with `file`, just that GGUF) to local files.
pub(super) fn resolve(
    repo_id: &str,
    file: Option<&str>,
    options: &HubOptions,
) -> Result<ModelSource, SourceError> {
    let fetcher = Fetcher::new(repo_id, options)?;
    if let Some(file) = file {
        return Ok(ModelSource::Gguf(fetcher.required(file)?));
    }

    let mut paths = Vec::new();
    for file in REQUIRED_FILES {
        paths.push(fetcher.required(file)?);
    }
    for file in OPTIONAL_FILES {
        paths.extend(fetcher.optional(file)?);
    }
    paths.extend(fetch_weights(&fetcher)?);

    let dir = paths[0]
        .parent()
        .expect("a cached file lies in a snapshot directory")
        .to_path_buf();
    // Limitation: if the repo changed between downloads, files land in two snapshot
    // folders; we report it rather than merge them.
    if let Some(stray) = paths.iter().find(|p| p.parent() != Some(dir.as_path())) {
        return Err(SourceError::BadDownload {
            repo: repo_id.into(),
            file: stray.display().to_string(),
            message: format!(
                "it is not in the same revision folder as config.json ({})",
                dir.display()
            ),
        });
    }
    Ok(ModelSource::HfDir(dir))
}

/// The weights: every shard the index names, or the single safetensors file.
fn fetch_weights(fetcher: &Fetcher) -> Result<Vec<PathBuf>, SourceError> {
    let Some(index) = fetcher.optional(WEIGHT_INDEX)? else {
        return Ok(vec![fetcher.required(SINGLE_WEIGHTS)?]);
    };
    let shards = shard_names(&index).map_err(|message| SourceError::BadDownload {
        repo: fetcher.repo_id.clone(),
        file: WEIGHT_INDEX.into(),
        message,
    })?;
    let mut paths = vec![index];
    for shard in &shards {
        paths.push(fetcher.required(shard)?);
    }
    Ok(paths)
}

/// The shard file names of a safetensors index's `weight_map`, each once.
fn shard_names(index: &Path) -> Result<BTreeSet<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("it has no weight_map")?;
    map.values()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("weight_map value {v} is not a file name"))
        })
        .collect()
}

/// Gets files of one repo, from the cache or (when online) the hub.
struct Fetcher {
    repo_id: String,
    /// The hub address requests go to, for messages.
    endpoint: String,
    cache: Cache,
    api: Option<ApiRepo>,
}

impl Fetcher {
    fn new(repo_id: &str, options: &HubOptions) -> Result<Self, SourceError> {
        let cache = Cache::new(options.cache_dir.clone());
        let api = if options.offline {
            None
        } else {
            let mut builder = ApiBuilder::from_cache(cache.clone())
                .with_progress(options.progress)
                .with_token(options.token.clone())
                .with_user_agent("arbor", env!("CARGO_PKG_VERSION"));
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_owned());
            }
            let api = builder.build().map_err(|e| SourceError::Download {
                repo: repo_id.into(),
                file: "(none yet)".into(),
                message: format!("could not set up the hub client: {e}"),
            })?;
            Some(api.repo(Repo::model(repo_id.to_owned())))
        };
        let endpoint = options
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            repo_id: repo_id.to_owned(),
            endpoint,
            cache,
            api,
        })
    }

    /// A file the model cannot do without.
    fn required(&self, file: &str) -> Result<PathBuf, SourceError> {
        match self.get(file)? {
            Some(path) => Ok(path),
            None if self.api.is_none() => Err(SourceError::NotCached {
                repo: self.repo_id.clone(),
                file: file.into(),
                cache_dir: self.cache.path().clone(),
            }),
            None => Err(SourceError::Download {
                repo: self.repo_id.clone(),
                file: file.into(),
                message: "the repo has no such file".into(),
            }),
        }
    }

    /// A file the repo may lack; `None` when it does (or, offline, when not cached).
    fn optional(&self, file: &str) -> Result<Option<PathBuf>, SourceError> {
        self.get(file)
    }

    /// The cached file, else the downloaded one; `None` when the hub has no such file.
    fn get(&self, file: &str) -> Result<Option<PathBuf>, SourceError> {
        if let Some(path) = self.cache.model(self.repo_id.clone()).get(file) {
            return Ok(Some(path));
        }
        let Some(api) = &self.api else {
            return Ok(None);
        };
        tracing::info!(repo = %self.repo_id, file, "downloading from the Hugging Face hub");
        match api.get(file) {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
            Err(ApiError::RequestError(e)) if matches!(*e, ureq::Error::Transport(_)) => {
                Err(SourceError::Download {
                    repo: self.repo_id.clone(),
                    file: file.into(),
                    message: format!(
                        "the hub at {} is unreachable ({e}); check the network or HF_ENDPOINT, \
                         set HF_HUB_OFFLINE=1 to use only cached files, or pass a local model \
                         directory or GGUF file",
                        self.endpoint
                    ),
                })
            }
            Err(e) => Err(SourceError::Download {
                repo: self.repo_id.clone(),
                file: file.into(),
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_read_once_each() {
        let dir = std::env::temp_dir().join(format!("arbor-hub-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = dir.join(WEIGHT_INDEX);
        std::fs::write(
            &index,
            r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let names = shard_names(&index).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = names.into_iter().collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
    }
}
