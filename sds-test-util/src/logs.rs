//! Capturing what a test logs through `tracing`, to assert on the text.

use std::sync::Arc;

use parking_lot::Mutex;

/// A `tracing` writer that keeps everything in memory; clones share the buffer.
///
/// ```
/// let captured = sds_test_util::logs::Captured::default();
/// let subscriber = tracing_subscriber::fmt()
///     .with_writer(captured.clone())
///     .with_ansi(false)
///     .finish();
/// tracing::subscriber::with_default(subscriber, || tracing::warn!("hello"));
/// assert!(captured.text().contains("hello"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }

    /// Forgets everything written so far.
    pub fn clear(&self) {
        self.0.lock().clear();
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}
