//! The `.npy` files of a built data set: NumPy's format (`numpy.lib.format`,
//! versions 1.0, 2.0 and 3.0), read as hostile input.
//!
//! A file is the magic `\x93NUMPY`, the version, the header's length and a
//! header that is a Python dict literal such as
//! `{'descr': '|u1', 'fortran_order': False, 'shape': (108, 900), }`,
//! followed by the array's bytes. This reader takes exactly that: the three
//! keys once each, string, boolean and integer-tuple values, and data that
//! fills the rest of the file to the byte (the authors' arrays are plain
//! `uint8` and `int32`). It is written here, not taken from a crate, because
//! the crates that read `.npy` (ndarray-npy, npyz) parse the header with
//! `py_literal` and through it `pest`, whose stack probe (`psm`) has a C
//! build script that stops the Windows (MSVC) build; the tests check it
//! against ndarray-npy's writer.

/// What the data set's arrays hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// `|u1` (`<u1` and `>u1` too: one byte has no order).
    U8,
    /// `<i4` or `>i4`.
    I32 { little_endian: bool },
}

impl Dtype {
    fn parse(descr: &str) -> Option<Self> {
        match descr {
            "|u1" | "<u1" | ">u1" => Some(Dtype::U8),
            "<i4" => Some(Dtype::I32 {
                little_endian: true,
            }),
            ">i4" => Some(Dtype::I32 {
                little_endian: false,
            }),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I32 { .. } => 4,
        }
    }
}

/// A checked `.npy` file: its header, and its data, which holds exactly the
/// elements the shape counts.
#[derive(Debug)]
pub(crate) struct Npy<'a> {
    /// The element type.
    pub dtype: Dtype,
    /// The element type as the header writes it (`descr`).
    pub descr: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Whether the data is stored column-major (`fortran_order`).
    pub fortran_order: bool,
    /// The array's bytes, the last of the file.
    pub data: &'a [u8],
}

const MAGIC: &[u8] = b"\x93NUMPY";

impl<'a> Npy<'a> {
    /// Reads a whole file. The error says what is wrong, without the path.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or("not an .npy file (no \\x93NUMPY magic)")?;
        let (&[major, minor], rest) = rest.split_first_chunk().ok_or("the file ends early")?;
        let (header_len, rest) = match (major, minor) {
            (1, 0) => {
                let (len, rest) = rest.split_first_chunk().ok_or("the file ends early")?;
                (u16::from_le_bytes(*len) as usize, rest)
            }
            (2 | 3, 0) => {
                let (len, rest) = rest.split_first_chunk().ok_or("the file ends early")?;
                (u32::from_le_bytes(*len) as usize, rest)
            }
            _ => {
                return Err(format!(
                    "format version {major}.{minor} is not 1.0, 2.0 or 3.0"
                ));
            }
        };
        if rest.len() < header_len {
            return Err(format!(
                "the header claims {header_len} bytes, but {} follow",
                rest.len()
            ));
        }
        let (header, data) = rest.split_at(header_len);
        let header = std::str::from_utf8(header)
            .ok()
            .filter(|h| h.is_ascii())
            .ok_or("the header is not ASCII text")?;
        let (descr, fortran_order, shape) = parse_header(header)?;
        let dtype = Dtype::parse(&descr).ok_or_else(|| {
            format!("dtype '{descr}' is none of uint8 ('|u1') and int32 ('<i4', '>i4')")
        })?;
        let elements = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        if data.len() != elements {
            return Err(format!(
                "shape {shape:?} of {descr} needs {elements} bytes of data, but {} follow the header",
                data.len()
            ));
        }
        Ok(Npy {
            dtype,
            descr,
            shape,
            fortran_order,
            data,
        })
    }

    /// Whether the data is in row-major order: C order, or Fortran order
    /// of a shape where the two are the same (at most one dimension above
    /// 1, or no elements).
    pub fn is_c_order(&self) -> bool {
        !self.fortran_order
            || self.shape.contains(&0)
            || self.shape.iter().filter(|&&d| d > 1).count() <= 1
    }

    /// The elements of an int32 array, in storage order.
    pub fn i32s(&self) -> Option<Vec<i32>> {
        let Dtype::I32 { little_endian } = self.dtype else {
            return None;
        };
        let word = |c: &[u8]| -> [u8; 4] { [c[0], c[1], c[2], c[3]] };
        Some(
            self.data
                .chunks_exact(4)
                .map(|c| {
                    if little_endian {
                        i32::from_le_bytes(word(c))
                    } else {
                        i32::from_be_bytes(word(c))
                    }
                })
                .collect(),
        )
    }
}

/// The header dict: `descr`, `fortran_order` and `shape`, each exactly
/// once, no other key, then only spaces and the closing newline.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let mut p = Literal(header.as_bytes());
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    while !p.eat(b'}') {
        let key = p.string()?;
        p.expect(b':')?;
        let twice = |k: &str| format!("the header names '{k}' twice");
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(p.string()?),
            "fortran_order" if fortran.is_none() => fortran = Some(p.boolean()?),
            "shape" if shape.is_none() => shape = Some(p.tuple()?),
            "descr" | "fortran_order" | "shape" => return Err(twice(&key)),
            _ => return Err(format!("the header has an unknown key '{key}'")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    if p.0.iter().any(|&b| !b.is_ascii_whitespace()) {
        return Err("the header has text after its dict".into());
    }
    let missing = |k: &str| format!("the header lacks '{k}'");
    Ok((
        descr.ok_or_else(|| missing("descr"))?,
        fortran.ok_or_else(|| missing("fortran_order"))?,
        shape.ok_or_else(|| missing("shape"))?,
    ))
}

/// The rest of a header, read one Python literal at a time.
struct Literal<'a>(&'a [u8]);

impl Literal<'_> {
    fn skip_space(&mut self) {
        while let [b' ' | b'\t' | b'\n' | b'\r', rest @ ..] = self.0 {
            self.0 = rest;
        }
    }

    /// Takes `c` (after spaces) if it comes next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_space();
        match self.0 {
            [first, rest @ ..] if *first == c => {
                self.0 = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "the header is not a dict literal: '{}' expected at `{}`",
                c as char,
                self.excerpt()
            ))
        }
    }

    fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.0[..self.0.len().min(16)]).into_owned()
    }

    /// A quoted string without escapes.
    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let quote = match self.0.first() {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("a string expected at `{}`", self.excerpt())),
        };
        let body = &self.0[1..];
        let end = body
            .iter()
            .position(|&b| b == quote || b == b'\\')
            .filter(|&i| body[i] == quote)
            .ok_or("a string in the header is not closed (or has an escape)")?;
        self.0 = &body[end + 1..];
        Ok(String::from_utf8_lossy(&body[..end]).into_owned())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_space();
        for (word, value) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if let Some(rest) = self.0.strip_prefix(word) {
                self.0 = rest;
                return Ok(value);
            }
        }
        Err(format!("True or False expected at `{}`", self.excerpt()))
    }

    /// A tuple of non-negative integers: `()`, `(n,)`, `(n, m)`, ...
    fn tuple(&mut self) -> Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        loop {
            if self.eat(b')') {
                break;
            }
            items.push(self.integer()?);
            if !self.eat(b',') {
                self.expect(b')')?;
                if items.len() == 1 {
                    // `(n)` is an integer in Python, not a tuple
                    return Err("the shape is not a tuple".into());
                }
                break;
            }
        }
        Ok(items)
    }

    /// A decimal integer (`L`, Python 2's long suffix, allowed).
    fn integer(&mut self) -> Result<usize, String> {
        self.skip_space();
        let digits = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(format!("a dimension expected at `{}`", self.excerpt()));
        }
        let text = std::str::from_utf8(&self.0[..digits]).unwrap_or_default();
        let value = text
            .parse()
            .map_err(|_| format!("dimension {text} is too large"))?;
        self.0 = &self.0[digits..];
        if let [b'L', rest @ ..] = self.0 {
            self.0 = rest;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `.npy` file as NumPy writes it: the header padded with spaces so
    /// that the data starts at a multiple of 64, ended by a newline.
    fn file(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let prefix = if version == 1 { 10 } else { 12 };
        let mut header = header.to_string();
        while !(prefix + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((header.len() as u16).to_le_bytes());
        } else {
            out.extend((header.len() as u32).to_le_bytes());
        }
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_what_numpy_writes() {
        for version in [1, 2, 3] {
            let bytes = file(
                version,
                "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }",
                &[1, 2, 3, 4, 5, 6],
            );
            let npy = Npy::parse(&bytes).unwrap();
            assert_eq!(npy.dtype, Dtype::U8);
            assert_eq!(npy.shape, [2, 3]);
            assert!(npy.is_c_order());
            assert_eq!(npy.data, [1, 2, 3, 4, 5, 6]);
            assert_eq!(npy.i32s(), None);
        }
        let data: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = file(
            1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        assert_eq!(Npy::parse(&bytes).unwrap().i32s(), Some(vec![-1, 7]));
        let data: Vec<u8> = [-1i32, 7].iter().flat_map(|v| v.to_be_bytes()).collect();
        let bytes = file(
            1,
            "{\"shape\":(2L,),\"fortran_order\":True,\"descr\":\">i4\"}",
            &data,
        );
        let npy = Npy::parse(&bytes).unwrap();
        assert_eq!(npy.i32s(), Some(vec![-1, 7]));
        assert!(npy.fortran_order && npy.is_c_order()); // one dimension
        let bytes = file(
            1,
            "{'descr': '<i4', 'fortran_order': False, 'shape': ()}",
            &data[..4],
        );
        assert_eq!(Npy::parse(&bytes).unwrap().shape, Vec::<usize>::new());
    }

    #[test]
    fn fortran_order_of_a_matrix_is_not_c_order() {
        let header =
            |shape: &str| format!("{{'descr': '|u1', 'fortran_order': True, 'shape': {shape}, }}");
        let order = |shape: &str, n: usize| {
            Npy::parse(&file(1, &header(shape), &vec![0; n]))
                .unwrap()
                .is_c_order()
        };
        assert!(!order("(2, 3)", 6));
        assert!(order("(1, 3)", 3));
        assert!(order("(0, 3)", 0));
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        let u8s = |header: &str, data: &[u8]| Npy::parse(&file(1, header, data)).unwrap_err();
        let ok = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
        assert!(Npy::parse(&file(1, ok, &[1, 2])).is_ok());
        for (header, data, needle) in [
            (ok, &[1u8][..], "needs 2 bytes of data, but 1 follow"),
            (ok, &[1, 2, 3], "needs 2 bytes of data, but 3 follow"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                &[0; 8],
                "dtype '<f4'",
            ),
            (
                "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2,), }",
                &[0; 8],
                "a string expected",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (2), }",
                &[0; 2],
                "not a tuple",
            ),
            (
                "{'descr': '|u1', 'fortran_order': 0, 'shape': (2,), }",
                &[0; 2],
                "True or False",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False}",
                &[0],
                "lacks 'shape'",
            ),
            (
                "{'descr': '|u1', 'descr': '|u1', 'fortran_order': False, 'shape': (1,)}",
                &[0],
                "'descr' twice",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), 'x': 1}",
                &[0],
                "unknown key 'x'",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (1,)} x",
                &[0],
                "text after its dict",
            ),
            (
                "{'descr': '|u1\\'', 'fortran_order': False, 'shape': (1,)}",
                &[0],
                "not closed",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (99999999999999999999,)}",
                &[0],
                "too large",
            ),
            (
                "{'descr': '<i4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}",
                &[0],
                "overflows",
            ),
            (
                "{'descr': '|u1', 'fortran_order': False, 'shape': (-1,)}",
                &[0],
                "a dimension expected",
            ),
        ] {
            let err = u8s(header, data);
            assert!(err.contains(needle), "`{needle}` not in `{err}` ({header})");
        }

        let good = file(1, ok, &[1, 2]);
        let err = |bytes: &[u8]| Npy::parse(bytes).unwrap_err();
        assert!(err(&good[..5]).contains("magic"));
        assert!(err(&good[..7]).contains("ends early"));
        assert!(err(&good[..9]).contains("ends early"));
        assert!(err(&good[..20]).contains("the header claims"));
        let mut v4 = good.clone();
        v4[6] = 4;
        assert!(err(&v4).contains("version 4.0"));
        let mut latin = good.clone();
        latin[12] = 0xE9;
        assert!(err(&latin).contains("not ASCII"));
    }
}
