//! Reading and writing safetensors files: the model checkpoint, `trm run`'s
//! input and output. The `safetensors` crate validates the header and the
//! offsets; this module converts element types and reports errors by name.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Result, TrmError};

/// Reads a whole file, with the path in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| TrmError::io(path, e))
}

/// Refuses a directory given where a file is wanted ("is a directory;
/// give `wanted`"), with the path in the error: mapping one would fail
/// with the operating system's "No such device".
pub(crate) fn refuse_directory(path: &Path, wanted: &str) -> Result<()> {
    if path.is_dir() {
        let reason = format!("is a directory; give {wanted}");
        return Err(TrmError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, reason),
        ));
    }
    Ok(())
}

/// Maps a whole file read-only, with the path in the error. The mapping's
/// bytes are checked as hostile input by whoever reads them; a file
/// truncated while mapped is the one thing no reader can guard against
/// (SIGBUS), as with any mapped file.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    refuse_directory(path, "a file")?;
    let file = std::fs::File::open(path).map_err(|e| TrmError::io(path, e))?;
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TrmError::io(path, e))?;
    Ok(map)
}

/// Writes a whole file, with the path in the error.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| TrmError::io(path, e))
}

/// Largest safetensors header accepted (TRM headers are a few KiB).
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// Checks what the safetensors crate trusts: the header length against the
/// file, and every tensor's offsets against the data and its shape against
/// overflow. safetensors 0.8 adds the last offset to the header length
/// unchecked: eight consistent tensors of 2^61 - 1 bytes each overflow it,
/// a panic with overflow checks on (FUZZING.md; the input is
/// `fuzz/regressions/model_file/crash-offsets-sum-overflow.safetensors`).
fn prevalidate(bytes: &[u8], what: &str) -> Result<()> {
    let bad = |reason: String| TrmError::safetensors(what, reason);
    let Some(len_bytes) = bytes.first_chunk::<8>() else {
        return Err(bad(format!(
            "{} bytes cannot hold the 8-byte header length",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    let available = (bytes.len() - 8) as u64;
    if header_len > available {
        return Err(bad(format!(
            "the header claims {header_len} bytes, but the file holds {available} after the length"
        )));
    }
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "a header of {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES}"
        )));
    }
    let data_len = available - header_len;
    let header = &bytes[8..8 + header_len as usize];
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad(format!("the header is not a JSON object: {e}")))?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let printable = crate::error::printable(name);
        let offsets = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64()).collect::<Vec<_>>());
        match offsets.as_deref() {
            Some([Some(start), Some(end)]) if start <= end && *end <= data_len => {}
            _ => {
                return Err(bad(format!(
                    "tensor `{printable}` has data_offsets outside the {data_len} bytes of data"
                )));
            }
        }
        let count = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|dims| {
                dims.iter()
                    .try_fold(1u64, |acc, d| d.as_u64().and_then(|d| acc.checked_mul(d)))
            });
        if count.is_none_or(|n| n.checked_mul(8).is_none()) {
            return Err(bad(format!(
                "tensor `{printable}` has a shape that is not a list of sizes or whose element count overflows"
            )));
        }
    }
    Ok(())
}

/// Parses a safetensors buffer; `what` names it in errors.
pub(crate) fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<SafeTensors<'a>> {
    prevalidate(bytes, what)?;
    SafeTensors::deserialize(bytes).map_err(|e| TrmError::safetensors(what, e))
}

/// The `__metadata__` map of a safetensors buffer (empty when absent).
pub(crate) fn metadata(bytes: &[u8], what: &str) -> Result<HashMap<String, String>> {
    prevalidate(bytes, what)?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| TrmError::safetensors(what, e))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn dtype_name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

/// Widens a floating-point tensor (F32, BF16, F16, F64) to f32.
pub(crate) fn to_f32(name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    let out = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(TrmError::TensorDtype {
                name: name.to_string(),
                dtype: dtype_name(other),
                expected: "F32, BF16, F16 or F64".into(),
            });
        }
    };
    Ok(out)
}

/// Reads an integer tensor (I32 or I64) as i64.
pub(crate) fn to_i64(name: &str, view: &TensorView<'_>) -> Result<Vec<i64>> {
    let data = view.data();
    let out = match view.dtype() {
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        other => {
            return Err(TrmError::TensorDtype {
                name: name.to_string(),
                dtype: dtype_name(other),
                expected: "I32 or I64".into(),
            });
        }
    };
    Ok(out)
}

/// A tensor to write: name, element type, shape, little-endian bytes.
pub(crate) struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, data: &[f32]) -> Self {
        OwnedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn i32(name: impl Into<String>, shape: Vec<usize>, data: &[i32]) -> Self {
        OwnedTensor {
            name: name.into(),
            dtype: Dtype::I32,
            shape,
            bytes: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Serialises tensors (and string metadata) to a safetensors buffer.
pub(crate) fn serialize(
    tensors: &[OwnedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| TrmError::safetensors(t.name.clone(), e))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| TrmError::safetensors("output", e))
}
