//! ONNX's `TensorProto`, decoded from its protobuf bytes: what the conformance tests read
//! the reference inputs and outputs of ONNX's node tests from. Written here (not taken from
//! an inference runtime) so that what the tests compare against is read independently of
//! what they test.

/// A tensor: ONNX's element type number, its dimensions, and its elements as little-endian
/// bytes of that type's natural size.
#[derive(Clone, Debug, PartialEq)]
pub struct PbTensor {
    /// `TensorProto.DataType`: 1 float, 2 uint8, 3 int8, 4 uint16, 5 int16, 6 int32,
    /// 7 int64, 8 string, 9 bool, 10 float16, 11 double, 12 uint32, 13 uint64, 16 bfloat16.
    pub dtype: i32,
    /// The dimensions.
    pub dims: Vec<i64>,
    /// The elements, little-endian.
    pub bytes: Vec<u8>,
}

/// Bytes of one element of ONNX type `dtype`; `None` for types with no fixed size (string)
/// or that these tests do not read.
pub fn element_size(dtype: i32) -> Option<usize> {
    Some(match dtype {
        2 | 3 | 9 => 1,
        4 | 5 | 10 | 16 => 2,
        1 | 6 | 12 => 4,
        7 | 11 | 13 => 8,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.b.split_first().ok_or("a varint runs past the end")?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << shift.min(63);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("a varint is too long".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.b.len() {
            return Err("a field runs past the end".into());
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
}

/// The values of a repeated scalar field, packed or not: varints, or fixed 4 or 8 bytes.
fn repeated(
    wire: u64,
    r: &mut Reader<'_>,
    fixed: Option<usize>,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    let one = |r: &mut Reader<'_>| -> Result<u64, String> {
        match fixed {
            None => r.varint(),
            Some(4) => {
                let b = r.take(4)?;
                Ok(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            }
            Some(_) => {
                let b = r.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Ok(u64::from_le_bytes(a))
            }
        }
    };
    if wire == 2 {
        let len = r.varint()? as usize;
        let mut inner = Reader { b: r.take(len)? };
        while !inner.b.is_empty() {
            out.push(one(&mut inner)?);
        }
    } else {
        out.push(one(r)?);
    }
    Ok(())
}

fn skip(wire: u64, r: &mut Reader<'_>) -> Result<(), String> {
    match wire {
        0 => r.varint().map(drop),
        1 => r.take(8).map(drop),
        2 => {
            let len = r.varint()? as usize;
            r.take(len).map(drop)
        }
        5 => r.take(4).map(drop),
        w => Err(format!("wire type {w}")),
    }
}

/// Decodes a serialized `TensorProto`.
pub fn decode_tensor(bytes: &[u8]) -> Result<PbTensor, String> {
    let mut r = Reader { b: bytes };
    let (mut dims, mut dtype, mut raw) = (Vec::new(), 0i32, None);
    let (mut floats, mut int32s, mut int64s, mut doubles, mut uint64s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while !r.b.is_empty() {
        let key = r.varint()?;
        let (field, wire) = (key >> 3, key & 7);
        match field {
            1 => {
                let mut v = Vec::new();
                repeated(wire, &mut r, None, &mut v)?;
                dims.extend(v.into_iter().map(|d| d as i64));
            }
            2 => dtype = r.varint()? as i32,
            4 => repeated(wire, &mut r, Some(4), &mut floats)?,
            5 => repeated(wire, &mut r, None, &mut int32s)?,
            7 => repeated(wire, &mut r, None, &mut int64s)?,
            9 => {
                let len = r.varint()? as usize;
                raw = Some(r.take(len)?.to_vec());
            }
            10 => repeated(wire, &mut r, Some(8), &mut doubles)?,
            11 => repeated(wire, &mut r, None, &mut uint64s)?,
            _ => skip(wire, &mut r)?,
        }
    }
    let size = element_size(dtype).ok_or_else(|| format!("element type {dtype}"))?;
    let bytes = match raw {
        Some(raw) => raw,
        None => {
            let words: &[u64] = match dtype {
                1 => &floats,
                11 => &doubles,
                7 => &int64s,
                12 | 13 => &uint64s,
                _ => &int32s,
            };
            words
                .iter()
                .flat_map(|&w| w.to_le_bytes()[..size].to_vec())
                .collect()
        }
    };
    let count = dims
        .iter()
        .try_fold(1i64, |n, &d| n.checked_mul(d))
        .filter(|&n| n >= 0)
        .ok_or("the dimensions overflow")?;
    if Some(bytes.len() as i64) != count.checked_mul(size as i64) {
        return Err(format!(
            "{} bytes for {count} elements of type {dtype}",
            bytes.len()
        ));
    }
    Ok(PbTensor { dtype, dims, bytes })
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// The elements of `bytes`, little-endian elements of ONNX type `dtype`, as numbers.
pub fn values(dtype: i32, bytes: &[u8]) -> Option<Vec<f64>> {
    let size = element_size(dtype)?;
    Some(
        bytes
            .chunks_exact(size)
            .map(|c| {
                let mut a = [0u8; 8];
                a[..size].copy_from_slice(c);
                let w = u64::from_le_bytes(a);
                match dtype {
                    1 => f64::from(f32::from_bits(w as u32)),
                    11 => f64::from_bits(w),
                    10 => f16_to_f64(w as u16),
                    16 => f64::from(f32::from_bits((w as u32) << 16)),
                    2 | 9 => w as u8 as f64,
                    3 => w as u8 as i8 as f64,
                    4 => w as u16 as f64,
                    5 => w as u16 as i16 as f64,
                    6 => w as u32 as i32 as f64,
                    7 => w as i64 as f64,
                    12 => w as u32 as f64,
                    _ => w as f64,
                }
            })
            .collect(),
    )
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A float `ValueInfoProto` named `name` of fixed dimensions `dims`.
fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        field_varint(&mut dim, 1, d);
        field_bytes(&mut shape, 1, &dim);
    }
    let mut tensor_type = Vec::new();
    field_varint(&mut tensor_type, 1, 1);
    field_bytes(&mut tensor_type, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tensor_type);
    let mut info = Vec::new();
    field_bytes(&mut info, 1, name.as_bytes());
    field_bytes(&mut info, 2, &ty);
    info
}

/// An ONNX model (opset 13) of one `MatMul`: input `x` of shape `[1, k]` times a weight of
/// shape `[k, n]` whose elements come from a generator seeded with `seed`; output `y` of
/// shape `[1, n]`. Its size is about `4 * k * n` bytes: how the benchmarks make a model of a
/// size they choose without storing one.
pub fn matmul_model(k: u64, n: u64, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut weights = Vec::with_capacity((k * n * 4) as usize);
    for _ in 0..k * n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) / (k as f32).sqrt();
        weights.extend_from_slice(&v.to_le_bytes());
    }
    let mut init = Vec::new();
    field_varint(&mut init, 1, k);
    field_varint(&mut init, 1, n);
    field_varint(&mut init, 2, 1);
    field_bytes(&mut init, 8, b"w");
    field_bytes(&mut init, 9, &weights);
    let mut node = Vec::new();
    field_bytes(&mut node, 1, b"x");
    field_bytes(&mut node, 1, b"w");
    field_bytes(&mut node, 2, b"y");
    field_bytes(&mut node, 4, b"MatMul");
    let mut graph = Vec::new();
    field_bytes(&mut graph, 1, &node);
    field_bytes(&mut graph, 2, b"matmul");
    field_bytes(&mut graph, 5, &init);
    field_bytes(&mut graph, 11, &value_info("x", &[1, k]));
    field_bytes(&mut graph, 12, &value_info("y", &[1, n]));
    let mut opset = Vec::new();
    field_bytes(&mut opset, 1, b"");
    field_varint(&mut opset, 2, 13);
    let mut model = Vec::new();
    field_varint(&mut model, 1, 8);
    field_bytes(&mut model, 7, &graph);
    field_bytes(&mut model, 8, &opset);
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-encoded tensor: dims [2] (packed), float, two float_data elements (packed).
    #[test]
    fn decodes_typed_and_raw_fields() {
        let mut b = vec![0x0a, 0x01, 0x02, 0x10, 0x01, 0x22, 0x08];
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        let t = decode_tensor(&b).unwrap();
        assert_eq!((t.dtype, t.dims.clone()), (1, vec![2]));
        assert_eq!(values(1, &t.bytes).unwrap(), [1.5, -2.0]);
        // int64 as varints, unpacked, with a raw_data that wins.
        let b = [0x08, 0x03, 0x10, 0x07, 0x4a, 0x18];
        let mut b = b.to_vec();
        for v in [1i64, -1, 300] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let t = decode_tensor(&b).unwrap();
        assert_eq!(values(7, &t.bytes).unwrap(), [1.0, -1.0, 300.0]);
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert!(decode_tensor(&[0x0a, 0x05]).is_err());
    }
}
