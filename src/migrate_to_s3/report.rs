//! Counting, logging and showing what `migrate-to-s3` does with each item.
//!
//! Every item gets one `migrate_to_s3` log event (`kind`, `item`, `outcome`, and `reason` for
//! skips). On a terminal a progress bar runs on stderr (log lines print above it); otherwise only
//! the log lines appear. The summary goes to stdout at the end.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Firmware,
    Coredump,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Firmware => "firmware",
            Kind::Coredump => "coredump",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Copied into the bucket and recorded (or, in a dry run, would be).
    Migrated,
    /// Already migrated by an earlier run: nothing written.
    Unchanged,
    /// Not migrated; the reason is a warning unless it is an expected legacy leftover.
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Migrated => "migrated",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
        }
    }
}

/// The counts and warnings of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub firmware_migrated: usize,
    pub firmware_skipped: usize,
    pub firmware_unchanged: usize,
    pub coredumps_migrated: usize,
    pub coredumps_skipped: usize,
    pub coredumps_unchanged: usize,
    /// The first [`MAX_KEPT_WARNINGS`] warnings (every one is logged as it happens).
    pub warnings: Vec<String>,
    /// Warnings beyond those: a tree with a hundred thousand orphaned files must not keep (and
    /// print) a line for each.
    pub warnings_not_kept: usize,
    /// Notes that are not problems (e.g. the legacy column dropped).
    pub notes: Vec<String>,
}

/// How many warnings a run keeps for its summary.
pub const MAX_KEPT_WARNINGS: usize = 200;

impl Summary {
    fn warn(&mut self, warning: String) {
        if self.warnings.len() < MAX_KEPT_WARNINGS {
            self.warnings.push(warning);
        } else {
            self.warnings_not_kept += 1;
        }
    }

    /// Every warning of the run, kept or not.
    pub fn warning_count(&self) -> usize {
        self.warnings.len() + self.warnings_not_kept
    }

    fn count(&mut self, kind: Kind, outcome: Outcome) {
        let slot = match (kind, outcome) {
            (Kind::Firmware, Outcome::Migrated) => &mut self.firmware_migrated,
            (Kind::Firmware, Outcome::Skipped) => &mut self.firmware_skipped,
            (Kind::Firmware, Outcome::Unchanged) => &mut self.firmware_unchanged,
            (Kind::Coredump, Outcome::Migrated) => &mut self.coredumps_migrated,
            (Kind::Coredump, Outcome::Skipped) => &mut self.coredumps_skipped,
            (Kind::Coredump, Outcome::Unchanged) => &mut self.coredumps_unchanged,
        };
        *slot += 1;
    }

    /// The text printed at the end (the Python service's format, plus the unchanged counts).
    pub fn render(&self, dry_run: bool) -> String {
        let prefix = if dry_run { "[DRY RUN] " } else { "" };
        self.render_under(&format!("{prefix}Migration complete."))
    }

    /// The summary of a run the database or the bucket stopped: what it did until then.
    pub fn render_stopped(&self, dry_run: bool) -> String {
        let prefix = if dry_run { "[DRY RUN] " } else { "" };
        self.render_under(&format!(
            "{prefix}Migration stopped before the end. Until then:"
        ))
    }

    fn render_under(&self, heading: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n{heading}");
        let _ = writeln!(out, "  Firmware ZIPs migrated: {}", self.firmware_migrated);
        let _ = writeln!(out, "  Firmware ZIPs skipped:  {}", self.firmware_skipped);
        let _ = writeln!(
            out,
            "  Firmware ZIPs already migrated: {}",
            self.firmware_unchanged
        );
        let _ = writeln!(out, "  Coredumps migrated:     {}", self.coredumps_migrated);
        let _ = writeln!(out, "  Coredumps skipped:      {}", self.coredumps_skipped);
        let _ = writeln!(
            out,
            "  Coredumps already migrated: {}",
            self.coredumps_unchanged
        );
        if self.firmware_migrated + self.coredumps_migrated == 0 {
            let skipped = self.firmware_skipped + self.coredumps_skipped;
            if skipped == 0 {
                let _ = writeln!(out, "  Nothing to migrate: no changes were made.");
            } else {
                let _ = writeln!(
                    out,
                    "  Nothing was migrated: {skipped} item(s) skipped (see the warnings)."
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\n  Warnings ({}):", self.warning_count());
            for w in &self.warnings {
                let _ = writeln!(out, "    - {w}");
            }
            if self.warnings_not_kept > 0 {
                let _ = writeln!(
                    out,
                    "    … and {} more (each is in the log as migrate_to_s3_warning or a skipped item)",
                    self.warnings_not_kept
                );
            }
        }
        out
    }
}

/// Shared by the phases (coredumps are migrated concurrently).
pub struct Reporter {
    dry_run: bool,
    bar: Option<ProgressBar>,
    summary: Mutex<Summary>,
}

impl Reporter {
    /// A progress bar only when stderr is a terminal.
    pub fn new(dry_run: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            crate::telemetry::set_progress_bar(Some(bar.clone()));
            bar
        });
        Reporter {
            dry_run,
            bar,
            summary: Mutex::new(Summary::default()),
        }
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// A new phase with `total` items.
    pub fn phase(&self, kind: Kind, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(kind.as_str());
            bar.set_length(total as u64);
            bar.set_position(0);
        }
    }

    /// One item done. `reason` says why it was skipped; `warn` makes it a warning in the summary.
    pub fn item(&self, kind: Kind, item: &str, outcome: Outcome, reason: Option<&str>, warn: bool) {
        let dry_run = self.dry_run;
        match (outcome, reason) {
            (Outcome::Skipped, Some(reason)) if warn => tracing::warn!(
                kind = kind.as_str(),
                item,
                outcome = outcome.as_str(),
                reason,
                dry_run,
                "migrate_to_s3"
            ),
            (_, reason) => tracing::info!(
                kind = kind.as_str(),
                item,
                outcome = outcome.as_str(),
                reason,
                dry_run,
                "migrate_to_s3"
            ),
        }
        if dry_run && outcome == Outcome::Migrated {
            self.println(&format!(
                "  [DRY RUN] Would migrate {}: {item}",
                kind.as_str()
            ));
        }
        if let Ok(mut summary) = self.summary.lock() {
            summary.count(kind, outcome);
            if warn {
                if let Some(reason) = reason {
                    summary.warn(reason.to_string());
                }
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(item.to_string());
        }
    }

    /// A warning that is not about one counted item.
    pub fn warn(&self, warning: String) {
        tracing::warn!(warning = %warning, "migrate_to_s3_warning");
        if let Ok(mut summary) = self.summary.lock() {
            summary.warn(warning);
        }
    }

    pub fn note(&self, note: String) {
        tracing::info!(note = %note, "migrate_to_s3_note");
        if let Ok(mut summary) = self.summary.lock() {
            summary.notes.push(note);
        }
    }

    /// A line on stdout that does not tear the progress bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub fn finish(self) -> Summary {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            crate::telemetry::set_progress_bar(None);
        }
        self.summary.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_a_bounded_number_of_warnings_and_says_how_many_more() {
        let reporter = Reporter::new(false);
        for i in 0..MAX_KEPT_WARNINGS + 5 {
            reporter.warn(format!("orphan {i}"));
        }
        let summary = reporter.finish();
        assert_eq!(summary.warnings.len(), MAX_KEPT_WARNINGS);
        assert_eq!(summary.warning_count(), MAX_KEPT_WARNINGS + 5);
        let text = summary.render(false);
        assert!(
            text.contains(&format!("Warnings ({}):", MAX_KEPT_WARNINGS + 5)),
            "{text}"
        );
        assert!(text.contains("… and 5 more"), "{text}");
        assert!(
            !text.contains(&format!("orphan {}", MAX_KEPT_WARNINGS)),
            "{text}"
        );
    }
}
