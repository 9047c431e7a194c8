//! The one durable write: every file the gateway keeps (job records, webhook deliveries, spool
//! entries, idempotency records, stored outputs) reaches disk through [`write_file`] or
//! [`copy_file`]; blobs, whose name (their hash) is known only once their bytes are written, use
//! its parts: [`temporary_beside`], [`rename`] and [`sync_parent`].
//!
//! The recipe is the classic one: write a hidden temporary file beside the target, `fsync` it,
//! rename it over the target, then `fsync` the folder so the rename itself survives a power cut.
//! If anything fails the temporary file is removed and the target is left as it was: a reader
//! sees the old file or the new one, never a torn mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::ids;

/// Writes `bytes` to `path` durably and atomically (see the module documentation).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, |file| file.write_all(bytes))
}

/// Has `fill` write the new contents of `path` into a temporary file beside it, then makes them
/// durable and renames them into place (see the module documentation). The folder is created if
/// it is missing. `fill` gets the open temporary file; it need not flush or sync it.
pub fn write_file(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let temp = temporary_beside(path)?;
    let written = File::create(&temp)
        .and_then(|mut file| {
            fill(&mut file)?;
            file.flush()?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_parent(path)
}

/// Puts a durable copy of `source` at `path`, atomically like [`write_file`]: a hard link when
/// both are on one file system (no byte copied: `source` and `path` then share their contents),
/// else a streamed copy (never the whole file in memory). `source` stays where it is.
pub fn copy_file(source: &Path, path: &Path) -> io::Result<()> {
    let temp = temporary_beside(path)?;
    let placed = link_or_copy(source, &temp).and_then(|()| fs::rename(&temp, path));
    if let Err(error) = placed {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_parent(path)
}

/// Makes `temp` (a new path, a temporary one from [`temporary_beside`]) a synced copy of
/// `source`: a hard link when both are on one file system, else a streamed copy. The caller
/// renames it into place, or removes it on error.
pub fn link_or_copy(source: &Path, temp: &Path) -> io::Result<()> {
    fs::hard_link(source, temp)
        .or_else(|_| fs::copy(source, temp).map(drop))
        .and_then(|()| File::open(temp)?.sync_all())
}

/// Renames `from` (a file already written and synced, on the same file system) over `to`, and
/// syncs `to`'s folder so the rename survives a power cut.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_parent(to)
}

/// Syncs the folder that holds `path`, making a rename or a new file in it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// A fresh hidden temporary path beside `path` (`.NAME.tmp-UUID`), its folder created.
///
/// Leftovers of a crash are recognisable by [`is_temporary`] and safe to delete.
pub fn temporary_beside(path: &Path) -> io::Result<PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no folder"))?;
    if !dir.as_os_str().is_empty() {
        fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok(dir.join(format!(
        ".{}{TEMP_MARK}{}",
        name.to_string_lossy(),
        ids::new_uuid()
    )))
}

/// Whether `name` is a temporary file left by an interrupted [`write_file`].
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

const TEMP_MARK: &str = ".tmp-";

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("durable-test-{}", ids::new_uuid()));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_and_replaces_leaving_no_temporary() {
        let dir = scratch();
        let path = dir.join("record.json");
        write_bytes(&path, b"one").expect("first write");
        write_bytes(&path, b"two").expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(names(&dir), ["record.json"]);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let dir = scratch();
        let path = dir.join("record.json");
        write_bytes(&path, b"old").expect("first write");
        let failed = write_file(&path, |file| {
            file.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(names(&dir), ["record.json"]);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn copies_leave_the_source_and_no_temporary() {
        let dir = scratch();
        let source = dir.join("staged.bin");
        write_bytes(&source, b"image").expect("source written");
        let path = dir.join("kept/0.png");
        copy_file(&source, &path).expect("copied");
        assert_eq!(fs::read(&path).expect("read"), b"image");
        assert_eq!(fs::read(&source).expect("read"), b"image");
        assert_eq!(names(&dir.join("kept")), ["0.png"]);
        let missing = copy_file(&dir.join("gone.bin"), &dir.join("kept/1.png"));
        assert!(missing.is_err());
        assert_eq!(names(&dir.join("kept")), ["0.png"]);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn creates_the_folder_and_recognises_its_temporaries() {
        let dir = scratch();
        let path = dir.join("a/b/file.bin");
        write_bytes(&path, b"x").expect("write into new folders");
        assert_eq!(fs::read(&path).expect("read"), b"x");
        let temp = temporary_beside(&path).expect("temp path");
        let temp_name = temp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(is_temporary(&temp_name), "{temp_name}");
        assert!(!is_temporary("file.bin"));
        fs::remove_dir_all(dir).ok();
    }
}
