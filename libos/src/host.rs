//! Host effects: what the kernel asks of the machine it runs on.
//!
//! The kernel's state is plain data; everything that depends on the machine — the clocks,
//! entropy, the real standard streams and granted host directories — comes in through [`Host`],
//! passed to each kernel call. A host is never part of a checkpoint: a resumed guest gets the
//! host of whoever resumed it.

use crate::errno::Errno;
use tabi_vfs::HostFs;

/// How a wait of [`Host::wait_stdin`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Input can be read without blocking (or the host cannot tell).
    Ready,
    /// The timeout passed first.
    TimedOut,
    /// The host wants the guest at its next migration point.
    Woken,
}

/// What the kernel needs from the machine.
pub trait Host {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    fn wall_clock_ns(&mut self) -> u64;
    /// Monotonic time in nanoseconds from an arbitrary start.
    fn monotonic_ns(&mut self) -> u64;
    /// Resolution of the clocks, in nanoseconds.
    fn clock_resolution_ns(&self) -> u64 {
        1
    }
    /// Fills `buf` with random bytes from a secure source; `Io` if the source failed.
    fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Errno>;
    /// Reads from the host's standard input; `Ok(0)` is end of input.
    fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;
    /// Writes all of `buf` to the host's standard output.
    fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno>;
    /// Writes all of `buf` to the host's standard error.
    fn stderr_write(&mut self, buf: &[u8]) -> Result<(), Errno>;
    /// Blocks for `ns` nanoseconds.
    fn sleep_ns(&mut self, ns: u64);
    /// Blocks for `ns` nanoseconds, or less when the host wants the guest to reach its next
    /// migration point soon (a checkpoint was asked for); `false` when it woke early. The
    /// kernel sleeps the rest before the guest's next call.
    fn sleep_unless_woken_ns(&mut self, ns: u64) -> bool {
        self.sleep_ns(ns);
        true
    }
    /// Whether the host's standard stream `fd` (0, 1 or 2) is a terminal. The guest sees a
    /// terminal as a character device (so `isatty` is true) and anything else as a stream of
    /// unknown kind, as on wasmtime.
    fn stdio_is_terminal(&mut self, fd: u32) -> bool {
        let _ = fd;
        false
    }
    /// Waits until standard input can be read without blocking (it has data, or it ended),
    /// until `timeout_ns` passed (`None`: no limit), or, when `wakeable`, until the host wants
    /// the guest to reach its next migration point soon (a checkpoint was asked for). The
    /// kernel lets a guest woken in a read or a poll pause while it waits, and finishes the
    /// call after (see [`crate::kernel::Pending`]). A host that cannot tell says
    /// [`Wait::Ready`], and a read then blocks in [`Host::stdin_read`].
    fn wait_stdin(&mut self, timeout_ns: Option<u64>, wakeable: bool) -> Wait {
        let _ = (timeout_ns, wakeable);
        Wait::Ready
    }
    /// Lets other threads run.
    fn yield_now(&mut self) {}
    /// The granted host directories, if any.
    fn host_fs(&mut self) -> Option<&mut dyn HostFs> {
        None
    }
    /// The wasi-nn backend (inference and preloaded models), if this host serves wasi-nn.
    /// Without one, every model a guest loads is `invalid_encoding`.
    fn nn(&mut self) -> Option<&mut dyn tabi_nn::Backend> {
        None
    }
}

#[cfg(feature = "std")]
pub use self::std_host::{StdHost, Stdio};

#[cfg(feature = "std")]
mod std_host {
    use super::Host;
    use crate::errno::Errno;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
    use std::vec::Vec;
    use tabi_vfs::{CapStdFs, HostFs};

    /// A reader shared by the hosts of one guest's runs (a migrated run has several).
    pub type SharedReader = Arc<Mutex<dyn Read + Send>>;
    /// A writer shared by the hosts of one guest's runs.
    pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

    /// Where a standard stream goes.
    #[derive(Clone, Default)]
    pub enum Stdio {
        /// The host process's own stream.
        #[default]
        Inherit,
        /// Nothing: reads see end of input, writes are dropped.
        Null,
        /// Output is appended to a shared buffer. Input is taken from the front of one: what a
        /// read returns is gone, so hosts that share the buffer (the parts of a migrated run)
        /// each read on where the last one stopped.
        Buffer(Arc<Mutex<Vec<u8>>>),
        /// Input read from the caller's reader (for standard input; as output, writes fail
        /// with `EBADF`).
        Reader(SharedReader),
        /// Output written to the caller's writer (for standard output and error; as input,
        /// reads fail with `EBADF`).
        Writer(SharedWriter),
    }

    impl core::fmt::Debug for Stdio {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            match self {
                Stdio::Inherit => f.write_str("Inherit"),
                Stdio::Null => f.write_str("Null"),
                Stdio::Buffer(b) => f.debug_tuple("Buffer").field(b).finish(),
                Stdio::Reader(_) => f.write_str("Reader(..)"),
                Stdio::Writer(_) => f.write_str("Writer(..)"),
            }
        }
    }

    impl Stdio {
        /// A fresh shared buffer and the `Stdio` that writes to it.
        pub fn buffer() -> (Stdio, Arc<Mutex<Vec<u8>>>) {
            let buf = Arc::new(Mutex::new(Vec::new()));
            (Stdio::Buffer(buf.clone()), buf)
        }

        /// Input from `reader`.
        pub fn reader(reader: impl Read + Send + 'static) -> Stdio {
            Stdio::Reader(Arc::new(Mutex::new(reader)))
        }

        /// Output to `writer`.
        pub fn writer(writer: impl Write + Send + 'static) -> Stdio {
            Stdio::Writer(Arc::new(Mutex::new(writer)))
        }

        fn write(&self, data: &[u8], stderr: bool) -> Result<(), Errno> {
            match self {
                Stdio::Inherit => {
                    let r = if stderr {
                        std::io::stderr().lock().write_all(data)
                    } else {
                        let mut out = std::io::stdout().lock();
                        out.write_all(data).and_then(|()| out.flush())
                    };
                    r.map_err(|_| Errno::Io)
                }
                Stdio::Null => Ok(()),
                Stdio::Buffer(b) => {
                    b.lock().map_err(|_| Errno::Io)?.extend_from_slice(data);
                    Ok(())
                }
                Stdio::Writer(w) => {
                    let mut w = w.lock().map_err(|_| Errno::Io)?;
                    w.write_all(data)
                        .and_then(|()| w.flush())
                        .map_err(|_| Errno::Io)
                }
                Stdio::Reader(_) => Err(Errno::Badf),
            }
        }
    }

    /// Whether the process's standard input has data or has ended, waiting at most `ms`
    /// milliseconds.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "poll(2) on descriptor 0")]
    fn stdin_ready(ms: i32) -> bool {
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one valid `pollfd` that lives across the call, and the count says
        // one; poll writes only its `revents`.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        // An error (or a closed descriptor) is left for the read to report.
        n != 0
    }

    /// Reads the process's standard input straight from descriptor 0, with no buffer between:
    /// what [`stdin_ready`] reports ready is then what a read returns. (Through
    /// `std::io::stdin`, whose buffer keeps what one read took beyond the guest's buffer, a
    /// wait on the descriptor would block while that buffer still held input.)
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code, reason = "read(2) on descriptor 0")]
    fn read_stdin(buf: &mut [u8]) -> Result<usize, Errno> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and
            // read(2) writes at most that many.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(Errno::Io);
            }
        }
    }

    /// Elsewhere the standard library's reader (which has no buffer a wait could miss, as no
    /// wait is made: see [`stdin_ready`]).
    #[cfg(not(target_os = "linux"))]
    fn read_stdin(buf: &mut [u8]) -> Result<usize, Errno> {
        std::io::stdin().lock().read(buf).map_err(|_| Errno::Io)
    }

    /// Elsewhere a wait for input cannot be cut short: input counts as ready, and the read
    /// blocks.
    #[cfg(not(target_os = "linux"))]
    fn stdin_ready(_: i32) -> bool {
        true
    }

    /// The real machine: system clocks, OS entropy, the process's standard streams (or buffers)
    /// and host directories granted through cap-std.
    pub struct StdHost {
        start: Instant,
        /// Standard input.
        pub stdin: Stdio,
        /// Standard output.
        pub stdout: Stdio,
        /// Standard error.
        pub stderr: Stdio,
        /// Granted host directories.
        pub fs: CapStdFs,
        /// When set, a sleep ends early once this is true (it is only read): the flag a
        /// checkpoint request raises, so that a guest asleep reaches its next migration point
        /// at once (see [`Host::sleep_unless_woken_ns`]).
        pub wake: Option<Arc<AtomicBool>>,
    }

    impl Default for StdHost {
        fn default() -> Self {
            Self::new()
        }
    }

    impl StdHost {
        /// A host that inherits the process's standard streams and grants no directories.
        pub fn new() -> Self {
            StdHost {
                start: Instant::now(),
                stdin: Stdio::Inherit,
                stdout: Stdio::Inherit,
                stderr: Stdio::Inherit,
                fs: CapStdFs::new(),
                wake: None,
            }
        }
    }

    impl Host for StdHost {
        fn wall_clock_ns(&mut self) -> u64 {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        }

        fn monotonic_ns(&mut self) -> u64 {
            self.start.elapsed().as_nanos() as u64
        }

        fn random_bytes(&mut self, buf: &mut [u8]) -> Result<(), Errno> {
            getrandom::fill(buf).map_err(|_| Errno::Io)
        }

        fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
            match &self.stdin {
                Stdio::Inherit => read_stdin(buf),
                Stdio::Null => Ok(0),
                Stdio::Buffer(b) => {
                    let mut data = b.lock().map_err(|_| Errno::Io)?;
                    let n = data.len().min(buf.len());
                    buf[..n].copy_from_slice(&data[..n]);
                    data.drain(..n);
                    Ok(n)
                }
                Stdio::Reader(r) => r
                    .lock()
                    .map_err(|_| Errno::Io)?
                    .read(buf)
                    .map_err(|_| Errno::Io),
                Stdio::Writer(_) => Err(Errno::Badf),
            }
        }

        fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
            self.stdout.write(buf, false)
        }

        fn stderr_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
            self.stderr.write(buf, true)
        }

        fn sleep_ns(&mut self, ns: u64) {
            std::thread::sleep(Duration::from_nanos(ns));
        }

        fn sleep_unless_woken_ns(&mut self, ns: u64) -> bool {
            let Some(wake) = &self.wake else {
                self.sleep_ns(ns);
                return true;
            };
            // Slices short enough that a request is seen within a few milliseconds.
            const SLICE: Duration = Duration::from_millis(5);
            let end = Instant::now() + Duration::from_nanos(ns);
            loop {
                if wake.load(Ordering::Acquire) {
                    return false;
                }
                let now = Instant::now();
                if now >= end {
                    return true;
                }
                std::thread::sleep((end - now).min(SLICE));
            }
        }

        fn wait_stdin(&mut self, timeout_ns: Option<u64>, wakeable: bool) -> super::Wait {
            use super::Wait;
            // Buffers and nothing never block (an empty buffer is the end of input); the
            // caller's reader cannot be asked.
            if !matches!(self.stdin, Stdio::Inherit) {
                return Wait::Ready;
            }
            let wake = self.wake.as_ref().filter(|_| wakeable);
            let end = timeout_ns.map(|ns| Instant::now() + Duration::from_nanos(ns));
            loop {
                if wake.is_some_and(|w| w.load(Ordering::Acquire)) {
                    return Wait::Woken;
                }
                // Slices short enough that a request is seen within a few milliseconds.
                let left = end.map(|e| e.saturating_duration_since(Instant::now()));
                let slice = match (left, wake) {
                    (Some(l), _) => l.min(Duration::from_millis(5)),
                    (None, Some(_)) => Duration::from_millis(5),
                    (None, None) => Duration::from_secs(3600),
                };
                if stdin_ready(slice.as_millis().try_into().unwrap_or(i32::MAX)) {
                    return Wait::Ready;
                }
                if end.is_some_and(|e| Instant::now() >= e) {
                    return Wait::TimedOut;
                }
            }
        }

        fn stdio_is_terminal(&mut self, fd: u32) -> bool {
            use std::io::IsTerminal;
            match (fd, &self.stdin, &self.stdout, &self.stderr) {
                (0, Stdio::Inherit, _, _) => std::io::stdin().is_terminal(),
                (1, _, Stdio::Inherit, _) => std::io::stdout().is_terminal(),
                (2, _, _, Stdio::Inherit) => std::io::stderr().is_terminal(),
                _ => false,
            }
        }

        fn yield_now(&mut self) {
            std::thread::yield_now();
        }

        fn host_fs(&mut self) -> Option<&mut dyn HostFs> {
            Some(&mut self.fs)
        }
    }
}
