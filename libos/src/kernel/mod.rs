//! The kernel's state and the operations on it.
//!
//! [`Kernel`] is plain data: the process' arguments and environment, a table of descriptors
//! (index handles to enums), a table of other handles ([`crate::handles`]), the in-memory file
//! system, the clock and random-generator state, a blocking call a checkpoint interrupted, and
//! the exit status. It serializes with serde, so a checkpoint is the kernel plus the guest's
//! own memory. Its methods follow the shape of the WASI 0.2 interfaces (descriptors, streams,
//! clocks, random) so that each ABI decoder on top is thin; [`crate::p1`] is the first one.
//!
//! # Layout
//!
//! - this module: the state, the descriptor table, mounts, the check of a state from outside;
//! - `object`: the `Kind` trait, what one kind of object does, and the one place
//!   that maps an [`Object`] to its kind; one module per kind: `stdio` (standard streams),
//!   `memory` (in-memory files and directories), `hostobj` (host files and directories);
//! - `descriptor_ops`: the operations on a descriptor, checks first, then the kind;
//! - `paths`: path operations from a directory descriptor;
//! - `clock`: clocks and random numbers.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::abi::{fdflags, rights};
use crate::errno::Errno;
use crate::host::Host;
use tabi_vfs::{
    DirEntry, FileType, FsError, HostFs, HostObj, HostOpen, Ino, MAX_SYMLINKS, MemFs, NAME_MAX,
    SetTime, Stat,
};

mod clock;
mod descriptor_ops;
mod hostobj;
mod memory;
mod object;
mod paths;
mod stdio;

pub use clock::{Clocks, Random};
pub use object::Readiness;

/// The object a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// The host's standard input.
    Stdin,
    /// The host's standard output.
    Stdout,
    /// The host's standard error.
    Stderr,
    /// A directory of the in-memory file system.
    MemDir {
        /// Its inode.
        ino: Ino,
    },
    /// A regular file (or other non-directory) of the in-memory file system.
    MemFile {
        /// Its inode.
        ino: Ino,
        /// Current offset of the stream.
        offset: u64,
    },
    /// A directory of a host mount.
    HostDir {
        /// Index of the mount.
        mount: u32,
        /// Key under which the host caches its handle.
        key: u64,
        /// Path below the mount root, used to reopen it after a restore.
        path: String,
    },
    /// A file of a host mount.
    HostFile {
        /// Index of the mount.
        mount: u32,
        /// Key under which the host caches its handle.
        key: u64,
        /// Path below the mount root, used to reopen it after a restore.
        path: String,
        /// Current offset of the stream.
        offset: u64,
    },
}

impl Object {
    fn host_obj(&self) -> Option<HostObj<'_>> {
        match self {
            Object::HostDir { mount, key, path }
            | Object::HostFile {
                mount, key, path, ..
            } => Some(HostObj {
                mount: *mount,
                key: *key,
                path,
            }),
            _ => None,
        }
    }
}

/// An entry of the descriptor table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What it refers to.
    pub object: Object,
    /// Rights this descriptor has (preview-1 `rights`).
    pub rights: u64,
    /// Rights descriptors opened through this one may have.
    pub inheriting: u64,
    /// Descriptor flags (preview-1 `fdflags`).
    pub flags: u16,
    /// Opened with read access.
    pub read: bool,
    /// Opened with write access.
    pub write: bool,
    /// For a preopened directory, the guest path it was granted as.
    pub preopen: Option<String>,
}

impl Descriptor {
    /// Fails with `NotCapable` unless the descriptor has all of `needed`.
    pub fn require(&self, needed: u64) -> Result<(), Errno> {
        if self.rights & needed == needed {
            Ok(())
        } else {
            Err(Errno::NotCapable)
        }
    }

    /// A read or write at a given position also needs `FD_SEEK` on a file; on a stream it is
    /// `ESPIPE`, which the stream itself reports.
    fn require_positional(&self, at: Option<u64>) -> Result<(), Errno> {
        match (&self.object, at) {
            (Object::MemFile { .. } | Object::HostFile { .. }, Some(_)) => {
                self.require(rights::FD_SEEK)
            }
            _ => Ok(()),
        }
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.object, Object::MemDir { .. } | Object::HostDir { .. })
    }
}

/// Where a mount's files live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// In the kernel's in-memory file system (travels with a checkpoint).
    Memory {
        /// Root directory of the tree.
        root: Ino,
    },
    /// In a host directory that whoever runs the guest grants, as host mount `index`.
    Host {
        /// Index among the host mounts.
        index: u32,
    },
}

/// A directory the guest was given at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The path the guest sees (its preopen name).
    pub guest_path: String,
    /// Where its files live.
    pub kind: MountKind,
}

/// How to open a path (the kernel's form of `open-at`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Follow a symlink in the final position.
    pub follow: bool,
    /// Create the file if missing.
    pub create: bool,
    /// With `create`, fail if it exists.
    pub exclusive: bool,
    /// Truncate to zero length.
    pub truncate: bool,
    /// Fail unless it is a directory.
    pub directory: bool,
    /// Rights asked for the new descriptor. Only its access mode follows from them (read
    /// with `FD_READ` or `FD_READDIR`, write with a right that changes the file); the
    /// descriptor then holds every right its kind and access allow that the directory passes on.
    /// A directory opened through another inherits that one's inheriting rights (whatever
    /// `path_open` asked for), and a file has none.
    pub rights: u64,
    /// Descriptor flags of the new descriptor.
    pub flags: u16,
}

/// Most directory entries [`Kernel::other_name`] looks at for another name of a host file the
/// guest unlinked while open.
const OTHER_NAME_SEARCH: usize = 100_000;

/// Most descriptors a guest may hold open at once.
pub const MAX_DESCRIPTORS: usize = 16 * 1024;

/// What whoever runs or resumes a guest allows its kernel state. A snapshot never sets these:
/// [`Kernel::check`] applies the resumer's to a decoded state, and refuses one that needs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Most bytes the in-memory file system may hold (see [`MemFs::set_limit_bytes`]).
    pub fs_bytes: u64,
    /// Longest sleep a resumed guest may still owe, in nanoseconds (see [`Kernel::settle`]).
    pub owed_sleep_ns: u64,
    /// What the guest's wasi-nn state may hold (models, tensors, handles).
    pub nn: tabi_nn::Limits,
}

impl Default for StateLimits {
    /// The in-memory file system's default limit, and a day of owed sleep.
    fn default() -> Self {
        StateLimits {
            fs_bytes: MemFs::DEFAULT_LIMIT_BYTES,
            owed_sleep_ns: 24 * 3600 * 1_000_000_000,
            nn: tabi_nn::Limits::default(),
        }
    }
}

/// Why a kernel state from outside (a snapshot) cannot be run: the first broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidState(pub String);

impl core::fmt::Display for InvalidState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for InvalidState {}

/// Whether `path` is a path below a mount root as the kernel records it: `.` for the root,
/// else relative components that are neither empty, `.` nor `..`, within the length limits.
fn is_mount_path(path: &str) -> bool {
    path == "."
        || (path.len() <= tabi_vfs::PATH_MAX
            && path.split('/').all(|c| {
                !c.is_empty() && c != "." && c != ".." && c.len() <= NAME_MAX && !c.contains('\0')
            }))
}

/// The whole state of one guest process outside its linear memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    args: Vec<String>,
    env: Vec<(String, String)>,
    fds: Vec<Option<Descriptor>>,
    fs: MemFs,
    mounts: Vec<Mount>,
    clocks: Clocks,
    random: Random,
    exit: Option<u32>,
    next_key: u64,
    // Schema 2 on.
    /// Objects named by handles that are not descriptors.
    handles: crate::handles::HandleTable<crate::handles::KernelObject>,
    /// A blocking call a checkpoint interrupted, to finish before the guest goes on.
    pending: Option<Pending>,
    // Schema 3 on.
    /// wasi-nn: the models, graphs and execution contexts the guest holds.
    nn: tabi_nn::NnState,
    /// What the guest may make `nn` hold: its runner's or resumer's, never a snapshot's.
    #[serde(skip)]
    nn_limits: tabi_nn::Limits,
}

/// The version of the kernel state's shape: what [`crate::encode_state`] writes. A snapshot
/// records it, and [`crate::decode_schema_within`] reads every earlier one (a field added later
/// takes its default).
///
/// - 1: until December 2026 (snapshot formats 1 to 4, which do not record it).
/// - 2: adds the table of non-descriptor handles and the pending blocking call.
/// - 3: adds wasi-nn's state (models, graphs, execution contexts).
pub const STATE_SCHEMA: u16 = 3;

/// The kernel state as schema 1 shaped it, to decode snapshots written then.
#[derive(Deserialize)]
pub(crate) struct KernelV1 {
    args: Vec<String>,
    env: Vec<(String, String)>,
    fds: Vec<Option<Descriptor>>,
    fs: MemFs,
    mounts: Vec<Mount>,
    clocks: Clocks,
    random: Random,
    exit: Option<u32>,
    next_key: u64,
}

impl From<KernelV1> for Kernel {
    fn from(k: KernelV1) -> Kernel {
        Kernel::from(KernelV2 {
            args: k.args,
            env: k.env,
            fds: k.fds,
            fs: k.fs,
            mounts: k.mounts,
            clocks: k.clocks,
            random: k.random,
            exit: k.exit,
            next_key: k.next_key,
            handles: Default::default(),
            pending: None,
        })
    }
}

/// The kernel state as schema 2 shaped it, to decode snapshots written then.
#[derive(Deserialize)]
pub(crate) struct KernelV2 {
    args: Vec<String>,
    env: Vec<(String, String)>,
    fds: Vec<Option<Descriptor>>,
    fs: MemFs,
    mounts: Vec<Mount>,
    clocks: Clocks,
    random: Random,
    exit: Option<u32>,
    next_key: u64,
    handles: crate::handles::HandleTable<crate::handles::KernelObject>,
    pending: Option<Pending>,
}

impl From<KernelV2> for Kernel {
    fn from(k: KernelV2) -> Kernel {
        Kernel {
            args: k.args,
            env: k.env,
            fds: k.fds,
            fs: k.fs,
            mounts: k.mounts,
            clocks: k.clocks,
            random: k.random,
            exit: k.exit,
            next_key: k.next_key,
            handles: k.handles,
            pending: k.pending,
            nn: Default::default(),
            nn_limits: Default::default(),
        }
    }
}

/// A blocking call the guest made that a checkpoint interrupted before it could finish: the
/// call returned to let the guest reach its migration point, and is finished (its results
/// written to the guest's memory) before the guest runs on, wherever that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pending {
    /// `poll_oneoff` waiting for standard input with no clock, as the guest passed it.
    Poll {
        /// Address of the subscriptions.
        subs: u32,
        /// Where the events go.
        events: u32,
        /// Number of subscriptions.
        n: u32,
        /// Where the number of events is written.
        out: u32,
    },
    /// `fd_read` of standard input, which had no data yet: its descriptor, iovec array and
    /// where the count goes, as the guest passed them.
    Read {
        /// The descriptor.
        fd: u32,
        /// Address of the iovec array.
        iovs: u32,
        /// Number of iovecs.
        iovs_len: u32,
        /// Where the number of bytes read is written.
        nread: u32,
    },
}

impl Default for Kernel {
    fn default() -> Self {
        Self::new()
    }
}

impl Kernel {
    /// A kernel with standard streams on descriptors 0–2, no arguments, no environment, host
    /// clocks and host entropy.
    pub fn new() -> Self {
        let stdio = |object| {
            Some(Descriptor {
                object,
                rights: rights::STDIO,
                inheriting: 0,
                flags: 0,
                read: true,
                write: true,
                preopen: None,
            })
        };
        Kernel {
            args: Vec::new(),
            env: Vec::new(),
            fds: vec![
                stdio(Object::Stdin),
                stdio(Object::Stdout),
                stdio(Object::Stderr),
            ],
            fs: MemFs::new(),
            mounts: Vec::new(),
            clocks: Clocks::Host,
            random: Random::Host,
            exit: None,
            next_key: 1,
            handles: Default::default(),
            pending: None,
            nn: Default::default(),
            nn_limits: Default::default(),
        }
    }

    /// The guest's wasi-nn state.
    pub fn nn(&self) -> &tabi_nn::NnState {
        &self.nn
    }

    /// The guest's wasi-nn state, writable, with the limits it is kept within.
    pub fn nn_mut(&mut self) -> (&mut tabi_nn::NnState, tabi_nn::Limits) {
        (&mut self.nn, self.nn_limits)
    }

    /// What the guest may make its wasi-nn state hold (a resumer's come in through
    /// [`Kernel::check`]).
    pub fn set_nn_limits(&mut self, limits: tabi_nn::Limits) {
        self.nn_limits = limits;
    }

    /// The blocking call a checkpoint interrupted, if any (see [`Pending`]).
    pub fn pending(&self) -> Option<Pending> {
        self.pending
    }

    /// Records the blocking call a checkpoint interrupts.
    pub fn set_pending(&mut self, pending: Option<Pending>) {
        self.pending = pending;
    }

    /// The objects named by handles that are not descriptors.
    pub fn handles(&self) -> &crate::handles::HandleTable<crate::handles::KernelObject> {
        &self.handles
    }

    /// Sets the arguments (the first is the program name by convention).
    pub fn set_args<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, args: I) {
        self.args = args.into_iter().map(Into::into).collect();
    }

    /// Sets the environment.
    pub fn set_env<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(
        &mut self,
        env: I,
    ) {
        self.env = env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    }

    /// Makes clocks virtual and randomness seeded, so that runs are reproducible.
    pub fn set_deterministic(&mut self, seed: u64) {
        self.clocks = Clocks::Virtual {
            wall_ns: 1_600_000_000_000_000_000,
            monotonic_ns: 0,
            step_ns: 1_000,
        };
        self.random = Random::seeded(seed);
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The environment.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The in-memory file system.
    pub fn fs(&self) -> &MemFs {
        &self.fs
    }

    /// The in-memory file system, writable (for setting up a guest's files before it runs).
    pub fn fs_mut(&mut self) -> &mut MemFs {
        &mut self.fs
    }

    /// The mounts, in the order they were preopened.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The exit status, once the guest called `proc_exit`.
    pub fn exit_status(&self) -> Option<u32> {
        self.exit
    }

    /// Records the exit status.
    pub fn set_exit_status(&mut self, code: u32) {
        self.exit = Some(code);
    }

    fn preopen(&mut self, guest_path: &str, object: Object) -> Result<u32, Errno> {
        let fd = self.insert(Descriptor {
            object,
            rights: rights::DIRECTORY,
            inheriting: rights::DIRECTORY | rights::FILE,
            flags: 0,
            read: true,
            write: true,
            preopen: Some(guest_path.to_string()),
        })?;
        Ok(fd)
    }

    /// Preopens a new, empty in-memory directory as `guest_path`; returns its descriptor and
    /// the root inode, which the caller may fill.
    pub fn mount_memory(&mut self, guest_path: &str, now_ns: u64) -> Result<(u32, Ino), Errno> {
        let root = self.fs.new_root(now_ns);
        let fd = self.mount_memory_root(guest_path, root)?;
        Ok((fd, root))
    }

    /// Preopens an existing root directory of the in-memory file system (made with
    /// [`MemFs::new_root`], perhaps filled by `tabi_vfs::import_host_dir`) as `guest_path`.
    pub fn mount_memory_root(&mut self, guest_path: &str, root: Ino) -> Result<u32, Errno> {
        self.fs.dir(root)?;
        self.fs.retain(root)?;
        self.mounts.push(Mount {
            guest_path: guest_path.to_string(),
            kind: MountKind::Memory { root },
        });
        self.preopen(guest_path, Object::MemDir { ino: root })
    }

    /// Preopens host mount `index` (granted to the [`Host`]) as `guest_path`.
    pub fn mount_host(&mut self, guest_path: &str, index: u32) -> Result<u32, Errno> {
        let key = self.new_key()?;
        self.mounts.push(Mount {
            guest_path: guest_path.to_string(),
            kind: MountKind::Host { index },
        });
        self.preopen(
            guest_path,
            Object::HostDir {
                mount: index,
                key,
                path: ".".to_string(),
            },
        )
    }

    /// A key no open host object has; `ENFILE` once the counter is spent (only a state
    /// from outside can start it that high).
    fn new_key(&mut self) -> Result<u64, Errno> {
        let k = self.next_key;
        self.next_key = k.checked_add(1).ok_or(Errno::Nfile)?;
        Ok(k)
    }

    // ---- descriptor table ------------------------------------------------------------------

    /// Checks a state that came from outside (a snapshot) before a guest runs on it, and
    /// applies the resumer's `limits`: every descriptor names a live object of its kind, with
    /// rights and flags its kind can have; host objects name a host mount, by a normalized path
    /// below it, under distinct keys the key counter has passed; memory mounts name roots;
    /// a sleep still owed is within the limit; and the file system passes [`MemFs::check`]
    /// (its limit becomes `limits.fs_bytes`). Nothing the guest or the host does later can
    /// then reach an inconsistent state through this one.
    pub fn check(&mut self, limits: &StateLimits) -> Result<(), InvalidState> {
        let bad = |what: String| Err(InvalidState(what));
        // No kind of handle object exists yet, so a table can only hold free slots; a
        // trailing free slot is never kept.
        if self.handles.slots() != 0 {
            return bad(format!(
                "{} handle slots, and no handle can be live",
                self.handles.slots()
            ));
        }
        if let Some(Pending::Poll { n, .. }) = self.pending
            && n > crate::p1::MAX_IOVECS
        {
            return bad(format!("a pending poll of {n} subscriptions"));
        }
        if let Some(Pending::Read { fd, iovs_len, .. }) = self.pending {
            let stdin = self
                .fds
                .get(fd as usize)
                .and_then(Option::as_ref)
                .is_some_and(|d| matches!(d.object, Object::Stdin) && d.read);
            if !stdin || iovs_len > crate::p1::MAX_IOVECS {
                return bad(format!(
                    "a pending read of descriptor {fd} ({iovs_len} iovecs), which is not \
                     standard input open for reading or has too many iovecs"
                ));
            }
        }
        if self.fds.len() > MAX_DESCRIPTORS {
            return bad(format!(
                "{} descriptors, over the most of {MAX_DESCRIPTORS}",
                self.fds.len()
            ));
        }
        for a in &self.args {
            if a.contains('\0') {
                return bad("an argument holds a NUL byte".into());
            }
        }
        for (k, v) in &self.env {
            if k.contains(['\0', '=']) || v.contains('\0') {
                return bad(
                    "an environment variable's name holds `=` or NUL, or its value NUL".into(),
                );
            }
        }
        let mut host_indices = Vec::new();
        for m in &self.mounts {
            match m.kind {
                MountKind::Memory { root } => {
                    if !self.fs.is_root(root) {
                        return bad(format!(
                            "memory mount {:?} does not name a root directory",
                            m.guest_path
                        ));
                    }
                }
                MountKind::Host { index } => {
                    if host_indices.contains(&index) {
                        return bad(format!("host mount {index} is mounted twice"));
                    }
                    host_indices.push(index);
                }
            }
        }
        let mut held = Vec::new();
        let mut keys = Vec::new();
        for (fd, d) in self.fds.iter().enumerate() {
            let Some(d) = d else { continue };
            let (allowed, inheriting) = match &d.object {
                Object::Stdin | Object::Stdout | Object::Stderr => (rights::STDIO, 0),
                Object::MemDir { .. } | Object::HostDir { .. } => {
                    (rights::DIRECTORY, rights::DIRECTORY | rights::FILE)
                }
                Object::MemFile { .. } | Object::HostFile { .. } => (rights::FILE, 0),
            };
            if d.rights & !allowed != 0
                || d.inheriting & !inheriting != 0
                || d.flags & !fdflags::ALL != 0
            {
                return bad(format!(
                    "descriptor {fd} has rights or flags its kind cannot have"
                ));
            }
            match &d.object {
                Object::MemDir { ino } => {
                    if self.fs.dir(*ino).is_err() {
                        return bad(format!(
                            "descriptor {fd} names inode {ino}, not a directory"
                        ));
                    }
                    held.push(*ino);
                }
                Object::MemFile { ino, .. } => {
                    if !self
                        .fs
                        .inode(*ino)
                        .is_ok_and(|i| !matches!(i.node, tabi_vfs::Node::Dir(_)))
                    {
                        return bad(format!("descriptor {fd} names inode {ino}, not a file"));
                    }
                    held.push(*ino);
                }
                Object::HostDir { mount, key, path }
                | Object::HostFile {
                    mount, key, path, ..
                } => {
                    if !host_indices.contains(mount) {
                        return bad(format!(
                            "descriptor {fd} names host mount {mount}, which is not mounted"
                        ));
                    }
                    if !is_mount_path(path) {
                        return bad(format!(
                            "descriptor {fd} has a malformed path below its mount"
                        ));
                    }
                    if *key >= self.next_key {
                        return bad(format!("descriptor {fd} has a key not yet given"));
                    }
                    keys.push(*key);
                }
                Object::Stdin | Object::Stdout | Object::Stderr => {}
            }
            if let Some(p) = &d.preopen
                && (!d.is_dir() || !self.mounts.iter().any(|m| &m.guest_path == p))
            {
                return bad(format!("descriptor {fd} is a preopen of no mount"));
            }
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return bad("two host objects share a key".into());
        }
        if let Clocks::HostCarried {
            last_ns,
            owed_until: Some(until),
            ..
        } = self.clocks
            && until.saturating_sub(last_ns) > limits.owed_sleep_ns
        {
            return bad(format!(
                "the guest owes a sleep of {} ns, over the limit of {} ns",
                until.saturating_sub(last_ns),
                limits.owed_sleep_ns
            ));
        }
        self.nn
            .check(&limits.nn)
            .map_err(|e| InvalidState(format!("wasi-nn: {e}")))?;
        self.nn_limits = limits.nn;
        self.fs
            .check(&held, limits.fs_bytes)
            .map_err(|e| InvalidState(e.to_string()))
    }

    /// The descriptor `fd`, or `Badf`.
    pub fn get(&self, fd: u32) -> Result<&Descriptor, Errno> {
        self.fds
            .get(fd as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::Badf)
    }

    fn get_mut(&mut self, fd: u32) -> Result<&mut Descriptor, Errno> {
        self.fds
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .ok_or(Errno::Badf)
    }

    /// Descriptor numbers in use, in order.
    pub fn descriptors(&self) -> impl Iterator<Item = (u32, &Descriptor)> {
        self.fds
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.as_ref().map(|d| (i as u32, d)))
    }

    fn has_free_slot(&self) -> bool {
        self.fds.len() < MAX_DESCRIPTORS || self.fds.iter().any(Option::is_none)
    }

    /// Puts `desc` in the lowest free slot.
    fn insert(&mut self, desc: Descriptor) -> Result<u32, Errno> {
        if let Some(i) = self.fds.iter().position(Option::is_none) {
            self.fds[i] = Some(desc);
            return Ok(i as u32);
        }
        if self.fds.len() >= MAX_DESCRIPTORS {
            return Err(Errno::Mfile);
        }
        self.fds.push(Some(desc));
        Ok((self.fds.len() - 1) as u32)
    }

    /// Releases what a descriptor held.
    fn drop_descriptor(&mut self, desc: Descriptor, host: &mut dyn Host) {
        match desc.object {
            Object::MemDir { ino } | Object::MemFile { ino, .. } => {
                // The inode may be gone already only if the state was tampered with; closing
                // must still succeed.
                let _ = self.fs.release(ino);
            }
            Object::HostDir { key, .. } | Object::HostFile { key, .. } => {
                if let Some(fs) = host.host_fs() {
                    fs.close(key);
                }
            }
            Object::Stdin | Object::Stdout | Object::Stderr => {}
        }
    }

    /// Closes `fd`.
    pub fn close(&mut self, fd: u32, host: &mut dyn Host) -> Result<(), Errno> {
        let desc = self
            .fds
            .get_mut(fd as usize)
            .and_then(Option::take)
            .ok_or(Errno::Badf)?;
        self.drop_descriptor(desc, host);
        while matches!(self.fds.last(), Some(None)) {
            self.fds.pop();
        }
        Ok(())
    }

    /// Moves descriptor `from` to number `to`, closing what `to` held.
    pub fn renumber(&mut self, from: u32, to: u32, host: &mut dyn Host) -> Result<(), Errno> {
        self.get(from)?;
        self.get(to)?;
        if from == to {
            return Ok(());
        }
        let desc = self.fds[from as usize].take().ok_or(Errno::Badf)?;
        if let Some(old) = self.fds[to as usize].replace(desc) {
            self.drop_descriptor(old, host);
        }
        while matches!(self.fds.last(), Some(None)) {
            self.fds.pop();
        }
        Ok(())
    }

    /// Changes the flags of `fd`; only `APPEND` and `NONBLOCK` can change after open.
    pub fn set_flags(&mut self, fd: u32, flags: u16) -> Result<(), Errno> {
        if flags & !fdflags::ALL != 0 {
            return Err(Errno::Inval);
        }
        let d = self.get_mut(fd)?;
        d.require(rights::FD_FDSTAT_SET_FLAGS)?;
        let changeable = fdflags::APPEND | fdflags::NONBLOCK;
        d.flags = (d.flags & !changeable) | (flags & changeable);
        Ok(())
    }

    /// Drops rights of `fd`; asking for a right it does not have is `NotCapable`.
    pub fn set_rights(&mut self, fd: u32, base: u64, inheriting: u64) -> Result<(), Errno> {
        let d = self.get_mut(fd)?;
        if base & !d.rights != 0 || inheriting & !d.inheriting != 0 {
            return Err(Errno::NotCapable);
        }
        d.rights = base;
        d.inheriting = inheriting;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_random_is_reproducible_and_varied() {
        let mut a = Random::seeded(7);
        let mut b = Random::seeded(7);
        let (Random::Seeded { state: sa }, Random::Seeded { state: sb }) = (&mut a, &mut b) else {
            panic!("seeded");
        };
        let xs: Vec<u64> = (0..4).map(|_| clock::xoshiro_next(sa)).collect();
        let ys: Vec<u64> = (0..4).map(|_| clock::xoshiro_next(sb)).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert_ne!(Random::seeded(7), Random::seeded(8));
    }

    #[test]
    fn join_is_lexical_and_stays_below_root() {
        assert_eq!(Kernel::join(".", "a/b"), "a/b");
        assert_eq!(Kernel::join("a/b", "../c"), "a/c");
        assert_eq!(Kernel::join("a", "../../x"), "x");
        assert_eq!(Kernel::join(".", "."), ".");
    }

    /// A pending read passes the check only on standard input open for reading; a state of
    /// schema 1 decodes with no pending call and an empty handle table.
    #[test]
    fn a_pending_read_must_be_of_standard_input() {
        let mut k = Kernel::new();
        let (dir, _) = k.mount_memory("/m", 0).unwrap();
        let read = |fd| Pending::Read {
            fd,
            iovs: 0,
            iovs_len: 1,
            nread: 8,
        };
        k.set_pending(Some(read(0)));
        k.check(&StateLimits::default()).unwrap();
        for fd in [1, dir, 99] {
            k.set_pending(Some(read(fd)));
            assert!(k.check(&StateLimits::default()).is_err(), "fd {fd}");
        }
        k.set_pending(Some(Pending::Read {
            fd: 0,
            iovs: 0,
            iovs_len: crate::p1::MAX_IOVECS + 1,
            nread: 8,
        }));
        assert!(k.check(&StateLimits::default()).is_err());

        // Schema 2: the same fields but wasi-nn's (empty tables of models, graphs and
        // contexts: three zero bytes); schema 1 also lacks the two before (an empty vector
        // and a `None`: two zero bytes).
        k.set_pending(None);
        let v3 = crate::encode_state(&k).unwrap();
        assert_eq!(&v3[v3.len() - 5..], &[0, 0, 0, 0, 0]);
        let v2 = &v3[..v3.len() - 3];
        assert_eq!(crate::decode_schema_within(v2, 2, 1 << 20).unwrap(), k);
        assert!(crate::decode_schema_within(v2, 3, 1 << 20).is_err());
        let v1 = &v2[..v2.len() - 2];
        let old = crate::decode_schema_within(v1, 1, 1 << 20).unwrap();
        assert_eq!(old, k);
        assert!(crate::decode_schema_within(v1, 2, 1 << 20).is_err());
    }
}
