//! The `arbor` command line: `serve` runs the OpenAI-compatible server, `generate`
//! checks a model by hand, `bench` measures any OpenAI-compatible server, `plan` says
//! how a model would fit a GPU.

mod bench;
mod generate;
mod plan;
mod serve;

use clap::{Parser, Subcommand};

/// Arbor: a native Rust inference engine for open-weight reasoning models.
#[derive(Parser)]
#[command(name = "arbor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI API.
    Serve(serve::ServeArgs),
    /// Generate from a model on the command line.
    Generate(generate::GenerateArgs),
    /// Benchmark an OpenAI-compatible server.
    Bench(Box<bench::BenchArgs>),
    /// Plan a model's GPU memory (weights, workspace, KV tokens) without a GPU.
    Plan(plan::PlanArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Plan(args) => plan::run(args),
    }
}
