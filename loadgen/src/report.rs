//! Printing results: a human table per phase, and the JSON report file.

use std::path::Path;

use anyhow::Context;

use crate::load::{Correctness, PhaseResult};

/// Prints one phase's rates and latency percentiles.
pub(crate) fn print_phase(r: &PhaseResult) {
    let pace = match (r.window, r.target_rate) {
        (Some(w), _) => format!("closed loop, window {w}"),
        (_, Some(rate)) => format!("open loop at {rate:.0} msg/s"),
        _ => String::new(),
    };
    println!("{} ({pace}), measured {:.0} s", r.label, r.seconds);
    for (name, v) in [
        ("sent msg/s", r.sent_per_s),
        ("acknowledged msg/s", r.acked_per_s),
        ("delivered msg/s", r.delivered_per_s),
    ] {
        println!("{name:<22} {:>12}", format!("{v:.0}"));
    }
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "latency (us)", "p50", "p99", "p99.9", "max"
    );
    let late = (r.send_late_us.count > 0).then_some(("send went out late by", &r.send_late_us));
    for (name, p) in [
        ("send -> SendOk", &r.send_to_sendok_us),
        ("send -> Deliver", &r.send_to_deliver_us),
    ]
    .into_iter()
    .chain(late)
    {
        println!(
            "{name:<22} {:>10} {:>10} {:>10} {:>10}",
            p.p50, p.p99, p.p999, p.max
        );
    }
}

/// Prints the correctness line.
pub(crate) fn print_correctness(c: &Correctness) {
    println!(
        "correctness: lost={} dup={} gaps={} out_of_order={} errors={}",
        c.lost, c.dup, c.gaps, c.out_of_order, c.errors
    );
}

/// Writes `value` as JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
