//! Everything about a model except its weights: tokenizer, chat template and
//! generation config, loaded together from one [`ModelSource`].

use std::path::Path;

use anyhow::Context;

use super::ModelSource;
use crate::chat_template::ChatTemplate;
use crate::generation::GenerationConfig;
use crate::tokenizer::{Tokenizer, read_gguf_header};

/// The text side of a model. Cloning shares the tokenizer and template.
#[derive(Debug, Clone)]
pub struct ModelAssets {
    /// Text to ids and back.
    pub tokenizer: Tokenizer,
    /// The model's chat template; `None` when it ships none (chat requests then need a
    /// template given by the user).
    pub chat_template: Option<ChatTemplate>,
    /// Stop ids and recommended sampling values.
    pub generation: GenerationConfig,
}

impl ModelAssets {
    /// Loads the assets of a source. A Hugging Face directory must hold
    /// `tokenizer.json`; its template comes from `chat_template.jinja` or
    /// `tokenizer_config.json`, its generation config from `generation_config.json`
    /// (or `config.json`). A GGUF file's header supplies all three.
    pub fn load(source: &ModelSource) -> anyhow::Result<Self> {
        match source {
            ModelSource::HfDir(dir) => Self::load_hf_dir(dir),
            ModelSource::Gguf(path) => Self::load_gguf(path),
        }
    }

    /// Replaces the model's chat template with a user-supplied file (Jinja, or JSON
    /// with a `chat_template` field).
    pub fn set_chat_template_file(&mut self, path: &Path) -> anyhow::Result<()> {
        let special = self.tokenizer.special_tokens().clone();
        let template = ChatTemplate::from_file(path, special)
            .with_context(|| format!("loading chat template {}", path.display()))?;
        self.chat_template = Some(template);
        Ok(())
    }

    fn load_hf_dir(dir: &Path) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::from_hf_dir(dir)
            .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
        let chat_template = ChatTemplate::from_hf_dir(dir, tokenizer.special_tokens().clone())
            .with_context(|| format!("loading the chat template of {}", dir.display()))?;
        let generation = GenerationConfig::from_hf_dir(dir, Some(&tokenizer))
            .with_context(|| format!("loading the generation config of {}", dir.display()))?;
        Ok(Self {
            tokenizer,
            chat_template,
            generation,
        })
    }

    fn load_gguf(path: &Path) -> anyhow::Result<Self> {
        let context = || format!("loading the tokenizer of {}", path.display());
        let header = read_gguf_header(path).with_context(context)?;
        let tokenizer = Tokenizer::from_gguf(&header).with_context(context)?;
        let chat_template = ChatTemplate::from_gguf(&header, tokenizer.special_tokens().clone())
            .with_context(|| format!("loading the chat template of {}", path.display()))?;
        let mut generation = GenerationConfig::from_gguf(&header)
            .with_context(|| format!("loading the generation config of {}", path.display()))?;
        generation.add_tokenizer_ids(&tokenizer);
        Ok(Self {
            tokenizer,
            chat_template,
            generation,
        })
    }
}
