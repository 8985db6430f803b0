//! The guest's clocks and random numbers: host time carried across moves, or virtual time
//! and a seeded generator in deterministic mode. Nothing here reads a clock itself: the host
//! is asked.

use super::*;

/// How the kernel tells time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Clocks {
    /// Ask the host; the guest has not read the monotonic clock yet.
    Host,
    /// A virtual clock: every reading advances it by `step_ns`, sleeping advances it instantly.
    Virtual {
        /// Current wall-clock time, ns since the epoch.
        wall_ns: u64,
        /// Current monotonic time, ns.
        monotonic_ns: u64,
        /// How far each reading moves time on.
        step_ns: u64,
    },
    /// Ask the host, keeping the guest's monotonic clock from going back when the guest moves
    /// to another host (whose monotonic clock has another origin, often a later start): a
    /// reading is the host's plus `offset_ns` (wrapping), and a reading below `last_ns` moves
    /// the offset so that the clock carries on from `last_ns`. The time a guest spends
    /// checkpointed is thus not counted, as with CRIU's time namespaces. The clock is also read
    /// when a sleep ends and when the guest pauses ([`Kernel::note_pause`]), so that `last_ns`
    /// is the moment of the pause and the time slept or run before it counts after the move.
    HostCarried {
        /// Added to the host's reading, wrapping.
        offset_ns: u64,
        /// The last reading the guest was given.
        last_ns: u64,
        /// A sleep the host cut short for a checkpoint ends at this monotonic time: the guest
        /// was told its time had passed, so the rest is slept before its next call
        /// ([`Kernel::settle`]), on this host or the one it resumes on.
        owed_until: Option<u64>,
    },
}

/// Where random bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Random {
    /// The host's entropy source.
    Host,
    /// A seeded xoshiro256** generator: the same seed gives the same bytes on every machine.
    /// Not for cryptography: it exists so that runs can be reproduced.
    Seeded {
        /// Generator state.
        state: [u64; 4],
    },
}

impl Random {
    /// A seeded generator whose state is expanded from `seed` with SplitMix64.
    pub fn seeded(seed: u64) -> Random {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Random::Seeded {
            state: [next(), next(), next(), next()],
        }
    }
}

pub(super) fn xoshiro_next(s: &mut [u64; 4]) -> u64 {
    let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    result
}

/// Wall-clock time by `clocks`, ns since the epoch (a virtual clock moves on by a step).
pub(super) fn wall_clock(clocks: &mut Clocks, host: &mut dyn Host) -> u64 {
    match clocks {
        Clocks::Host | Clocks::HostCarried { .. } => host.wall_clock_ns(),
        Clocks::Virtual {
            wall_ns, step_ns, ..
        } => {
            *wall_ns = wall_ns.saturating_add(*step_ns);
            *wall_ns
        }
    }
}

impl Kernel {
    /// Wall-clock time, ns since the epoch.
    pub fn wall_clock_now(&mut self, host: &mut dyn Host) -> u64 {
        wall_clock(&mut self.clocks, host)
    }

    /// Monotonic time, ns.
    pub fn monotonic_now(&mut self, host: &mut dyn Host) -> u64 {
        match &mut self.clocks {
            Clocks::Host => {
                let now = host.monotonic_ns();
                self.clocks = Clocks::HostCarried {
                    offset_ns: 0,
                    last_ns: now,
                    owed_until: None,
                };
                now
            }
            Clocks::HostCarried {
                offset_ns, last_ns, ..
            } => {
                let now = host.monotonic_ns().wrapping_add(*offset_ns);
                if now < *last_ns {
                    // Another host, or one whose clock went back: carry on from the last
                    // reading.
                    *offset_ns = offset_ns.wrapping_add(*last_ns - now);
                    return *last_ns;
                }
                *last_ns = now;
                now
            }
            Clocks::Virtual {
                monotonic_ns,
                step_ns,
                ..
            } => {
                *monotonic_ns = monotonic_ns.saturating_add(*step_ns);
                *monotonic_ns
            }
        }
    }

    /// Called as the guest pauses for a checkpoint: reads the monotonic clock, so that the
    /// time the guest ran since its last reading counts after the resume (the clock carries on
    /// from the pause, not from the guest's last look at it).
    pub fn note_pause(&mut self, host: &mut dyn Host) {
        if let Clocks::HostCarried { .. } = self.clocks {
            self.monotonic_now(host);
        }
    }

    /// Resolution of the clocks, ns.
    pub fn clock_resolution(&self, host: &mut dyn Host) -> u64 {
        match &self.clocks {
            Clocks::Host | Clocks::HostCarried { .. } => host.clock_resolution_ns(),
            Clocks::Virtual { step_ns, .. } => *step_ns,
        }
    }

    /// Waits `ns` nanoseconds (instantly, moving virtual time on, in deterministic mode).
    ///
    /// When the host cuts the sleep short because a checkpoint is wanted
    /// ([`Host::sleep_unless_woken_ns`]), the call returns as if the time had passed, and the
    /// rest is owed: [`Kernel::settle`] sleeps it before the guest's next call, so nothing the
    /// guest can observe comes early.
    pub fn sleep(&mut self, ns: u64, host: &mut dyn Host) {
        match &mut self.clocks {
            Clocks::Host | Clocks::HostCarried { .. } => {
                let start = self.monotonic_now(host);
                let slept_all = host.sleep_unless_woken_ns(ns);
                // Read the clock so that the time slept counts where the guest resumes: a
                // guest that slept 5 ms must see 5 ms pass on the next host too.
                self.monotonic_now(host);
                if !slept_all && let Clocks::HostCarried { owed_until, .. } = &mut self.clocks {
                    *owed_until = Some(start.saturating_add(ns));
                }
            }
            Clocks::Virtual {
                wall_ns,
                monotonic_ns,
                ..
            } => {
                *wall_ns = wall_ns.saturating_add(ns);
                *monotonic_ns = monotonic_ns.saturating_add(ns);
            }
        }
    }

    /// Owes the guest a sleep until monotonic time `until` (host time carried across moves):
    /// a wait a checkpoint cut short returned as if it had ended there.
    pub(crate) fn owe_until(&mut self, until: u64) {
        if let Clocks::HostCarried { owed_until, .. } = &mut self.clocks {
            *owed_until = Some(until);
        }
    }

    /// Whether the clocks are virtual (deterministic mode).
    pub fn is_deterministic(&self) -> bool {
        matches!(self.clocks, Clocks::Virtual { .. })
    }

    /// Sleeps what an interrupted [`Kernel::sleep`] still owes (nothing, almost always). Every
    /// preview-1 call starts with this.
    #[inline]
    pub fn settle(&mut self, host: &mut dyn Host) {
        let Clocks::HostCarried {
            owed_until: Some(until),
            ..
        } = self.clocks
        else {
            return;
        };
        let mut now = self.monotonic_now(host);
        while now < until {
            let slept_all = host.sleep_unless_woken_ns(until - now);
            let later = self.monotonic_now(host);
            if later <= now {
                // A host whose clock does not move while it sleeps: it slept what it could.
                break;
            }
            now = later;
            if !slept_all && now < until {
                // A checkpoint is due and cannot wait for the rest: the guest's clock moves
                // on to the end of the sleep instead, so nothing it observes comes early.
                if let Clocks::HostCarried {
                    offset_ns, last_ns, ..
                } = &mut self.clocks
                {
                    *offset_ns = offset_ns.wrapping_add(until - now);
                    *last_ns = until;
                }
                break;
            }
        }
        if let Clocks::HostCarried { owed_until, .. } = &mut self.clocks {
            *owed_until = None;
        }
    }

    /// Fills `buf` with random bytes.
    pub fn random_bytes(&mut self, buf: &mut [u8], host: &mut dyn Host) -> Result<(), Errno> {
        match &mut self.random {
            Random::Host => host.random_bytes(buf),
            Random::Seeded { state } => {
                for chunk in buf.chunks_mut(8) {
                    let v = xoshiro_next(state).to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                Ok(())
            }
        }
    }

    /// The time to stamp file-system changes with.
    pub(super) fn fs_now(&mut self, host: &mut dyn Host) -> u64 {
        self.wall_clock_now(host)
    }
}
