//! Puts the output module together.
//!
//! No index of the input changes: the added types, functions, memory and globals come after the
//! input's own, so untouched sections and function bodies are copied byte for byte, and vector
//! sections that grow keep their entries' bytes and get new entries appended.

use std::collections::BTreeMap;

use wasm_encoder::{ConstExpr, Encode, ExportKind, GlobalType, Instruction, MemoryType, ValType};
use wasmparser::BinaryReader;

use crate::analysis::{Callee, Module};
use crate::parallel;
use crate::rewrite::{Ctx, Fixup, Rewritten, Types, rewrite};
use crate::{Error, Manifest, Options, Output, unsupported};

const TYPE: u8 = 1;
const FUNCTION: u8 = 3;
const TABLE: u8 = 4;
const MEMORY: u8 = 5;
const GLOBAL: u8 = 6;
const EXPORT: u8 = 7;
const START: u8 = 8;
const ELEMENT: u8 = 9;
const CODE: u8 = 10;

/// Position of a section id in the order the binary format requires.
fn rank(id: u8) -> u8 {
    match id {
        1..=5 => id,
        13 => 6,
        6..=9 => id + 1,
        12 => 11,
        10 => 12,
        11 => 13,
        _ => 0,
    }
}

/// The count of a vector section and the bytes of its entries.
fn split_vec(data: &[u8]) -> Result<(u32, &[u8]), Error> {
    if data.is_empty() {
        return Ok((0, data));
    }
    let mut r = BinaryReader::new(data, 0);
    let n = r.read_var_u32()?;
    Ok((n, &data[r.original_position()..]))
}

fn section(out: &mut Vec<u8>, id: u8, data: &[u8]) {
    out.push(id);
    data.len().encode(out);
    out.extend_from_slice(data);
}

/// `count + added` entries: the input's entry bytes, then `extra`.
fn grown(original: &[u8], added: u32, extra: &[u8]) -> Result<Vec<u8>, Error> {
    let (n, entries) = split_vec(original)?;
    let mut d = Vec::with_capacity(original.len() + extra.len() + 5);
    n.checked_add(added)
        .ok_or_else(|| Error::Invalid("section too large".into()))?
        .encode(&mut d);
    d.extend_from_slice(entries);
    d.extend_from_slice(extra);
    Ok(d)
}

/// Builds the output from the parsed input. Function bodies are rewritten on `m.threads`
/// threads; the output is the same whatever their number.
pub(crate) fn assemble(
    wasm: &[u8],
    m: &mut Module<'_>,
    options: &Options,
) -> Result<Output, Error> {
    let bodies = std::mem::take(&mut m.bodies);
    let m = &*m;
    let nfuncs = m.func_types.len() as u32;
    let state = m.globals;
    let sp = m.globals + 1;
    let nopause = m.globals + 2;
    let flags = m.globals + 3;
    let budget = options.safepoints.then_some(m.globals + 4);
    // With safepoints, each instrumented function gets a resume copy (see `rewrite`), added
    // after `reserve` in the order of the functions. (Giving copies only to functions with
    // loops or entry safepoints saved 3% of the size of the compute guest and cost 2% of the
    // churn guest's instructions on wasmtime.)
    let mut copy_of = vec![u32::MAX; nfuncs as usize];
    let mut copies = 0u32;
    if options.safepoints {
        for (f, c) in m.callee.iter().enumerate() {
            if *c == Callee::Instrumented && f >= m.imported_funcs as usize {
                copy_of[f] = nfuncs
                    .checked_add(1 + copies)
                    .ok_or_else(|| Error::Invalid("too many functions".into()))?;
                copies += 1;
            }
        }
    }
    // With tail calls that can unwind, every rewritten function gets an owner number, which
    // its frames record, and a thunk at that number in a table of its own (see
    // `Emitter::tail_dispatch`). The thunks come after the copies.
    let funcs_table = (m.writes_tables && nfuncs > 0).then_some(m.tables);
    let mut owner = vec![u32::MAX; nfuncs as usize];
    let mut owned: Vec<u32> = Vec::new();
    if m.tail_calls {
        for (f, c) in m.callee.iter().enumerate() {
            if *c == Callee::Instrumented && f >= m.imported_funcs as usize {
                owner[f] = owned.len() as u32;
                owned.push(f as u32);
            }
        }
    }
    let thunks = m
        .tail_calls
        .then(|| m.tables + u32::from(funcs_table.is_some()));
    let first_thunk = nfuncs
        .checked_add(1)
        .and_then(|n| n.checked_add(copies))
        .ok_or_else(|| Error::Invalid("too many functions".into()))?;
    let thunks_end = first_thunk
        .checked_add(owned.len() as u32)
        .ok_or_else(|| Error::Invalid("too many functions".into()))?;
    let mut ctx = Ctx {
        m,
        types: Types::new(m.types.len() as u32),
        state,
        sp,
        budget,
        nopause,
        stack_mem: m.memories,
        reserve: nfuncs,
        copy_of: &copy_of,
        thunks,
        owner: &owner,
    };
    let reserve_type = ctx.types.index(&[wasmparser::ValType::I32], &[]);
    // The thunks' types, numbered before the bodies are shared out, so that every thread
    // knows them.
    let mut thunk_types = Vec::with_capacity(owned.len());
    for &f in &owned {
        let results = func_type_of(m, f)?.results().to_vec();
        thunk_types.push(ctx.types.index(&[], &results));
    }

    // Branch hints the input carries (`metadata.code.branch_hint`), by function: still right
    // for a body copied as it is, and for one that only gets a prefix once moved past it.
    // Their sections are left out of the output, which gets one of its own.
    let mut input_hints: BTreeMap<u32, Vec<(u32, bool)>> = BTreeMap::new();
    let mut hint_sections = Vec::new();
    for (i, s) in m.sections.iter().enumerate().filter(|(_, s)| s.id == 0) {
        if let Some(hints) = branch_hints(wasm, s.range.clone()) {
            if hint_sections.is_empty() {
                input_hints = hints;
            }
            hint_sections.push(i);
        }
    }
    let mut hints = wasm_encoder::BranchHints::new();
    let mut keep_hints = |func: u32, list: Vec<(u32, bool)>, shift: u32| {
        // An offset past any body's size is no hint at all; it is dropped, not wrapped.
        let moved: Vec<_> = list
            .into_iter()
            .filter_map(|(o, taken)| {
                Some(wasm_encoder::BranchHint {
                    branch_func_offset: o.checked_add(shift)?,
                    branch_hint_value: u32::from(taken),
                })
            })
            .collect();
        hints.function_hints(func, moved);
    };

    // Function bodies: rewritten, or validated and copied.
    let mut code = Vec::new();
    let mut instrumented = 0u32;
    let mut sites = 0u32;
    let mut max_frame = 0u32;
    let mut resume_bodies: Vec<(u32, Vec<u8>)> = Vec::new();
    (bodies.len() as u32)
        .checked_add(1)
        .and_then(|n| n.checked_add(copies))
        .and_then(|n| n.checked_add(owned.len() as u32))
        .ok_or_else(|| Error::Invalid("too many functions".into()))?
        .encode(&mut code);

    // Rewritten or validated on worker threads; written here in order.
    struct Job<'b> {
        func: u32,
        body: wasmparser::FunctionBody<'b>,
        to_validate: wasmparser::FuncToValidate<wasmparser::ValidatorResources>,
        resume: Option<u32>,
    }
    let mut jobs = Vec::with_capacity(bodies.len());
    let mut order = Vec::with_capacity(bodies.len());
    for (i, (body, to_validate)) in bodies.into_iter().enumerate() {
        let func = m.imported_funcs + i as u32;
        let resume = Some(copy_of[func as usize]).filter(|&c| c != u32::MAX);
        order.push((func, body.clone()));
        jobs.push(Job {
            func,
            body,
            to_validate,
            resume,
        });
    }
    let (done, workers) = parallel::run(
        jobs,
        m.threads,
        // The rewrite recurses once per nesting level of a body.
        parallel::Stack::Deep,
        || {
            let ctx = Ctx {
                types: ctx.types.fork(),
                ..ctx.clone()
            };
            (ctx, wasmparser::FuncValidatorAllocations::default())
        },
        |(wctx, allocations), job| -> Result<Option<Rewritten>, Error> {
            if m.callee[job.func as usize] == Callee::Instrumented {
                let b = &job.body;
                rewrite(wctx, job.func, b, job.to_validate, allocations, job.resume).map(Some)
            } else {
                let mut v = job.to_validate.into_validator(std::mem::take(allocations));
                v.validate(&job.body)?;
                *allocations = v.into_allocations();
                Ok(None)
            }
        },
    );
    // Each thread's numbers for the types it added, mapped to the merged ones.
    let mut maps: Vec<Vec<u32>> = workers
        .iter()
        .map(|(w, _)| vec![u32::MAX; w.types.list.len()])
        .collect();
    for ((worker, result), (func, body)) in done.into_iter().zip(order) {
        if let Some(r) = result? {
            let (w, map) = (&workers[worker].0, &mut maps[worker]);
            for &t in &r.new_types {
                let slot = map
                    .get_mut(w.types.slot(t))
                    .ok_or_else(|| Error::Internal("a type outside its thread's list".into()))?;
                if *slot == u32::MAX {
                    let (params, results) = w.types.key(t);
                    *slot = ctx.types.index(params, results);
                }
            }
            let renumber = |t: u32| -> Result<u32, Error> {
                map.get(w.types.slot(t))
                    .copied()
                    .filter(|&g| g != u32::MAX)
                    .ok_or_else(|| Error::Internal("a type its function did not list".into()))
            };
            instrumented += 1;
            sites += r.sites;
            max_frame = max_frame.max(r.frame);
            let body = renumbered(r.body, &r.fixups, renumber)?;
            body.len().encode(&mut code);
            code.extend_from_slice(&body);
            if let Some((copy, fixups)) = r.resume_body {
                resume_bodies.push((
                    m.func_types[func as usize],
                    renumbered(copy, &fixups, renumber)?,
                ));
            }
            // The input's hints for this body point into code that is no longer there.
        } else {
            let bytes = &wasm[body.range()];
            if m.guard[func as usize] {
                // Raise the no-pause counter on entry; the body is otherwise unchanged.
                let mut locals = body.get_locals_reader()?;
                for _ in 0..locals.get_count() {
                    locals.read()?;
                }
                let split = locals.original_position() - body.range().start;
                let mut prefix = Vec::new();
                Instruction::GlobalGet(nopause).encode(&mut prefix);
                Instruction::I32Const(1).encode(&mut prefix);
                Instruction::I32Add.encode(&mut prefix);
                Instruction::GlobalSet(nopause).encode(&mut prefix);
                (bytes.len() + prefix.len()).encode(&mut code);
                code.extend_from_slice(&bytes[..split]);
                code.extend_from_slice(&prefix);
                code.extend_from_slice(&bytes[split..]);
                // Every instruction moved up by the prefix.
                if let Some(h) = input_hints.remove(&func) {
                    keep_hints(func, h, prefix.len() as u32);
                }
            } else {
                bytes.len().encode(&mut code);
                code.extend_from_slice(bytes);
                if let Some(h) = input_hints.remove(&func) {
                    keep_hints(func, h, 0);
                }
            }
        }
    }
    let reserve = reserve_body(sp, m.memories, max_frame);
    reserve.len().encode(&mut code);
    code.extend_from_slice(&reserve);
    for (_, copy) in &resume_bodies {
        copy.len().encode(&mut code);
        code.extend_from_slice(copy);
    }
    if resume_bodies.len() as u32 != copies {
        return Err(Error::Internal("resume copies miscounted".into()));
    }
    for &f in &owned {
        let target = Some(copy_of[f as usize])
            .filter(|&c| c != u32::MAX)
            .unwrap_or(f);
        let thunk = thunk_body(func_type_of(m, f)?, target, f)?;
        thunk.len().encode(&mut code);
        code.extend_from_slice(&thunk);
    }

    // Exports the host needs.
    let mut exports: Vec<(String, ExportKind, u32)> = vec![
        (crate::STATE_GLOBAL.into(), ExportKind::Global, state),
        (crate::SP_GLOBAL.into(), ExportKind::Global, sp),
        (crate::STACK_MEMORY.into(), ExportKind::Memory, m.memories),
        (crate::NOPAUSE_GLOBAL.into(), ExportKind::Global, nopause),
        (crate::FLAGS_GLOBAL.into(), ExportKind::Global, flags),
    ];
    if let Some(b) = budget {
        exports.push((crate::BUDGET_GLOBAL.into(), ExportKind::Global, b));
    }
    if let Some(s) = m.start {
        exports.push((crate::START_EXPORT.into(), ExportKind::Func, s));
    }
    for g in 0..m.globals {
        exports.push((crate::global_export(g), ExportKind::Global, g));
    }
    for mem in 0..m.memories {
        exports.push((crate::memory_export(mem), ExportKind::Memory, mem));
    }
    for t in 0..m.tables {
        exports.push((crate::table_export(t), ExportKind::Table, t));
    }
    // A guest that writes its tables gets one more, holding every function at its index, so
    // that the host can name the functions its tables hold.
    if let Some(t) = funcs_table {
        exports.push((crate::FUNCS_TABLE.into(), ExportKind::Table, t));
    }
    if let Some((name, ..)) = exports.iter().find(|(n, ..)| m.export_names.contains(n)) {
        return Err(unsupported(
            None,
            format!("the module already exports `{name}`, a name tabi reserves"),
        ));
    }
    let mut export_bytes = Vec::new();
    for (name, kind, index) in &exports {
        name.as_str().encode(&mut export_bytes);
        kind.encode(&mut export_bytes);
        index.encode(&mut export_bytes);
    }

    let mut global_bytes = Vec::new();
    let flag_bits = if m.writes_tables {
        crate::FLAG_WRITES_TABLES
    } else {
        0
    };
    let mut new_globals = vec![(state, 0, true), (sp, 0, true), (nopause, 0, true)];
    new_globals.push((flags, flag_bits, false));
    if let Some(b) = budget {
        new_globals.push((b, crate::DEFAULT_BUDGET, true));
    }
    for &(_, init, mutable) in &new_globals {
        GlobalType {
            val_type: ValType::I32,
            mutable,
            shared: false,
        }
        .encode(&mut global_bytes);
        ConstExpr::i32_const(init).encode(&mut global_bytes);
    }
    let mut memory_bytes = Vec::new();
    MemoryType {
        // Room for the largest frame above an empty stack (see `reserve_body`).
        minimum: u64::from(max_frame).div_ceil(PAGE).max(1),
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    }
    .encode(&mut memory_bytes);
    let mut function_bytes = Vec::new();
    reserve_type.encode(&mut function_bytes);
    for (ty, _) in &resume_bodies {
        ty.encode(&mut function_bytes);
    }
    for ty in &thunk_types {
        ty.encode(&mut function_bytes);
    }
    let (mut table_bytes, mut element_bytes) = (Vec::new(), Vec::new());
    if let Some(t) = funcs_table {
        // Every function at its index.
        fixed_table(&mut table_bytes, &mut element_bytes, t, 0..nfuncs);
    }
    if let Some(t) = thunks {
        fixed_table(
            &mut table_bytes,
            &mut element_bytes,
            t,
            first_thunk..thunks_end,
        );
    }
    let added_tables = u32::from(funcs_table.is_some()) + u32::from(thunks.is_some());

    let manifest = Manifest {
        version: crate::FORMAT_VERSION,
        options: options.clone(),
        original_sha256: {
            use sha2::Digest;
            sha2::Sha256::digest(wasm).into()
        },
        globals: m.globals,
        memories: m.memories,
        tables: m.tables,
        start_moved: m.start.is_some(),
        writes_tables: m.writes_tables,
        instrumented_functions: instrumented,
        sites,
    };

    let mut type_bytes = Vec::new();
    for (params, results) in &ctx.types.list {
        type_bytes.push(0x60);
        params.len().encode(&mut type_bytes);
        for &p in params {
            encode_ty(p, &mut type_bytes)?;
        }
        results.len().encode(&mut type_bytes);
        for &r in results {
            encode_ty(r, &mut type_bytes)?;
        }
    }
    let added_types = ctx.types.list.len() as u32;

    // Each section that grows, built from the input's section (or none).
    // The code section is moved, not copied: it is written once.
    let mut code = Some(code);
    let mut build = |id: u8, original: &[u8]| -> Result<Vec<u8>, Error> {
        match id {
            TYPE => grown(original, added_types, &type_bytes),
            FUNCTION => grown(original, 1 + copies + owned.len() as u32, &function_bytes),
            TABLE => grown(original, added_tables, &table_bytes),
            ELEMENT => grown(original, added_tables, &element_bytes),
            MEMORY => grown(original, 1, &memory_bytes),
            GLOBAL => grown(original, new_globals.len() as u32, &global_bytes),
            EXPORT => grown(original, exports.len() as u32, &export_bytes),
            CODE => code
                .take()
                .ok_or_else(|| Error::Internal("code section written twice".into())),
            _ => unreachable!("only growing sections"),
        }
    };
    let growing: &[u8] = if added_tables > 0 {
        &[TYPE, FUNCTION, TABLE, MEMORY, GLOBAL, EXPORT, ELEMENT, CODE]
    } else {
        &[TYPE, FUNCTION, MEMORY, GLOBAL, EXPORT, CODE]
    };

    // The kept hints go just before the code section, as the proposal asks.
    let put = |out: &mut Vec<u8>, id: u8, data: &[u8]| {
        if id == CODE && !hints.is_empty() {
            wasm_encoder::Section::append_to(&hints, out);
        }
        section(out, id, data);
    };
    let mut out = Vec::with_capacity(wasm.len() + wasm.len() / 4 + 1024);
    out.extend_from_slice(&wasm[..8]);
    let mut done: Vec<u8> = Vec::new();
    for (i, s) in m.sections.iter().enumerate() {
        let data = &wasm[s.range.clone()];
        if s.id == 0 {
            if !hint_sections.contains(&i) {
                put(&mut out, 0, data);
            }
            continue;
        }
        for &id in growing {
            if rank(id) < rank(s.id) && !done.contains(&id) {
                put(&mut out, id, &build(id, &[])?);
                done.push(id);
            }
        }
        if growing.contains(&s.id) {
            put(&mut out, s.id, &build(s.id, data)?);
        } else if s.id != START {
            put(&mut out, s.id, data);
        }
        done.push(s.id);
    }
    for &id in growing {
        if !done.contains(&id) {
            put(&mut out, id, &build(id, &[])?);
        }
    }
    let mut custom = Vec::new();
    crate::MANIFEST_SECTION.encode(&mut custom);
    custom.extend_from_slice(
        &postcard::to_allocvec(&manifest).map_err(|e| Error::Internal(e.to_string()))?,
    );
    section(&mut out, 0, &custom);
    Ok(Output {
        wasm: out,
        manifest,
    })
}

/// Name of the branch-hinting proposal's custom section.
const BRANCH_HINTS: &str = "metadata.code.branch_hint";

/// The hints of a custom section at `range` of `wasm`, by function, when it is a well-formed
/// branch-hint section; `None` for any other custom section (a malformed hint section is
/// dropped: its hints are only advice).
fn branch_hints(
    wasm: &[u8],
    range: std::ops::Range<usize>,
) -> Option<BTreeMap<u32, Vec<(u32, bool)>>> {
    let reader = BinaryReader::new(&wasm[range.clone()], range.start);
    let custom = wasmparser::CustomSectionReader::new(reader).ok()?;
    if custom.name() != BRANCH_HINTS {
        return None;
    }
    let mut out = BTreeMap::new();
    let parsed = (|| -> wasmparser::Result<()> {
        let reader = BinaryReader::new(custom.data(), custom.data_offset());
        for f in wasmparser::BranchHintSectionReader::new(reader)? {
            let f = f?;
            let mut v = Vec::new();
            for h in f.hints {
                let h = h?;
                v.push((h.func_offset, h.taken));
            }
            out.entry(f.func).or_insert(v);
        }
        Ok(())
    })();
    Some(if parsed.is_ok() { out } else { BTreeMap::new() })
}

fn encode_ty(t: wasmparser::ValType, sink: &mut Vec<u8>) -> Result<(), Error> {
    use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
    RoundtripReencoder
        .val_type(t)
        .map_err(|e| Error::Internal(e.to_string()))?
        .encode(sink);
    Ok(())
}

/// Bytes in a Wasm page.
const PAGE: u64 = 65536;

/// `body` with the type index at each of `fixups` replaced by `renumber`'s (the same bytes when
/// none changes).
fn renumbered(
    body: Vec<u8>,
    fixups: &[Fixup],
    renumber: impl Fn(u32) -> Result<u32, Error>,
) -> Result<Vec<u8>, Error> {
    let merged = fixups
        .iter()
        .map(|f| renumber(f.index))
        .collect::<Result<Vec<u32>, Error>>()?;
    if merged.iter().zip(fixups).all(|(&g, f)| g == f.index) {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() + 4 * fixups.len());
    let mut from = 0;
    for (f, g) in fixups.iter().zip(merged) {
        let piece = body
            .get(from..f.at)
            .ok_or_else(|| Error::Internal("type fixups out of order".into()))?;
        out.extend_from_slice(piece);
        wasm_encoder::BlockType::FunctionType(g).encode(&mut out);
        from = f.at + f.len;
    }
    out.extend_from_slice(
        body.get(from..)
            .ok_or_else(|| Error::Internal("type fixup past the body".into()))?,
    );
    Ok(out)
}

/// `reserve(n: i32)`: claims the `n` bytes just written above the save stack's top, and grows
/// its memory so that the largest frame (`max_frame`) fits above the new top: a frame is
/// written before it is claimed. Traps when the stack would pass 4 GiB or the memory cannot
/// grow.
fn reserve_body(sp: u32, mem: u32, max_frame: u32) -> Vec<u8> {
    let mut f = wasm_encoder::Function::new([(1, ValType::I64), (1, ValType::I32)]);
    let (n, new, grow) = (0, 1, 2);
    f.instruction(&Instruction::GlobalGet(sp))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::LocalGet(n))
        .instruction(&Instruction::I64ExtendI32U)
        .instruction(&Instruction::I64Add)
        .instruction(&Instruction::LocalTee(new))
        .instruction(&Instruction::I64Const(0xFFFF_FFFF))
        .instruction(&Instruction::I64GtU)
        .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End)
        .instruction(&Instruction::LocalGet(new))
        .instruction(&Instruction::I64Const(i64::from(max_frame) + 65535))
        .instruction(&Instruction::I64Add)
        .instruction(&Instruction::I64Const(16))
        .instruction(&Instruction::I64ShrU)
        .instruction(&Instruction::I32WrapI64)
        .instruction(&Instruction::MemorySize(mem))
        .instruction(&Instruction::I32Sub)
        .instruction(&Instruction::LocalTee(grow))
        .instruction(&Instruction::I32Const(0))
        .instruction(&Instruction::I32GtS)
        .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::LocalGet(grow))
        .instruction(&Instruction::MemoryGrow(mem))
        .instruction(&Instruction::I32Const(-1))
        .instruction(&Instruction::I32Eq)
        .instruction(&Instruction::If(wasm_encoder::BlockType::Empty))
        .instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End)
        .instruction(&Instruction::End)
        .instruction(&Instruction::LocalGet(new))
        .instruction(&Instruction::I32WrapI64)
        .instruction(&Instruction::GlobalSet(sp))
        .instruction(&Instruction::End);
    let mut out = Vec::new();
    f.encode(&mut out);
    // `Function::encode` writes the size prefix; the code section writer adds its own.
    let mut r = BinaryReader::new(&out, 0);
    let _ = r.read_var_u32();
    out[r.original_position()..].to_vec()
}

/// Table `t`, added: a funcref table exactly as long as `funcs`, which an active segment fills
/// with them in order.
fn fixed_table(
    table_bytes: &mut Vec<u8>,
    element_bytes: &mut Vec<u8>,
    t: u32,
    funcs: std::ops::Range<u32>,
) {
    let n = funcs.len() as u32;
    wasm_encoder::TableType {
        element_type: wasm_encoder::RefType::FUNCREF,
        minimum: u64::from(n),
        maximum: Some(u64::from(n)),
        table64: false,
        shared: false,
    }
    .encode(table_bytes);
    // An active segment with an explicit table: flags 2, the table, offset 0, kind funcref,
    // then the function indices.
    2u32.encode(element_bytes);
    t.encode(element_bytes);
    ConstExpr::i32_const(0).encode(element_bytes);
    element_bytes.push(0x00);
    n.encode(element_bytes);
    for f in funcs {
        f.encode(element_bytes);
    }
}

/// The function type of function `f`.
fn func_type_of<'m>(m: &'m Module<'_>, f: u32) -> Result<&'m wasmparser::FuncType, Error> {
    m.types
        .get(m.func_types[f as usize] as usize)
        .and_then(Option::as_ref)
        .ok_or_else(|| Error::Internal("a function without a function type".into()))
}

/// A resume thunk, `[] -> results`: calls `target` (function `f`'s resume copy, or `f`) with
/// placeholder arguments, which a function being rewound does not read.
fn thunk_body(ty: &wasmparser::FuncType, target: u32, f: u32) -> Result<Vec<u8>, Error> {
    let mut body = wasm_encoder::Function::new([]);
    for &p in ty.params() {
        let Some(zero) = crate::rewrite::zero_of(p)? else {
            return Err(unsupported(
                Some(f),
                "a non-nullable reference parameter in a function a tail call can unwind \
                 through",
            ));
        };
        body.instruction(&zero);
    }
    body.instruction(&Instruction::Call(target));
    body.instruction(&Instruction::End);
    let mut out = Vec::new();
    body.encode(&mut out);
    let mut r = BinaryReader::new(&out, 0);
    let _ = r.read_var_u32();
    Ok(out[r.original_position()..].to_vec())
}
