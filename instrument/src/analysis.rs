//! Reads and validates the input module and decides which functions to rewrite.
//!
//! The call graph has a node per function and a node per distinct `(function type, table)` pair
//! used by `call_indirect` (and per type used by `call_ref`); such a node's edges go to every
//! function that could be found there. A function is rewritten when a migration point (or, with
//! safepoints, a loop or a recursive call) is reachable from it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use wasmparser::{
    CompositeInnerType, ElementItems, ElementKind, ExternalKind, FuncToValidate, FuncType,
    FunctionBody, Operator, Parser, Payload, TypeRef, ValidPayload, Validator, ValidatorResources,
};

use crate::{Error, Options, unsupported};

/// A raw section of the input.
pub(crate) struct Section {
    /// Section id (0 for custom sections).
    pub id: u8,
    /// The section's contents, without id and size.
    pub range: Range<usize>,
}

/// A call target class, as the rewrite sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Callee {
    /// Cannot reach a migration point: an ordinary call.
    Plain,
    /// A migration point import: pause after it returns.
    Point,
    /// A rewritten function: it may unwind, and is called again on rewind.
    Instrumented,
}

/// What the rewrite needs to know about the input.
pub(crate) struct Module<'a> {
    pub sections: Vec<Section>,
    /// Function type of each type index (`None` for other composite types).
    pub types: Vec<Option<FuncType>>,
    /// Number of entries (recursion groups) in the type section.
    pub type_entries: u32,
    /// Type index of each function, imports first.
    pub func_types: Vec<u32>,
    pub imported_funcs: u32,
    pub globals: u32,
    pub memories: u32,
    pub tables: u32,
    pub export_names: BTreeSet<String>,
    pub start: Option<u32>,
    /// Whether any function writes a table (`table.set`, `grow`, `fill`, `copy`, `init`).
    pub writes_tables: bool,
    /// Per function: the class of a direct call to it.
    pub callee: Vec<Callee>,
    /// Per function: gets an entry safepoint.
    pub recursive: Vec<bool>,
    /// Per function: cannot return (a loop-free body whose every path traps or calls such a
    /// function) and can reach a migration point. Calls of it are not sites; on entry it
    /// raises the no-pause counter instead, for pauses cannot be taken inside it.
    pub guard: Vec<bool>,
    /// Per function: can be called from outside the module's direct calls (exported, the
    /// start function, or a function value in a table, a global or `ref.func`).
    pub escapes: Vec<bool>,
    /// Threads the work on function bodies is shared out among.
    pub threads: usize,
    /// `(canonical type, table)` pairs whose `call_indirect` may reach a rewritten function.
    pub indirect_hits: BTreeSet<(u32, u32)>,
    /// Canonical types whose `call_ref` may reach a rewritten function.
    pub ref_hits: BTreeSet<u32>,
    /// Some function tail-calls (`return_call`, `return_call_indirect`) a function that can
    /// unwind: its frame is then gone while its callee's is saved, so every frame records the
    /// function it belongs to (see `rewrite::Emitter::tail_dispatch`).
    pub tail_calls: bool,
    /// Canonical type id of each type index (equal function types share one).
    pub canon: Vec<u32>,
    /// Each defined function's body and validator.
    pub bodies: Vec<(FunctionBody<'a>, FuncToValidate<ValidatorResources>)>,
}

/// The control shape of a loop-free body, enough to tell whether its end can be reached.
enum Ev {
    Block,
    If,
    Else,
    End,
    Br(u32),
    BrIf(u32),
    BrTable(Vec<u32>),
    Return,
    Stop,
    /// `throw`, `throw_ref` or `rethrow`: leaves the function, to a handler in a caller if
    /// the module has any, else to the host as a trap.
    Throw,
    Call(u32),
}

/// Per-function facts gathered by one pass over its operators.
#[derive(Default)]
struct Scan {
    /// The control shape, for bodies without loops.
    shape: Vec<Ev>,
    calls: Vec<u32>,
    indirect: Vec<(u32, u32)>,
    /// The targets of `return_call` and the `(type, table)` of `return_call_indirect`.
    tail_calls: Vec<u32>,
    tail_indirect: Vec<(u32, u32)>,
    refs: Vec<u32>,
    ref_funcs: Vec<u32>,
    mutated_tables: Vec<u32>,
    has_loop: bool,
    /// Holds a `try` or a `try_table` with a catch clause: an exception can be caught here.
    catches: bool,
}

fn scan(body: &FunctionBody<'_>) -> Result<Scan, Error> {
    let mut s = Scan::default();
    let mut reader = body.get_operators_reader()?;
    while !reader.eof() {
        let op = reader.read()?;
        match &op {
            Operator::Try { .. } => s.catches = true,
            Operator::TryTable { try_table } => s.catches |= !try_table.catches.is_empty(),
            _ => {}
        }
        if !s.has_loop {
            let ev = match &op {
                Operator::TryTable { try_table } => {
                    // A throw inside may branch to any catch label, which names a label
                    // outside the `try_table`: count them as taken where it is entered.
                    for c in &try_table.catches {
                        let (wasmparser::Catch::One { label, .. }
                        | wasmparser::Catch::OneRef { label, .. }
                        | wasmparser::Catch::All { label }
                        | wasmparser::Catch::AllRef { label }) = c;
                        s.shape.push(Ev::BrIf(*label));
                    }
                    Some(Ev::Block)
                }
                Operator::Block { .. } | Operator::Try { .. } => Some(Ev::Block),
                Operator::If { .. } => Some(Ev::If),
                Operator::Else | Operator::Catch { .. } | Operator::CatchAll => Some(Ev::Else),
                Operator::End | Operator::Delegate { .. } => Some(Ev::End),
                Operator::Br { relative_depth } => Some(Ev::Br(*relative_depth)),
                Operator::BrIf { relative_depth }
                | Operator::BrOnNull { relative_depth }
                | Operator::BrOnNonNull { relative_depth }
                | Operator::BrOnCast { relative_depth, .. }
                | Operator::BrOnCastFail { relative_depth, .. } => Some(Ev::BrIf(*relative_depth)),
                Operator::BrTable { targets } => {
                    let mut t: Vec<u32> = targets.targets().collect::<Result<_, _>>()?;
                    t.push(targets.default());
                    Some(Ev::BrTable(t))
                }
                Operator::Return
                | Operator::ReturnCall { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::ReturnCallRef { .. } => Some(Ev::Return),
                Operator::Unreachable => Some(Ev::Stop),
                Operator::Throw { .. } | Operator::ThrowRef | Operator::Rethrow { .. } => {
                    Some(Ev::Throw)
                }
                Operator::Call { function_index } => Some(Ev::Call(*function_index)),
                // Other operators do not change control flow.
                _ => None,
            };
            if let Some(ev) = ev {
                s.shape.push(ev);
            }
        }
        match op {
            Operator::Call { function_index } => s.calls.push(function_index),
            Operator::ReturnCall { function_index } => {
                s.calls.push(function_index);
                s.tail_calls.push(function_index);
            }
            Operator::CallIndirect {
                type_index,
                table_index,
            } => s.indirect.push((type_index, table_index)),
            Operator::ReturnCallIndirect {
                type_index,
                table_index,
            } => {
                s.indirect.push((type_index, table_index));
                s.tail_indirect.push((type_index, table_index));
            }
            Operator::CallRef { type_index } | Operator::ReturnCallRef { type_index } => {
                s.refs.push(type_index)
            }
            Operator::RefFunc { function_index } => s.ref_funcs.push(function_index),
            Operator::TableSet { table }
            | Operator::TableGrow { table }
            | Operator::TableFill { table }
            | Operator::TableInit { table, .. } => s.mutated_tables.push(table),
            Operator::TableCopy { dst_table, .. } => s.mutated_tables.push(dst_table),
            Operator::Loop { .. } => {
                s.has_loop = true;
                s.shape = Vec::new();
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Whether a loop-free body of this shape can return, given which functions cannot.
///
/// With `catches` (some function of the module can catch an exception), a throw counts as a
/// return: control may come back to a caller's handler, so the function must not be treated
/// as one that never gives control back (its no-pause guard would never be lowered).
fn can_return(shape: &[Ev], noreturn: &[bool], catches: bool) -> bool {
    struct Frame {
        is_if: bool,
        entry_live: bool,
        then_end: Option<bool>,
        targeted: bool,
    }
    let mut frames = vec![Frame {
        is_if: false,
        entry_live: true,
        then_end: None,
        targeted: false,
    }];
    let mut live = true;
    let target = |frames: &mut Vec<Frame>, d: u32| {
        let n = frames.len();
        if let Some(f) = (d as usize).checked_add(1).and_then(|d| n.checked_sub(d)) {
            frames[f].targeted = true;
        }
    };
    for ev in shape {
        match ev {
            Ev::Block | Ev::If => frames.push(Frame {
                is_if: matches!(ev, Ev::If),
                entry_live: live,
                then_end: None,
                targeted: false,
            }),
            // An `else`, or a `catch` of a legacy `try` (one frame may have several).
            Ev::Else => {
                if let Some(f) = frames.last_mut() {
                    f.then_end = Some(live || f.then_end.unwrap_or(false));
                    live = f.entry_live;
                }
            }
            Ev::End => {
                let Some(f) = frames.pop() else { break };
                let fallthrough = match (f.is_if, f.then_end) {
                    (true, None) => live || f.entry_live,
                    (_, Some(t)) => live || t,
                    (false, None) => live,
                };
                live = fallthrough || f.targeted;
                if frames.is_empty() {
                    return live;
                }
            }
            Ev::Br(d) => {
                if live {
                    target(&mut frames, *d);
                }
                live = false;
            }
            Ev::BrIf(d) => {
                if live {
                    target(&mut frames, *d);
                }
            }
            Ev::BrTable(ds) => {
                if live {
                    for d in ds {
                        target(&mut frames, *d);
                    }
                }
                live = false;
            }
            Ev::Return => {
                if live {
                    return true;
                }
            }
            Ev::Stop => live = false,
            Ev::Throw => {
                if live && catches {
                    return true;
                }
                live = false;
            }
            Ev::Call(f) => {
                if noreturn.get(*f as usize).copied().unwrap_or(false) {
                    live = false;
                }
            }
        }
    }
    // A branch to the function's own label returns too.
    live || frames.first().is_some_and(|f| f.targeted)
}

/// Reverse reachability from `seeds` over `edges`, not entering nodes for which `skip` holds.
fn reach(edges: &[Vec<usize>], seeds: &[usize], skip: &dyn Fn(usize) -> bool) -> Vec<bool> {
    let mut callers: Vec<Vec<usize>> = vec![Vec::new(); edges.len()];
    for (from, es) in edges.iter().enumerate() {
        for &to in es {
            if !skip(to) {
                callers[to].push(from);
            }
        }
    }
    let mut reaches = vec![false; edges.len()];
    let mut work = Vec::new();
    for &s in seeds {
        if !reaches[s] {
            reaches[s] = true;
            work.push(s);
        }
    }
    while let Some(n) = work.pop() {
        for &c in &callers[n] {
            if !reaches[c] {
                reaches[c] = true;
                work.push(c);
            }
        }
    }
    reaches
}

fn const_expr_funcs(expr: &wasmparser::ConstExpr<'_>, out: &mut Vec<u32>) -> Result<(), Error> {
    let mut r = expr.get_operators_reader();
    while !r.eof() {
        if let Operator::RefFunc { function_index } = r.read()? {
            out.push(function_index);
        }
    }
    Ok(())
}

impl<'a> Module<'a> {
    /// Validates `wasm` and gathers what the rewrite needs. Work on function bodies, here and
    /// after, runs on `threads` threads, or as many as the size of the code is worth
    /// ([`crate::parallel::threads_for`]).
    pub fn parse(
        wasm: &'a [u8],
        options: &Options,
        threads: Option<usize>,
    ) -> Result<Module<'a>, Error> {
        let mut validator = Validator::new_with_features(crate::features());
        let mut m = Module {
            sections: Vec::new(),
            types: Vec::new(),
            type_entries: 0,
            func_types: Vec::new(),
            imported_funcs: 0,
            globals: 0,
            memories: 0,
            tables: 0,
            export_names: BTreeSet::new(),
            start: None,
            writes_tables: false,
            callee: Vec::new(),
            recursive: Vec::new(),
            guard: Vec::new(),
            escapes: Vec::new(),
            threads: 1,
            indirect_hits: BTreeSet::new(),
            tail_calls: false,
            ref_hits: BTreeSet::new(),
            canon: Vec::new(),
            bodies: Vec::new(),
        };
        let mut import_names: Vec<(String, String)> = Vec::new();
        let mut imported_tables = BTreeSet::new();
        let mut exported_tables = BTreeSet::new();
        let mut exported_funcs = Vec::new();
        // Functions placed in tables by segments (`Some(table)` for active ones).
        let mut elem_funcs: Vec<(Option<u32>, u32)> = Vec::new();
        let mut global_ref_funcs = Vec::new();

        for payload in Parser::new(0).parse_all(wasm) {
            let payload = payload?;
            match validator.payload(&payload)? {
                ValidPayload::Func(func, body) => m.bodies.push((body, func)),
                ValidPayload::End(_) => {}
                ValidPayload::Ok | ValidPayload::Parser(_) => {}
            }
            if let Some((id, range)) = payload.as_section() {
                // Code entries are visited one by one; the code section itself is recorded once.
                m.sections.push(Section { id, range });
            }
            match payload {
                Payload::Version {
                    encoding: wasmparser::Encoding::Component,
                    ..
                } => return Err(unsupported(None, "components (only core modules are)")),
                Payload::TypeSection(r) => {
                    m.type_entries = r.count();
                    for group in r {
                        for ty in group?.into_types() {
                            match ty.composite_type.inner {
                                CompositeInnerType::Func(f) if !ty.composite_type.shared => {
                                    m.types.push(Some(f))
                                }
                                _ => {
                                    return Err(unsupported(
                                        None,
                                        "GC, shared or continuation types in the type section",
                                    ));
                                }
                            }
                        }
                    }
                }
                Payload::ImportSection(r) => {
                    for imp in r.into_imports() {
                        let imp = imp?;
                        match imp.ty {
                            TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                                m.func_types.push(t);
                                import_names.push((imp.module.to_string(), imp.name.to_string()));
                            }
                            TypeRef::Global(_) => m.globals += 1,
                            TypeRef::Memory(_) => m.memories += 1,
                            TypeRef::Table(_) => {
                                imported_tables.insert(m.tables);
                                m.tables += 1
                            }
                            TypeRef::Tag(_) => {}
                        }
                    }
                    m.imported_funcs = m.func_types.len() as u32;
                }
                Payload::FunctionSection(r) => {
                    for t in r {
                        m.func_types.push(t?);
                    }
                }
                Payload::TableSection(r) => {
                    for t in r {
                        if let wasmparser::TableInit::Expr(e) = t?.init {
                            const_expr_funcs(&e, &mut global_ref_funcs)?;
                        }
                        m.tables += 1;
                    }
                }
                Payload::MemorySection(r) => m.memories += r.count(),
                Payload::GlobalSection(r) => {
                    for g in r {
                        const_expr_funcs(&g?.init_expr, &mut global_ref_funcs)?;
                        m.globals += 1;
                    }
                }
                Payload::ExportSection(r) => {
                    for e in r {
                        let e = e?;
                        m.export_names.insert(e.name.to_string());
                        match e.kind {
                            ExternalKind::Table => {
                                exported_tables.insert(e.index);
                            }
                            ExternalKind::Func | ExternalKind::FuncExact => {
                                exported_funcs.push(e.index)
                            }
                            _ => {}
                        }
                    }
                }
                Payload::StartSection { func, .. } => m.start = Some(func),
                Payload::ElementSection(r) => {
                    for e in r {
                        let e = e?;
                        let table = match e.kind {
                            ElementKind::Active { table_index, .. } => {
                                Some(table_index.unwrap_or(0))
                            }
                            _ => None,
                        };
                        match e.items {
                            ElementItems::Functions(fs) => {
                                for f in fs {
                                    elem_funcs.push((table, f?));
                                }
                            }
                            ElementItems::Expressions(_, es) => {
                                for ex in es {
                                    let mut fs = Vec::new();
                                    const_expr_funcs(&ex?, &mut fs)?;
                                    elem_funcs.extend(fs.into_iter().map(|f| (table, f)));
                                }
                            }
                        }
                    }
                }
                Payload::CustomSection(c) if c.name() == crate::MANIFEST_SECTION => {
                    return Err(unsupported(
                        None,
                        "the module is already instrumented by tabi",
                    ));
                }
                _ => {}
            }
        }

        // Canonical ids for function types: equal signatures share one.
        let mut seen: BTreeMap<(Vec<wasmparser::ValType>, Vec<wasmparser::ValType>), u32> =
            BTreeMap::new();
        for ty in &m.types {
            let key = ty
                .as_ref()
                .map(|f| (f.params().to_vec(), f.results().to_vec()))
                .unwrap_or_default();
            let next = seen.len() as u32;
            m.canon.push(*seen.entry(key).or_insert(next));
        }

        let nfuncs = m.func_types.len();
        let code_bytes = m.bodies.iter().map(|(b, _)| b.range().len()).sum();
        m.threads = threads.unwrap_or_else(|| crate::parallel::threads_for(code_bytes));
        let (scanned, _) = crate::parallel::run(
            m.bodies.iter().map(|(body, _)| body).collect(),
            m.threads,
            crate::parallel::Stack::Any,
            || (),
            |(), body| scan(body),
        );
        let mut scans = Vec::with_capacity(m.bodies.len());
        for (_, s) in scanned {
            scans.push(s?);
        }

        // Where a migration point import escapes as a value, calling it indirectly would
        // bypass the rewrite's "pause after the call" handling.
        let is_point: Vec<bool> = (0..nfuncs)
            .map(|f| {
                import_names
                    .get(f)
                    .is_some_and(|(module, name)| options.is_point(module, name))
            })
            .collect();
        let mut escaping: BTreeSet<u32> = elem_funcs.iter().map(|&(_, f)| f).collect();
        escaping.extend(global_ref_funcs.iter().copied());
        for s in &scans {
            escaping.extend(s.ref_funcs.iter().copied());
        }
        if let Some(&f) = escaping.iter().find(|&&f| is_point[f as usize]) {
            let (module, name) = &import_names[f as usize];
            return Err(unsupported(
                None,
                format!(
                    "migration point import `{module}.{name}` is used as a function value \
                     (in a table or by ref.func); it can only be called directly"
                ),
            ));
        }
        escaping.extend(exported_funcs.iter().copied());
        m.escapes = (0..nfuncs as u32)
            .map(|f| escaping.contains(&f) || m.start == Some(f))
            .collect();

        let mut open_tables: BTreeSet<u32> = imported_tables;
        open_tables.extend(exported_tables);
        for s in &scans {
            open_tables.extend(s.mutated_tables.iter().copied());
            m.writes_tables |= !s.mutated_tables.is_empty();
        }

        // The call graph: function nodes, then one node per indirect (type, table) pair and per
        // call_ref type.
        let canon_of = |f: u32| m.canon[m.func_types[f as usize] as usize];
        let mut pair_nodes: BTreeMap<(u32, u32), usize> = BTreeMap::new();
        let mut ref_nodes: BTreeMap<u32, usize> = BTreeMap::new();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); nfuncs];
        for (i, s) in scans.iter().enumerate() {
            let f = m.imported_funcs as usize + i;
            for &g in &s.calls {
                edges[f].push(g as usize);
            }
            for &(ty, table) in &s.indirect {
                let key = (m.canon[ty as usize], table);
                let node = *pair_nodes.entry(key).or_insert_with(|| {
                    edges.push(Vec::new());
                    edges.len() - 1
                });
                edges[f].push(node);
            }
            for &ty in &s.refs {
                let key = m.canon[ty as usize];
                let node = *ref_nodes.entry(key).or_insert_with(|| {
                    edges.push(Vec::new());
                    edges.len() - 1
                });
                edges[f].push(node);
            }
        }
        for (&(ty, table), &node) in &pair_nodes {
            let targets: Vec<usize> = if open_tables.contains(&table) {
                escaping
                    .iter()
                    .filter(|&&g| canon_of(g) == ty)
                    .map(|&g| g as usize)
                    .collect()
            } else {
                elem_funcs
                    .iter()
                    .filter(|&&(t, g)| t == Some(table) && canon_of(g) == ty)
                    .map(|&(_, g)| g as usize)
                    .collect()
            };
            edges[node] = targets;
        }
        for (&ty, &node) in &ref_nodes {
            edges[node] = escaping
                .iter()
                .filter(|&&g| canon_of(g) == ty)
                .map(|&g| g as usize)
                .collect();
        }
        for e in &mut edges {
            e.sort_unstable();
            e.dedup();
        }

        m.recursive = vec![false; nfuncs];
        if options.safepoints {
            let comp = strongly_connected(&edges);
            let mut size = vec![0usize; edges.len()];
            for &c in &comp {
                size[c] += 1;
            }
            for f in m.imported_funcs as usize..nfuncs {
                m.recursive[f] = size[comp[f]] > 1 || edges[f].contains(&f);
            }
        }

        // Functions that cannot return: proc_exit, and loop-free bodies that cannot reach
        // their end (a greatest fixpoint: assume they cannot, then drop those that can).
        let imported = m.imported_funcs as usize;
        let catches = scans.iter().any(|s| s.catches);
        let mut noreturn: Vec<bool> = (0..nfuncs)
            .map(|f| {
                if f < imported {
                    import_names[f].0 == "wasi_snapshot_preview1"
                        && import_names[f].1 == "proc_exit"
                } else {
                    !scans[f - imported].has_loop
                }
            })
            .collect();
        loop {
            let mut changed = false;
            for f in imported..nfuncs {
                if noreturn[f] && can_return(&scans[f - imported].shape, &noreturn, catches) {
                    noreturn[f] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }

        // A no-return function whose direct callers are all such functions as well (the chain
        // from an entry to a `main` that ends in `exit`, entered through an export, the start
        // function or an indirect call, which never count on a callee not returning) is
        // rewritten like any other: the calls that rely on it never returning are made only by
        // functions rewritten with it. Left as it is, it would keep pauses off for the whole run.
        // The rest (panic and abort paths, called from everywhere) stay barriers. A greatest
        // fixpoint: assume every no-return function that can run is entered so, then drop
        // those with another direct caller.
        // (The call graph's edges to functions, not to indirect-call nodes, are direct calls.)
        let mut direct_callers: Vec<Vec<usize>> = vec![Vec::new(); nfuncs];
        for (f, es) in edges.iter().enumerate().take(nfuncs) {
            for &g in es.iter().filter(|&&g| g < nfuncs) {
                direct_callers[g].push(f);
            }
        }
        // Roots: functions entered from outside. One with no callers at all is never run, and
        // stays as it is.
        let mut entered: Vec<bool> = (0..nfuncs)
            .map(|f| {
                noreturn[f] && f >= imported && (m.escapes[f] || !direct_callers[f].is_empty())
            })
            .collect();
        loop {
            let mut changed = false;
            for f in imported..nfuncs {
                if entered[f] && direct_callers[f].iter().any(|&c| !entered[c]) {
                    entered[f] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let barrier: Vec<bool> = (0..nfuncs).map(|f| noreturn[f] && !entered[f]).collect();

        // Reverse reachability from the seeds, through calls that can return; and through any.
        let seeds: Vec<usize> = (0..nfuncs)
            .filter(|&f| {
                let defined = f >= imported;
                is_point[f]
                    || (options.safepoints
                        && defined
                        && !barrier[f]
                        && (scans[f - imported].has_loop || m.recursive[f]))
            })
            .collect();
        let is_barrier = |n: usize| n < nfuncs && barrier[n];
        let reaches = reach(&edges, &seeds, &is_barrier);
        let reaches_any = reach(&edges, &seeds, &|_| false);
        m.guard = (0..nfuncs)
            .map(|f| f >= imported && barrier[f] && reaches_any[f])
            .collect();
        m.callee = (0..nfuncs)
            .map(|f| match (reaches[f], f < m.imported_funcs as usize) {
                (false, _) => Callee::Plain,
                (true, true) if is_point[f] => Callee::Point,
                // An import reached only through a cycle cannot be one; imports have no edges.
                (true, true) => Callee::Plain,
                (true, false) if barrier[f] => Callee::Plain,
                (true, false) => Callee::Instrumented,
            })
            .collect();
        m.indirect_hits = pair_nodes
            .iter()
            .filter(|&(_, &n)| reaches[n])
            .map(|(&k, _)| k)
            .collect();
        m.ref_hits = ref_nodes
            .iter()
            .filter(|&(_, &n)| reaches[n])
            .map(|(&k, _)| k)
            .collect();
        m.tail_calls = scans.iter().enumerate().any(|(i, s)| {
            m.callee[imported + i] == Callee::Instrumented
                && (s
                    .tail_calls
                    .iter()
                    .any(|&g| m.callee[g as usize] == Callee::Instrumented)
                    || s.tail_indirect
                        .iter()
                        .any(|&(ty, t)| m.indirect_hits.contains(&(m.canon[ty as usize], t))))
        });
        Ok(m)
    }
}

/// Tarjan's algorithm without recursion: the component id of each node.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<usize> {
    const NONE: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![NONE; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![NONE; n];
    let mut stack = Vec::new();
    let mut next_index = 0;
    let mut next_comp = 0;
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if let Some(&w) = edges[v].get(*i) {
                *i += 1;
                if index[w] == NONE {
                    index[w] = next_index;
                    low[w] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = next_comp;
                        if w == v {
                            break;
                        }
                    }
                    next_comp += 1;
                }
            }
        }
    }
    comp
}
