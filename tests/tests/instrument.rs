//! The instrument rewrite: hand-written modules that cover the constructs it must handle, run
//! instrumented and not, paused at every migration point and resumed on the other engine.

use std::collections::BTreeSet;

use tabi_instrument::{Error, Options, instrument};
use tabi_tests::migrate::{check_every, plain};
use tabi_tests::{Sandbox, Spec};

/// A module printing through `fd_write`, with `sched_yield` as a cheap migration point. `$out`
/// appends an i32 as decimal text to the output buffer; `$flush` writes it.
fn module(body: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $len (mut i32) (i32.const 0))
  (global $counter (mut i64) (i64.const 7))
  (table 4 funcref)
  (elem (i32.const 0) $ind_a $ind_b $pure)
  (type $ii (func (param i32) (result i32)))
  ;; point(x) = x + 1 after a migration point
  (func $point (param i32) (result i32)
    (drop (call $yield))
    (i32.add (local.get 0) (i32.const 1)))
  (func $out (param $v i32)
    (local $i i32) (local $neg i32)
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (local.set $neg (i32.const 1)) (local.set $v (i32.sub (i32.const 0) (local.get $v)))))
    ;; write digits backwards into 1000..1016, then copy forwards
    (local.set $i (i32.const 1016))
    (loop $digits
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digits (local.get $v)))
    (if (local.get $neg) (then
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.const 45))))
    (memory.copy (i32.add (i32.const 2048) (global.get $len)) (local.get $i) (i32.sub (i32.const 1016) (local.get $i)))
    (global.set $len (i32.add (global.get $len) (i32.sub (i32.const 1016) (local.get $i))))
    (i32.store8 (i32.add (i32.const 2048) (global.get $len)) (i32.const 10))
    (global.set $len (i32.add (global.get $len) (i32.const 1))))
  (func $flush
    (i32.store (i32.const 0) (i32.const 2048))
    (i32.store (i32.const 4) (global.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (global.set $len (i32.const 0)))
  (func $ind_a (param i32) (result i32) (call $point (i32.mul (local.get 0) (i32.const 3))))
  (func $ind_b (param i32) (result i32) (i32.sub (call $point (local.get 0)) (i32.const 100)))
  (func $pure (param i32) (result i32) (i32.mul (local.get 0) (local.get 0)))
  {body}
)"#
    );
    wat::parse_str(text).unwrap()
}

fn spec() -> Spec {
    Spec::new("wat").sandbox(Sandbox::None)
}

/// `wasm` rewritten with safepoints.
fn rewrite_with_safepoints(wasm: &[u8]) -> tabi_instrument::Output {
    let options = Options {
        safepoints: true,
        ..Options::default()
    };
    instrument(wasm, &options).unwrap()
}

/// Each construct: plain output equals instrumented output, and every pause point resumes
/// correctly across engines.
fn check(body: &str, min_points: u64) {
    let wasm = module(body);
    let expected = plain(&spec(), &wasm);
    assert_eq!(expected.outcome.code, Some(0), "{expected:?}");
    let out = instrument(&wasm, &Options::default()).unwrap();
    assert_eq!(plain(&spec(), &out.wasm), expected);
    // With safepoints and a budget of 1-3, the guest yields at almost every loop header and
    // recursive call, and each yield is rewound in place.
    let sp = rewrite_with_safepoints(&wasm);
    for budget in 1..=3 {
        for backend in tabi_tests::Backend::ALL {
            let (p, out, _) = tabi_tests::process_for(&spec());
            let mut control = tabi_libos::machine::PauseControl::never();
            control.budget = Some(budget);
            match tabi_tests::migrate::run_pausable(backend, &sp.wasm, p, control, None) {
                tabi_libos::machine::Outcome::Finished(f) => {
                    assert_eq!(f.exit, tabi_libos::Exit::Code(0))
                }
                tabi_libos::machine::Outcome::Paused(_) => panic!("paused"),
            }
            let got = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
            assert_eq!(
                got, expected.outcome.stdout,
                "budget {budget} on {backend:?}"
            );
        }
    }
    let n = check_every(&spec(), &wasm, 1).unwrap();
    assert!(n >= min_points, "only {n} points");
}

#[test]
fn values_below_a_call_survive() {
    check(
        r#"(func (export "_start")
            (call $out (i32.add (i32.const 1000) (i32.mul (i32.const 3) (call $point (i32.const 4)))))
            (call $out (i32.wrap_i64 (i64.add (i64.const 5) (i64.extend_i32_s (call $point (i32.const -9))))))
            (call $out (i32.trunc_f64_s (f64.mul (f64.const 2.5) (f64.convert_i32_s (call $point (i32.const 8))))))
            (call $flush))"#,
        4,
    );
}

/// Thousands of calls with nothing below them in one function: each check branches to an
/// unwind path of its own after the body (a block per site around the body), and a pause at
/// any of them unwinds from the right one.
#[test]
fn a_function_with_thousands_of_call_sites_migrates() {
    let calls = "(call $step)\n".repeat(3000);
    check(
        &format!(
            r#"(global $k (mut i32) (i32.const 0))
            (func $step
              (global.set $k (i32.add (global.get $k) (i32.const 1)))
              (if (i32.eqz (i32.rem_u (global.get $k) (i32.const 700)))
                (then (call $out (call $point (global.get $k))))))
            (func (export "_start")
              {calls}
              (call $out (global.get $k))
              (call $flush))"#
        ),
        5,
    );
}

/// Blocks nested `depth` deep around a call that passes a migration point.
fn nested(depth: usize) -> String {
    format!(
        r#"(func (export "_start")
          {}(call $out (call $point (i32.const 41))){}
          (call $flush))"#,
        "(block ".repeat(depth),
        ")".repeat(depth)
    )
}

/// The rewrite recurses once per nesting level, on threads with a stack of their own: 5,000
/// levels (the limit) migrate, on any caller's thread; one more is refused by name, not a
/// stack overflow.
#[test]
fn deep_nesting_migrates_up_to_its_limit_and_is_refused_beyond() {
    check(&nested(5_000), 1);
    let e = instrument(&module(&nested(5_001)), &Options::default()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("nested more than 5000 deep"), "{e}");
}

/// v128, f32 and f64 values held in locals and below a call, across migration points; wasmi
/// runs SIMD too, so each pause resumes on the other engine.
#[test]
fn vector_and_float_values_survive() {
    check(
        r#"(func $lanes (param $v v128)
            (call $out (i32x4.extract_lane 0 (local.get $v)))
            (call $out (i32x4.extract_lane 1 (local.get $v)))
            (call $out (i32x4.extract_lane 2 (local.get $v)))
            (call $out (i32x4.extract_lane 3 (local.get $v))))
          (func (export "_start") (local $v v128) (local $f f32) (local $d f64)
            (local.set $v (v128.const i32x4 11 -22 33 -44))
            (local.set $f (f32.const 1.5))
            (local.set $d (f64.const -2.25))
            ;; locals live across a point
            (drop (call $point (i32.const 0)))
            (local.set $v (i32x4.add (local.get $v) (i32x4.splat (call $point (i32.const 1)))))
            (call $lanes (local.get $v))
            ;; a vector below a call, as the call's operand stack
            (call $lanes
              (i32x4.mul (local.get $v) (i32x4.splat (call $point (i32.const 2)))))
            ;; floats below a call and in locals
            (call $out (i32.trunc_f32_s (f32.mul (local.get $f)
              (f32.convert_i32_s (call $point (i32.const 9))))))
            (call $out (i32.trunc_f64_s (f64.mul (local.get $d)
              (f64.convert_i32_s (call $point (i32.const 99))))))
            (call $flush))"#,
        6,
    );
}

#[test]
fn nested_blocks_loops_and_branches() {
    check(
        r#"(func $f (param $n i32) (result i32) (local $acc i32) (local $i i32)
            (block $done
              (loop $l
                (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
                (local.set $acc
                  (i32.add (local.get $acc)
                    (if (result i32) (i32.and (local.get $i) (i32.const 1))
                      (then (call $point (local.get $i)))
                      (else (i32.mul (i32.const 10) (call $point (local.get $i)))))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $l)))
            (local.get $acc))
          (func (export "_start")
            (call $out (call $f (i32.const 6)))
            ;; a value below a block that holds a migration point
            (call $out (i32.add (i32.const 77) (block (result i32) (call $point (i32.const 1)))))
            (call $out (i32.sub (i32.const 5) (if (result i32) (i32.const 0) (then (i32.const 1)) (else (call $point (i32.const 40))))))
            (call $flush))"#,
        8,
    );
}

#[test]
fn multi_value_and_block_parameters() {
    check(
        r#"(func $two (param i32) (result i32 i64)
            (call $point (local.get 0)) (i64.extend_i32_u (call $point (i32.const 10))))
          (func (export "_start") (local $a i32) (local $b i64)
            (call $two (i32.const 3))
            (local.set $b) (local.set $a)
            (call $out (i32.add (local.get $a) (i32.wrap_i64 (local.get $b))))
            (i32.const 100) (i32.const 20)
            (block $b2 (param i32 i32) (result i32)
              (i32.add (call $point))
            )
            (call $out)
            (i32.const 3)
            (loop $l (param i32) (result i32)
              (call $point)
              (local.tee $a)
              (br_if $l (i32.lt_s (local.get $a) (i32.const 6)))
              (drop)
              (local.get $a))
            (call $out)
            (call $flush))"#,
        6,
    );
}

#[test]
fn indirect_calls_recursion_and_globals() {
    check(
        r#"(func $rec (param $n i32) (result i32)
            (if (result i32) (i32.eqz (local.get $n))
              (then (call $point (i32.const 0)))
              (else (i32.add (local.get $n) (call $rec (i32.sub (local.get $n) (i32.const 1)))))))
          (func (export "_start") (local $i i32)
            (call $out (call_indirect (type $ii) (i32.const 5) (i32.const 0)))
            (call $out (call_indirect (type $ii) (i32.const 5) (i32.const 1)))
            (call $out (call_indirect (type $ii) (i32.const 5) (i32.const 2)))
            (call $out (call $rec (i32.const 30)))
            (global.set $counter (i64.add (global.get $counter) (i64.extend_i32_u (call $point (i32.const 1)))))
            (call $out (i32.wrap_i64 (global.get $counter)))
            (call $flush))"#,
        5,
    );
}

/// Tail calls of functions that can unwind: a function gone from the stack by tail-calling on
/// is skipped when rewinding (the saved frame names its function), with parameters of several
/// types, through `return_call_indirect`, between mutually recursive functions, and of a
/// migration point itself.
const TAIL_CALLS: &str = r#"
  (func $count (param $n i32) (param $acc i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (local.get $acc))
      (else (return_call $count (i32.sub (local.get $n) (i32.const 1))
                                (i32.add (local.get $acc) (call $point (local.get $n)))))))
  (func $spin (param $n i32) (result i32)
    (if (i32.eqz (local.get $n)) (then (return (call $point (i32.const 41)))))
    (return_call $spin (i32.sub (local.get $n) (i32.const 1))))
  (func $b (param $x i64) (param $y f64) (param $v v128) (result i32)
    (i32.add (call $point (i32.wrap_i64 (local.get $x)))
             (i32.add (i32.trunc_f64_s (local.get $y)) (i32x4.extract_lane 2 (local.get $v)))))
  (func $a (param $v i32) (result i32)
    (return_call $b (i64.extend_i32_u (call $point (local.get $v))) (f64.const 5.5)
                    (v128.const i32x4 0 0 1000 0)))
  (func $even (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n)) (then (call $point (i32.const 100)))
      (else (return_call $odd (i32.sub (local.get $n) (i32.const 1))))))
  (func $odd (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n)) (then (call $point (i32.const 200)))
      (else (drop (call $yield)) (return_call $even (i32.sub (local.get $n) (i32.const 1))))))
  (func $ind (param $i i32) (result i32)
    (return_call_indirect (type $ii) (i32.const 7) (local.get $i)))
  (func $y (result i32) (return_call $yield))"#;

#[test]
fn tail_calls_migrate() {
    check(
        &format!(
            r#"{TAIL_CALLS}
          (func (export "_start")
            (call $out (call $count (i32.const 6) (i32.const 0)))
            (call $out (call $a (i32.const 3)))
            (call $out (call $even (i32.const 5)))
            (call $out (call $ind (i32.const 0)))
            (call $out (call $ind (i32.const 1)))
            (call $out (call $y))
            (call $out (call $spin (i32.const 30)))
            (call $flush))"#
        ),
        16,
    );
}

/// A tail-recursive loop of a million calls runs in constant stack space once rewritten, with
/// safepoints too (the function is recursive, so it gets an entry safepoint).
#[test]
fn tail_calls_stay_tail_calls() {
    let wasm = module(&format!(
        r#"{TAIL_CALLS}
          (func (export "_start") (call $out (call $spin (i32.const 1000000))) (call $flush))"#
    ));
    assert_eq!(plain(&spec(), &wasm).outcome.stdout, "42\n");
    for safepoints in [false, true] {
        let out = instrument(
            &wasm,
            &Options {
                safepoints,
                ..Options::default()
            },
        )
        .unwrap();
        for backend in tabi_tests::Backend::ALL {
            let (p, stdout, _) = tabi_tests::process_for(&spec());
            let control = tabi_libos::machine::PauseControl::never();
            match tabi_tests::migrate::run_pausable(backend, &out.wasm, p, control, None) {
                tabi_libos::machine::Outcome::Finished(f) => {
                    assert_eq!(f.exit, tabi_libos::Exit::Code(0), "{backend:?}")
                }
                tabi_libos::machine::Outcome::Paused(_) => panic!("paused"),
            }
            assert_eq!(&*stdout.lock().unwrap(), b"42\n", "{backend:?}");
        }
    }
}

#[test]
fn unsupported_constructs_are_refused_with_their_name() {
    // A `call_ref` of a function that reaches a migration point.
    let wasm = module(
        r#"(type $v (func (result i32)))
           (elem declare func $t)
           (func $t (result i32) (call $point (i32.const 1)))
           (func (export "_start") (drop (call_ref $v (ref.func $t))))"#,
    );
    match instrument(&wasm, &Options::default()) {
        Err(Error::Unsupported { construct, .. }) => {
            assert!(construct.contains("call_ref"), "{construct}")
        }
        other => panic!("{other:?}"),
    }
    // A migration point used as a function value.
    let wasm = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "sched_yield" (func $y (result i32)))
            (table 1 funcref) (elem (i32.const 0) $y) (func (export "_start")))"#,
    )
    .unwrap();
    assert!(matches!(
        instrument(&wasm, &Options::default()),
        Err(Error::Unsupported { .. })
    ));
    // Malformed input.
    assert!(matches!(
        instrument(b"\0asm\x01\0\0\0\x01\xff", &Options::default()),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        instrument(b"not wasm", &Options::default()),
        Err(Error::Invalid(_))
    ));
    // Already instrumented.
    let wasm = module(r#"(func (export "_start") (drop (call $point (i32.const 1))))"#);
    let once = instrument(&wasm, &Options::default()).unwrap().wasm;
    assert!(matches!(
        instrument(&once, &Options::default()),
        Err(Error::Unsupported { .. })
    ));
}

/// Exceptions: a throw is a way out of a function only where the module can catch it. Where it
/// can, neither a thrower nor a function whose `try_table` catches lets the analysis treat a
/// function as one that never returns (its callers would lose their sites, and the guard a
/// function that never returns raises would stay raised once an exception is caught).
#[test]
fn exceptions_do_not_make_functions_look_like_they_never_return() {
    let with = |body: &str| {
        wat::parse_str(format!(
            r#"(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (tag $t)
  (memory 1)
  (func $point (drop (call $yield)))
  {body})"#
        ))
        .unwrap()
    };
    // A catch around a migration point: the function returns through its handler, so it is
    // rewritten, and its `try_table` is refused by name (it was once left untouched).
    let caught = with(
        r#"(func (export "_start")
             (block $h (try_table (catch_all $h) (call $point) (throw $t)) (unreachable)))"#,
    );
    match instrument(&caught, &Options::default()) {
        Err(Error::Unsupported { construct, .. }) => {
            assert!(construct.contains("exception"), "{construct}")
        }
        other => panic!("{other:?}"),
    }
    // A function whose end is reached only through a catch label returns; its caller keeps
    // both of its sites.
    let through_catch = with(
        r#"(func $f (block $b (try_table (catch_all $b) (nop)) (unreachable)))
           (func (export "_start") (call $point) (call $f) (call $point))"#,
    );
    let out = instrument(&through_catch, &Options::default()).unwrap();
    assert_eq!(out.manifest.instrumented_functions, 2);
    assert_eq!(out.manifest.sites, 3);
    // A thrower that reaches a migration point, in a module that can catch: it may return to a
    // handler, so it is rewritten, and its throw refused.
    let thrower = with(
        r#"(func $th (call $point) (throw $t))
           (func (export "_start") (block $h (try_table (catch_all $h) (call $th))))"#,
    );
    assert!(matches!(
        instrument(&thrower, &Options::default()),
        Err(Error::Unsupported { .. })
    ));
    // With no handler anywhere, a throw ends the run like `unreachable`: the thrower is left
    // as it is (guarded), and its callers' code after it is dead.
    let uncaught = with(
        r#"(func $th (call $point) (throw $t))
           (func (export "_start") (call $point) (if (i32.const 0) (then (call $th))))"#,
    );
    let out = instrument(&uncaught, &Options::default()).unwrap();
    assert_eq!(out.manifest.instrumented_functions, 2);
    assert_eq!(out.manifest.sites, 2);
}

/// `wasm` prints `stdout` when run plainly, and gives the same when paused at each of its (at
/// least `min_points`) migration points and resumed on the other engine.
fn prints_and_migrates_at_every_point(wasm: &[u8], stdout: &str, min_points: u64) {
    assert_eq!(plain(&spec(), wasm).outcome.stdout, stdout);
    let n = check_every(&spec(), wasm, 1).unwrap();
    assert!(n >= min_points, "only {n} points");
}

/// A module with a 64-bit memory runs and migrates on both engines (each engine once accepted a
/// different set of proposals, so such a guest ran on wasmtime and then failed to resume on
/// wasmi).
#[test]
fn a_64_bit_memory_migrates_between_engines() {
    let wasm = wat::parse_str(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") i64 1)
  (func $put (param $at i64) (param $c i32)
    (drop (call $yield))
    (i32.store8 (local.get $at) (local.get $c)))
  (func (export "_start") (local $i i64)
    (loop $l
      (call $put (i64.add (i64.const 100) (local.get $i))
                 (i32.add (i32.const 97) (i32.wrap_i64 (local.get $i))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $l (i64.lt_u (local.get $i) (i64.const 5))))
    (i64.store8 (i64.const 105) (i64.const 10))
    (i32.store (i64.const 0) (i32.const 100))
    (i32.store (i64.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap();
    prints_and_migrates_at_every_point(&wasm, "abcde\n", 6);
}

/// A guest with an `externref` table that it grows and writes migrates between the engines at
/// every point (wasmtime runs such guests since it is built with its GC support).
#[test]
fn an_externref_table_migrates_between_engines() {
    let wasm = module(
        r#"(table $x 1 externref)
           (func (export "_start") (local $i i32)
             (loop $l
               (drop (table.grow $x (ref.null extern) (i32.const 1)))
               (table.set $x (local.get $i) (ref.null extern))
               (call $out (call $point (table.size $x)))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 4))))
             (call $flush))"#,
    );
    prints_and_migrates_at_every_point(&wasm, "3\n4\n5\n6\n", 5);
}

/// A `main` that ends in `exit` never returns, and neither does the chain that enters it; but
/// when no function relies on that (it is entered from outside or through an indirect call, as
/// Rust's `main` is), the chain is rewritten, and the guest pauses inside it. It used to be
/// left as it was with pauses kept off, so such a guest never paused at all.
#[test]
fn a_main_that_ends_in_exit_still_pauses() {
    let wasm = module(
        r#"(func $main
             (call $out (call $point (i32.const 1)))
             (call $out (call $point (i32.const 2)))
             (call $flush)
             (call $exit (i32.const 0)))
           (func $enter (param i32) (result i32) (call $main) (unreachable))
           (elem (i32.const 3) $enter)
           (func (export "_start")
             (drop (call_indirect (type $ii) (i32.const 5) (i32.const 3))))"#,
    );
    let out = instrument(&wasm, &Options::default()).unwrap();
    // `$point`, `$flush`, `$main`, `$enter`, `_start`; and the `$ind_*` functions, which an
    // indirect call of that type may reach.
    assert_eq!(out.manifest.instrumented_functions, 7);
    prints_and_migrates_at_every_point(&wasm, "2\n3\n", 3);
}

#[test]
fn output_is_deterministic_and_untouched_functions_are_byte_identical() {
    let wasm =
        module(r#"(func (export "_start") (drop (call $point (call $pure (i32.const 3)))))"#);
    let a = instrument(&wasm, &Options::default()).unwrap();
    let b = instrument(&wasm, &Options::default()).unwrap();
    assert_eq!(a.wasm, b.wasm);
    let m = tabi_instrument::Manifest::from_module(&a.wasm)
        .unwrap()
        .unwrap();
    assert_eq!(m, a.manifest);
    {
        use sha2::Digest;
        assert_eq!(
            m.original_sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&wasm))
        );
    }
    // $point, $ind_a, $ind_b and _start reach `sched_yield`, $flush calls `fd_write`; $out and
    // $pure reach neither.
    assert_eq!(m.instrumented_functions, 5);
    let bodies = |w: &[u8]| -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for p in wasmparser::Parser::new(0).parse_all(w) {
            if let wasmparser::Payload::CodeSectionEntry(b) = p.unwrap() {
                v.push(w[b.range()].to_vec());
            }
        }
        v
    };
    let (before, after) = (bodies(&wasm), bodies(&a.wasm));
    // Function order: $point $out $flush $ind_a $ind_b $pure _start.
    for i in [1, 5] {
        assert_eq!(before[i], after[i], "body {i} changed");
    }
    for i in [0, 2, 3, 4, 6] {
        assert_ne!(before[i], after[i], "body {i} not rewritten");
    }
}

/// The guests' rewrites are the same bytes whether their bodies are shared out among threads
/// or not (they have hundreds of functions: several batches, so several threads take part).
#[test]
fn threads_do_not_change_a_guest_rewrite() {
    use std::num::NonZeroUsize;
    use tabi_tests::guests;
    for guest in [
        guests::HELLO,
        guests::P1_CALLS,
        guests::STD_FS,
        guests::COMPUTE,
        guests::POSIX,
    ] {
        let wasm = std::fs::read(guest).unwrap();
        for safepoints in [false, true] {
            let options = Options {
                safepoints,
                ..Options::default()
            };
            let default = instrument(&wasm, &options).unwrap().wasm;
            for n in [1, 2, 3] {
                let threads = NonZeroUsize::new(n).unwrap();
                let out = tabi_instrument::instrument_on_threads(&wasm, &options, threads)
                    .unwrap()
                    .wasm;
                assert!(
                    out == default,
                    "{guest}: {n} threads, safepoints {safepoints}"
                );
            }
        }
    }
}

/// The kernel issue's guests, paused after every migration point they reach and resumed on the
/// other engine (alternating which engine goes first), give what an uninterrupted run of the
/// original gives: stdout, stderr, exit status and the in-memory file tree.
fn every_point(spec: Spec) {
    let wasm = std::fs::read(&spec.wasm).unwrap();
    let n = check_every(&spec, &wasm, 1).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    assert!(n > 0, "{spec:?} passed no migration point");
}

mod every_point {
    use super::*;
    use tabi_tests::guests;

    #[test]
    fn hello() {
        every_point(Spec::new(guests::HELLO).args(&["a", "b c"]).env("K", "v"));
        every_point(Spec::new(guests::HELLO).args(&["--exit", "3"]));
    }

    #[test]
    fn std_fs() {
        every_point(Spec::new(guests::STD_FS));
    }

    #[test]
    fn std_fs_churn() {
        every_point(Spec::new(guests::STD_FS).args(&["churn", "20"]));
    }

    #[test]
    fn compute() {
        every_point(Spec::new(guests::COMPUTE).args(&["all", "1"]));
        every_point(Spec::new(guests::COMPUTE).args(&["deep", "50"]));
    }

    #[test]
    fn posix_c() {
        every_point(Spec::new(guests::POSIX));
    }

    /// Migration points reached from inside qsort, bsearch and exit (callbacks), through
    /// function pointers and variadic functions, and while standard input is read.
    #[test]
    fn callbacks_c() {
        let input = b"first line\nsecond, longer line\n\nlast without newline";
        every_point(Spec::new(guests::CALLBACKS).args(&["40"]).stdin(input));
        every_point(Spec::new(guests::CALLBACKS).args(&["3"]));
    }

    /// Trait objects, closures called by the standard library, mutual recursion, a sleep and
    /// standard input.
    #[test]
    fn mixed_rust() {
        let input = "héllo\nwörld\n".as_bytes();
        every_point_also_with_safepoints(Spec::new(guests::MIXED).args(&["30"]).stdin(input));
    }

    /// clang's `return_call_indirect` between handlers that can pause, with safepoints too.
    #[test]
    fn tail_calls_c() {
        every_point_also_with_safepoints(Spec::new(guests::TAIL_CALLS).args(&["3000"]));
    }

    /// [`every_point`], then again with the guest rewritten with safepoints.
    fn every_point_also_with_safepoints(spec: Spec) {
        every_point(spec.clone());
        let wasm = std::fs::read(&spec.wasm).unwrap();
        let options = Options {
            safepoints: true,
            ..Options::default()
        };
        let n = tabi_tests::migrate::check_every_with(&spec, &wasm, &options, 1).unwrap();
        assert!(n > 0, "passed no migration point with safepoints");
    }
}

/// A 10,000-frame stack unwinds into the save stack and rebuilds itself, on either engine,
/// and across them.
#[test]
fn deep_recursion_unwinds_and_rewinds() {
    use tabi_tests::guests;
    let spec = Spec::new(guests::COMPUTE).args(&["deep", "10000"]);
    let wasm = std::fs::read(&spec.wasm).unwrap();
    let n = check_every(&spec, &wasm, 1).unwrap();
    assert!(n >= 2, "{n}");
}

/// The guest of `spec`, and its rewrite with safepoints.
fn with_safepoints(spec: &Spec) -> (Vec<u8>, Vec<u8>) {
    let original = std::fs::read(&spec.wasm).unwrap();
    let options = Options {
        safepoints: true,
        ..Options::default()
    };
    let wasm = instrument(&original, &options).unwrap().wasm;
    (original, wasm)
}

/// With safepoints, a function's own body cannot rewind: its resume copy rebuilds the frame
/// and runs on, and calls the next copy down while rewinding. A 10,000-frame stack is rebuilt
/// through the copies, on either engine and across them: paused at its deepest migration
/// point, and yielding every 3,000 safepoints on the way.
#[test]
fn deep_recursion_rewinds_through_resume_copies() {
    use tabi_libos::machine::{Outcome, PauseControl};
    use tabi_tests::migrate::{check_every_with, run_pausable};
    use tabi_tests::{Backend, guests, process_for};

    let spec = Spec::new(guests::COMPUTE).args(&["deep", "10000"]);
    let (original, wasm) = with_safepoints(&spec);
    // One resume copy per rewritten function, after the added `reserve`.
    let functions = |wasm: &[u8]| {
        wasmparser::Parser::new(0)
            .parse_all(wasm)
            .find_map(|p| match p.unwrap() {
                wasmparser::Payload::FunctionSection(f) => Some(f.count()),
                _ => None,
            })
            .unwrap()
    };
    let manifest = tabi_instrument::Manifest::from_module(&wasm)
        .unwrap()
        .unwrap();
    assert!(manifest.instrumented_functions > 0);
    assert_eq!(
        functions(&wasm),
        functions(&original) + 1 + manifest.instrumented_functions
    );

    let options = Options {
        safepoints: true,
        ..Options::default()
    };
    let n = check_every_with(&spec, &original, &options, 1).unwrap();
    assert!(n >= 2, "{n}");

    let expected = plain(&spec, &original);
    for backend in Backend::ALL {
        let (process, out, _) = process_for(&spec);
        let mut control = PauseControl::never();
        control.budget = Some(3000);
        match run_pausable(backend, &wasm, process, control, None) {
            Outcome::Finished(f) => assert_eq!(f.exit, tabi_libos::Exit::Code(0), "{backend:?}"),
            Outcome::Paused(_) => panic!("paused without a request"),
        }
        assert_eq!(
            String::from_utf8_lossy(&out.lock().unwrap()),
            expected.outcome.stdout,
            "{backend:?}"
        );
    }
}

/// With safepoints, only a function the host or an indirect call can enter tests for a rewind
/// on entry (and hands over to its copy); the copies call each other while rewinding.
#[test]
fn only_functions_entered_from_outside_hand_over_to_their_copies() {
    use wasmparser::{Operator, Parser, Payload};
    // Functions: 3 imports, $point 3, $out 4, $flush 5, $ind_a 6, $ind_b 7, $pure 8, then
    // $rec 9 and _start 10.
    let wasm = module(
        r#"(func $rec (param $n i32) (result i32)
            (if (result i32) (i32.eqz (local.get $n))
              (then (call $point (i32.const 0)))
              (else (i32.add (local.get $n) (call $rec (i32.sub (local.get $n) (i32.const 1)))))))
          (func (export "_start")
            (call $out (call_indirect (type $ii) (call $rec (i32.const 3)) (i32.const 0)))
            (call $flush))"#,
    );
    let options = Options {
        safepoints: true,
        ..Options::default()
    };
    let out = instrument(&wasm, &options).unwrap().wasm;
    // Rewritten: $point, $out (its loop has a safepoint), $flush, $ind_a, $ind_b, $rec and
    // _start; `reserve` is 11, their copies 12 to 18 in that order.
    let first_copy = 12;
    let mut calls: Vec<Vec<u32>> = Vec::new();
    for p in Parser::new(0).parse_all(&out) {
        if let Payload::CodeSectionEntry(body) = p.unwrap() {
            let mut v = Vec::new();
            for op in body.get_operators_reader().unwrap() {
                if let Operator::Call { function_index } = op.unwrap() {
                    v.push(function_index);
                }
            }
            calls.push(v);
        }
    }
    let calls_a_copy = |body: usize| calls[body].iter().any(|&f| f >= first_copy);
    // Bodies are numbered from the first defined function (index 3).
    let body = |f: usize| f - 3;
    // Entered from outside: _start (exported), $ind_a and $ind_b (in the table).
    for f in [10, 6, 7] {
        assert!(calls_a_copy(body(f)), "function {f} does not hand over");
    }
    // Called directly only: $point, $out, $flush, $rec.
    for f in [3, 4, 5, 9] {
        assert!(!calls_a_copy(body(f)), "function {f} tests for a rewind");
    }
    // The copy of _start calls the copies of $rec, $out and $flush while rewinding.
    let start_copy = &calls[body(18)];
    for copy in [17, 13, 14] {
        assert!(start_copy.contains(&copy), "{start_copy:?}");
    }
}

/// A loop with no migration point in it pauses at a safepoint's yield when another thread
/// asks, and goes on, on the other engine, to the output of an uninterrupted run. The request
/// is made before the loop can end (the guest makes no call before it), so the test waits for
/// no timer; the resumed run, which nothing can interrupt, does not yield again (it yielded
/// at every safepoint when its budget was `i32::MAX`: the rewind's extra unit wrapped it).
#[test]
fn safepoints_let_the_host_pause_a_loop() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tabi_libos::machine::{Outcome, PauseControl, PauseReason, UNINTERRUPTIBLE_BUDGET, Value};
    use tabi_tests::migrate::run_pausable;
    use tabi_tests::{Backend, process_for};

    const PASSES: i32 = 300_000;
    const BUDGET: i32 = 10_000;
    let original = module(&format!(
        r#"(func (export "_start")
            (local $i i32)
            (loop $again
              (global.set $counter (i64.add (global.get $counter) (i64.const 1)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const {PASSES}))))
            (call $out (i32.wrap_i64 (global.get $counter)))
            (call $flush))"#
    ));
    let wasm = rewrite_with_safepoints(&original).wasm;
    let expected = plain(&spec(), &original);
    assert_eq!(expected.outcome.stdout, format!("{}\n", 7 + PASSES));

    for (first, then) in [
        (Backend::Wasmtime, Backend::Wasmi),
        (Backend::Wasmi, Backend::Wasmtime),
    ] {
        let flag = Arc::new(AtomicBool::new(false));
        std::thread::spawn({
            let flag = flag.clone();
            move || flag.store(true, Ordering::Release)
        })
        .join()
        .unwrap();
        let (process, out1, _) = process_for(&spec());
        let mut control = PauseControl::never();
        control.request = Some(flag);
        control.budget = Some(BUDGET);
        let paused = match run_pausable(first, &wasm, process, control, None) {
            Outcome::Paused(p) => p,
            Outcome::Finished(f) => panic!("{first:?}: finished without pausing: {:?}", f.exit),
        };
        assert_eq!(paused.reason, PauseReason::Requested);
        // Inside the loop: the counter (global 1) has moved, by one budget's worth at most.
        let Value::I64(counter) = paused.state.globals[1] else {
            panic!("{first:?}: global 1 is {:?}", paused.state.globals[1]);
        };
        assert!(
            (8..=7 + i64::from(BUDGET) + 1).contains(&counter),
            "{first:?}: paused with the counter at {counter}"
        );

        // Resumed with nothing able to interrupt it: it runs to the loop's end without a
        // yield, and pauses at the migration point after it with the budget nearly whole.
        let (mut process, out2, _) = process_for(&spec());
        process.kernel = paused.process.kernel.clone();
        let left = match run_pausable(
            then,
            &wasm,
            process,
            PauseControl::after(1),
            Some(&paused.state),
        ) {
            Outcome::Paused(p) => p.state.budget.expect("a budget is recorded"),
            Outcome::Finished(f) => panic!("{then:?}: finished without pausing: {:?}", f.exit),
        };
        assert!(
            left > UNINTERRUPTIBLE_BUDGET - PASSES - 2,
            "{then:?}: the resumed run yielded (budget left {left})"
        );

        let (mut process, out3, _) = process_for(&spec());
        process.kernel = paused.process.kernel;
        match run_pausable(
            then,
            &wasm,
            process,
            PauseControl::never(),
            Some(&paused.state),
        ) {
            Outcome::Finished(f) => assert_eq!(f.exit, tabi_libos::Exit::Code(0)),
            Outcome::Paused(_) => panic!("{then:?}: paused again"),
        }
        assert!(out1.lock().unwrap().is_empty());
        assert_eq!(
            String::from_utf8_lossy(&out2.lock().unwrap()),
            expected.outcome.stdout
        );
        assert_eq!(
            String::from_utf8_lossy(&out3.lock().unwrap()),
            expected.outcome.stdout
        );
    }
}

/// A plain run of an instrumented module (`Engine::run`, `tabi run` on a module instrumented
/// beforehand) drives it: a safepoint whose budget runs out yields, and the run goes on. Before,
/// the yield's unwind returned from `_start` and the guest ended early with status 0, having
/// printed nothing.
#[test]
fn a_plain_run_of_an_instrumented_module_goes_on_past_its_yields() {
    use tabi_tests::{Backend, guests, process_for};
    // fib 30 makes ~1.6 million calls and polls on each: past the default budget (2^20).
    let spec = Spec::new(guests::COMPUTE).args(&["fib", "30"]);
    let (original, wasm) = with_safepoints(&spec);
    let expected = plain(&spec, &original);
    assert!(expected.outcome.stdout.contains("fib 832040"));
    for backend in Backend::ALL {
        let (process, out, _) = process_for(&spec);
        let f = backend.engine().run(&wasm, process).unwrap();
        assert_eq!(f.exit, tabi_libos::Exit::Code(0), "{backend:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.lock().unwrap()),
            expected.outcome.stdout,
            "{backend:?}"
        );
    }
}

/// Generated modules (wasm-smith, from fixed seeds): instrumented and not, and paused at the
/// first, a middle and the last migration point and resumed on the other engine, they print
/// the same and end the same way.
#[test]
fn generated_modules_behave_the_same() {
    let mut checked = 0;
    let mut with_points = 0;
    for seed in 0..300u64 {
        // Bytes from a small xorshift generator, so the corpus is fixed and needs no files.
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut u = arbitrary::Unstructured::new(&bytes);
        let Ok(wasm) = tabi_tests::smith::generate(&mut u) else {
            continue;
        };
        let pick = |n: u64| -> Vec<u64> {
            let mut v = vec![1, n.div_ceil(2), n];
            v.retain(|&k| k >= 1 && k <= n);
            v.dedup();
            v
        };
        match tabi_tests::smith::check(&wasm, &pick) {
            Ok(Some(n)) => {
                checked += 1;
                with_points += usize::from(n > 0);
            }
            Ok(None) => {}
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(
        checked >= 100,
        "only {checked} generated modules were checked"
    );
    assert!(
        with_points >= 10,
        "only {with_points} generated modules passed a migration point"
    );
}

/// The kernel crate is no_std and does not depend on the rewrite, so the protocol's names and
/// values are written twice; they must agree.
#[test]
fn protocol_constants_agree() {
    use tabi_libos::machine as m;
    assert_eq!(m::STATE_GLOBAL, tabi_instrument::STATE_GLOBAL);
    assert_eq!(m::SP_GLOBAL, tabi_instrument::SP_GLOBAL);
    assert_eq!(m::STACK_MEMORY, tabi_instrument::STACK_MEMORY);
    assert_eq!(m::BUDGET_GLOBAL, tabi_instrument::BUDGET_GLOBAL);
    assert_eq!(m::NOPAUSE_GLOBAL, tabi_instrument::NOPAUSE_GLOBAL);
    assert_eq!(m::START_EXPORT, tabi_instrument::START_EXPORT);
    assert_eq!(m::FLAGS_GLOBAL, tabi_instrument::FLAGS_GLOBAL);
    assert_eq!(m::FLAG_WRITES_TABLES, tabi_instrument::FLAG_WRITES_TABLES);
    assert_eq!(m::FUNCS_TABLE, tabi_instrument::FUNCS_TABLE);
    assert_eq!(
        (m::NORMAL, m::UNWINDING, m::REWINDING),
        (
            tabi_instrument::NORMAL,
            tabi_instrument::UNWINDING,
            tabi_instrument::REWINDING
        )
    );
    assert_eq!(m::DEFAULT_BUDGET, tabi_instrument::DEFAULT_BUDGET);
    for i in [0, 7, 123] {
        assert_eq!(m::global_export(i), tabi_instrument::global_export(i));
        assert_eq!(m::memory_export(i), tabi_instrument::memory_export(i));
        assert_eq!(m::table_export(i), tabi_instrument::table_export(i));
    }
}

/// A saved state that does not fit the module is refused with an error, not a panic.
#[test]
fn a_state_that_does_not_fit_is_refused() {
    use tabi_libos::machine::{Outcome, PauseControl, Points};
    let wasm =
        module(r#"(func (export "_start") (call $out (call $point (i32.const 1))) (call $flush))"#);
    let inst = instrument(&wasm, &Options::default()).unwrap().wasm;
    let (p, ..) = tabi_tests::process_for(&spec());
    let Outcome::Paused(paused) = tabi_tests::migrate::run_pausable(
        tabi_tests::Backend::Wasmtime,
        &inst,
        p,
        PauseControl::after(1),
        None,
    ) else {
        panic!("did not pause");
    };
    let mut bad_pages = paused.state.clone();
    bad_pages.memories[0].truncate(100);
    let mut bad_globals = paused.state.clone();
    bad_globals.globals.pop();
    let mut bad_type = paused.state.clone();
    bad_type.globals[0] = tabi_libos::machine::Value::F64(0);
    let mut bad_entry = paused.state.clone();
    bad_entry.entry = "main".into();
    for (what, state) in [
        ("pages", bad_pages),
        ("globals", bad_globals),
        ("type", bad_type),
        ("entry", bad_entry),
    ] {
        let e = tabi_wasmi::Wasmi::new();
        let m = e.compile(&inst).unwrap();
        let (p, ..) = tabi_tests::process_for(&spec());
        assert!(
            e.run_pausable(&m, p, PauseControl::never(), Points::all(), Some(&state))
                .is_err(),
            "{what}"
        );
    }
}

/// A guest that writes its tables (`table.set`, `table.grow`, a null) is captured with them: a
/// pause after each write resumes on the other engine with the entries it wrote, and a
/// `call_indirect` through a written entry unwinds and rewinds through it.
#[test]
fn a_guest_writing_its_tables_resumes_with_them() {
    let body = r#"(func (export "_start")
            (table.set 0 (i32.const 3) (ref.func $ind_a))
            (drop (table.grow 0 (ref.func $ind_b) (i32.const 2)))
            (table.set 0 (i32.const 1) (ref.null func))
            (call $out (call $point (i32.const 1)))
            (call $out (call_indirect (type $ii) (i32.const 5) (i32.const 3)))
            (call $out (call_indirect (type $ii) (i32.const 7) (i32.const 5)))
            (call $out (table.size 0))
            (table.set 0 (i32.const 0) (ref.func $pure))
            (call $out (call $point (i32.const 2)))
            (call $out (call_indirect (type $ii) (i32.const 9) (i32.const 0)))
            (call $flush))
          (elem declare func $ind_a $ind_b $pure)"#;
    let out = instrument(&module(body), &Options::default()).unwrap();
    assert!(out.manifest.writes_tables);
    assert_eq!(
        plain(&spec(), &module(body)).outcome.stdout,
        "2\n16\n-92\n6\n3\n81\n"
    );
    check(body, 5);
}

/// `$rec` recurses, so with safepoints it polls on entry. `_start`'s loop calls it on every
/// iteration (`polled`) or may branch back before the call (`spinning`).
fn loop_with_recursion(spinning: bool) -> String {
    let skip = if spinning {
        // Odd counts go round again without calling `$rec`.
        "(br_if $l (i32.and (local.get $i) (i32.const 1)))"
    } else {
        ""
    };
    format!(
        r#"(func $rec (param $n i32) (result i32)
            (if (result i32) (i32.eqz (local.get $n))
              (then (i32.const 1))
              (else (i32.add (call $rec (i32.sub (local.get $n) (i32.const 1))) (i32.const 2)))))
          (func (export "_start") (local $i i32) (local $acc i32)
            (local.set $i (i32.const 40))
            (loop $l
              (local.set $i (i32.sub (local.get $i) (i32.const 1)))
              {skip}
              (local.set $acc (i32.add (local.get $acc) (call $rec (local.get $i))))
              (br_if $l (local.get $i)))
            (call $out (local.get $acc))
            (drop (call $point (i32.const 0)))
            (call $flush))"#
    )
}

#[test]
fn a_loop_that_always_calls_a_polling_function_needs_no_safepoint() {
    let sp = Options {
        safepoints: true,
        ..Options::default()
    };
    let sites = |spinning| {
        instrument(&module(&loop_with_recursion(spinning)), &sp)
            .unwrap()
            .manifest
            .sites
    };
    // The spinning loop keeps its own safepoint; the polled one relies on `$rec`'s.
    assert_eq!(sites(true), sites(false) + 1);
    // Both still pause, resume and finish as the original does.
    check(&loop_with_recursion(false), 2);
    check(&loop_with_recursion(true), 2);
}

/// `_start` runs `setup`, then one loop adding `$i` to `$acc` whose back edge is
/// `(br_if $l step_and_test)` (which steps `$i`); `extra` goes into the loop body.
fn counting_loop(setup: &str, step_and_test: &str, extra: &str) -> String {
    format!(
        r#"(func (export "_start") (local $i i32) (local $acc i32)
            {setup}
            (loop $l
              (local.set $acc (i32.add (local.get $acc) (local.get $i)))
              {extra}
              (br_if $l {step_and_test}))
            (call $out (local.get $acc))
            (drop (call $point (i32.const 0)))
            (call $flush))"#
    )
}

#[test]
fn short_counted_loops_need_no_safepoint() {
    let sp = Options {
        safepoints: true,
        ..Options::default()
    };
    let sites = |body: &str| instrument(&module(body), &sp).unwrap().manifest.sites;
    let up = |to: i32| {
        format!("(i32.ne (local.tee $i (i32.add (local.get $i) (i32.const 3))) (i32.const {to}))")
    };
    let from_zero = "(local.set $i (i32.const 0))";
    // The loop runs 100 times from 0: no safepoint. The same loop from an unknown start, or
    // with a step that never meets its bound, or too many times, or with `$i` also written in
    // its body, keeps one.
    let counted = counting_loop(from_zero, &up(300), "");
    let base = sites(&counted);
    let kept = [
        counting_loop("(local.set $i (global.get $len))", &up(300), ""),
        counting_loop(from_zero, &up(301), ""),
        counting_loop(from_zero, &up(3 << 20), ""),
        counting_loop(
            from_zero,
            &up(300),
            "(local.set $i (i32.or (local.get $i) (global.get $len)))",
        ),
    ];
    for body in &kept {
        assert_eq!(sites(body), base + 1, "{body}");
    }
    // Counting down to a bound, and an unsigned `<` test from any start, are counted too.
    let down = counting_loop(
        "(local.set $i (i32.const 50))",
        "(i32.ne (local.tee $i (i32.add (local.get $i) (i32.const -1))) (i32.const 0))",
        "",
    );
    let below = counting_loop(
        "(local.set $i (global.get $len))",
        "(i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 7))) (i32.const 5000))",
        "",
    );
    assert_eq!(sites(&down), base);
    assert_eq!(sites(&below), base);
    // They still pause, resume and finish as the original does (the loop whose bound is never
    // met would not end, and the long one is slow to pause at every safepoint: left out).
    for body in [&counted, &down, &below, &kept[0], &kept[3]] {
        check(body, 1);
    }
}

/// `worker` (a function `$work` from i32 to i32) run by `_start` as `$work(5)`, then as
/// `$work(40)` under `$die`: a function that cannot return, called from one that can (a
/// barrier, which raises `__tabi_nopause`, so no pause may start inside it).
fn under_a_barrier(worker: &str) -> String {
    format!(
        r#"{worker}
          (func $die (param $n i32)
            (call $out (call $work (local.get $n)))
            (call $flush)
            (call $exit (i32.const 0))
            unreachable)
          (func $maybe (param $n i32)
            (if (i32.gt_s (local.get $n) (i32.const 10)) (then (call $die (local.get $n))))
            (call $out (call $work (local.get $n))))
          (func (export "_start")
            (call $maybe (i32.const 5))
            (call $maybe (i32.const 40)))"#
    )
}

/// A loop's safepoint reached where no pause may start lets the loop go on, budget or not,
/// and the run ends as the original's.
#[test]
fn a_loop_safepoint_where_no_pause_is_allowed_goes_on() {
    let body = under_a_barrier(
        r#"(func $work (param $n i32) (result i32) (local $acc i32)
            (loop $l
              (local.set $acc (i32.add (local.get $acc) (local.get $n)))
              (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
            (i32.add (local.get $acc) (call $point (i32.const 0))))"#,
    );
    assert!(raises_nopause(&body));
    check(&body, 1);
}

/// Whether the rewrite of `body` with safepoints raises `__tabi_nopause` somewhere.
fn raises_nopause(body: &str) -> bool {
    let out = instrument(
        &module(body),
        &Options {
            safepoints: true,
            ..Options::default()
        },
    )
    .unwrap();
    let mut nopause = None;
    let mut raised = false;
    for p in wasmparser::Parser::new(0).parse_all(&out.wasm) {
        match p.unwrap() {
            wasmparser::Payload::ExportSection(r) => {
                for e in r {
                    let e = e.unwrap();
                    if e.name == "__tabi_nopause" {
                        nopause = Some(e.index);
                    }
                }
            }
            wasmparser::Payload::CodeSectionEntry(b) => {
                let mut ops = b.get_operators_reader().unwrap();
                while !ops.eof() {
                    if let wasmparser::Operator::GlobalSet { global_index } = ops.read().unwrap() {
                        raised |= Some(global_index) == nopause;
                    }
                }
            }
            _ => {}
        }
    }
    raised
}

/// The same for a recursive function's entry safepoint, whose slow path sits after the body:
/// where no pause may start it lets the body run (with a budget of 1 the deferred path is
/// taken on every call; a test that fired again at once would never end).
#[test]
fn an_entry_safepoint_where_no_pause_is_allowed_goes_on() {
    let body = under_a_barrier(
        r#"(func $work (param $n i32) (result i32)
            (if (result i32) (local.get $n)
              (then (i32.add (local.get $n) (call $work (i32.sub (local.get $n) (i32.const 1)))))
              (else (call $point (i32.const 0)))))"#,
    );
    assert!(raises_nopause(&body));
    check(&body, 1);
}

#[test]
fn frames_larger_than_a_page_fit_and_grow_the_save_stack() {
    // 9,000 i64 locals: more than the liveness pass looks at, so all are saved and the frame
    // is ~72 KB, above the stack memory's first page. Three such frames are live at the point.
    let decls = "(local i64) ".repeat(9000);
    let body = format!(
        r#"(func $big (param $d i32) (result i32) {decls}
            (local.set 5 (i64.extend_i32_u (local.get $d)))
            (local.set 8999 (i64.const 40))
            (if (local.get $d)
              (then (drop (call $big (i32.sub (local.get $d) (i32.const 1)))))
              (else (drop (call $point (i32.const 0)))))
            (i32.wrap_i64 (i64.add (local.get 5) (local.get 8999))))
          (func (export "_start")
            (call $out (call $big (i32.const 2)))
            (call $flush))"#
    );
    check(&body, 2);
}

/// Each function body's `if` and `br_if` operators, by offset from the body's start.
fn branches(w: &[u8]) -> Vec<Vec<u32>> {
    let mut v = Vec::new();
    for p in wasmparser::Parser::new(0).parse_all(w) {
        if let wasmparser::Payload::CodeSectionEntry(b) = p.unwrap() {
            let start = b.range().start;
            let mut ops = b.get_operators_reader().unwrap();
            let mut at = Vec::new();
            while !ops.eof() {
                let pos = ops.original_position();
                if matches!(
                    ops.read().unwrap(),
                    wasmparser::Operator::If { .. } | wasmparser::Operator::BrIf { .. }
                ) {
                    at.push((pos - start) as u32);
                }
            }
            v.push(at);
        }
    }
    v
}

/// A function's branch hints: offset, and whether the branch is likely taken.
type Hints = Vec<(u32, bool)>;

/// The branch hints of a module, by function index, and whether their section comes before
/// the code section.
fn hints(w: &[u8]) -> (Vec<(u32, Hints)>, bool) {
    let (mut out, mut before_code, mut seen_code) = (Vec::new(), false, false);
    for p in wasmparser::Parser::new(0).parse_all(w) {
        match p.unwrap() {
            wasmparser::Payload::CodeSectionStart { .. } => seen_code = true,
            wasmparser::Payload::CustomSection(c) if c.name() == "metadata.code.branch_hint" => {
                before_code = !seen_code;
                let r = wasmparser::BinaryReader::new(c.data(), c.data_offset());
                for f in wasmparser::BranchHintSectionReader::new(r).unwrap() {
                    let f = f.unwrap();
                    let h = f.hints.into_iter().map(|h| h.unwrap());
                    out.push((f.func, h.map(|h| (h.func_offset, h.taken)).collect()));
                }
            }
            _ => {}
        }
    }
    (out, before_code)
}

/// Branch hints the input gives (`metadata.code.branch_hint`) stay on the same instruction of
/// a body kept as it is, move with the prefix a no-return function gets, and are dropped for a
/// rewritten body, whose offsets they no longer fit; the section stays well-formed and before
/// the code.
#[test]
fn input_branch_hints_follow_the_bodies_they_fit() {
    let mut wasm = module(
        r#"(func $die (param i32)
    (if (local.get 0) (then (call $flush)))
    unreachable)
  (func (export "_start")
    (call $out (call $point (call $pure (i32.const 3))))
    (call $flush))"#,
    );
    // Input hints for $point (function 3, rewritten: a hint at offset 2), $out (function 4:
    // its first branch) and $die (function 9: its `if`).
    let before = branches(&wasm);
    let (out_at, die_at) = (before[1][0], before[6][0]);
    let mut section = Vec::new();
    let name = b"metadata.code.branch_hint";
    section.push(name.len() as u8);
    section.extend_from_slice(name);
    section.extend_from_slice(&[3, 3, 1, 2, 1, 1, 4, 1]);
    section.extend_from_slice(&leb(out_at));
    section.extend_from_slice(&[1, 0, 9, 1]);
    section.extend_from_slice(&leb(die_at));
    section.extend_from_slice(&[1, 1]);
    wasm.push(0);
    wasm.extend_from_slice(&leb(section.len() as u32));
    wasm.extend_from_slice(&section);
    wasmparser::Validator::new().validate_all(&wasm).unwrap();

    let out = instrument(&wasm, &Options::default()).unwrap().wasm;
    let (h, before_code) = hints(&out);
    assert!(before_code, "the hints come after the code");
    assert!(
        h.windows(2).all(|w| w[0].0 < w[1].0),
        "functions out of order"
    );
    let after = branches(&out);
    let imports = 3;
    for (func, list) in &h {
        let ops = &after[(*func - imports) as usize];
        assert!(
            list.windows(2).all(|w| w[0].0 < w[1].0),
            "offsets out of order"
        );
        for (offset, _) in list {
            assert!(
                ops.contains(offset),
                "function {func}: no branch at {offset}"
            );
        }
    }
    let of = |f: u32| h.iter().find(|(g, _)| *g == f).map(|(_, l)| l.clone());
    // $out is copied as it was, with its hint; $die got a prefix, and its hint moved with it;
    // $point was rewritten, and its hint is gone.
    assert_eq!(of(4), Some(vec![(out_at, false)]));
    let die = of(9).expect("the no-return function keeps its hint");
    assert_eq!(die.len(), 1);
    assert!(die[0].0 > die_at && die[0].1);
    assert_eq!(of(3), None);
    assert_eq!(h.len(), 2);
    // Without input hints there is no section.
    let plain = instrument(&module(""), &Options::default()).unwrap().wasm;
    assert!(hints(&plain).0.is_empty());
    check(
        r#"(func (export "_start")
    (call $out (call $point (call $pure (i32.const 3))))
    (call $flush))"#,
        1,
    );
}

fn leb(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A library module: a start function and exports with parameters and results, no `_start`.
/// `work(n, seed)` makes `n` steps `acc := acc * 3 + i` from `acc = seed`, yielding (a
/// migration point) and printing the step number each time; it gives `acc` and the number of
/// steps made by all calls so far (a global). `scale(x)` prints, then gives `x * 2.5`.
const LIBRARY: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (global $steps (mut i32) (i32.const 0))
  (data (i32.const 100) "ready\n")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $digit (param $v i32)
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
    (i32.store8 (i32.const 201) (i32.const 10))
    (call $print (i32.const 200) (i32.const 2)))
  (func $init (call $print (i32.const 100) (i32.const 6)))
  (start $init)
  (func (export "work") (param $n i32) (param $acc i64) (result i64 i32)
    (local $i i32)
    (block $done
      (loop $step
        (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
        (drop (call $yield))
        (local.set $acc (i64.add (i64.mul (local.get $acc) (i64.const 3)) (i64.extend_i32_s (local.get $i))))
        (call $digit (local.get $i))
        (global.set $steps (i32.add (global.get $steps) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $step)))
    (local.get $acc)
    (global.get $steps))
  (func (export "scale") (param $x f64) (result f64)
    (call $digit (i32.const 7))
    (f64.mul (local.get $x) (f64.const 2.5))))"#;

/// The host runs a library module's start function and calls its exports with arguments,
/// pausing inside any of them at every migration point and resuming on the other engine: each
/// call gives the same results, and the output is the same, as without pauses.
#[test]
fn exports_of_a_library_module_pause_and_give_their_results() {
    library_calls(&Options::default());
    // With safepoints an export's normal body hands a rewind to its resume copy.
    library_calls(&Options {
        safepoints: true,
        ..Options::default()
    });
}

fn library_calls(options: &Options) {
    use tabi_libos::machine::{START_EXPORT, Value};
    let wasm = instrument(&wat::parse_str(LIBRARY).unwrap(), options)
        .unwrap()
        .wasm;
    let calls: Vec<(&str, Vec<Value>)> = vec![
        (START_EXPORT, vec![]),
        ("work", vec![Value::I32(4), Value::I64(10)]),
        ("scale", vec![Value::F64(1.5f64.to_bits())]),
        ("work", vec![Value::I32(3), Value::I64(-7)]),
    ];
    let work = |n: i64, mut acc: i64| {
        for i in 0..n {
            acc = acc * 3 + i;
        }
        acc
    };
    let expected = vec![
        vec![],
        vec![Value::I64(work(4, 10)), Value::I32(4)],
        vec![Value::F64(3.75f64.to_bits())],
        vec![Value::I64(work(3, -7)), Value::I32(7)],
    ];
    let paused_in = calls_survive_every_pause(
        &wasm,
        &calls,
        &expected,
        ("ready\n0\n1\n2\n3\n7\n0\n1\n2\n", ""),
    );
    let every: BTreeSet<String> = [START_EXPORT, "work", "scale"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(paused_in, every);
}

/// Makes `calls` on one session of instrumented `wasm`, first without pauses, then pausing at
/// each migration point in turn (on one engine, then the other) and resuming the rest of the
/// calls on the other engine. Each way must give `expected` (every call's results) and print
/// `output` (stdout, stderr). Returns the exports a pause happened in.
fn calls_survive_every_pause(
    wasm: &[u8],
    calls: &[(&str, Vec<tabi_libos::machine::Value>)],
    expected: &[Vec<tabi_libos::machine::Value>],
    output: (&str, &str),
) -> BTreeSet<String> {
    use tabi_libos::machine::{Driven, PauseControl, Value};
    use tabi_tests::migrate::session_calls;
    use tabi_tests::{Backend, process_for};
    let results = |ends: Vec<Driven>| -> Vec<Vec<Value>> {
        ends.into_iter()
            .filter_map(|d| match d {
                Driven::Returned(r) => Some(r),
                Driven::Paused(..) => None,
                Driven::Exit(e) => panic!("the guest ended: {e:?}"),
            })
            .collect()
    };
    let text = |b: &tabi_tests::Captured| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    for backend in Backend::ALL {
        let (p, out, err) = process_for(&spec());
        let (ends, _) = session_calls(backend, wasm, p, PauseControl::never(), None, calls);
        assert_eq!(results(ends), expected, "{backend:?}");
        assert_eq!((text(&out).as_str(), text(&err).as_str()), output);
    }

    let all = Backend::ALL;
    let mut k = 1;
    let mut paused_in = BTreeSet::new();
    loop {
        let (a, b) = (all[k % all.len()], all[(k + 1) % all.len()]);
        let (p, out1, err1) = process_for(&spec());
        let (mut ends, process) =
            session_calls(a, wasm, p, PauseControl::after(k as u64), None, calls);
        let Some(Driven::Paused(state, _)) = ends.pop() else {
            // No pause: every point has been tried.
            assert!(k > 1, "no migration point");
            break;
        };
        paused_in.insert(state.entry.clone());
        let done = ends.len();
        let kernel = tabi_libos::encode_state(&process.kernel).unwrap();
        let (mut p2, out2, err2) = process_for(&spec());
        p2.kernel = tabi_libos::decode_state(&kernel).unwrap();
        let (rest, _) = session_calls(
            b,
            wasm,
            p2,
            PauseControl::never(),
            Some(&state),
            &calls[done + 1..],
        );
        let mut got = results(ends);
        got.extend(results(rest));
        assert_eq!(
            got, expected,
            "paused at point {k} on {a:?} in `{}`",
            state.entry
        );
        let out = text(&out1) + &text(&out2);
        let err = text(&err1) + &text(&err2);
        assert_eq!((out.as_str(), err.as_str()), output, "paused at point {k}");
        k += 1;
    }
    paused_in
}

/// A C library module (`-mexec-model=reactor`): `_initialize`, then exports that print through
/// stdio and keep a journal in memory between calls, paused at every point.
#[test]
fn a_c_reactor_pauses_inside_its_exports() {
    use tabi_libos::machine::Value;
    let original = std::fs::read(tabi_tests::guests::REACTOR).unwrap();
    let wasm = instrument(&original, &Options::default()).unwrap().wasm;
    let calls: Vec<(&str, Vec<Value>)> = vec![
        ("_initialize", vec![]),
        ("squares", vec![Value::I32(5)]),
        ("squares", vec![Value::I32(3)]),
        ("replay", vec![Value::F64(0.5f64.to_bits())]),
    ];
    let mut journal = String::new();
    let mut sums = Vec::new();
    for n in [5i64, 3] {
        let mut sum = 0;
        for i in 1..=n {
            sum += i * i;
            journal += &format!("square {i} -> {sum}\n");
        }
        sums.push(sum);
    }
    let expected = vec![
        vec![],
        vec![Value::I64(sums[0])],
        vec![Value::I64(sums[1])],
        vec![Value::F64((journal.len() as f64 * 0.5).to_bits())],
    ];
    let stderr = format!("replaying {} bytes\n", journal.len());
    let paused_in = calls_survive_every_pause(
        &wasm,
        &calls,
        &expected,
        (&format!("{journal}{journal}"), &stderr),
    );
    assert!(
        paused_in.contains("squares") && paused_in.contains("replay"),
        "{paused_in:?}"
    );
}

/// `Engine::invoke` calls an export as a library host does: the start function, then
/// `_initialize`, then the export (`_initialize` itself once), on the module as it is and on
/// its rewrite with safepoints (driven without pausing, its start function an export), on both
/// engines, with the same output and results. Arguments that do not fit are a `Link` error
/// before anything runs.
#[test]
fn engine_invoke_initializes_then_calls_the_export() {
    use tabi_libos::machine::Value;
    use tabi_libos::{Engine, EngineError, Exit};
    let original = wat::parse_str(tabi_tests::INITIALIZED_LIBRARY).unwrap();
    let safepoints = Options {
        safepoints: true,
        ..Options::default()
    };
    let rewritten = instrument(&original, &safepoints).unwrap().wasm;
    let engines: [Box<dyn Engine>; 2] = [
        Box::new(tabi_wasmtime::Wasmtime::new()),
        Box::new(tabi_wasmi::Wasmi::new()),
    ];
    for engine in &engines {
        for (form, wasm) in [("original", &original), ("rewrite", &rewritten)] {
            let what = format!("{form} on {}", engine.name());
            let (process, out, _) = tabi_tests::process_for(&spec());
            let f = engine
                .invoke(wasm, process, "count", &[Value::I64(14)])
                .unwrap();
            assert_eq!(f.exit, Exit::Code(0), "{what}");
            assert_eq!(f.results, [Value::I32(101), Value::I64(42)], "{what}");
            assert_eq!(*out.lock().unwrap(), b"start\ninit\ncall\n", "{what}");

            let (process, out, _) = tabi_tests::process_for(&spec());
            let f = engine.invoke(wasm, process, "_initialize", &[]).unwrap();
            assert_eq!((f.exit, f.results), (Exit::Code(0), vec![]), "{what}");
            assert_eq!(*out.lock().unwrap(), b"start\ninit\n", "{what}");

            let (process, out, _) = tabi_tests::process_for(&spec());
            match engine.invoke(wasm, process, "count", &[Value::I32(14)]) {
                Err(EngineError::Link(msg)) => assert!(msg.contains("count"), "{what}: {msg}"),
                Err(e) => panic!("{what}: {e}"),
                Ok(f) => panic!("{what}: ran, {:?}", f.exit),
            }
            assert!(out.lock().unwrap().is_empty(), "{what}");
        }
    }
}

/// Arguments that do not fit an export's parameters, and a call into an instance that is
/// paused, are the host's errors, not traps; `run_pausable` resuming a call gives its results.
#[test]
fn library_calls_with_wrong_arguments_or_into_a_paused_instance_are_refused() {
    use tabi_libos::EngineError;
    use tabi_libos::machine::{Driven, Outcome, PauseControl, Points, Start, Value};
    let wasm = instrument(&wat::parse_str(LIBRARY).unwrap(), &Options::default())
        .unwrap()
        .wasm;
    let e = tabi_wasmi::Wasmi::new();
    let m = e.compile(&wasm).unwrap();
    let process = || tabi_tests::process_for(&spec()).0;
    let session = |control| e.session(&m, process(), control, Points::all()).unwrap();
    let work = |args| Start::Call {
        export: "work",
        args,
    };

    // A call into an instance that is paused (its frames still on the save stack) is refused.
    let mut s = session(PauseControl::after(1));
    let call = work(&[Value::I32(2), Value::I64(1)]);
    assert!(matches!(s.drive(call), Ok(Driven::Paused(..))));
    match s.drive(call) {
        Err(EngineError::Engine(msg)) => assert!(msg.contains("resumed first"), "{msg}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a call into a paused instance was made"),
    }
    // Resumed in place, it finishes the first call, and then takes new ones.
    assert!(matches!(
        s.drive(Start::InPlace("work")),
        Ok(Driven::Returned(_))
    ));
    assert!(matches!(s.drive(call), Ok(Driven::Returned(_))));

    // `run_pausable` resuming a state paused in an export gives the export's results.
    let mut s = session(PauseControl::after(3));
    let Ok(Driven::Paused(state, _)) = s.drive(work(&[Value::I32(2), Value::I64(5)])) else {
        panic!("no pause in `work`")
    };
    let mut p = process();
    p.kernel = s.into_process().kernel;
    match e.run_pausable(&m, p, PauseControl::never(), Points::all(), Some(&state)) {
        Ok(Outcome::Finished(f)) => {
            assert_eq!(f.results, [Value::I64(5 * 3 * 3 + 1), Value::I32(2)]);
        }
        _ => panic!("the resumed call did not finish"),
    }

    // Arguments that do not fit, on each engine.
    let refused = |end: Result<Driven, EngineError>| match end {
        Err(EngineError::Link(msg)) => assert!(msg.contains("takes (i32, i64)"), "{msg}"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("accepted"),
    };
    #[cfg(feature = "wasmtime")]
    let (wt, wm) = {
        let wt = tabi_wasmtime::Wasmtime::new();
        let wm = wt.compile(&wasm).unwrap();
        (wt, wm)
    };
    let wrong: [&[Value]; 3] = [
        &[Value::I32(1)],
        &[Value::I64(1), Value::I64(2)],
        &[Value::I32(1), Value::I64(2), Value::I32(3)],
    ];
    for args in wrong {
        refused(session(PauseControl::never()).drive(work(args)));
        #[cfg(feature = "wasmtime")]
        refused(
            wt.session(&wm, process(), PauseControl::never(), Points::all())
                .unwrap()
                .drive(work(args)),
        );
    }
}

/// A yield is the host's chance to take a request, so a run that cannot be asked to pause
/// gives the guest a budget that does not run out, and a run that can keeps the module's
/// default: the budget a pause records shows which. Yielding has a cost beyond the unwind
/// and rewind: the rewound frames run on in their resume copies.
#[test]
fn a_run_nothing_can_interrupt_does_not_yield() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tabi_libos::machine::{
        DEFAULT_BUDGET, Outcome, PauseControl, PauseReason, UNINTERRUPTIBLE_BUDGET,
    };

    const PASSES: i32 = 3_000_000; // three times the default budget
    let wasm = module(&format!(
        r#"(func (export "_start")
            (local $i i32)
            (loop $again
              (global.set $counter (i64.add (global.get $counter) (i64.const 1)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const {PASSES}))))
            (call $out (call $point (i32.const 1)))
            (call $flush))"#
    ));
    let sp = rewrite_with_safepoints(&wasm);
    // The budget left when the run pauses at its first migration point, after the loop.
    let budget_left = |backend, request: bool, budget: Option<i32>| {
        let (p, _, _) = tabi_tests::process_for(&spec());
        let mut control = PauseControl::after(1);
        control.budget = budget;
        if request {
            control.request = Some(Arc::new(AtomicBool::new(false)));
        }
        match tabi_tests::migrate::run_pausable(backend, &sp.wasm, p, control, None) {
            Outcome::Paused(p) => {
                assert_eq!(p.reason, PauseReason::AfterPoints);
                p.state
                    .budget
                    .expect("a module with safepoints records its budget")
            }
            Outcome::Finished(f) => panic!("finished without pausing: {:?}", f.exit),
        }
    };
    for backend in tabi_tests::Backend::ALL {
        // Nothing can ask: one safepoint per pass, and no yield.
        let left = budget_left(backend, false, None);
        assert!(
            (UNINTERRUPTIBLE_BUDGET - PASSES - 2..=UNINTERRUPTIBLE_BUDGET - PASSES + 2)
                .contains(&left),
            "{backend:?}: {left}"
        );
        // A request can come: the guest yields each time the default budget runs out.
        let left = budget_left(backend, true, None);
        assert!((0..=DEFAULT_BUDGET).contains(&left), "{backend:?}: {left}");
        // A budget the host gives is kept either way.
        let left = budget_left(backend, false, Some(2 * PASSES));
        assert!(
            (PASSES - 2..=PASSES + 2).contains(&left),
            "{backend:?}: {left}"
        );
    }
}
