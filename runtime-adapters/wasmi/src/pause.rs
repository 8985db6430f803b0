//! The engine half of pausing and resuming an instrumented guest on wasmi.

use tabi_libos::machine::{
    self, CallEnd, Driven, Machine, MachineState, PauseControl, Points, SP_GLOBAL, STACK_MEMORY,
    STATE_GLOBAL, Value,
};
use tabi_libos::{EngineError, Process};
use wasmi::{AsContextMut, Global, Instance, Module, Mutability, Store, Val};
use wasmi::{F32, F64, V128};

use crate::{GuestData, Wasmi, exit_of};

const PAGE: usize = 65536;

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
        let mut store = self.store(process);
        let instance = self
            .linker()?
            .instantiate_and_start(&mut store, module)
            .map_err(|e| EngineError::Link(e.to_string()))?;
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
        Ok(Session { store, instance })
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

    fn global(&mut self, name: &str) -> Result<Global, EngineError> {
        self.instance
            .get_global(&mut self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no global export `{name}`")))
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

fn from_value(v: Value, like: &Val) -> Option<Val> {
    Some(match (v, like) {
        (Value::I32(x), Val::I32(_)) => Val::I32(x),
        (Value::I64(x), Val::I64(_)) => Val::I64(x),
        (Value::F32(x), Val::F32(_)) => Val::F32(F32::from_bits(x)),
        (Value::F64(x), Val::F64(_)) => Val::F64(F64::from_bits(x)),
        (Value::V128(x), Val::V128(_)) => Val::V128(V128::from(x)),
        _ => return None,
    })
}

/// Grows `mem` to hold `len` bytes and writes `data` at 0; `len` must be whole pages unless
/// `exact` is false.
fn write_memory(
    store: &mut Store<GuestData>,
    mem: wasmi::Memory,
    data: &[u8],
    whole_pages: bool,
) -> Result<(), EngineError> {
    if whole_pages && !data.len().is_multiple_of(PAGE) {
        return Err(EngineError::Engine(
            "memory image is not whole pages".into(),
        ));
    }
    let pages = data.len().div_ceil(PAGE) as u64;
    let current = mem.size(&*store);
    if whole_pages && current > pages {
        return Err(EngineError::Engine(format!(
            "memory image of {pages} pages is smaller than the module's {current}"
        )));
    }
    if pages > current {
        mem.grow(&mut *store, pages - current).map_err(|e| {
            EngineError::Engine(format!("cannot grow memory to {pages} pages: {e}"))
        })?;
    }
    mem.data_mut(&mut *store)[..data.len()].copy_from_slice(data);
    Ok(())
}

impl Machine for Session {
    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_export(&mut self.store, name).is_some()
    }

    fn call(&mut self, name: &str) -> Result<CallEnd, EngineError> {
        let func = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| EngineError::Link(format!("no function export `{name}`")))?;
        let ty = func.ty(&self.store);
        if !ty.params().is_empty() {
            return Err(EngineError::Link(format!(
                "export `{name}` takes parameters"
            )));
        }
        let mut results = vec![Val::I32(0); ty.results().len()];
        match func.call(&mut self.store, &[], &mut results) {
            Ok(()) => Ok(CallEnd::Returned),
            Err(e) => Ok(CallEnd::Exit(exit_of(e))),
        }
    }

    fn get_i32(&mut self, name: &str) -> Result<i32, EngineError> {
        let g = self.global(name)?;
        g.get(&self.store)
            .i32()
            .ok_or_else(|| EngineError::Link(format!("global `{name}` is not an i32")))
    }

    fn set_i32(&mut self, name: &str, value: i32) -> Result<(), EngineError> {
        let g = self.global(name)?;
        g.set(&mut self.store, Val::I32(value))
            .map_err(|e| EngineError::Engine(e.to_string()))
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

    fn capture(&mut self, entry: &str) -> Result<MachineState, EngineError> {
        let mut globals = Vec::new();
        while let Some(g) = self.instance.get_global(
            &mut self.store,
            &machine::global_export(globals.len() as u32),
        ) {
            globals.push(to_value(&g.get(&self.store)));
        }
        let mut memories = Vec::new();
        while let Some(m) = self.instance.get_memory(
            &mut self.store,
            &machine::memory_export(memories.len() as u32),
        ) {
            memories.push(m.data(&self.store).to_vec());
        }
        let sp = self.get_i32(SP_GLOBAL)? as u32 as usize;
        let stack_mem = self
            .instance
            .get_memory(&mut self.store, STACK_MEMORY)
            .ok_or_else(|| EngineError::Link("no save-stack memory".into()))?;
        let stack = stack_mem
            .data(&self.store)
            .get(..sp)
            .ok_or_else(|| EngineError::Engine("save stack top out of bounds".into()))?
            .to_vec();
        let budget = if self.has_export(machine::BUDGET_GLOBAL) {
            Some(self.get_i32(machine::BUDGET_GLOBAL)?)
        } else {
            None
        };
        Ok(MachineState {
            entry: entry.into(),
            globals,
            memories,
            stack,
            budget,
        })
    }

    fn restore(&mut self, state: &MachineState) -> Result<(), EngineError> {
        for (i, v) in state.globals.iter().enumerate() {
            let g = self.global(&machine::global_export(i as u32))?;
            if g.ty(&self.store).mutability() != Mutability::Var {
                continue;
            }
            let like = g.get(&self.store);
            if *v == Value::Ref {
                continue;
            }
            let val = from_value(*v, &like).ok_or_else(|| {
                EngineError::Engine(format!("global {i} has another type in the snapshot"))
            })?;
            g.set(&mut self.store, val)
                .map_err(|e| EngineError::Engine(e.to_string()))?;
        }
        if self
            .instance
            .get_global(
                &mut self.store,
                &machine::global_export(state.globals.len() as u32),
            )
            .is_some()
        {
            return Err(EngineError::Engine(
                "the snapshot has fewer globals than the module".into(),
            ));
        }
        for (i, data) in state.memories.iter().enumerate() {
            let mem = self
                .instance
                .get_memory(&mut self.store, &machine::memory_export(i as u32))
                .ok_or_else(|| EngineError::Engine(format!("the module has no memory {i}")))?;
            write_memory(&mut self.store, mem, data, true)?;
        }
        let stack_mem = self
            .instance
            .get_memory(&mut self.store, STACK_MEMORY)
            .ok_or_else(|| EngineError::Link("no save-stack memory".into()))?;
        write_memory(&mut self.store, stack_mem, &state.stack, false)?;
        let sp = i32::try_from(state.stack.len())
            .map_err(|_| EngineError::Engine("save stack larger than 2 GiB".into()))?;
        self.set_i32(SP_GLOBAL, sp)?;
        if let Some(b) = state.budget {
            self.set_i32(machine::BUDGET_GLOBAL, b)?;
        }
        self.set_i32(STATE_GLOBAL, machine::REWINDING)
    }
}

/// Called after a migration point returned: starts the unwind when a pause is due.
pub(crate) fn after_point(
    mut caller: impl AsContextMut<Data = GuestData>,
) -> Result<(), wasmi::Error> {
    let mut ctx = caller.as_context_mut();
    let Some(p) = ctx.data_mut().pause.as_mut() else {
        return Ok(());
    };
    if p.control.at_point() {
        let (state, nopause) = (p.state, p.nopause);
        // Inside a function that cannot return the stack cannot be saved: the pause waits for
        // the next migration point (the control keeps it pending).
        if nopause.get(&mut ctx).i32() != Some(0) {
            return Ok(());
        }
        state
            .set(&mut ctx, Val::I32(machine::UNWINDING))
            .map_err(wasmi::Error::from)?;
    }
    Ok(())
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
        let mut session = self.session(module, process, control, points)?;
        let start = match resume {
            Some(state) => machine::Start::Resume(state),
            None => machine::Start::Fresh,
        };
        let driven = session.drive(start)?;
        let points = session.points();
        let process = session.into_process();
        Ok(match driven {
            Driven::Exit(exit) => {
                machine::Outcome::Finished(tabi_libos::Finished { exit, process })
            }
            Driven::Paused(state, reason) => machine::Outcome::Paused(machine::Paused {
                state,
                reason,
                points,
                process,
            }),
        })
    }
}
