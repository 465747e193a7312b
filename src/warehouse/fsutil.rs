//! Crash-safe file primitives: durable writes, directory fsync, atomic
//! no-replace renames and advisory locks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Flushes a directory entry table to disk (after creating, renaming or removing in it).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `path` durably: temp file in the same directory, fsync,
/// rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

fn cstr(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists
/// (Linux `renameat2(RENAME_NOREPLACE)`: the local analogue of a conditional put).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (a, b) = (cstr(from)?, cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points the symlink `link` at `target` atomically (a new symlink renamed over the old).
pub fn replace_symlink(link: &Path, target: &Path) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".tmp-link-{}-{}",
        std::process::id(),
        link.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)?;
    fsync_dir(dir)
}

/// An exclusive advisory lock on a file, released on drop (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the lock is held.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileLock { _file: file })
    }

    /// Replaces the lock file's content (who holds it, for messages to the next one).
    pub fn write_owner(&self, text: &str) -> io::Result<()> {
        self._file.set_len(0)?;
        (&self._file).write_all(text.as_bytes())?;
        self._file.sync_all()
    }

    /// Takes the lock if free; `Ok(None)` if another process holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(err);
        }
        Ok(Some(FileLock { _file: file }))
    }
}

/// Creates a directory and its parents, fsyncing each new level's parent.
/// A relative path's last parent is the empty path: the current directory.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new(""));
    create_dir_durable(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    fsync_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    })
}

/// A whole file mapped read-only (see [`map_file`]); unmapped when the
/// last `Bytes` slice of it is dropped.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is private, read-only and owned; it is only read.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr + len stays mapped and readable until drop.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map_file` mapped, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// A local file mapped read-only: its bytes come from the page cache
/// without being copied into the process. The file must not be truncated
/// while mapped: reading past its new end ends the process with SIGBUS.
/// Clones share the mapping.
#[derive(Clone)]
pub struct MappedFile {
    data: bytes::Bytes,
}

impl MappedFile {
    /// Maps `file` to be read front to back once; `None` for what cannot
    /// be mapped (an empty file, a pipe or other non-regular file), to be
    /// read instead.
    pub fn open(file: &File) -> io::Result<Option<MappedFile>> {
        Self::map(file, Some(libc::MADV_SEQUENTIAL))
    }

    /// Maps `file` to read parts of it, in any order and maybe again (the
    /// kernel's usual read-ahead, pages kept cached); `None` as for
    /// [`MappedFile::open`].
    pub fn open_for_ranges(file: &File) -> io::Result<Option<MappedFile>> {
        Self::map(file, None)
    }

    fn map(file: &File, advice: Option<libc::c_int>) -> io::Result<Option<MappedFile>> {
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 {
            return Ok(None);
        }
        let len = usize::try_from(meta.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        // SAFETY: a new private read-only mapping of an open regular file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if let Some(advice) = advice {
            // SAFETY: advice on the mapping just made; failure is harmless.
            unsafe {
                libc::madvise(ptr, len, advice);
            }
        }
        Ok(Some(MappedFile {
            data: bytes::Bytes::from_owner(Mapping { ptr, len }),
        }))
    }

    /// The file's bytes (slices of them share the mapping).
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.data
    }

    /// Drops the pages wholly inside `part` (a slice of [`Self::bytes`]
    /// read through) from the process's memory, so memory follows what is
    /// being read, not the file; reading them again maps them again from
    /// the page cache. Anything outside the mapping is left alone.
    pub fn release(&self, part: &[u8]) {
        let base = self.data.as_ptr() as usize;
        let (start, end) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
        if start < base || end > base + self.data.len() {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let (start, end) = (start.next_multiple_of(page), end / page * page);
        if end > start {
            // SAFETY: whole pages of this private read-only file mapping,
            // which MADV_DONTNEED refills from the file on the next read.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

#[cfg(test)]
mod mapped_tests {
    use super::MappedFile;

    #[test]
    fn released_pages_read_back_the_file_and_other_memory_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let text: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &text).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let m = MappedFile::open(&f).unwrap().unwrap();
        assert_eq!(m.bytes().as_ref(), &text[..]);
        // Pages released (whole ones inside the slice) are read again from the file.
        m.release(&m.bytes()[5_000..150_000]);
        assert_eq!(m.bytes().as_ref(), &text[..]);
        // A slice outside the mapping (heap memory) is not touched.
        let heap = text.clone();
        m.release(&heap);
        assert_eq!(heap, text);
        // Empty files and directories are read, not mapped.
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let empty = std::fs::File::open(dir.path().join("empty")).unwrap();
        assert!(MappedFile::open(&empty).unwrap().is_none());
        assert!(
            MappedFile::open(&std::fs::File::open(dir.path()).unwrap())
                .unwrap()
                .is_none()
        );
    }
}
