//! `arbor generate` (in progress).

/// Arguments of `arbor generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {}

/// Runs `arbor generate`.
pub fn run(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("arbor generate is not built yet")
}
