//! The one error type of `sds-source-fs`.

use std::{io, path::PathBuf};

/// An ambient failure of a directory source: the directory as a whole cannot be read or
/// watched.
///
/// A problem with one credential (a missing key, a file that cannot be read, a certificate that
/// does not parse) is not an `Error` of this type: it rejects that credential in the
/// [`Update`](sds_core::Update), and the publisher keeps serving its last good version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential directory cannot be listed: it is missing, is not a directory, or is
    /// unreadable. A [`DirSource`](crate::DirSource) reloads when it appears again.
    #[error("cannot read the credential directory {}", path.display())]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why it cannot be listed.
        #[source]
        source: io::Error,
    },

    /// Changes to the directory cannot be watched (e.g. the parent directory does not exist,
    /// or the inotify limits of the host are reached).
    #[error("cannot watch {} for changes", path.display())]
    Watch {
        /// The path that could not be watched.
        path: PathBuf,
        /// What the watcher reported.
        #[source]
        source: io::Error,
    },
}
