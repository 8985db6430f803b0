//! Decoding a kernel state from outside within a memory budget.
//!
//! postcard is compact: a `None` is one byte, an empty string one byte, yet each becomes an
//! element of a `Vec` or an entry of a map that takes tens of bytes of memory. A hostile
//! snapshot of a few kilobytes (expanded by LZ4 to megabytes of such bytes) could thus ask for
//! gigabytes before any check ran. [`Budgeted`] wraps a serde `Deserializer` and charges, as
//! they are decoded, what the decoded value will take on the heap, failing once a budget is
//! spent:
//!
//! - each element of a sequence (a `Vec`) is charged its size, and each entry of a map twice
//!   the size of its key and value (a B-tree's nodes are at least half full);
//! - a one-byte element (a byte of a file's contents) and a string's bytes are not charged
//!   against the budget: each stands for a byte of the input, so they cannot amplify it. They
//!   are counted in [`Budget::content`].
//!
//! Structs, tuples and options are stored inline in whatever holds them and cost nothing of
//! their own. What the budget counts is thus what the decoded state's collections take, up to
//! the slack of a `Vec` that doubled as it grew.

use core::cell::Cell;
use core::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// What a decode may still charge, and what it has counted.
#[derive(Debug)]
pub struct Budget {
    left: Cell<u64>,
    content: Cell<u64>,
    spent: Cell<bool>,
}

impl Budget {
    /// A budget of `bytes` for the decoded state's structure.
    pub fn new(bytes: u64) -> Self {
        Budget {
            left: Cell::new(bytes),
            content: Cell::new(0),
            spent: Cell::new(false),
        }
    }

    /// What is left of the budget.
    pub fn left(&self) -> u64 {
        self.left.get()
    }

    /// Whether a charge failed: the decode stopped for want of budget (the deserializer's own
    /// error may not say so; postcard's does not).
    pub fn spent(&self) -> bool {
        self.spent.get()
    }

    /// Bytes of content (one-byte elements and string bytes) decoded so far.
    pub fn content(&self) -> u64 {
        self.content.get()
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.left.get().checked_sub(bytes as u64) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.spent.set(true);
                Err(E::custom(OverBudget))
            }
        }
    }

    fn count_content(&self, bytes: usize) {
        self.content
            .set(self.content.get().saturating_add(bytes as u64));
    }

    /// Charges one element whose decoded value is `size` bytes.
    fn element<E: de::Error>(&self, size: usize) -> Result<(), E> {
        if size <= 1 {
            self.count_content(size);
            Ok(())
        } else {
            self.charge(size)
        }
    }
}

/// The message of a decode that ran out of budget.
struct OverBudget;

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(OVER_BUDGET)
    }
}

/// What a decode that ran out of budget says.
pub const OVER_BUDGET: &str =
    "the decoded state would take more memory than its encoding can justify";

/// A deserializer that charges what it decodes to a [`Budget`].
pub struct Budgeted<'b, D> {
    inner: D,
    budget: &'b Budget,
}

impl<'b, D> Budgeted<'b, D> {
    /// Wraps `inner`.
    pub fn new(inner: D, budget: &'b Budget) -> Self {
        Budgeted { inner, budget }
    }
}

/// A visitor that passes on what it is shown, wrapping what it decodes next.
struct Wrap<'b, V> {
    inner: V,
    budget: &'b Budget,
    /// Whether the sequence it may be shown lives on the heap (a `Vec`), not inline (a
    /// struct's fields, a tuple).
    heap: bool,
}

/// A seed that decodes with a [`Budgeted`] deserializer.
struct Seed<'b, S> {
    inner: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Budgeted::new(d, self.budget))
    }
}

macro_rules! forward {
    ($($method:ident ( $($arg:ident : $ty:ty),* ) heap: $heap:expr;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
                let budget = self.budget;
                self.inner.$method($($arg,)* Wrap { inner: visitor, budget, heap: $heap })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Budgeted<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any() heap: true;
        deserialize_bool() heap: false;
        deserialize_i8() heap: false;
        deserialize_i16() heap: false;
        deserialize_i32() heap: false;
        deserialize_i64() heap: false;
        deserialize_i128() heap: false;
        deserialize_u8() heap: false;
        deserialize_u16() heap: false;
        deserialize_u32() heap: false;
        deserialize_u64() heap: false;
        deserialize_u128() heap: false;
        deserialize_f32() heap: false;
        deserialize_f64() heap: false;
        deserialize_char() heap: false;
        deserialize_str() heap: false;
        deserialize_string() heap: false;
        deserialize_bytes() heap: false;
        deserialize_byte_buf() heap: false;
        deserialize_option() heap: false;
        deserialize_unit() heap: false;
        deserialize_unit_struct(name: &'static str) heap: false;
        deserialize_newtype_struct(name: &'static str) heap: false;
        deserialize_seq() heap: true;
        deserialize_tuple(len: usize) heap: false;
        deserialize_tuple_struct(name: &'static str, len: usize) heap: false;
        deserialize_map() heap: true;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]) heap: false;
        deserialize_enum(name: &'static str, variants: &'static [&'static str]) heap: false;
        deserialize_identifier() heap: false;
        deserialize_ignored_any() heap: false;
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! pass {
    ($($method:ident ( $ty:ty );)*) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.inner.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: alloc::string::String) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: alloc::vec::Vec<u8>) -> Result<Self::Value, E> {
        self.budget.count_content(v.len());
        self.inner.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner.visit_some(Budgeted::new(d, self.budget))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.inner
            .visit_newtype_struct(Budgeted::new(d, self.budget))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_seq(Seq {
            inner: seq,
            budget: self.budget,
            heap: self.heap,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_map(Map {
            inner: map,
            budget: self.budget,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.inner.visit_enum(Enum {
            inner: data,
            budget: self.budget,
        })
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget,
    heap: bool,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        if self.heap {
            self.budget.element(size_of::<T::Value>())?;
        }
        self.inner.next_element_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.budget.charge(2 * size_of::<K::Value>())?;
        self.inner.next_key_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.budget.charge(2 * size_of::<V::Value>())?;
        self.inner.next_value_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'b, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, variant) = self.inner.variant_seed(Seed {
            inner: seed,
            budget,
        })?;
        Ok((
            value,
            Variant {
                inner: variant,
                budget,
            },
        ))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            inner: seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(
            len,
            Wrap {
                inner: visitor,
                budget: self.budget,
                heap: false,
            },
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(
            fields,
            Wrap {
                inner: visitor,
                budget: self.budget,
                heap: false,
            },
        )
    }
}
