//! A strict pickle reader for PyTorch state dicts, by allowlist.
//!
//! `torch.save` stores a state dict as a zip archive whose `data.pkl` is a
//! Python pickle (protocol 2). A pickle is a program for a small stack
//! machine that may import any Python global and call it, which is how
//! malicious checkpoints run code. This machine knows only the opcodes that
//! state-dict pickles use, and only the globals they name:
//!
//! - `collections.OrderedDict` (called with no arguments: an empty dict),
//! - `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor`,
//!   `_rebuild_parameter`, `_rebuild_parameter_with_state`,
//! - the typed storage classes `torch.FloatStorage`, `torch.BFloat16Storage`,
//!   `torch.HalfStorage`, `torch.DoubleStorage`, `torch.LongStorage`,
//!   `torch.IntStorage`, `torch.ShortStorage`, `torch.CharStorage`,
//!   `torch.ByteStorage`, `torch.BoolStorage`.
//!
//! Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, ...)
//! is refused with [`TrmError::ForbiddenPickleGlobal`] at the `GLOBAL` or
//! `STACK_GLOBAL` opcode that names it, before anything else is done with
//! it; nothing is ever imported or executed, the "calls" above are
//! interpreted as data. Every resource the machine uses is bounded before it
//! is allocated: input length, string length, stack depth, open marks, memo
//! entries, nesting depth and the total bytes of all values built (so a
//! pickle that copies a memoized value over and over cannot exhaust memory).
//!
//! Mutable containers (lists and dicts) are never shared: fetching one from
//! the memo is refused, which state-dict pickles never do. Tuples, strings,
//! tensors and globals are immutable, so copying them is faithful.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Result, TrmError, printable};

/// Longest pickle accepted (state-dict pickles are about 100 bytes a tensor).
pub const MAX_PICKLE_BYTES: usize = 64 << 20;
/// Longest string accepted.
pub const MAX_STRING_BYTES: usize = 1 << 20;
/// Deepest stack accepted.
pub const MAX_STACK: usize = 1 << 20;
/// Most marks open at once.
pub const MAX_MARKS: usize = 4096;
/// Most memo entries.
pub const MAX_MEMO: usize = 1 << 20;
/// Deepest nesting of containers.
pub const MAX_DEPTH: usize = 32;
/// Most dimensions of a tensor.
pub const MAX_RANK: usize = 16;
/// Total bytes (approximate) of every value the machine may build, copies
/// included.
pub const MAX_VALUE_BYTES: u64 = 256 << 20;

/// Approximate cost of one value node, whatever its kind.
const NODE_BYTES: u64 = 64;

/// Element type of a PyTorch typed storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageDtype {
    /// `torch.DoubleStorage`: float64.
    F64,
    /// `torch.FloatStorage`: float32.
    F32,
    /// `torch.HalfStorage`: float16.
    F16,
    /// `torch.BFloat16Storage`: bfloat16.
    BF16,
    /// `torch.LongStorage`: int64.
    I64,
    /// `torch.IntStorage`: int32.
    I32,
    /// `torch.ShortStorage`: int16.
    I16,
    /// `torch.CharStorage`: int8.
    I8,
    /// `torch.ByteStorage`: uint8.
    U8,
    /// `torch.BoolStorage`: bool (one byte).
    Bool,
}

impl StorageDtype {
    /// The element type of a storage class of module `torch` (for example
    /// `FloatStorage`), or `None` when the class is not on the allowlist.
    pub fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => StorageDtype::F64,
            "FloatStorage" => StorageDtype::F32,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// PyTorch's name of the element type (`float32`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F64 => "float64",
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
        }
    }

    /// Whether the element type is a floating-point type (widened to f32
    /// when loaded).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StorageDtype::F64 | StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16
        )
    }
}

/// A Python global on the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`.
    RebuildParameterWithState,
    /// A typed storage class of module `torch`.
    Storage(StorageDtype),
}

impl Global {
    /// The allowed global `module.name`, or `None` when it is not allowed.
    pub fn resolve(module: &str, name: &str) -> Option<Self> {
        match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch._utils", "_rebuild_parameter_with_state") => {
                Some(Global::RebuildParameterWithState)
            }
            ("torch", class) => StorageDtype::from_storage_class(class).map(Global::Storage),
            _ => None,
        }
    }
}

/// A storage named by a persistent id: `('storage', class, key, location,
/// numel)`. Its bytes are the archive entry `data/{key}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type, from the storage class.
    pub dtype: StorageDtype,
    /// Key of the storage in the archive (`data/{key}`).
    pub key: String,
    /// Device it was saved from (`cpu`, `cuda:0`, ...); informative only.
    pub location: String,
    /// Elements in the storage.
    pub numel: u64,
}

/// A tensor rebuilt from a storage: a view of `shape` with `stride`,
/// starting `offset` elements into the storage. Not yet checked against
/// the storage's size (see `crate::checkpoint::official`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage.
    pub storage: StorageRef,
    /// Offset of the first element, in elements.
    pub offset: u64,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// A sequence (tuple or list) and the nesting depth it reaches.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    items: Vec<Value>,
    depth: usize,
}

impl Seq {
    fn new(items: Vec<Value>) -> Self {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        Seq { items, depth }
    }

    /// The elements.
    pub fn items(&self) -> &[Value] {
        &self.items
    }
}

/// A dict (plain or ordered) in insertion order, and its nesting depth.
#[derive(Clone, Debug, PartialEq)]
pub struct Dict {
    items: Vec<(Value, Value)>,
    depth: usize,
}

impl Dict {
    fn empty() -> Self {
        Dict {
            items: Vec::new(),
            depth: 1,
        }
    }

    /// The key-value pairs in insertion order (a key set twice appears
    /// twice; [`state_dict`] refuses that).
    pub fn items(&self) -> &[(Value, Value)] {
        &self.items
    }
}

/// A value the machine can build. Nothing here refers to Python code.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple.
    Tuple(Seq),
    /// A list.
    List(Seq),
    /// A dict or `OrderedDict`.
    Dict(Dict),
    /// An allowed global (a class or a rebuild function), not yet called.
    Global(Global),
    /// A storage named by a persistent id.
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Approximate bytes of the value and everything in it; bounded by the
    /// nesting depth limit, so the recursion is shallow.
    fn weight(&self) -> u64 {
        NODE_BYTES
            + match self {
                Value::Str(s) => s.len() as u64,
                Value::Tuple(s) | Value::List(s) => s.items.iter().map(Value::weight).sum(),
                Value::Dict(d) => d.items.iter().map(|(k, v)| k.weight() + v.weight()).sum(),
                Value::Storage(s) => (s.key.len() + s.location.len()) as u64,
                Value::Tensor(t) => {
                    (t.storage.key.len() + t.storage.location.len()) as u64
                        + 8 * (t.shape.len() + t.stride.len()) as u64
                }
                _ => 0,
            }
    }
}

/// Longest tensor name accepted.
pub const MAX_NAME_BYTES: usize = 1024;

/// Whether a tensor name is plain: not empty, at most [`MAX_NAME_BYTES`],
/// no control characters.
pub(crate) fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

/// Name of a pickle opcode, for messages about the ones refused.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        _ => "unknown",
    }
}

/// The pickle machine: input, stack, marks, memo and the value budget.
struct Machine<'a> {
    what: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Position of the opcode being run, for messages.
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    budget: u64,
}

impl<'a> Machine<'a> {
    fn bad(&self, reason: impl std::fmt::Display) -> TrmError {
        TrmError::checkpoint(
            self.what,
            format!("data.pkl, byte {}: {reason}", self.op_pos),
        )
    }

    fn too_large(&self, reason: impl std::fmt::Display) -> TrmError {
        TrmError::TooLarge(format!(
            "{}: data.pkl, byte {}: {reason}; refusing it",
            self.what, self.op_pos
        ))
    }

    fn charge(&mut self, bytes: u64) -> Result<()> {
        if bytes > self.budget {
            return Err(self.too_large(format!(
                "the pickle builds more than {MAX_VALUE_BYTES} bytes of values"
            )));
        }
        self.budget -= bytes;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                self.bad(format!(
                    "needs {n} more bytes, but the pickle ends at byte {}",
                    self.bytes.len()
                ))
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let slice = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    /// A string of `len` bytes, length checked against the input and the
    /// limit before anything is allocated.
    fn string(&mut self, len: u64) -> Result<String> {
        if len > MAX_STRING_BYTES as u64 {
            return Err(self.too_large(format!(
                "a string of {len} bytes exceeds the limit of {MAX_STRING_BYTES}"
            )));
        }
        let raw = self.take(len as usize)?;
        let s = std::str::from_utf8(raw).map_err(|_| self.bad("a string is not valid UTF-8"))?;
        Ok(s.to_string())
    }

    /// A newline-terminated line of the `GLOBAL` opcode (at most 256 bytes).
    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let window = &rest[..rest.len().min(257)];
        let end = window
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.bad("GLOBAL without a newline-terminated name"))?;
        let line = std::str::from_utf8(&window[..end])
            .map_err(|_| self.bad("GLOBAL name is not valid UTF-8"))?
            .to_string();
        self.pos += end + 1;
        Ok(line)
    }

    fn push(&mut self, value: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.too_large(format!("the stack grows beyond {MAX_STACK} values")));
        }
        if value.depth() > MAX_DEPTH {
            return Err(self.too_large(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        self.charge(NODE_BYTES)?;
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.bad("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    fn top_mut(&mut self) -> Result<&mut Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.bad("stack underflow"));
        }
        // Not empty: its length exceeds the floor.
        let top = self.stack.len() - 1;
        Ok(&mut self.stack[top])
    }

    /// Pops everything above the last mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.bad("no MARK to close"))?;
        if mark > self.stack.len() {
            return Err(self.bad("MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pop_str(&mut self, what: &str) -> Result<String> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            other => Err(self.bad(format!("{what} must be a str, got a {}", other.kind()))),
        }
    }

    fn memo_put(&mut self, index: u32) -> Result<()> {
        // A list or dict can never be fetched back (see `memo_get`), so a
        // marker of its kind is stored instead of a copy.
        let weight = match self.stack.last() {
            None => return Err(self.bad("memo store from an empty stack")),
            Some(Value::List(_) | Value::Dict(_)) => NODE_BYTES,
            Some(v) => v.weight(),
        };
        if !self.memo.contains_key(&index) && self.memo.len() >= MAX_MEMO {
            return Err(self.too_large(format!("the memo grows beyond {MAX_MEMO} entries")));
        }
        self.charge(weight)?;
        let value = match self.stack.last() {
            Some(Value::List(_)) => Value::List(Seq::new(Vec::new())),
            Some(Value::Dict(_)) => Value::Dict(Dict::empty()),
            Some(v) => v.clone(),
            None => return Err(self.bad("memo store from an empty stack")),
        };
        self.memo.insert(index, value);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<()> {
        let value = self
            .memo
            .get(&index)
            .ok_or_else(|| self.bad(format!("memo entry {index} is not defined")))?;
        if matches!(value, Value::List(_) | Value::Dict(_)) {
            return Err(self.bad(format!(
                "memo entry {index} is a mutable {}; sharing one is not supported in a state dict",
                value.kind()
            )));
        }
        let weight = value.weight();
        let value = value.clone();
        self.charge(weight)?;
        self.push(value)
    }

    /// Resolves a global against the allowlist; anything else is refused by
    /// name, here, before any further processing.
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(global) => self.push(Value::Global(global)),
            None => Err(TrmError::ForbiddenPickleGlobal {
                what: self.what.to_string(),
                module: printable(module),
                name: printable(name),
            }),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let version = self.u8()?;
                    if version > 5 {
                        return Err(self.bad(format!("pickle protocol {version} is unknown")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint for buffered readers; the whole
                    // pickle is in memory already.
                    self.take(8)?;
                }
                b'.' => {
                    if !self.marks.is_empty() || self.stack.len() != 1 {
                        return Err(self.bad(format!(
                            "STOP with {} values on the stack and {} marks open",
                            self.stack.len(),
                            self.marks.len()
                        )));
                    }
                    return self.pop();
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.too_large(format!("more than {MAX_MARKS} marks are open")));
                    }
                    self.charge(8)?;
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Value::Dict(Dict::empty()))?,
                b']' => self.push(Value::List(Seq::new(Vec::new())))?,
                b')' => self.push(Value::Tuple(Seq::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Seq::new(items)))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Seq::new(items)))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Seq::new(items)))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut dict = Dict::empty();
                    self.extend_dict(&mut dict, items)?;
                    self.push(Value::Dict(dict))?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'X' => {
                    let len = self.u32()? as u64;
                    let s = self.string(len)?;
                    self.charge(len)?;
                    self.push(Value::Str(s))?;
                }
                0x8c => {
                    let len = self.u8()? as u64;
                    let s = self.string(len)?;
                    self.charge(len)?;
                    self.push(Value::Str(s))?;
                }
                0x8d => {
                    let len = u64::from_le_bytes(self.take_array()?);
                    let s = self.string(len)?;
                    self.charge(len)?;
                    self.push(Value::Str(s))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push(Value::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(self.bad(format!("LONG1 of {n} bytes does not fit in 64 bits")));
                    }
                    let raw = self.take(n)?;
                    let mut buf = if raw.last().is_some_and(|&b| b & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(raw);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push(Value::Float(v))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'q' => {
                    let index = self.u8()? as u32;
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = self.u32()?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = u32::try_from(self.memo.len())
                        .map_err(|_| self.too_large("the memo is full"))?;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = self.u8()? as u32;
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = self.u32()?;
                    self.memo_get(index)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop_str("STACK_GLOBAL's name")?;
                    let module = self.pop_str("STACK_GLOBAL's module")?;
                    self.global(&module, &name)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.reduce(callable, args)?;
                    self.push(result)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    self.build(state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(Value::Storage(storage))?;
                }
                other => {
                    return Err(self.bad(format!(
                        "opcode {} (0x{other:02x}) is not used by PyTorch state dicts; refusing it",
                        opcode_name(other)
                    )));
                }
            }
        }
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.too_large(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        let bad_kind = match self.top_mut()? {
            Value::List(seq) => {
                seq.depth = seq.depth.max(depth);
                seq.items.extend(items);
                return Ok(());
            }
            other => other.kind(),
        };
        Err(self.bad(format!("APPEND to a {bad_kind}, not a list")))
    }

    fn extend_dict(&self, dict: &mut Dict, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("a dict needs key-value pairs, got an odd count"));
        }
        let mut iter = items.into_iter();
        while let (Some(key), Some(value)) = (iter.next(), iter.next()) {
            if matches!(key, Value::List(_) | Value::Dict(_)) {
                return Err(self.bad(format!("a {} cannot be a dict key", key.kind())));
            }
            let depth = 1 + key.depth().max(value.depth());
            if depth > MAX_DEPTH {
                return Err(self.too_large(format!("values nest deeper than {MAX_DEPTH} levels")));
            }
            dict.depth = dict.depth.max(depth);
            dict.items.push((key, value));
        }
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.bad("SETITEM(S) without a dict"));
        }
        let Some(Value::Dict(mut dict)) = self.stack.pop() else {
            return Err(self.bad("SETITEM(S) on something that is not a dict"));
        };
        let result = self.extend_dict(&mut dict, items);
        self.stack.push(Value::Dict(dict));
        result
    }

    /// `BUILD` sets an object's state; the only object state dicts build is
    /// an `OrderedDict` with `_metadata`, whose state is ignored.
    fn build(&mut self, state: Value) -> Result<()> {
        let target = self.top_mut()?.kind();
        match (target, &state) {
            ("dict", Value::Dict(_) | Value::None | Value::Tuple(_)) => Ok(()),
            _ => Err(self.bad(format!(
                "BUILD of a {target} with a {} state is not supported",
                state.kind()
            ))),
        }
    }

    /// The persistent id of a storage: `('storage', class, key, location,
    /// numel)`.
    fn persistent_load(&self, pid: Value) -> Result<StorageRef> {
        let Value::Tuple(seq) = pid else {
            return Err(self.bad(format!(
                "a persistent id must be a tuple, got a {}",
                pid.kind()
            )));
        };
        match seq.items.as_slice() {
            [
                Value::Str(tag),
                Value::Global(Global::Storage(dtype)),
                Value::Str(key),
                Value::Str(location),
                Value::Int(numel),
            ] if tag == "storage" => {
                let key_ok = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !key_ok {
                    return Err(self.bad(format!("storage key {key:?} is not a plain name")));
                }
                let numel = u64::try_from(*numel)
                    .map_err(|_| self.bad(format!("storage `{key}` has {numel} elements")))?;
                Ok(StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    location: location.clone(),
                    numel,
                })
            }
            _ => Err(self
                .bad("a persistent id must be ('storage', <storage class>, key, location, numel)")),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(global) = callable else {
            return Err(self.bad(format!("REDUCE calls a {}, not a global", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.bad(format!(
                "REDUCE arguments must be a tuple, got a {}",
                args.kind()
            )));
        };
        let args = args.items;
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.bad("OrderedDict() is only supported without arguments"));
                }
                Ok(Value::Dict(Dict::empty()))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let expected = if global == Global::RebuildTensor {
                    4..=4
                } else {
                    6..=7
                };
                if !expected.contains(&args.len()) {
                    return Err(self.bad(format!(
                        "_rebuild_tensor takes {expected:?} arguments, got {}",
                        args.len()
                    )));
                }
                let mut args = args.into_iter();
                let (Some(storage), Some(offset), Some(size), Some(stride)) =
                    (args.next(), args.next(), args.next(), args.next())
                else {
                    return Err(self.bad("_rebuild_tensor lacks arguments"));
                };
                let Value::Storage(storage) = storage else {
                    return Err(
                        self.bad(format!("_rebuild_tensor's storage is a {}", storage.kind()))
                    );
                };
                let offset = self.non_negative(&offset, "storage offset")?;
                let shape = self.int_tuple(&size, "size")?;
                let stride = self.int_tuple(&stride, "stride")?;
                if shape.len() != stride.len() {
                    return Err(self.bad(format!(
                        "a tensor has {} dimensions but {} strides",
                        shape.len(),
                        stride.len()
                    )));
                }
                // requires_grad, backward hooks (an empty OrderedDict) and
                // the optional metadata are data; nothing to run.
                Ok(Value::Tensor(TensorRef {
                    storage,
                    offset,
                    shape,
                    stride,
                }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let expected = if global == Global::RebuildParameter {
                    3
                } else {
                    4
                };
                if args.len() != expected {
                    return Err(self.bad(format!(
                        "_rebuild_parameter takes {expected} arguments, got {}",
                        args.len()
                    )));
                }
                match args.into_iter().next() {
                    Some(tensor @ Value::Tensor(_)) => Ok(tensor),
                    Some(other) => {
                        Err(self.bad(format!("_rebuild_parameter's data is a {}", other.kind())))
                    }
                    None => Err(self.bad("_rebuild_parameter lacks arguments")),
                }
            }
            Global::Storage(dtype) => Err(self.bad(format!(
                "the storage class of {} cannot be called",
                dtype.name()
            ))),
        }
    }

    fn non_negative(&self, value: &Value, what: &str) -> Result<u64> {
        match value {
            Value::Int(v) => u64::try_from(*v).map_err(|_| self.bad(format!("{what} {v} < 0"))),
            other => Err(self.bad(format!("{what} must be an int, got a {}", other.kind()))),
        }
    }

    fn int_tuple(&self, value: &Value, what: &str) -> Result<Vec<u64>> {
        let Value::Tuple(seq) = value else {
            return Err(self.bad(format!(
                "tensor {what} must be a tuple, got a {}",
                value.kind()
            )));
        };
        if seq.items.len() > MAX_RANK {
            return Err(self.bad(format!(
                "a tensor of {} dimensions (at most {MAX_RANK} accepted)",
                seq.items.len()
            )));
        }
        seq.items
            .iter()
            .map(|v| self.non_negative(v, &format!("tensor {what}")))
            .collect()
    }
}

/// Runs a pickle on the allowlisted machine and returns the value it builds.
/// `what` names the file in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Value> {
    if bytes.len() > MAX_PICKLE_BYTES {
        return Err(TrmError::TooLarge(format!(
            "{what}: data.pkl holds {} bytes, beyond the limit of {MAX_PICKLE_BYTES}",
            bytes.len()
        )));
    }
    Machine {
        what,
        bytes,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: MAX_VALUE_BYTES,
    }
    .run()
}

/// The tensors of a state dict: the pickle must build a dict (plain or
/// ordered) from string names to tensors. Names are returned in the order
/// of the pickle; a name given twice is refused.
pub fn state_dict(value: Value, what: &str) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(dict) = value else {
        return Err(TrmError::checkpoint(
            what,
            format!(
                "the pickle holds a {}, not a state dict (a dict of tensors)",
                value.kind()
            ),
        ));
    };
    let mut seen = BTreeMap::new();
    let mut out = Vec::with_capacity(dict.items.len());
    for (key, value) in dict.items {
        let Value::Str(name) = key else {
            return Err(TrmError::checkpoint(
                what,
                format!("a state-dict key is a {}, not a str", key.kind()),
            ));
        };
        if !plain_name(&name) {
            return Err(TrmError::checkpoint(
                what,
                format!(
                    "state-dict entry `{}` is not a plain name (empty, longer than {MAX_NAME_BYTES} bytes, or with control characters)",
                    printable(&name)
                ),
            ));
        }
        let Value::Tensor(tensor) = value else {
            return Err(TrmError::checkpoint(
                what,
                format!(
                    "state-dict entry `{name}` is a {}, not a tensor",
                    value.kind()
                ),
            ));
        };
        if seen.insert(name.clone(), ()).is_some() {
            return Err(TrmError::checkpoint(
                what,
                format!("state-dict entry `{name}` is given twice"),
            ));
        }
        out.push((name, tensor));
    }
    Ok(out)
}

/// [`parse`] then [`state_dict`].
pub fn parse_state_dict(bytes: &[u8], what: &str) -> Result<Vec<(String, TensorRef)>> {
    state_dict(parse(bytes, what)?, what)
}
