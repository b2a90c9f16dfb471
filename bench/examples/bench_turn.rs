//! `cargo run --release -p meridian-bench --example bench_turn -- <flags>`: the same as
//! `meridian bench turn <flags>`, for running the bench without the main binary.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bench_turn",
    about = "TURN load generator (meridian bench turn)"
)]
struct Cli {
    #[command(flatten)]
    args: meridian_bench::turn::TurnArgs,
}

fn main() -> anyhow::Result<()> {
    meridian_bench::turn::run(Cli::parse().args)
}
