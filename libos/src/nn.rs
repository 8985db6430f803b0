//! The `wasi_ephemeral_nn` ABI (wasi-nn 0.6, as wasmtime's witx defines it), served from the
//! kernel for every engine.
//!
//! The guest's graphs, execution contexts and models are the kernel's [`tabi_nn::NnState`],
//! plain data in its snapshot; inference is the [`Host`]'s [`tabi_nn::Backend`]
//! ([`Host::nn`]). Each function takes the kernel, the host, the guest's memory and the raw
//! Wasm arguments of the import of the same name, and returns the `nn_errno`. A bad guest
//! pointer is `invalid_argument`, where wasmtime traps. On a host without a backend, every
//! model is `invalid_encoding` and every name `not_found`.
//!
//! [`for_each_nn_function!`](crate::for_each_nn_function) lists the imports, so an adapter
//! registers them as it registers preview 1.

#![allow(
    clippy::too_many_arguments,
    reason = "each function takes the Wasm arguments of the import it implements"
)]

use crate::errno::Trap;
use crate::host::Host;
use crate::kernel::Kernel;
use tabi_nn::{Backend, NoBackend, abi};

/// The import module name.
pub const MODULE: &str = abi::MODULE;

/// Calls `$m!` with every `wasi_ephemeral_nn` function as `name(arg: type, ...);`; every
/// argument is `i32` and every function returns the `i32` errno, the import's Wasm signature.
#[macro_export]
macro_rules! for_each_nn_function {
    ($m:ident) => {
        $m! {
            load(builders: i32, builders_len: i32, encoding: i32, target: i32, graph_out: i32);
            load_by_name(name: i32, name_len: i32, graph_out: i32);
            load_by_name_with_config(name: i32, name_len: i32, config: i32, config_len: i32, graph_out: i32);
            init_execution_context(graph: i32, context_out: i32);
            set_input(context: i32, index: i32, tensor: i32);
            compute(context: i32);
            get_output(context: i32, index: i32, out: i32, out_max: i32, size_out: i32);
        }
    };
}

macro_rules! define_entry_points {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ); )*) => {
        $(
            #[doc = concat!("The `", stringify!($name), "` import: returns the `nn_errno`, or a trap.")]
            pub fn $name(
                k: &mut Kernel,
                h: &mut dyn Host,
                mem: &mut [u8],
                $($arg: $ty),*
            ) -> Result<i32, Trap> {
                crate::p1::guarded(stringify!($name), || {
                    k.settle(h);
                    Ok(imp::$name(k, h, mem, $($arg as u32),*))
                })
            }
        )*

        /// Names of every `wasi_ephemeral_nn` import tabi provides.
        pub const NAMES: &[&str] = &[$(stringify!($name),)*];
    };
}

for_each_nn_function!(define_entry_points);

/// Runs `f` with the host's backend, or one that serves nothing.
fn with_backend<T>(h: &mut dyn Host, f: impl FnOnce(&mut dyn Backend) -> T) -> T {
    match h.nn() {
        Some(b) => f(b),
        None => f(&mut NoBackend),
    }
}

mod imp {
    use super::*;

    pub fn load(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        builders: u32,
        builders_len: u32,
        encoding: u32,
        target: u32,
        graph_out: u32,
    ) -> i32 {
        let (nn, limits) = k.nn_mut();
        with_backend(h, |b| {
            abi::load(
                nn,
                b,
                &limits,
                mem,
                builders,
                builders_len,
                encoding,
                target,
                graph_out,
            )
        })
    }

    pub fn load_by_name(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        name: u32,
        name_len: u32,
        graph_out: u32,
    ) -> i32 {
        let (nn, limits) = k.nn_mut();
        with_backend(h, |b| {
            abi::load_by_name(nn, b, &limits, mem, name, name_len, graph_out)
        })
    }

    pub fn load_by_name_with_config(
        k: &mut Kernel,
        h: &mut dyn Host,
        mem: &mut [u8],
        name: u32,
        name_len: u32,
        config: u32,
        config_len: u32,
        graph_out: u32,
    ) -> i32 {
        let (nn, limits) = k.nn_mut();
        with_backend(h, |b| {
            abi::load_by_name_with_config(
                nn, b, &limits, mem, name, name_len, config, config_len, graph_out,
            )
        })
    }

    pub fn init_execution_context(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        graph: u32,
        context_out: u32,
    ) -> i32 {
        let (nn, limits) = k.nn_mut();
        abi::init_execution_context(nn, &limits, mem, graph, context_out)
    }

    pub fn set_input(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        context: u32,
        index: u32,
        tensor: u32,
    ) -> i32 {
        let (nn, limits) = k.nn_mut();
        abi::set_input(nn, &limits, mem, context, index, tensor)
    }

    pub fn compute(k: &mut Kernel, h: &mut dyn Host, _: &mut [u8], context: u32) -> i32 {
        let (nn, limits) = k.nn_mut();
        with_backend(h, |b| abi::compute(nn, b, &limits, context))
    }

    pub fn get_output(
        k: &mut Kernel,
        _: &mut dyn Host,
        mem: &mut [u8],
        context: u32,
        index: u32,
        out: u32,
        out_max: u32,
        size_out: u32,
    ) -> i32 {
        abi::get_output(k.nn(), mem, context, index, out, out_max, size_out)
    }
}
