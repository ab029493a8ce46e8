//! The one error type of `sds-source-fs`.

use std::{io, path::PathBuf};

/// An ambient failure of a directory source: the directory as a whole cannot be read.
///
/// A problem with one credential (a missing key, a file that cannot be read, a certificate that
/// does not parse) is not an `Error` of this type: it rejects that credential in the
/// [`Update`](sds_core::Update), and the publisher keeps serving its last good version. Nor is a
/// directory that cannot be watched: the source logs it once and reads it periodically.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential directory cannot be listed: it (or a parent) is missing, it is not a
    /// directory, or it is unreadable. A [`DirSource`](crate::DirSource) yields this once and
    /// reads the directory again when it (or a parent) appears, and at every rescan.
    #[error("cannot read the credential directory {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why it cannot be listed.
        #[source]
        source: io::Error,
    },
}
