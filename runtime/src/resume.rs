//! Snapshots as values: read one (or a chain of incremental ones), look inside it, and resume
//! it on either engine with the host grants given again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tabi_libos::host::Stdio;
use tabi_libos::machine::{self, PauseControl, TableImage};
use tabi_libos::{Kernel, MountKind, Object, Process};
use tabi_snapshot::Snapshot;

use crate::error::{Context as _, Error, Result};
use crate::guest::{Begin, Guest, HostFactory, HostSpec, PauseHandle, control};
use crate::module::{RewriteCache, options_of_identity};
use crate::{Engine, checkpoint};

/// Reads and checks the snapshot in file `path` under `limits`.
pub fn read_snapshot(path: &Path, limits: &tabi_snapshot::Limits) -> Result<Snapshot> {
    read_file(path, None, limits)
}

/// Reads and checks a snapshot from `reader` under `limits`; an incremental one is applied to
/// `base`, the snapshot it names as its parent.
pub fn read_snapshot_from(
    reader: impl std::io::Read,
    base: Option<&Snapshot>,
    limits: &tabi_snapshot::Limits,
) -> Result<Snapshot> {
    let mut src = tabi_snapshot::IoSource(reader);
    tabi_snapshot::read(&mut src, limits, base)
        .map_err(Error::Snapshot)
        .map_err(chain_hint)
}

/// Reads a chain of snapshot files: a full snapshot, then incremental ones, each against the
/// one before (as [`crate::CheckpointFiles::incremental`] wrote them). Gives the state of the
/// last, whole.
pub fn read_chain(paths: &[PathBuf], limits: &tabi_snapshot::Limits) -> Result<Snapshot> {
    let (first, rest) = paths
        .split_first()
        .ok_or_else(|| Error::Config("no snapshot file given".into()))?;
    let mut snapshot = read_file(first, None, limits).map_err(chain_hint)?;
    for path in rest {
        snapshot = read_file(path, Some(&snapshot), limits)?;
    }
    Ok(snapshot)
}

/// Reads and checks a snapshot file, against `base` when it is incremental.
fn read_file(
    path: &Path,
    base: Option<&Snapshot>,
    limits: &tabi_snapshot::Limits,
) -> Result<Snapshot> {
    let file = std::fs::File::open(path)
        .map_err(Error::io(format!("cannot open `{}`", path.display())))?;
    let mut src = tabi_snapshot::IoSource(std::io::BufReader::with_capacity(1 << 20, file));
    tabi_snapshot::read(&mut src, limits, base)
        .with_context(|| format!("`{}` is not a valid snapshot", path.display()))
}

/// Adds to an error about an incremental snapshot read alone how to give its chain.
fn chain_hint(e: Error) -> Error {
    if matches!(
        e.snapshot_error(),
        Some(tabi_snapshot::Error::Parent { .. })
    ) {
        e.context(
            "give the chain in order, starting with the full snapshot it grew from \
             (FILE FILE.1 FILE.2 ...)",
        )
    } else {
        e
    }
}

/// What a snapshot holds, as data: what `tabi inspect` prints.
///
/// ```
/// # let engine = tabi::Engine::new(tabi::Backend::Wasmi)?;
/// # let wat = r#"(module
/// #   (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
/// #   (memory (export "memory") 1)
/// #   (func (export "_start") (drop (call $y)) (drop (call $y))))"#;
/// let guest = tabi::GuestBuilder::new(&engine, wat.as_bytes())?.memory_dir("/tmp").pause_after(1).build()?;
/// let tabi::Ended::Paused(paused) = guest.run()? else { panic!() };
/// let bytes = paused.snapshot_bytes()?;
/// let snapshot = tabi::read_snapshot_from(&bytes[..], None, &tabi::Limits::default())?;
/// let seen = tabi::Inspection::of(&snapshot);
/// assert_eq!((seen.entry.as_str(), seen.points, seen.memory_bytes), ("_start", 1, 65536));
/// assert!(seen.descriptors.iter().any(|(fd, what)| *fd == 3 && what.contains("directory")));
/// # Ok::<(), tabi::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The format version it was written in.
    pub version: u16,
    /// Its content hash.
    pub hash: [u8; 32],
    /// SHA-256 of the original module.
    pub original_sha256: [u8; 32],
    /// SHA-256 of the rewritten module that ran.
    pub module_sha256: [u8; 32],
    /// The rewrite's options, as text.
    pub options: String,
    /// For an incremental snapshot, its parent's content hash.
    pub parent: Option<[u8; 32]>,
    /// The export that was running.
    pub entry: String,
    /// Migration points passed when it was taken.
    pub points: u64,
    /// Its sections: name, bytes stored, bytes they stand for.
    pub sections: Vec<(&'static str, u64, u64)>,
    /// Bytes of memory, over all memories.
    pub memory_bytes: u64,
    /// Per table: `None` as instantiated, else (entries, null entries).
    pub tables: Vec<Option<(usize, usize)>>,
    /// The guest's descriptors and what each is.
    pub descriptors: Vec<(u32, String)>,
    /// Guest paths of the host directories it had mounted.
    pub host_mounts: Vec<String>,
}

impl Inspection {
    /// What `snapshot` holds.
    pub fn of(snapshot: &Snapshot) -> Inspection {
        Inspection {
            version: snapshot.version,
            hash: snapshot.hash,
            original_sha256: snapshot.identity.original_sha256,
            module_sha256: snapshot.identity.module_sha256,
            options: crate::module::describe_options(&snapshot.identity.options),
            parent: snapshot.identity.parent,
            entry: snapshot.entry.clone(),
            points: snapshot.points,
            sections: snapshot
                .sections
                .iter()
                .map(|s| (s.id.name(), s.stored, s.raw))
                .collect(),
            memory_bytes: snapshot.memories.iter().map(|m| m.len() as u64).sum(),
            tables: snapshot
                .tables
                .iter()
                .map(|t| match t {
                    TableImage::AsInstantiated => None,
                    TableImage::Funcs(e) => {
                        Some((e.len(), e.iter().filter(|f| f.is_none()).count()))
                    }
                })
                .collect(),
            descriptors: snapshot
                .kernel
                .descriptors()
                .map(|(fd, d)| (fd, describe_object(&d.object)))
                .collect(),
            host_mounts: snapshot
                .mounts
                .iter()
                .map(|m| m.guest_path.clone())
                .collect(),
        }
    }
}

/// A descriptor's object in words; its path is written as Rust debugs a string, quoted and
/// with control characters escaped.
pub fn describe_object(o: &Object) -> String {
    match o {
        Object::Stdin => "stdin".into(),
        Object::Stdout => "stdout".into(),
        Object::Stderr => "stderr".into(),
        Object::MemDir { ino } => format!("in-memory directory (inode {ino})"),
        Object::MemFile { ino, offset } => {
            format!("in-memory file (inode {ino}) at offset {offset}")
        }
        Object::HostDir { mount, path, .. } => format!("host directory {path:?} of mount {mount}"),
        Object::HostFile {
            mount,
            path,
            offset,
            ..
        } => {
            format!("host file {path:?} of mount {mount} at offset {offset}")
        }
    }
}

/// Resumes snapshots: the engine, the host directories granted again, the streams and host,
/// the limits snapshots are read under. The shape of [`crate::GuestBuilder`].
///
/// ```
/// # let engine = tabi::Engine::new(tabi::Backend::Wasmi)?;
/// # let wasm = wat::parse_str(r#"(module
/// #   (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
/// #   (func (export "_start") (drop (call $y)) (drop (call $y))))"#).unwrap();
/// let guest = tabi::GuestBuilder::of_binary(&engine, wasm).pause_after(1).build()?;
/// let tabi::Ended::Paused(paused) = guest.run()? else { panic!("it did not pause") };
/// let bytes = paused.snapshot_bytes()?;
/// let resumed = tabi::Resume::new(&engine).from_reader(&bytes[..])?;
/// assert!(matches!(resumed.run()?.exit(), Some(tabi::Exit::Code(0))));
/// # Ok::<(), tabi::Error>(())
/// ```
#[derive(Clone)]
pub struct Resume {
    engine: Engine,
    dirs: Vec<(PathBuf, String)>,
    module: Option<Vec<u8>>,
    pub(crate) host: HostSpec,
    limits: tabi_snapshot::Limits,
    cache: RewriteCache,
    pause_after: Option<u64>,
    pause: Option<PauseHandle>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("engine", &self.engine)
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Resume {
    /// Resumes on `engine`, granting nothing, with tabi's host and the process's streams.
    pub fn new(engine: &Engine) -> Resume {
        Resume {
            engine: engine.clone(),
            dirs: Vec::new(),
            module: None,
            host: HostSpec::default(),
            limits: tabi_snapshot::Limits::default(),
            cache: RewriteCache::default(),
            pause_after: None,
            pause: None,
        }
    }

    /// Grants host directory `host` again at guest path `guest`, which the guest had mounted;
    /// it must be unchanged since the checkpoint.
    pub fn dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    /// The original module, for a snapshot that does not carry it (it is checked against the
    /// snapshot's hash).
    pub fn module(mut self, wasm: Vec<u8>) -> Self {
        self.module = Some(wasm);
        self
    }

    /// Standard input.
    pub fn stdin(mut self, stdin: Stdio) -> Self {
        self.host.stdin = stdin;
        self
    }

    /// Standard output.
    pub fn stdout(mut self, stdout: Stdio) -> Self {
        self.host.stdout = stdout;
        self
    }

    /// Standard error.
    pub fn stderr(mut self, stderr: Stdio) -> Self {
        self.host.stderr = stderr;
        self
    }

    /// The caller's own host (see [`crate::GuestBuilder::host_factory`]).
    pub fn host_factory(
        mut self,
        factory: impl Fn() -> Box<dyn tabi_libos::Host + Send> + Send + Sync + 'static,
    ) -> Self {
        self.host.factory = Some(Arc::new(factory) as HostFactory);
        self
    }

    /// Preloads `graph` for wasi-nn's `load_by_name`: a guest that loaded a model by name
    /// before the checkpoint finds it again here by content, or the resume is refused.
    pub fn nn_graph(mut self, graph: crate::NnGraph) -> Self {
        self.host.nn.graphs.push(graph);
        self
    }

    /// The cache of compiled inference plans (see [`crate::GuestBuilder::nn_plan_cache`]).
    #[cfg(feature = "nn")]
    pub fn nn_plan_cache(mut self, plans: crate::PlanCache) -> Self {
        self.host.nn.plans = plans;
        self
    }

    /// The limits snapshots are read under (and those the resumed guest's checkpoints are
    /// written under); the key, when set, must have authenticated them.
    pub fn limits(mut self, limits: tabi_snapshot::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The cache of rewritten modules.
    pub fn rewrite_cache(mut self, cache: RewriteCache) -> Self {
        self.cache = cache;
        self
    }

    /// Pauses at the `n`-th migration point after the resume.
    pub fn pause_after(mut self, n: u64) -> Self {
        self.pause_after = Some(n);
        self
    }

    /// Lets `handle` ask the resumed guest for pauses.
    pub fn pause_handle(mut self, handle: &PauseHandle) -> Self {
        self.host.wake = Some(handle.flag());
        self.pause = Some(handle.clone());
        self
    }

    /// Loads the full snapshot in file `path` into a fresh instance (see
    /// [`Resume::from_reader`]).
    pub fn from_file(&self, path: &Path) -> Result<Guest> {
        let file = std::fs::File::open(path)
            .map_err(Error::io(format!("cannot open `{}`", path.display())))?;
        self.from_reader(std::io::BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("cannot resume `{}`", path.display()))
    }

    /// Loads the full snapshot in `reader`: instantiates its module as soon as the snapshot
    /// names it, decodes the memories straight into the instance (no page is copied twice),
    /// and grants the directories again.
    pub fn from_reader(&self, reader: impl std::io::Read) -> Result<Guest> {
        let mut loader = Loader {
            resume: self,
            control: Some(control(self.pause_after, self.pause.as_ref())),
            session: None,
            modules: None,
            memories: 0,
            failure: None,
        };
        let mut src = tabi_snapshot::IoSource(reader);
        let read = tabi_snapshot::read_into(&mut src, &self.limits, &mut loader);
        if let Some(e) = loader.failure.take() {
            return Err(e);
        }
        let mut snapshot = read
            .map_err(Error::Snapshot)
            .map_err(chain_hint)
            .context("not a valid snapshot")?;
        if loader.session.is_none() {
            // A guest without memories: nothing called for the instance yet.
            let head = tabi_snapshot::Head {
                identity: &snapshot.identity,
                module: snapshot.module.as_deref(),
            };
            loader.session = Some(loader.instantiate(&head)?);
        }
        let memories = loader.memories;
        let (Some(mut session), Some((original, instrumented))) = (loader.session, loader.modules)
        else {
            return Err(Error::Config(
                "no instance was made for the snapshot".into(),
            ));
        };
        *session.process_mut() = self.process(&snapshot)?;
        let state = snapshot.take_machine_state();
        Ok(Guest {
            engine: self.engine.clone(),
            original,
            instrumented: Some(instrumented),
            begin: Begin::Loaded {
                session,
                state,
                memories,
            },
            control: PauseControl::never(),
            dirs: self.dirs.clone(),
            limits: self.limits,
            invoke: None,
        })
    }

    /// Resumes a snapshot already read ([`read_chain`], [`read_snapshot`]), consuming its
    /// memories.
    pub fn from_snapshot(&self, mut snapshot: Snapshot) -> Result<Guest> {
        let head = tabi_snapshot::Head {
            identity: &snapshot.identity,
            module: snapshot.module.as_deref(),
        };
        let (original, instrumented) = self.modules_for(&head)?;
        let process = self.process(&snapshot)?;
        let state = snapshot.take_machine_state();
        Ok(Guest {
            engine: self.engine.clone(),
            original,
            instrumented: Some(instrumented),
            begin: Begin::Resume(process, state),
            control: control(self.pause_after, self.pause.as_ref()),
            dirs: self.dirs.clone(),
            limits: self.limits,
            invoke: None,
        })
    }

    /// The module a snapshot resumes with: the original it carries (or the one given,
    /// checked against its hash), rewritten again with the options it records and checked
    /// against the rewrite's hash. Gives (original, instrumented).
    fn modules_for(&self, head: &tabi_snapshot::Head<'_>) -> Result<Modules> {
        let original = match (&self.module, head.module) {
            (Some(m), _) => m.clone(),
            (None, Some(m)) => m.to_vec(),
            (None, None) => {
                return Err(Error::Config(
                    "the snapshot does not carry its module; pass it with --module".into(),
                ));
            }
        };
        if tabi_snapshot::sha256(&original) != head.identity.original_sha256 {
            return Err(Error::Snapshot(tabi_snapshot::Error::ModuleMismatch {
                what: "the module is not the one the snapshot was taken from (SHA-256 differs)"
                    .into(),
            }));
        }
        let options = options_of_identity(&head.identity.options)?;
        let wasm = self.cache.rewrite(&original, &options)?;
        head.identity
            .check_module(Some(&original), &wasm)
            .context("cannot resume")?;
        Ok((Arc::new(original), wasm))
    }

    /// The process a snapshot resumes in: its kernel state, a new host, and the directories
    /// granted again. Every host mount the guest had must be granted under the same guest
    /// path, and its directory must be unchanged since the checkpoint.
    fn process(&self, snapshot: &Snapshot) -> Result<Process> {
        let kernel = snapshot.kernel.clone();
        let mut wanted: Vec<(u32, String)> = kernel
            .mounts()
            .iter()
            .filter_map(|m| match m.kind {
                MountKind::Host { index } => Some((index, m.guest_path.clone())),
                MountKind::Memory { .. } => None,
            })
            .collect();
        wanted.sort();
        let mut order = Vec::new();
        for (index, guest) in &wanted {
            let (h, _) = self.dirs.iter().find(|(_, g)| g == guest).ok_or_else(|| {
                Error::Grant(format!(
                    "the guest had host directory {guest} mounted; grant it again with --dir HOST::{guest}"
                ))
            })?;
            if let Some(m) = snapshot.mounts.iter().find(|m| &m.guest_path == guest)
                && checkpoint::fingerprint(h)? != m.fingerprint
            {
                return Err(Error::Grant(format!(
                    "host directory `{}` (mounted at {guest}) changed since the checkpoint; resuming would corrupt it",
                    h.display()
                )));
            }
            if *index as usize != order.len() {
                return Err(Error::Grant(
                    "host mounts must be granted in the order the guest had them".into(),
                ));
            }
            order.push((h.clone(), guest.clone()));
        }
        for (h, g) in &self.dirs {
            if !wanted.iter().any(|(_, w)| w == g) {
                return Err(Error::Grant(format!(
                    "--dir {}::{g}: the guest had no host directory at {g}",
                    h.display()
                )));
            }
        }
        let (mut host, _) = self.host.make(&order)?;
        crate::nn::check_graphs(&kernel, &mut *host)?;
        Ok(Process { kernel, host })
    }
}

/// A snapshot's modules: the original, and the rewrite that runs.
type Modules = (Arc<Vec<u8>>, Arc<Vec<u8>>);

/// The reader's [`tabi_snapshot::MemoryTarget`]: instantiates the module when the first
/// memory comes, then hands out the instance's memories.
struct Loader<'a> {
    resume: &'a Resume,
    control: Option<PauseControl>,
    session: Option<Box<dyn machine::Session>>,
    modules: Option<Modules>,
    memories: usize,
    /// Why the target failed, beyond what the snapshot error can say.
    failure: Option<Error>,
}

impl Loader<'_> {
    fn instantiate(&mut self, head: &tabi_snapshot::Head<'_>) -> Result<Box<dyn machine::Session>> {
        let (original, wasm) = self.resume.modules_for(head)?;
        // The process is a placeholder until the kernel state, which comes after the
        // memories, has been read and its mounts granted again.
        let process = Process::new(Kernel::new(), tabi_libos::host::StdHost::new());
        let control = self.control.take().unwrap_or_else(PauseControl::never);
        let points = crate::module::points_of(&wasm)?;
        let begun = self.resume.engine.begin(&wasm, process, control, points)?;
        let session = machine::session_or_error(begun)?;
        self.modules = Some((original, wasm));
        Ok(session)
    }
}

impl tabi_snapshot::MemoryTarget for Loader<'_> {
    fn memory(
        &mut self,
        head: &tabi_snapshot::Head<'_>,
        index: u32,
        pages: u32,
    ) -> Result<&mut [u8], tabi_snapshot::Error> {
        if self.session.is_none() {
            match self.instantiate(head) {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    let what = e.to_string();
                    self.failure = Some(e);
                    return Err(tabi_snapshot::Error::ModuleMismatch { what });
                }
            }
        }
        self.memories += 1;
        let name = machine::memory_export(index);
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| tabi_snapshot::Error::Io("no instance".into()))?;
        session
            .memory_mut(&name, pages as usize * tabi_snapshot::PAGE)
            .map_err(|e| tabi_snapshot::Error::Malformed {
                what: format!("memory {index} of {pages} pages does not fit the module: {e}"),
            })
    }
}
