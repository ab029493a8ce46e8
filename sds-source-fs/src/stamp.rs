//! What a file looks like without reading it: enough to tell that it changed.

use std::{
    fs::Metadata,
    os::unix::fs::MetadataExt as _,
    time::{Duration, SystemTime},
};

/// How recently a file may have changed for its stamp not to be trusted yet. File times are
/// coarse (a kernel tick; a second or two on some file systems), so a file rewritten in the
/// same tick as it was looked at, with the same size, keeps its stamp. A stamp this recent is
/// confirmed by reading the file again (and comparing its content's digest) at the next reload.
const RECENT: Duration = Duration::from_secs(2);

/// The identity of a file or directory (following symlinks) and what changes with its content:
/// device, inode, size, mode, modification and status-change times. An in-place write changes
/// the size or the times, a rename over it changes the inode, a kubelet `..data` swap changes
/// the inode the name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    id: FileId,
    size: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Which file or directory a path leads to: device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

// === impl Stamp ===

impl Stamp {
    /// The stamp of what `metadata` describes.
    pub(crate) fn of(metadata: &Metadata) -> Self {
        Self {
            id: FileId::of(metadata),
            size: metadata.size(),
            mode: metadata.mode(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// The file this stamp is of.
    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// Whether the file changed so shortly before `looked_at` (or after it: clocks differ on
    /// network file systems) that a change in the same tick could have kept this stamp.
    pub(crate) fn is_recent(&self, looked_at: SystemTime) -> bool {
        let Ok(now) = looked_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return true;
        };
        let horizon = i128::try_from(now.saturating_sub(RECENT).as_nanos()).unwrap_or(i128::MAX);
        let nanos = |(secs, nsec): (i64, i64)| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        nanos(self.mtime) >= horizon || nanos(self.ctime) >= horizon
    }
}

// === impl FileId ===

impl FileId {
    /// The file `metadata` describes.
    pub(crate) fn of(metadata: &Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, time::SystemTime};

    use super::{RECENT, Stamp};

    #[test]
    fn a_file_written_just_now_is_recent_and_later_not() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("f");
        fs::write(&path, "x").expect("write");
        let stamp = Stamp::of(&fs::metadata(&path).expect("stat"));
        let now = SystemTime::now();
        assert!(stamp.is_recent(now));
        assert!(!stamp.is_recent(now + RECENT + RECENT));
        assert!(stamp.is_recent(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn an_in_place_write_changes_the_stamp() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("f");
        fs::write(&path, "one").expect("write");
        let before = Stamp::of(&fs::metadata(&path).expect("stat"));
        fs::write(&path, "two!").expect("rewrite in place");
        let after = Stamp::of(&fs::metadata(&path).expect("stat"));
        assert_eq!(before.id(), after.id());
        assert_ne!(before, after);
    }
}
