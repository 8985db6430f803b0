//! Modules: reading them (binary or text), rewriting them for checkpoints with the options
//! recorded as data, and the cache of rewritten modules a caller owns.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tabi_instrument::Options;
use tabi_libos::machine::{Points, Value};

use crate::error::{Context as _, Error, Result};

/// The rewrite's options: which imports are migration points, and safepoints.
pub use tabi_instrument::{Options as RewriteOptions, PointRule};

/// The module in file `path`: a binary module as it is, or one in the WebAssembly text format
/// (`.wat`) translated to binary, as `wasmtime run` accepts both (see [`parse_module`]).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(Error::io(format!(
        "cannot read module `{}`",
        path.display()
    )))?;
    parse_module(&bytes, Some(path))
}

/// `bytes` as a binary module: as they are when they are one, or translated from the
/// WebAssembly text format. Bytes that are neither are an error of one line: text names where
/// it stops parsing, other bytes that they lack the binary format's header. `name` is how the
/// messages name the bytes.
pub fn parse_module(bytes: &[u8], name: Option<&Path>) -> Result<Vec<u8>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.to_vec());
    }
    let shown = name.map_or_else(
        || "the module".to_string(),
        |p| format!("`{}`", p.display()),
    );
    if std::str::from_utf8(bytes).is_err() {
        return Err(Error::InvalidModule(format!(
            "{shown} is neither a WebAssembly binary (it lacks the `\\0asm` header) nor \
             WebAssembly text"
        )));
    }
    wat::Parser::new()
        .parse_bytes(name, bytes)
        .map(|wasm| wasm.into_owned())
        .map_err(|e| {
            // The parser's message spans lines (the place, then the line of text): keep the
            // message and the place.
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim);
            let message = lines.next().unwrap_or_default();
            let place = lines
                .next()
                .and_then(|l| l.strip_prefix("--> "))
                .unwrap_or_default();
            Error::InvalidModule(format!(
                "cannot read WebAssembly text: {message} (at {place})"
            ))
        })
}

/// The rewrite options with safepoints on or off and the default migration points.
pub fn rewrite_options(safepoints: bool) -> Options {
    Options {
        safepoints,
        ..Default::default()
    }
}

/// The migration points the adapters count for a module rewritten with `options`: each
/// preview-1 function and `tabi.checkpoint` that `options` make a point (never `proc_exit`).
pub fn points_for(options: &Options) -> Points {
    Points {
        p1: tabi_libos::p1::NAMES
            .iter()
            .map(|n| options.is_point(tabi_libos::p1::MODULE, n))
            .collect(),
        nn: tabi_libos::nn::NAMES
            .iter()
            .map(|n| options.is_point(tabi_libos::nn::MODULE, n))
            .collect(),
        tabi: options.is_point("tabi", "checkpoint"),
    }
}

/// The migration points of an instrumented module, from the options its manifest records;
/// an error when it has no manifest.
pub(crate) fn points_of(instrumented: &[u8]) -> Result<Points> {
    Ok(points_for(&manifest(instrumented)?.options))
}

/// The manifest of an instrumented module.
pub(crate) fn manifest(instrumented: &[u8]) -> Result<tabi_instrument::Manifest> {
    tabi_instrument::Manifest::from_module(instrumented)
        .ok()
        .flatten()
        .ok_or_else(|| Error::Instrument("the module that ran is not instrumented".into()))
}

/// The first bytes of a snapshot identity's options stored as data (format version 4 on, by
/// this library); earlier writers stored display text, which never starts with a zero byte.
const OPTIONS_TAG: &[u8] = b"\0tabi-rewrite\x01";

/// The options as a snapshot's identity stores them: [`OPTIONS_TAG`], then the rewrite's
/// format version and `options` in postcard.
pub(crate) fn identity_options(version: u32, options: &Options) -> Vec<u8> {
    let mut out = OPTIONS_TAG.to_vec();
    // Encoding plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(&(version, options)).unwrap_or_default());
    out
}

/// The rewrite options a snapshot's identity records: stored as data, or (snapshots written
/// before the options were data) read from the text `tabi-instrument format N, safepoints
/// on|off`, which only the default migration points were ever written with.
pub fn options_of_identity(stored: &[u8]) -> Result<Options> {
    if let Some(data) = stored.strip_prefix(OPTIONS_TAG) {
        let (_, options): (u32, Options) = postcard::from_bytes(data).map_err(|e| {
            Error::Snapshot(tabi_snapshot::Error::Malformed {
                what: format!("the identity's rewrite options do not decode: {e}"),
            })
        })?;
        return Ok(options);
    }
    let text = String::from_utf8_lossy(stored);
    if !text.starts_with("tabi-instrument format ") {
        return Err(Error::Snapshot(tabi_snapshot::Error::Malformed {
            what: "the identity's rewrite options are neither data nor the text of an earlier \
                   version"
                .into(),
        }));
    }
    // The default points of those versions: every preview-1 and `tabi` import (wasi-nn's
    // came later).
    let mut options = rewrite_options(text.contains("safepoints on"));
    options
        .points
        .retain(|r| r.module != tabi_libos::nn::MODULE);
    Ok(options)
}

/// The options a snapshot's identity records, as `tabi inspect` shows them.
pub fn describe_options(stored: &[u8]) -> String {
    let Some(data) = stored.strip_prefix(OPTIONS_TAG) else {
        return String::from_utf8_lossy(stored).into_owned();
    };
    match postcard::from_bytes::<(u32, Options)>(data) {
        Ok((version, o)) => {
            let points = if o.points == Options::default().points {
                "default points".to_string()
            } else if o.points.is_empty() {
                "no points".to_string()
            } else {
                let rules: Vec<String> = o
                    .points
                    .iter()
                    .map(|r| match &r.name {
                        Some(n) => format!("{}::{n}", r.module),
                        None => r.module.clone(),
                    })
                    .collect();
                format!("points {}", rules.join(", "))
            };
            format!(
                "tabi-instrument format {version}, safepoints {}, {points}",
                if o.safepoints { "on" } else { "off" }
            )
        }
        Err(_) => "(rewrite options that do not decode)".into(),
    }
}

/// Rewritten modules, kept so that a module is rewritten once: a few in memory, and, when
/// the caller gives one, in a directory that outlives the process (`tabi` uses the user's
/// cache directory). The caller owns it and decides its bounds; clones share it.
///
/// A cached file is used only if its manifest names the original's hash and the same
/// options; the rewrite is deterministic, so a miss gives the same bytes. The manifest is the
/// file's own claim, so a directory cache is only as trustworthy as its directory: whoever
/// can write there chooses the code that runs with the guest's grants. That is why
/// [`RewriteCache::in_directory`] refuses a directory others could write to.
///
/// ```
/// let cache = tabi::RewriteCache::in_memory(4);
/// let wasm = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
/// let first = cache.rewrite(&wasm, &tabi::rewrite_options(false))?;
/// let again = cache.rewrite(&wasm, &tabi::rewrite_options(false))?;
/// assert!(std::sync::Arc::ptr_eq(&first, &again));
/// # Ok::<(), tabi::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RewriteCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    /// The most recently used last.
    memory: Mutex<Vec<(CacheKey, Arc<Vec<u8>>)>>,
    capacity: usize,
    dir: Option<PathBuf>,
}

type CacheKey = ([u8; 32], Options);

impl Default for RewriteCache {
    /// [`RewriteCache::in_memory`] with room for 8 modules.
    fn default() -> Self {
        RewriteCache::in_memory(8)
    }
}

impl RewriteCache {
    /// A cache of at most `capacity` rewritten modules in memory (0: none is kept).
    pub fn in_memory(capacity: usize) -> RewriteCache {
        RewriteCache {
            inner: Arc::new(CacheInner {
                memory: Mutex::new(Vec::new()),
                capacity,
                dir: None,
            }),
        }
    }

    /// [`RewriteCache::in_memory`], and in `dir` as files, made if need be (on Unix readable
    /// by its owner only). A directory that is a symbolic link, belongs to another user or
    /// that others can write to is refused with the reason ([`CacheRefusal`]).
    pub fn in_directory(dir: &Path, capacity: usize) -> Result<RewriteCache, CacheRefusal> {
        private_dir(dir)?;
        Ok(RewriteCache {
            inner: Arc::new(CacheInner {
                memory: Mutex::new(Vec::new()),
                capacity,
                dir: Some(dir.to_path_buf()),
            }),
        })
    }

    /// The directory its files are kept in, if any.
    pub fn directory(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    /// `original` rewritten with `options`, from the cache when it is there.
    pub fn rewrite(&self, original: &[u8], options: &Options) -> Result<Arc<Vec<u8>>> {
        let key = (tabi_snapshot::sha256(original), options.clone());
        let lock = || self.inner.memory.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut memory = lock();
            if let Some(i) = memory.iter().position(|(k, _)| *k == key) {
                let hit = memory.remove(i);
                let wasm = hit.1.clone();
                memory.push(hit);
                return Ok(wasm);
            }
        }
        let wasm = Arc::new(self.rewrite_uncached_in_memory(original, &key)?);
        if self.inner.capacity > 0 {
            let mut memory = lock();
            if !memory.iter().any(|(k, _)| *k == key) {
                if memory.len() >= self.inner.capacity {
                    memory.remove(0);
                }
                memory.push((key, wasm.clone()));
            }
        }
        Ok(wasm)
    }

    /// The rewrite from the directory, or made (and written there).
    fn rewrite_uncached_in_memory(&self, original: &[u8], key: &CacheKey) -> Result<Vec<u8>> {
        let (hash, options) = key;
        let file = self
            .inner
            .dir
            .as_ref()
            .map(|dir| dir.join(file_name(hash, options)));
        if let Some(file) = &file
            && let Ok(bytes) = std::fs::read(file)
            && let Ok(Some(m)) = tabi_instrument::Manifest::from_module(&bytes)
            && m.original_sha256 == *hash
            && m.options == *options
        {
            return Ok(bytes);
        }
        let out = tabi_instrument::instrument(original, options).map_err(|e| {
            Error::Instrument(format!(
                "cannot instrument the module for checkpointing: {e}"
            ))
        })?;
        // A cache that cannot be written is not an error; write-then-rename keeps it whole.
        if let Some(file) = &file {
            let _ = replace_whole(file, &out.wasm);
        }
        Ok(out.wasm)
    }
}

/// The file a rewrite is kept in: the original's hash, the rewrite's version, and the
/// options (`-sp` for safepoints with the default points; a hash of them otherwise).
fn file_name(hash: &[u8; 32], options: &Options) -> String {
    let version = tabi_instrument::FORMAT_VERSION;
    let hex = tabi_snapshot::hex(hash);
    if options.points == Options::default().points {
        let sp = if options.safepoints { "-sp" } else { "" };
        return format!("{hex}-v{version}{sp}.wasm");
    }
    let opts = tabi_snapshot::sha256(&identity_options(version, options));
    format!("{hex}-v{version}-{}.wasm", &tabi_snapshot::hex(&opts)[..16])
}

/// Writes `bytes` to a new file beside `path` and renames it over `path`.
fn replace_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (mut file, tmp) = crate::outfile::create_beside(path)?;
    let written = std::io::Write::write_all(&mut file, bytes).and_then(|()| {
        drop(file);
        std::fs::rename(&tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Where `tabi` keeps rewritten modules and compiled code: `$TABI_CACHE_DIR` when set, else
/// `tabi` in the user's cache directory (`$XDG_CACHE_HOME`, else `$HOME/.cache`), as wasmtime
/// keeps its compiled code. With none of these, or with `TABI_CACHE=off`, there is none. The
/// temporary directory is never used: others can create files there, and a planted file
/// would be run in place of the guest.
pub fn user_cache_dir() -> Option<PathBuf> {
    if std::env::var_os("TABI_CACHE").is_some_and(|v| v == "off") {
        return None;
    }
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("TABI_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| Path::new(&home).join(".cache")))?;
    // A relative path would depend on where tabi is started.
    base.is_absolute().then(|| base.join("tabi"))
}

/// Why a cache directory is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheRefusal {
    /// It cannot be made or looked at.
    Unusable,
    /// It could hold files that someone other than the user put there: this says why.
    Untrusted(String),
}

impl std::fmt::Display for CacheRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheRefusal::Unusable => f.write_str("it cannot be made or read"),
            CacheRefusal::Untrusted(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CacheRefusal {}

/// Creates `dir` (and its parents) if need be, on Unix readable by its owner only; then checks
/// that it is fit to hold code that runs with a guest's grants: a directory itself (not a
/// symbolic link to one, which whoever can change the link chooses), owned by the user tabi
/// runs as, and that no one else can write to.
pub fn private_dir(dir: &Path) -> Result<(), CacheRefusal> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|_| CacheRefusal::Unusable)?;
    owned_by_me_alone(dir)
}

#[cfg(unix)]
fn owned_by_me_alone(dir: &Path) -> Result<(), CacheRefusal> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|_| CacheRefusal::Unusable)?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        "it is a symbolic link".to_string()
    } else if !meta.is_dir() {
        "it is not a directory".to_string()
    } else if meta.uid() != me {
        format!(
            "it belongs to user {}, not to the user tabi runs as ({me})",
            meta.uid()
        )
    } else if meta.mode() & 0o022 != 0 {
        format!("others can write to it (mode {:o})", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(CacheRefusal::Untrusted(why))
}

/// Elsewhere there are no owners and modes to check.
#[cfg(not(unix))]
fn owned_by_me_alone(_: &Path) -> Result<(), CacheRefusal> {
    Ok(())
}

/// The arguments `texts` for function export `export` of `wasm`, read by its parameter types
/// with [`parse_value`]; an error names the export and the argument that does not fit.
pub fn invoke_values(wasm: &[u8], export: &str, texts: &[String]) -> Result<Vec<Value>> {
    let params =
        export_params(wasm, export).with_context(|| format!("cannot invoke `{export}`"))?;
    if params.len() != texts.len() {
        return Err(Error::Config(format!(
            "export `{export}` takes {} argument{} ({}), not {}",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            params.join(", "),
            texts.len()
        )));
    }
    params
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(i, (ty, text))| {
            parse_value(ty, text).with_context(|| format!("argument {} of `{export}`", i + 1))
        })
        .collect()
}

/// The parameter types of function export `name` of `wasm`, by their text-format names
/// (`i32`, `i64`, `f32`, `f64`, `v128`, or a reference type).
pub fn export_params(wasm: &[u8], name: &str) -> Result<Vec<String>> {
    use wasmparser::{Payload, TypeRef};
    let bad = |what: &str| {
        let what = what.to_string();
        move |e: wasmparser::BinaryReaderError| Error::InvalidModule(format!("{what}: {e}"))
    };
    let none = || Error::Config(format!("the module exports no function `{name}`"));
    let mut types = Vec::new();
    let mut funcs = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(bad("cannot read the module"))? {
            Payload::TypeSection(r) => {
                for group in r {
                    for sub in group
                        .map_err(bad("cannot read the module's types"))?
                        .into_types()
                    {
                        types.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => Some(f.params().to_vec()),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(r) => {
                for import in r.into_imports() {
                    if let TypeRef::Func(t) = import.map_err(bad("cannot read the imports"))?.ty {
                        funcs.push(t);
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    funcs.push(t.map_err(bad("cannot read the functions"))?);
                }
            }
            Payload::ExportSection(r) => {
                for export in r {
                    let export = export.map_err(bad("cannot read the exports"))?;
                    if export.name != name {
                        continue;
                    }
                    if export.kind != wasmparser::ExternalKind::Func {
                        return Err(Error::Config(format!("export `{name}` is not a function")));
                    }
                    let params = funcs
                        .get(export.index as usize)
                        .and_then(|&t| types.get(t as usize)?.as_ref())
                        .ok_or_else(|| {
                            Error::InvalidModule(format!("export `{name}` names no function"))
                        })?;
                    return Ok(params.iter().map(|t| t.to_string()).collect());
                }
                return Err(none());
            }
            _ => {}
        }
    }
    Err(none())
}

/// `text` as a value of the type named `ty` (see [`export_params`]): an integer in decimal
/// (negative, or up to the type's unsigned range) or `0x` hexadecimal, a float as Rust
/// reads one (`inf`, `NaN` too), a `v128` as one integer.
pub fn parse_value(ty: &str, text: &str) -> Result<Value> {
    fn int(text: &str) -> Option<i128> {
        match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u128::from_str_radix(hex, 16)
                .ok()
                .and_then(|v| i128::try_from(v).ok()),
            None => text.parse().ok(),
        }
    }
    let fits = |min: i128, max: i128| int(text).filter(|v| (min..=max).contains(v));
    let value = match ty {
        "i32" => fits(i32::MIN.into(), u32::MAX.into()).map(|v| Value::I32(v as u32 as i32)),
        "i64" => fits(i64::MIN.into(), u64::MAX.into()).map(|v| Value::I64(v as u64 as i64)),
        "f32" => text.parse::<f32>().ok().map(|v| Value::F32(v.to_bits())),
        "f64" => text.parse::<f64>().ok().map(|v| Value::F64(v.to_bits())),
        "v128" => match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u128::from_str_radix(hex, 16).ok(),
            None => text.parse::<u128>().ok(),
        }
        .map(Value::V128),
        other => {
            return Err(Error::Config(format!(
                "a parameter of type {other} cannot be given as text"
            )));
        }
    };
    value.ok_or_else(|| Error::Config(format!("`{text}` is not an {ty}")))
}

/// A result value as `tabi run --invoke` prints it: integers in signed decimal, floats as
/// Rust writes them, a `v128` in hexadecimal, and `ref` for a reference.
pub fn show_value(v: &Value) -> String {
    match *v {
        Value::I32(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(b) => f32::from_bits(b).to_string(),
        Value::F64(b) => f64::from_bits(b).to_string(),
        Value::V128(x) => format!("0x{x:032x}"),
        Value::Ref => "ref".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integers are read over the signed and the unsigned range of their type, in decimal or
    /// hexadecimal, and no further; floats and vectors as documented; results print back.
    #[test]
    fn invoke_arguments_are_read_by_type_and_results_shown() {
        let ok = |ty: &str, text: &str| parse_value(ty, text).unwrap();
        assert_eq!(ok("i32", "-1"), Value::I32(-1));
        assert_eq!(ok("i32", "0xffffffff"), Value::I32(-1));
        assert_eq!(ok("i32", "2147483648"), Value::I32(i32::MIN));
        assert_eq!(ok("i64", "18446744073709551615"), Value::I64(-1));
        assert_eq!(ok("i64", "-9223372036854775808"), Value::I64(i64::MIN));
        assert_eq!(ok("f32", "1.5"), Value::F32(1.5f32.to_bits()));
        assert_eq!(ok("f64", "-inf"), Value::F64(f64::NEG_INFINITY.to_bits()));
        assert_eq!(ok("v128", "0x10"), Value::V128(16));
        for (ty, text) in [
            ("i32", "4294967296"),
            ("i32", "-2147483649"),
            ("i64", "18446744073709551616"),
            ("i32", "1.0"),
            ("f64", "one"),
            ("v128", "-1"),
            ("funcref", "0"),
        ] {
            assert!(parse_value(ty, text).is_err(), "{ty} {text}");
        }
        assert_eq!(show_value(&Value::I32(-7)), "-7");
        assert_eq!(show_value(&Value::F64(0.25f64.to_bits())), "0.25");
        assert_eq!(
            show_value(&Value::V128(255)),
            format!("0x{}ff", "0".repeat(30))
        );
        let nan = show_value(&ok("f32", "NaN"));
        assert_eq!(nan, "NaN");
    }

    /// Options round-trip through the identity as data, custom points included; the text
    /// earlier versions stored still reads, as the default points with or without safepoints.
    #[test]
    fn identity_options_are_data_and_old_text_still_reads() {
        let custom = Options {
            points: vec![PointRule {
                module: "wasi_snapshot_preview1".into(),
                name: Some("fd_write".into()),
            }],
            safepoints: true,
        };
        let stored = identity_options(9, &custom);
        assert_eq!(options_of_identity(&stored).unwrap(), custom);
        assert!(describe_options(&stored).contains("points wasi_snapshot_preview1::fd_write"));
        let points = points_for(&custom);
        let fd_write = tabi_libos::p1::NAMES
            .iter()
            .position(|n| *n == "fd_write")
            .unwrap();
        assert!(points.p1(fd_write) && !points.tabi);
        assert_eq!(points.p1.iter().filter(|p| **p).count(), 1);
        for (text, sp) in [
            ("tabi-instrument format 9, safepoints on", true),
            ("tabi-instrument format 8, safepoints off", false),
        ] {
            // Those versions had no wasi-nn points.
            let mut then = rewrite_options(sp);
            then.points.retain(|r| r.module != "wasi_ephemeral_nn");
            assert_eq!(then.points.len(), 2);
            assert_eq!(options_of_identity(text.as_bytes()).unwrap(), then);
        }
        assert!(options_of_identity(b"something else").is_err());
        assert_eq!(points_for(&rewrite_options(false)), Points::all());
    }
}
