//! The `wasi_ephemeral_nn` import module over guest memory: each function takes the guest's
//! memory as bytes and its arguments as the engine passes them, and returns the `nn_errno`.
//!
//! Pointers are checked against the memory before anything is read; sizes against the
//! [`Limits`] before anything is copied. A bad pointer is `invalid_argument` (wasmtime traps
//! there). A graph builder array is `(pointer, length)` pairs; a tensor is 20 bytes:
//! dimensions pointer and count, the type byte (then three of padding), data pointer and
//! length.

use alloc::vec::Vec;

use crate::{Backend, Encoding, Limits, NnErrno, NnState, Target, Tensor, TensorType};

/// The import module's name.
pub const MODULE: &str = "wasi_ephemeral_nn";

/// Bytes of a tensor in guest memory.
pub const TENSOR_SIZE: u32 = 20;

fn slice(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], NnErrno> {
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(NnErrno::InvalidArgument)?;
    mem.get(start..end).ok_or(NnErrno::InvalidArgument)
}

fn put_u32(mem: &mut [u8], ptr: u32, v: u32) -> Result<(), NnErrno> {
    let start = ptr as usize;
    let dst = start
        .checked_add(4)
        .and_then(|end| mem.get_mut(start..end))
        .ok_or(NnErrno::InvalidArgument)?;
    dst.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

fn errno(r: Result<(), NnErrno>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => i32::from(e.raw()),
    }
}

/// `load(builders, builders_len, encoding, target, graph_out)`.
#[allow(
    clippy::too_many_arguments,
    reason = "the import's arguments, and the kernel's"
)]
pub fn load(
    nn: &mut NnState,
    backend: &mut dyn Backend,
    limits: &Limits,
    mem: &mut [u8],
    builders: u32,
    builders_len: u32,
    encoding: u32,
    target: u32,
    graph_out: u32,
) -> i32 {
    errno((|| {
        let encoding = Encoding::from_raw(encoding)?;
        let target = Target::from_raw(target)?;
        if builders_len as usize > crate::MAX_BUILDERS {
            return Err(NnErrno::InvalidArgument);
        }
        // The array itself is in memory, so its length is bounded by the memory's.
        let array = slice(
            mem,
            builders,
            builders_len
                .checked_mul(8)
                .ok_or(NnErrno::InvalidArgument)?,
        )?;
        let mut parts = Vec::with_capacity(array.len() / 8);
        for pair in array.chunks_exact(8) {
            let ptr = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let len = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            parts.push(slice(mem, ptr, len)?);
        }
        // The result's place is checked before anything is loaded.
        slice(mem, graph_out, 4)?;
        let g = nn.load(backend, &parts, encoding, target, limits)?;
        put_u32(mem, graph_out, g)
    })())
}

/// `load_by_name(name, name_len, graph_out)`: the model the host preloaded under that name
/// (the backend's [`Backend::named`]); `not_found` when it has none.
pub fn load_by_name(
    nn: &mut NnState,
    backend: &mut dyn Backend,
    limits: &Limits,
    mem: &mut [u8],
    name: u32,
    name_len: u32,
    graph_out: u32,
) -> i32 {
    errno((|| {
        let name = core::str::from_utf8(slice(mem, name, name_len)?)
            .map_err(|_| NnErrno::InvalidArgument)?;
        slice(mem, graph_out, 4)?;
        let g = nn.load_by_name(backend, name, limits)?;
        put_u32(mem, graph_out, g)
    })())
}

/// `load_by_name_with_config(name, name_len, config, config_len, graph_out)`: as
/// [`load_by_name`]; the configuration (a backend-specific string) must be readable and is
/// otherwise ignored, as tract takes none.
#[allow(
    clippy::too_many_arguments,
    reason = "the import's arguments, and the kernel's"
)]
pub fn load_by_name_with_config(
    nn: &mut NnState,
    backend: &mut dyn Backend,
    limits: &Limits,
    mem: &mut [u8],
    name: u32,
    name_len: u32,
    config: u32,
    config_len: u32,
    graph_out: u32,
) -> i32 {
    if slice(mem, config, config_len).is_err() {
        return i32::from(NnErrno::InvalidArgument.raw());
    }
    load_by_name(nn, backend, limits, mem, name, name_len, graph_out)
}

/// `init_execution_context(graph, context_out)`.
pub fn init_execution_context(
    nn: &mut NnState,
    limits: &Limits,
    mem: &mut [u8],
    graph: u32,
    out: u32,
) -> i32 {
    errno((|| {
        slice(mem, out, 4)?;
        let c = nn.init_execution_context(graph, limits)?;
        put_u32(mem, out, c)
    })())
}

/// `set_input(context, index, tensor)`.
pub fn set_input(
    nn: &mut NnState,
    limits: &Limits,
    mem: &mut [u8],
    context: u32,
    index: u32,
    tensor: u32,
) -> i32 {
    errno((|| {
        nn.check_input(context, index, 0, limits)?;
        let t = slice(mem, tensor, TENSOR_SIZE)?;
        let word = |at: usize| u32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
        let (dims_ptr, dims_len, ty, data_ptr, data_len) =
            (word(0), word(4), u32::from(t[8]), word(12), word(16));
        if dims_len > limits.dims {
            return Err(NnErrno::InvalidArgument);
        }
        let ty = TensorType::from_raw(ty)?;
        let dims_bytes = slice(
            mem,
            dims_ptr,
            dims_len.checked_mul(4).ok_or(NnErrno::InvalidArgument)?,
        )?;
        let dims: Vec<u32> = dims_bytes
            .chunks_exact(4)
            .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            .collect();
        // Checked against the type and the limits before the data is copied.
        if Tensor::byte_len(&dims, ty, limits)? != u64::from(data_len) {
            return Err(NnErrno::InvalidArgument);
        }
        nn.check_input(
            context,
            index,
            Tensor::cost_of(dims.len(), u64::from(data_len)),
            limits,
        )?;
        let data = slice(mem, data_ptr, data_len)?.to_vec();
        nn.set_input(context, index, Tensor { dims, ty, data }, limits)
    })())
}

/// `compute(context)`.
pub fn compute(nn: &mut NnState, backend: &mut dyn Backend, limits: &Limits, context: u32) -> i32 {
    errno(nn.compute(context, backend, limits))
}

/// `get_output(context, index, out, out_max, size_out)`.
#[allow(
    clippy::too_many_arguments,
    reason = "the import's arguments, and the kernel's"
)]
pub fn get_output(
    nn: &NnState,
    mem: &mut [u8],
    context: u32,
    index: u32,
    out: u32,
    out_max: u32,
    size_out: u32,
) -> i32 {
    errno((|| {
        slice(mem, size_out, 4)?;
        let start = out as usize;
        let buf = start
            .checked_add(out_max as usize)
            .and_then(|end| mem.get_mut(start..end))
            .ok_or(NnErrno::InvalidArgument)?;
        let n = nn.get_output(context, index, buf)?;
        put_u32(mem, size_out, n)
    })())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;

    /// Doubles each byte of input 0.
    struct Doubling;

    impl Backend for Doubling {
        fn check(
            &mut self,
            _: &[&[u8]],
            _: &[u8; 32],
            g: &crate::Graph,
        ) -> Result<crate::ModelInfo, NnErrno> {
            if g.encoding == Encoding::Onnx {
                Ok(crate::ModelInfo {
                    inputs: 1,
                    outputs: 1,
                })
            } else {
                Err(NnErrno::InvalidEncoding)
            }
        }
        fn compute(
            &mut self,
            _: &[&[u8]],
            _: &[u8; 32],
            _: &crate::Graph,
            inputs: &BTreeMap<u32, Tensor>,
            _: &Limits,
        ) -> Result<Vec<Tensor>, NnErrno> {
            let input = inputs.get(&0).ok_or(NnErrno::InvalidArgument)?;
            Ok(vec![Tensor {
                dims: input.dims.clone(),
                ty: input.ty,
                data: input.data.iter().map(|b| b.wrapping_mul(2)).collect(),
            }])
        }
        fn named(&mut self, name: &str) -> Option<crate::HostModel> {
            (name == "tiny").then(|| crate::HostModel {
                encoding: Encoding::Onnx,
                bytes: alloc::sync::Arc::from(&b"model"[..]),
            })
        }
    }

    fn put(mem: &mut [u8], at: usize, words: &[u32]) {
        for (i, w) in words.iter().enumerate() {
            mem[at + 4 * i..at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Every call through guest memory, and its error paths: bad enums, pointers past the
    /// memory, a tensor whose dims and bytes disagree or whose dims overflow, unknown
    /// handles, an output buffer too small.
    #[test]
    fn every_call_and_its_errors() {
        let l = Limits::default();
        let mut nn = NnState::new();
        let mut mem = vec![0u8; 4096];
        // Model bytes at 1000, builder array at 100.
        mem[1000..1005].copy_from_slice(b"model");
        put(&mut mem, 100, &[1000, 5]);
        let code = |e: NnErrno| i32::from(e.raw());
        assert_eq!(
            load(&mut nn, &mut Doubling, &l, &mut mem, 100, 1, 9, 0, 200),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(
            load(&mut nn, &mut Doubling, &l, &mut mem, 100, 1, 0, 0, 200),
            code(NnErrno::InvalidEncoding)
        );
        assert_eq!(
            load(&mut nn, &mut Doubling, &l, &mut mem, 4094, 1, 1, 0, 200),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(
            load(
                &mut nn,
                &mut Doubling,
                &l,
                &mut mem,
                100,
                u32::MAX,
                1,
                0,
                200
            ),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(
            load(&mut nn, &mut Doubling, &l, &mut mem, 100, 1, 1, 0, 4094),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(nn.models.bytes(), 0, "nothing kept from a failed load");
        assert_eq!(
            load(&mut nn, &mut Doubling, &l, &mut mem, 100, 1, 1, 0, 200),
            0
        );
        let graph = u32::from_le_bytes(mem[200..204].try_into().unwrap());

        assert_eq!(
            init_execution_context(&mut nn, &l, &mut mem, graph + 1, 204),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(init_execution_context(&mut nn, &l, &mut mem, graph, 204), 0);
        let ctx = u32::from_le_bytes(mem[204..208].try_into().unwrap());

        // A tensor at 300: dims [2, 2] at 400, type u8, data at 500 (4 bytes).
        put(&mut mem, 400, &[2, 2]);
        mem[500..504].copy_from_slice(&[1, 2, 3, 4]);
        put(&mut mem, 300, &[400, 2, 3, 500, 4]);
        assert_eq!(set_input(&mut nn, &l, &mut mem, ctx, 0, 300), 0);
        // Disagreeing length, overflowing dims, a bad type, unknown context.
        put(&mut mem, 300, &[400, 2, 3, 500, 5]);
        assert_eq!(
            set_input(&mut nn, &l, &mut mem, ctx, 0, 300),
            code(NnErrno::InvalidArgument)
        );
        put(&mut mem, 420, &[u32::MAX, u32::MAX, u32::MAX]);
        put(&mut mem, 300, &[420, 3, 2, 500, 4]);
        assert_eq!(
            set_input(&mut nn, &l, &mut mem, ctx, 0, 300),
            code(NnErrno::InvalidArgument)
        );
        put(&mut mem, 300, &[400, 2, 9, 500, 4]);
        assert_eq!(
            set_input(&mut nn, &l, &mut mem, ctx, 0, 300),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(
            set_input(&mut nn, &l, &mut mem, ctx + 1, 0, 300),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(
            set_input(&mut nn, &l, &mut mem, ctx, 0, 4090),
            code(NnErrno::InvalidArgument)
        );

        assert_eq!(
            get_output(&nn, &mut mem, ctx, 0, 600, 16, 700),
            code(NnErrno::NotFound)
        );
        assert_eq!(
            compute(&mut nn, &mut Doubling, &l, ctx + 1),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(compute(&mut nn, &mut Doubling, &l, ctx), 0);
        assert_eq!(
            get_output(&nn, &mut mem, ctx, 0, 600, 3, 700),
            code(NnErrno::TooLarge)
        );
        assert_eq!(
            get_output(&nn, &mut mem, ctx, 0, 4094, 16, 700),
            code(NnErrno::InvalidArgument)
        );
        assert_eq!(get_output(&nn, &mut mem, ctx, 0, 600, 16, 700), 0);
        assert_eq!(u32::from_le_bytes(mem[700..704].try_into().unwrap()), 4);
        assert_eq!(&mem[600..604], &[2, 4, 6, 8]);

        // By name: found, and not.
        mem[800..804].copy_from_slice(b"tiny");
        assert_eq!(
            load_by_name(&mut nn, &mut Doubling, &l, &mut mem, 800, 4, 208),
            0
        );
        assert_eq!(nn.models.iter().count(), 1, "the same bytes, held once");
        assert_eq!(
            load_by_name(&mut nn, &mut Doubling, &l, &mut mem, 800, 3, 208),
            code(NnErrno::NotFound)
        );
    }
}
