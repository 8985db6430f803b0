//! Rewrites one function body so that it can unwind into, and rewind from, the save stack.
//!
//! The body is first read into a tree of items (plain operators, structured blocks, and *sites*:
//! calls that may pause, and safepoints), with the operand-stack types the validator reports at
//! each site. Each nesting level that holds a site is then emitted as
//!
//! ```text
//! block $L_m (result T_m) … block $L_1 (result T_1)
//!   block $dispatch                       ;; skipped unless rewinding
//!     br_table on the saved site number → push the values T_j of the site's level, br $L_j
//!   end
//!   S_0
//! end  I_1  S_1  end  I_2 …
//! ```
//!
//! where `I_j` is the j-th item holding a site and `T_j` is this level's operand stack just
//! before it (for a paused import call: just after it). Values that sit *below* a nested block
//! holding a site are moved into locals around it, so the only operand values a frame saves are
//! those of the innermost level, and every other value is a local.
//!
//! The frame a function saves is `[locals][site values][site: u32][size: u32]`, all
//! little-endian, in the save-stack memory.

use std::collections::BTreeMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{BlockType, Encode, Instruction, MemArg};
use wasmparser::{
    FuncToValidate, FuncType, FuncValidatorAllocations, FunctionBody, Operator, ValType,
    ValidatorResources,
};

use crate::analysis::{Callee, Module};
use crate::{Error, unsupported};

/// Function types the rewrite adds to the type section.
///
/// Functions are rewritten on several threads, each with its own copy ([`Types::fork`]). A
/// copy numbers the types it adds on its own, so the bodies it writes carry those numbers
/// where such a type is used ([`Fixup`]), and it lists the types each function added, in the
/// order of their first use. Merged in the order of the functions, the lists number every
/// added type as one thread rewriting every function in order would.
#[derive(Clone)]
pub(crate) struct Types {
    base: u32,
    pub list: Vec<(Vec<ValType>, Vec<ValType>)>,
    map: BTreeMap<(Vec<ValType>, Vec<ValType>), u32>,
    /// Indices from here up were added by this copy: their numbers are its own.
    fresh: u32,
    /// This copy's additions that the current function used, in the order of first use.
    used: Vec<u32>,
    /// Per entry of `list`: the last function (`generation`) that used it.
    stamp: Vec<u32>,
    generation: u32,
}

impl Types {
    pub fn new(base: u32) -> Types {
        Types {
            base,
            list: Vec::new(),
            map: BTreeMap::new(),
            fresh: u32::MAX,
            used: Vec::new(),
            stamp: Vec::new(),
            generation: 0,
        }
    }

    /// A copy for one thread: the types known so far keep their indices; those it adds get
    /// numbers of its own, to be mapped when the threads' work is merged.
    pub fn fork(&self) -> Types {
        Types {
            fresh: self.base + self.list.len() as u32,
            used: Vec::new(),
            stamp: vec![0; self.list.len()],
            generation: 0,
            ..self.clone()
        }
    }

    /// Index of the function type `params -> results`, added when new.
    pub fn index(&mut self, params: &[ValType], results: &[ValType]) -> u32 {
        let key = (params.to_vec(), results.to_vec());
        let i = match self.map.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.base + self.list.len() as u32;
                self.list.push(key.clone());
                self.stamp.push(0);
                self.map.insert(key, i);
                i
            }
        };
        if i >= self.fresh {
            let stamp = &mut self.stamp[(i - self.base) as usize];
            if *stamp != self.generation {
                *stamp = self.generation;
                self.used.push(i);
            }
        }
        i
    }

    /// Starts the next function: the list of its used additions starts empty.
    fn next_function(&mut self) {
        self.generation += 1;
        self.used.clear();
    }

    /// Whether `index` is one of this copy's own numbers.
    fn is_fresh(&self, index: u32) -> bool {
        index >= self.fresh
    }

    /// The type with this copy's index `index` (one of its own).
    pub fn key(&self, index: u32) -> &(Vec<ValType>, Vec<ValType>) {
        &self.list[self.slot(index)]
    }

    /// Position of this copy's index `index` in `list` (past its end for an index it never
    /// gave).
    pub fn slot(&self, index: u32) -> usize {
        index
            .checked_sub(self.base)
            .map_or(usize::MAX, |i| i as usize)
    }

    fn block(&mut self, params: &[ValType], results: &[ValType]) -> Result<BlockType, Error> {
        Ok(match (params, results) {
            ([], []) => BlockType::Empty,
            ([], [r]) => BlockType::Result(enc(*r)?),
            _ => BlockType::FunctionType(self.index(params, results)),
        })
    }
}

/// Where a body uses a type numbered by its thread's [`Types`] copy: the `len` bytes at `at`
/// (a block type, after the opcode) hold `index`, to be replaced by the merged number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fixup {
    pub at: usize,
    pub len: usize,
    pub index: u32,
}

/// Module-level indices the rewritten code refers to.
#[derive(Clone)]
pub(crate) struct Ctx<'m, 'a> {
    pub m: &'m Module<'a>,
    pub types: Types,
    pub state: u32,
    pub sp: u32,
    pub budget: Option<u32>,
    pub nopause: u32,
    pub stack_mem: u32,
    pub reserve: u32,
    /// Per function: the index of its resume copy, `u32::MAX` for none.
    pub copy_of: &'m [u32],
    /// With tail calls that can unwind (`Module::tail_calls`): the table of resume thunks,
    /// one per rewritten function, at the function's owner number (`owner`).
    pub thunks: Option<u32>,
    /// Per function: its owner number, which its frames record when `thunks` is set
    /// (`u32::MAX` for a function that is not rewritten).
    pub owner: &'m [u32],
}

/// The zero (or null) of type `t`; `None` for a non-nullable reference, which has none.
pub(crate) fn zero_of(t: ValType) -> Result<Option<Instruction<'static>>, Error> {
    Ok(Some(match t {
        ValType::I32 => Instruction::I32Const(0),
        ValType::I64 => Instruction::I64Const(0),
        ValType::F32 => Instruction::F32Const(0.0.into()),
        ValType::F64 => Instruction::F64Const(0.0.into()),
        ValType::V128 => Instruction::V128Const(0),
        ValType::Ref(r) if r.is_nullable() => Instruction::RefNull(
            RoundtripReencoder
                .heap_type(r.heap_type())
                .map_err(|e| Error::Internal(e.to_string()))?,
        ),
        ValType::Ref(_) => return Ok(None),
    }))
}

fn enc(t: ValType) -> Result<wasm_encoder::ValType, Error> {
    RoundtripReencoder
        .val_type(t)
        .map_err(|e| Error::Internal(e.to_string()))
}

fn size_of(t: ValType, func: u32) -> Result<u32, Error> {
    Ok(match t {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        ValType::V128 => 16,
        ValType::Ref(_) => {
            return Err(unsupported(
                Some(func),
                "a reference-typed value (local or operand) live across a migration point \
                 cannot be saved to memory",
            ));
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Block,
    Loop,
    If,
}

enum SiteKind {
    /// A direct call of a rewritten function.
    Callee,
    /// `call_indirect` that may reach a rewritten function; the table index is kept in a local.
    Indirect { index_local: u32 },
    /// A call of a migration point import.
    Point,
    /// A safepoint: counts down the budget and unwinds at zero.
    Safepoint,
}

struct Site<'a> {
    kind: SiteKind,
    op: Option<Operator<'a>>,
    id: u32,
    below: Vec<ValType>,
    args: Vec<ValType>,
    results: Vec<ValType>,
}

impl Site<'_> {
    /// Values stored in the frame when unwinding here.
    fn saved(&self) -> Vec<ValType> {
        match self.kind {
            SiteKind::Point => [self.below.as_slice(), &self.results].concat(),
            _ => self.below.clone(),
        }
    }
}

struct Block<'a> {
    kind: Kind,
    blockty: wasmparser::BlockType,
    params: Vec<ValType>,
    results: Vec<ValType>,
    below: Vec<ValType>,
    body: Vec<Item<'a>>,
    else_body: Option<Vec<Item<'a>>>,
    dead: bool,
    /// Site numbers in the `then` (or only) arm, and in the `else` arm.
    sites: (u32, u32),
    else_sites: (u32, u32),
    param_locals: Vec<u32>,
    below_locals: Vec<u32>,
    cond_local: Option<u32>,
    result_locals: Vec<u32>,
}

impl<'a> Block<'a> {
    /// For a loop whose only site is its own leading safepoint: that safepoint. Such a loop
    /// needs no rewind dispatch: resuming re-enters it with its parameters and runs the
    /// (harmless) safepoint check again.
    fn lone_safepoint(&self) -> Option<&Site<'a>> {
        match (self.kind, self.body.first()) {
            (Kind::Loop, Some(Item::Site(s)))
                if matches!(s.kind, SiteKind::Safepoint) && self.sites.1 - self.sites.0 == 1 =>
            {
                Some(s)
            }
            _ => None,
        }
    }

    fn has_site(&self) -> bool {
        self.sites.0 < self.sites.1 || self.else_sites.0 < self.else_sites.1
    }

    /// For a loop without parameters that starts with a safepoint: that safepoint. Its slow
    /// path is moved out of the loop (see [`Emitter::site_block`]).
    fn leading_safepoint(&self) -> Option<&Site<'a>> {
        match (self.kind, self.body.first()) {
            (Kind::Loop, Some(Item::Site(s)))
                if matches!(s.kind, SiteKind::Safepoint) && self.params.is_empty() =>
            {
                Some(s)
            }
            _ => None,
        }
    }
}

enum Item<'a> {
    Op(Operator<'a>),
    Block(Box<Block<'a>>),
    Site(Box<Site<'a>>),
}

impl Item<'_> {
    fn has_site(&self) -> bool {
        match self {
            Item::Op(_) => false,
            Item::Block(b) => b.has_site(),
            Item::Site(_) => true,
        }
    }
}

/// The rewritten body and the number of sites in it.
pub(crate) struct Rewritten {
    pub body: Vec<u8>,
    /// Where `body` uses types its thread numbered.
    pub fixups: Vec<Fixup>,
    /// The body of the function's resume copy, when it has one (see [`rewrite`]), and where
    /// it uses types its thread numbered.
    pub resume_body: Option<(Vec<u8>, Vec<Fixup>)>,
    /// The types its thread added that the function used, by that thread's numbers, in the
    /// order of first use.
    pub new_types: Vec<u32>,
    pub sites: u32,
    /// Bytes of the function's frame on the save stack.
    pub frame: u32,
}

struct Locals {
    /// Types of the original locals (parameters first).
    original: Vec<ValType>,
    /// Locals added by the rewrite, and whether each is saved in the frame.
    extra: Vec<(ValType, bool)>,
    /// The local keeping a `call_indirect`'s table index, per index type: one serves every
    /// site, since a frame stops at one site at a time.
    table_index: BTreeMap<ValType, u32>,
}

impl Locals {
    fn add(&mut self, t: ValType, saved: bool) -> u32 {
        self.extra.push((t, saved));
        (self.original.len() + self.extra.len() - 1) as u32
    }
}

fn block_sig(m: &Module<'_>, bt: wasmparser::BlockType) -> (Vec<ValType>, Vec<ValType>) {
    match bt {
        wasmparser::BlockType::Empty => (vec![], vec![]),
        wasmparser::BlockType::Type(t) => (vec![], vec![t]),
        wasmparser::BlockType::FuncType(i) => {
            let f = m.types[i as usize].as_ref().expect("validated block type");
            (f.params().to_vec(), f.results().to_vec())
        }
    }
}

fn func_type<'m>(m: &'m Module<'_>, ty: u32) -> &'m FuncType {
    m.types[ty as usize]
        .as_ref()
        .expect("validated function type")
}

/// The deepest nesting of blocks, loops and `if`s a rewritten function may have. The passes
/// over a body's block tree recurse once per level, on threads with
/// a deep stack ([`crate::parallel::Stack::Deep`]); this bound keeps them well inside it.
pub(crate) const MAX_NESTING: usize = 5_000;

/// Rewrites defined function `func`.
///
/// With `resume` (the index the caller gives a function it adds), the function is split in
/// two. The body returned runs and unwinds but has no rewind path; its *resume copy*, the
/// `resume_body`, rebuilds the frame, calls the next frame's copy while rewinding, and runs
/// on to the function's return. Only a function entered from outside (`Module::escapes`)
/// tests for a rewind on entry and hands over to its copy. Rewind paths join the normal
/// code at every level that holds a site; without them the code generator keeps values in
/// registers as in the original (measured in `docs/instrument.md`, Resume copies). The copy
/// doubles the function's size.
pub(crate) fn rewrite(
    ctx: &mut Ctx<'_, '_>,
    func: u32,
    body: &FunctionBody<'_>,
    to_validate: FuncToValidate<ValidatorResources>,
    allocations: &mut FuncValidatorAllocations,
    resume: Option<u32>,
) -> Result<Rewritten, Error> {
    let m = ctx.m;
    ctx.types.next_function();
    let mut v = to_validate.into_validator(std::mem::take(allocations));
    let fty = func_type(m, m.func_types[func as usize]).clone();
    let mut locals = Locals {
        original: fty.params().to_vec(),
        extra: Vec::new(),
        table_index: BTreeMap::new(),
    };
    let mut lr = body.get_locals_reader()?;
    for _ in 0..lr.get_count() {
        let offset = lr.original_position();
        let (count, ty) = lr.read()?;
        v.define_locals(offset, count, ty)?;
        locals
            .original
            .extend(std::iter::repeat_n(ty, count as usize));
    }

    // Read the body into a tree, validating as we go.
    struct Open<'a> {
        block: Block<'a>,
        in_else: bool,
    }
    let new_block = |kind, blockty, params, results, below, dead, site| Block {
        kind,
        blockty,
        params,
        results,
        below,
        body: Vec::new(),
        else_body: None,
        dead,
        sites: (site, site),
        else_sites: (site, site),
        param_locals: Vec::new(),
        below_locals: Vec::new(),
        cond_local: None,
        result_locals: Vec::new(),
    };
    let mut next_site = 0u32;
    let mut stack: Vec<Open<'_>> = vec![Open {
        block: new_block(
            Kind::Block,
            wasmparser::BlockType::Empty,
            vec![],
            fty.results().to_vec(),
            vec![],
            false,
            0,
        ),
        in_else: false,
    }];
    if m.recursive[func as usize] && ctx.budget.is_some() {
        stack[0].block.body.push(Item::Site(Box::new(Site {
            kind: SiteKind::Safepoint,
            op: None,
            id: next_site,
            below: vec![],
            args: vec![],
            results: vec![],
        })));
        next_site += 1;
    }

    let needs_safepoint = if ctx.budget.is_some() {
        loops_needing_safepoints(m, body)?
    } else {
        Vec::new()
    };
    let mut loops_seen = 0usize;
    let mut budget_in_local = false;
    // Whether the function tail-calls a function that can unwind, and whether the operator
    // just read becomes a site followed by a `return`.
    let mut tail = false;
    let mut then_return = false;

    let mut reader = body.get_operators_reader()?;
    loop {
        let offset = reader.original_position();
        let op = reader.read()?;
        let frame = v
            .get_control_frame(0)
            .ok_or_else(|| Error::Invalid("operator after the end of a function".into()))?;
        let (frame_height, unreachable) = (frame.height, frame.unreachable);
        let height = v.operand_stack_height() as usize;
        let level = height.saturating_sub(frame_height);
        let top = stack.last_mut().expect("function frame");
        let dead = top.block.dead || unreachable;
        // Types of the `n` lowest values of this level, bottom first.
        let types_at = |n: usize| -> Option<Vec<ValType>> {
            if n > level {
                return None;
            }
            (0..n)
                .map(|p| v.get_operand_type(level - 1 - p).flatten())
                .collect()
        };
        let mut item = None;
        match &op {
            Operator::Block { blockty } | Operator::Loop { blockty } | Operator::If { blockty } => {
                let kind = match op {
                    Operator::Block { .. } => Kind::Block,
                    Operator::Loop { .. } => Kind::Loop,
                    _ => Kind::If,
                };
                let (params, results) = block_sig(m, *blockty);
                let extra = params.len() + usize::from(kind == Kind::If);
                let below_n = level.checked_sub(extra);
                let below = below_n.and_then(types_at);
                let dead = dead || below.is_none();
                let mut b = new_block(
                    kind,
                    *blockty,
                    params.clone(),
                    results,
                    below.unwrap_or_default(),
                    dead,
                    next_site,
                );
                let needed = kind == Kind::Loop && {
                    loops_seen += 1;
                    needs_safepoint.get(loops_seen - 1).copied().unwrap_or(true)
                };
                if needed && !dead && ctx.budget.is_some() {
                    budget_in_local = true;
                    b.body.push(Item::Site(Box::new(Site {
                        kind: SiteKind::Safepoint,
                        op: None,
                        id: next_site,
                        below: params,
                        args: vec![],
                        results: vec![],
                    })));
                    next_site += 1;
                }
                v.op(offset, &op)?;
                if stack.len() > MAX_NESTING {
                    return Err(unsupported(
                        Some(func),
                        format!("blocks nested more than {MAX_NESTING} deep"),
                    ));
                }
                stack.push(Open {
                    block: b,
                    in_else: false,
                });
                continue;
            }
            Operator::Else => {
                top.in_else = true;
                top.block.sites.1 = next_site;
                top.block.else_sites = (next_site, next_site);
                top.block.else_body = Some(Vec::new());
                v.op(offset, &op)?;
                continue;
            }
            Operator::End => {
                v.op(offset, &op)?;
                let mut open = stack.pop().expect("open block");
                if open.in_else {
                    open.block.else_sites.1 = next_site;
                } else {
                    open.block.sites.1 = next_site;
                }
                let mut b = open.block;
                if stack.is_empty() {
                    reader.finish()?;
                    *allocations = v.into_allocations();
                    let traits = Traits {
                        budget_in_local,
                        tail,
                    };
                    return emit(ctx, func, &fty, locals, b, traits, resume);
                }
                if b.has_site() {
                    for &p in &b.params {
                        let l = locals.add(p, true);
                        b.param_locals.push(l);
                    }
                    if !b.below.is_empty() {
                        for &t in &b.below {
                            let l = locals.add(t, true);
                            b.below_locals.push(l);
                        }
                        if b.kind == Kind::If {
                            b.cond_local = Some(locals.add(ValType::I32, false));
                        }
                        for &t in &b.results {
                            let l = locals.add(t, false);
                            b.result_locals.push(l);
                        }
                    }
                }
                let parent = stack.last_mut().expect("parent block");
                let list = if parent.in_else {
                    parent.block.else_body.as_mut().expect("else arm")
                } else {
                    &mut parent.block.body
                };
                list.push(Item::Block(Box::new(b)));
                continue;
            }
            Operator::Call { function_index } if !dead => {
                let callee = m.callee[*function_index as usize];
                if callee != Callee::Plain {
                    let f = func_type(m, m.func_types[*function_index as usize]);
                    item = site_item(
                        if callee == Callee::Point {
                            SiteKind::Point
                        } else {
                            SiteKind::Callee
                        },
                        &op,
                        f,
                        level,
                        &types_at,
                        &mut next_site,
                        &mut locals,
                    );
                }
            }
            Operator::CallIndirect {
                type_index,
                table_index,
            } if !dead => {
                let key = (m.canon[*type_index as usize], *table_index);
                if m.indirect_hits.contains(&key) {
                    let f = func_type(m, *type_index);
                    item = site_item(
                        SiteKind::Indirect { index_local: 0 },
                        &op,
                        f,
                        level,
                        &types_at,
                        &mut next_site,
                        &mut locals,
                    );
                }
            }
            // A tail call of a migration point becomes a call and a return: the host call
            // returns before the pause, so the frame it keeps alive is bounded, and the site
            // is an ordinary one.
            Operator::ReturnCall { function_index }
                if !dead && m.callee[*function_index as usize] == Callee::Point =>
            {
                let f = func_type(m, m.func_types[*function_index as usize]);
                let call = Operator::Call {
                    function_index: *function_index,
                };
                item = site_item(
                    SiteKind::Point,
                    &call,
                    f,
                    level,
                    &types_at,
                    &mut next_site,
                    &mut locals,
                );
                then_return = item.is_some();
            }
            // A tail call of a function that can unwind stays one: this frame is gone by
            // the time the callee unwinds, and the callee's frame names its function, which
            // this function's rewind path hands over to (`Emitter::tail_dispatch`).
            Operator::ReturnCall { function_index }
                if m.callee[*function_index as usize] == Callee::Instrumented =>
            {
                tail = true;
            }
            Operator::ReturnCallIndirect {
                type_index,
                table_index,
            } if m
                .indirect_hits
                .contains(&(m.canon[*type_index as usize], *table_index)) =>
            {
                tail = true;
            }
            Operator::CallRef { type_index } | Operator::ReturnCallRef { type_index }
                if m.ref_hits.contains(&m.canon[*type_index as usize]) =>
            {
                return Err(unsupported(
                    Some(func),
                    "call_ref that can reach a migration point",
                ));
            }
            Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::Throw { .. }
            | Operator::ThrowRef
            | Operator::Rethrow { .. } => {
                return Err(unsupported(
                    Some(func),
                    "exception handling in a function that can reach a migration point",
                ));
            }
            _ => {}
        }
        v.op(offset, &op)?;
        let top = stack.last_mut().expect("open block");
        let list = if top.in_else {
            top.block.else_body.as_mut().expect("else arm")
        } else {
            &mut top.block.body
        };
        list.push(item.unwrap_or(Item::Op(op)));
        if std::mem::take(&mut then_return) {
            list.push(Item::Op(Operator::Return));
        }
    }
}

/// Most iterations of a loop the rewrite leaves without a safepoint because it counts them
/// (see [`counted_loop`]): with at most this many operators per iteration too, such a loop
/// runs a bounded stretch of code between the safepoints around it.
const COUNTED_ITERATIONS: u64 = 1 << 16;
/// Most operators of a counted loop's body, in the input.
const COUNTED_BODY: usize = 256;

/// Per loop of the body, in order of appearance: whether it needs a safepoint of its own.
///
/// A loop does not when every path from its header back to it passes a call that polls:
/// a migration point (where the host checks for a pending request) or a function with an
/// entry safepoint. The check is simple and sound: such a call stands at the loop's own level,
/// and no branch back to the loop comes before it. A loop no branch returns to runs once and
/// needs none either, and neither does a short counted loop ([`counted_loop`]).
fn loops_needing_safepoints(m: &Module<'_>, body: &FunctionBody<'_>) -> Result<Vec<bool>, Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Status {
        Pending,
        Polled,
        Needed,
    }
    let polls = |f: u32| match m.callee.get(f as usize) {
        Some(Callee::Point) => true,
        Some(Callee::Instrumented) => m.recursive[f as usize],
        _ => false,
    };
    let mut status: Vec<Status> = Vec::new();
    // Per loop: where its body starts in `ops`, the branches back to it, and whether its body
    // holds a loop or a call; and the constants its locals held on entry.
    struct Shape {
        start: usize,
        back_edges: u32,
        loops_or_calls: bool,
        entry: BTreeMap<u32, i64>,
    }
    let mut shapes: Vec<Shape> = Vec::new();
    let mut ops: Vec<Operator<'_>> = Vec::new();
    // Locals known to hold a constant here, from `const; local.set` in straight-line code.
    let mut consts: BTreeMap<u32, i64> = BTreeMap::new();
    // Open labels, innermost last: the loop's number for loops.
    let mut frames: Vec<Option<usize>> = vec![None];
    let branch =
        |frames: &[Option<usize>], status: &mut Vec<Status>, shapes: &mut Vec<Shape>, d: u32| {
            let target = frames
                .len()
                .checked_sub(d as usize + 1)
                .and_then(|i| frames[i]);
            if let Some(l) = target {
                shapes[l].back_edges += 1;
                if status[l] == Status::Pending {
                    status[l] = Status::Needed;
                }
            }
        };
    let open_loops = |frames: &[Option<usize>], shapes: &mut Vec<Shape>| {
        for l in frames.iter().flatten() {
            shapes[*l].loops_or_calls = true;
        }
    };
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        let op = reader.read()?;
        let constant = match ops.last() {
            Some(Operator::I32Const { value }) => Some(i64::from(*value)),
            Some(Operator::I64Const { value }) => Some(*value),
            _ => None,
        };
        match &op {
            Operator::LocalSet { local_index } => match constant {
                Some(c) => {
                    consts.insert(*local_index, c);
                }
                None => {
                    consts.remove(local_index);
                }
            },
            Operator::LocalTee { local_index } => {
                consts.remove(local_index);
            }
            Operator::Block { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Loop { .. }
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
            | Operator::Return
            | Operator::Unreachable
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. } => {
                // Only `loop` reads them: taken at its header, they hold on entry.
                if let Operator::Loop { .. } = op {
                    open_loops(&frames, &mut shapes);
                    frames.push(Some(status.len()));
                    status.push(Status::Pending);
                    shapes.push(Shape {
                        start: ops.len() + 1,
                        back_edges: 0,
                        loops_or_calls: false,
                        entry: core::mem::take(&mut consts),
                    });
                }
                consts.clear();
            }
            _ => {}
        }
        match &op {
            Operator::Block { .. } | Operator::If { .. } => frames.push(None),
            Operator::End => {
                if let Some(Some(l)) = frames.pop()
                    && status[l] == Status::Needed
                    && counted_loop(&ops[shapes[l].start..], &shapes[l].entry)
                        .is_some_and(|n| n <= COUNTED_ITERATIONS)
                    && shapes[l].back_edges == 1
                    && !shapes[l].loops_or_calls
                    && ops.len() - shapes[l].start <= COUNTED_BODY
                {
                    status[l] = Status::Polled;
                }
            }
            Operator::Call { function_index } => {
                open_loops(&frames, &mut shapes);
                if polls(*function_index)
                    && let Some(Some(l)) = frames.last()
                    && status[*l] == Status::Pending
                {
                    status[*l] = Status::Polled;
                }
            }
            Operator::CallIndirect { .. }
            | Operator::CallRef { .. }
            | Operator::ReturnCall { .. }
            | Operator::ReturnCallIndirect { .. }
            | Operator::ReturnCallRef { .. } => open_loops(&frames, &mut shapes),
            Operator::Br { relative_depth }
            | Operator::BrIf { relative_depth }
            | Operator::BrOnNull { relative_depth }
            | Operator::BrOnNonNull { relative_depth }
            | Operator::BrOnCast { relative_depth, .. }
            | Operator::BrOnCastFail { relative_depth, .. } => {
                branch(&frames, &mut status, &mut shapes, *relative_depth)
            }
            Operator::BrTable { targets } => {
                branch(&frames, &mut status, &mut shapes, targets.default());
                for t in targets.targets() {
                    branch(&frames, &mut status, &mut shapes, t?);
                }
            }
            _ => {}
        }
        ops.push(op);
    }
    Ok(status.into_iter().map(|s| s == Status::Needed).collect())
}

/// The number of iterations of a counted loop, whose body is `body` (its `end` excluded) and
/// whose locals held `entry` on entry: `None` unless the body ends with
///
/// ```text
/// local.get $i  iNN.const K  iNN.add  local.tee $i  iNN.const C  iNN.ne|lt_u  br_if 0
/// ```
///
/// and writes `$i` nowhere else. With `ne`, `$i` must hold a known constant on entry, from
/// which `C` is a whole number of steps `K`; with `lt_u` (and `K > 0`), `$i` only grows, and
/// the loop stops within `C / K + 1` iterations whatever `$i` held. The caller checks that
/// the final `br_if` is the only branch back to the loop.
fn counted_loop(body: &[Operator<'_>], entry: &BTreeMap<u32, i64>) -> Option<u64> {
    let [.., get, step, add, tee, bound, cmp, br] = body else {
        return None;
    };
    let (Operator::LocalGet { local_index: i }, Operator::LocalTee { local_index: t }) = (get, tee)
    else {
        return None;
    };
    if i != t || !matches!(br, Operator::BrIf { relative_depth: 0 }) {
        return None;
    }
    // Width, step, bound and comparison, all of one width.
    let (bits, k, c, lt) = match (step, add, bound, cmp) {
        (
            Operator::I32Const { value: k },
            Operator::I32Add,
            Operator::I32Const { value: c },
            Operator::I32Ne | Operator::I32LtU,
        ) => (
            32,
            u64::from(*k as u32),
            u64::from(*c as u32),
            matches!(cmp, Operator::I32LtU),
        ),
        (
            Operator::I64Const { value: k },
            Operator::I64Add,
            Operator::I64Const { value: c },
            Operator::I64Ne | Operator::I64LtU,
        ) => (64, *k as u64, *c as u64, matches!(cmp, Operator::I64LtU)),
        _ => return None,
    };
    let writes_i = body[..body.len() - 4].iter().any(|op| {
        matches!(op, Operator::LocalSet { local_index } | Operator::LocalTee { local_index }
            if local_index == i)
    });
    if writes_i {
        return None;
    }
    let mask = if bits == 32 {
        u64::from(u32::MAX)
    } else {
        u64::MAX
    };
    let half = 1u64 << (bits - 1);
    if lt {
        // `$i + K < C` goes on: with 0 < K and C + K in range, `$i` grows without wrapping.
        if k == 0 || k >= half || c.checked_add(k)? > mask {
            return None;
        }
        return Some(c / k + 1);
    }
    let start = (*entry.get(i)? as u64) & mask;
    // `$i` goes start, start + K, …; the loop stops when it reaches C.
    let (distance, step) = if k < half {
        (c.wrapping_sub(start) & mask, k)
    } else {
        (start.wrapping_sub(c) & mask, k.wrapping_neg() & mask)
    };
    if step == 0 || distance == 0 || distance % step != 0 {
        return None;
    }
    Some(distance / step)
}

fn site_item<'a>(
    kind: SiteKind,
    op: &Operator<'a>,
    f: &FuncType,
    level: usize,
    types_at: &dyn Fn(usize) -> Option<Vec<ValType>>,
    next_site: &mut u32,
    locals: &mut Locals,
) -> Option<Item<'a>> {
    let index = usize::from(matches!(kind, SiteKind::Indirect { .. }));
    let below = types_at(level.checked_sub(f.params().len() + index)?)?;
    let kind = match kind {
        SiteKind::Indirect { .. } => {
            let index_ty = types_at(level)?.last().copied()?;
            SiteKind::Indirect {
                index_local: match locals.table_index.get(&index_ty) {
                    Some(&l) => l,
                    None => {
                        let l = locals.add(index_ty, true);
                        locals.table_index.insert(index_ty, l);
                        l
                    }
                },
            }
        }
        k => k,
    };
    let mut args = f.params().to_vec();
    if let SiteKind::Indirect { .. } = kind {
        // The table index is an operand of `call_indirect` too.
        args = types_at(level)?[below.len()..].to_vec();
    }
    let id = *next_site;
    *next_site += 1;
    Some(Item::Site(Box::new(Site {
        kind,
        op: Some(op.clone()),
        id,
        below,
        args,
        results: f.results().to_vec(),
    })))
}

fn collect_site_types(items: &[Item<'_>], out: &mut Vec<Vec<ValType>>) {
    for item in items {
        match item {
            Item::Op(_) => {}
            Item::Site(s) => out.push(s.saved()),
            Item::Block(b) => {
                collect_site_types(&b.body, out);
                if let Some(e) = &b.else_body {
                    collect_site_types(e, out);
                }
            }
        }
    }
}

/// A set of local indices.
#[derive(Clone, PartialEq, Eq)]
struct Set(Vec<u64>);

impl Set {
    fn empty(n: usize) -> Set {
        Set(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w |= 1 << (i % 64);
        }
    }
    fn remove(&mut self, i: u32) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            *w &= !(1 << (i % 64));
        }
    }
    fn contains(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn union(&mut self, other: &Set) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

/// Backward liveness of the original locals over the tree; collects the locals live after each
/// site. Their union is what a frame must have room for; each site saves only its own.
struct Liveness {
    n: usize,
    labels: Vec<Set>,
    /// Live after each site, by site number (the last pass over a loop is the fixed point).
    per_site: BTreeMap<u32, Set>,
}

impl Liveness {
    fn label(&self, d: u32) -> Set {
        self.labels
            .len()
            .checked_sub(d as usize + 1)
            .map(|i| self.labels[i].clone())
            .unwrap_or_else(|| Set::empty(self.n))
    }

    fn seq(&mut self, items: &[Item<'_>], out: Set) -> Set {
        let mut live = out;
        for item in items.iter().rev() {
            live = self.item(item, live);
        }
        live
    }

    fn item(&mut self, item: &Item<'_>, mut after: Set) -> Set {
        match item {
            Item::Op(op) => match op {
                Operator::LocalGet { local_index } => {
                    after.insert(*local_index);
                    after
                }
                Operator::LocalSet { local_index } | Operator::LocalTee { local_index } => {
                    after.remove(*local_index);
                    after
                }
                Operator::Br { relative_depth } => self.label(*relative_depth),
                Operator::BrIf { relative_depth }
                | Operator::BrOnNull { relative_depth }
                | Operator::BrOnNonNull { relative_depth } => {
                    after.union(&self.label(*relative_depth));
                    after
                }
                Operator::BrTable { targets } => {
                    let mut live = self.label(targets.default());
                    for t in targets.targets().flatten() {
                        live.union(&self.label(t));
                    }
                    live
                }
                Operator::Return
                | Operator::Unreachable
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => Set::empty(self.n),
                _ => after,
            },
            Item::Site(s) => {
                self.per_site.insert(s.id, after.clone());
                after
            }
            Item::Block(b) => match b.kind {
                Kind::Block => {
                    self.labels.push(after.clone());
                    let r = self.seq(&b.body, after);
                    self.labels.pop();
                    r
                }
                Kind::If => {
                    self.labels.push(after.clone());
                    let mut t = self.seq(&b.body, after.clone());
                    let e = match &b.else_body {
                        Some(e) => self.seq(e, after),
                        None => after,
                    };
                    self.labels.pop();
                    t.union(&e);
                    t
                }
                Kind::Loop => {
                    let mut guess = Set::empty(self.n);
                    loop {
                        self.labels.push(guess.clone());
                        let r = self.seq(&b.body, after.clone());
                        self.labels.pop();
                        let mut next = guess.clone();
                        next.union(&r);
                        if next == guess {
                            return guess;
                        }
                        guess = next;
                    }
                }
            },
        }
    }
}

/// Locals bigger than this many skip the liveness analysis and are all saved.
const LIVENESS_LIMIT: usize = 4096;

/// Emits the rewritten function.
struct Emitter<'c, 'm, 'a> {
    ctx: &'c mut Ctx<'m, 'a>,
    func: u32,
    out: Vec<u8>,
    /// Open labels, innermost last: `None` for the input's own labels, `Some(id)` for added ones.
    labels: Vec<Option<u32>>,
    next_label: u32,
    /// Per added label id: its position in `labels` when it was opened.
    label_at: Vec<usize>,
    unwind_label: u32,
    base: u32,
    site_local: u32,
    budget_local: Option<u32>,
    /// Whether `budget_local` holds the budget between safepoints (else it is scratch).
    budget_in_local: bool,
    site_values: BTreeMap<ValType, Vec<u32>>,
    /// Byte offset of each saved local in the frame.
    saved: Vec<(u32, ValType, u32)>,
    locals_size: u32,
    /// The saved locals each site needs (by site number); the others are zeroed when
    /// unwinding there, so that no value stays live just to be written to a frame.
    needs: BTreeMap<u32, Set>,
    /// Number of the input's own locals (parameters included).
    originals: u32,
    /// A loop's leading safepoint whose slow path sits outside the loop: its site number and
    /// the label its check branches to.
    slow_exit: Option<(u32, u32)>,
    /// Whether the code being emitted can rewind (has the dispatches): false in the normal
    /// body of a function split from its resume copy.
    rewinds: bool,
    /// Where the code emitted so far uses types its thread numbered.
    fixups: Vec<Fixup>,
    /// Whether the code being emitted is a resume copy: its calls of functions that have
    /// copies go to those copies while rewinding.
    in_copy: bool,
    /// Whether the function tail-calls a function that can unwind.
    tail: bool,
    /// Out-of-line unwind paths: per site number, the label of the block its check branches
    /// out of (see [`Emitter::open_pads`]).
    pads: BTreeMap<u32, u32>,
}

/// What the pass over a body found that shapes its code.
struct Traits {
    /// The budget lives in a local between safepoints (the function has loop safepoints).
    budget_in_local: bool,
    /// The function tail-calls a function that can unwind.
    tail: bool,
}

fn emit(
    ctx: &mut Ctx<'_, '_>,
    func: u32,
    fty: &FuncType,
    mut locals: Locals,
    root: Block<'_>,
    traits: Traits,
    resume: Option<u32>,
) -> Result<Rewritten, Error> {
    let Traits {
        budget_in_local,
        tail,
    } = traits;
    // The root's sites are all the function's, numbered from 0.
    let sites = root.sites.1;
    let base = locals.add(ValType::I32, false);
    let site_local = locals.add(ValType::I32, false);
    // With loop safepoints the budget lives in a local (a register), written back to the
    // global around calls that may spend it and when the function returns. A function whose
    // only safepoint is at its entry counts down the global itself, and the local is scratch.
    let budget_local = ctx.budget.map(|_| locals.add(ValType::I32, false));
    // Site values go into locals of their own (the k-th value of a type at a site into the
    // k-th such local), saved with the others.
    let mut site_types = Vec::new();
    collect_site_types(&root.body, &mut site_types);
    let mut site_values: BTreeMap<ValType, Vec<u32>> = BTreeMap::new();
    for types in &site_types {
        let mut seen: BTreeMap<ValType, usize> = BTreeMap::new();
        for &t in types {
            size_of(t, func)?;
            let k = seen.entry(t).or_insert(0);
            let list = site_values.entry(t).or_default();
            if list.len() == *k {
                list.push(locals.add(t, true));
            }
            *k += 1;
        }
    }
    // Original locals are saved when live after some site; added ones when marked.
    let n = locals.original.len();
    let keep = (n <= LIVENESS_LIMIT).then(|| {
        let mut l = Liveness {
            n,
            labels: vec![Set::empty(n)],
            per_site: BTreeMap::new(),
        };
        l.seq(&root.body, Set::empty(n));
        let mut at_sites = Set::empty(n);
        for live in l.per_site.values() {
            at_sites.union(live);
        }
        (at_sites, l.per_site)
    });
    let mut saved = Vec::new();
    let mut offset = 0u32;
    let all = locals
        .original
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            (
                t,
                keep.as_ref()
                    .is_none_or(|(at_sites, _)| at_sites.contains(i as u32)),
            )
        })
        .chain(locals.extra.iter().copied());
    for (i, (t, keep)) in all.enumerate() {
        if keep {
            saved.push((i as u32, t, offset));
            offset = offset
                .checked_add(size_of(t, func)?)
                .ok_or_else(|| unsupported(Some(func), "frame larger than 4 GiB"))?;
        }
    }
    let mut e = Emitter {
        ctx,
        func,
        out: Vec::new(),
        labels: Vec::new(),
        next_label: 0,
        label_at: Vec::new(),
        unwind_label: 0,
        base,
        site_local,
        budget_local,
        budget_in_local,
        site_values,
        saved,
        locals_size: offset,
        needs: BTreeMap::new(),
        originals: locals.original.len() as u32,
        slow_exit: None,
        rewinds: true,
        fixups: Vec::new(),
        in_copy: false,
        tail,
        pads: BTreeMap::new(),
    };
    let total = locals.original.len() + locals.extra.len();
    let mut needs = BTreeMap::new();
    e.collect_needs(
        &root.body,
        &mut Vec::new(),
        keep.as_ref().map(|(_, per_site)| per_site),
        total,
        &mut needs,
    );
    e.needs = needs;

    // Local declarations: the original ones, then the added ones, run-length encoded.
    let mut runs: Vec<(u32, ValType)> = Vec::new();
    for &t in locals.original[fty.params().len()..]
        .iter()
        .chain(locals.extra.iter().map(|(t, _)| t))
    {
        match runs.last_mut() {
            Some((n, last)) if *last == t => *n += 1,
            _ => runs.push((1, t)),
        }
    }
    let mut header = Vec::new();
    runs.len().encode(&mut header);
    for (n, t) in runs {
        n.encode(&mut header);
        enc(t)?.encode(&mut header);
    }

    e.out = header.clone();
    e.rewinds = resume.is_none();
    if let Some(copy) = resume
        && e.ctx.m.escapes[func as usize]
    {
        // Called while rewinding: the resume copy rebuilds the frame and runs on. Only a
        // function the host or an indirect call can enter needs this: a resume copy calls
        // the other copies itself while rewinding.
        e.ins(Instruction::GlobalGet(e.ctx.state));
        e.ins(Instruction::If(BlockType::Empty));
        for p in 0..fty.params().len() as u32 {
            e.ins(Instruction::LocalGet(p));
        }
        e.ins(Instruction::Call(copy));
        e.ins(Instruction::Return);
        e.ins(Instruction::End);
    }
    e.body(&root, fty.results())?;
    let body = std::mem::take(&mut e.out);
    let fixups = std::mem::take(&mut e.fixups);
    let resume_body = match resume {
        Some(_) => {
            e.out = header;
            e.rewinds = true;
            e.in_copy = true;
            e.body(&root, fty.results())?;
            Some((std::mem::take(&mut e.out), std::mem::take(&mut e.fixups)))
        }
        None => None,
    };
    let frame = e.frame_size();
    Ok(Rewritten {
        body,
        fixups,
        resume_body,
        new_types: std::mem::take(&mut e.ctx.types.used),
        sites,
        frame,
    })
}

impl Emitter<'_, '_, '_> {
    /// Emits the function's code after its local declarations.
    fn body(&mut self, root: &Block<'_>, results: &[ValType]) -> Result<(), Error> {
        self.labels.clear();
        self.next_label = 0;
        self.label_at.clear();
        self.slow_exit = None;
        if self.rewinds && self.tail {
            self.tail_dispatch(results)?;
        }
        self.load_budget();
        self.unwind_label = self.open_added(BlockType::Empty);
        let bt = self.ctx.types.block(&[], results)?;
        // In a normal body (no dispatch) that counts the global down, an entry safepoint's
        // slow path goes after the body (see `entry_test`).
        let entry = match root.body.first() {
            Some(Item::Site(s))
                if !self.rewinds
                    && !self.budget_in_local
                    && matches!(s.kind, SiteKind::Safepoint) =>
            {
                let again = self.open_added_as(Instruction::Loop(BlockType::Empty));
                let slow = self.open_added(BlockType::Empty);
                self.entry_test(slow)?;
                Some((s, again))
            }
            _ => None,
        };
        let items = if entry.is_some() {
            &root.body[1..]
        } else {
            &root.body[..]
        };
        let pads = self.open_pads(items);
        self.ins(Instruction::Block(bt));
        self.labels.push(None);
        self.level(items, &[], true)?;
        self.end();
        if let Some((sp, again)) = entry {
            // The body returns from inside the loop: a `br` out of it would carry the results
            // (a copy and a branch on wasmi). The budget lives in the global: nothing to store.
            self.ins(Instruction::Return);
            self.close_pads(&pads)?;
            self.end(); // $slow
            // The test spends before it compares: one more unit lets it pass once.
            self.defer_or_yield(sp, again, 1)?;
            self.end(); // $again
        } else {
            self.store_budget();
            self.ins(Instruction::Return);
            self.close_pads(&pads)?;
        }
        self.end(); // $unwind
        self.epilogue(results)?;
        self.ins(Instruction::End);
        Ok(())
    }

    /// The call of a site. In a resume copy, a direct call of a function with a copy of its
    /// own goes to that copy while rewinding (the state is then nonzero; nothing unwinds
    /// when a call starts), so that no function's normal body needs to test for a rewind
    /// on entry unless the host or an indirect call can enter it.
    fn site_call(&mut self, s: &Site<'_>) -> Result<(), Error> {
        let op = s.op.as_ref().expect("call");
        let target = match op {
            Operator::Call { function_index } if self.in_copy => self
                .ctx
                .copy_of
                .get(*function_index as usize)
                .filter(|&&c| c != u32::MAX)
                .map(|&c| (*function_index, c)),
            _ => None,
        };
        let Some((callee, copy)) = target else {
            return self.op(op);
        };
        let m = self.ctx.m;
        let f = func_type(m, m.func_types[callee as usize]);
        let bt = self.ctx.types.block(f.params(), f.results())?;
        self.ins(Instruction::GlobalGet(self.ctx.state));
        self.ins(Instruction::If(bt));
        self.labels.push(Some(u32::MAX));
        self.ins(Instruction::Call(copy));
        self.ins(Instruction::Else);
        self.ins(Instruction::Call(callee));
        self.end();
        Ok(())
    }

    fn ins(&mut self, i: Instruction<'_>) {
        let at = self.out.len();
        i.encode(&mut self.out);
        if let Instruction::Block(BlockType::FunctionType(t))
        | Instruction::Loop(BlockType::FunctionType(t))
        | Instruction::If(BlockType::FunctionType(t)) = i
            && self.ctx.types.is_fresh(t)
        {
            // One opcode byte, then the type's index.
            self.fixups.push(Fixup {
                at: at + 1,
                len: self.out.len() - at - 1,
                index: t,
            });
        }
    }

    fn open_added(&mut self, bt: BlockType) -> u32 {
        self.open_added_as(Instruction::Block(bt))
    }

    /// Opens an added `block` or `loop` (`header`); its label's id.
    fn open_added_as(&mut self, header: Instruction<'_>) -> u32 {
        self.ins(header);
        let id = self.next_label;
        self.next_label += 1;
        self.label_at.push(self.labels.len());
        self.labels.push(Some(id));
        id
    }

    fn end(&mut self) {
        self.ins(Instruction::End);
        self.labels.pop();
    }

    /// Relative depth of added label `id`: found from where it was opened, not searched for,
    /// since the pads (see [`Emitter::open_pads`]) can nest thousands of labels.
    fn depth_of(&self, id: u32) -> Result<u32, Error> {
        match self.label_at.get(id as usize) {
            Some(&at) if self.labels.get(at) == Some(&Some(id)) => {
                Ok((self.labels.len() - 1 - at) as u32)
            }
            _ => Err(Error::Internal("branch to a closed label".into())),
        }
    }

    /// Relative depth, in the output, of the input's relative depth `d`.
    fn map_depth(&self, d: u32) -> Result<u32, Error> {
        let mut seen = 0;
        for (i, l) in self.labels.iter().rev().enumerate() {
            if l.is_none() {
                if seen == d {
                    return Ok(i as u32);
                }
                seen += 1;
            }
        }
        Err(Error::Invalid("branch depth out of range".into()))
    }

    fn mem(&self, offset: u32) -> MemArg {
        MemArg {
            offset: offset.into(),
            align: 0,
            memory_index: self.ctx.stack_mem,
        }
    }

    fn load(&mut self, t: ValType, offset: u32) -> Result<(), Error> {
        let m = self.mem(offset);
        self.ins(match t {
            ValType::I32 => Instruction::I32Load(m),
            ValType::I64 => Instruction::I64Load(m),
            ValType::F32 => Instruction::F32Load(m),
            ValType::F64 => Instruction::F64Load(m),
            ValType::V128 => Instruction::V128Load(m),
            ValType::Ref(_) => return Err(size_of(t, self.func).unwrap_err()),
        });
        Ok(())
    }

    fn store(&mut self, t: ValType, offset: u32) -> Result<(), Error> {
        let m = self.mem(offset);
        self.ins(match t {
            ValType::I32 => Instruction::I32Store(m),
            ValType::I64 => Instruction::I64Store(m),
            ValType::F32 => Instruction::F32Store(m),
            ValType::F64 => Instruction::F64Store(m),
            ValType::V128 => Instruction::V128Store(m),
            ValType::Ref(_) => return Err(size_of(t, self.func).unwrap_err()),
        });
        Ok(())
    }

    fn zero(&mut self, t: ValType) -> Result<(), Error> {
        let Some(i) = zero_of(t)? else {
            return Err(unsupported(
                Some(self.func),
                "a non-nullable reference parameter or result in a function that can \
                 reach a migration point",
            ));
        };
        self.ins(i);
        Ok(())
    }

    /// A zero of numeric type `t`, in as few bytes as the encoding allows.
    fn short_zero(&mut self, t: ValType) -> Result<(), Error> {
        match t {
            ValType::F32 => {
                self.ins(Instruction::I32Const(0));
                self.ins(Instruction::F32ReinterpretI32);
            }
            ValType::F64 => {
                self.ins(Instruction::I64Const(0));
                self.ins(Instruction::F64ReinterpretI64);
            }
            ValType::V128 => {
                self.ins(Instruction::I32Const(0));
                self.ins(Instruction::I32x4Splat);
            }
            t => self.zero(t)?,
        }
        Ok(())
    }

    /// A placeholder argument for a call that rewinds (the callee restores what it needs
    /// from its frame), made from the state global rather than a constant: the code
    /// generator hoists constants out of loops and then keeps them in registers across the
    /// loop's calls, while a load stays on the rarely taken path where it is used.
    fn placeholder(&mut self, t: ValType) -> Result<(), Error> {
        let state = Instruction::GlobalGet(self.ctx.state);
        match t {
            ValType::I32 => self.ins(state),
            ValType::I64 => {
                self.ins(state);
                self.ins(Instruction::I64ExtendI32U);
            }
            ValType::F32 => {
                self.ins(state);
                self.ins(Instruction::F32ReinterpretI32);
            }
            ValType::F64 => {
                self.ins(state);
                self.ins(Instruction::I64ExtendI32U);
                self.ins(Instruction::F64ReinterpretI64);
            }
            ValType::V128 => {
                self.ins(state);
                self.ins(Instruction::I32x4Splat);
            }
            ValType::Ref(_) => self.zero(t)?,
        }
        Ok(())
    }

    /// Bytes of this function's frame: the saved locals, the site number, and with tail calls
    /// the owner number.
    fn frame_size(&self) -> u32 {
        self.locals_size + if self.ctx.thunks.is_some() { 8 } else { 4 }
    }

    /// On entry while rewinding, in a function that tail-calls one that can unwind: when the
    /// frame on top of the stack is not this function's, this function had tail-called on
    /// (perhaps through a chain of tail calls) and is gone from the saved stack. It hands
    /// over, as a tail call, to the thunk of the frame's owner, which enters that function's
    /// rewind with placeholder arguments. Tail calls keep the results' types, so the thunk's
    /// type, `[] -> results`, is this function's results'. A frame a snapshot corrupted
    /// names no thunk of that type and traps.
    fn tail_dispatch(&mut self, results: &[ValType]) -> Result<(), Error> {
        let table = self
            .ctx
            .thunks
            .ok_or_else(|| Error::Internal("a tail call without the thunk table".into()))?;
        let me = self.ctx.owner[self.func as usize];
        // `assemble` numbers the thunks' types before the bodies are shared out among threads,
        // so the index is final here (a fresh one would need a fixup).
        let ty = self.ctx.types.index(&[], results);
        if self.ctx.types.is_fresh(ty) {
            return Err(Error::Internal("a thunk type numbered by a thread".into()));
        }
        self.ins(Instruction::GlobalGet(self.ctx.state));
        self.ins(Instruction::If(BlockType::Empty));
        self.ins(Instruction::GlobalGet(self.ctx.sp));
        self.ins(Instruction::I32Const(4));
        self.ins(Instruction::I32Sub);
        self.load(ValType::I32, 0)?;
        self.ins(Instruction::LocalTee(self.base));
        self.ins(Instruction::I32Const(me as i32));
        self.ins(Instruction::I32Ne);
        self.ins(Instruction::If(BlockType::Empty));
        self.ins(Instruction::LocalGet(self.base));
        self.ins(Instruction::ReturnCallIndirect {
            type_index: ty,
            table_index: table,
        });
        self.ins(Instruction::End);
        self.ins(Instruction::End);
        Ok(())
    }

    /// On rewind: pop this function's frame and reload its locals and site number.
    ///
    /// A resume copy reloads no local here: each is loaded where the dispatch first uses
    /// it ([`Emitter::reload_late`]). A local loaded at the top is an extra definition that
    /// reaches every nested level's dispatch, so inside each loop that holds one, the code
    /// generator has to keep the locals the dispatch could pass on alive across the loop's
    /// back edge, although only the first pass after a rewind takes it.
    fn restore_frame(&mut self) -> Result<(), Error> {
        let (sp, base) = (self.ctx.sp, self.base);
        self.ins(Instruction::GlobalGet(sp));
        self.ins(Instruction::I32Const(self.frame_size() as i32));
        self.ins(Instruction::I32Sub);
        self.ins(Instruction::LocalTee(base));
        self.ins(Instruction::GlobalSet(sp));
        self.ins(Instruction::LocalGet(base));
        self.load(ValType::I32, self.locals_size)?;
        // While rewinding, the site local holds the site number plus one, so that the
        // dispatches of nested levels can test it (see `level`).
        self.ins(Instruction::I32Const(1));
        self.ins(Instruction::I32Add);
        self.ins(Instruction::LocalSet(self.site_local));
        if self.in_copy {
            return Ok(());
        }
        for (l, t, off) in self.saved.clone() {
            self.ins(Instruction::LocalGet(base));
            self.load(t, off)?;
            self.ins(Instruction::LocalSet(l));
        }
        Ok(())
    }

    /// In a resume copy, while rewinding: loads the saved locals for which `wanted` holds
    /// from the frame [`Emitter::restore_frame`] popped. Nothing is pushed between the pop
    /// and the dispatch's arms, so the frame starts at `__tabi_sp`, read again here rather
    /// than kept in a local across the loops the dispatch passes through.
    fn reload_late(&mut self, wanted: impl Fn(u32) -> bool) -> Result<(), Error> {
        if !self.in_copy {
            return Ok(());
        }
        for (l, t, off) in self.saved.clone() {
            if wanted(l) {
                self.ins(Instruction::GlobalGet(self.ctx.sp));
                self.load(t, off)?;
                self.ins(Instruction::LocalSet(l));
            }
        }
        Ok(())
    }

    /// In a resume copy: loads the locals site `id` needs to go on (see
    /// [`Emitter::reload_late`]).
    fn reload_needs(&mut self, id: u32) -> Result<(), Error> {
        let need = self.needs.get(&id).cloned();
        self.reload_late(|l| need.as_ref().is_none_or(|n| n.contains(l)))
    }

    /// After the unwind label: store the locals at the stack top, then claim the frame,
    /// and return placeholder results.
    ///
    /// The stack memory always has room for the largest frame above the top, so the stores
    /// come first and the call to `reserve` (which keeps that room) comes when no saved value
    /// is live any more: a value live across a call would have to be spilled, and the code
    /// generator then tends to spill it on the hot path too.
    fn epilogue(&mut self, results: &[ValType]) -> Result<(), Error> {
        self.ins(Instruction::GlobalGet(self.ctx.sp));
        self.ins(Instruction::LocalSet(self.base));
        self.ins(Instruction::LocalGet(self.base));
        self.ins(Instruction::LocalGet(self.site_local));
        self.store(ValType::I32, self.locals_size)?;
        if self.ctx.thunks.is_some() {
            self.ins(Instruction::LocalGet(self.base));
            self.ins(Instruction::I32Const(
                self.ctx.owner[self.func as usize] as i32,
            ));
            self.store(ValType::I32, self.locals_size + 4)?;
        }
        for (l, t, off) in self.saved.clone() {
            self.ins(Instruction::LocalGet(self.base));
            self.ins(Instruction::LocalGet(l));
            self.store(t, off)?;
        }
        self.ins(Instruction::I32Const(self.frame_size() as i32));
        self.ins(Instruction::Call(self.ctx.reserve));
        for &r in results {
            self.zero(r)?;
        }
        Ok(())
    }

    /// The locals holding a site's values, in order.
    fn value_locals(&self, values: &[ValType]) -> Vec<u32> {
        let mut seen: BTreeMap<ValType, usize> = BTreeMap::new();
        values
            .iter()
            .map(|t| {
                let k = seen.entry(*t).or_insert(0);
                *k += 1;
                self.site_values[t][*k - 1]
            })
            .collect()
    }

    /// For each site under `items`: the saved locals it needs to resume. Those are the
    /// original locals live after it (all of them when `live` is `None`), its own values and
    /// `call_indirect` index, and the parameters and moved values of the blocks around it
    /// (`enclosing`).
    fn collect_needs(
        &self,
        items: &[Item<'_>],
        enclosing: &mut Vec<u32>,
        live: Option<&BTreeMap<u32, Set>>,
        total: usize,
        out: &mut BTreeMap<u32, Set>,
    ) {
        for item in items {
            match item {
                Item::Op(_) => {}
                Item::Site(s) => {
                    let mut need = Set::empty(total);
                    for (l, _, _) in &self.saved {
                        let original = *l < self.originals;
                        if original
                            && live.is_none_or(|m| m.get(&s.id).is_some_and(|k| k.contains(*l)))
                        {
                            need.insert(*l);
                        }
                    }
                    for l in self.value_locals(&s.saved()) {
                        need.insert(l);
                    }
                    if let SiteKind::Indirect { index_local } = s.kind {
                        need.insert(index_local);
                    }
                    for &l in enclosing.iter() {
                        need.insert(l);
                    }
                    out.insert(s.id, need);
                }
                Item::Block(b) => {
                    let depth = enclosing.len();
                    enclosing.extend(&b.param_locals);
                    enclosing.extend(&b.below_locals);
                    self.collect_needs(&b.body, enclosing, live, total, out);
                    if let Some(e) = &b.else_body {
                        self.collect_needs(e, enclosing, live, total, out);
                    }
                    enclosing.truncate(depth);
                }
            }
        }
    }

    /// Moves `values` (on the operand stack, last on top) into their locals, records the site
    /// and branches to the unwind label, where the frame is written. Saved locals the site
    /// does not need are zeroed first.
    fn save_and_unwind(&mut self, site: u32, values: &[ValType]) -> Result<(), Error> {
        for l in self.value_locals(values).into_iter().rev() {
            self.ins(Instruction::LocalSet(l));
        }
        if let Some(need) = self.needs.get(&site) {
            // One zero per type, passed down a chain of `local.tee`s.
            let mut dead: BTreeMap<ValType, Vec<u32>> = BTreeMap::new();
            for &(l, t, _) in &self.saved {
                if !need.contains(l) {
                    dead.entry(t).or_default().push(l);
                }
            }
            for (t, ls) in dead {
                self.short_zero(t)?;
                for (i, &l) in ls.iter().enumerate() {
                    self.ins(if i + 1 == ls.len() {
                        Instruction::LocalSet(l)
                    } else {
                        Instruction::LocalTee(l)
                    });
                }
            }
        }
        self.ins(Instruction::I32Const(site as i32));
        self.ins(Instruction::LocalSet(self.site_local));
        let d = self.depth_of(self.unwind_label)?;
        self.ins(Instruction::Br(d));
        Ok(())
    }

    /// Rewinding reached this frame's site: no nested level may dispatch again.
    fn reached_site(&mut self) {
        self.ins(Instruction::I32Const(0));
        self.ins(Instruction::LocalSet(self.site_local));
    }

    /// Pushes the values saved at a site.
    fn reload(&mut self, values: &[ValType]) -> Result<(), Error> {
        for l in self.value_locals(values) {
            self.ins(Instruction::LocalGet(l));
        }
        Ok(())
    }

    /// Opens one block per call site that saves no operand values, outside the body: such a
    /// site's check branches out to its block's end, where the unwind path of the site is
    /// (written by [`Emitter::close_pads`]). The check is then a plain conditional branch
    /// that leaves the call's results where they are, with no block around them: on wasmi,
    /// an `if` carrying the operand stack costs copies.
    fn open_pads(&mut self, items: &[Item<'_>]) -> Vec<u32> {
        fn collect(items: &[Item<'_>], out: &mut Vec<u32>) {
            for item in items {
                match item {
                    Item::Op(_) => {}
                    Item::Site(s) => {
                        if matches!(s.kind, SiteKind::Callee | SiteKind::Indirect { .. })
                            && s.below.is_empty()
                        {
                            out.push(s.id);
                        }
                    }
                    Item::Block(b) => {
                        collect(&b.body, out);
                        if let Some(e) = &b.else_body {
                            collect(e, out);
                        }
                    }
                }
            }
        }
        let mut sites = Vec::new();
        collect(items, &mut sites);
        self.pads.clear();
        for &site in &sites {
            let label = self.open_added(BlockType::Empty);
            self.pads.insert(site, label);
        }
        sites
    }

    /// Closes the blocks of [`Emitter::open_pads`], innermost first, each followed by its
    /// site's unwind path. Reached only by the checks' branches.
    fn close_pads(&mut self, sites: &[u32]) -> Result<(), Error> {
        for &site in sites.iter().rev() {
            self.end();
            self.save_and_unwind(site, &[])?;
        }
        self.pads.clear();
        Ok(())
    }

    /// After a call that may unwind: if unwinding, save and leave.
    fn unwind_check(&mut self, site: &Site<'_>) -> Result<(), Error> {
        if let Some(&pad) = self.pads.get(&site.id) {
            self.ins(Instruction::GlobalGet(self.ctx.state));
            let d = self.depth_of(pad)?;
            self.ins(Instruction::BrIf(d));
            return Ok(());
        }
        let saved = site.saved();
        let on_stack = [site.below.as_slice(), &site.results].concat();
        let bt = self.ctx.types.block(&on_stack, &on_stack)?;
        self.ins(Instruction::GlobalGet(self.ctx.state));
        self.ins(Instruction::If(bt));
        self.labels.push(Some(u32::MAX));
        if !matches!(site.kind, SiteKind::Point) {
            for _ in &site.results {
                self.ins(Instruction::Drop);
            }
        }
        self.save_and_unwind(site.id, &saved)?;
        self.end();
        Ok(())
    }

    /// Spends one unit of budget, in its local or its global, and leaves whether a yield is
    /// due: the budget is at or below zero (it stays so while a pause must be deferred).
    fn spend_budget(&mut self) {
        let b = self.budget_local.expect("safepoints enabled");
        let g = self.ctx.budget.expect("safepoints enabled");
        self.ins(if self.budget_in_local {
            Instruction::LocalGet(b)
        } else {
            Instruction::GlobalGet(g)
        });
        self.ins(Instruction::I32Const(1));
        self.ins(Instruction::I32Sub);
        self.ins(Instruction::LocalTee(b));
        if !self.budget_in_local {
            self.ins(Instruction::GlobalSet(g));
            self.ins(Instruction::LocalGet(b));
        }
        self.ins(Instruction::I32Const(0));
        self.ins(Instruction::I32LeS);
    }

    /// The slow path of a safepoint whose test branched out of the loop `again` it re-enters:
    /// when a pause must be deferred, the budget is set to `__tabi_nopause + extra` (at least
    /// 1 after the test that follows) and the code runs on through `again`; else it yields.
    fn defer_or_yield(&mut self, sp: &Site<'_>, again: u32, extra: i32) -> Result<(), Error> {
        self.ins(Instruction::GlobalGet(self.ctx.nopause));
        self.ins(Instruction::If(BlockType::Empty));
        self.labels.push(Some(u32::MAX));
        self.ins(Instruction::GlobalGet(self.ctx.nopause));
        if extra != 0 {
            self.ins(Instruction::I32Const(extra));
            self.ins(Instruction::I32Add);
        }
        self.ins(if self.budget_in_local {
            Instruction::LocalSet(self.budget_local.expect("safepoints enabled"))
        } else {
            Instruction::GlobalSet(self.ctx.budget.expect("safepoints enabled"))
        });
        self.ins(Instruction::Br(self.depth_of(again)?));
        self.end();
        self.yield_at(sp)
    }

    fn safepoint(&mut self, site: &Site<'_>) -> Result<(), Error> {
        let b = self.budget_local.expect("safepoints enabled");
        if let Some((id, label)) = self.slow_exit
            && id == site.id
        {
            // Tests the budget before spending it: the loop carries one value, and the test
            // is a compare and a branch.
            self.slow_exit = None;
            self.ins(Instruction::LocalGet(b));
            self.ins(Instruction::I32Const(1));
            self.ins(Instruction::I32LtS);
            self.ins(Instruction::BrIf(self.depth_of(label)?));
            self.ins(Instruction::LocalGet(b));
            self.ins(Instruction::I32Const(1));
            self.ins(Instruction::I32Sub);
            self.ins(Instruction::LocalSet(b));
            return Ok(());
        }
        self.spend_budget();
        let bt = match site.below.as_slice() {
            [] => BlockType::Empty,
            b => BlockType::FunctionType(self.ctx.types.index(b, b)),
        };
        self.ins(Instruction::If(bt));
        self.labels.push(Some(u32::MAX));
        // Not inside a function that cannot return: there the stack cannot be saved.
        self.ins(Instruction::GlobalGet(self.ctx.nopause));
        self.ins(Instruction::BrIf(0));
        self.yield_at(site)?;
        self.end();
        Ok(())
    }

    /// The test of a function's entry safepoint whose slow path is the end of block `slow`
    /// (see [`Emitter::body`]): spends one unit of budget and branches out at or below zero.
    ///
    /// ```text
    /// block $unwind  loop $again  block $slow
    ///   [budget := budget - 1; br_if $slow if at or below zero]
    ///   block (result R) body end  return
    /// end
    /// if deferred: budget := __tabi_nopause + 1, br $again (the test passes once)
    /// else: unwind at the safepoint
    /// end end  epilogue
    /// ```
    ///
    /// Inline, the slow path sat between the test and the body, so the normal path jumped
    /// over it, and the code generator moved the instance pointer between registers around
    /// it (recursive fib: 8.8 added instructions per call on wasmtime, 8.3 with this).
    fn entry_test(&mut self, slow: u32) -> Result<(), Error> {
        self.spend_budget();
        self.ins(Instruction::BrIf(self.depth_of(slow)?));
        Ok(())
    }

    /// A safepoint's yield: write the budget back, set the state to unwinding, and unwind.
    fn yield_at(&mut self, site: &Site<'_>) -> Result<(), Error> {
        self.store_budget();
        self.ins(Instruction::I32Const(crate::UNWINDING));
        self.ins(Instruction::GlobalSet(self.ctx.state));
        self.save_and_unwind(site.id, &site.below)
    }

    /// The budget's local and global, when the budget is kept in the local.
    fn budget_pair(&self) -> Option<(u32, u32)> {
        match (self.budget_in_local, self.budget_local, self.ctx.budget) {
            (true, Some(l), Some(g)) => Some((l, g)),
            _ => None,
        }
    }

    fn load_budget(&mut self) {
        if let Some((l, g)) = self.budget_pair() {
            self.ins(Instruction::GlobalGet(g));
            self.ins(Instruction::LocalSet(l));
        }
    }

    fn store_budget(&mut self) {
        if let Some((l, g)) = self.budget_pair() {
            self.ins(Instruction::LocalGet(l));
            self.ins(Instruction::GlobalSet(g));
        }
    }

    fn op(&mut self, op: &Operator<'_>) -> Result<(), Error> {
        if matches!(
            op,
            Operator::Return
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. }
        ) {
            self.store_budget();
        }
        let i = match op {
            Operator::Br { relative_depth } => Instruction::Br(self.map_depth(*relative_depth)?),
            Operator::BrIf { relative_depth } => {
                Instruction::BrIf(self.map_depth(*relative_depth)?)
            }
            Operator::BrOnNull { relative_depth } => {
                Instruction::BrOnNull(self.map_depth(*relative_depth)?)
            }
            Operator::BrOnNonNull { relative_depth } => {
                Instruction::BrOnNonNull(self.map_depth(*relative_depth)?)
            }
            Operator::BrTable { targets } => {
                let mut ts = Vec::with_capacity(targets.len() as usize);
                for t in targets.targets() {
                    ts.push(self.map_depth(t?)?);
                }
                let default = self.map_depth(targets.default())?;
                Instruction::BrTable(ts.into(), default)
            }
            Operator::BrOnCast { .. } | Operator::BrOnCastFail { .. } => {
                return Err(unsupported(Some(self.func), "GC br_on_cast"));
            }
            op => RoundtripReencoder
                .instruction(op.clone())
                .map_err(|e| Error::Internal(e.to_string()))?,
        };
        self.ins(i);
        Ok(())
    }

    fn block_header(&mut self, b: &Block<'_>) -> Result<(), Error> {
        let bt = RoundtripReencoder
            .block_type(b.blockty)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.ins(match b.kind {
            Kind::Block => Instruction::Block(bt),
            Kind::Loop => Instruction::Loop(bt),
            Kind::If => Instruction::If(bt),
        });
        self.labels.push(None);
        Ok(())
    }

    /// Emits a block that holds sites: its header, its levels, its end.
    ///
    /// A loop that starts with a safepoint keeps only the safepoint's test inside it; the slow
    /// path sits outside, so that the loop body has no path back from it. (A path back into
    /// the loop from the slow path kept Cranelift from hoisting loop-invariant loads, such as
    /// the linear memory's base, and cost registers in the loop.)
    ///
    /// ```text
    /// block $exit (result R)  loop $again (result R)  block $slow
    ///   loop  [budget test: br_if $slow]  body  end
    ///   br $exit
    /// end
    /// if deferred: budget := __tabi_nopause (≥ 1), br $again (the test passes once, the
    ///   body runs once)
    /// else: unwind at the safepoint
    /// end end
    /// ```
    fn site_block(&mut self, b: &Block<'_>) -> Result<(), Error> {
        let slow = match b.leading_safepoint().filter(|_| self.budget_in_local) {
            Some(sp) => {
                let bt = self.ctx.types.block(&[], &b.results)?;
                let exit = self.open_added(bt);
                let again = self.open_added_as(Instruction::Loop(bt));
                let slow = self.open_added(BlockType::Empty);
                self.slow_exit = Some((sp.id, slow));
                Some((sp, exit, again))
            }
            None => None,
        };
        self.block_header(b)?;
        if let Some(sp) = b.lone_safepoint() {
            self.safepoint(sp)?;
            self.plain(&b.body[1..])?;
        } else {
            self.level(&b.body, &b.param_locals, false)?;
            if let Some(e) = &b.else_body {
                self.ins(Instruction::Else);
                self.level(e, &b.param_locals, false)?;
            }
        }
        self.end();
        if let Some((sp, exit, again)) = slow {
            if self.slow_exit.take().is_some() {
                return Err(Error::Internal("a loop's safepoint was not emitted".into()));
            }
            self.ins(Instruction::Br(self.depth_of(exit)?));
            self.end(); // $slow
            // The loop's test compares before it spends: `__tabi_nopause` passes once.
            self.defer_or_yield(sp, again, 0)?;
            self.end(); // $again
            self.end(); // $exit
        }
        Ok(())
    }

    fn plain(&mut self, items: &[Item<'_>]) -> Result<(), Error> {
        for item in items {
            match item {
                Item::Op(op) => self.op(op)?,
                Item::Block(b) => {
                    self.block_header(b)?;
                    self.plain(&b.body)?;
                    if let Some(e) = &b.else_body {
                        self.ins(Instruction::Else);
                        self.plain(e)?;
                    }
                    self.end();
                }
                Item::Site(_) => return Err(Error::Internal("site in a plain level".into())),
            }
        }
        Ok(())
    }

    /// Emits one nesting level; its parameters (if any) arrive in `param_locals`' order. The
    /// function's top level (`top`) also reloads the frame when rewinding.
    fn level(&mut self, items: &[Item<'_>], param_locals: &[u32], top: bool) -> Result<(), Error> {
        let js: Vec<usize> = (0..items.len()).filter(|&i| items[i].has_site()).collect();
        if js.is_empty() {
            return self.plain(items);
        }
        // A nested level whose only item with sites comes first, with nothing on the stack
        // before it: resuming falls into that item just as the dispatch would branch to it,
        // so the level has no dispatch (and its normal path no check).
        if let (false, [0], [], Item::Block(b)) = (top, js.as_slice(), param_locals, &items[0])
            && b.kind != Kind::If
            && b.params.is_empty()
            && b.below.is_empty()
            && b.lone_safepoint().is_none()
        {
            self.site_block(b)?;
            return self.plain(&items[1..]);
        }
        for &l in param_locals.iter().rev() {
            self.ins(Instruction::LocalSet(l));
        }
        // The values on this level's stack when execution reaches item j.
        let mut ts = Vec::with_capacity(js.len());
        for &j in &js {
            ts.push(match &items[j] {
                Item::Site(s) => match s.kind {
                    SiteKind::Callee | SiteKind::Indirect { .. } => {
                        [s.below.as_slice(), &s.args].concat()
                    }
                    SiteKind::Point => [s.below.as_slice(), &s.results].concat(),
                    SiteKind::Safepoint => s.below.clone(),
                },
                Item::Block(b) if b.kind == Kind::If => {
                    [b.params.as_slice(), &[ValType::I32]].concat()
                }
                Item::Block(b) => b.params.clone(),
                Item::Op(_) => unreachable!("only items with sites"),
            });
        }
        let mut ls = vec![0u32; js.len()];
        for k in (0..js.len()).rev() {
            let bt = self.ctx.types.block(&[], &ts[k])?;
            ls[k] = self.open_added(bt);
        }

        // Dispatch (only in code that can rewind): one group per (item, arm); each site
        // number maps to its group.
        if self.rewinds {
            struct Group {
                item: usize,
                arm: Option<bool>,
            }
            let mut groups: Vec<Group> = Vec::new();
            let mut site_group: Vec<u32> = Vec::new();
            let first = match &items[js[0]] {
                Item::Site(s) => s.id,
                Item::Block(b) => b.sites.0,
                Item::Op(_) => unreachable!(),
            };
            for (k, &j) in js.iter().enumerate() {
                match &items[j] {
                    Item::Site(_) => {
                        site_group.push(groups.len() as u32);
                        groups.push(Group { item: k, arm: None });
                    }
                    Item::Block(b) => {
                        let arms: &[(Option<bool>, (u32, u32))] = if b.kind == Kind::If {
                            &[(Some(true), b.sites), (Some(false), b.else_sites)]
                        } else {
                            &[(None, (b.sites.0, b.else_sites.1.max(b.sites.1)))]
                        };
                        for &(arm, (lo, hi)) in arms {
                            if lo < hi {
                                for _ in lo..hi {
                                    site_group.push(groups.len() as u32);
                                }
                                groups.push(Group { item: k, arm });
                            }
                        }
                    }
                    Item::Op(_) => unreachable!(),
                }
            }
            let dispatch = self.open_added(BlockType::Empty);
            // The top level tests the state; a nested level tests the site local, which is
            // non-zero only from the top level's dispatch until the frame reaches its site: a
            // register instead of a load of the global each time the level is entered.
            if top {
                self.ins(Instruction::GlobalGet(self.ctx.state));
            } else {
                self.ins(Instruction::LocalGet(self.site_local));
            }
            self.ins(Instruction::I32Eqz);
            self.ins(Instruction::BrIf(self.depth_of(dispatch)?));
            if top {
                self.restore_frame()?;
            }
            let mut gl = vec![0u32; groups.len()];
            for g in (0..groups.len()).rev() {
                gl[g] = self.open_added(BlockType::Empty);
            }
            let trap = self.open_added(BlockType::Empty);
            self.ins(Instruction::LocalGet(self.site_local));
            self.ins(Instruction::I32Const(first.wrapping_add(1) as i32));
            self.ins(Instruction::I32Sub);
            let mut targets = Vec::with_capacity(site_group.len());
            for &g in &site_group {
                targets.push(self.depth_of(gl[g as usize])?);
            }
            let default = self.depth_of(trap)?;
            self.ins(Instruction::BrTable(targets.into(), default));
            self.end();
            self.ins(Instruction::Unreachable);
            for (g, group) in groups.iter().enumerate() {
                self.end();
                debug_assert_eq!(
                    self.labels.last(),
                    Some(&Some(gl.get(g + 1).copied().unwrap_or(dispatch)))
                );
                match &items[js[group.item]] {
                    Item::Site(s) => match s.kind {
                        SiteKind::Callee | SiteKind::Indirect { .. } => {
                            self.reached_site();
                            self.reload_needs(s.id)?;
                            self.reload(&s.below)?;
                            let n = s.args.len();
                            for (i, &a) in s.args.iter().enumerate() {
                                match s.kind {
                                    SiteKind::Indirect { index_local } if i + 1 == n => {
                                        self.ins(Instruction::LocalGet(index_local))
                                    }
                                    _ => self.placeholder(a)?,
                                }
                            }
                        }
                        SiteKind::Point | SiteKind::Safepoint => {
                            self.reached_site();
                            self.reload_needs(s.id)?;
                            self.reload(&s.saved())?;
                            self.ins(Instruction::I32Const(crate::NORMAL));
                            self.ins(Instruction::GlobalSet(self.ctx.state));
                        }
                    },
                    Item::Block(b) => {
                        if let Some(sp) = b.lone_safepoint() {
                            self.reached_site();
                            self.reload_needs(sp.id)?;
                            self.reload(&sp.below)?;
                            self.ins(Instruction::I32Const(crate::NORMAL));
                            self.ins(Instruction::GlobalSet(self.ctx.state));
                            // The loop's check runs again on entry; one more unit of budget keeps
                            // it from firing at once (with a budget of 1 it would never progress).
                            let bl = self.budget_local.expect("safepoints enabled");
                            self.ins(Instruction::LocalGet(bl));
                            self.ins(Instruction::I32Const(1));
                            self.ins(Instruction::I32Add);
                            self.ins(Instruction::LocalSet(bl));
                        } else {
                            let params = b.param_locals.clone();
                            self.reload_late(|l| params.contains(&l))?;
                            for &l in &b.param_locals {
                                self.ins(Instruction::LocalGet(l));
                            }
                        }
                        if let Some(arm) = group.arm {
                            self.ins(Instruction::I32Const(i32::from(arm)));
                        }
                    }
                    Item::Op(_) => unreachable!(),
                }
                let d = self.depth_of(ls[group.item])?;
                self.ins(Instruction::Br(d));
            }
            self.end(); // dispatch
        }
        for &l in param_locals {
            self.ins(Instruction::LocalGet(l));
        }

        let mut prev = 0;
        for (k, &j) in js.iter().enumerate() {
            self.plain(&items[prev..j])?;
            prev = j + 1;
            // The part of item j inside $L_k.
            match &items[j] {
                Item::Site(s) => match s.kind {
                    SiteKind::Callee => {}
                    SiteKind::Indirect { index_local } => {
                        self.ins(Instruction::LocalTee(index_local))
                    }
                    SiteKind::Point => {
                        self.op(s.op.as_ref().expect("call"))?;
                        self.unwind_check(s)?;
                    }
                    SiteKind::Safepoint => self.safepoint(s)?,
                },
                Item::Block(b) => {
                    if !b.below.is_empty() {
                        if let Some(c) = b.cond_local {
                            self.ins(Instruction::LocalSet(c));
                        }
                        for &l in b.param_locals.iter().rev() {
                            self.ins(Instruction::LocalSet(l));
                        }
                        for &l in b.below_locals.iter().rev() {
                            self.ins(Instruction::LocalSet(l));
                        }
                        for &l in &b.param_locals {
                            self.ins(Instruction::LocalGet(l));
                        }
                        if let Some(c) = b.cond_local {
                            self.ins(Instruction::LocalGet(c));
                        }
                    }
                }
                Item::Op(_) => unreachable!(),
            }
            self.end(); // $L_k
            debug_assert!(k < ls.len());
            // The part after $L_k.
            match &items[j] {
                Item::Site(s) => {
                    if matches!(s.kind, SiteKind::Callee | SiteKind::Indirect { .. }) {
                        self.store_budget();
                        self.site_call(s)?;
                        self.unwind_check(s)?;
                        self.load_budget();
                    }
                }
                Item::Block(b) => {
                    self.site_block(b)?;
                    // Put the values moved into locals back under the block's results.
                    if !b.below.is_empty() {
                        for &l in b.result_locals.iter().rev() {
                            self.ins(Instruction::LocalSet(l));
                        }
                        for &l in &b.below_locals {
                            self.ins(Instruction::LocalGet(l));
                        }
                        for &l in &b.result_locals {
                            self.ins(Instruction::LocalGet(l));
                        }
                    }
                }
                Item::Op(_) => unreachable!(),
            }
        }
        self.plain(&items[prev..])
    }
}
