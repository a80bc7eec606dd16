//! Progress of an import on stderr: a bar on a terminal, a plain line every few seconds
//! otherwise (a log file or CI should not fill with redraws).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the plain line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Counts of the rows handled so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub imported: AtomicU64,
    pub already: AtomicU64,
    pub rejected: AtomicU64,
}

impl Counts {
    fn done(&self) -> u64 {
        self.imported.load(Ordering::Relaxed) + self.already.load(Ordering::Relaxed) + self.rejected.load(Ordering::Relaxed)
    }

    fn line(&self) -> String {
        format!(
            "imported {}, already {}, rejected {}",
            self.imported.load(Ordering::Relaxed),
            self.already.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed)
        )
    }
}

/// The display; [`Progress::finish`] removes it before the summary is printed.
pub struct Progress {
    pub counts: Arc<Counts>,
    bar: Option<ProgressBar>,
    plain: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Progress {
    /// `total` rows; `already_done` of them were settled without a request (rejected locally).
    pub fn start(total: u64, counts: Arc<Counts>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} rows  {msg}  eta {eta}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_position(counts.done());
            bar.set_message(counts.line());
            Progress { counts, bar: Some(bar), plain: None }
        } else {
            let stop = CancellationToken::new();
            let task = {
                let (stop, counts) = (stop.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(PLAIN_EVERY);
                    tick.tick().await;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tick.tick() => eprintln!("import: {}/{total} rows ({})", counts.done(), counts.line()),
                        }
                    }
                })
            };
            Progress { counts, bar: None, plain: Some((stop, task)) }
        }
    }

    /// Redraws after a row settled (the counts are already updated).
    pub fn row_done(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.counts.done());
            bar.set_message(self.counts.line());
        }
    }

    pub async fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        if let Some((stop, task)) = self.plain {
            stop.cancel();
            let _ = task.await;
        }
    }
}
