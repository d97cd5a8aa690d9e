//! `arbor serve` (in progress).

/// Arguments of `arbor serve`.
#[derive(clap::Args)]
pub struct ServeArgs {}

/// Runs `arbor serve`.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("arbor serve is not built yet")
}
