//! Consented images, kept outside the database as content-addressed files
//! (`<data dir>/images/<first two hex digits>/<sha256>.<ext>`): the same photo uploaded
//! twice is one file, a reference names its content, and a reference read back from the
//! database can only ever point inside this folder.
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// Files younger than this are never swept: their prediction row may still be on its way
/// to the database (written behind the response, or queued while the database is down).
pub const SWEEP_GRACE: Duration = Duration::from_secs(3600);

/// The image folder.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// A reference is `<64 hex digits>.<known extension>`, nothing else.
pub fn valid_ref(r: &str) -> bool {
    match r.split_once('.') {
        Some((hash, ext)) => {
            hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && matches!(ext, "jpg" | "png" | "gif" | "webp" | "bmp")
        }
        None => false,
    }
}

/// The file extension of an upload, from its content.
pub fn extension(bytes: &[u8]) -> &'static str {
    use image::ImageFormat;
    match catsdogs_model::preprocess::sniff_format(bytes) {
        Some(ImageFormat::Png) => "png",
        Some(ImageFormat::Gif) => "gif",
        Some(ImageFormat::WebP) => "webp",
        Some(ImageFormat::Bmp) => "bmp",
        _ => "jpg",
    }
}

impl ImageStore {
    /// The folder `images/` under the data directory (created on first save).
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("images") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a reference lives; `None` for anything that is not a valid reference.
    pub fn path(&self, image_ref: &str) -> Option<PathBuf> {
        valid_ref(image_ref).then(|| self.dir.join(&image_ref[..2]).join(image_ref))
    }

    /// Writes the bytes (atomically: temporary file, fsync, rename) unless the same content
    /// is already there; returns the reference.
    pub fn save(&self, bytes: &[u8]) -> std::io::Result<String> {
        let hash = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
        let image_ref = format!("{hash}.{}", extension(bytes));
        let path = self.dir.join(&hash[..2]).join(&image_ref);
        if path.is_file() {
            return Ok(image_ref);
        }
        let parent = path.parent().unwrap_or(&self.dir);
        crate::private::create_dir_all(parent)?;
        let tmp = parent.join(format!(".{image_ref}.{}.tmp", uuid::Uuid::new_v4()));
        let mut f = crate::private::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(image_ref)
    }

    /// Deletes one image; true when a file was removed.
    pub fn remove(&self, image_ref: &str) -> std::io::Result<bool> {
        let Some(path) = self.path(image_ref) else { return Ok(false) };
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes every image no prediction references any more and older than `grace`
    /// (what a purge or a bulk erasure left behind); returns how many went.
    pub fn sweep(&self, referenced: &HashSet<String>, grace: Duration) -> std::io::Result<u64> {
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return Ok(0) };
        let now = SystemTime::now();
        let mut removed = 0;
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if !valid_ref(&name) || referenced.contains(&name) {
                    continue;
                }
                let age = file.metadata()?.modified().ok().and_then(|m| now.duration_since(m).ok());
                if age.is_some_and(|a| a >= grace) {
                    std::fs::remove_file(file.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Disk space of the stored images, in bytes.
    pub fn total_bytes(&self) -> u64 {
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return 0 };
        shards
            .flatten()
            .filter_map(|s| std::fs::read_dir(s.path()).ok())
            .flat_map(|files| files.flatten())
            .filter(|f| valid_ref(&f.file_name().to_string_lossy()))
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    /// Number of stored images.
    pub fn count(&self) -> usize {
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return 0 };
        shards
            .flatten()
            .filter_map(|s| std::fs::read_dir(s.path()).ok())
            .map(|files| files.flatten().filter(|f| valid_ref(&f.file_name().to_string_lossy())).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_cannot_escape_the_folder() {
        let store = ImageStore::new(Path::new("/data"));
        assert!(store.path("../../etc/passwd").is_none());
        assert!(store.path(&format!("{}.jpg", "a".repeat(64))).is_some());
        assert!(store.path(&format!("{}.exe", "a".repeat(64))).is_none());
        assert!(store.path(&format!("{}.jpg", "A".repeat(64))).is_none());
        assert!(store.path(&format!("{}/x.jpg", "a".repeat(62))).is_none());
    }

    #[test]
    fn save_dedups_and_sweep_keeps_referenced_and_recent() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::new(dir.path());
        let png = b"\x89PNG\r\n\x1a\n-not-really";
        let a = store.save(png)?;
        assert_eq!(store.save(png)?, a, "same content, same reference");
        assert!(a.ends_with(".png"));
        let b = store.save(b"\xff\xd8\xff other bytes")?;
        assert_eq!(store.count(), 2);
        // Recent orphans survive the grace period.
        assert_eq!(store.sweep(&HashSet::new(), SWEEP_GRACE)?, 0);
        // Without grace, only the unreferenced one goes.
        assert_eq!(store.sweep(&HashSet::from([a.clone()]), Duration::ZERO)?, 1);
        assert!(store.path(&a).is_some_and(|p| p.is_file()));
        assert!(store.path(&b).is_some_and(|p| !p.exists()));
        assert!(store.remove(&a)?);
        assert!(!store.remove(&a)?);
        Ok(())
    }
}
