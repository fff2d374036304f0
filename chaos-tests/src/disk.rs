//! A small tmpfs for a node's data directory, to fill its disk on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created if missing).
    ///
    /// # Panics
    ///
    /// If the mount fails: it needs root (CI and the development machine run as root).
    pub fn mount(path: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a {bytes}-byte tmpfs at {} failed (the disk-full scenario needs root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self { path: path.to_owned() }
    }

    /// Fills the file system until writes fail with "no space left"; returns the filler file,
    /// whose removal gives the space back.
    ///
    /// # Panics
    ///
    /// If writing fails for another reason.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler file");
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break, // ENOSPC
                Err(error) => panic!("filling {}: {error}", self.path.display()),
            }
        }
        // Whatever is left is smaller than a chunk: take it too.
        let mut byte = [0u8; 1];
        while file.write(&byte).is_ok_and(|written| written == 1) {
            byte[0] = byte[0].wrapping_add(1);
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
