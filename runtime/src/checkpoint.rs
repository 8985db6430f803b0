//! Writing checkpoints: a snapshot of a paused guest, straight from its live instance, to
//! any writer or to a file (whole or not at all), alone or as the next link of an incremental
//! chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tabi_libos::machine::PauseView;
use tabi_libos::{Kernel, MountKind, Object};
use tabi_snapshot::HostMount;

use crate::error::{Error, Result};

/// What a checkpoint records besides the paused instance: the modules, the host directories
/// granted (by guest path, to fingerprint), and the limits a resume will hold it to.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// The original module.
    pub original: Arc<Vec<u8>>,
    /// The instrumented module that runs.
    pub instrumented: Arc<Vec<u8>>,
    /// Host directories granted, as (host, guest path).
    pub dirs: Vec<(PathBuf, String)>,
    /// The limits a snapshot is written under (a resume would refuse more).
    pub limits: tabi_snapshot::Limits,
}

/// A digest of a host directory's tree: each entry's path, type, size and modification time,
/// in name order, depth first. Symbolic links are not followed.
///
/// The tree is walked through directory handles ([`tabi_vfs::walk_host_dir`]), so a tree
/// deeper than a path can name, which a guest can make in its own directory, is
/// fingerprinted, up to [`tabi_vfs::MAX_HOST_DEPTH`] levels; deeper is an error that says so.
pub fn fingerprint(dir: &Path) -> Result<[u8; 32]> {
    use sha2::Digest;
    /// Hashes each entry; a directory's state is its path from the top, as `/a/b`.
    struct Hashing(sha2::Sha256);
    impl tabi_vfs::HostVisitor for Hashing {
        type Dir = String;
        fn entry(
            &mut self,
            rel: &mut String,
            _: &cap_std::fs::Dir,
            name: &std::ffi::OsStr,
            meta: &cap_std::fs::Metadata,
        ) -> std::io::Result<Option<String>> {
            let h = &mut self.0;
            let name = format!("{rel}/{}", name.to_string_lossy());
            let kind = if meta.is_dir() {
                b'd'
            } else if meta.file_type().is_symlink() {
                b'l'
            } else {
                b'f'
            };
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            h.update((name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update([kind]);
            h.update(meta.len().to_le_bytes());
            h.update(mtime.to_le_bytes());
            Ok(meta.is_dir().then_some(name))
        }
        fn leave(&mut self, _: String) -> std::io::Result<()> {
            Ok(())
        }
    }
    let read = || {
        let root = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority())?;
        let mut hashing = Hashing(sha2::Sha256::new());
        tabi_vfs::walk_host_dir(&root, String::new(), &mut hashing)?;
        Ok::<_, std::io::Error>(hashing.0.finalize().into())
    };
    read().map_err(Error::io(format!(
        "cannot read host directory `{}`",
        dir.display()
    )))
}

/// Writes a snapshot of the pause `paused` to `path` (through a temporary file and a rename,
/// so that a failed write never leaves half a snapshot under that name).
pub(crate) fn write_snapshot(
    path: &Path,
    paused: &PauseView<'_>,
    origin: &Origin,
) -> Result<tabi_snapshot::Summary> {
    write_file(path, |sink| write_to(sink, paused, origin))
}

/// Where a snapshot file is written.
type FileSink = tabi_snapshot::IoSink<crate::outfile::Output>;

/// Writes a snapshot file through `write`, by way of a temporary file and a rename.
pub(crate) fn write_file(
    path: &Path,
    write: impl FnOnce(&mut FileSink) -> Result<tabi_snapshot::Summary>,
) -> Result<tabi_snapshot::Summary> {
    let (out, tmp) = crate::outfile::Output::create_beside(path).map_err(Error::io(format!(
        "cannot create a temporary file beside `{}`",
        path.display()
    )))?;
    let mut sink = tabi_snapshot::IoSink(out);
    let written = write(&mut sink).and_then(|summary| {
        sink.0
            .finish()
            .map_err(Error::io(format!("cannot write `{}`", tmp.display())))?;
        Ok(summary)
    });
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A file the snapshot replaces is held open across the rename, so that freeing its blocks
    // (milliseconds for tens of MiB, more on a disk mounted with `discard`) happens when the
    // handle is dropped, on a thread of its own, and not inside the rename.
    let replaced = std::fs::File::open(path).ok();
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("cannot write `{}`", path.display()))(e));
    }
    // The directory is synced before the replaced file is released, so that its sync does
    // not wait for the freeing too.
    let synced = sync_parent(path).map_err(Error::io(format!(
        "cannot sync the directory of `{}`",
        path.display()
    )));
    if let Some(old) = replaced {
        // Without a thread, the handle is simply dropped here.
        let _ = std::thread::Builder::new()
            .name("tabi-release".into())
            .spawn(move || drop(old));
    }
    synced?;
    Ok(summary)
}

/// Syncs the directory holding `path`, so that a rename into it survives a crash. Where a
/// directory cannot be opened or synced (some platforms and file systems), there is nothing
/// more to do than the file's own sync.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::File::open(dir) {
        Ok(d) => match d.sync_all() {
            // Some file systems do not sync directories, and say so.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            r => r,
        },
        Err(_) => Ok(()),
    }
}

/// The successive checkpoints of one run, each after the first written incrementally: it
/// holds only the pages written since the one before and names that one as its parent.
///
/// Which pages were written comes from the host's dirty-page tracking of the instance's
/// memories (see [`tabi_hostmem::written`]), started at the first checkpoint; nothing is
/// compared and no copy of the memories is kept. Where the host cannot track, or the
/// tracking lost sight of a memory (wasmi moves a memory that grows), or a write failed,
/// the next checkpoint is a full one and a new chain starts there.
#[derive(Debug, Default)]
pub struct Chain {
    last: Option<Link>,
}

/// The last checkpoint of a chain.
#[derive(Debug)]
struct Link {
    hash: [u8; 32],
    kernel: Vec<u8>,
    /// Per memory: its tracker, and its length at the checkpoint.
    memories: Vec<(tabi_hostmem::written::Tracker, usize)>,
}

/// A checkpoint a [`Chain`] wrote.
#[derive(Clone, Debug)]
pub struct ChainWritten {
    /// What was written.
    pub summary: tabi_snapshot::Summary,
    /// For an incremental checkpoint, the content hash of its parent (the checkpoint before).
    pub parent: Option<[u8; 32]>,
}

impl Chain {
    /// A chain with no checkpoint yet: the first is full.
    pub fn new() -> Chain {
        Chain::default()
    }

    /// Writes the checkpoint of `paused` to `sink`: incremental against the chain's last
    /// checkpoint when it can be, else full. The paused instance must be the one the chain's
    /// earlier checkpoints were taken from, continued in place.
    pub(crate) fn write_to<S: tabi_snapshot::Sink>(
        &mut self,
        sink: &mut S,
        paused: &PauseView<'_>,
        origin: &Origin,
    ) -> Result<ChainWritten>
    where
        S::Error: std::fmt::Display,
    {
        let kernel = encode_kernel(&paused.process.kernel)?;
        // Taken out: if anything below fails, the next checkpoint is a full one.
        let mut last = self
            .last
            .take()
            .filter(|l| l.memories.len() == paused.memories.len());
        // Incremental when every memory's tracker answers.
        let written: Option<Vec<tabi_hostmem::resident::Touched>> = last.as_mut().and_then(|l| {
            l.memories
                .iter_mut()
                .zip(paused.memories)
                .map(|((tracker, _), mem)| tracker.take(mem))
                .collect()
        });
        let (parent, trackers) = match (last, written) {
            (Some(link), Some(written)) => {
                let (trackers, lens): (Vec<_>, Vec<_>) = link.memories.into_iter().unzip();
                (Some((link.hash, link.kernel, lens, written)), trackers)
            }
            // A full checkpoint; tracking starts (again) from it. Any old tracker was
            // dropped, which unregistered its memory.
            _ => (
                None,
                paused
                    .memories
                    .iter()
                    .map_while(|m| tabi_hostmem::written::Tracker::start(m))
                    .collect(),
            ),
        };
        let base = parent
            .as_ref()
            .map(|(hash, kernel, lens, written)| tabi_snapshot::Base {
                hash: *hash,
                memories: lens
                    .iter()
                    .zip(written)
                    .map(|(&len, blocks)| tabi_snapshot::Prior::Written { len, blocks })
                    .collect(),
                kernel,
            });
        let summary = write_with_base(sink, paused, &kernel, origin, base.as_ref())?;
        if trackers.len() == paused.memories.len() {
            self.last = Some(Link {
                hash: summary.hash,
                kernel,
                memories: trackers
                    .into_iter()
                    .zip(paused.memories.iter().map(|m| m.len()))
                    .collect(),
            });
        }
        Ok(ChainWritten {
            summary,
            parent: parent.map(|(hash, ..)| hash),
        })
    }

    /// [`Chain::write_to`] a file, through a temporary file and a rename.
    pub(crate) fn write(
        &mut self,
        path: &Path,
        paused: &PauseView<'_>,
        origin: &Origin,
    ) -> Result<ChainWritten> {
        let mut out = None;
        let written = write_file(path, |sink| {
            let w = self.write_to(sink, paused, origin)?;
            let summary = w.summary.clone();
            out = Some(w);
            Ok(summary)
        });
        if written.is_err() {
            // The file is not there to be a parent.
            self.last = None;
        }
        written?;
        out.ok_or_else(|| Error::Checkpoint("no checkpoint was written".into()))
    }
}

/// Writes a snapshot of the pause `paused` to `sink`.
pub(crate) fn write_to<S: tabi_snapshot::Sink>(
    sink: &mut S,
    paused: &PauseView<'_>,
    origin: &Origin,
) -> Result<tabi_snapshot::Summary>
where
    S::Error: std::fmt::Display,
{
    let kernel = encode_kernel(&paused.process.kernel)?;
    write_with_base(sink, paused, &kernel, origin, None)
}

/// The kernel state, encoded.
fn encode_kernel(kernel: &Kernel) -> Result<Vec<u8>> {
    tabi_libos::encode_state(kernel)
        .map_err(|e| Error::Checkpoint(format!("cannot encode the kernel state: {e}")))
}

/// Writes a snapshot of `paused`, whose kernel state encodes to `kernel`, incremental when
/// there is a `base`.
fn write_with_base<S: tabi_snapshot::Sink>(
    sink: &mut S,
    paused: &PauseView<'_>,
    kernel: &[u8],
    origin: &Origin,
    base: Option<&tabi_snapshot::Base<'_>>,
) -> Result<tabi_snapshot::Summary>
where
    S::Error: std::fmt::Display,
{
    let manifest = crate::module::manifest(&origin.instrumented)?;
    let mut mounts = Vec::new();
    for m in paused.process.kernel.mounts() {
        if let MountKind::Host { index } = m.kind {
            let (host, _) = origin
                .dirs
                .iter()
                .find(|(_, g)| *g == m.guest_path)
                .ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "no host directory known for mount {}",
                        m.guest_path
                    ))
                })?;
            open_host_paths_exist(&paused.process.kernel, index, host, &m.guest_path)?;
            mounts.push(HostMount {
                guest_path: m.guest_path.clone(),
                fingerprint: fingerprint(host)?,
            });
        }
    }
    let state = paused.state;
    let contents = tabi_snapshot::Contents {
        identity: tabi_snapshot::Identity {
            original_sha256: manifest.original_sha256,
            module_sha256: tabi_snapshot::sha256(&origin.instrumented),
            options: crate::module::identity_options(manifest.version, &manifest.options),
            parent: None,
        },
        module: Some(&origin.original),
        entry: &state.entry,
        budget: state.budget,
        points: paused.points,
        globals: &state.globals,
        tables: &state.tables,
        memories: paused.memories.to_vec(),
        stack: &state.stack,
        kernel,
        mounts: &mounts,
        extensions: &[],
    };
    tabi_snapshot::write_within(sink, &contents, base, &origin.limits)
        .map_err(|e| Error::Checkpoint(e.to_string()))
}

/// Refuses a checkpoint that a resume could not reopen: every host file or directory the guest
/// has open on host mount `index` (the directory `host`) must still be found at the path the
/// kernel knows it by. The kernel follows the guest's own renames and keeps the files it
/// unlinks; this catches what was moved or removed from outside the guest while it was open.
///
/// The paths come from the kernel state, which a resumed snapshot supplied: each is looked up
/// inside `host` only (see [`metadata_within`]), so a forged one learns nothing of the host
/// outside it.
fn open_host_paths_exist(kernel: &Kernel, index: u32, host: &Path, guest_path: &str) -> Result<()> {
    let mut root = None;
    for (fd, d) in kernel.descriptors() {
        let (Object::HostFile { mount, path, .. } | Object::HostDir { mount, path, .. }) =
            &d.object
        else {
            continue;
        };
        if *mount != index {
            continue;
        }
        let root = match &mut root {
            Some(root) => root,
            None => root.insert(
                cap_std::fs::Dir::open_ambient_dir(host, cap_std::ambient_authority()).map_err(
                    Error::io(format!("cannot open host directory `{}`", host.display())),
                )?,
            ),
        };
        if let Err(e) = metadata_within(root, path) {
            return Err(Error::Checkpoint(format!(
                "descriptor {fd} of the guest is `{guest_path}/{path}`, which was moved or removed outside the guest while open; a resume could not reopen it ({e})"
            )));
        }
    }
    Ok(())
}

/// The metadata of what `path` names inside the host directory `root`, looked up through its
/// handle as the guest's own lookups are: `..` above it, an absolute path, or a symbolic link
/// that leads out of it is an error, whatever is there on the host.
fn metadata_within(root: &cap_std::fs::Dir, path: &str) -> std::io::Result<cap_std::fs::Metadata> {
    match path {
        "" | "." => root.dir_metadata(),
        path => root.metadata(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tabi_libos::host::StdHost;

    /// A writer for [`write_file`] that writes `bytes`, in pieces of an odd size.
    fn writing(bytes: &[u8]) -> impl FnOnce(&mut FileSink) -> Result<tabi_snapshot::Summary> {
        let bytes = bytes.to_vec();
        move |sink: &mut FileSink| {
            for piece in bytes.chunks(100_003) {
                std::io::Write::write_all(&mut sink.0, piece).map_err(Error::io("write"))?;
            }
            Ok(tabi_snapshot::Summary::default())
        }
    }

    /// A checkpoint is refused, naming the file, when a host file the guest has open was
    /// removed from outside it; one the guest unlinked itself is kept by the kernel and passes.
    #[test]
    fn open_host_files_removed_from_outside_refuse_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = StdHost::new();
        host.fs.grant(dir.path()).unwrap();
        let mut k = Kernel::new();
        let root = k.mount_host("/data", 0).unwrap();
        let opts = tabi_libos::OpenOptions {
            create: true,
            rights: tabi_libos::abi::rights::FILE,
            ..Default::default()
        };
        let mine = k.open_at(root, "mine.txt", opts, &mut host).unwrap();
        k.write(mine, b"mine", None, &mut host).unwrap();
        k.unlink_file_at(root, "mine.txt", &mut host).unwrap();
        let theirs = k.open_at(root, "theirs.txt", opts, &mut host).unwrap();
        open_host_paths_exist(&k, 0, dir.path(), "/data").unwrap();
        std::fs::remove_file(dir.path().join("theirs.txt")).unwrap();
        let e = open_host_paths_exist(&k, 0, dir.path(), "/data").unwrap_err();
        let e = e.to_string();
        assert!(e.contains(&format!("descriptor {theirs}")), "{e}");
        assert!(e.contains("/data/theirs.txt"), "{e}");
        assert!(e.contains("outside the guest"), "{e}");
    }

    /// The host paths of a snapshot's kernel state are looked up inside their host directory
    /// only. A forged state whose descriptor names `../secret`, an absolute path, or a link
    /// in the directory that leads out of it, learns nothing of the file outside, which
    /// exists: each is refused as not found.
    #[cfg(unix)]
    #[test]
    fn forged_host_paths_are_not_looked_up_outside_their_directory() {
        let root = tempfile::tempdir().unwrap();
        let granted = root.path().join("granted");
        std::fs::create_dir(&granted).unwrap();
        let secret = root.path().join("secret");
        std::fs::write(&secret, b"outside").unwrap();
        std::os::unix::fs::symlink(&secret, granted.join("out")).unwrap();
        let absolute = secret.to_str().unwrap().to_string();
        for forged in ["../secret", absolute.as_str(), "out"] {
            // A descriptor on a file of the directory named as long as the forged path, then
            // renamed in the encoded state.
            let placeholder = "p".repeat(forged.len());
            std::fs::write(granted.join(&placeholder), b"inside").unwrap();
            let mut host = StdHost::new();
            host.fs.grant(&granted).unwrap();
            let mut k = Kernel::new();
            let dir = k.mount_host("/data", 0).unwrap();
            let opts = tabi_libos::OpenOptions {
                rights: tabi_libos::abi::rights::FILE,
                ..Default::default()
            };
            let fd = k.open_at(dir, &placeholder, opts, &mut host).unwrap();
            open_host_paths_exist(&k, 0, &granted, "/data").unwrap();
            let mut state = tabi_libos::encode_state(&k).unwrap();
            let at = state
                .windows(placeholder.len())
                .position(|w| w == placeholder.as_bytes())
                .unwrap();
            state[at..at + forged.len()].copy_from_slice(forged.as_bytes());
            let k = tabi_libos::decode_state(&state).unwrap();
            let e = open_host_paths_exist(&k, 0, &granted, "/data").unwrap_err();
            let e = e.to_string();
            assert!(e.contains(&format!("descriptor {fd}")), "{forged}: {e}");
            assert!(e.contains(&format!("/data/{forged}")), "{forged}: {e}");
        }
    }

    /// A snapshot that replaces a file takes its name whole: a reader holding the old file
    /// still reads the old bytes (it was not written over), the name gives the new bytes, and
    /// no temporary file is left beside it.
    #[test]
    fn a_replaced_file_is_swapped_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_file(&path, writing(b"first")).unwrap();
        let mut held = std::fs::File::open(&path).unwrap();
        // Past the page cache after its first 4 MiB (on Linux), with a last block to pad and
        // cut back, written in pieces of another size.
        let big: Vec<u8> = (0..(9 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
        write_file(&path, writing(&big)).unwrap();
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut held, &mut old).unwrap();
        assert_eq!(old, b"first");
        assert_eq!(std::fs::read(&path).unwrap(), big);
        // Replaced again while nothing holds it: the released file goes on a thread.
        write_file(&path, writing(b"third")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.snap"]);
    }

    /// On tmpfs (`/dev/shm`), which takes `O_DIRECT` only on recent kernels, a large snapshot
    /// reads back the same whichever way it was written.
    #[test]
    fn a_file_system_without_direct_io_gets_the_file_whole() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let path = dir.path().join("s.snap");
        let big: Vec<u8> = (0..(6 << 20) + 7u32).map(|i| (i % 253) as u8).collect();
        write_file(&path, writing(&big)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), big);
    }

    /// A failed write leaves neither a temporary file nor a change under the name.
    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        write_file(&path, writing(b"kept")).unwrap();
        let e = write_file(&path, |sink| {
            std::io::Write::write_all(&mut sink.0, b"half").map_err(Error::io("write"))?;
            Err(Error::Checkpoint("the encoder stopped".into()))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that is not there is an error, not a panic.
        let missing = dir.path().join("no/such/dir/s.snap");
        assert!(write_file(&missing, writing(b"x")).is_err());
    }
}
