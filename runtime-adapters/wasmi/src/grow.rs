//! `memory.grow` and `table.grow` as host calls.
//!
//! wasmi 2.0 runs a guest by chaining its instruction handlers through tail calls, and the
//! handlers of `memory.grow` and `table.grow` are the ones whose call to the next handler
//! stays an ordinary call on stable Rust. Each such instruction then leaves a host stack frame
//! until the guest returns to the host, so a guest that grows in a loop (even by zero pages)
//! overflows the host thread's stack within some ten thousand iterations and aborts the whole
//! process. A module that uses either instruction is therefore rewritten before wasmi compiles
//! it: each becomes `i32.const INDEX ; call $helper`, where the helper is an import of
//! [`MODULE`] that grows the memory or table through wasmi's API and returns to the handler
//! chain without a frame left behind. The memories and tables are exported under
//! [`memory_export`] and [`table_export`] names for the helper to find them.
//!
//! Everything else keeps its meaning: functions keep their order (the helpers are imported
//! after the module's own imports, so only defined functions' indices move, and every
//! reference to them moves with them), and the guest's state is the same as on wasmtime.
//! 64-bit memories and tables (wasmi runs them with its `memory64` feature) have helpers of
//! their own, whose sizes are `i64`.
//!
//! The rewrite reads each function body once and copies its bytes, re-encoding only calls,
//! `ref.func` and the grow instructions; for the 155 KB file-churn guest it adds ~1 ms to
//! wasmi's (lazy) compilation of ~0.9 ms. A module that turns out to grow nothing is compiled
//! as it was given.

use std::borrow::Cow;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    EntityType, ExportKind, ExportSection, ImportSection, Instruction, SectionId, TypeSection,
    ValType,
};
use wasmparser::{Operator, Parser, Payload, RefType, TypeRef};

/// Import module of the helpers.
pub(crate) const MODULE: &str = "__tabi_wasmi";
/// `(delta: i32, memory: i32) -> i32`
pub(crate) const MEMORY_GROW: &str = "memory_grow";
/// `(init: funcref, delta: i32, table: i32) -> i32`
pub(crate) const TABLE_GROW_FUNCREF: &str = "table_grow_funcref";
/// `(init: externref, delta: i32, table: i32) -> i32`
pub(crate) const TABLE_GROW_EXTERNREF: &str = "table_grow_externref";
/// `(delta: i64, memory: i32) -> i64`, for a 64-bit memory.
pub(crate) const MEMORY_GROW64: &str = "memory_grow64";
/// `(init: funcref, delta: i64, table: i32) -> i64`, for a 64-bit table.
pub(crate) const TABLE_GROW_FUNCREF64: &str = "table_grow_funcref64";
/// `(init: externref, delta: i64, table: i32) -> i64`, for a 64-bit table.
pub(crate) const TABLE_GROW_EXTERNREF64: &str = "table_grow_externref64";

/// The export under which the helper finds memory `index`.
pub(crate) fn memory_export(index: u32) -> String {
    format!("__tabi_wasmi_memory_{index}")
}

/// The export under which the helper finds table `index`.
pub(crate) fn table_export(index: u32) -> String {
    format!("__tabi_wasmi_table_{index}")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Helper {
    Memory,
    TableFunc,
    TableExtern,
    Memory64,
    TableFunc64,
    TableExtern64,
}

impl Helper {
    /// Every helper, in import order: a rewritten module imports all of them, so that the
    /// shift of defined functions is known before any body is read.
    const ALL: [Helper; 6] = [
        Helper::Memory,
        Helper::TableFunc,
        Helper::TableExtern,
        Helper::Memory64,
        Helper::TableFunc64,
        Helper::TableExtern64,
    ];

    fn name(self) -> &'static str {
        match self {
            Helper::Memory => MEMORY_GROW,
            Helper::TableFunc => TABLE_GROW_FUNCREF,
            Helper::TableExtern => TABLE_GROW_EXTERNREF,
            Helper::Memory64 => MEMORY_GROW64,
            Helper::TableFunc64 => TABLE_GROW_FUNCREF64,
            Helper::TableExtern64 => TABLE_GROW_EXTERNREF64,
        }
    }

    fn signature(self) -> (Vec<ValType>, Vec<ValType>) {
        let init = match self {
            Helper::Memory | Helper::Memory64 => None,
            Helper::TableFunc | Helper::TableFunc64 => Some(ValType::FUNCREF),
            Helper::TableExtern | Helper::TableExtern64 => Some(ValType::EXTERNREF),
        };
        let size = match self {
            Helper::Memory | Helper::TableFunc | Helper::TableExtern => ValType::I32,
            Helper::Memory64 | Helper::TableFunc64 | Helper::TableExtern64 => ValType::I64,
        };
        let params = init.into_iter().chain([size, ValType::I32]).collect();
        (params, vec![size])
    }

    /// The helper that grows a memory of type `ty`.
    fn for_memory(ty: &wasmparser::MemoryType) -> Helper {
        if ty.memory64 {
            Helper::Memory64
        } else {
            Helper::Memory
        }
    }

    /// The helper that grows a table of type `ty`, if it can be rewritten.
    fn for_table(ty: &wasmparser::TableType) -> Option<Helper> {
        match (ty.element_type, ty.table64) {
            (RefType::FUNCREF, false) => Some(Helper::TableFunc),
            (RefType::EXTERNREF, false) => Some(Helper::TableExtern),
            (RefType::FUNCREF, true) => Some(Helper::TableFunc64),
            (RefType::EXTERNREF, true) => Some(Helper::TableExtern64),
            _ => None,
        }
    }
}

/// What the module's headers say, read before it is rewritten.
#[derive(Default)]
struct Plan {
    types: u32,
    func_imports: u32,
    /// Per memory (imported first): the helper that grows it.
    memories: Vec<Helper>,
    /// Per table (imported first): the helper that grows it, if its growth is rewritten.
    tables: Vec<Option<Helper>>,
}

impl Plan {
    fn helper_index(&self, h: Helper) -> u32 {
        let pos = Helper::ALL
            .iter()
            .position(|&x| x == h)
            .expect("every helper");
        self.func_imports + pos as u32
    }
}

/// Rewrites `wasm` as the module documentation says; `None` when it grows nothing (or is
/// malformed, which wasmi then reports itself).
pub(crate) fn rewrite(wasm: &[u8]) -> Option<Vec<u8>> {
    let plan = plan(wasm).ok()?;
    if plan.memories.is_empty() && plan.tables.iter().all(Option::is_none) {
        return None;
    }
    let mut module = wasm_encoder::Module::new();
    let mut r = Rewriter {
        wasm,
        plan: &plan,
        grows: false,
        types_done: false,
        imports_done: false,
        exports_done: false,
    };
    r.parse_core_module(&mut module, Parser::new(0), wasm)
        .ok()?;
    // Bodies are read once, while being rewritten: only then is it known whether any grows.
    r.grows.then(|| module.finish())
}

/// Reads the headers: no function body is parsed here.
fn plan(wasm: &[u8]) -> Result<Plan, wasmparser::BinaryReaderError> {
    let mut p = Plan::default();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::TypeSection(s) => {
                for g in s {
                    p.types += g?.types().len() as u32;
                }
            }
            Payload::ImportSection(s) => {
                for i in s.into_imports() {
                    match i?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => p.func_imports += 1,
                        TypeRef::Memory(m) => p.memories.push(Helper::for_memory(&m)),
                        TypeRef::Table(t) => p.tables.push(Helper::for_table(&t)),
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(s) => {
                for m in s {
                    p.memories.push(Helper::for_memory(&m?));
                }
            }
            Payload::TableSection(s) => {
                for t in s {
                    p.tables.push(Helper::for_table(&t?.ty));
                }
            }
            // Function bodies come after every header.
            Payload::CodeSectionStart { .. } => break,
            // A component: wasmi refuses it; left as it is.
            Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => return Ok(Plan::default()),
            _ => {}
        }
    }
    Ok(p)
}

struct Rewriter<'a> {
    /// The module being rewritten: bodies are copied from it as they are, but for the
    /// instructions that change.
    wasm: &'a [u8],
    plan: &'a Plan,
    /// Whether a body used a grow instruction that was rewritten.
    grows: bool,
    types_done: bool,
    imports_done: bool,
    exports_done: bool,
}

type RResult<T> = Result<T, reencode::Error>;

impl Rewriter<'_> {
    fn add_types(&self, types: &mut TypeSection) {
        for h in Helper::ALL {
            let (params, results) = h.signature();
            types.ty().function(params, results);
        }
    }

    fn add_imports(&self, imports: &mut ImportSection) {
        for (i, h) in Helper::ALL.iter().enumerate() {
            let ty = self.plan.types + i as u32;
            imports.import(MODULE, h.name(), EntityType::Function(ty));
        }
    }

    /// Every memory and table whose growth is rewritten, whether or not a body grows it.
    fn add_exports(&self, exports: &mut ExportSection) {
        for m in 0..self.plan.memories.len() as u32 {
            exports.export(&memory_export(m), ExportKind::Memory, m);
        }
        for (t, _) in (0u32..).zip(&self.plan.tables).filter(|(_, h)| h.is_some()) {
            exports.export(&table_export(t), ExportKind::Table, t);
        }
    }

    /// A defined function's index after the helpers' imports.
    fn moved(&self, func: u32) -> u32 {
        if func < self.plan.func_imports {
            func
        } else {
            func + Helper::ALL.len() as u32
        }
    }

    /// What replaces `op`, when it changes.
    fn replacement(&mut self, op: &Operator<'_>) -> Option<[Option<Instruction<'static>>; 2]> {
        let p = self.plan;
        let grow = |h: Helper, index: u32| {
            Some([
                Some(Instruction::I32Const(index as i32)),
                Some(Instruction::Call(p.helper_index(h))),
            ])
        };
        let r = match *op {
            Operator::Call { function_index } if function_index >= p.func_imports => {
                return Some([Some(Instruction::Call(self.moved(function_index))), None]);
            }
            Operator::ReturnCall { function_index } if function_index >= p.func_imports => {
                return Some([
                    Some(Instruction::ReturnCall(self.moved(function_index))),
                    None,
                ]);
            }
            Operator::RefFunc { function_index } if function_index >= p.func_imports => {
                return Some([Some(Instruction::RefFunc(self.moved(function_index))), None]);
            }
            Operator::MemoryGrow { mem } => match p.memories.get(mem as usize) {
                Some(&h) => grow(h, mem),
                None => None,
            },
            Operator::TableGrow { table } => match p.tables.get(table as usize) {
                Some(&Some(h)) => grow(h, table),
                _ => None,
            },
            _ => None,
        };
        self.grows |= r.is_some();
        r
    }
}

/// A section's place in a module (ids are not in that order: `DataCount` and `Tag`).
fn position(id: SectionId) -> u8 {
    match id {
        SectionId::Custom => 0,
        SectionId::Type => 1,
        SectionId::Import => 2,
        SectionId::Function => 3,
        SectionId::Table => 4,
        SectionId::Memory => 5,
        SectionId::Tag => 6,
        SectionId::Global => 7,
        SectionId::Export => 8,
        SectionId::Start => 9,
        SectionId::Element => 10,
        SectionId::DataCount => 11,
        SectionId::Code => 12,
        SectionId::Data => 13,
    }
}

impl Reencode for Rewriter<'_> {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> RResult<u32> {
        Ok(self.moved(func))
    }

    fn parse_type_section(
        &mut self,
        types: &mut TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> RResult<()> {
        reencode::utils::parse_type_section(self, types, section)?;
        self.add_types(types);
        self.types_done = true;
        Ok(())
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> RResult<()> {
        reencode::utils::parse_import_section(self, imports, section)?;
        self.add_imports(imports);
        self.imports_done = true;
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> RResult<()> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.add_exports(exports);
        self.exports_done = true;
        Ok(())
    }

    /// Adds the type, import or export section a module without one needs, in its place.
    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> RResult<()> {
        let due = |id: SectionId| before.is_none_or(|b| position(b) > position(id));
        if !self.types_done && due(SectionId::Type) {
            let mut s = TypeSection::new();
            self.add_types(&mut s);
            module.section(&s);
            self.types_done = true;
        }
        if !self.imports_done && due(SectionId::Import) {
            let mut s = ImportSection::new();
            self.add_imports(&mut s);
            module.section(&s);
            self.imports_done = true;
        }
        if !self.exports_done && due(SectionId::Export) {
            let mut s = ExportSection::new();
            self.add_exports(&mut s);
            module.section(&s);
            self.exports_done = true;
        }
        Ok(())
    }

    /// Copies the body's bytes, re-encoding only the instructions that name a defined
    /// function or grow.
    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> RResult<()> {
        let mut f = self.new_function_with_parsed_locals(&func)?;
        let mut ops = func.get_operators_reader()?;
        let mut copied = ops.original_position();
        while !ops.eof() {
            let at = ops.original_position();
            let op = ops.read()?;
            if let Some(new) = self.replacement(&op) {
                f.raw(self.wasm[copied..at].iter().copied());
                for i in new.iter().flatten() {
                    f.instruction(i);
                }
                copied = ops.original_position();
            }
        }
        f.raw(self.wasm[copied..ops.original_position()].iter().copied());
        code.function(&f);
        Ok(())
    }

    /// Function names move with their functions; other custom sections are copied.
    fn parse_custom_section(
        &mut self,
        module: &mut wasm_encoder::Module,
        section: wasmparser::CustomSectionReader<'_>,
    ) -> RResult<()> {
        match section.as_known() {
            wasmparser::KnownCustom::Name(_) => {
                reencode::utils::parse_custom_section(self, module, section)
            }
            // Other sections that name functions by index (branch hints) would point at the
            // wrong ones; wasmi reads none of them.
            _ if section.name().starts_with("metadata.code.") => Ok(()),
            _ => {
                module.section(&wasm_encoder::CustomSection {
                    name: Cow::Borrowed(section.name()),
                    data: Cow::Borrowed(section.data()),
                });
                Ok(())
            }
        }
    }
}
