//! `arbor bench` (in progress).

/// Arguments of `arbor bench`.
#[derive(clap::Args)]
pub struct BenchArgs {}

/// Runs `arbor bench`.
pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("arbor bench is not built yet")
}
