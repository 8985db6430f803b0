//! The library's error: one enum, whose message is whole.

use std::fmt;

use tabi_libos::EngineError;

/// Why tabi could not do what it was asked. The guest's own failures (an exit status, a trap)
/// are not errors: they are how its run ended ([`crate::Ended`]).
///
/// An error's [`Display`](fmt::Display) is its whole message, causes included (as
/// `context: cause`); [`Error::root`] is the innermost error, to match on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file or stream could not be read or written.
    Io {
        /// What was being done (`cannot read module `x.wasm``).
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly module, binary or text.
    InvalidModule(String),
    /// The module could not be rewritten for checkpoints.
    Instrument(String),
    /// The engine could not compile, link or run the module.
    Engine(EngineError),
    /// A snapshot was refused (see [`tabi_snapshot::Error`]).
    Snapshot(tabi_snapshot::Error),
    /// A host directory could not be granted, or is not the one a snapshot needs.
    Grant(String),
    /// A checkpoint could not be taken; the guest can go on.
    Checkpoint(String),
    /// A setting or argument that cannot be used.
    Config(String),
    /// An engine this build of tabi does not have (its cargo feature is off).
    NoEngine(&'static str),
    /// The thread that ran the guest panicked.
    GuestThread,
    /// What was being done when `source` happened.
    Context {
        /// What was being done.
        context: String,
        /// What went wrong.
        source: Box<Error>,
    },
}

impl Error {
    /// This error, with `context` said first.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// The innermost error, under every [`Error::Context`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// The snapshot error at the root, if that is what it is.
    pub fn snapshot_error(&self) -> Option<&tabi_snapshot::Error> {
        match self.root() {
            Error::Snapshot(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::InvalidModule(m) => write!(f, "invalid module: {m}"),
            Error::Instrument(m) => write!(f, "{m}"),
            Error::Engine(e) => write!(f, "{e}"),
            Error::Snapshot(e) => write!(f, "{e}"),
            Error::Grant(m) | Error::Checkpoint(m) | Error::Config(m) => f.write_str(m),
            Error::NoEngine(name) => write!(
                f,
                "this build of tabi has no {name} (the `{name}` feature is off); choose another backend"
            ),
            Error::GuestThread => f.write_str("the thread running the guest panicked"),
            Error::Context { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

/// The message is whole in `Display`, so no cause is given again here: printing the chain
/// (as `anyhow` does with `{:#}`) would repeat it.
impl std::error::Error for Error {}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Engine(e)
    }
}

impl From<tabi_snapshot::Error> for Error {
    fn from(e: tabi_snapshot::Error) -> Self {
        Error::Snapshot(e)
    }
}

/// Adds context to a result's error, as `anyhow::Context` does.
pub(crate) trait Context<T> {
    /// The error, with `context` said first.
    fn context(self, context: impl Into<String>) -> Result<T, Error>;
    /// The error, with the context `f` makes said first.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, Error> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, Error> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// A library result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
