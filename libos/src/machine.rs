//! Pausing and resuming an instrumented guest, the same way on every engine.
//!
//! A module rewritten by `tabi-instrument` can save its call stack into a memory of its own and
//! rebuild it from there. This module holds the engine-neutral half of that protocol: the plain
//! data of a paused instance ([`MachineState`]), the policy that decides when to pause
//! ([`PauseControl`]), and the loop that calls the guest's entry points, rewinds after
//! safepoint yields and stops when a pause is due ([`drive`]). An adapter supplies the engine
//! half by implementing [`Machine`] over its store and instance.
//!
//! The protocol constants here are those of `tabi-instrument` (checked by a test in
//! `tabi-tests`).

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, Exit};

/// Export name of the state global.
pub const STATE_GLOBAL: &str = "__tabi_state";
/// Export name of the save stack's top.
pub const SP_GLOBAL: &str = "__tabi_sp";
/// Export name of the save-stack memory.
pub const STACK_MEMORY: &str = "__tabi_stack";
/// Export name of the no-pause counter: while it is not zero, no unwind may start.
pub const NOPAUSE_GLOBAL: &str = "__tabi_nopause";
/// Export name of the module's flags (an immutable `i32`).
pub const FLAGS_GLOBAL: &str = "__tabi_flags";
/// Flag: the guest writes its tables, so their contents are part of its state: they are
/// captured (as function indices, through [`FUNCS_TABLE`]) and restored.
pub const FLAG_WRITES_TABLES: i32 = 1;
/// Export name of the table holding function `i` at index `i` (only in modules that write
/// their tables).
pub const FUNCS_TABLE: &str = "__tabi_funcs";
/// Export name of the safepoint budget global.
pub const BUDGET_GLOBAL: &str = "__tabi_budget";
/// Export name of the module's former start function.
pub const START_EXPORT: &str = "__tabi_start";
/// State: running normally.
pub const NORMAL: i32 = 0;
/// State: saving frames.
pub const UNWINDING: i32 = 1;
/// State: rebuilding frames.
pub const REWINDING: i32 = 2;
/// The entry point of a command.
pub const ENTRY: &str = "_start";

/// Export name of global `i` of an instrumented module.
pub fn global_export(i: u32) -> String {
    alloc::format!("__tabi_global_{i}")
}

/// Export name of memory `i` of an instrumented module.
pub fn memory_export(i: u32) -> String {
    alloc::format!("__tabi_memory_{i}")
}

/// Export name of table `i` of an instrumented module.
pub fn table_export(i: u32) -> String {
    alloc::format!("__tabi_table_{i}")
}

/// What an adapter sees in one table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    /// A null reference.
    Null,
    /// A function, by a key the engine gives: equal for the same function of one instance.
    Func(String),
    /// Any other reference (an `externref`).
    Other,
}

/// A table of a paused instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableImage {
    /// As the module's instantiation leaves it: the guest never writes its tables.
    AsInstantiated,
    /// Each entry as the index of one of the module's functions (counting imported ones), or
    /// `None` for a null reference.
    Funcs(Vec<Option<u32>>),
}

/// A global's value, as plain data (floats as their bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, by its bits.
    F32(u32),
    /// An `f64`, by its bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
    /// A reference; its value is not carried (refs are not serializable), only that there was
    /// one. Restoring leaves the fresh instance's value.
    Ref,
}

impl Value {
    /// The text-format name of the value's type (`reference` for any reference).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::I32(_) => "i32",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::V128(_) => "v128",
            Value::Ref => "reference",
        }
    }
}

/// Checks arguments for a call of export `export`, whose parameters are those of
/// `placeholders` (a value of each parameter's type, as [`Machine::call`] passes them while
/// rewinding): an adapter makes this check for every engine alike. A reference cannot be
/// passed (a [`Value::Ref`] carries none).
pub fn check_args(export: &str, placeholders: &[Value], args: &[Value]) -> Result<(), EngineError> {
    let fits = placeholders.len() == args.len()
        && placeholders
            .iter()
            .zip(args)
            .all(|(p, a)| *a != Value::Ref && p.type_name() == a.type_name());
    if fits {
        return Ok(());
    }
    let names = |vs: &[Value]| {
        vs.iter()
            .map(Value::type_name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(EngineError::Link(alloc::format!(
        "export `{export}` takes ({}), not ({})",
        names(placeholders),
        names(args)
    )))
}

/// The execution state of a paused instance: everything of it that is not the kernel.
///
/// The module itself is not included; a resume needs the same instrumented bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineState {
    /// The export that was running ([`START_EXPORT`] or [`ENTRY`]).
    pub entry: String,
    /// Every global of the original module, by index, imported ones included.
    pub globals: Vec<Value>,
    /// Every table of the original module, by index, imported ones included.
    pub tables: Vec<TableImage>,
    /// Every memory of the original module, by index: its whole contents.
    pub memories: Vec<Vec<u8>>,
    /// The save stack: the frames the guest wrote while unwinding, outermost last.
    pub stack: Vec<u8>,
    /// The safepoint budget left, when the module has safepoints.
    pub budget: Option<i32>,
}

/// Why a run paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// The migration point [`PauseControl::after_points`] named was reached.
    AfterPoints,
    /// The host asked through [`PauseControl::request`].
    Requested,
    /// The guest called `tabi.checkpoint`.
    Guest,
}

/// When to pause a run. Counted by the adapters at each migration point.
#[derive(Clone, Debug, Default)]
pub struct PauseControl {
    /// Pause after the N-th migration point call of this run (1 is the first).
    pub after_points: Option<u64>,
    /// When set (from any thread), pause at the next migration point or safepoint yield.
    pub request: Option<Arc<AtomicBool>>,
    /// Safepoints passed between yields to the host (modules with safepoints only). A yield
    /// is the host's chance to take a [`request`](Self::request), so `None` means the
    /// module's default ([`DEFAULT_BUDGET`]) when a request can be made, and
    /// [`UNINTERRUPTIBLE_BUDGET`] when none can: a guest that yields and is rewound runs on in
    /// its functions' resume copies until they return, which costs more than the normal bodies.
    pub budget: Option<i32>,
    points: u64,
    pending: Option<PauseReason>,
}

impl PauseControl {
    /// Never pauses (except when the guest asks).
    pub fn never() -> Self {
        PauseControl::default()
    }

    /// Pauses after the `n`-th migration point.
    pub fn after(n: u64) -> Self {
        PauseControl {
            after_points: Some(n),
            ..PauseControl::default()
        }
    }

    /// The budget the driver gives the guest, when it sets one (see [`PauseControl::budget`]).
    fn yield_budget(&self) -> Option<i32> {
        self.budget
            .or_else(|| self.request.is_none().then_some(UNINTERRUPTIBLE_BUDGET))
    }

    /// Migration points passed so far in this run.
    pub fn points(&self) -> u64 {
        self.points
    }

    /// Called by an adapter after a migration point import returned: whether the guest must
    /// unwind now.
    #[inline]
    pub fn at_point(&mut self) -> bool {
        self.points += 1;
        if self.pending.is_some() {
            return true;
        }
        let reason = if self.after_points == Some(self.points) {
            Some(PauseReason::AfterPoints)
        } else if self.requested() {
            Some(PauseReason::Requested)
        } else {
            None
        };
        self.pending = reason;
        reason.is_some()
    }

    /// Called by an adapter when the guest calls `tabi.checkpoint`, before the call returns.
    pub fn guest_request(&mut self) {
        self.pending.get_or_insert(PauseReason::Guest);
    }

    /// Takes a pending request. A plain load first: most points find none, and the swap is a
    /// locked read-modify-write on every CPU. A request set just after the load is taken at
    /// the next point.
    fn requested(&self) -> bool {
        self.request
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Relaxed) && r.swap(false, Ordering::AcqRel))
    }
}

/// What a [`Machine`] call ended with.
pub enum CallEnd {
    /// The export returned (normally, or because the guest unwound: then the results are
    /// placeholders).
    Returned(Vec<Value>),
    /// The guest exited or trapped.
    Exit(Exit),
}

/// The engine half of the protocol: one instantiated, instrumented module. An adapter
/// implements the accessors; capturing and restoring state is written once, here.
pub trait Machine {
    /// Whether the instance exports `name`.
    fn has_export(&mut self, name: &str) -> bool;
    /// Calls function export `name` with `args`, or, with `None`, with placeholder arguments
    /// (a zero of each parameter's type, a null reference): a call that rewinds the export's
    /// frame takes its values from the frame, not from its arguments. An error if `args` do
    /// not match the parameters, or hold a [`Value::Ref`] (a reference cannot be passed).
    fn call(&mut self, name: &str, args: Option<&[Value]>) -> Result<CallEnd, EngineError>;
    /// The pause policy the adapter's imports consult.
    fn control(&mut self) -> &mut PauseControl;
    /// The value of global export `name` and whether it is mutable; `None` if there is none.
    fn global(&mut self, name: &str) -> Option<(Value, bool)>;
    /// Sets mutable global export `name`; an error if it is missing or of another type.
    fn set_global(&mut self, name: &str, value: Value) -> Result<(), EngineError>;
    /// A copy of memory export `name`; `None` if there is none.
    fn memory(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Grows memory export `name` to hold `data` and writes it at offset 0.
    fn write_memory(&mut self, name: &str, data: &[u8]) -> Result<(), EngineError>;
    /// The size in bytes of memory export `name`.
    fn memory_size(&mut self, name: &str) -> Result<usize, EngineError>;
    /// Memory export `name`, grown to `bytes` (a whole number of pages) if it is smaller, to
    /// write in place; an error if it is larger.
    fn memory_mut(&mut self, name: &str, bytes: usize) -> Result<&mut [u8], EngineError>;
    /// What each entry of table export `name` holds; `None` if there is no such export.
    fn table_slots(&mut self, name: &str) -> Option<Vec<Slot>>;
    /// The number of entries of table export `name`; `None` if there is no such export.
    fn table_size(&mut self, name: &str) -> Option<u64>;
    /// Grows table export `name` by `delta` null entries.
    fn grow_table(&mut self, name: &str, delta: u64) -> Result<(), EngineError>;
    /// Sets entry `index` of table export `name` to entry `from` of table export `source`, or
    /// to null.
    fn set_table_entry(
        &mut self,
        name: &str,
        index: u64,
        source: &str,
        from: Option<u64>,
    ) -> Result<(), EngineError>;
    /// The memories of the original module (exports [`memory_export`] 0, 1, …) and the
    /// process, borrowed together while the instance is paused.
    fn paused_view(&mut self) -> Result<(Vec<&[u8]>, &crate::engine::Process), EngineError>;
    /// The process (kernel and host), to change between calls.
    fn process_mut(&mut self) -> &mut crate::engine::Process;
    /// The guest's memory as the preview-1 imports see it (its `memory` export; empty when it
    /// has none) and the process, borrowed together.
    fn memory_and_process(&mut self) -> (&mut [u8], &mut crate::engine::Process);

    /// Each function of [`FUNCS_TABLE`] by its key, to the first index it holds.
    fn funcs_index(&mut self) -> Result<alloc::collections::BTreeMap<String, u32>, EngineError> {
        let funcs = self
            .table_slots(FUNCS_TABLE)
            .ok_or_else(|| EngineError::Link(alloc::format!("no table export `{FUNCS_TABLE}`")))?;
        let mut index = alloc::collections::BTreeMap::new();
        for (i, s) in funcs.into_iter().enumerate() {
            if let Slot::Func(key) = s {
                index.entry(key).or_insert(i as u32);
            }
        }
        Ok(index)
    }

    /// The entries of table export `name` as indices into [`FUNCS_TABLE`] (`None` for a null
    /// reference), looked up in `index` ([`Machine::funcs_index`]); `Ok(None)` if there is no
    /// such export. An entry that is none of the module's functions (an `externref`, or a
    /// function of another instance) is an error.
    fn table_funcs(
        &mut self,
        name: &str,
        index: &alloc::collections::BTreeMap<String, u32>,
    ) -> Result<Option<Vec<Option<u32>>>, EngineError> {
        let Some(slots) = self.table_slots(name) else {
            return Ok(None);
        };
        let mut entries = Vec::with_capacity(slots.len());
        for (i, s) in slots.into_iter().enumerate() {
            entries.push(match s {
                Slot::Null => None,
                Slot::Func(key) => Some(*index.get(&key).ok_or_else(|| {
                    EngineError::Engine(alloc::format!(
                        "entry {i} of table `{name}` is a function of another instance"
                    ))
                })?),
                Slot::Other => {
                    return Err(EngineError::Engine(alloc::format!(
                        "entry {i} of table `{name}` is a reference other than a function, \
                         which cannot be captured"
                    )));
                }
            });
        }
        Ok(Some(entries))
    }

    /// Makes table export `name` hold `entries` (indices into [`FUNCS_TABLE`]), growing it
    /// when it is shorter; an error if it is longer or an index is out of range.
    fn set_table_funcs(&mut self, name: &str, entries: &[Option<u32>]) -> Result<(), EngineError> {
        let size = self
            .table_size(name)
            .ok_or_else(|| EngineError::Link(alloc::format!("no table export `{name}`")))?;
        let want = entries.len() as u64;
        if want < size {
            return Err(EngineError::Engine(alloc::format!(
                "table `{name}` has {size} entries, more than the {want} saved"
            )));
        }
        if want > size {
            self.grow_table(name, want - size)?;
        }
        for (i, e) in entries.iter().enumerate() {
            self.set_table_entry(name, i as u64, FUNCS_TABLE, e.map(u64::from))?;
        }
        Ok(())
    }

    /// Reads an `i32` global export.
    fn get_i32(&mut self, name: &str) -> Result<i32, EngineError> {
        match self.global(name) {
            Some((Value::I32(v), _)) => Ok(v),
            Some(_) => Err(EngineError::Link(alloc::format!(
                "global `{name}` is not an i32"
            ))),
            None => Err(EngineError::Link(alloc::format!(
                "no global export `{name}`"
            ))),
        }
    }

    /// Writes an `i32` global export.
    fn set_i32(&mut self, name: &str, value: i32) -> Result<(), EngineError> {
        self.set_global(name, Value::I32(value))
    }

    /// Copies globals, memories and the save stack out.
    fn capture(&mut self, entry: &str) -> Result<MachineState, EngineError> {
        let mut state = self.capture_but_memories(entry)?;
        state.memories = self.capture_memories();
        Ok(state)
    }

    /// Copies every memory of the original module out.
    fn capture_memories(&mut self) -> Vec<Vec<u8>> {
        let mut memories = Vec::new();
        while let Some(m) = self.memory(&memory_export(memories.len() as u32)) {
            memories.push(m);
        }
        memories
    }

    /// Copies globals and the save stack out; the memories are left empty.
    fn capture_but_memories(&mut self, entry: &str) -> Result<MachineState, EngineError> {
        let funcs = if self.get_i32(FLAGS_GLOBAL)? & FLAG_WRITES_TABLES != 0 {
            Some(self.funcs_index()?)
        } else {
            None
        };
        let mut tables = Vec::new();
        loop {
            let name = table_export(tables.len() as u32);
            if let Some(index) = &funcs {
                match self.table_funcs(&name, index)? {
                    Some(entries) => tables.push(TableImage::Funcs(entries)),
                    None => break,
                }
            } else if self.has_export(&name) {
                tables.push(TableImage::AsInstantiated);
            } else {
                break;
            }
        }
        let mut globals = Vec::new();
        while let Some((v, _)) = self.global(&global_export(globals.len() as u32)) {
            globals.push(v);
        }
        let sp = self.get_i32(SP_GLOBAL)? as u32 as usize;
        let mut stack = self
            .memory(STACK_MEMORY)
            .ok_or_else(|| EngineError::Link("no save-stack memory".into()))?;
        if sp > stack.len() {
            return Err(EngineError::Engine("save stack top out of bounds".into()));
        }
        stack.truncate(sp);
        let budget = if self.has_export(BUDGET_GLOBAL) {
            Some(self.get_i32(BUDGET_GLOBAL)?)
        } else {
            None
        };
        Ok(MachineState {
            entry: entry.into(),
            globals,
            tables,
            memories: Vec::new(),
            stack,
            budget,
        })
    }

    /// Writes globals, memories and the save stack in, and sets the state to rewinding.
    /// Everything is checked against the instance: the number and types of globals, memory
    /// images of whole pages no smaller than the module's own.
    fn restore(&mut self, state: &MachineState) -> Result<(), EngineError> {
        self.restore_loaded(state, None)
    }

    /// [`Machine::restore`], but when `loaded` is `Some(n)` the first `n` memories were
    /// already written in place (with [`Machine::memory_mut`]) and `state.memories` is not
    /// used.
    fn restore_loaded(
        &mut self,
        state: &MachineState,
        loaded: Option<usize>,
    ) -> Result<(), EngineError> {
        for (i, v) in state.globals.iter().enumerate() {
            let name = global_export(i as u32);
            let (current, mutable) = self.global(&name).ok_or_else(|| {
                EngineError::Engine(alloc::format!("the module has no global {i}"))
            })?;
            if !mutable || *v == Value::Ref {
                continue;
            }
            if core::mem::discriminant(v) != core::mem::discriminant(&current) {
                return Err(EngineError::Engine(alloc::format!(
                    "global {i} has another type in the saved state"
                )));
            }
            self.set_global(&name, *v)?;
        }
        if self
            .global(&global_export(state.globals.len() as u32))
            .is_some()
        {
            return Err(EngineError::Engine(
                "the saved state has fewer globals than the module".into(),
            ));
        }
        let memories = loaded.unwrap_or(state.memories.len());
        // Memories already loaded in place are not written again.
        let images = if loaded.is_some() {
            &[][..]
        } else {
            &state.memories[..]
        };
        for (i, data) in images.iter().enumerate() {
            let name = memory_export(i as u32);
            let current = self.memory_size(&name)?;
            if data.len() % PAGE != 0 || data.len() < current {
                return Err(EngineError::Engine(alloc::format!(
                    "memory {i}: an image of {} bytes does not fit a memory of {current}",
                    data.len()
                )));
            }
            self.write_memory(&name, data)?;
        }
        if self.memory_size(&memory_export(memories as u32)).is_ok() {
            return Err(EngineError::Engine(
                "the saved state has fewer memories than the module".into(),
            ));
        }
        for (i, t) in state.tables.iter().enumerate() {
            let name = table_export(i as u32);
            match t {
                TableImage::AsInstantiated => {
                    if !self.has_export(&name) {
                        return Err(EngineError::Engine(alloc::format!(
                            "the module has no table {i}"
                        )));
                    }
                }
                TableImage::Funcs(entries) => self.set_table_funcs(&name, entries)?,
            }
        }
        if self.has_export(&table_export(state.tables.len() as u32)) {
            return Err(EngineError::Engine(
                "the saved state has fewer tables than the module".into(),
            ));
        }
        self.write_memory(STACK_MEMORY, &state.stack)?;
        let sp = i32::try_from(state.stack.len())
            .map_err(|_| EngineError::Engine("save stack larger than 2 GiB".into()))?;
        self.set_i32(SP_GLOBAL, sp)?;
        if let Some(b) = state.budget {
            self.set_i32(BUDGET_GLOBAL, b)?;
        }
        self.set_i32(STATE_GLOBAL, REWINDING)
    }
}

/// A Wasm page.
pub const PAGE: usize = 65536;

/// How [`drive`] ended.
pub enum Driven {
    /// The guest finished: it exited, trapped, or its `_start` returned (`Exit::Code(0)`).
    Exit(Exit),
    /// The export a [`Start::Call`] named (or that a resumed state was paused in) returned
    /// these results.
    Returned(Vec<Value>),
    /// The guest paused; its state is here, and the kernel is in the adapter's store.
    Paused(MachineState, PauseReason),
}

/// Where [`drive`] starts.
#[derive(Clone, Copy, Debug)]
pub enum Start<'a> {
    /// A fresh instance: the start export (if any), then [`ENTRY`].
    Fresh,
    /// A fresh instance, from a paused state.
    Resume(&'a MachineState),
    /// A fresh instance whose first `memories` memories already hold the paused state's
    /// (written with [`Machine::memory_mut`]); the rest of the state is in `state`.
    Loaded {
        /// The state but for the memories.
        state: &'a MachineState,
        /// How many memories were written.
        memories: usize,
    },
    /// The instance that just paused in export `entry`, continuing without copying anything.
    InPlace(&'a str),
    /// A call of function export `export` with `args`, on the instance as it is: the way a
    /// host calls into a library module (a reactor) rather than running a command. The
    /// module's start function, which an instrumented module exports as [`START_EXPORT`]
    /// instead, is not run first: a host runs it once, before its other calls, with a call
    /// of its own. A pause in the export is resumed from its state like any other
    /// ([`Start::Resume`]), and the run then ends with the export's results.
    Call {
        /// The export.
        export: &'a str,
        /// Its arguments.
        args: &'a [Value],
    },
}

/// Runs an instrumented instance from `start`. Safepoint yields that no pause is due for are
/// rewound on the spot.
pub fn drive(m: &mut dyn Machine, start: Start<'_>) -> Result<Driven, EngineError> {
    Ok(match drive_but_memories(m, start)? {
        Driven::Paused(mut state, reason) => {
            state.memories = m.capture_memories();
            Driven::Paused(state, reason)
        }
        exit => exit,
    })
}

/// A paused guest still in its instance, borrowed: what a callback of [`drive_with`] sees.
pub struct PauseView<'a> {
    /// The execution state but for the memories (`state.memories` is empty).
    pub state: &'a MachineState,
    /// The memories of the original module, in place.
    pub memories: &'a [&'a [u8]],
    /// Why it paused.
    pub reason: PauseReason,
    /// Migration points passed in this run.
    pub points: u64,
    /// The process (kernel and host).
    pub process: &'a crate::engine::Process,
}

/// What [`drive_with`] does after its callback saw a pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPause {
    /// Go on in the same instance, from where it paused.
    Continue,
    /// End the run; the pause is returned with its state copied out.
    Stop,
}

/// [`drive`], showing each pause to `on_pause` with the instance's memories in place (a
/// checkpoint is written from them without copying them first), then going on in the same
/// instance or stopping as it says.
pub fn drive_with(
    m: &mut dyn Machine,
    start: Start<'_>,
    on_pause: &mut dyn FnMut(&PauseView<'_>) -> Result<AfterPause, EngineError>,
) -> Result<Driven, EngineError> {
    let mut driven = drive_but_memories(m, start)?;
    loop {
        let Driven::Paused(mut state, reason) = driven else {
            return Ok(driven);
        };
        let points = m.control().points();
        let after = {
            let (memories, process) = m.paused_view()?;
            on_pause(&PauseView {
                state: &state,
                memories: &memories,
                reason,
                points,
                process,
            })?
        };
        match after {
            AfterPause::Stop => {
                state.memories = m.capture_memories();
                return Ok(Driven::Paused(state, reason));
            }
            AfterPause::Continue => {
                driven = drive_but_memories(m, Start::InPlace(&state.entry))?;
            }
        }
    }
}

/// The exports a run that rewinds in export `entry` calls: `entry`, then `_start` after a
/// command's start function. A library module (no `_start`) ends there, and its host makes
/// its calls next.
fn rewinding_in(m: &mut dyn Machine, entry: &str) -> Vec<String> {
    let mut entries = alloc::vec![String::from(entry)];
    if entry == START_EXPORT && m.has_export(ENTRY) {
        entries.push(ENTRY.into());
    }
    entries
}

/// Finishes the blocking call a checkpoint interrupted (see [`crate::kernel::Pending`]) before
/// a paused guest goes on: its memory then holds what the call returned.
fn finish_pending(m: &mut dyn Machine) {
    let (mem, process) = m.memory_and_process();
    if process.kernel.pending().is_some() {
        crate::p1::complete_pending(&mut process.kernel, &mut *process.host, mem);
    }
}

/// [`drive`], leaving a pause's memories in the instance.
fn drive_but_memories(m: &mut dyn Machine, start: Start<'_>) -> Result<Driven, EngineError> {
    let has_budget = m.has_export(BUDGET_GLOBAL);
    if has_budget && let Some(b) = m.control().yield_budget() {
        m.set_i32(BUDGET_GLOBAL, b)?;
    }
    let mut entries: Vec<String> = Vec::new();
    // The arguments of the first call; the others, and every call that rewinds, take
    // placeholders.
    let mut args: Option<&[Value]> = None;
    let resume = match start {
        Start::Resume(state) => Some((state, None)),
        Start::Loaded { state, memories } => Some((state, Some(memories))),
        Start::InPlace(_) | Start::Fresh | Start::Call { .. } => None,
    };
    match start {
        Start::InPlace(entry) => {
            finish_pending(m);
            m.set_i32(STATE_GLOBAL, REWINDING)?;
            entries = rewinding_in(m, entry);
        }
        Start::Resume(_) | Start::Loaded { .. } => {
            let Some((state, loaded)) = resume else {
                return Err(EngineError::Link("no state to resume from".into()));
            };
            if !m.has_export(&state.entry) {
                return Err(EngineError::Link(alloc::format!(
                    "the state was paused in export `{}`, which the module lacks",
                    state.entry
                )));
            }
            m.restore_loaded(state, loaded)?;
            finish_pending(m);
            if has_budget && let Some(b) = m.control().yield_budget() {
                m.set_i32(BUDGET_GLOBAL, b)?;
            }
            entries = rewinding_in(m, &state.entry);
        }
        Start::Call {
            export,
            args: given,
        } => {
            // Frames on the save stack belong to a pause not yet resumed; a call now would
            // put its own above them and the resume would find the wrong frames.
            if m.get_i32(SP_GLOBAL)? != 0 {
                return Err(EngineError::Engine(alloc::format!(
                    "cannot call `{export}`: the instance is paused, and must be resumed first"
                )));
            }
            entries.push(export.into());
            args = Some(given);
        }
        Start::Fresh => {
            if m.has_export(START_EXPORT) {
                entries.push(START_EXPORT.into());
            }
            entries.push(ENTRY.into());
        }
    }
    let mut results = Vec::new();
    for entry in &entries {
        if !m.has_export(entry) {
            return Err(EngineError::Link(alloc::format!("no `{entry}` export")));
        }
        loop {
            match m.call(entry, args.take())? {
                CallEnd::Exit(exit) => return Ok(Driven::Exit(exit)),
                CallEnd::Returned(r) => results = r,
            }
            if m.get_i32(STATE_GLOBAL)? != UNWINDING {
                break;
            }
            // Unwound: a pause is due, or a safepoint ran out of budget.
            let reason = {
                let c = m.control();
                match c.pending.take() {
                    Some(r) => Some(r),
                    None if c.requested() => Some(PauseReason::Requested),
                    None => None,
                }
            };
            if let Some(reason) = reason {
                m.set_i32(STATE_GLOBAL, NORMAL)?;
                let process = m.process_mut();
                process.kernel.note_pause(&mut *process.host);
                let state = m.capture_but_memories(entry)?;
                return Ok(Driven::Paused(state, reason));
            }
            let budget = m.control().yield_budget().unwrap_or(DEFAULT_BUDGET);
            m.set_i32(BUDGET_GLOBAL, budget)?;
            m.set_i32(STATE_GLOBAL, REWINDING)?;
        }
    }
    Ok(match entries.last() {
        Some(last) if last == ENTRY => Driven::Exit(Exit::Code(0)),
        _ => Driven::Returned(results),
    })
}

/// A live instance of an instrumented module, on any engine: what each adapter's session is.
/// The engine is a value behind this trait, so code that runs, pauses and resumes guests
/// (the `tabi` library) is written once for all of them.
pub trait Session: Machine + Send {
    /// Migration points passed so far in this session.
    fn points(&self) -> u64;
    /// The process (kernel and host).
    fn process(&self) -> &crate::engine::Process;
    /// Ends the session, giving back the process.
    fn into_process(self: alloc::boxed::Box<Self>) -> crate::engine::Process;
}

/// A session an engine began, or the run that ended while its instance was made (its start
/// function exited or trapped, or a segment did not fit).
pub type Begun = Result<alloc::boxed::Box<dyn Session>, crate::engine::Finished>;

/// What a run does at each pause: shown the paused instance in place, it continues or stops
/// the run (see [`drive_with`]).
pub type OnPause<'a> = dyn FnMut(&PauseView<'_>) -> Result<AfterPause, EngineError> + 'a;

/// An engine that can begin pausable sessions of instrumented modules: what both adapters
/// implement, so that the engine choice is a value (`Box<dyn Pausable>`).
pub trait Pausable: crate::engine::Engine + Send + Sync {
    /// Compiles (or takes from the engine's cache) instrumented `wasm` and instantiates it for
    /// a pausable run under `control`; `points` must match the options it was rewritten with.
    fn begin_wasm(
        &self,
        wasm: &[u8],
        process: crate::engine::Process,
        control: PauseControl,
        points: Points,
    ) -> Result<Begun, EngineError>;
}

/// Runs `session` from `start` until the guest finishes or pauses, and ends it; with
/// `on_pause`, each pause is shown to it in place first (see [`drive_with`]).
pub fn run_session(
    mut session: alloc::boxed::Box<dyn Session>,
    start: Start<'_>,
    on_pause: Option<&mut OnPause<'_>>,
) -> Result<Outcome, EngineError> {
    let driven = match on_pause {
        Some(f) => drive_with(&mut *session, start, f)?,
        None => drive(&mut *session, start)?,
    };
    Ok(end_session(session, driven))
}

/// The outcome of `session`, which ended with `driven`.
pub fn end_session(session: alloc::boxed::Box<dyn Session>, driven: Driven) -> Outcome {
    let points = session.points();
    Outcome::of(driven, points, session.into_process())
}

/// [`run_session`] on what an engine [`Pausable::begin_wasm`] gave: a run that ended as its
/// instance was made ends as it would have in `_start`.
pub fn run_begun(
    begun: Begun,
    start: Start<'_>,
    on_pause: Option<&mut OnPause<'_>>,
) -> Result<Outcome, EngineError> {
    match begun {
        Ok(session) => run_session(session, start, on_pause),
        Err(finished) => Ok(Outcome::Finished(finished)),
    }
}

/// A session asked for, when the guest's run already ended as its instance was made (in its
/// start function): the error both adapters' `session` give.
pub fn session_or_error<S>(begun: Result<S, crate::engine::Finished>) -> Result<S, EngineError> {
    begun.map_err(|f| {
        EngineError::Engine(alloc::format!(
            "the guest's run ended as its instance was made: {:?}",
            f.exit
        ))
    })
}

/// The exports a library host calls before the export it wants, in order, each once: the
/// module's start function (which the rewrite exports as [`START_EXPORT`]) and
/// `_initialize`, as a WASI reactor asks. Either is skipped when the module lacks it or when it
/// is the export wanted.
pub const INITIALIZERS: [&str; 2] = [START_EXPORT, INITIALIZE];

/// The export a WASI reactor's host calls once before any other: `_initialize`.
pub const INITIALIZE: &str = "_initialize";

/// Calls export `export` of an instrumented module's fresh instance with `args`, the way a
/// library host does: first the [`INITIALIZERS`], to their end with nothing paused (a
/// safepoint's yield or a checkpoint the guest asks for goes on at once), then `export` under
/// `control`, showing each pause to `on_pause` as [`drive_with`] does. A pause inside the
/// export records it as the state's entry, so the resumed call ends in it with its results.
pub fn invoke(
    m: &mut dyn Machine,
    control: PauseControl,
    export: &str,
    args: &[Value],
    on_pause: &mut dyn FnMut(&PauseView<'_>) -> Result<AfterPause, EngineError>,
) -> Result<Driven, EngineError> {
    *m.control() = PauseControl::never();
    for init in INITIALIZERS {
        if init == export || !m.has_export(init) {
            continue;
        }
        let start = Start::Call {
            export: init,
            args: &[],
        };
        match drive_with(m, start, &mut |_| Ok(AfterPause::Continue))? {
            Driven::Returned(_) => {}
            // It exited or trapped: the run ends there.
            ended => return Ok(ended),
        }
    }
    *m.control() = control;
    drive_with(m, Start::Call { export, args }, on_pause)
}

/// [`invoke`] with nothing paused, on a session an adapter `begun` (or the run that ended as
/// the instance was made): an engine's [`crate::engine::Engine::invoke`] of an instrumented
/// module. `finish` ends the session with what the call drove to.
pub fn invoke_through<M: Machine>(
    begun: Result<M, crate::engine::Finished>,
    export: &str,
    args: &[Value],
    finish: impl FnOnce(M, Driven) -> Outcome,
) -> Result<crate::engine::Finished, EngineError> {
    let mut session = match begun {
        Ok(session) => session,
        Err(finished) => return Ok(finished),
    };
    let go_on = &mut |_: &PauseView<'_>| Ok(AfterPause::Continue);
    let driven = invoke(&mut session, PauseControl::never(), export, args, go_on)?;
    finished(finish(session, driven))
}

/// The run a never-paused [`Outcome`] stands for; an error if it paused.
pub fn finished(outcome: Outcome) -> Result<crate::engine::Finished, EngineError> {
    match outcome {
        Outcome::Finished(f) => Ok(f),
        Outcome::Paused(_) => Err(EngineError::Engine(
            "an instrumented guest stopped at a pause nothing asked for".into(),
        )),
    }
}

/// Runs an instrumented guest the way a plain run would: from the start, never pausing on its
/// own, and going on at once past a safepoint's yield or a checkpoint the guest asks for.
/// `run_with` is an adapter session's `run_with`.
pub fn run_through(
    run_with: impl FnOnce(
        Start<'_>,
        &mut dyn FnMut(&PauseView<'_>) -> Result<AfterPause, EngineError>,
    ) -> Result<Outcome, EngineError>,
) -> Result<crate::engine::Finished, EngineError> {
    finished(run_with(Start::Fresh, &mut |_| Ok(AfterPause::Continue))?)
}

/// The budget a module with safepoints starts with (that of `tabi-instrument`).
pub const DEFAULT_BUDGET: i32 = 1 << 20;

/// The budget of a run nothing can ask to pause: a billion safepoints between yields. Not
/// `i32::MAX`: a resume copy rewinding into a loop adds one unit so that the loop's check does
/// not fire at once, and `i32::MAX + 1` wrapped to a negative budget that yielded at every
/// safepoint, so a resumed run made no progress.
pub const UNINTERRUPTIBLE_BUDGET: i32 = i32::MAX / 2;

/// How a pausable run ended.
pub enum Outcome {
    /// The guest finished.
    Finished(crate::engine::Finished),
    /// The guest paused.
    Paused(Paused),
}

impl Outcome {
    /// The outcome of a session that ended with `driven`, having passed `points` migration
    /// points, with its `process`: a return from an export counts as an exit with status 0,
    /// with the export's results.
    pub fn of(driven: Driven, points: u64, process: crate::engine::Process) -> Outcome {
        match driven {
            Driven::Exit(exit) => Outcome::Finished(crate::engine::Finished {
                exit,
                results: Vec::new(),
                process,
            }),
            Driven::Returned(results) => Outcome::Finished(crate::engine::Finished {
                exit: Exit::Code(0),
                results,
                process,
            }),
            Driven::Paused(state, reason) => Outcome::Paused(Paused {
                state,
                reason,
                points,
                process,
            }),
        }
    }
}

/// A paused guest, outside any engine.
pub struct Paused {
    /// The instance's execution state.
    pub state: MachineState,
    /// Why it paused.
    pub reason: PauseReason,
    /// Migration points passed in the run that paused.
    pub points: u64,
    /// The process (kernel and host).
    pub process: crate::engine::Process,
}

impl Paused {
    /// The pause, borrowed as a [`drive_with`] callback sees it.
    pub fn view<'a>(&'a self, memories: &'a [&'a [u8]]) -> PauseView<'a> {
        PauseView {
            state: &self.state,
            memories,
            reason: self.reason,
            points: self.points,
            process: &self.process,
        }
    }

    /// The captured memories, borrowed, for [`Paused::view`].
    pub fn memories(&self) -> Vec<&[u8]> {
        self.state.memories.iter().map(Vec::as_slice).collect()
    }
}

/// The migration-point imports: which `wasi_snapshot_preview1` functions (by their position in
/// [`crate::p1::NAMES`]) and which `wasi_ephemeral_nn` ones (in [`crate::nn::NAMES`]) an
/// adapter counts, and whether `tabi` imports count. Must match the options the module was
/// instrumented with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Points {
    /// Per [`crate::p1::NAMES`] entry.
    pub p1: Vec<bool>,
    /// Per [`crate::nn::NAMES`] entry.
    pub nn: Vec<bool>,
    /// Whether `tabi.checkpoint` is one.
    pub tabi: bool,
}

impl Points {
    /// The default set: every preview-1 function except `proc_exit`, every wasi-nn one, and
    /// `tabi`'s.
    pub fn all() -> Points {
        Points {
            p1: crate::p1::NAMES.iter().map(|n| *n != "proc_exit").collect(),
            nn: alloc::vec![true; crate::nn::NAMES.len()],
            tabi: true,
        }
    }

    /// Whether preview-1 function number `i` is one.
    #[inline]
    pub fn p1(&self, i: usize) -> bool {
        self.p1.get(i).copied().unwrap_or(false)
    }

    /// Whether wasi-nn function number `i` is one.
    #[inline]
    pub fn nn(&self, i: usize) -> bool {
        self.nn.get(i).copied().unwrap_or(false)
    }
}
