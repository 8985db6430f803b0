//! Hostile snapshots for tests: a mirror of the kernel state's serde shape, which can say what
//! the kernel's own types cannot (a free list naming a live inode, ten million `None`
//! descriptors), and a writer that frames any state validly. The tests that use it check that
//! each is refused; `mirror_matches_the_kernel` in `tests/tests/hostile.rs` keeps the mirror
//! honest.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tabi_libos::kernel::{Clocks, Random};
use tabi_libos::{Descriptor, Kernel, Mount, MountKind, Object};
use tabi_snapshot::{Contents, Identity, PAGE, write_unchecked};

/// The kernel's shape, field for field (`tabi_libos::Kernel`'s private fields, in order).
#[derive(Serialize, Clone)]
pub struct K {
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// The descriptor table.
    pub fds: Vec<Option<Descriptor>>,
    /// The in-memory file system.
    pub fs: F,
    /// The preopened directories.
    pub mounts: Vec<Mount>,
    /// The clocks.
    pub clocks: Clocks,
    /// The random generator.
    pub random: Random,
    /// The exit status.
    pub exit: Option<u32>,
    /// The next host key.
    pub next_key: u64,
    /// The table of non-descriptor handles (schema 2): only free slots can be encoded.
    pub handles: Vec<Option<u8>>,
    /// The pending blocking call (schema 2).
    pub pending: Option<P>,
    /// wasi-nn's state (schema 3), as the kernel's own type: plain data.
    pub nn: tabi_libos::nn_state::NnState,
}

/// `Pending`'s shape.
#[derive(Serialize, Clone)]
pub enum P {
    /// A poll.
    Poll {
        /// Subscriptions.
        subs: u32,
        /// Events.
        events: u32,
        /// Count.
        n: u32,
        /// Where the count goes.
        out: u32,
    },
    /// A read of standard input.
    Read {
        /// The descriptor.
        fd: u32,
        /// The iovec array.
        iovs: u32,
        /// Iovecs.
        iovs_len: u32,
        /// Where the count goes.
        nread: u32,
    },
}

/// `MemFs`'s shape.
#[derive(Serialize, Clone)]
pub struct F {
    /// The inode table.
    pub nodes: Vec<Option<I>>,
    /// The free slots.
    pub free: Vec<u32>,
    /// Bytes charged.
    pub used: u64,
    /// The limit on them.
    pub limit: u64,
}

/// `Inode`'s shape.
#[derive(Serialize, Clone)]
pub struct I {
    /// What it is.
    pub node: N,
    /// Entries naming it.
    pub nlink: u32,
    /// Descriptors holding it.
    pub open: u32,
    /// Access time.
    pub atim: u64,
    /// Modification time.
    pub mtim: u64,
    /// Change time.
    pub ctim: u64,
}

/// `Node`'s shape.
#[derive(Serialize, Clone)]
pub enum N {
    /// A file's bytes.
    File(Vec<u8>),
    /// A directory.
    Dir(D),
    /// A symlink's target.
    Symlink(String),
}

/// `Directory`'s shape.
#[derive(Serialize, Clone)]
pub struct D {
    /// Name to inode and sequence number.
    pub entries: BTreeMap<String, (u32, u64)>,
    /// Sequence number to name.
    pub order: BTreeMap<u64, String>,
    /// The next sequence number.
    pub next_seq: u64,
    /// The parent directory.
    pub parent: u32,
}

fn stdio(object: Object) -> Option<Descriptor> {
    Kernel::new()
        .get(match object {
            Object::Stdin => 0,
            Object::Stdout => 1,
            _ => 2,
        })
        .ok()
        .cloned()
}

/// What `Kernel::new()` with one memory mount at `/sandbox` (made at time 0) is.
pub fn sandbox() -> K {
    let root = I {
        node: N::Dir(D {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 3,
            parent: 0,
        }),
        nlink: 1,
        open: 1,
        atim: 0,
        mtim: 0,
        ctim: 0,
    };
    let mut preopen = Kernel::new();
    let fd = preopen.mount_memory("/sandbox", 0).unwrap().0;
    K {
        args: vec![],
        env: vec![],
        fds: vec![
            stdio(Object::Stdin),
            stdio(Object::Stdout),
            stdio(Object::Stderr),
            preopen.get(fd).ok().cloned(),
        ],
        fs: F {
            nodes: vec![Some(root)],
            free: vec![],
            used: tabi_libos::vfs::INODE_COST,
            limit: tabi_libos::vfs::MemFs::DEFAULT_LIMIT_BYTES,
        },
        mounts: vec![Mount {
            guest_path: "/sandbox".into(),
            kind: MountKind::Memory { root: 0 },
        }],
        clocks: Clocks::Host,
        random: Random::Host,
        exit: None,
        next_key: 1,
        handles: Vec::new(),
        pending: None,
        nn: Default::default(),
    }
}

/// `k` in postcard, as the kernel state is stored.
pub fn encode(k: &K) -> Vec<u8> {
    postcard::to_allocvec(k).unwrap()
}

/// The contents of a snapshot of a guest with the memory `memory` and the kernel state
/// `kernel`, and nothing else (no module, globals, tables or stack).
pub fn contents<'a>(memory: &'a [u8], kernel: &'a [u8]) -> Contents<'a> {
    Contents {
        identity: Identity {
            original_sha256: [1; 32],
            module_sha256: [2; 32],
            options: vec![],
            parent: None,
        },
        module: None,
        entry: "_start",
        budget: None,
        points: 1,
        globals: &[],
        tables: &[],
        memories: vec![memory],
        stack: &[],
        kernel,
        mounts: &[],
        extensions: &[],
    }
}

/// A snapshot with one memory of `pages` pages (the first byte set) and the kernel state
/// `kernel`, framed validly whatever the state is.
pub fn framed(kernel: &[u8], pages: usize) -> Vec<u8> {
    let mut mem = vec![0u8; pages * PAGE];
    if let Some(b) = mem.first_mut() {
        *b = 1;
    }
    let mut out = Vec::new();
    write_unchecked(&mut out, &contents(&mem, kernel), None).unwrap();
    out
}

/// A collection of [`K`] that [`with_many`] fills.
#[derive(Clone, Copy, Debug)]
pub enum Many {
    /// `args`, with empty strings.
    Args,
    /// `fds`, with `None`s.
    Descriptors,
    /// `fs.nodes`, with `None`s.
    Inodes,
}

/// The encoding of `k` with the collection `which` holding `n` one-byte elements (an empty
/// string or a `None`) in place of what it holds, made without building them: ten million of
/// them are ten megabytes here, where the decoded form would take a gigabyte.
pub fn with_many(k: &K, which: Many, n: usize) -> Vec<u8> {
    let mut k = k.clone();
    match which {
        Many::Args => k.args.clear(),
        Many::Descriptors => k.fds.clear(),
        Many::Inodes => k.fs.nodes.clear(),
    }
    let k = &k;
    let before = match which {
        Many::Args => Vec::new(),
        Many::Descriptors => postcard::to_allocvec(&(&k.args, &k.env)).unwrap(),
        Many::Inodes => postcard::to_allocvec(&(&k.args, &k.env, &k.fds)).unwrap(),
    };
    let all = encode(k);
    let at = before.len();
    assert_eq!(all[at], 0, "the collection must be empty in `k`");
    let mut out = all[..at].to_vec();
    let mut len = n as u64;
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.resize(out.len() + n, 0);
    out.extend_from_slice(&all[at + 1..]);
    out
}

/// A host for fuzzing and tests: fixed clocks, no output, no entropy source but zeros, and
/// optionally host directories.
pub struct QuietHost {
    /// Granted host directories.
    pub fs: Option<tabi_libos::vfs::CapStdFs>,
}

impl tabi_libos::Host for QuietHost {
    fn wall_clock_ns(&mut self) -> u64 {
        1_600_000_000_000_000_000
    }
    fn monotonic_ns(&mut self) -> u64 {
        0
    }
    fn random_bytes(&mut self, b: &mut [u8]) -> Result<(), tabi_libos::Errno> {
        b.fill(0);
        Ok(())
    }
    fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, tabi_libos::Errno> {
        Ok(0)
    }
    fn stdout_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Ok(())
    }
    fn stderr_write(&mut self, _: &[u8]) -> Result<(), tabi_libos::Errno> {
        Ok(())
    }
    fn sleep_ns(&mut self, _: u64) {}
    fn host_fs(&mut self) -> Option<&mut dyn tabi_libos::vfs::HostFs> {
        self.fs
            .as_mut()
            .map(|f| f as &mut dyn tabi_libos::vfs::HostFs)
    }
}

/// Drives a kernel that passed [`Kernel::check`] through the operations a guest can ask for
/// on every descriptor it holds: each must give a result or an errno, never panic, and the
/// state it leaves must pass the check again (an assertion, for the fuzz targets).
pub fn exercise(kernel: &mut Kernel, limits: &tabi_libos::StateLimits) {
    use tabi_libos::OpenOptions;
    use tabi_libos::abi::rights;
    let mut host = QuietHost { fs: None };
    let fds: Vec<u32> = kernel.descriptors().map(|(fd, _)| fd).collect();
    let mut buf = [0u8; 64];
    for &fd in &fds {
        let _ = kernel.stat(fd, &mut host);
        let _ = kernel.read(fd, &mut buf, None, &mut host);
        let _ = kernel.read(fd, &mut buf, Some(3), &mut host);
        let _ = kernel.write(fd, b"fuzz", None, &mut host);
        let _ = kernel.seek(fd, -2, 1, &mut host);
        let _ = kernel.read_dir(fd, 0, &mut host);
        let _ = kernel.set_size(fd, 7, &mut host);
        let opts = OpenOptions {
            create: true,
            rights: rights::FILE,
            ..OpenOptions::default()
        };
        for path in ["new", "d/../x", ".", "..", "a/b"] {
            if let Ok(f) = kernel.open_at(fd, path, opts, &mut host) {
                let _ = kernel.write(f, b"data", None, &mut host);
                let _ = kernel.close(f, &mut host);
            }
        }
        let _ = kernel.create_dir_at(fd, "dir", &mut host);
        let _ = kernel.symlink_at("dir", fd, "sym", &mut host);
        let _ = kernel.rename_at(fd, "dir", fd, "moved", &mut host);
        let _ = kernel.unlink_file_at(fd, "new", &mut host);
        let _ = kernel.remove_dir_at(fd, "moved", &mut host);
    }
    let mut again = kernel.clone();
    if let Err(e) = again.check(limits) {
        panic!("a checked state became invalid through the kernel's own operations: {e}");
    }
    for fd in fds {
        let _ = kernel.close(fd, &mut host);
    }
    let mut again = kernel.clone();
    if let Err(e) = again.check(limits) {
        panic!("closing every descriptor left an invalid state: {e}");
    }
}

/// An allocator that counts the bytes live and the most live since [`PeakAlloc::reset`], for
/// fuzz targets that bound what an input can make the host allocate. Declare it as the
/// `#[global_allocator]` of the target.
pub struct PeakAlloc {
    live: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl PeakAlloc {
    /// A counter at zero.
    pub const fn new() -> Self {
        PeakAlloc {
            live: std::sync::atomic::AtomicUsize::new(0),
            peak: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Starts a new peak from what is live now; returns that.
    pub fn reset(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let live = self.live.load(Relaxed);
        self.peak.store(live, Relaxed);
        live
    }

    /// The most bytes live since the last [`PeakAlloc::reset`].
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for PeakAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is passed on to the system allocator with the same layout and pointer;
// the counters only observe sizes.
#[allow(
    unsafe_code,
    reason = "a GlobalAlloc wrapper that counts bytes for the fuzz targets"
)]
unsafe impl std::alloc::GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.live.fetch_add(layout.size(), Relaxed) + layout.size();
        self.peak.fetch_max(now, Relaxed);
        // SAFETY: the caller's layout is passed on unchanged.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.live.fetch_add(layout.size(), Relaxed) + layout.size();
        self.peak.fetch_max(now, Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        self.live
            .fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        if new > layout.size() {
            let now = self.live.fetch_add(new - layout.size(), Relaxed) + new - layout.size();
            self.peak.fetch_max(now, Relaxed);
        } else {
            self.live.fetch_sub(layout.size() - new, Relaxed);
        }
        // SAFETY: `ptr` came from this allocator with `layout`; `new` is the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// The paths the structured kernel fuzzer uses: links followed by `..`, names in directories
/// that come and go, a link to a directory.
const PATHS: [&str; 12] = [
    "a",
    "b",
    "d",
    "d/e",
    "d/e/x",
    "link",
    "link/..",
    "link/../y",
    "d/../z",
    "f",
    "d/e/../w",
    "link/x",
];

/// A path of [`PATHS`].
fn path<'a>(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<&'static str> {
    Ok(PATHS[u.choose_index(PATHS.len())?])
}

/// Kernel operations on a memory mount and a host mount, decoded from `u`, with a checkpoint
/// and restore (on a new host) among them. After each, the state passes [`Kernel::check`],
/// and every open host file's recorded path names, on the host, the object its handle holds:
/// the path bookkeeping of unlink, rename and symlinks is what a restore will reopen.
pub fn kernel_ops(u: &mut arbitrary::Unstructured<'_>, dir: &Path) -> arbitrary::Result<()> {
    use tabi_libos::OpenOptions;
    use tabi_libos::abi::rights;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("d/e")).unwrap();
    std::fs::write(dir.join("f"), b"file").unwrap();
    std::os::unix::fs::symlink("d/e", dir.join("link")).unwrap();
    let grant = || {
        let mut fs = tabi_libos::vfs::CapStdFs::new();
        fs.grant(dir).unwrap();
        QuietHost { fs: Some(fs) }
    };
    let mut host = grant();
    let mut k = Kernel::new();
    let mem = k.mount_memory("/m", 0).unwrap().0;
    let hostd = k.mount_host("/h", 0).unwrap();
    let limits = tabi_libos::StateLimits::default();
    for _ in 0..u.int_in_range(1..=24)? {
        let at = if u.arbitrary()? { mem } else { hostd };
        let p = path(u)?;
        match u.int_in_range(0..=9)? {
            0 | 1 => {
                let opts = OpenOptions {
                    create: u.arbitrary()?,
                    exclusive: u.arbitrary()?,
                    truncate: u.arbitrary()?,
                    follow: u.arbitrary()?,
                    rights: rights::FILE | rights::DIRECTORY,
                    ..OpenOptions::default()
                };
                let _ = k.open_at(at, p, opts, &mut host);
            }
            2 => {
                let _ = k.create_dir_at(at, p, &mut host);
            }
            3 => {
                let _ = k.remove_dir_at(at, p, &mut host);
            }
            4 => {
                let _ = k.unlink_file_at(at, p, &mut host);
            }
            5 => {
                let to = path(u)?;
                let _ = k.rename_at(at, p, at, to, &mut host);
            }
            6 => {
                let target = path(u)?;
                let _ = k.symlink_at(target, at, p, &mut host);
            }
            7 => {
                let fds: Vec<u32> = k
                    .descriptors()
                    .map(|(fd, _)| fd)
                    .filter(|&fd| fd > 4)
                    .collect();
                if !fds.is_empty() {
                    let fd = fds[u.choose_index(fds.len())?];
                    if u.arbitrary()? {
                        let _ = k.close(fd, &mut host);
                    } else {
                        let _ = k.write(fd, b"written", None, &mut host);
                    }
                }
            }
            8 => {
                let to = path(u)?;
                let _ = k.link_at(at, p, false, at, to, &mut host);
            }
            _ => {
                // Checkpoint and restore on a new host.
                let bytes = tabi_libos::encode_state(&k).unwrap();
                drop(host);
                k = tabi_libos::decode_checked(&bytes, u64::MAX, &limits)
                    .unwrap_or_else(|e| panic!("a state the kernel reached is refused: {e}"));
                host = grant();
            }
        }
        if let Err(e) = k.clone().check(&limits) {
            panic!("the kernel reached an invalid state: {e}");
        }
        let open: Vec<(u32, String)> = k
            .descriptors()
            .filter_map(|(fd, d)| match &d.object {
                Object::HostFile { path, .. } => Some((fd, path.clone())),
                _ => None,
            })
            .collect();
        for (fd, recorded) in open {
            use std::os::unix::fs::MetadataExt;
            let held = k
                .stat(fd, &mut host)
                .expect("an open host file has attributes");
            let named = std::fs::symlink_metadata(dir.join(&recorded)).unwrap_or_else(|e| {
                panic!("descriptor {fd} records `{recorded}`, which is gone: {e}")
            });
            assert_eq!(
                (named.dev(), named.ino()),
                (held.dev, held.ino),
                "descriptor {fd} records `{recorded}`, which names another object"
            );
        }
    }
    Ok(())
}

/// Preview-1 calls with hostile arguments (pointers anywhere, lengths of any size) against a
/// kernel with an in-memory sandbox, over a guest memory of 64 KiB that `u` fills. Each call
/// gives an errno or a trap, never a panic; after each, `alloc` has seen at most `bound`
/// bytes live beyond what was live before it; the kernel's state passes [`Kernel::check`].
pub fn p1_calls(
    u: &mut arbitrary::Unstructured<'_>,
    alloc: &PeakAlloc,
    bound: usize,
) -> arbitrary::Result<()> {
    let mut memory = vec![0u8; 64 << 10];
    let fill = u.int_in_range(0..=4096)?;
    for b in memory.iter_mut().take(fill) {
        *b = u.arbitrary()?;
    }
    let mut host = QuietHost { fs: None };
    let mut k = Kernel::new();
    let (_, root) = k.mount_memory("/sandbox", 0).unwrap();
    let f = k.fs_mut().create_file(root, "f", 0).unwrap();
    k.fs_mut().write_at(f, 0, b"contents", 0).unwrap();
    k.fs_mut().mkdir(root, "d", 0).unwrap();
    fn int(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<i64> {
        Ok(match u.int_in_range(0..=4)? {
            0 => u.int_in_range(0..=8)?,
            1 => u.int_in_range(0..=(64 << 10))?,
            2 => i64::from(u.arbitrary::<i32>()?),
            3 => u.arbitrary()?,
            _ => -1,
        })
    }
    let limits = tabi_libos::StateLimits::default();
    for _ in 0..u.int_in_range(1..=16)? {
        let which = u.choose_index(tabi_libos::p1::NAMES.len() - 1)?;
        let before = alloc.reset();
        macro_rules! call {
            ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {{
                let mut i = 0;
                $(
                    if i == which {
                        $( let $arg = int(u)? as $ty; )*
                        let _ = tabi_libos::p1::$name(&mut k, &mut host, &mut memory, $($arg),*);
                    }
                    i += 1;
                )*
                let _ = i;
            }};
        }
        tabi_libos::for_each_function!(call);
        let grown = alloc.peak().saturating_sub(before);
        assert!(
            grown <= bound,
            "{} allocated {grown} bytes",
            tabi_libos::p1::NAMES[which]
        );
        if let Err(e) = k.clone().check(&limits) {
            panic!(
                "{} left an invalid state: {e}",
                tabi_libos::p1::NAMES[which]
            );
        }
    }
    Ok(())
}

/// A wasi-nn backend for fuzzing and tests, with no inference library: it accepts a model
/// whose first byte is even, with `first % 3 + 1` inputs and two outputs, and computes
/// each input's bytes reversed and the count of inputs. It has one preloaded model, `m`.
#[derive(Default)]
pub struct FakeNn;

/// The bytes of [`FakeNn`]'s preloaded model `m`.
pub const FAKE_NAMED: &[u8] = b"\x02 a preloaded model";

impl tabi_libos::nn_state::Backend for FakeNn {
    fn check(
        &mut self,
        parts: &[&[u8]],
        _: &[u8; 32],
        _: &tabi_libos::nn_state::Graph,
    ) -> Result<tabi_libos::nn_state::ModelInfo, tabi_libos::nn_state::NnErrno> {
        match parts.first().and_then(|p| p.first()) {
            Some(b) if b % 2 == 0 => Ok(tabi_libos::nn_state::ModelInfo {
                inputs: u32::from(b % 3) + 1,
                outputs: 2,
            }),
            _ => Err(tabi_libos::nn_state::NnErrno::InvalidEncoding),
        }
    }

    fn compute(
        &mut self,
        _: &[&[u8]],
        _: &[u8; 32],
        graph: &tabi_libos::nn_state::Graph,
        inputs: &BTreeMap<u32, tabi_libos::nn_state::Tensor>,
        _: &tabi_libos::nn_state::Limits,
    ) -> Result<Vec<tabi_libos::nn_state::Tensor>, tabi_libos::nn_state::NnErrno> {
        use tabi_libos::nn_state::{NnErrno, Tensor, TensorType};
        let first = (0..graph.info.inputs)
            .map(|i| inputs.get(&i).ok_or(NnErrno::InvalidArgument))
            .collect::<Result<Vec<_>, _>>()?[0];
        let mut reversed = first.clone();
        reversed.data.reverse();
        Ok(vec![
            reversed,
            Tensor {
                dims: vec![1],
                ty: TensorType::I32,
                data: (inputs.len() as i32).to_le_bytes().to_vec(),
            },
        ])
    }

    fn named(&mut self, name: &str) -> Option<tabi_libos::nn_state::HostModel> {
        (name == "m").then(|| tabi_libos::nn_state::HostModel {
            encoding: tabi_libos::nn_state::Encoding::Onnx,
            bytes: std::sync::Arc::from(FAKE_NAMED),
        })
    }

    fn preloaded(&mut self, hash: &[u8; 32]) -> Option<std::sync::Arc<[u8]>> {
        (*hash == tabi_libos::nn_state::Models::hash_of(&[FAKE_NAMED]))
            .then(|| std::sync::Arc::from(FAKE_NAMED))
    }
}

/// [`QuietHost`] with a wasi-nn backend: [`FakeNn`] unless another is given.
pub struct NnHost<B = FakeNn> {
    quiet: QuietHost,
    nn: B,
}

impl<B> NnHost<B> {
    /// A quiet host with `nn` as its backend.
    pub fn with_backend(nn: B) -> NnHost<B> {
        NnHost {
            quiet: QuietHost { fs: None },
            nn,
        }
    }
}

impl NnHost {
    /// A quiet host with the fake backend.
    pub fn new() -> NnHost {
        NnHost {
            quiet: QuietHost { fs: None },
            nn: FakeNn,
        }
    }
}

impl Default for NnHost {
    fn default() -> Self {
        NnHost::new()
    }
}

impl<B: tabi_libos::nn_state::Backend> tabi_libos::Host for NnHost<B> {
    fn wall_clock_ns(&mut self) -> u64 {
        self.quiet.wall_clock_ns()
    }
    fn monotonic_ns(&mut self) -> u64 {
        self.quiet.monotonic_ns()
    }
    fn random_bytes(&mut self, b: &mut [u8]) -> Result<(), tabi_libos::Errno> {
        self.quiet.random_bytes(b)
    }
    fn stdin_read(&mut self, b: &mut [u8]) -> Result<usize, tabi_libos::Errno> {
        self.quiet.stdin_read(b)
    }
    fn stdout_write(&mut self, b: &[u8]) -> Result<(), tabi_libos::Errno> {
        self.quiet.stdout_write(b)
    }
    fn stderr_write(&mut self, b: &[u8]) -> Result<(), tabi_libos::Errno> {
        self.quiet.stderr_write(b)
    }
    fn sleep_ns(&mut self, ns: u64) {
        self.quiet.sleep_ns(ns)
    }
    fn nn(&mut self) -> Option<&mut dyn tabi_libos::nn_state::Backend> {
        Some(&mut self.nn)
    }
}

/// The `wasi_ephemeral_nn` ABI with hostile arguments against a kernel whose host has
/// [`FakeNn`]: error codes, never a panic or a trap; at most `bound` bytes allocated by a
/// call over a 64 KiB memory whatever sizes the guest claims; the kernel's state valid
/// (and within small limits) after each call, and the same after an encode and decode.
pub fn nn_calls(
    u: &mut arbitrary::Unstructured<'_>,
    alloc: &PeakAlloc,
    bound: usize,
) -> arbitrary::Result<[usize; 7]> {
    let mut memory = vec![0u8; 64 << 10];
    let fill = u.int_in_range(0..=256)?;
    for b in memory.iter_mut().take(fill) {
        *b = u.arbitrary()?;
    }
    // A model and a tensor in place, so that calls get past their first checks.
    memory[8192..8200].copy_from_slice(&[0, 1, 2, 3, 4, 5, 6, 7]);
    memory[1024..1032].copy_from_slice(&[0, 32, 0, 0, 8, 0, 0, 0]);
    memory[4096..4116]
        .copy_from_slice(&[0, 20, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 24, 0, 0, 4, 0, 0, 0]);
    memory[5120..5124].copy_from_slice(&4u32.to_le_bytes());
    memory[6144..6145].copy_from_slice(b"m");
    let mut host = NnHost {
        quiet: QuietHost { fs: None },
        nn: FakeNn,
    };
    let mut k = Kernel::new();
    let nn_limits = tabi_libos::nn_state::Limits {
        model_bytes: 32 << 10,
        models_bytes: 48 << 10,
        tensor_bytes: 16 << 10,
        tensors_bytes: 40 << 10,
        dims: 8,
        handles: 16,
    };
    k.set_nn_limits(nn_limits);
    let limits = tabi_libos::StateLimits {
        nn: nn_limits,
        ..Default::default()
    };
    fn int(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<i32> {
        Ok(match u.int_in_range(0..=5)? {
            0 => u.int_in_range(0..=8)?,
            1 => u.int_in_range(0..=(64 << 10))?,
            2 => *u.choose(&[1024, 4096, 5120, 6144, 8192])?,
            3 => u.arbitrary()?,
            4 => u.int_in_range(0..=16)?,
            _ => -1,
        })
    }
    // Arguments that pass every check, per function in `NAMES` order, which the input
    // perturbs one by one: load a model, load one by name, make a context, set input 0 (a
    // tensor of four bytes), compute, read output 0.
    const PLAUSIBLE: [&[i32]; 7] = [
        &[1024, 1, 1, 0, 5200],
        &[6144, 1, 5204],
        &[6144, 1, 6144, 1, 5208],
        &[0, 5212],
        &[0, 0, 4096],
        &[0],
        &[0, 0, 7000, 4096, 5216],
    ];
    let mut succeeded = [0usize; 7];
    for _ in 0..u.int_in_range(1..=24)? {
        let which = u.choose_index(tabi_libos::nn::NAMES.len())?;
        let before = alloc.reset();
        macro_rules! call {
            ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {{
                let mut i = 0;
                $(
                    if i == which {
                        let plausible = u.ratio(3, 4)?;
                        let mut at = 0;
                        $(
                            let $arg = if plausible && !u.ratio(1, 6)? {
                                PLAUSIBLE[i].get(at).copied().unwrap_or(0)
                            } else {
                                int(u)?
                            } as $ty;
                            at += 1;
                        )*
                        let _ = at;
                        let r = tabi_libos::nn::$name(&mut k, &mut host, &mut memory, $($arg),*);
                        assert!(matches!(r, Ok(0..=8)), "{}: {r:?}", stringify!($name));
                        if r == Ok(0) {
                            succeeded[i] += 1;
                        }
                    }
                    i += 1;
                )*
                let _ = i;
            }};
        }
        tabi_libos::for_each_nn_function!(call);
        let grown = alloc.peak().saturating_sub(before);
        assert!(
            grown <= bound,
            "{} allocated {grown} bytes",
            tabi_libos::nn::NAMES[which]
        );
        let mut checked = k.clone();
        if let Err(e) = checked.check(&limits) {
            panic!(
                "{} left an invalid state: {e}",
                tabi_libos::nn::NAMES[which]
            );
        }
        let bytes = tabi_libos::encode_state(&k).unwrap();
        let back = tabi_libos::decode_checked(&bytes, 1 << 24, &limits).unwrap();
        assert_eq!(back.nn(), k.nn());
    }
    Ok(succeeded)
}
