//! `loadgen run`: messaging between pairs of users at a closed-loop window or an open-loop rate,
//! with rates, latency percentiles and correctness checks.

use std::path::PathBuf;
use std::time::Duration;

use crate::load::{Fleet, Pace};
use crate::progress::Progress;
use crate::report;
use crate::target::Target;

/// Options of `loadgen run`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Number of users (a multiple of --group-size: they are put in chats of that many).
    #[arg(long, default_value_t = 200)]
    pub(crate) users: usize,
    /// Members per chat: 2 for 1:1 chats, up to 100 for groups (each message is then
    /// delivered to every other member: group fanout, the expensive case).
    #[arg(long, default_value_t = 2)]
    pub(crate) group_size: usize,
    /// Closed loop: unacknowledged sends each user keeps outstanding (at most the server's
    /// max in-flight, which it announces).
    #[arg(long, default_value_t = 32)]
    pub(crate) window: usize,
    /// Open loop instead: messages per second in total, on a fixed schedule; latency is measured
    /// from each message's intended send time.
    #[arg(long, conflicts_with = "window")]
    pub(crate) rate: Option<f64>,
    /// Open loop: unacknowledged sends a user may have before it waits (the wait is counted;
    /// at most the server's max in-flight).
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_outstanding: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub(crate) body: usize,
    /// Warm-up seconds (sent but not measured).
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
    /// Seconds to wait for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 10)]
    pub(crate) drain: u64,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

pub(crate) async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    let _gateway = args.target.prepare()?;
    let pace = match args.rate {
        Some(rate) => {
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number"
            );
            anyhow::ensure!(
                args.max_outstanding >= 1,
                "--max-outstanding must be at least 1"
            );
            Pace::Open {
                rate,
                max_outstanding: args.max_outstanding,
            }
        }
        None => {
            anyhow::ensure!(args.window >= 1, "--window must be at least 1");
            Pace::Closed {
                window: args.window,
            }
        }
    };
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    let mut fleet = Fleet::connect(&args.target, args.users, args.group_size, args.body).await?;
    eprintln!(
        "warming up {} s, measuring {} s",
        args.warmup, args.duration
    );
    let duration = Duration::from_secs(args.duration);
    let phase = fleet.start(pace, Duration::from_secs(args.warmup), duration);
    // The gateway's threads (when it is on this machine) and the load generator's own,
    // sampled at both ends of the measured window.
    let sampler = {
        let (from, until) = phase.meter().window();
        let (gateway, me) = (args.target.gateway_pid, std::process::id());
        tokio::spawn(async move {
            let both = || {
                (
                    gateway.map(crate::threads::sample),
                    crate::threads::sample(me),
                )
            };
            tokio::time::sleep_until(from.into()).await;
            let before = both();
            tokio::time::sleep_until(until.into()).await;
            (before, both())
        })
    };
    // Every connection's datagrams, at both ends of the window: what the gateway received
    // (the users sent) and sent (the users received) per message.
    let datagrams = {
        let (from, until) = phase.meter().window();
        let clients = fleet.clients();
        tokio::spawn(async move {
            let count = |clients: &[courier_client::Client]| {
                clients
                    .iter()
                    .map(|c| c.datagrams())
                    .fold((0, 0), |(s, r), d| (s + d.sent, r + d.received))
            };
            tokio::time::sleep_until(from.into()).await;
            let before = count(&clients);
            tokio::time::sleep_until(until.into()).await;
            let after = count(&clients);
            (after.0 - before.0, after.1 - before.1)
        })
    };
    let progress = Progress::start("run".into(), phase.meter(), duration);
    let meter = phase.finish(Duration::from_secs(args.drain)).await;
    progress.finish();
    let label = format!(
        "users {} ({} chats of {}), body {} B",
        args.users,
        args.users / args.group_size,
        args.group_size,
        args.body
    );
    let result = meter.result(label, pace);
    let correctness = fleet.check();
    fleet.close().await;
    let (threads, loadgen_us) = match sampler.await {
        Ok(((gateway0, me0), (gateway1, me1))) => {
            let ticks = crate::threads::ticks_per_second();
            (
                gateway0
                    .zip(gateway1)
                    .and_then(|(b, a)| crate::threads::report(&b, &a, result.acked, ticks)),
                crate::threads::process_us_per_msg(&me0, &me1, result.acked, ticks),
            )
        }
        Err(_) => (None, None),
    };

    // Datagrams per acknowledged message, each way at the gateway, and (with its CPU) µs per
    // datagram.
    let wire = match datagrams.await {
        Ok((to_gateway, from_gateway)) if result.acked > 0 => {
            let per = |n: u64| n as f64 / result.acked as f64;
            Some((per(to_gateway), per(from_gateway)))
        }
        _ => None,
    };

    println!();
    report::print_phase(&result);
    report::print_correctness(&correctness);
    if let Some(t) = &threads {
        println!("gateway CPU per acknowledged message, by thread (of it in the kernel):");
        for ((name, us), (_, kernel)) in t.us_per_msg.iter().zip(&t.kernel_us_per_msg) {
            println!("  {name:<24} {us:>8.2} µs ({kernel:.2})");
        }
        println!(
            "  {:<24} {:>8.2} µs ({:.2}) (serial bound {:.0} msg/s: {})",
            "all threads",
            t.total_us_per_msg,
            t.total_kernel_us_per_msg,
            t.serial_bound_per_s,
            t.serial_thread
        );
    }
    if let Some((inn, out)) = wire {
        print!("datagrams per message at the gateway: {inn:.2} in, {out:.2} out");
        if let Some(t) = &threads {
            print!(
                ", {:.2} µs of gateway CPU per datagram",
                t.total_us_per_msg / (inn + out)
            );
        }
        println!();
    }
    if let Some(us) = loadgen_us {
        print!("load generator CPU per acknowledged message: {us:.2} µs");
        if let Some(t) = &threads {
            print!(" ({:.2}x the gateway's)", us / t.total_us_per_msg);
        }
        println!();
    }
    let (ack, e2e) = (&result.send_to_sendok_us, &result.send_to_deliver_us);
    println!(
        "loadgen run: conns={} group={} {} acked_per_s={:.0} delivered_per_s={:.0} ack_p50_us={} ack_p99_us={} e2e_p50_us={} e2e_p99_us={} e2e_p999_us={}{} lost={} dup={} gaps={} errors={}{}{}{}",
        args.users,
        args.group_size,
        match pace {
            Pace::Closed { window } => format!("window={window}"),
            Pace::Open { rate, .. } => format!("rate={rate:.0}"),
        },
        result.acked_per_s,
        result.delivered_per_s,
        ack.p50,
        ack.p99,
        e2e.p50,
        e2e.p99,
        e2e.p999,
        match pace {
            Pace::Closed { .. } => String::new(),
            Pace::Open { .. } => format!(
                " late_p50_us={} late_p99_us={}",
                result.send_late_us.p50, result.send_late_us.p99
            ),
        },
        correctness.lost,
        correctness.dup,
        correctness.gaps,
        correctness.errors,
        match wire {
            Some((inn, out)) => format!(" dgrams_in_per_msg={inn:.2} dgrams_out_per_msg={out:.2}"),
            None => String::new(),
        },
        match &threads {
            Some(t) => format!(
                " gateway_us_per_msg={:.2} gateway_kernel_us_per_msg={:.2} serial_bound_per_s={:.0} serial_thread={}",
                t.total_us_per_msg,
                t.total_kernel_us_per_msg,
                t.serial_bound_per_s,
                t.serial_thread.replace(' ', "_")
            ),
            None => String::new(),
        },
        match loadgen_us {
            Some(us) => format!(" loadgen_us_per_msg={us:.2}"),
            None => String::new(),
        },
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "mode": "run",
            "users": args.users,
            "chats": args.users / args.group_size,
            "group_size": args.group_size,
            "body_bytes": args.body,
            "warmup_s": args.warmup,
            "sockets": args.target.sockets,
            "result": result,
            "correctness": correctness,
            "gateway_threads": threads,
            "loadgen_us_per_msg": loadgen_us,
            "datagrams_per_message": wire.map(|(inn, out)| serde_json::json!({"in": inn, "out": out})),
        });
        report::write_json(path, &json)?;
    }
    anyhow::ensure!(
        correctness.clean(),
        "correctness check failed: {correctness:?}"
    );
    Ok(())
}
