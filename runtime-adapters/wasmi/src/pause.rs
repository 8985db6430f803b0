//! The engine half of pausing and resuming an instrumented guest on wasmi.

use tabi_libos::machine::{
    self, CallEnd, Driven, Machine, MachineState, PauseControl, Points, STATE_GLOBAL, Value,
};
use tabi_libos::{EngineError, Process};
use wasmi::{
    AsContextMut, Global, Instance, Memory, Module, Mutability, Nullable, Ref, Store, Table, Val,
    ValType,
};
use wasmi::{F32, F64, V128};

use crate::{GuestData, Wasmi, exit_of};

/// An instantiated, instrumented guest that can be driven, paused and resumed.
pub struct Session {
    store: Store<GuestData>,
    instance: Instance,
}

impl Wasmi {
    /// Instantiates an instrumented module (see `tabi-instrument`) for a pausable run.
    /// `points` must match the options it was instrumented with.
    pub fn session(
        &self,
        module: &Module,
        process: Process,
        control: PauseControl,
        points: Points,
    ) -> Result<Session, EngineError> {
        machine::session_or_error(self.begin(module, process, control, points)?)
    }

    /// [`Wasmi::session`]; `Ok(Err(finished))` when the run ended while the instance was made
    /// (see `instantiate`).
    pub fn begin(
        &self,
        module: &Module,
        process: Process,
        control: PauseControl,
        points: Points,
    ) -> Result<Result<Session, tabi_libos::Finished>, EngineError> {
        let mut store = self.store(process);
        let instance = match self.instantiate(&mut store, module)? {
            Ok(instance) => instance,
            Err(exit) => {
                return Ok(Err(tabi_libos::Finished {
                    exit,
                    results: Vec::new(),
                    process: store.into_data().process,
                }));
            }
        };
        let state = instance
            .get_global(&mut store, STATE_GLOBAL)
            .ok_or_else(|| EngineError::Link("the module is not instrumented by tabi".into()))?;
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        let nopause = instance
            .get_global(&mut store, machine::NOPAUSE_GLOBAL)
            .ok_or_else(|| EngineError::Link("the module is not instrumented by tabi".into()))?;
        store.data_mut().pause = Some(crate::PauseHooks {
            state,
            nopause,
            control,
            points,
        });
        Ok(Ok(Session { store, instance }))
    }

    /// Calls function export `export` of a compiled module with `args`, as
    /// [`tabi_libos::Engine::invoke`] describes: after its start function and `_initialize`.
    /// An instrumented module is driven through a session that never pauses.
    pub fn invoke_module(
        &self,
        module: &Module,
        process: Process,
        export: &str,
        args: &[Value],
    ) -> Result<tabi_libos::Finished, EngineError> {
        // The export and its arguments are checked before anything runs.
        let Some(ty) = module.get_export(export).and_then(|e| e.func().cloned()) else {
            return Err(EngineError::Link(format!("no function export `{export}`")));
        };
        let vals = call_args(export, ty.params().iter().cloned(), Some(args))?;
        if module.exports().any(|e| e.name() == STATE_GLOBAL) {
            let begun = self.begin(module, process, PauseControl::never(), Points::all())?;
            return machine::invoke_through(begun, export, args, Session::finish);
        }
        let mut store = self.store(process);
        let ended = |exit, store: Store<GuestData>| tabi_libos::Finished {
            exit,
            results: Vec::new(),
            process: store.into_data().process,
        };
        let instance = match self.instantiate(&mut store, module)? {
            Ok(instance) => instance,
            Err(exit) => return Ok(ended(exit, store)),
        };
        store.data_mut().memory = instance.get_memory(&store, "memory");
        let target = instance
            .get_func(&store, export)
            .ok_or_else(|| EngineError::Link(format!("no function export `{export}`")))?;
        // The start function ran as the instance was made; `_initialize` is next.
        if export != machine::INITIALIZE
            && let Some(f) = instance.get_func(&store, machine::INITIALIZE)
        {
            let ty = f.ty(&store);
            let none = call_args(machine::INITIALIZE, ty.params().iter().cloned(), Some(&[]))?;
            let mut results = vec![Val::I32(0); ty.results().len()];
            if let Err(e) = f.call(&mut store, &none, &mut results) {
                return Ok(ended(exit_of(e), store));
            }
        }
        let mut results = vec![Val::I32(0); ty.results().len()];
        match target.call(&mut store, &vals, &mut results) {
            Ok(()) => Ok(tabi_libos::Finished {
                exit: tabi_libos::Exit::Code(0),
                results: results.iter().map(to_value).collect(),
                process: store.into_data().process,
            }),
            Err(e) => Ok(ended(exit_of(e), store)),
        }
    }
}

impl Session {
    /// Runs from `start` until the guest finishes or pauses.
    pub fn drive(&mut self, start: machine::Start<'_>) -> Result<Driven, EngineError> {
        machine::drive(self, start)
    }

    /// Migration points passed so far.
    pub fn points(&self) -> u64 {
        self.store
            .data()
            .pause
            .as_ref()
            .map_or(0, |p| p.control.points())
    }

    /// Ends the session, giving back the process.
    pub fn into_process(self) -> Process {
        self.store.into_data().process
    }

    fn global_handle(&mut self, name: &str) -> Result<Global, EngineError> {
        self.instance
            .get_global(&mut self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no global export `{name}`")))
    }

    fn memory_handle(&mut self, name: &str) -> Result<Memory, EngineError> {
        self.instance
            .get_memory(&mut self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no memory export `{name}`")))
    }
}

fn to_value(v: &Val) -> Value {
    match v {
        Val::I32(x) => Value::I32(*x),
        Val::I64(x) => Value::I64(*x),
        Val::F32(x) => Value::F32(x.to_bits()),
        Val::F64(x) => Value::F64(x.to_bits()),
        Val::V128(x) => Value::V128(x.as_u128()),
        _ => Value::Ref,
    }
}

fn from_value(v: Value) -> Option<Val> {
    Some(match v {
        Value::I32(x) => Val::I32(x),
        Value::I64(x) => Val::I64(x),
        Value::F32(x) => Val::F32(F32::from_bits(x)),
        Value::F64(x) => Val::F64(F64::from_bits(x)),
        Value::V128(x) => Val::V128(V128::from(x)),
        Value::Ref => return None,
    })
}

/// The arguments of a call of export `name` whose parameters are `params`: `args` as values
/// of the engine (checked by [`machine::check_args`]), or without them a placeholder (zero, or
/// a null reference) for each parameter.
fn call_args(
    name: &str,
    params: impl Iterator<Item = ValType>,
    args: Option<&[Value]>,
) -> Result<Vec<Val>, EngineError> {
    let placeholders: Vec<Val> = params.map(Val::default_for_ty).collect();
    let Some(args) = args else {
        return Ok(placeholders);
    };
    let types: Vec<Value> = placeholders.iter().map(to_value).collect();
    machine::check_args(name, &types, args)?;
    Ok(args.iter().filter_map(|&a| from_value(a)).collect())
}

impl Machine for Session {
    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_export(&mut self.store, name).is_some()
    }

    fn call(&mut self, name: &str, args: Option<&[Value]>) -> Result<CallEnd, EngineError> {
        let func = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no function export `{name}`")))?;
        let ty = func.ty(&self.store);
        let args = call_args(name, ty.params().iter().cloned(), args)?;
        let mut results = vec![Val::I32(0); ty.results().len()];
        match func.call(&mut self.store, &args, &mut results) {
            Ok(()) => Ok(CallEnd::Returned(results.iter().map(to_value).collect())),
            Err(e) => Ok(CallEnd::Exit(exit_of(e))),
        }
    }

    fn control(&mut self) -> &mut PauseControl {
        &mut self
            .store
            .data_mut()
            .pause
            .as_mut()
            .expect("session")
            .control
    }

    fn global(&mut self, name: &str) -> Option<(Value, bool)> {
        let g = self.instance.get_global(&mut self.store, name)?;
        let mutable = g.ty(&self.store).mutability() == Mutability::Var;
        Some((to_value(&g.get(&self.store)), mutable))
    }

    fn set_global(&mut self, name: &str, value: Value) -> Result<(), EngineError> {
        let g = self.global_handle(name)?;
        let v = from_value(value)
            .ok_or_else(|| EngineError::Engine(format!("cannot set reference global `{name}`")))?;
        g.set(&mut self.store, v)
            .map_err(|e| EngineError::Engine(e.to_string()))
    }

    fn memory(&mut self, name: &str) -> Option<Vec<u8>> {
        let m = self.instance.get_memory(&mut self.store, name)?;
        Some(tabi_hostmem::sparse_copy(m.data(&self.store)))
    }

    fn memory_size(&mut self, name: &str) -> Result<usize, EngineError> {
        Ok(self.memory_handle(name)?.data(&self.store).len())
    }

    fn write_memory(&mut self, name: &str, data: &[u8]) -> Result<(), EngineError> {
        let dst = self.grown(name, data.len())?;
        tabi_hostmem::write_sparse(&mut dst[..data.len()], data);
        Ok(())
    }

    fn process_mut(&mut self) -> &mut Process {
        &mut self.store.data_mut().process
    }

    fn memory_and_process(&mut self) -> (&mut [u8], &mut Process) {
        match self.instance.get_memory(&mut self.store, "memory") {
            Some(m) => {
                let (mem, data) = m.data_and_store_mut(&mut self.store);
                (mem, &mut data.process)
            }
            None => (&mut [], &mut self.store.data_mut().process),
        }
    }

    fn paused_view(&mut self) -> Result<(Vec<&[u8]>, &Process), EngineError> {
        let mut handles = Vec::new();
        while let Some(m) = self.instance.get_memory(
            &mut self.store,
            &machine::memory_export(handles.len() as u32),
        ) {
            handles.push(m);
        }
        let store = &self.store;
        Ok((
            handles.iter().map(|m| m.data(store)).collect(),
            &store.data().process,
        ))
    }

    fn memory_mut(&mut self, name: &str, bytes: usize) -> Result<&mut [u8], EngineError> {
        let data = self.grown(name, bytes)?;
        if data.len() != bytes {
            return Err(EngineError::Engine(format!(
                "memory `{name}` has {} bytes, not {bytes}",
                data.len()
            )));
        }
        Ok(data)
    }

    fn table_slots(&mut self, name: &str) -> Option<Vec<machine::Slot>> {
        let table = self.instance.get_table(&self.store, name)?;
        let mut slots = Vec::new();
        for i in 0..table.size(&self.store) {
            slots.push(match table.get(&self.store, i) {
                Some(r) if r.is_null() => machine::Slot::Null,
                Some(Ref::Func(Nullable::Val(f))) => machine::Slot::Func(func_key(&f)),
                _ => machine::Slot::Other,
            });
        }
        Some(slots)
    }

    fn table_size(&mut self, name: &str) -> Option<u64> {
        let table = self.instance.get_table(&self.store, name)?;
        Some(table.size(&self.store))
    }

    fn grow_table(&mut self, name: &str, delta: u64) -> Result<(), EngineError> {
        let table = self.table_handle(name)?;
        let null = Ref::null(table.ty(&self.store).element());
        table
            .grow(&mut self.store, delta, null)
            .map(drop)
            .map_err(|e| EngineError::Engine(format!("cannot grow table `{name}`: {e}")))
    }

    fn set_table_entry(
        &mut self,
        name: &str,
        index: u64,
        source: &str,
        from: Option<u64>,
    ) -> Result<(), EngineError> {
        let table = self.table_handle(name)?;
        let value = match from {
            None => Ref::null(table.ty(&self.store).element()),
            Some(j) => self
                .table_handle(source)?
                .get(&self.store, j)
                .ok_or_else(|| EngineError::Engine(format!("table `{source}` has no entry {j}")))?,
        };
        table
            .set(&mut self.store, index, value)
            .map_err(|e| EngineError::Engine(format!("table `{name}`, entry {index}: {e}")))
    }
}

/// What identifies a function within its store. wasmi keeps function identity private (its
/// handles implement neither `Eq` nor `Hash`), but a handle's `Debug` form spells out the
/// store and the function's slot in it, the same for every copy of the handle.
fn func_key(f: &wasmi::Func) -> String {
    format!("{f:?}")
}

impl Session {
    fn table_handle(&mut self, name: &str) -> Result<Table, EngineError> {
        self.instance
            .get_table(&self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no table export `{name}`")))
    }

    /// Memory export `name`, grown to hold at least `bytes`.
    fn grown(&mut self, name: &str, bytes: usize) -> Result<&mut [u8], EngineError> {
        let mem = self.memory_handle(name)?;
        let pages = bytes.div_ceil(machine::PAGE) as u64;
        let current = mem.size(&self.store);
        if pages > current {
            mem.grow(&mut self.store, pages - current).map_err(|e| {
                EngineError::Engine(format!("cannot grow memory `{name}` to {pages} pages: {e}"))
            })?;
        }
        Ok(mem.data_mut(&mut self.store))
    }
}

/// Called after a migration point returned: starts the unwind when a pause is due, and says
/// whether it did.
#[inline]
pub(crate) fn after_point(
    mut caller: impl AsContextMut<Data = GuestData>,
) -> Result<bool, wasmi::Error> {
    let mut ctx = caller.as_context_mut();
    let Some(p) = ctx.data_mut().pause.as_mut() else {
        return Ok(false);
    };
    if p.control.at_point() {
        let (state, nopause) = (p.state, p.nopause);
        // Inside a function that cannot return the stack cannot be saved: the pause waits for
        // the next migration point (the control keeps it pending).
        if nopause.get(&mut ctx).i32() != Some(0) {
            return Ok(false);
        }
        state
            .set(&mut ctx, Val::I32(machine::UNWINDING))
            .map_err(wasmi::Error::from)?;
        return Ok(true);
    }
    Ok(false)
}

impl Wasmi {
    /// Runs an instrumented module until it finishes or pauses: from the start, or from
    /// `resume` (a state captured on any engine).
    pub fn run_pausable(
        &self,
        module: &Module,
        process: Process,
        control: PauseControl,
        points: Points,
        resume: Option<&MachineState>,
    ) -> Result<machine::Outcome, EngineError> {
        let start = match resume {
            Some(state) => machine::Start::Resume(state),
            None => machine::Start::Fresh,
        };
        let begun = self
            .begin(module, process, control, points)?
            .map(|s| Box::new(s) as Box<dyn machine::Session>);
        machine::run_begun(begun, start, None)
    }
}

impl Session {
    /// The process the guest runs in.
    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.store.data_mut().process
    }

    /// Runs from `start` until the guest finishes or pauses, and ends the session.
    pub fn run(self, start: machine::Start<'_>) -> Result<machine::Outcome, EngineError> {
        machine::run_session(Box::new(self), start, None)
    }

    /// [`Session::run`], showing each pause to `on_pause` with the memories in place (see
    /// [`machine::drive_with`]): it continues in this instance or stops.
    pub fn run_with(
        self,
        start: machine::Start<'_>,
        on_pause: &mut machine::OnPause<'_>,
    ) -> Result<machine::Outcome, EngineError> {
        machine::run_session(Box::new(self), start, Some(on_pause))
    }

    fn finish(self, driven: Driven) -> machine::Outcome {
        machine::end_session(Box::new(self), driven)
    }
}

impl machine::Session for Session {
    fn points(&self) -> u64 {
        Session::points(self)
    }

    fn process(&self) -> &Process {
        &self.store.data().process
    }

    fn into_process(self: Box<Self>) -> Process {
        Session::into_process(*self)
    }
}
