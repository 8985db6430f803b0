//! The in-memory file system: an inode table of plain enums.
//!
//! Inodes live in a `Vec` indexed by [`Ino`]; freed slots are reused. A directory keeps its entries
//! in name order for lookups and in insertion order (by a per-directory sequence number) for
//! `readdir`, so a cookie handed to the guest stays valid while other entries come and go.
//! A file's bytes are stored once, in its inode; every descriptor and hard link refers to it by
//! index. Nothing here reads a clock: every operation that changes a timestamp takes `now`.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::error::{FsError, FsResult};
use crate::types::{DirEntry, FileType, Ino, MAX_SYMLINKS, NAME_MAX, PATH_MAX, SetTime, Stat};

/// Device number reported for in-memory objects.
pub const MEM_DEV: u64 = 0x7461_6269; // "tabi"

/// Cookie of the first entry after `.` and `..`.
const FIRST_ENTRY_SEQ: u64 = 3;

/// Most inodes one file system holds, as tmpfs' `nr_inodes`: a guest's create past
/// [`MAX_INODES`] less [`RESERVED_INODES`] is `ENOSPC`, and a decoded file system with more is
/// refused.
pub const MAX_INODES: usize = 1 << 20;

/// Inodes kept for the kernel's own use (roots of memory mounts, the in-memory homes of host
/// files unlinked while open): at most one for each descriptor.
pub const RESERVED_INODES: usize = 1 << 15;

/// Bytes an inode is charged against [`MemFs::limit_bytes`] besides its contents, for its
/// metadata.
pub const INODE_COST: u64 = 128;

/// Bytes a directory entry is charged against [`MemFs::limit_bytes`] besides its name.
pub const ENTRY_COST: u64 = 64;

/// What a directory entry named `name` is charged.
fn entry_cost(name: &str) -> u64 {
    ENTRY_COST + name.len() as u64
}

/// What an inode holding `node` is charged: its metadata and what it stores (a file's bytes, a
/// symlink's target). A directory's entries are charged on their own.
fn node_cost(node: &Node) -> u64 {
    INODE_COST
        + match node {
            Node::File(d) => d.len() as u64,
            Node::Symlink(t) => t.len() as u64,
            Node::Dir(_) => 0,
        }
}

/// A directory's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Name → (inode, sequence number).
    entries: BTreeMap<String, (Ino, u64)>,
    /// Sequence number → name: the order `readdir` yields.
    order: BTreeMap<u64, String>,
    /// Sequence number the next entry gets.
    next_seq: u64,
    /// The directory that holds this one (itself for a root).
    parent: Ino,
}

impl Directory {
    fn new(parent: Ino) -> Self {
        Directory {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: FIRST_ENTRY_SEQ,
            parent,
        }
    }

    /// Looks up a name.
    pub fn get(&self, name: &str) -> Option<Ino> {
        self.entries.get(name).map(|&(ino, _)| ino)
    }

    /// Number of entries, not counting `.` and `..`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the directory has no entries besides `.` and `..`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, name: String, ino: Ino) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, name.clone());
        if let Some((_, old_seq)) = self.entries.insert(name, (ino, seq)) {
            self.order.remove(&old_seq);
        }
    }

    fn remove(&mut self, name: &str) -> Option<Ino> {
        let (ino, seq) = self.entries.remove(name)?;
        self.order.remove(&seq);
        Some(ino)
    }

    /// Names in insertion order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.order.values().map(String::as_str)
    }
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A directory.
    Dir(Directory),
    /// A symbolic link and its target.
    Symlink(String),
}

/// One inode: a node plus its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// The object itself.
    pub node: Node,
    /// Number of directory entries naming it (0 once unlinked or removed).
    pub nlink: u32,
    /// Number of open descriptors that keep it alive.
    pub open: u32,
    /// Access time (ns since the epoch).
    pub atim: u64,
    /// Modification time (ns since the epoch).
    pub mtim: u64,
    /// Status change time (ns since the epoch).
    pub ctim: u64,
}

impl Inode {
    fn new(node: Node, now: u64) -> Self {
        Inode {
            node,
            nlink: 1,
            open: 0,
            atim: now,
            mtim: now,
            ctim: now,
        }
    }

    /// The kind of object.
    pub fn filetype(&self) -> FileType {
        match self.node {
            Node::File(_) => FileType::RegularFile,
            Node::Dir(_) => FileType::Directory,
            Node::Symlink(_) => FileType::SymbolicLink,
        }
    }
}

/// Where a path led.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The directory holding the final component (the object itself when the path ends in `.`
    /// or `..`).
    pub dir: Ino,
    /// The final component, or `None` when the path ended in `.` or `..`.
    pub name: Option<String>,
    /// The object the path names, if it exists.
    pub ino: Option<Ino>,
    /// The path ended with `/`, so the object must be a directory.
    pub must_be_dir: bool,
}

impl Resolved {
    /// The object, or [`FsError::NoEntry`] if it does not exist.
    pub fn existing(&self) -> FsResult<Ino> {
        self.ino.ok_or(FsError::NoEntry)
    }

    /// The final name, or [`FsError::Exists`] when the path ended in `.` or `..` (which always
    /// exist, so nothing can be created there).
    pub fn new_name(&self) -> FsResult<&str> {
        match (&self.name, self.ino) {
            (Some(name), None) => Ok(name),
            (_, Some(_)) => Err(FsError::Exists),
            (None, None) => Err(FsError::NoEntry),
        }
    }
}

/// Why a decoded [`MemFs`] cannot be used: the first invariant [`MemFs::check`] found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFs(pub String);

impl core::fmt::Display for InvalidFs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "the in-memory file system is inconsistent: {}", self.0)
    }
}

impl core::error::Error for InvalidFs {}

fn invalid<T>(what: impl Into<String>) -> Result<T, InvalidFs> {
    Err(InvalidFs(what.into()))
}

/// An in-memory file system: a table of inodes, each directory tree rooted at an inode made by
/// [`MemFs::new_root`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemFs {
    nodes: Vec<Option<Inode>>,
    free: Vec<Ino>,
    /// Bytes charged for everything the file system stores: file contents, symlink targets,
    /// names, and [`INODE_COST`] and [`ENTRY_COST`] for each inode and entry.
    used_bytes: u64,
    /// Most bytes [`MemFs::used_bytes`] may reach.
    limit_bytes: u64,
}

impl Default for MemFs {
    fn default() -> Self {
        Self::new()
    }
}

impl MemFs {
    /// Default for [`MemFs::limit_bytes`]: 4 GiB of file contents.
    pub const DEFAULT_LIMIT_BYTES: u64 = 4 << 30;

    /// An empty file system with no roots.
    pub fn new() -> Self {
        MemFs {
            nodes: Vec::new(),
            free: Vec::new(),
            used_bytes: 0,
            limit_bytes: Self::DEFAULT_LIMIT_BYTES,
        }
    }

    /// Sets the most bytes the file system may hold (contents, names, symlink targets and the
    /// metadata of each inode and entry); a change past it fails with [`FsError::NoSpace`].
    pub fn set_limit_bytes(&mut self, limit: u64) {
        self.limit_bytes = limit;
    }

    /// Most bytes the file system may hold.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Bytes charged for everything the file system holds (see [`MemFs::set_limit_bytes`]).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Bytes held in regular files.
    pub fn file_bytes(&self) -> u64 {
        self.nodes
            .iter()
            .flatten()
            .map(|i| match &i.node {
                Node::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Fails with [`FsError::NoSpace`] unless `more` bytes fit under the limit.
    fn fits(&self, more: u64) -> FsResult<()> {
        if self.used_bytes.saturating_add(more) > self.limit_bytes {
            return Err(FsError::NoSpace);
        }
        Ok(())
    }

    /// Number of live inodes.
    pub fn inode_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Puts `inode` in a free slot and charges it. The callers that a guest drives check
    /// [`MemFs::fits`] and the inode count first.
    fn alloc(&mut self, inode: Inode) -> Ino {
        self.used_bytes = self.used_bytes.saturating_add(node_cost(&inode.node));
        if let Some(ino) = self.free.pop() {
            self.nodes[ino as usize] = Some(inode);
            ino
        } else {
            self.nodes.push(Some(inode));
            (self.nodes.len() - 1) as Ino
        }
    }

    /// Makes a new, empty directory that belongs to no other directory: the root of a tree a
    /// preopen can name. It stays alive while it has an open reference (see [`MemFs::retain`]).
    pub fn new_root(&mut self, now: u64) -> Ino {
        let ino = self.alloc(Inode::new(Node::Dir(Directory::new(0)), now));
        if let Some(Node::Dir(dir)) = self.nodes[ino as usize].as_mut().map(|i| &mut i.node) {
            dir.parent = ino;
        }
        ino
    }

    /// Makes a new, empty regular file that no directory names, held by one open reference (see
    /// [`MemFs::release`]): the in-memory home of a file that lost its last name while open.
    pub fn new_unlinked_file(&mut self, now: u64) -> Ino {
        let mut inode = Inode::new(Node::File(Vec::new()), now);
        inode.nlink = 0;
        inode.open = 1;
        self.alloc(inode)
    }

    /// Makes a new, empty directory that no directory names (it was removed), held by one open
    /// reference (see [`MemFs::release`]): the in-memory home of a directory removed while
    /// open. Nothing can be created in it, as in any removed directory.
    pub fn new_removed_dir(&mut self, now: u64) -> Ino {
        let ino = self.new_root(now);
        if let Some(inode) = self.nodes[ino as usize].as_mut() {
            inode.nlink = 0;
            inode.open = 1;
        }
        ino
    }

    /// The inode at `ino`.
    pub fn inode(&self, ino: Ino) -> FsResult<&Inode> {
        self.nodes
            .get(ino as usize)
            .and_then(Option::as_ref)
            .ok_or(FsError::BadDescriptor)
    }

    fn inode_mut(&mut self, ino: Ino) -> FsResult<&mut Inode> {
        self.nodes
            .get_mut(ino as usize)
            .and_then(Option::as_mut)
            .ok_or(FsError::BadDescriptor)
    }

    /// Whether `ino` is a root: a live directory that is its own parent (made by
    /// [`MemFs::new_root`], or a directory removed while open).
    pub fn is_root(&self, ino: Ino) -> bool {
        self.dir(ino).is_ok_and(|d| d.parent == ino)
    }

    /// The directory at `ino`, or [`FsError::NotDir`].
    pub fn dir(&self, ino: Ino) -> FsResult<&Directory> {
        match &self.inode(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> FsResult<&mut Directory> {
        match &mut self.inode_mut(ino)?.node {
            Node::Dir(d) => Ok(d),
            _ => Err(FsError::NotDir),
        }
    }

    /// A directory that may still get new entries: it exists and has not been removed.
    fn live_dir_mut(&mut self, ino: Ino) -> FsResult<&mut Directory> {
        let inode = self.inode_mut(ino)?;
        if inode.nlink == 0 {
            return Err(FsError::NoEntry);
        }
        match &mut inode.node {
            Node::Dir(d) => Ok(d),
            _ => Err(FsError::NotDir),
        }
    }

    /// Counts an open descriptor on `ino`, keeping it alive after its last link goes.
    pub fn retain(&mut self, ino: Ino) -> FsResult<()> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    /// Drops an open descriptor on `ino`, freeing it if nothing else refers to it.
    pub fn release(&mut self, ino: Ino) -> FsResult<()> {
        let inode = self.inode_mut(ino)?;
        inode.open = inode.open.saturating_sub(1);
        self.maybe_free(ino);
        Ok(())
    }

    fn maybe_free(&mut self, ino: Ino) {
        let Some(Some(inode)) = self.nodes.get(ino as usize) else {
            return;
        };
        if inode.nlink == 0 && inode.open == 0 {
            self.used_bytes = self.used_bytes.saturating_sub(node_cost(&inode.node));
            self.nodes[ino as usize] = None;
            self.free.push(ino);
        }
    }

    /// The attributes of `ino`.
    pub fn stat(&self, ino: Ino) -> FsResult<Stat> {
        let inode = self.inode(ino)?;
        let size = match &inode.node {
            Node::File(d) => d.len() as u64,
            Node::Dir(d) => d.len() as u64,
            Node::Symlink(t) => t.len() as u64,
        };
        Ok(Stat {
            dev: MEM_DEV,
            ino: u64::from(ino) + 1,
            filetype: inode.filetype(),
            nlink: u64::from(inode.nlink),
            size,
            atim: inode.atim,
            mtim: inode.mtim,
            ctim: inode.ctim,
        })
    }

    /// Resolves `path` relative to the directory `start`, never leaving it.
    ///
    /// Components are popped one at a time: `..` above `start` and absolute paths or symlink
    /// targets are [`FsError::Escape`]; more than [`MAX_SYMLINKS`] symlinks is [`FsError::Loop`].
    /// When `follow` is set, a symlink in the final position is followed too (it always is when
    /// the path ends with `/`). A missing final component is not an error: `ino` is `None`.
    pub fn resolve(&self, start: Ino, path: &str, follow: bool) -> FsResult<Resolved> {
        if path.is_empty() {
            return Err(FsError::NoEntry);
        }
        if path.len() > PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        if path.starts_with('/') {
            return Err(FsError::Escape);
        }
        self.dir(start)?;
        let mut stack: Vec<Ino> = vec![start];
        let mut must_be_dir = path.ends_with('/');
        // Components still to walk, last first.
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(String::from)
            .collect();
        let mut links = 0u32;
        while let Some(comp) = pending.pop() {
            let last = pending.is_empty();
            let cur = *stack.last().expect("stack never empties");
            match comp.as_str() {
                "." => {}
                ".." => {
                    if stack.len() == 1 {
                        return Err(FsError::Escape);
                    }
                    stack.pop();
                }
                name => {
                    if name.len() > NAME_MAX {
                        return Err(FsError::NameTooLong);
                    }
                    let found = self.dir(cur)?.get(name);
                    let Some(ino) = found else {
                        if last {
                            return Ok(Resolved {
                                dir: cur,
                                name: Some(comp),
                                ino: None,
                                must_be_dir,
                            });
                        }
                        return Err(FsError::NoEntry);
                    };
                    let inode = self.inode(ino)?;
                    if let Node::Symlink(target) = &inode.node
                        && (!last || follow || must_be_dir)
                    {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(FsError::Loop);
                        }
                        if target.starts_with('/') {
                            return Err(FsError::Escape);
                        }
                        if target.is_empty() {
                            return Err(FsError::NoEntry);
                        }
                        if last && target.ends_with('/') {
                            must_be_dir = true;
                        }
                        pending.extend(
                            target
                                .split('/')
                                .filter(|c| !c.is_empty())
                                .rev()
                                .map(String::from),
                        );
                        continue;
                    }
                    if last {
                        return Ok(Resolved {
                            dir: cur,
                            name: Some(comp),
                            ino: Some(ino),
                            must_be_dir,
                        });
                    }
                    if !matches!(inode.node, Node::Dir(_)) {
                        return Err(FsError::NotDir);
                    }
                    stack.push(ino);
                }
            }
        }
        // The path ended in `.` or `..` (or a symlink to one).
        let cur = *stack.last().expect("stack never empties");
        Ok(Resolved {
            dir: cur,
            name: None,
            ino: Some(cur),
            must_be_dir: true,
        })
    }

    fn check_name(name: &str) -> FsResult<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(FsError::Invalid);
        }
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// Adds the entry `name` → `ino` to `dir`, charging it; the caller checked that it fits.
    fn link_into(&mut self, dir: Ino, name: &str, ino: Ino, now: u64) -> FsResult<()> {
        let d = self.live_dir_mut(dir)?;
        d.insert(name.to_string(), ino);
        self.used_bytes = self.used_bytes.saturating_add(entry_cost(name));
        let parent = self.inode_mut(dir)?;
        parent.mtim = now;
        parent.ctim = now;
        Ok(())
    }

    fn create(&mut self, dir: Ino, name: &str, node: Node, now: u64) -> FsResult<Ino> {
        Self::check_name(name)?;
        let d = self.live_dir_mut(dir)?;
        if d.get(name).is_some() {
            return Err(FsError::Exists);
        }
        if self.inode_count() >= MAX_INODES - RESERVED_INODES {
            return Err(FsError::NoSpace);
        }
        self.fits(node_cost(&node) + entry_cost(name))?;
        let ino = self.alloc(Inode::new(node, now));
        self.link_into(dir, name, ino, now)?;
        Ok(ino)
    }

    /// Creates an empty regular file `name` in `dir`.
    pub fn create_file(&mut self, dir: Ino, name: &str, now: u64) -> FsResult<Ino> {
        self.create(dir, name, Node::File(Vec::new()), now)
    }

    /// Creates an empty directory `name` in `dir`.
    pub fn mkdir(&mut self, dir: Ino, name: &str, now: u64) -> FsResult<Ino> {
        self.create(dir, name, Node::Dir(Directory::new(dir)), now)
    }

    /// Creates a symbolic link `name` in `dir` that points to `target`.
    pub fn symlink(&mut self, dir: Ino, name: &str, target: &str, now: u64) -> FsResult<Ino> {
        if target.is_empty() {
            return Err(FsError::NoEntry);
        }
        if target.len() > PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        self.create(dir, name, Node::Symlink(target.to_string()), now)
    }

    /// Adds a hard link `name` in `dir` to the existing non-directory `ino`.
    pub fn link(&mut self, dir: Ino, name: &str, ino: Ino, now: u64) -> FsResult<()> {
        Self::check_name(name)?;
        let inode = self.inode(ino)?;
        if matches!(inode.node, Node::Dir(_)) {
            return Err(FsError::Perm);
        }
        if inode.nlink == 0 {
            return Err(FsError::NoEntry);
        }
        if self.live_dir_mut(dir)?.get(name).is_some() {
            return Err(FsError::Exists);
        }
        self.fits(entry_cost(name))?;
        self.link_into(dir, name, ino, now)?;
        let inode = self.inode_mut(ino)?;
        inode.nlink += 1;
        inode.ctim = now;
        Ok(())
    }

    /// Removes the non-directory entry `name` from `dir`.
    pub fn unlink(&mut self, dir: Ino, name: &str, now: u64) -> FsResult<()> {
        let ino = self.dir(dir)?.get(name).ok_or(FsError::NoEntry)?;
        if matches!(self.inode(ino)?.node, Node::Dir(_)) {
            return Err(FsError::IsDir);
        }
        self.detach(dir, name, now)?;
        Ok(())
    }

    /// Removes the empty directory `name` from `dir`.
    pub fn rmdir(&mut self, dir: Ino, name: &str, now: u64) -> FsResult<()> {
        let ino = self.dir(dir)?.get(name).ok_or(FsError::NoEntry)?;
        if !self.dir(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        self.detach(dir, name, now)?;
        Ok(())
    }

    /// Takes `name` out of `dir` and drops one link of what it named.
    fn detach(&mut self, dir: Ino, name: &str, now: u64) -> FsResult<Ino> {
        let ino = self.dir_mut(dir)?.remove(name).ok_or(FsError::NoEntry)?;
        self.used_bytes = self.used_bytes.saturating_sub(entry_cost(name));
        let parent = self.inode_mut(dir)?;
        parent.mtim = now;
        parent.ctim = now;
        let inode = self.inode_mut(ino)?;
        inode.nlink = match inode.node {
            Node::Dir(_) => 0,
            _ => inode.nlink.saturating_sub(1),
        };
        inode.ctim = now;
        self.maybe_free(ino);
        Ok(ino)
    }

    /// Whether `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> FsResult<bool> {
        // Depth is bounded by the number of inodes, so this always ends.
        for _ in 0..=self.nodes.len() {
            if ino == ancestor {
                return Ok(true);
            }
            let parent = self.dir(ino)?.parent;
            if parent == ino {
                return Ok(false);
            }
            ino = parent;
        }
        Ok(false)
    }

    /// Renames `from_dir/from` to `to_dir/to`, replacing what `to` named as POSIX `rename` does.
    pub fn rename(
        &mut self,
        from_dir: Ino,
        from: &str,
        to_dir: Ino,
        to: &str,
        now: u64,
    ) -> FsResult<()> {
        Self::check_name(to)?;
        let src = self.dir(from_dir)?.get(from).ok_or(FsError::NoEntry)?;
        self.live_dir_mut(to_dir)?;
        let src_is_dir = matches!(self.inode(src)?.node, Node::Dir(_));
        let existing = self.dir(to_dir)?.get(to);
        if let Some(dst) = existing {
            if dst == src {
                // Both names are links to the same object: POSIX says do nothing.
                return Ok(());
            }
            match (&self.inode(dst)?.node, src_is_dir) {
                (Node::Dir(d), true) => {
                    if !d.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                }
                (Node::Dir(_), false) => return Err(FsError::IsDir),
                (_, true) => return Err(FsError::NotDir),
                (_, false) => {}
            }
        }
        if src_is_dir && self.is_ancestor(src, to_dir)? {
            return Err(FsError::Invalid);
        }
        // The new name is charged, the old one's charge given back (and the replaced entry's).
        let freed = entry_cost(from) + existing.map_or(0, |_| entry_cost(to));
        self.fits(entry_cost(to).saturating_sub(freed))?;
        if existing.is_some() {
            self.detach(to_dir, to, now)?;
        }
        self.dir_mut(from_dir)?.remove(from);
        self.used_bytes = self.used_bytes.saturating_sub(entry_cost(from));
        self.link_into(to_dir, to, src, now)?;
        if from_dir != to_dir {
            let parent = self.inode_mut(from_dir)?;
            parent.mtim = now;
            parent.ctim = now;
        }
        let inode = self.inode_mut(src)?;
        inode.ctim = now;
        if let Node::Dir(d) = &mut inode.node {
            d.parent = to_dir;
        }
        Ok(())
    }

    /// The target of the symlink `ino`.
    pub fn readlink(&self, ino: Ino) -> FsResult<&str> {
        match &self.inode(ino)?.node {
            Node::Symlink(t) => Ok(t),
            _ => Err(FsError::Invalid),
        }
    }

    fn file(&self, ino: Ino) -> FsResult<&Vec<u8>> {
        match &self.inode(ino)?.node {
            Node::File(d) => Ok(d),
            Node::Dir(_) => Err(FsError::IsDir),
            Node::Symlink(_) => Err(FsError::Invalid),
        }
    }

    /// The bytes of the file `ino`.
    pub fn contents(&self, ino: Ino) -> FsResult<&[u8]> {
        self.file(ino).map(Vec::as_slice)
    }

    /// Reads from the file `ino` at `offset` into `buf`; returns how many bytes were read.
    pub fn read_at(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let data = self.file(ino)?;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    /// Resizes file data to `len`, charging the change against the byte limit.
    fn resize(&mut self, ino: Ino, len: u64) -> FsResult<()> {
        let old = self.file(ino)?.len() as u64;
        if len > old {
            let grow = len - old;
            self.fits(grow)?;
            let len = usize::try_from(len).map_err(|_| FsError::TooBig)?;
            let Node::File(data) = &mut self.inode_mut(ino)?.node else {
                return Err(FsError::Invalid);
            };
            data.try_reserve(len - data.len())
                .map_err(|_| FsError::NoSpace)?;
            data.resize(len, 0);
            self.used_bytes += grow;
        } else if len < old {
            let Node::File(data) = &mut self.inode_mut(ino)?.node else {
                return Err(FsError::Invalid);
            };
            data.truncate(len as usize);
            data.shrink_to(len as usize);
            self.used_bytes -= old - len;
        }
        Ok(())
    }

    /// Writes `buf` into the file `ino` at `offset`, growing it (with zeros) as needed.
    pub fn write_at(&mut self, ino: Ino, offset: u64, buf: &[u8], now: u64) -> FsResult<usize> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(FsError::TooBig)?;
        if end > self.file(ino)?.len() as u64 {
            self.resize(ino, end)?;
        }
        let inode = self.inode_mut(ino)?;
        let Node::File(data) = &mut inode.node else {
            return Err(FsError::Invalid);
        };
        let start = offset as usize;
        data[start..start + buf.len()].copy_from_slice(buf);
        if !buf.is_empty() {
            inode.mtim = now;
            inode.ctim = now;
        }
        Ok(buf.len())
    }

    /// Sets the size of the file `ino`.
    pub fn set_size(&mut self, ino: Ino, len: u64, now: u64) -> FsResult<()> {
        self.resize(ino, len)?;
        let inode = self.inode_mut(ino)?;
        inode.mtim = now;
        inode.ctim = now;
        Ok(())
    }

    /// Makes sure the file `ino` is at least `len` bytes long (`posix_fallocate`).
    pub fn allocate(&mut self, ino: Ino, len: u64, now: u64) -> FsResult<()> {
        if len > self.file(ino)?.len() as u64 {
            self.set_size(ino, len, now)?;
        }
        Ok(())
    }

    /// Changes the access and modification times of `ino`.
    pub fn set_times(&mut self, ino: Ino, atim: SetTime, mtim: SetTime, now: u64) -> FsResult<()> {
        let inode = self.inode_mut(ino)?;
        match atim {
            SetTime::Omit => {}
            SetTime::Now => inode.atim = now,
            SetTime::At(t) => inode.atim = t,
        }
        match mtim {
            SetTime::Omit => {}
            SetTime::Now => inode.mtim = now,
            SetTime::At(t) => inode.mtim = t,
        }
        if atim != SetTime::Omit || mtim != SetTime::Omit {
            inode.ctim = now;
        }
        Ok(())
    }

    /// Reads the directory `dir` from `cookie` on: `.`, `..`, then the entries in the order they
    /// were made. Each entry's `next` cookie resumes after it, whatever changes in between.
    pub fn readdir(&self, dir: Ino, cookie: u64) -> FsResult<Vec<DirEntry>> {
        let d = self.dir(dir)?;
        let mut out = Vec::new();
        if cookie < 1 {
            out.push(DirEntry {
                next: 1,
                ino: u64::from(dir) + 1,
                filetype: FileType::Directory,
                name: ".".to_string(),
            });
        }
        if cookie < 2 {
            out.push(DirEntry {
                next: 2,
                ino: u64::from(d.parent) + 1,
                filetype: FileType::Directory,
                name: "..".to_string(),
            });
        }
        let from = cookie.saturating_add(1).max(FIRST_ENTRY_SEQ);
        for (&seq, name) in d.order.range(from..) {
            let (ino, _) = d.entries[name];
            let filetype = self.inode(ino)?.filetype();
            out.push(DirEntry {
                next: seq,
                ino: u64::from(ino) + 1,
                filetype,
                name: name.clone(),
            });
        }
        Ok(out)
    }

    /// Checks every invariant the operations rely on, for a file system that came from
    /// outside (a snapshot): the free list names exactly the empty slots; each directory's two
    /// maps agree and name live inodes by valid names; a directory is named once, by its
    /// parent, and every directory's parents lead to a root; link counts match the entries;
    /// `held` (the inodes open descriptors hold, once per descriptor) matches the open counts;
    /// nothing is both unnamed and unheld; symlink targets are short enough.
    ///
    /// Then the charge is counted again from what the tree holds (the stored one is not
    /// trusted) and the limit set to `limit_bytes`, the resumer's: a tree over it is refused.
    /// Runs in time linear in the size of the tree, with no recursion.
    pub fn check(&mut self, held: &[Ino], limit_bytes: u64) -> Result<(), InvalidFs> {
        let n = self.nodes.len();
        if n > MAX_INODES {
            return invalid(alloc::format!(
                "{n} inode slots, over the most of {MAX_INODES}"
            ));
        }
        let mut in_free = vec![false; n];
        for &ino in &self.free {
            match self.nodes.get(ino as usize) {
                Some(None) if !in_free[ino as usize] => in_free[ino as usize] = true,
                _ => {
                    return invalid(alloc::format!(
                        "free list entry {ino} is live, repeated or out of range"
                    ));
                }
            }
        }
        let empty = self.nodes.iter().filter(|s| s.is_none()).count();
        if empty != self.free.len() {
            return invalid(alloc::format!(
                "{empty} empty inode slots but {} on the free list",
                self.free.len()
            ));
        }
        let live = |ino: Ino| -> Option<&Inode> { self.nodes.get(ino as usize)?.as_ref() };
        let mut named = vec![0u64; n];
        let mut used = 0u64;
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(inode) = slot else { continue };
            used = used.saturating_add(node_cost(&inode.node));
            match &inode.node {
                Node::Dir(d) => {
                    if d.entries.len() != d.order.len() || d.next_seq < FIRST_ENTRY_SEQ {
                        return invalid(alloc::format!(
                            "directory {i}: its entries and order disagree"
                        ));
                    }
                    if !matches!(live(d.parent).map(|p| &p.node), Some(Node::Dir(_))) {
                        return invalid(alloc::format!(
                            "directory {i}: its parent is not a live directory"
                        ));
                    }
                    for (name, &(ino, seq)) in &d.entries {
                        if Self::check_name(name).is_err()
                            || !(FIRST_ENTRY_SEQ..d.next_seq).contains(&seq)
                            || d.order.get(&seq) != Some(name)
                        {
                            return invalid(alloc::format!(
                                "directory {i}: entry {name:?} is malformed"
                            ));
                        }
                        let Some(child) = live(ino) else {
                            return invalid(alloc::format!(
                                "directory {i}: entry {name:?} names a free inode"
                            ));
                        };
                        if let Node::Dir(c) = &child.node
                            && c.parent as usize != i
                        {
                            return invalid(alloc::format!(
                                "directory {i}: entry {name:?} is a directory whose parent is another"
                            ));
                        }
                        named[ino as usize] += 1;
                        used = used.saturating_add(entry_cost(name));
                    }
                }
                Node::Symlink(t) if t.is_empty() || t.len() > PATH_MAX => {
                    return invalid(alloc::format!("symlink {i}: target of {} bytes", t.len()));
                }
                _ => {}
            }
        }
        let mut open = vec![0u64; n];
        for &ino in held {
            match open.get_mut(ino as usize) {
                Some(c) if live(ino).is_some() => *c += 1,
                _ => {
                    return invalid(alloc::format!(
                        "a descriptor holds inode {ino}, which is not live"
                    ));
                }
            }
        }
        for (i, slot) in self.nodes.iter().enumerate() {
            let Some(inode) = slot else { continue };
            if u64::from(inode.open) != open[i] {
                return invalid(alloc::format!(
                    "inode {i} counts {} open descriptors, {} hold it",
                    inode.open,
                    open[i]
                ));
            }
            let ok = match &inode.node {
                Node::Dir(d) if named[i] == 0 => d.parent as usize == i && inode.nlink <= 1,
                Node::Dir(d) => named[i] == 1 && inode.nlink == 1 && d.parent as usize != i,
                _ => u64::from(inode.nlink) == named[i],
            };
            if !ok {
                return invalid(alloc::format!(
                    "inode {i} has {} links and {} entries naming it",
                    inode.nlink,
                    named[i]
                ));
            }
            if inode.nlink == 0 && inode.open == 0 {
                return invalid(alloc::format!("inode {i} is neither named nor open"));
            }
        }
        // Every directory reaches a root through its parents: walk each chain once, marking
        // what is done (2) and what is on the current walk (1), so a cycle shows as a 1.
        let mut mark = vec![0u8; n];
        let mut walk = Vec::new();
        for start in 0..n {
            let mut at = start;
            while let Some(Inode {
                node: Node::Dir(d), ..
            }) = self.nodes[at].as_ref()
            {
                match mark[at] {
                    2 => break,
                    1 => return invalid(alloc::format!("directory {at} is its own ancestor")),
                    _ => {}
                }
                mark[at] = 1;
                walk.push(at);
                if d.parent as usize == at {
                    break;
                }
                at = d.parent as usize;
            }
            for &w in &walk {
                mark[w] = 2;
            }
            walk.clear();
        }
        if used > limit_bytes {
            return invalid(alloc::format!(
                "it holds {used} bytes, over the limit of {limit_bytes}"
            ));
        }
        self.used_bytes = used;
        self.limit_bytes = limit_bytes;
        Ok(())
    }

    /// Lists every object under `root` as `(path, kind, contents)`, paths sorted: a canonical view
    /// of a tree for comparing two runs. Directory contents are empty; a symlink's are its target.
    pub fn tree(&self, root: Ino) -> FsResult<Vec<(String, FileType, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut todo = vec![(String::new(), root)];
        while let Some((prefix, dir)) = todo.pop() {
            for (name, &(ino, _)) in &self.dir(dir)?.entries {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    alloc::format!("{prefix}/{name}")
                };
                let inode = self.inode(ino)?;
                let contents = match &inode.node {
                    Node::File(d) => d.clone(),
                    Node::Symlink(t) => t.as_bytes().to_vec(),
                    Node::Dir(_) => {
                        todo.push((path.clone(), ino));
                        Vec::new()
                    }
                };
                out.push((path, inode.filetype(), contents));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small tree: `/d/f` (a file with 3 bytes), `/d/l` (a hard link to it), `/s` (a
    /// symlink), and a freed slot on the free list.
    fn tree() -> (MemFs, Ino) {
        let mut fs = MemFs::new();
        let root = fs.new_root(0);
        let d = fs.mkdir(root, "d", 0).unwrap();
        let f = fs.create_file(d, "f", 0).unwrap();
        fs.write_at(f, 0, b"abc", 0).unwrap();
        fs.link(d, "l", f, 0).unwrap();
        fs.symlink(root, "s", "d/f", 0).unwrap();
        let gone = fs.create_file(root, "gone", 0).unwrap();
        fs.unlink(root, "gone", 0).unwrap();
        assert!(fs.inode(gone).is_err());
        (fs, root)
    }

    fn refused(fs: &MemFs, why: &str) {
        let mut fs = fs.clone();
        let err = fs.check(&[], MemFs::DEFAULT_LIMIT_BYTES).unwrap_err();
        assert!(err.0.contains(why), "{err} (wanted {why:?})");
    }

    #[test]
    fn a_tree_the_operations_made_passes_and_its_charge_is_counted_again() {
        let (mut fs, _) = tree();
        let charged = fs.used_bytes();
        // Four inodes, three entries in `/d` and the root, three bytes, a 3-byte target.
        assert_eq!(
            charged,
            4 * INODE_COST
                + 3
                + 3
                + entry_cost("d")
                + entry_cost("f")
                + entry_cost("l")
                + entry_cost("s")
        );
        fs.used_bytes = 0;
        fs.limit_bytes = 1;
        fs.check(&[], 1 << 20).unwrap();
        assert_eq!((fs.used_bytes(), fs.limit_bytes()), (charged, 1 << 20));
        // The resumer's limit, not the snapshot's, decides.
        assert!(fs.clone().check(&[], charged - 1).is_err());
    }

    #[test]
    fn each_broken_invariant_is_refused() {
        let (fs, root) = tree();
        let d = fs.dir(root).unwrap().get("d").unwrap();
        let f = fs.dir(d).unwrap().get("f").unwrap();

        // The free list names a live inode: the next create would overwrite it.
        let mut bad = fs.clone();
        bad.free.push(f);
        refused(&bad, "free list");
        // An empty slot the free list does not name.
        let mut bad = fs.clone();
        bad.free.clear();
        refused(&bad, "empty inode slots");
        // An entry naming a freed inode.
        let mut bad = fs.clone();
        let freed = bad.free[0];
        if let Some(Some(Inode {
            node: Node::Dir(dir),
            ..
        })) = bad.nodes.get_mut(d as usize)
        {
            dir.entries.insert("f".into(), (freed, 3));
        }
        refused(&bad, "free inode");
        // The name and order maps disagree.
        let mut bad = fs.clone();
        if let Some(Some(Inode {
            node: Node::Dir(dir),
            ..
        })) = bad.nodes.get_mut(d as usize)
        {
            dir.order.clear();
        }
        refused(&bad, "disagree");
        // A link count that the entries do not bear out.
        let mut bad = fs.clone();
        bad.nodes[f as usize].as_mut().unwrap().nlink = 1;
        refused(&bad, "links");
        // An open count no descriptor holds.
        let mut bad = fs.clone();
        bad.nodes[f as usize].as_mut().unwrap().open = 1;
        refused(&bad, "open descriptors");
        // A directory that is its own grandparent.
        let mut bad = fs.clone();
        let e = bad.mkdir(d, "e", 0).unwrap();
        if let Some(Some(Inode {
            node: Node::Dir(dir),
            ..
        })) = bad.nodes.get_mut(d as usize)
        {
            dir.parent = e;
        }
        refused(&bad, "parent");
        // A symlink target past PATH_MAX.
        let mut bad = fs.clone();
        let s = bad.dir(root).unwrap().get("s").unwrap();
        bad.nodes[s as usize].as_mut().unwrap().node = Node::Symlink("a/".repeat(PATH_MAX));
        refused(&bad, "target");
        // More slots than any file system may have.
        let mut bad = fs.clone();
        bad.free
            .extend((bad.nodes.len()..=MAX_INODES).map(|i| i as Ino));
        bad.nodes.resize(MAX_INODES + 1, None);
        refused(&bad, "slots");
        // A descriptor's hold on a freed inode.
        assert!(fs.clone().check(&[freed], 1 << 20).is_err());
    }

    /// Symlink targets and names are charged like file contents, so a guest cannot grow the
    /// host past the limit through them; over-long paths and targets fail before any work.
    #[test]
    fn names_and_targets_are_charged_and_long_paths_refused_early() {
        let mut fs = MemFs::new();
        let root = fs.new_root(0);
        fs.set_limit_bytes(64 << 10);
        let target = "x".repeat(PATH_MAX);
        let mut made = 0;
        let err = loop {
            match fs.symlink(root, &alloc::format!("link{made}"), &target, 0) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(err, FsError::NoSpace);
        assert!(made < 16, "{made} links of 4 KiB fit in 64 KiB");
        assert!(fs.used_bytes() <= 64 << 10);
        assert_eq!(
            fs.symlink(root, "long", &"x".repeat(PATH_MAX + 1), 0),
            Err(FsError::NameTooLong)
        );
        let huge = "a/".repeat(32 << 20);
        assert_eq!(fs.resolve(root, &huge, true), Err(FsError::NameTooLong));
        // Renaming to a longer name is charged the difference.
        let mut fs = MemFs::new();
        let root = fs.new_root(0);
        fs.create_file(root, "a", 0).unwrap();
        fs.set_limit_bytes(fs.used_bytes() + 10);
        assert_eq!(
            fs.rename(root, "a", root, &"b".repeat(20), 0),
            Err(FsError::NoSpace)
        );
        fs.rename(root, "a", root, &"b".repeat(11), 0).unwrap();
        assert_eq!(fs.used_bytes(), fs.limit_bytes());
    }
}
