//! Files only the service's own user may read: what the service keeps is personal data
//! (predictions, log lines, consented photos), so folders are created 0700 and files 0600,
//! and [`make_private`] fixes the modes of what an older version or another tool left.
//! (On systems without Unix modes these are plain creates.)
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of every folder the service creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the service creates.
pub const FILE_MODE: u32 = 0o600;

/// Options that create a file readable by its owner only.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, FILE_MODE);
    o
}

/// Opens `path` for appending, creating it 0600.
pub fn append(path: &Path) -> io::Result<File> {
    options().create(true).append(true).open(path)
}

/// Creates a new file 0600 (fails if it exists).
pub fn create_new(path: &Path) -> io::Result<File> {
    options().write(true).create_new(true).open(path)
}

/// Creates or truncates a file 0600 and writes `contents`.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    let mut f = options().write(true).create(true).truncate(true).open(path)?;
    f.write_all(contents.as_ref())
}

/// Creates a folder and its missing parents, each new one 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, DIR_MODE);
    b.create(dir)
}

/// Sets folders under `root` (itself included) to 0700 and files to 0600, without following
/// symbolic links (a model link or a mounted secret stays as it is). Returns how many modes
/// changed. A missing `root` is nothing to do.
pub fn make_private(root: &Path) -> io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::symlink_metadata(root) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut changed = 0;
        let want = if meta.is_dir() {
            DIR_MODE
        } else if meta.is_file() {
            FILE_MODE
        } else {
            return Ok(0);
        };
        if meta.permissions().mode() & 0o777 != want {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(want))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(root)? {
                changed += make_private(&entry?.path())?;
            }
        }
        Ok(changed)
    }
    #[cfg(not(unix))]
    {
        let _ = root;
        Ok(0)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_are_private_and_old_ones_are_fixed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        create_dir_all(&nested).expect("dirs");
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        write(&nested.join("f"), "x").expect("write");
        assert_eq!(mode(&nested.join("f")), FILE_MODE);
        let old = dir.path().join("old.db");
        std::fs::write(&old, "x").expect("write");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(make_private(dir.path()).expect("fix"), 2);
        assert_eq!((mode(&old), mode(dir.path())), (FILE_MODE, DIR_MODE));
        assert_eq!(make_private(&dir.path().join("absent")).expect("nothing"), 0);
    }
}
