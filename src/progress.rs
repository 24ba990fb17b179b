//! What the user sees while a run goes: an indicatif bar per epoch (images/s, loss, accuracy,
//! ETA) plus one summary line per epoch; `--quiet` prints only results; `--json` prints one JSON
//! object per event on stdout for scripts.

use hla_train::metrics::EpochRecord;
use hla_train::run::Observer;
use hla_train::step::EpochStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// Output mode chosen by `--quiet` / `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Progress bars (on a terminal) and summary lines.
    Human,
    /// Only final results and errors.
    Quiet,
    /// JSON lines on stdout.
    Json,
}

/// Prints progress and results in the chosen mode.
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    /// The mode.
    pub mode: OutputMode,
}

impl Ui {
    /// A line of human information (not shown in quiet or JSON mode).
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.mode == OutputMode::Human {
            println!("{}", msg.as_ref());
        }
    }

    /// A warning, shown in every mode: a line on stderr (above the progress bar, if any), and
    /// in JSON mode also an event `{"event": "warning", "message": …}` on stdout.
    pub fn warning(&self, msg: impl AsRef<str>, bar: Option<&EpochBar>) {
        let line = format!("warning: {}", msg.as_ref());
        match bar.and_then(|b| b.bar.as_ref()) {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
        self.event(serde_json::json!({"event": "warning", "message": msg.as_ref()}));
    }

    /// A result line: shown in human and quiet mode; JSON mode prints `json` instead.
    pub fn result(&self, msg: impl AsRef<str>, json: serde_json::Value) {
        match self.mode {
            OutputMode::Human | OutputMode::Quiet => println!("{}", msg.as_ref()),
            OutputMode::Json => println!("{json}"),
        }
    }

    /// A JSON event (JSON mode only).
    pub fn event(&self, json: serde_json::Value) {
        if self.mode == OutputMode::Json {
            println!("{json}");
        }
    }

    /// Starts the bar of one epoch of `batches` steps of `batch_size` images.
    pub fn epoch_bar(&self, label: &str, batches: usize, batch_size: usize) -> EpochBar {
        let bar = if self.mode == OutputMode::Human {
            let b = ProgressBar::with_draw_target(
                Some(batches as u64),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>18} [{bar:28}] {pos:>4}/{len} {msg} ETA {eta}",
                )
                .expect("valid progress template")
                .progress_chars("=> "),
            );
            b.set_prefix(label.to_string());
            Some(b)
        } else {
            None
        };
        EpochBar {
            bar,
            start: Instant::now(),
            images: 0,
            batch_size,
        }
    }

    /// Prints the end-of-epoch summary line (human) or JSON event.
    pub fn epoch_done(&self, label: &str, r: &EpochRecord) {
        match self.mode {
            OutputMode::Human => {
                let mut s = format!(
                    "{label:>18}  loss {:.4}  train {:5.1}%  test {:5.1}% (top-5 {:5.1}%)",
                    r.train_loss, r.train_top1, r.test_top1, r.test_top5
                );
                if let Some(sp) = r.sparsity {
                    s.push_str(&format!("  sparsity {:5.1}%", 100.0 * sp));
                }
                if let Some(c) = r.cos_sim {
                    s.push_str(&format!("  cos {c:.3}"));
                }
                s.push_str(&format!(
                    "  lr {:.2e}  {:.0} img/s  {:.1}s",
                    r.lr, r.images_per_s, r.seconds
                ));
                println!("{s}");
            }
            OutputMode::Quiet => {}
            OutputMode::Json => {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "epoch".into());
                    o.remove("layers");
                }
                println!("{v}");
            }
        }
    }
}

/// The bar of one running epoch.
pub struct EpochBar {
    bar: Option<ProgressBar>,
    start: Instant,
    images: usize,
    batch_size: usize,
}

impl EpochBar {
    /// One training step done, with the running mean loss and accuracy (%).
    pub fn step(&mut self, loss: f64, acc: f64) {
        self.images += self.batch_size;
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "{:6.0} img/s  loss {loss:.4}  acc {acc:5.1}%",
                self.images_per_s()
            ));
            b.inc(1);
        }
    }

    /// Training images per second so far.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// The run observer of the CLI: a progress bar per epoch and a summary line per epoch (human
/// mode), JSON lines (`--json`), or nothing (`--quiet`).
pub struct UiObserver {
    ui: Ui,
    bar: Option<EpochBar>,
}

impl UiObserver {
    /// An observer printing through `ui`.
    pub fn new(ui: Ui) -> Self {
        UiObserver { ui, bar: None }
    }
}

impl Observer for UiObserver {
    fn info(&mut self, msg: &str) {
        self.ui.info(msg);
    }
    fn warning(&mut self, msg: &str) {
        self.ui.warning(msg, self.bar.as_ref());
    }
    fn epoch_start(&mut self, label: &str, batches: usize, batch_size: usize, done: usize) {
        let mut bar = self.ui.epoch_bar(label, batches, batch_size);
        for _ in 0..done {
            bar.step(0.0, 0.0);
        }
        self.bar = Some(bar);
    }
    fn step(&mut self, so_far: &EpochStats) {
        if let Some(b) = self.bar.as_mut() {
            b.step(so_far.mean_loss(), so_far.acc());
        }
    }
    fn epoch_end(&mut self, label: &str, record: &EpochRecord) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
        self.ui.epoch_done(label, record);
    }
}

impl Drop for UiObserver {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}
