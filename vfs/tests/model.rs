//! Random sequences of file-system operations run against `MemFs` and against a plain reference
//! model (a sorted map from path to node); both must give the same results and the same tree,
//! and the state must survive a postcard round-trip at every step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tabi_vfs::{FileType, FsError, Ino, MemFs};

#[derive(Debug, Clone, PartialEq)]
enum M {
    File(Vec<u8>),
    Dir,
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(String),
    Create(String),
    Write(String, u8, Vec<u8>),
    Unlink(String),
    Rmdir(String),
    Rename(String, String),
    Read(String),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..=3)
        .prop_map(|c| c.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Create),
        (
            path(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..8)
        )
            .prop_map(|(p, o, d)| Op::Write(p, o % 16, d)),
        path().prop_map(Op::Unlink),
        path().prop_map(Op::Rmdir),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        path().prop_map(Op::Read),
    ]
}

struct Model(BTreeMap<String, M>);

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(a, _)| a)
}

impl Model {
    /// Checks that every ancestor of `p` is a directory, as resolution does.
    fn walk(&self, p: &str) -> Result<(), FsError> {
        let comps: Vec<&str> = p.split('/').collect();
        for i in 1..comps.len() {
            match self.0.get(&comps[..i].join("/")) {
                None => return Err(FsError::NoEntry),
                Some(M::File(_)) => return Err(FsError::NotDir),
                Some(M::Dir) => {}
            }
        }
        Ok(())
    }

    fn children(&self, p: &str) -> bool {
        let prefix = format!("{p}/");
        self.0.keys().any(|k| k.starts_with(&prefix))
    }

    fn apply(&mut self, op: &Op) -> Result<Vec<u8>, FsError> {
        match op {
            Op::Mkdir(p) | Op::Create(p) => {
                self.walk(p)?;
                if self.0.contains_key(p) {
                    return Err(FsError::Exists);
                }
                let node = if matches!(op, Op::Mkdir(_)) {
                    M::Dir
                } else {
                    M::File(Vec::new())
                };
                self.0.insert(p.clone(), node);
                Ok(vec![])
            }
            Op::Write(p, off, data) => {
                self.walk(p)?;
                match self.0.get_mut(p) {
                    None => Err(FsError::NoEntry),
                    Some(M::Dir) => Err(FsError::IsDir),
                    Some(M::File(bytes)) => {
                        let end = *off as usize + data.len();
                        if bytes.len() < end {
                            bytes.resize(end, 0);
                        }
                        bytes[*off as usize..end].copy_from_slice(data);
                        Ok(vec![])
                    }
                }
            }
            Op::Unlink(p) => {
                self.walk(p)?;
                match self.0.get(p) {
                    None => Err(FsError::NoEntry),
                    Some(M::Dir) => Err(FsError::IsDir),
                    Some(M::File(_)) => {
                        self.0.remove(p);
                        Ok(vec![])
                    }
                }
            }
            Op::Rmdir(p) => {
                self.walk(p)?;
                match self.0.get(p) {
                    None => Err(FsError::NoEntry),
                    Some(M::File(_)) => Err(FsError::NotDir),
                    Some(M::Dir) if self.children(p) => Err(FsError::NotEmpty),
                    Some(M::Dir) => {
                        self.0.remove(p);
                        Ok(vec![])
                    }
                }
            }
            Op::Read(p) => {
                self.walk(p)?;
                match self.0.get(p) {
                    None => Err(FsError::NoEntry),
                    Some(M::Dir) => Err(FsError::IsDir),
                    Some(M::File(b)) => Ok(b.clone()),
                }
            }
            Op::Rename(a, b) => {
                self.walk(a)?;
                self.walk(b)?;
                let src = self.0.get(a).cloned().ok_or(FsError::NoEntry)?;
                if a == b {
                    return Ok(vec![]);
                }
                let src_dir = src == M::Dir;
                if let Some(dst) = self.0.get(b) {
                    match (dst, src_dir) {
                        (M::Dir, true) if self.children(b) => return Err(FsError::NotEmpty),
                        (M::Dir, true) => {}
                        (M::Dir, false) => return Err(FsError::IsDir),
                        (M::File(_), true) => return Err(FsError::NotDir),
                        (M::File(_), false) => {}
                    }
                }
                if src_dir
                    && (parent(b).is_some_and(|pb| pb == a || pb.starts_with(&format!("{a}/"))))
                {
                    return Err(FsError::Invalid);
                }
                self.0.remove(b);
                let prefix = format!("{a}/");
                let moved: Vec<(String, M)> = self
                    .0
                    .iter()
                    .filter(|(k, _)| *k == a || k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (k, v) in moved {
                    self.0.remove(&k);
                    self.0.insert(format!("{b}{}", &k[a.len()..]), v);
                }
                Ok(vec![])
            }
        }
    }

    fn tree(&self) -> Vec<(String, FileType, Vec<u8>)> {
        self.0
            .iter()
            .map(|(k, v)| match v {
                M::Dir => (k.clone(), FileType::Directory, vec![]),
                M::File(b) => (k.clone(), FileType::RegularFile, b.clone()),
            })
            .collect()
    }
}

fn apply(fs: &mut MemFs, root: Ino, op: &Op, now: u64) -> Result<Vec<u8>, FsError> {
    let at = |fs: &MemFs, p: &str| fs.resolve(root, p, false);
    match op {
        Op::Mkdir(p) => {
            let r = at(fs, p)?;
            if r.ino.is_some() {
                return Err(FsError::Exists);
            }
            fs.mkdir(r.dir, r.name.as_deref().unwrap(), now)
                .map(|_| vec![])
        }
        Op::Create(p) => {
            let r = at(fs, p)?;
            if r.ino.is_some() {
                return Err(FsError::Exists);
            }
            fs.create_file(r.dir, r.name.as_deref().unwrap(), now)
                .map(|_| vec![])
        }
        Op::Write(p, off, data) => {
            let ino = at(fs, p)?.existing()?;
            fs.write_at(ino, u64::from(*off), data, now).map(|_| vec![])
        }
        Op::Unlink(p) => {
            let r = at(fs, p)?;
            fs.unlink(r.dir, r.name.as_deref().unwrap(), now)
                .map(|_| vec![])
        }
        Op::Rmdir(p) => {
            let r = at(fs, p)?;
            fs.rmdir(r.dir, r.name.as_deref().unwrap(), now)
                .map(|_| vec![])
        }
        Op::Read(p) => {
            let ino = at(fs, p)?.existing()?;
            fs.contents(ino).map(<[u8]>::to_vec)
        }
        Op::Rename(a, b) => {
            let ra = at(fs, a)?;
            let rb = at(fs, b)?;
            fs.rename(
                ra.dir,
                ra.name.as_deref().unwrap(),
                rb.dir,
                rb.name.as_deref().unwrap(),
                now,
            )
            .map(|_| vec![])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memfs_agrees_with_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut fs = MemFs::new();
        let root = fs.new_root(0);
        let mut model = Model(BTreeMap::new());
        for (i, op) in ops.iter().enumerate() {
            let got = apply(&mut fs, root, op, i as u64);
            let want = model.apply(op);
            prop_assert_eq!(&got, &want, "step {} {:?}", i, op);
            prop_assert_eq!(fs.tree(root).unwrap(), model.tree(), "tree after step {} {:?}", i, op);
            let bytes = postcard::to_allocvec(&fs).unwrap();
            let back: MemFs = postcard::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &fs);
            fs = back;
        }
        let live: u64 = model.0.values().map(|m| match m { M::File(b) => b.len() as u64, M::Dir => 0 }).sum();
        prop_assert_eq!(fs.file_bytes(), live, "file bytes");
        // What the operations charged is what a check counts again from the tree, and every
        // invariant holds.
        let mut checked = fs.clone();
        prop_assert_eq!(checked.check(&[], MemFs::DEFAULT_LIMIT_BYTES), Ok(()));
        prop_assert_eq!(checked.used_bytes(), fs.used_bytes(), "byte accounting");
    }
}
