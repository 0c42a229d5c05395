//! `loadgen`: drives a Courier gateway with simulated users and checks what comes back.
//!
//! - `loadgen run` (`run`): closed-loop messaging between pairs of users, with rates, latency
//!   percentiles and correctness checks.
//! - `loadgen connect` (`connect`): many idle connections at a paced handshake rate; handshakes
//!   per second and the gateway's memory per connection.
//!
//! `target` holds what both share: where the gateway is (or `--spawn-gateway` to start one), how
//! to trust it and mint tokens, and how connections are spread over UDP sockets.

#![forbid(unsafe_code)]

mod connect;
mod run;
mod target;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "loadgen", version, about = "Load generator for Courier")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop messaging between pairs of users.
    Run(run::RunArgs),
    /// Open and hold idle connections; report handshakes/s and memory per connection.
    Connect(connect::ConnectArgs),
}

#[tokio::main]
async fn main() {
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::Connect(args) => connect::connect(args).await,
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
