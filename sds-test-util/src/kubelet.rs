//! Kubernetes Secret volumes on disk, written the way kubelet's `AtomicWriter` writes them.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

/// A Kubernetes secret volume mounted at a directory, updated like kubelet's `AtomicWriter`:
/// the payload goes into a new `..<timestamp>` directory, a `..data_tmp` symlink to it is
/// renamed over `..data`, each user-visible file is a symlink `<file> -> ..data/<file>`, and the
/// previous timestamped directory is removed last.
#[derive(Debug)]
pub struct KubeletVolume {
    dir: PathBuf,
    generation: u32,
}

impl KubeletVolume {
    /// Creates the (empty) mount point.
    pub fn create(dir: PathBuf) -> Self {
        fs::create_dir_all(&dir).expect("create the volume's mount point");
        Self { dir, generation: 0 }
    }

    /// Publishes a new payload, replacing the previous one atomically.
    pub fn write(&mut self, payload: &[(&str, &[u8])]) {
        self.generation += 1;
        let ts_name = format!("..2026_11_27_10_00_00.{:09}", self.generation);
        let ts_dir = self.dir.join(&ts_name);
        fs::create_dir(&ts_dir).expect("create the timestamped directory");
        for (file, bytes) in payload {
            fs::write(ts_dir.join(file), bytes).expect("write a payload file");
        }
        let data = self.dir.join("..data");
        let old = fs::read_link(&data).ok();
        let data_tmp = self.dir.join("..data_tmp");
        symlink(&ts_name, &data_tmp).expect("create ..data_tmp");
        fs::rename(&data_tmp, &data).expect("rename ..data_tmp over ..data");
        for (file, _) in payload {
            let visible = self.dir.join(file);
            if fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new("..data").join(file), &visible)
                    .expect("create the user-visible symlink");
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old)).expect("remove the old timestamped directory");
        }
    }
}
