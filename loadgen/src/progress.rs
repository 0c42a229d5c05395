//! A live progress line on a terminal: the phase, time into it, rates over the last half
//! second, p99 send->Deliver so far and errors. Hidden when stderr is not a terminal.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::load::Meter;

/// The progress line of one phase; cleared by [`Progress::finish`].
pub(crate) struct Progress {
    bar: ProgressBar,
    task: JoinHandle<()>,
}

fn rate(n: u64, secs: f64) -> String {
    let r = n as f64 / secs;
    if r >= 1e6 {
        format!("{:.2}M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}K/s", r / 1e3)
    } else {
        format!("{r:.0}/s")
    }
}

impl Progress {
    pub(crate) fn start(label: String, meter: Arc<Meter>, duration: Duration) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let step = Duration::from_millis(500);
            let mut last = meter.counts();
            loop {
                tokio::time::sleep(step).await;
                let now = meter.counts();
                let msg = match meter.progress() {
                    None => format!("{label}: warming up"),
                    Some(t) => {
                        let secs = step.as_secs_f64();
                        format!(
                            "{label}: {:.1}/{} s  sent {}  acked {}  delivered {}  e2e p99 {:.1} ms  errors {}",
                            t.min(duration).as_secs_f64(),
                            duration.as_secs(),
                            rate(now.0 - last.0, secs),
                            rate(now.1 - last.1, secs),
                            rate(now.2 - last.2, secs),
                            meter.e2e_p99() as f64 / 1000.0,
                            now.3
                        )
                    }
                };
                shown.set_message(msg);
                shown.tick();
                last = now;
            }
        });
        Self { bar, task }
    }

    pub(crate) fn finish(self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
