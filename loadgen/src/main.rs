//! `loadgen`: drives a Courier gateway with simulated users and checks what comes back.
//!
//! - `loadgen run` (`run`): messaging between pairs of users, closed loop (`--window`) or open
//!   loop (`--rate`), with rates, latency percentiles and correctness checks.
//! - `loadgen peak` (`peak`): open-loop rate steps until the p99 send->Deliver passes the SLO;
//!   the highest rate that held, against the mission's load.
//! - `loadgen connect` (`connect`): many idle connections at a paced handshake rate; handshakes
//!   per second and the gateway's memory per connection.
//!
//! `load` is the traffic both `run` and `peak` drive (users, senders, receivers, meters and the
//! correctness ledger); `pacer` the open loop's sub-millisecond timer; `progress` the live
//! line; `report` the printing.
//! `target` holds what all share: where the gateway is (or `--spawn-gateway` to start one), how
//! to trust it and mint tokens, and how connections are spread over UDP sockets.

#![forbid(unsafe_code)]

mod connect;
mod load;
mod pacer;
mod peak;
mod progress;
mod report;
mod run;
mod target;
mod threads;

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
    /// Messaging between pairs of users, closed loop (--window) or open loop (--rate).
    Run(run::RunArgs),
    /// Raise an open-loop rate until p99 send->Deliver passes the SLO; report the peak.
    Peak(peak::PeakArgs),
    /// Open and hold idle connections; report handshakes/s and memory per connection.
    Connect(connect::ConnectArgs),
}

#[tokio::main]
async fn main() {
    let result = match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::Peak(args) => peak::peak(args).await,
        Command::Connect(args) => connect::connect(args).await,
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
