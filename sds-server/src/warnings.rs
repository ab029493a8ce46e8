//! A server-wide bound on the WARN lines clients can cause (refused requests, NACKs): opening
//! a new stream for each must not flood the log.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most client-caused WARN lines per [`WINDOW`], server-wide.
pub(crate) const LINES_PER_WINDOW: u32 = 10;
/// The window [`LINES_PER_WINDOW`] counts in.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// Lets through at most [`LINES_PER_WINDOW`] lines per [`WINDOW`], and counts the others.
#[derive(Debug)]
pub(crate) struct Warnings {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl Default for Warnings {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                window_start: Instant::now(),
                in_window: 0,
                suppressed: 0,
            }),
        }
    }
}

impl Warnings {
    /// Whether a line may be written now: `Some(n)` with the lines suppressed since the last
    /// one written (to report in it), `None` if this one is suppressed too.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if now.duration_since(state.window_start) >= WINDOW {
            state.window_start = now;
            state.in_window = 0;
        }
        if state.in_window >= LINES_PER_WINDOW {
            state.suppressed += 1;
            return None;
        }
        state.in_window += 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_few_lines_through_per_window_and_counts_the_rest() {
        let warnings = Warnings::default();
        let allowed = (0..1000).filter(|_| warnings.allow().is_some()).count();
        assert_eq!(allowed, LINES_PER_WINDOW as usize);
        warnings.state.lock().window_start -= WINDOW;
        assert_eq!(warnings.allow(), Some(1000 - u64::from(LINES_PER_WINDOW)));
    }
}
