//! The `wasi_snapshot_preview1` ABI, decoded once for every engine.
//!
//! Each function here takes the kernel, the host, the guest's memory and the raw Wasm arguments
//! of the import of the same name, decodes pointers through [`GuestMemory`] (so a wild pointer is
//! `EFAULT`, never a panic), calls the kernel, and encodes the answer. It returns the errno as
//! the `i32` the import returns, or a [`Trap`] that stops the guest.
//!
//! [`for_each_function!`](crate::for_each_function) lists every import with its Wasm signature, so an
//! engine adapter registers them all with one macro and contains no WASI logic. `proc_exit`
//! has no result and is listed apart, as [`proc_exit`].

#![allow(
    clippy::too_many_arguments,
    reason = "each function takes the Wasm arguments of the import it implements"
)]

use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{clockid, eventtype, fdflags, filetype_of, fstflags, lookupflags, oflags, rights};
use crate::errno::{CallError, Errno, Trap};
use crate::host::Host;
use crate::kernel::{Kernel, Object, OpenOptions};
use crate::memory::GuestMemory;
use tabi_vfs::{SetTime, Stat};

/// The import module name.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// Calls `$m!` with every errno-returning preview-1 function as `name(arg: type, ...);`.
///
/// Every argument type is `i32` or `i64` and every function returns `i32`, exactly the Wasm
/// signature of the import. `proc_exit` is not listed: it returns nothing.
#[macro_export]
macro_rules! for_each_function {
    ($m:ident) => {
        $m! {
            args_get(argv: i32, argv_buf: i32);
            args_sizes_get(argc: i32, argv_buf_size: i32);
            environ_get(environ: i32, environ_buf: i32);
            environ_sizes_get(count: i32, buf_size: i32);
            clock_res_get(id: i32, out: i32);
            clock_time_get(id: i32, precision: i64, out: i32);
            fd_advise(fd: i32, offset: i64, len: i64, advice: i32);
            fd_allocate(fd: i32, offset: i64, len: i64);
            fd_close(fd: i32);
            fd_datasync(fd: i32);
            fd_fdstat_get(fd: i32, out: i32);
            fd_fdstat_set_flags(fd: i32, flags: i32);
            fd_fdstat_set_rights(fd: i32, base: i64, inheriting: i64);
            fd_filestat_get(fd: i32, out: i32);
            fd_filestat_set_size(fd: i32, size: i64);
            fd_filestat_set_times(fd: i32, atim: i64, mtim: i64, flags: i32);
            fd_pread(fd: i32, iovs: i32, iovs_len: i32, offset: i64, out: i32);
            fd_prestat_get(fd: i32, out: i32);
            fd_prestat_dir_name(fd: i32, path: i32, path_len: i32);
            fd_pwrite(fd: i32, iovs: i32, iovs_len: i32, offset: i64, out: i32);
            fd_read(fd: i32, iovs: i32, iovs_len: i32, out: i32);
            fd_readdir(fd: i32, buf: i32, buf_len: i32, cookie: i64, out: i32);
            fd_renumber(fd: i32, to: i32);
            fd_seek(fd: i32, offset: i64, whence: i32, out: i32);
            fd_sync(fd: i32);
            fd_tell(fd: i32, out: i32);
            fd_write(fd: i32, iovs: i32, iovs_len: i32, out: i32);
            path_create_directory(fd: i32, path: i32, path_len: i32);
            path_filestat_get(fd: i32, flags: i32, path: i32, path_len: i32, out: i32);
            path_filestat_set_times(fd: i32, flags: i32, path: i32, path_len: i32, atim: i64, mtim: i64, fst: i32);
            path_link(old_fd: i32, old_flags: i32, old_path: i32, old_len: i32, new_fd: i32, new_path: i32, new_len: i32);
            path_open(fd: i32, dirflags: i32, path: i32, path_len: i32, oflags: i32, base: i64, inheriting: i64, fdflags: i32, out: i32);
            path_readlink(fd: i32, path: i32, path_len: i32, buf: i32, buf_len: i32, out: i32);
            path_remove_directory(fd: i32, path: i32, path_len: i32);
            path_rename(fd: i32, old_path: i32, old_len: i32, new_fd: i32, new_path: i32, new_len: i32);
            path_symlink(old_path: i32, old_len: i32, fd: i32, new_path: i32, new_len: i32);
            path_unlink_file(fd: i32, path: i32, path_len: i32);
            poll_oneoff(subs: i32, events: i32, nsubs: i32, out: i32);
            proc_raise(sig: i32);
            sched_yield();
            random_get(buf: i32, buf_len: i32);
            sock_accept(fd: i32, flags: i32, out: i32);
            sock_recv(fd: i32, ri_data: i32, ri_data_len: i32, ri_flags: i32, ro_datalen: i32, ro_flags: i32);
            sock_send(fd: i32, si_data: i32, si_data_len: i32, si_flags: i32, so_datalen: i32);
            sock_shutdown(fd: i32, how: i32);
        }
    };
}

macro_rules! define_entry_points {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` import: returns the errno, or a trap.")]
            pub fn $name(
                k: &mut Kernel,
                h: &mut dyn Host,
                mem: &mut [u8],
                $($arg: $ty),*
            ) -> Result<i32, Trap> {
                guarded(stringify!($name), || {
                    k.settle(h);
                    finish(imp::$name(k, h, mem, $($arg),*))
                })
            }
        )*

        /// Names of every preview-1 import tabi provides, `proc_exit` included.
        pub const NAMES: &[&str] = &[$(stringify!($name),)* "proc_exit"];
    };
}

for_each_function!(define_entry_points);

/// Runs one import's body; with `std`, a panic inside it (a bug in tabi or in the caller's
/// [`Host`]) stops the guest with [`Trap::HostFault`] instead of unwinding into the engine,
/// which on some engines aborts the whole process.
#[cfg(feature = "std")]
pub(crate) fn guarded(name: &str, body: impl FnOnce() -> Result<i32, Trap>) -> Result<i32, Trap> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .map(|s| String::from(*s))
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| String::from("(no message)"));
        Err(Trap::HostFault(alloc::format!("`{name}` panicked: {why}")))
    })
}

/// Without `std` there is no unwinding to catch: a panic is the embedder's panic handler's.
#[cfg(not(feature = "std"))]
pub(crate) fn guarded(_: &str, body: impl FnOnce() -> Result<i32, Trap>) -> Result<i32, Trap> {
    body()
}

fn finish(r: Result<(), CallError>) -> Result<i32, Trap> {
    match r {
        Ok(()) => Ok(0),
        Err(CallError::Errno(e)) => Ok(i32::from(e.raw())),
        Err(CallError::Trap(t)) => Err(t),
    }
}

/// The `proc_exit` import: records the status and stops the guest.
pub fn proc_exit(k: &mut Kernel, code: i32) -> Trap {
    let code = code as u32;
    k.set_exit_status(code);
    Trap::Exit(code)
}

type R = Result<(), CallError>;

fn set_time(value: i64, set: u16, now: u16, flags: i32) -> Result<SetTime, Errno> {
    let flags = flags as u16;
    match (flags & set != 0, flags & now != 0) {
        (true, true) => Err(Errno::Inval),
        (true, false) => Ok(SetTime::At(value as u64)),
        (false, true) => Ok(SetTime::Now),
        (false, false) => Ok(SetTime::Omit),
    }
}

fn write_filestat(mem: &mut [u8], out: u32, st: &Stat) -> Result<(), Errno> {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&st.dev.to_le_bytes());
    b[8..16].copy_from_slice(&st.ino.to_le_bytes());
    b[16] = filetype_of(st.filetype);
    b[24..32].copy_from_slice(&st.nlink.to_le_bytes());
    b[32..40].copy_from_slice(&st.size.to_le_bytes());
    b[40..48].copy_from_slice(&st.atim.to_le_bytes());
    b[48..56].copy_from_slice(&st.mtim.to_le_bytes());
    b[56..64].copy_from_slice(&st.ctim.to_le_bytes());
    mem.write_bytes(out, &b)
}

/// Writes NUL-terminated strings and a pointer to each (the layout of `argv` and `environ`).
fn write_strings<'a>(
    mem: &mut [u8],
    ptrs: u32,
    buf: u32,
    items: impl Iterator<Item = Vec<u8>> + 'a,
) -> R {
    let mut at = buf;
    for (i, mut s) in items.enumerate() {
        s.push(0);
        mem.write_u32(ptrs.wrapping_add(4 * i as u32), at)?;
        mem.write_bytes(at, &s)?;
        at = at.checked_add(s.len() as u32).ok_or(Errno::Fault)?;
    }
    Ok(())
}

fn sizes(mem: &mut [u8], count_out: u32, size_out: u32, lens: impl Iterator<Item = usize>) -> R {
    let (mut count, mut size) = (0u32, 0u32);
    for len in lens {
        count += 1;
        size = size.checked_add(len as u32 + 1).ok_or(Errno::Overflow)?;
    }
    mem.write_u32(count_out, count)?;
    mem.write_u32(size_out, size)?;
    Ok(())
}

fn env_entries(k: &Kernel) -> impl Iterator<Item = Vec<u8>> + '_ {
    k.env().iter().map(|(key, v)| {
        let mut s = Vec::with_capacity(key.len() + v.len() + 1);
        s.extend_from_slice(key.as_bytes());
        s.push(b'=');
        s.extend_from_slice(v.as_bytes());
        s
    })
}

/// Reads into the guest's iovecs from `fd`, at `at` or the stream offset.
fn read_into(
    k: &mut Kernel,
    h: &mut dyn Host,
    mem: &mut [u8],
    fd: u32,
    iovs: u32,
    n: u32,
    at: Option<u64>,
) -> Result<u32, Errno> {
    let list = mem.read_iovecs(iovs, n)?;
    let mut total: u32 = 0;
    for (ptr, len) in list {
        let buf = mem.slice_mut(ptr, len)?;
        let pos = at.map(|a| a + u64::from(total));
        let got = k.read(fd, buf, pos, h)?;
        total = total.saturating_add(got as u32);
        if got < len as usize {
            break;
        }
    }
    Ok(total)
}

/// Most iovecs a pending read may name: as many as 4 GiB of guest memory holds.
pub const MAX_IOVECS: u32 = 1 << 29;

/// Finishes the blocking call a checkpoint interrupted ([`Kernel::pending`]), if any, before
/// the guest runs on: the read blocks until input comes, and its data and count go where the
/// guest asked. The guest already saw the call succeed, so a read that now fails is seen as
/// the end of input. An adapter calls this after a migration point that did not unwind, and
/// the pause protocol before a paused guest goes on ([`crate::machine`]).
pub fn complete_pending(k: &mut Kernel, h: &mut dyn Host, mem: &mut [u8]) {
    let Some(pending) = k.pending() else {
        return;
    };
    k.set_pending(None);
    match pending {
        crate::kernel::Pending::Read {
            fd,
            iovs,
            iovs_len,
            nread,
        } => {
            let got = read_into(k, h, mem, fd, iovs, iovs_len, None).unwrap_or(0);
            let _ = mem.write_u32(nread, got);
        }
        crate::kernel::Pending::Poll {
            subs,
            events,
            n,
            out,
        } => {
            // Waits for real this time; an error now, or a host that still cannot wait, is
            // seen as no event.
            if poll::poll_oneoff(k, h, mem, subs, events, n, out, false).is_err()
                || k.pending().is_some()
            {
                k.set_pending(None);
                let _ = mem.write_u32(out, 0);
            }
        }
    }
}

/// Most bytes one `fd_write` gathers from several small ciovecs into one host buffer before
/// handing them to the kernel: a larger ciovec is written straight from guest memory.
const GATHER: usize = 64 << 10;

/// Most bytes one call transfers, as Linux's `MAX_RW_COUNT`: the rest is a short write.
const MAX_TRANSFER: u64 = 0x7fff_f000;

/// Writes the guest's ciovecs to `fd`, at `at` or the stream offset.
///
/// Small ciovecs are gathered into one bounded buffer (at most [`GATHER`] bytes, however the
/// guest's ciovecs overlap or repeat), so that a line `printf` built from pieces reaches the
/// host in one write; a large one is written from guest memory as it is. The pieces go out in
/// order, and a short write or an error after some bytes ends the call with the count so far,
/// as `writev` does.
fn write_from(
    k: &mut Kernel,
    h: &mut dyn Host,
    mem: &mut [u8],
    fd: u32,
    iovs: u32,
    n: u32,
    at: Option<u64>,
) -> Result<u32, Errno> {
    let list = mem.read_iovecs(iovs, n)?;
    // Every slice is checked before anything is written: a bad pointer anywhere is `EFAULT`
    // with nothing written, as for one ciovec.
    for &(ptr, len) in &list {
        mem.slice(ptr, len)?;
    }
    let mem: &[u8] = mem;
    let mut sent: u64 = 0;
    let mut gathered: Vec<u8> = Vec::new();
    // Writes `piece` at the position after what went before; `Ok(false)` on a short write.
    let put = |k: &mut Kernel, h: &mut dyn Host, piece: &[u8], sent: &mut u64| {
        let pos = at.map(|a| a.saturating_add(*sent));
        let result = k.write(fd, piece, pos, h);
        match result {
            Ok(w) => {
                *sent += w as u64;
                Ok(w == piece.len())
            }
            // Bytes already written are reported; the error shows at the next call.
            Err(_) if *sent > 0 => Ok(false),
            Err(e) => Err(e),
        }
    };
    match list.as_slice() {
        [] => return Ok(k.write(fd, &[], at, h)? as u32),
        // The common case, written from guest memory with no copy.
        &[(ptr, len)] => {
            let take = u64::from(len).min(MAX_TRANSFER) as u32;
            return Ok(k.write(fd, mem.slice(ptr, take)?, at, h)? as u32);
        }
        _ => {}
    }
    let mut budget = MAX_TRANSFER;
    for (ptr, len) in list {
        if budget == 0 {
            break;
        }
        let take = u64::from(len).min(budget) as u32;
        budget -= u64::from(take);
        let piece = mem.slice(ptr, take)?;
        if gathered.len() + piece.len() <= GATHER {
            gathered.extend_from_slice(piece);
            continue;
        }
        if !gathered.is_empty() {
            let whole = put(k, h, &gathered, &mut sent)?;
            gathered.clear();
            if !whole {
                return Ok(sent as u32);
            }
        }
        if piece.len() <= GATHER {
            gathered.extend_from_slice(piece);
        } else if !put(k, h, piece, &mut sent)? {
            return Ok(sent as u32);
        }
    }
    if !gathered.is_empty() || sent == 0 {
        put(k, h, &gathered, &mut sent)?;
    }
    Ok(sent as u32)
}

fn path(mem: &[u8], ptr: i32, len: i32) -> Result<String, Errno> {
    mem.read_str(ptr as u32, len as u32).map(String::from)
}

mod imp {
    use super::*;

    pub fn args_get(k: &mut Kernel, _: &mut dyn Host, mem: &mut [u8], argv: i32, buf: i32) -> R {
        let items: Vec<Vec<u8>> = k.args().iter().map(|a| a.as_bytes().to_vec()).collect();
        write_strings(mem, argv as u32, buf as u32, items.into_iter())
    }

    pub fn args_sizes_get(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        argc: i32,
        size: i32,
    ) -> R {
        sizes(
            mem,
            argc as u32,
            size as u32,
            k.args().iter().map(String::len),
        )
    }

    pub fn environ_get(k: &mut Kernel, _: &mut dyn Host, mem: &mut [u8], env: i32, buf: i32) -> R {
        let items: Vec<Vec<u8>> = env_entries(k).collect();
        write_strings(mem, env as u32, buf as u32, items.into_iter())
    }

    pub fn environ_sizes_get(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        count: i32,
        size: i32,
    ) -> R {
        sizes(
            mem,
            count as u32,
            size as u32,
            env_entries(k).map(|e| e.len()),
        )
    }

    pub fn clock_res_get(k: &mut Kernel, h: &mut dyn Host, mem: &mut [u8], id: i32, out: i32) -> R {
        let res = match id as u32 {
            clockid::REALTIME | clockid::MONOTONIC => k.clock_resolution(h),
            clockid::PROCESS_CPUTIME_ID | clockid::THREAD_CPUTIME_ID => {
                return Err(Errno::Badf.into());
            }
            _ => return Err(Errno::Inval.into()),
        };
        mem.write_u64(out as u32, res)?;
        Ok(())
    }

    pub fn clock_time_get(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        id: i32,
        _precision: i64,
        out: i32,
    ) -> R {
        let now = match id as u32 {
            clockid::REALTIME => k.wall_clock_now(h),
            clockid::MONOTONIC => k.monotonic_now(h),
            clockid::PROCESS_CPUTIME_ID | clockid::THREAD_CPUTIME_ID => {
                return Err(Errno::Badf.into());
            }
            _ => return Err(Errno::Inval.into()),
        };
        mem.write_u64(out as u32, now)?;
        Ok(())
    }

    pub fn fd_advise(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        offset: i64,
        len: i64,
        advice: i32,
    ) -> R {
        let d = k.get(fd as u32)?;
        if !(0..=5).contains(&advice) || offset < 0 || len < 0 {
            return Err(Errno::Inval.into());
        }
        match d.object {
            Object::MemFile { .. } | Object::HostFile { .. } => {}
            Object::Stdin | Object::Stdout | Object::Stderr => return Err(Errno::Spipe.into()),
            Object::MemDir { .. } | Object::HostDir { .. } => return Err(Errno::Badf.into()),
        }
        d.require(rights::FD_ADVISE)?;
        // Advice is a hint; neither the in-memory files nor the host mounts act on it.
        Ok(())
    }

    pub fn fd_allocate(
        k: &mut Kernel,
        h: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        offset: i64,
        len: i64,
    ) -> R {
        if offset < 0 || len < 0 {
            return Err(Errno::Inval.into());
        }
        Ok(k.allocate(fd as u32, offset as u64, len as u64, h)?)
    }

    pub fn fd_close(k: &mut Kernel, h: &mut dyn Host, _: &mut [u8], fd: i32) -> R {
        Ok(k.close(fd as u32, h)?)
    }

    pub fn fd_datasync(k: &mut Kernel, h: &mut dyn Host, _: &mut [u8], fd: i32) -> R {
        Ok(k.sync(fd as u32, true, h)?)
    }

    pub fn fd_sync(k: &mut Kernel, h: &mut dyn Host, _: &mut [u8], fd: i32) -> R {
        Ok(k.sync(fd as u32, false, h)?)
    }

    pub fn fd_fdstat_get(k: &mut Kernel, h: &mut dyn Host, mem: &mut [u8], fd: i32, out: i32) -> R {
        let ft = k.filetype(fd as u32, h)?;
        let d = k.get(fd as u32)?;
        let mut b = [0u8; 24];
        b[0] = filetype_of(ft);
        b[2..4].copy_from_slice(&d.flags.to_le_bytes());
        b[8..16].copy_from_slice(&d.rights.to_le_bytes());
        b[16..24].copy_from_slice(&d.inheriting.to_le_bytes());
        mem.write_bytes(out as u32, &b)?;
        Ok(())
    }

    pub fn fd_fdstat_set_flags(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        flags: i32,
    ) -> R {
        if flags as u32 & !u32::from(fdflags::ALL) != 0 {
            return Err(Errno::Inval.into());
        }
        Ok(k.set_flags(fd as u32, flags as u16)?)
    }

    pub fn fd_fdstat_set_rights(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        base: i64,
        inh: i64,
    ) -> R {
        Ok(k.set_rights(fd as u32, base as u64, inh as u64)?)
    }

    pub fn fd_filestat_get(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        out: i32,
    ) -> R {
        let st = k.stat(fd as u32, h)?;
        write_filestat(mem, out as u32, &st)?;
        Ok(())
    }

    pub fn fd_filestat_set_size(
        k: &mut Kernel,
        h: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        size: i64,
    ) -> R {
        if size < 0 {
            return Err(Errno::Inval.into());
        }
        Ok(k.set_size(fd as u32, size as u64, h)?)
    }

    pub fn fd_filestat_set_times(
        k: &mut Kernel,
        h: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        atim: i64,
        mtim: i64,
        flags: i32,
    ) -> R {
        if flags as u32 & !u32::from(fstflags::ALL) != 0 {
            return Err(Errno::Inval.into());
        }
        let a = set_time(atim, fstflags::ATIM, fstflags::ATIM_NOW, flags)?;
        let m = set_time(mtim, fstflags::MTIM, fstflags::MTIM_NOW, flags)?;
        Ok(k.set_times(fd as u32, a, m, h)?)
    }

    pub fn fd_pread(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        n: i32,
        offset: i64,
        out: i32,
    ) -> R {
        if offset < 0 {
            return Err(Errno::Inval.into());
        }
        let got = read_into(
            k,
            h,
            mem,
            fd as u32,
            iovs as u32,
            n as u32,
            Some(offset as u64),
        )?;
        mem.write_u32(out as u32, got)?;
        Ok(())
    }

    pub fn fd_pwrite(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        n: i32,
        offset: i64,
        out: i32,
    ) -> R {
        if offset < 0 {
            return Err(Errno::Inval.into());
        }
        let put = write_from(
            k,
            h,
            mem,
            fd as u32,
            iovs as u32,
            n as u32,
            Some(offset as u64),
        )?;
        mem.write_u32(out as u32, put)?;
        Ok(())
    }

    pub fn fd_read(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        n: i32,
        out: i32,
    ) -> R {
        // A blocking read of standard input waits through the host first, so that a
        // checkpoint can be taken while it waits (a non-blocking one reads at once).
        let waits = k.get(fd as u32).is_ok_and(|d| {
            matches!(d.object, Object::Stdin)
                && d.read
                && d.require(rights::FD_READ).is_ok()
                && d.flags & fdflags::NONBLOCK == 0
        });
        // Every argument is checked before the wait, so that no error is deferred past it.
        let wanted = if waits {
            let list = mem.read_iovecs(iovs as u32, n as u32)?;
            for &(ptr, len) in &list {
                mem.slice_mut(ptr, len)?;
            }
            mem.slice_mut(out as u32, 4)?;
            list.iter().map(|&(_, len)| u64::from(len)).sum::<u64>()
        } else {
            0
        };
        if wanted > 0 && h.wait_stdin(None, true) == crate::host::Wait::Woken {
            // No input yet, and a checkpoint is wanted: the call returns so that the guest
            // reaches its migration point, and the read is finished before the guest runs
            // on (see `Pending`).
            k.set_pending(Some(crate::kernel::Pending::Read {
                fd: fd as u32,
                iovs: iovs as u32,
                iovs_len: n as u32,
                nread: out as u32,
            }));
            return Ok(());
        }
        let got = read_into(k, h, mem, fd as u32, iovs as u32, n as u32, None)?;
        mem.write_u32(out as u32, got)?;
        Ok(())
    }

    pub fn fd_write(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        iovs: i32,
        n: i32,
        out: i32,
    ) -> R {
        let put = write_from(k, h, mem, fd as u32, iovs as u32, n as u32, None)?;
        mem.write_u32(out as u32, put)?;
        Ok(())
    }

    pub fn fd_prestat_get(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        out: i32,
    ) -> R {
        let name = k.get(fd as u32)?.preopen.as_ref().ok_or(Errno::Badf)?;
        let len = name.len() as u32;
        mem.write_u32(out as u32, 0)?;
        mem.write_u32((out as u32).wrapping_add(4), len)?;
        Ok(())
    }

    pub fn fd_prestat_dir_name(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        path: i32,
        len: i32,
    ) -> R {
        let name = k.get(fd as u32)?.preopen.as_ref().ok_or(Errno::Badf)?;
        if (len as u32 as usize) < name.len() {
            return Err(Errno::NameTooLong.into());
        }
        mem.write_bytes(path as u32, name.as_bytes())?;
        Ok(())
    }

    pub fn fd_readdir(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        buf: i32,
        buf_len: i32,
        cookie: i64,
        out: i32,
    ) -> R {
        let entries = k.read_dir(fd as u32, cookie as u64, h)?;
        let cap = buf_len as u32 as usize;
        // Check the whole buffer first, so a bad one is EFAULT even when nothing fits.
        mem.slice_mut(buf as u32, buf_len as u32)?;
        let mut bytes = Vec::with_capacity(cap.min(64 * 1024));
        for e in entries {
            if bytes.len() >= cap {
                break;
            }
            let mut head = [0u8; 24];
            head[0..8].copy_from_slice(&e.next.to_le_bytes());
            head[8..16].copy_from_slice(&e.ino.to_le_bytes());
            head[16..20].copy_from_slice(&(e.name.len() as u32).to_le_bytes());
            head[20] = filetype_of(e.filetype);
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(e.name.as_bytes());
        }
        // A full buffer tells the guest to read again with a larger one; the last entry may
        // be cut short, as the ABI allows.
        bytes.truncate(cap);
        mem.write_bytes(buf as u32, &bytes)?;
        mem.write_u32(out as u32, bytes.len() as u32)?;
        Ok(())
    }

    pub fn fd_renumber(k: &mut Kernel, h: &mut dyn Host, _: &mut [u8], fd: i32, to: i32) -> R {
        Ok(k.renumber(fd as u32, to as u32, h)?)
    }

    pub fn fd_seek(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        offset: i64,
        whence: i32,
        out: i32,
    ) -> R {
        if !(0..=2).contains(&whence) {
            return Err(Errno::Inval.into());
        }
        let pos = k.seek(fd as u32, offset, whence as u8, h)?;
        mem.write_u64(out as u32, pos)?;
        Ok(())
    }

    pub fn fd_tell(k: &mut Kernel, h: &mut dyn Host, mem: &mut [u8], fd: i32, out: i32) -> R {
        let pos = k.seek(fd as u32, 0, crate::abi::whence::CUR, h)?;
        mem.write_u64(out as u32, pos)?;
        Ok(())
    }

    pub fn path_create_directory(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        p: i32,
        len: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        Ok(k.create_dir_at(fd as u32, &p, h)?)
    }

    pub fn path_filestat_get(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        flags: i32,
        p: i32,
        len: i32,
        out: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        let follow = flags as u32 & lookupflags::SYMLINK_FOLLOW != 0;
        let st = k.stat_at(fd as u32, &p, follow, h)?;
        write_filestat(mem, out as u32, &st)?;
        Ok(())
    }
    pub fn path_filestat_set_times(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        flags: i32,
        p: i32,
        len: i32,
        atim: i64,
        mtim: i64,
        fst: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        if fst as u32 & !u32::from(fstflags::ALL) != 0 {
            return Err(Errno::Inval.into());
        }
        let a = set_time(atim, fstflags::ATIM, fstflags::ATIM_NOW, fst)?;
        let m = set_time(mtim, fstflags::MTIM, fstflags::MTIM_NOW, fst)?;
        let follow = flags as u32 & lookupflags::SYMLINK_FOLLOW != 0;
        Ok(k.set_times_at(fd as u32, &p, follow, a, m, h)?)
    }
    pub fn path_link(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        old_fd: i32,
        old_flags: i32,
        old_path: i32,
        old_len: i32,
        new_fd: i32,
        new_path: i32,
        new_len: i32,
    ) -> R {
        let old = path(mem, old_path, old_len)?;
        let new = path(mem, new_path, new_len)?;
        let follow = old_flags as u32 & lookupflags::SYMLINK_FOLLOW != 0;
        Ok(k.link_at(old_fd as u32, &old, follow, new_fd as u32, &new, h)?)
    }
    pub fn path_open(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        dirflags: i32,
        p: i32,
        len: i32,
        of: i32,
        base: i64,
        // Ignored: a new directory inherits its parent's inheriting rights, a file has none.
        _inheriting: i64,
        fdf: i32,
        out: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        // Check the result pointer before anything is opened, so nothing leaks on EFAULT.
        mem.slice_mut(out as u32, 4)?;
        if of as u32 & !u32::from(oflags::ALL) != 0 || fdf as u32 & !u32::from(fdflags::ALL) != 0 {
            return Err(Errno::Inval.into());
        }
        let of = of as u16;
        let opts = OpenOptions {
            follow: dirflags as u32 & lookupflags::SYMLINK_FOLLOW != 0,
            create: of & oflags::CREAT != 0,
            exclusive: of & oflags::EXCL != 0,
            truncate: of & oflags::TRUNC != 0,
            directory: of & oflags::DIRECTORY != 0,
            rights: base as u64,
            flags: fdf as u16,
        };
        let new = k.open_at(fd as u32, &p, opts, h)?;
        mem.write_u32(out as u32, new)?;
        Ok(())
    }

    pub fn path_readlink(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        p: i32,
        len: i32,
        buf: i32,
        buf_len: i32,
        out: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        let target = k.readlink_at(fd as u32, &p, h)?;
        let n = target.len().min(buf_len as u32 as usize);
        mem.write_bytes(buf as u32, &target.as_bytes()[..n])?;
        mem.write_u32(out as u32, n as u32)?;
        Ok(())
    }

    pub fn path_remove_directory(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        p: i32,
        len: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        Ok(k.remove_dir_at(fd as u32, &p, h)?)
    }

    pub fn path_rename(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        old_path: i32,
        old_len: i32,
        new_fd: i32,
        new_path: i32,
        new_len: i32,
    ) -> R {
        let old = path(mem, old_path, old_len)?;
        let new = path(mem, new_path, new_len)?;
        Ok(k.rename_at(fd as u32, &old, new_fd as u32, &new, h)?)
    }

    pub fn path_symlink(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        old_path: i32,
        old_len: i32,
        fd: i32,
        new_path: i32,
        new_len: i32,
    ) -> R {
        let target = path(mem, old_path, old_len)?;
        let new = path(mem, new_path, new_len)?;
        Ok(k.symlink_at(&target, fd as u32, &new, h)?)
    }

    pub fn path_unlink_file(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        fd: i32,
        p: i32,
        len: i32,
    ) -> R {
        let p = path(mem, p, len)?;
        Ok(k.unlink_file_at(fd as u32, &p, h)?)
    }

    pub fn poll_oneoff(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        subs: i32,
        events: i32,
        n: i32,
        out: i32,
    ) -> R {
        let (subs, events, n, out) = (subs as u32, events as u32, n as u32, out as u32);
        poll::poll_oneoff(k, h, mem, subs, events, n, out, true)
    }

    pub fn proc_raise(_: &mut Kernel, _: &mut dyn Host, _: &mut [u8], sig: i32) -> R {
        match sig {
            0 => Ok(()),
            // SIGCHLD, SIGCONT, SIGURG and SIGWINCH are ignored by default; SIGSTOP, SIGTSTP,
            // SIGTTIN and SIGTTOU would stop the process, and a guest has no job control.
            16..=22 | 27 => Ok(()),
            1..=30 => Err(Trap::Signal(sig as u8).into()),
            _ => Err(Errno::Inval.into()),
        }
    }

    pub fn sched_yield(_: &mut Kernel, h: &mut dyn Host, _: &mut [u8]) -> R {
        h.yield_now();
        Ok(())
    }

    pub fn random_get(k: &mut Kernel, h: &mut dyn Host, mem: &mut [u8], buf: i32, len: i32) -> R {
        let out = mem.slice_mut(buf as u32, len as u32)?;
        Ok(k.random_bytes(out, h)?)
    }

    /// No descriptor is a socket until the sockets layer exists: a live descriptor is
    /// `ENOTSOCK`, a dead one `EBADF`.
    fn not_a_socket(k: &Kernel, fd: i32) -> R {
        k.get(fd as u32)?;
        Err(Errno::NotSock.into())
    }

    pub fn sock_accept(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        _flags: i32,
        _out: i32,
    ) -> R {
        not_a_socket(k, fd)
    }

    pub fn sock_recv(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        _: i32,
        _: i32,
        _: i32,
        _: i32,
        _: i32,
    ) -> R {
        not_a_socket(k, fd)
    }

    pub fn sock_send(
        k: &mut Kernel,
        _: &mut dyn Host,
        _: &mut [u8],
        fd: i32,
        _: i32,
        _: i32,
        _: i32,
        _: i32,
    ) -> R {
        not_a_socket(k, fd)
    }

    pub fn sock_shutdown(k: &mut Kernel, _: &mut dyn Host, _: &mut [u8], fd: i32, _how: i32) -> R {
        not_a_socket(k, fd)
    }
}

mod poll {
    use super::*;
    use crate::abi::size;

    struct Event {
        userdata: u64,
        error: Errno,
        kind: u8,
        nbytes: u64,
    }

    /// `poll_oneoff`. Each descriptor's object says when it is ready
    /// ([`Kernel::readiness`]): files, directories' errors and output streams at once;
    /// standard input when the host says it can be read. With nothing
    /// ready, the call waits through the host for standard input (when asked for) and the
    /// earliest clock subscription. When the host wakes it for a checkpoint (`wakeable`), a
    /// wait with a clock is cut short as a sleep is (the rest is owed, see
    /// [`Kernel::sleep`]); one without is left pending, finished after the pause.
    #[allow(
        clippy::too_many_arguments,
        reason = "the import's arguments, and whether it may pause"
    )]
    pub fn poll_oneoff(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        subs: u32,
        events: u32,
        n: u32,
        out: u32,
        wakeable: bool,
    ) -> R {
        if n == 0 {
            return Err(Errno::Inval.into());
        }
        let sub_bytes =
            mem.read_vec(subs, n.checked_mul(size::SUBSCRIPTION).ok_or(Errno::Fault)?)?;
        mem.slice_mut(events, n.checked_mul(size::EVENT).ok_or(Errno::Fault)?)?;
        mem.slice_mut(out, 4)?;

        let mut ready: Vec<Event> = Vec::new();
        // (userdata, nanoseconds from now until due)
        let mut timers: Vec<(u64, u64)> = Vec::new();
        // Subscriptions to standard input being readable, by userdata.
        let mut stdin: Vec<u64> = Vec::new();
        for s in sub_bytes.chunks_exact(size::SUBSCRIPTION as usize) {
            let s: &[u8] = s;
            let userdata = s.read_u64(0)?;
            let tag = s[8];
            match tag {
                eventtype::CLOCK => {
                    let id = s.read_u32(16)?;
                    let timeout = s.read_u64(24)?;
                    let flags = s.read_u16(40)?;
                    let now = match id {
                        clockid::REALTIME => k.wall_clock_now(h),
                        clockid::MONOTONIC => k.monotonic_now(h),
                        _ => {
                            ready.push(Event {
                                userdata,
                                error: Errno::Inval,
                                kind: tag,
                                nbytes: 0,
                            });
                            continue;
                        }
                    };
                    let wait = if flags & 1 != 0 {
                        timeout.saturating_sub(now)
                    } else {
                        timeout
                    };
                    timers.push((userdata, wait));
                }
                eventtype::FD_READ | eventtype::FD_WRITE => {
                    let fd = s.read_u32(16)?;
                    // A descriptor that is not open fails the whole call, as in wasmtime.
                    let (error, nbytes) = match k.readiness(fd, tag == eventtype::FD_WRITE, h)? {
                        crate::kernel::Readiness::Now(n) => (Errno::Success, n),
                        crate::kernel::Readiness::Error(e) => (e, 0),
                        crate::kernel::Readiness::HostInput => {
                            stdin.push(userdata);
                            continue;
                        }
                    };
                    ready.push(Event {
                        userdata,
                        error,
                        kind: tag,
                        nbytes,
                    });
                }
                _ => return Err(Errno::Inval.into()),
            }
        }
        let input = |ready: &mut Vec<Event>| {
            for &userdata in &stdin {
                ready.push(Event {
                    userdata,
                    error: Errno::Success,
                    kind: eventtype::FD_READ,
                    nbytes: 0,
                });
            }
        };
        let due = |ready: &mut Vec<Event>, by: u64| {
            for &(userdata, w) in &timers {
                if w <= by {
                    ready.push(Event {
                        userdata,
                        error: Errno::Success,
                        kind: eventtype::CLOCK,
                        nbytes: 0,
                    });
                }
            }
        };
        let earliest = timers.iter().map(|t| t.1).min();
        if !ready.is_empty() {
            // Something is ready now: standard input only if it is too, and only the clocks
            // already due.
            if !stdin.is_empty() && h.wait_stdin(Some(0), false) == crate::host::Wait::Ready {
                input(&mut ready);
            }
            due(&mut ready, 0);
        } else if stdin.is_empty() {
            let wait = earliest.unwrap_or(0);
            if wait > 0 {
                k.sleep(wait, h);
            }
            due(&mut ready, wait);
        } else if k.is_deterministic() {
            // Virtual time does not pass while the host waits: input there now, or the
            // earliest clock, whose time then passes; with no clock, the wait is real.
            let now = if earliest.is_some() { Some(0) } else { None };
            match h.wait_stdin(now, wakeable) {
                crate::host::Wait::Ready => {
                    input(&mut ready);
                    due(&mut ready, 0);
                }
                crate::host::Wait::TimedOut => {
                    let wait = earliest.unwrap_or(0);
                    k.sleep(wait, h);
                    due(&mut ready, wait);
                }
                crate::host::Wait::Woken => {
                    k.set_pending(Some(crate::kernel::Pending::Poll {
                        subs,
                        events,
                        n,
                        out,
                    }));
                    return Ok(());
                }
            }
        } else {
            let start = k.monotonic_now(h);
            let waited = h.wait_stdin(earliest, wakeable);
            let elapsed = k.monotonic_now(h).saturating_sub(start);
            match (waited, earliest) {
                (crate::host::Wait::Ready, _) => {
                    input(&mut ready);
                    due(&mut ready, elapsed);
                }
                (crate::host::Wait::TimedOut, Some(wait)) => due(&mut ready, wait.max(elapsed)),
                // Woken for a checkpoint with a clock to wait for: the clock fires as if its
                // time had passed, and the rest is owed, as for a sleep.
                (crate::host::Wait::Woken, Some(wait)) => {
                    k.owe_until(start.saturating_add(wait));
                    due(&mut ready, wait);
                }
                (_, None) => {
                    k.set_pending(Some(crate::kernel::Pending::Poll {
                        subs,
                        events,
                        n,
                        out,
                    }));
                    return Ok(());
                }
            }
        }
        let mut at = events;
        for e in &ready {
            let mut b = [0u8; 32];
            b[0..8].copy_from_slice(&e.userdata.to_le_bytes());
            b[8..10].copy_from_slice(&e.error.raw().to_le_bytes());
            b[10] = e.kind;
            b[16..24].copy_from_slice(&e.nbytes.to_le_bytes());
            mem.write_bytes(at, &b)?;
            at += size::EVENT;
        }
        mem.write_u32(out, ready.len() as u32)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn every_import_is_named_once() {
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), NAMES.len());
        assert_eq!(NAMES.len(), 46);
    }

    /// Counts what reaches standard output, keeping none of it.
    #[derive(Default)]
    struct Counting {
        bytes: u64,
        writes: u64,
        largest: usize,
        fail_after: Option<u64>,
    }

    impl Host for Counting {
        fn wall_clock_ns(&mut self) -> u64 {
            0
        }
        fn monotonic_ns(&mut self) -> u64 {
            0
        }
        fn random_bytes(&mut self, _: &mut [u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn stdin_read(&mut self, _: &mut [u8]) -> Result<usize, Errno> {
            Ok(0)
        }
        fn stdout_write(&mut self, buf: &[u8]) -> Result<(), Errno> {
            if self.fail_after.is_some_and(|n| self.writes >= n) {
                return Err(Errno::Io);
            }
            self.bytes += buf.len() as u64;
            self.writes += 1;
            self.largest = self.largest.max(buf.len());
            Ok(())
        }
        fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn sleep_ns(&mut self, _: u64) {}
    }

    /// Puts `iovecs` at `at` in `mem`.
    fn put_iovecs(mem: &mut [u8], at: usize, iovecs: &[(u32, u32)]) {
        for (i, (p, l)) in iovecs.iter().enumerate() {
            mem[at + 8 * i..at + 8 * i + 4].copy_from_slice(&p.to_le_bytes());
            mem[at + 8 * i + 4..at + 8 * i + 8].copy_from_slice(&l.to_le_bytes());
        }
    }

    /// 131,072 ciovecs that all name the same MiB ask for 128 GiB: the call streams it in
    /// pieces of at most a ciovec and stops at Linux's per-call maximum, instead of gathering
    /// everything into one host buffer.
    #[test]
    fn overlapping_ciovecs_are_written_in_bounded_pieces() {
        const MIB: u32 = 1 << 20;
        let mut mem = vec![0u8; 2 * MIB as usize];
        let n = MIB / 8;
        put_iovecs(&mut mem, MIB as usize, &vec![(0, MIB); n as usize]);
        let mut k = Kernel::new();
        let mut host = Counting::default();
        let errno = fd_write(&mut k, &mut host, &mut mem, 1, MIB as i32, n as i32, 0).unwrap();
        assert_eq!(errno, 0);
        let written = u32::from_le_bytes(mem[..4].try_into().unwrap());
        assert_eq!(u64::from(written), MAX_TRANSFER);
        assert_eq!(host.bytes, MAX_TRANSFER);
        assert!(host.largest <= MIB as usize, "{}", host.largest);
    }

    /// Small ciovecs still reach the host as one write; a bad pointer in any of them is
    /// `EFAULT` with nothing written; a host error after some pieces is a short write.
    #[test]
    fn ciovecs_are_gathered_checked_and_cut_short() {
        let mut mem = vec![0u8; 4 << 20];
        mem[100..105].copy_from_slice(b"hello");
        mem[200] = b'\n';
        put_iovecs(&mut mem, 1000, &[(100, 5), (200, 1), (100, 5)]);
        let mut k = Kernel::new();
        let mut host = Counting::default();
        assert_eq!(fd_write(&mut k, &mut host, &mut mem, 1, 1000, 3, 0), Ok(0));
        assert_eq!((host.bytes, host.writes), (11, 1));

        put_iovecs(&mut mem, 1000, &[(100, 5), (u32::MAX - 2, 8)]);
        let mut host = Counting::default();
        let errno = fd_write(&mut k, &mut host, &mut mem, 1, 1000, 2, 0).unwrap();
        assert_eq!(errno, Errno::Fault.raw() as i32);
        assert_eq!(host.writes, 0);

        // Two large pieces, the second refused by the host: the first one's bytes are
        // reported.
        put_iovecs(
            &mut mem,
            1000,
            &[(0x10_0000, 0x10_0000), (0x20_0000, 0x10_0000)],
        );
        let mut host = Counting {
            fail_after: Some(1),
            ..Counting::default()
        };
        assert_eq!(fd_write(&mut k, &mut host, &mut mem, 1, 1000, 2, 0), Ok(0));
        assert_eq!(u32::from_le_bytes(mem[..4].try_into().unwrap()), 0x10_0000);
    }

    /// A host whose standard input answers waits as a script says, with a clock that moves
    /// only when it sleeps.
    struct Scripted {
        waits: Vec<crate::host::Wait>,
        now: u64,
        input: &'static [u8],
    }

    impl Host for Scripted {
        fn wall_clock_ns(&mut self) -> u64 {
            self.now
        }
        fn monotonic_ns(&mut self) -> u64 {
            self.now
        }
        fn random_bytes(&mut self, _: &mut [u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn stdin_read(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
            let n = self.input.len().min(buf.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
        fn stdout_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn stderr_write(&mut self, _: &[u8]) -> Result<(), Errno> {
            Ok(())
        }
        fn sleep_ns(&mut self, ns: u64) {
            self.now += ns;
        }
        fn wait_stdin(&mut self, timeout: Option<u64>, _: bool) -> crate::host::Wait {
            let w = self.waits.remove(0);
            if w == crate::host::Wait::TimedOut {
                self.now += timeout.unwrap_or(0);
            }
            w
        }
    }

    /// Subscriptions at 0: userdata 1 reads descriptor 0, userdata 2 (with `clock`) is a
    /// relative monotonic clock of 1 ms. Returns the events' userdata.
    fn poll_stdin(k: &mut Kernel, h: &mut Scripted, clock: bool) -> Vec<u64> {
        let mut mem = vec![0u8; 1024];
        mem[0..8].copy_from_slice(&1u64.to_le_bytes());
        mem[8] = eventtype::FD_READ;
        mem[48..56].copy_from_slice(&2u64.to_le_bytes());
        mem[56] = eventtype::CLOCK;
        mem[64..68].copy_from_slice(&clockid::MONOTONIC.to_le_bytes());
        mem[72..80].copy_from_slice(&1_000_000u64.to_le_bytes());
        let n = if clock { 2 } else { 1 };
        assert_eq!(poll_oneoff(k, h, &mut mem, 0, 256, n, 512).unwrap(), 0);
        let got = u32::from_le_bytes(mem[512..516].try_into().unwrap());
        (0..got as usize)
            .map(|i| u64::from_le_bytes(mem[256 + 32 * i..264 + 32 * i].try_into().unwrap()))
            .collect()
    }

    /// `poll_oneoff` on standard input asks the host: input ready is an event; a clock that
    /// passes first fires alone; a checkpoint's wake with a clock fires it and owes the rest;
    /// without a clock the poll is left pending, and finishing it waits for real.
    #[test]
    fn polling_standard_input_waits_through_the_host() {
        use crate::host::Wait;
        let mut k = Kernel::new();
        let mut h = Scripted {
            waits: vec![Wait::Ready],
            now: 0,
            input: b"",
        };
        assert_eq!(poll_stdin(&mut k, &mut h, true), [1]);
        h.waits = vec![Wait::TimedOut];
        assert_eq!(poll_stdin(&mut k, &mut h, true), [2]);
        assert_eq!(h.now, 1_000_000, "the clock's time passed");
        // Woken with a clock: it fires at once and nothing is pending.
        h.waits = vec![Wait::Woken];
        assert_eq!(poll_stdin(&mut k, &mut h, true), [2]);
        assert_eq!(k.pending(), None);
        // Woken without one: no event yet, the poll is pending, and finishing it writes the
        // event the real wait gives.
        let mut mem = vec![0u8; 1024];
        mem[0..8].copy_from_slice(&1u64.to_le_bytes());
        mem[8] = eventtype::FD_READ;
        h.waits = vec![Wait::Woken, Wait::Ready];
        assert_eq!(
            poll_oneoff(&mut k, &mut h, &mut mem, 0, 256, 1, 512).unwrap(),
            0
        );
        assert!(matches!(
            k.pending(),
            Some(crate::kernel::Pending::Poll { .. })
        ));
        assert_eq!(&mem[512..516], &[0, 0, 0, 0]);
        complete_pending(&mut k, &mut h, &mut mem);
        assert_eq!(k.pending(), None);
        assert_eq!(u32::from_le_bytes(mem[512..516].try_into().unwrap()), 1);
        assert_eq!(u64::from_le_bytes(mem[256..264].try_into().unwrap()), 1);
        // A read woken likewise is finished with the input that came.
        h.input = b"late";
        h.waits = vec![Wait::Woken];
        put_iovecs(&mut mem, 600, &[(700, 16)]);
        assert_eq!(
            fd_read(&mut k, &mut h, &mut mem, 0, 600, 1, 620).unwrap(),
            0
        );
        assert!(matches!(
            k.pending(),
            Some(crate::kernel::Pending::Read { .. })
        ));
        complete_pending(&mut k, &mut h, &mut mem);
        assert_eq!(u32::from_le_bytes(mem[620..624].try_into().unwrap()), 4);
        assert_eq!(&mem[700..704], b"late");
    }

    /// A read that would wait is checked in full first: a bad buffer is `EFAULT` and a missing
    /// right `ENOTCAPABLE` at once, never a pending read that later reads as the end of
    /// input; a read of nothing, or a non-blocking one, does not wait at all.
    #[test]
    fn a_read_is_checked_before_it_waits() {
        use crate::host::Wait;
        let mut k = Kernel::new();
        // A host with no waits scripted: asking it to wait would panic.
        let mut h = Scripted {
            waits: vec![],
            now: 0,
            input: b"x",
        };
        let mut mem = vec![0u8; 1024];
        put_iovecs(&mut mem, 600, &[(2000, 16)]);
        assert_eq!(
            fd_read(&mut k, &mut h, &mut mem, 0, 600, 1, 620).unwrap(),
            i32::from(Errno::Fault.raw())
        );
        put_iovecs(&mut mem, 600, &[(700, 0)]);
        assert_eq!(
            fd_read(&mut k, &mut h, &mut mem, 0, 600, 1, 620).unwrap(),
            0
        );
        assert_eq!(k.pending(), None);
        k.set_flags(0, fdflags::NONBLOCK).unwrap();
        put_iovecs(&mut mem, 600, &[(700, 16)]);
        assert_eq!(
            fd_read(&mut k, &mut h, &mut mem, 0, 600, 1, 620).unwrap(),
            0
        );
        assert_eq!(&mem[700..701], b"x");
        k.set_flags(0, 0).unwrap();
        k.set_rights(0, rights::STDIO & !rights::FD_READ, 0)
            .unwrap();
        h.waits = vec![Wait::Woken];
        assert_eq!(
            fd_read(&mut k, &mut h, &mut mem, 0, 600, 1, 620).unwrap(),
            i32::from(Errno::NotCapable.raw())
        );
        assert_eq!(k.pending(), None);
    }
}
