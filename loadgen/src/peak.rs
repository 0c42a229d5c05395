//! `loadgen peak`: raises an open-loop rate in steps until the p99 of send->Deliver passes the
//! SLO or delivery falls behind, refines between the last rate that held and the first that did
//! not, and prints the highest rate that held against the mission's load.

use std::path::PathBuf;
use std::time::Duration;

use crate::load::{Fleet, Pace, PhaseResult};
use crate::progress::Progress;
use crate::report;
use crate::target::Target;

/// The mission's average load, messages per second (40B messages a day).
const MISSION_AVERAGE: f64 = 463_000.0;

/// Options of `loadgen peak`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct PeakArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Number of users (a multiple of --group-size: they are put in chats of that many).
    #[arg(long, default_value_t = 2000)]
    pub(crate) users: usize,
    /// Members per chat: 2 for 1:1 chats, up to 100 for groups (each message is then
    /// delivered to every other member: group fanout, the expensive case).
    #[arg(long, default_value_t = 2)]
    pub(crate) group_size: usize,
    /// Message body size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub(crate) body: usize,
    /// First rate, messages per second in total.
    #[arg(long, default_value_t = 10_000.0)]
    pub(crate) start: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub(crate) factor: f64,
    /// Highest rate to try.
    #[arg(long, default_value_t = 5_000_000.0)]
    pub(crate) max: f64,
    /// p99 send->Deliver that a rate must stay under, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) slo: f64,
    /// Bisection steps between the last rate that held and the first that did not.
    #[arg(long, default_value_t = 2)]
    pub(crate) refine: u32,
    /// Unmeasured seconds at the start of each step.
    #[arg(long, default_value_t = 1)]
    pub(crate) step_warmup: u64,
    /// Measured seconds of each step.
    #[arg(long, default_value_t = 5)]
    pub(crate) step_duration: u64,
    /// Unacknowledged sends a user may have before it waits (the wait is counted; at most the
    /// server's max in-flight).
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_outstanding: usize,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

/// Why a step did not hold, or None when it held.
fn verdict(r: &PhaseResult, rate: f64, slo_us: f64) -> Option<String> {
    let p99 = r.send_to_deliver_us.p99 as f64;
    if r.errors > 0 {
        Some(format!("{} send errors", r.errors))
    } else if r.sent_per_s < 0.95 * rate {
        Some(format!(
            "senders fell behind the schedule ({:.0} sent/s)",
            r.sent_per_s
        ))
    } else if r.delivered_per_s < 0.95 * rate {
        Some(format!(
            "delivery fell behind ({:.0} delivered/s)",
            r.delivered_per_s
        ))
    } else if p99 > slo_us {
        Some(format!(
            "p99 send->Deliver {:.1} ms over the SLO",
            p99 / 1000.0
        ))
    } else {
        None
    }
}

pub(crate) async fn peak(mut args: PeakArgs) -> anyhow::Result<()> {
    let _gateway = args.target.prepare()?;
    anyhow::ensure!(
        args.start > 0.0 && args.start.is_finite() && args.max >= args.start,
        "--start must be positive and at most --max"
    );
    anyhow::ensure!(args.factor > 1.0, "--factor must be above 1");
    anyhow::ensure!(args.slo > 0.0, "--slo must be positive");
    anyhow::ensure!(
        args.step_duration >= 1 && args.max_outstanding >= 1,
        "--step-duration and --max-outstanding must be at least 1"
    );
    let slo_us = args.slo * 1000.0;
    let mut fleet = Fleet::connect(&args.target, args.users, args.group_size, args.body).await?;
    let mut steps: Vec<(f64, PhaseResult, Option<String>)> = Vec::new();
    let (mut held, mut failed): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = args.start;
    let mut refinements = 0;
    loop {
        let pace = Pace::Open {
            rate,
            max_outstanding: args.max_outstanding,
        };
        let duration = Duration::from_secs(args.step_duration);
        let phase = fleet.start(pace, Duration::from_secs(args.step_warmup), duration);
        let label = format!("step {} at {rate:.0} msg/s", steps.len() + 1);
        let progress = Progress::start(label.clone(), phase.meter(), duration);
        let meter = phase.finish(Duration::from_secs(5)).await;
        progress.finish();
        let r = meter.result(label, pace);
        let why = verdict(&r, rate, slo_us);
        let p = &r.send_to_deliver_us;
        println!(
            "step {:>2}: {:>9.0} msg/s  sent {:>9.0}/s  delivered {:>9.0}/s  e2e p50 {:>7.2} ms  p99 {:>8.2} ms  p99.9 {:>8.2} ms  {}",
            steps.len() + 1,
            rate,
            r.sent_per_s,
            r.delivered_per_s,
            p.p50 as f64 / 1000.0,
            p.p99 as f64 / 1000.0,
            p.p999 as f64 / 1000.0,
            why.as_deref().unwrap_or("held")
        );
        let ok = why.is_none();
        steps.push((rate, r, why));
        if ok {
            held = Some(held.map_or(rate, |h: f64| h.max(rate)));
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (held, failed) {
            (Some(h), None) if h < args.max => (h * args.factor).min(args.max),
            (Some(h), Some(f)) if refinements < args.refine && f > h * 1.02 => {
                refinements += 1;
                (h + f) / 2.0
            }
            _ => break,
        };
    }
    let correctness = fleet.check();
    let users = fleet.users();
    fleet.close().await;

    println!();
    report::print_correctness(&correctness);
    let best = held.and_then(|h| steps.iter().find(|(r, _, w)| *r == h && w.is_none()));
    match best {
        Some((rate, r, _)) => {
            let nodes = |load: f64| (load / rate).ceil() as u64;
            println!(
                "peak: {rate:.0} msg/s held on this node with p99 send->Deliver {:.2} ms (SLO {} ms)",
                r.send_to_deliver_us.p99 as f64 / 1000.0,
                args.slo
            );
            println!(
                "mission: average {:.0} msg/s -> {} nodes like this one; 3x peak {:.0} msg/s -> {} nodes; 5x peak {:.0} msg/s -> {} nodes",
                MISSION_AVERAGE,
                nodes(MISSION_AVERAGE),
                3.0 * MISSION_AVERAGE,
                nodes(3.0 * MISSION_AVERAGE),
                5.0 * MISSION_AVERAGE,
                nodes(5.0 * MISSION_AVERAGE)
            );
            println!(
                "loadgen peak: conns={users} peak_per_s={rate:.0} slo_ms={} e2e_p99_us_at_peak={} nodes_avg={} nodes_3x={} nodes_5x={} lost={} dup={} gaps={} errors={}",
                args.slo,
                r.send_to_deliver_us.p99,
                nodes(MISSION_AVERAGE),
                nodes(3.0 * MISSION_AVERAGE),
                nodes(5.0 * MISSION_AVERAGE),
                correctness.lost,
                correctness.dup,
                correctness.gaps,
                correctness.errors
            );
        }
        None => {
            println!("peak: no rate held; {:.0} msg/s already failed", args.start);
            println!(
                "loadgen peak: conns={users} peak_per_s=0 slo_ms={} lost={} dup={} gaps={} errors={}",
                args.slo, correctness.lost, correctness.dup, correctness.gaps, correctness.errors
            );
        }
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "mode": "peak",
            "users": users,
            "body_bytes": args.body,
            "slo_ms": args.slo,
            "peak_per_s": best.map(|(r, _, _)| *r),
            "mission_average_per_s": MISSION_AVERAGE,
            "steps": steps.iter().map(|(rate, r, why)| serde_json::json!({
                "rate": rate, "held": why.is_none(), "why_not": why, "result": r,
            })).collect::<Vec<_>>(),
            "correctness": correctness,
        });
        report::write_json(path, &json)?;
    }
    anyhow::ensure!(
        correctness.clean(),
        "correctness check failed: {correctness:?}"
    );
    Ok(())
}
