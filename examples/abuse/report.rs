//! The results table: one row per scenario.

use crate::server::LogMark;

/// One measured scenario.
#[derive(Debug, Default)]
pub(crate) struct Row {
    /// Its number and what the client does.
    pub(crate) scenario: String,
    /// What the client saw.
    pub(crate) outcome: String,
    /// The server's memory growth, total and per unit.
    pub(crate) memory: String,
    /// WARN lines and bytes the log gained.
    pub(crate) log: String,
    /// What the well-behaved client saw meanwhile (scenarios 1-3).
    pub(crate) bystander: String,
}

impl Row {
    pub(crate) fn new(scenario: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            ..Row::default()
        }
    }

    /// Records the log growth between two marks.
    pub(crate) fn log(&mut self, before: LogMark, after: LogMark) {
        let added = after.bytes.saturating_sub(before.bytes) as f64;
        let lines = after.lines.saturating_sub(before.lines);
        self.log = format!(
            "{} WARN, {lines} lines, {}",
            after.warn_lines.saturating_sub(before.warn_lines),
            bytes(added)
        );
        if lines > 1 {
            self.log
                .push_str(&format!(" ({} per line)", bytes(added / lines as f64)));
        }
    }
}

/// The Markdown table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | the client saw | server RSS growth | log added | well-behaved client meanwhile |\n\
         |---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&row.scenario),
            cell(&row.outcome),
            cell(&row.memory),
            cell(&row.log),
            cell(&row.bystander)
        ));
    }
    out
}

fn cell(text: &str) -> String {
    if text.is_empty() {
        "–".to_owned()
    } else {
        text.replace('|', "\\|").replace('\n', " ")
    }
}

/// `1.2 MiB`, `3.4 KiB`, `56 B`.
pub(crate) fn bytes(n: f64) -> String {
    let abs = n.abs();
    if abs >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if abs >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// Growth from `before` to `after` in bytes (negative if the server shrank).
pub(crate) fn growth(before: u64, after: u64) -> f64 {
    after as f64 - before as f64
}
