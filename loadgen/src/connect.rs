//! `loadgen connect`: opens and holds idle connections at a paced handshake rate, and reports
//! handshakes per second and the gateway's memory per connection (from its metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::target::Target;

/// Options of `loadgen connect`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub(crate) conns: usize,
    /// Handshakes started per second at most.
    #[arg(long, default_value_t = 2000)]
    pub(crate) rate: u32,
    /// Handshakes in flight at once at most.
    #[arg(long, default_value_t = 256)]
    pub(crate) parallel: usize,
    /// Seconds to hold the connections open before closing them.
    #[arg(long, default_value_t = 3)]
    pub(crate) hold: u64,
}

pub(crate) async fn connect(mut args: ConnectArgs) -> anyhow::Result<()> {
    let _gateway = args.target.prepare()?;
    anyhow::ensure!(
        args.rate >= 1 && args.parallel >= 1,
        "--rate and --parallel must be positive"
    );
    let users = Arc::new(args.target.users()?);
    let before = args.target.gateway_memory().await;
    eprintln!(
        "opening {} connections to {} at up to {}/s ...",
        args.conns,
        args.target
            .server
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.rate
    );
    let gate = Arc::new(Semaphore::new(args.parallel));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        tick.tick().await;
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let users = users.clone();
        tasks.push(tokio::spawn(async move {
            let r = users.connect(i).await;
            drop(permit);
            r
        }));
    }
    let mut held = Vec::with_capacity(args.conns);
    let mut errors = 0usize;
    for t in tasks {
        match t.await? {
            Ok(c) => held.push(c),
            Err(e) => {
                if errors < 5 {
                    eprintln!("{e:#}");
                }
                errors += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let after = args.target.gateway_memory().await;
    let open = held.len();
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) / open as u64),
        _ => None,
    };
    for (c, _) in &held {
        c.close();
    }
    crate::target::wait_idle(users.endpoints(), Duration::from_secs(2)).await;
    let rate = open as f64 / elapsed;
    println!("connections {open} open, {errors} failed, in {elapsed:.2} s: {rate:.0} handshakes/s");
    match per_conn {
        Some(b) => println!(
            "gateway memory per connection: {b} bytes (RSS {} -> {} bytes)",
            before.unwrap_or(0),
            after.unwrap_or(0)
        ),
        None => println!(
            "gateway memory per connection: unknown (give --metrics, or use --spawn-gateway)"
        ),
    }
    println!(
        "loadgen connect: conns={open} failed={errors} handshakes_per_s={rate:.0} gateway_bytes_per_conn={}",
        per_conn.map_or_else(|| "unknown".to_owned(), |b| b.to_string())
    );
    Ok(())
}
