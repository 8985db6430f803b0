//! Which parts of a large buffer were written since a given moment: the dirty-page tracking
//! that lets an incremental snapshot skip the pages that did not change without comparing
//! them.
//!
//! CRIU tracks dirty pages with the kernel's soft-dirty bits. Many kernels are built without
//! them, and Linux 6.7 added a replacement: userfaultfd write protection in asynchronous mode,
//! read back with the `PAGEMAP_SCAN` ioctl. The memory is registered with a userfaultfd and
//! write-protected; a write to a protected page is resolved by the kernel on the spot (the
//! writing thread never waits on anyone) and marks the page written. `PAGEMAP_SCAN` then lists
//! the written pages and protects them again, in one call.
//!
//! [`Tracker`] wraps this for one buffer, such as a guest's linear memory in its instance.
//! Where the host cannot track (another OS, an older kernel, a kernel without userfaultfd, a
//! buffer the kernel will not register, qemu-user, `TABI_NO_PAGEMAP` set), [`Tracker::start`]
//! returns `None` and callers compare pages instead. A tracker only ever answers for the
//! buffer it was started on, at the same address: a buffer that moved or was unmapped gives
//! `None`, never a wrong answer.

use crate::resident::Touched;

/// Tracks the 4 KiB blocks of one buffer that are written from [`Tracker::start`] on.
#[derive(Debug)]
pub struct Tracker {
    inner: imp::Tracker,
}

impl Tracker {
    /// Starts tracking writes to `mem`; `None` when the host cannot. The buffer must stay at
    /// its address for the tracker to answer; its contents are not changed.
    pub fn start(mem: &[u8]) -> Option<Tracker> {
        if mem.is_empty() {
            return None;
        }
        imp::Tracker::start(mem).map(|inner| Tracker { inner })
    }

    /// The blocks of `mem` written since the tracker started or since the last call, and
    /// starts the next interval. Blocks past the length the tracker started with (memory the
    /// buffer grew by) count as written. `None` when the tracker cannot answer for `mem` (it
    /// moved, shrank, or the kernel refused): the caller must then not rely on tracking until
    /// it starts a new tracker.
    pub fn take(&mut self, mem: &[u8]) -> Option<Touched> {
        self.inner.take(mem)
    }
}

/// Hosts that cannot track.
#[cfg(not(all(
    feature = "std",
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "s390x",
        target_arch = "riscv64"
    )
)))]
mod imp {
    use crate::resident::Touched;

    #[derive(Debug)]
    pub(super) enum Tracker {}

    impl Tracker {
        pub(super) fn start(_: &[u8]) -> Option<Tracker> {
            None
        }
        pub(super) fn take(&mut self, _: &[u8]) -> Option<Touched> {
            match *self {}
        }
    }
}

#[cfg(all(
    feature = "std",
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "s390x",
        target_arch = "riscv64"
    )
))]
#[allow(
    unsafe_code,
    reason = "userfaultfd and PAGEMAP_SCAN are only reached through raw system calls"
)]
mod imp {
    use crate::resident::{self, BLOCK, Touched};
    use alloc::vec;
    use alloc::vec::Vec;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// `_IOWR(ty, nr, size)` in the encoding these architectures share.
    const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
        (3 << 30) | ((size as u32) << 16) | (ty << 8) | nr
    }

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioRange {
        start: u64,
        len: u64,
    }
    #[repr(C)]
    struct UffdioRegister {
        range: UffdioRange,
        mode: u64,
        ioctls: u64,
    }
    #[repr(C)]
    struct UffdioWriteprotect {
        range: UffdioRange,
        mode: u64,
    }
    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }

    const UFFD_API: u64 = 0xAA;
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
    const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_API: u32 = iowr(0xAA, 0x3F, size_of::<UffdioApi>());
    const UFFDIO_REGISTER: u32 = iowr(0xAA, 0x00, size_of::<UffdioRegister>());
    const UFFDIO_WRITEPROTECT: u32 = iowr(0xAA, 0x06, size_of::<UffdioWriteprotect>());
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    const PAGEMAP_SCAN: u32 = iowr(b'f' as u32, 16, size_of::<PmScanArg>());
    const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
    const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
    const PAGE_IS_WRITTEN: u64 = 1 << 1;

    /// Regions per `PAGEMAP_SCAN` call; a scan that fills them goes on where it stopped.
    const REGIONS: usize = 512;

    #[derive(Debug)]
    pub(super) struct Tracker {
        /// Registered with the buffer; closing it ends the tracking.
        uffd: OwnedFd,
        pagemap: std::fs::File,
        /// The buffer's address and length when tracking started.
        addr: usize,
        len: usize,
        /// The host pages registered: `[start, end)`.
        start: usize,
        end: usize,
        page: usize,
    }

    /// Registers host pages `[start, end)` for asynchronous write protection and protects
    /// them.
    fn register(uffd: &OwnedFd, start: usize, end: usize) -> bool {
        let range = || UffdioRange {
            start: start as u64,
            len: (end - start) as u64,
        };
        let mut register = UffdioRegister {
            range: range(),
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        if ioctl(uffd, UFFDIO_REGISTER, &mut register) != 0 {
            return false;
        }
        let mut protect = UffdioWriteprotect {
            range: range(),
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        ioctl(uffd, UFFDIO_WRITEPROTECT, &mut protect) == 0
    }

    fn ioctl<T>(fd: &impl AsRawFd, request: u32, arg: &mut T) -> libc::c_long {
        // SAFETY: every request used here takes a pointer to a struct of type `T` that the
        // kernel reads and writes in place, and `arg` is such a struct, exclusively borrowed
        // for the call.
        unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                request as _,
                core::ptr::from_mut(arg).cast::<libc::c_void>(),
            ) as libc::c_long
        }
    }

    impl Tracker {
        pub(super) fn start(mem: &[u8]) -> Option<Tracker> {
            if !resident::linux::allowed() {
                return None;
            }
            let page = resident::linux::page_size()?;
            let addr = mem.as_ptr() as usize;
            let start = addr & !(page - 1);
            let end = addr
                .checked_add(mem.len())?
                .checked_next_multiple_of(page)?;

            // SAFETY: the system call takes only flags and returns a new descriptor, which is
            // owned from here on.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_userfaultfd,
                    libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
                )
            };
            let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
            // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
            let uffd = unsafe { OwnedFd::from_raw_fd(fd) };

            // Asynchronous write protection is required: in the synchronous mode a write to a
            // protected page would wait for a reply that never comes. The API handshake fails
            // unless every feature asked for is granted.
            let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
            let mut granted = None;
            for features in [wanted | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, wanted] {
                let mut api = UffdioApi {
                    api: UFFD_API,
                    features,
                    ioctls: 0,
                };
                if ioctl(&uffd, UFFDIO_API, &mut api) == 0 {
                    granted = Some(api.features);
                    break;
                }
            }
            if granted? & wanted != wanted {
                return None;
            }
            if !register(&uffd, start, end) {
                return None;
            }
            let pagemap = std::fs::File::open("/proc/self/pagemap").ok()?;
            let mut t = Tracker {
                uffd,
                pagemap,
                addr,
                len: mem.len(),
                start,
                end,
                page,
            };
            // The scan must work before anyone relies on it.
            t.scan()?;
            Some(t)
        }

        /// The written host pages, as `[start, end)` address ranges, re-protecting them.
        fn scan(&mut self) -> Option<Vec<(usize, usize)>> {
            let mut regions = vec![PageRegion::default(); REGIONS];
            let mut found = Vec::new();
            let mut from = self.start;
            while from < self.end {
                let mut arg = PmScanArg {
                    size: size_of::<PmScanArg>() as u64,
                    // Written pages are protected again as they are reported; a region not
                    // registered for asynchronous protection fails the call.
                    flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                    start: from as u64,
                    end: self.end as u64,
                    walk_end: 0,
                    vec: regions.as_mut_ptr() as u64,
                    vec_len: REGIONS as u64,
                    max_pages: 0,
                    category_inverted: 0,
                    category_mask: PAGE_IS_WRITTEN,
                    category_anyof_mask: 0,
                    return_mask: PAGE_IS_WRITTEN,
                };
                let n = ioctl(&self.pagemap, PAGEMAP_SCAN, &mut arg);
                let n = usize::try_from(n).ok().filter(|&n| n <= REGIONS)?;
                for r in &regions[..n] {
                    let (a, b) = (usize::try_from(r.start).ok()?, usize::try_from(r.end).ok()?);
                    if a >= b || a < self.start || b > self.end {
                        return None;
                    }
                    found.push((a, b));
                }
                let walked = usize::try_from(arg.walk_end).ok()?;
                if walked <= from || walked > self.end {
                    return None;
                }
                from = walked;
            }
            Some(found)
        }

        pub(super) fn take(&mut self, mem: &[u8]) -> Option<Touched> {
            if mem.as_ptr() as usize != self.addr || mem.len() < self.len {
                return None;
            }
            let written = self.scan()?;
            // Everything the buffer grew by counts as written.
            let mut blocks = vec![false; self.len.div_ceil(BLOCK)];
            blocks.resize(mem.len().div_ceil(BLOCK), true);
            for (a, b) in written {
                // Host pages may be larger than blocks, or the buffer unaligned: every block
                // that overlaps the written bytes is written.
                let a = a.max(self.addr) - self.addr;
                let b = b.min(self.addr + self.len).saturating_sub(self.addr);
                if a < b {
                    blocks[a / BLOCK..=(b - 1) / BLOCK].fill(true);
                }
            }
            // Track what the buffer grew by from now on too, where it can be (a memory that
            // grows in place, as wasmtime's do); if it cannot, it keeps counting as written.
            let grown_end = (self.addr + mem.len()).next_multiple_of(self.page);
            if mem.len() > self.len
                && (grown_end <= self.end || register(&self.uffd, self.end, grown_end))
            {
                self.end = self.end.max(grown_end);
                self.len = mem.len();
            }
            Some(Touched::from_blocks(blocks))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// On a host that tracks, the blocks written between two takes are reported, and only
    /// those; elsewhere `start` says so by returning `None`.
    #[test]
    fn reports_the_blocks_written_since_the_last_take() {
        let mut v = vec![0u8; 8 << 20];
        for b in v.chunks_mut(4096).step_by(3) {
            b[0] = 1;
        }
        let Some(mut t) = Tracker::start(&v) else {
            return;
        };
        let first = t.take(&v).expect("the tracker answers");
        assert_eq!(first.count(), 0, "nothing was written yet");
        let written = [0usize, 1, 2, 500, 2047];
        for &b in &written {
            v[b * 4096 + 100] = 7;
        }
        // A write that does not change the byte is a write all the same.
        let same = v[1000 * 4096];
        v[1000 * 4096] = core::hint::black_box(same);
        core::hint::black_box(&mut v);
        let second = t.take(&v).expect("the tracker answers");
        for &b in written.iter().chain(&[1000]) {
            assert!(second.block(b), "block {b} was written");
        }
        // The buffer need not be aligned to host pages: a written host page may also mark the
        // block before the one written, and nothing else.
        for b in 0..v.len() / 4096 {
            if second.block(b) {
                assert!(
                    written.iter().chain(&[1000]).any(|&w| w == b || w == b + 1),
                    "block {b} was not written"
                );
            }
        }
        let third = t.take(&v).expect("the tracker answers");
        assert_eq!(third.count(), 0, "a take starts the next interval");
    }

    /// What a buffer grows by counts as written once, then is tracked like the rest.
    #[test]
    fn growth_counts_as_written_then_is_tracked() {
        let mut v = vec![0u8; 4 << 20];
        let small = 1 << 20;
        let Some(mut t) = Tracker::start(&v[..small]) else {
            return;
        };
        v[10] = 1;
        core::hint::black_box(&mut v);
        let first = t.take(&v[..2 * small]).expect("the tracker answers");
        assert!(first.block(0));
        let blocks = small / 4096;
        assert!((blocks..2 * blocks).all(|b| first.block(b)), "the growth");
        assert!(first.count() <= blocks + 2);
        v[small + 4096 * 7 + 5] = 1;
        core::hint::black_box(&mut v);
        let second = t.take(&v[..2 * small]).expect("the tracker answers");
        assert!(second.block(blocks + 7));
        assert!(second.count() <= 2, "{} blocks", second.count());
    }

    #[test]
    fn a_buffer_at_another_address_gets_no_answer() {
        let v = vec![0u8; 1 << 20];
        let Some(mut t) = Tracker::start(&v) else {
            return;
        };
        let w = vec![0u8; 1 << 20];
        assert!(t.take(&w).is_none());
        assert!(t.take(&v[..4096]).is_none(), "a shorter buffer");
        assert!(t.take(&v).is_some());
    }
}
