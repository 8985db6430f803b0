//! The file a snapshot is written to.
//!
//! A checkpoint is worth only as much as its durability, so the file is synced before it is
//! renamed into place, with one `fsync` at the end. A small file goes through the page cache.
//! Past its first few MiB, on Linux where the file system takes `O_DIRECT`, a snapshot's
//! blocks go from tabi's aligned buffers to the device on an I/O thread while the encoder
//! threads compress the rest: nothing is copied into the page cache, nothing is left dirty
//! for the kernel to write back, and the final sync has only the device's cache, the last
//! block and the file's length left to flush.
//!
//! The file is made beside the one it will replace, under a name no one can foresee, and
//! made new: whatever someone planted beside it (a symbolic link to another file, say) is
//! neither followed nor written over (see [`create_beside`]).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

#[cfg(target_os = "linux")]
use rustix::fs::OFlags;

/// Alignment of buffers, offsets and lengths: a multiple of any device's logical block.
const ALIGN: usize = 4096;
/// Bytes per write.
const BLOCK: usize = 1 << 20;
/// Buffers in rotation: one filling, the others queued or being written.
const BUFFERS: usize = 3;

/// A buffer whose usable part starts at an aligned address.
struct Aligned {
    raw: Vec<u8>,
    /// Where the aligned part starts in `raw`.
    start: usize,
    /// Bytes filled.
    len: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let raw = vec![0u8; BLOCK + ALIGN];
        // Found, not assumed: the allocator owes no alignment beyond the byte's.
        let start = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        Aligned { raw, start, len: 0 }
    }

    fn block(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + BLOCK]
    }

    fn filled(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// A file written through the page cache for its first [`SMALL`] bytes, and then in
/// aligned blocks past it, by a thread of its own.
pub(crate) struct Output {
    current: Aligned,
    /// Bytes given so far, the file's length at the end.
    total: u64,
    /// The file while it is written from this thread; `None` once the I/O thread has it.
    file: Option<File>,
    /// Whether the file system refused `O_DIRECT`: then all of it is written here.
    refused: bool,
    /// Buffers made so far (at most [`BUFFERS`]).
    made: usize,
    /// The I/O thread, once started.
    io: Option<Io>,
}

/// The I/O thread: full buffers go to it, written ones come back, and it ends with the file
/// or the first error.
struct Io {
    to_io: SyncSender<Aligned>,
    back: Receiver<Aligned>,
    thread: JoinHandle<io::Result<File>>,
}

impl Io {
    /// Lets the thread finish what it was given, and takes the file back.
    fn join(self) -> io::Result<File> {
        drop(self.to_io);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the writing thread panicked"))?
    }
}

/// Below this many bytes a file stays in the page cache: one sync at the end costs less
/// than waiting for the device block by block.
const SMALL: u64 = 4 << 20;

impl Output {
    /// Creates a new file beside `dest`, to be renamed over it once finished (see
    /// [`create_beside`]); gives it with its path.
    pub(crate) fn create_beside(dest: &Path) -> io::Result<(Output, PathBuf)> {
        let (file, path) = create_beside(dest)?;
        let out = Output {
            current: Aligned::new(),
            total: 0,
            file: Some(file),
            refused: false,
            made: 1,
            io: None,
        };
        Ok((out, path))
    }

    /// Writes the current buffer: here while the file is small (or cannot go direct),
    /// else by the I/O thread; then starts on an empty buffer.
    fn hand_over(&mut self) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            if self.total <= SMALL || self.refused {
                file.write_all(self.current.filled())?;
                self.current.len = 0;
                return Ok(());
            }
            // From here the blocks go past the page cache (the offset is a multiple of
            // the block, so aligned).
            if !direct(file) {
                self.refused = true;
                return self.hand_over();
            }
            let file = self
                .file
                .take()
                .ok_or_else(|| io::Error::other("no file"))?;
            let (to_io, queued) = sync_channel::<Aligned>(BUFFERS - 1);
            let (give_back, back) = sync_channel::<Aligned>(BUFFERS);
            let thread = std::thread::Builder::new()
                .name("tabi-write".into())
                .spawn(move || writer(file, queued, give_back))?;
            self.io = Some(Io {
                to_io,
                back,
                thread,
            });
        }
        let Some(io) = &self.io else {
            return Err(io::Error::other("the writing thread stopped"));
        };
        let next = if self.made < BUFFERS {
            self.made += 1;
            Some(Aligned::new())
        } else {
            io.back.recv().ok()
        };
        let sent = next.map(|next| {
            let full = std::mem::replace(&mut self.current, next);
            self.current.len = 0;
            io.to_io.send(full)
        });
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: its error says why.
            _ => Err(match self.io.take().map(Io::join) {
                Some(Err(e)) => e,
                _ => io::Error::other("the writing thread stopped"),
            }),
        }
    }

    /// Writes the last bytes and syncs. Past the page cache, the last block is padded to
    /// the alignment, and the file then cut back to its length.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        let file = match self.file.take() {
            Some(mut file) => {
                file.write_all(self.current.filled())?;
                file
            }
            None => {
                let len = self.current.len;
                if len > 0 {
                    let padded = len.next_multiple_of(ALIGN);
                    self.current.block()[len..padded].fill(0);
                    self.current.len = padded;
                    self.hand_over()?;
                }
                let file = self
                    .io
                    .take()
                    .ok_or_else(|| io::Error::other("the writing thread stopped"))?
                    .join()?;
                file.set_len(self.total)?;
                file
            }
        };
        file.sync_all()
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let at = self.current.len;
        let n = buf.len().min(BLOCK - at);
        self.current.block()[at..at + n].copy_from_slice(&buf[..n]);
        self.current.len += n;
        self.total += n as u64;
        if self.current.len == BLOCK {
            self.hand_over()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The I/O thread: writes each buffer in turn and gives it back. A file system that
/// opened the file with `O_DIRECT` but refuses such a write gets the rest through the page
/// cache instead (the final sync covers either).
fn writer(
    mut file: File,
    queued: Receiver<Aligned>,
    give_back: SyncSender<Aligned>,
) -> io::Result<File> {
    let mut direct = true;
    for b in queued {
        let data = b.filled();
        let mut at = 0;
        while at < data.len() {
            match file.write(&data[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if direct && e.kind() == io::ErrorKind::InvalidInput => {
                    direct = false;
                    buffered(&file)?;
                }
                Err(e) => return Err(e),
            }
        }
        // The writer may be gone; then the buffer is dropped.
        let _ = give_back.send(b);
    }
    Ok(file)
}

/// Sets the file to bypass the page cache; whether the file system took it.
#[cfg(target_os = "linux")]
fn direct(file: &File) -> bool {
    rustix::fs::fcntl_getfl(file)
        .and_then(|flags| rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT))
        .is_ok()
}

/// Elsewhere the file stays in the page cache.
#[cfg(not(target_os = "linux"))]
fn direct(_: &File) -> bool {
    false
}

/// Sets the file back to the page cache.
#[cfg(target_os = "linux")]
fn buffered(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    Ok(rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?)
}

#[cfg(not(target_os = "linux"))]
fn buffered(_: &File) -> io::Result<()> {
    Ok(())
}

/// How many names [`create_beside`] tries. Each is new and random, so a name is taken only
/// when someone planted a file under it, which takes foreseeing the random part.
const ATTEMPTS: usize = 16;

/// Creates a new, empty file in the directory of `dest`, to be written and then renamed over
/// `dest`; gives it with its path.
///
/// Its name is hidden and made of `dest`'s, the process id, a counter and 64 random bits, so
/// that it cannot be foreseen. The file is created exclusively (`O_CREAT | O_EXCL`), which
/// fails on any entry already under the name, a symbolic link too (POSIX: an exclusive create
/// never follows one, dangling or not, and Linux's `O_NOFOLLOW` would add nothing): so
/// nothing planted under a name is written through or over. A name that is taken is passed
/// over for the next.
pub(crate) fn create_beside(dest: &Path) -> io::Result<(File, PathBuf)> {
    create_first((0..ATTEMPTS).map(|_| dest.with_file_name(temporary_name(dest))))
}

/// Creates the first of `paths` that is free, exclusively (see [`create_beside`]).
fn create_first(paths: impl IntoIterator<Item = PathBuf>) -> io::Result<(File, PathBuf)> {
    for path in paths {
        match File::options().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every name tried for a temporary file beside it was taken",
    ))
}

/// A new hidden name for a temporary file beside `dest` (see [`create_beside`]). `dest`'s own
/// name is cut to its first 64 bytes, so that the whole stays well within a file name's
/// 255.
fn temporary_name(dest: &Path) -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    let mut stem = dest
        .file_name()
        .map_or_else(|| "tabi".into(), |n| n.to_string_lossy().into_owned());
    if stem.len() > 64 {
        let cut = (0..=64)
            .rev()
            .find(|&i| stem.is_char_boundary(i))
            .unwrap_or(0);
        stem.truncate(cut);
    }
    format!(
        ".{stem}.{}.{n}.{:016x}.tmp",
        std::process::id(),
        unforeseeable(n)
    )
}

/// 64 bits that no one outside the process can foresee: the standard library keys its hasher
/// from the operating system's random source (once per thread, and each `RandomState` after
/// the first differs from the one before), and the hash of the counter `n` and the time under
/// a secret key tells nothing of the key.
fn unforeseeable(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name under which something was planted, a symbolic link to another file (dangling
    /// or not) or a file, is passed over: nothing is written through it or over it, and the
    /// next free name is used. When none is free, nothing is written at all.
    #[cfg(unix)]
    #[test]
    fn a_planted_name_is_passed_over_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let link = d.join(".a.tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let dangling = d.join(".b.tmp");
        std::os::unix::fs::symlink(d.join("made"), &dangling).unwrap();
        let planted = d.join(".c.tmp");
        std::fs::write(&planted, b"theirs").unwrap();
        let free = d.join(".d.tmp");

        let names = [&link, &dangling, &planted, &free].map(|p| p.to_path_buf());
        let (mut file, path) = create_first(names).unwrap();
        assert_eq!(path, free);
        file.write_all(b"mine").unwrap();
        assert_eq!(std::fs::read(&free).unwrap(), b"mine");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!d.join("made").exists());
        assert_eq!(std::fs::read(&planted).unwrap(), b"theirs");

        let e = create_first([link, dangling, planted]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!d.join("made").exists());
    }

    /// Each temporary name is new, hidden, beside the file and not the file's name, and
    /// stays short for a long name.
    #[test]
    fn temporary_names_differ_and_stay_short() {
        let dest = Path::new("/some/dir/s.snap");
        let (a, b) = (temporary_name(dest), temporary_name(dest));
        assert_ne!(a, b);
        assert!(a.starts_with(".s.snap."), "{a}");
        let random = |name: &str| name.rsplit('.').nth(1).map(str::to_owned);
        assert_ne!(random(&a), random(&b));
        let long = "é".repeat(200);
        let name = temporary_name(Path::new(&long));
        assert!(name.len() < 128, "{name}");
    }
}
