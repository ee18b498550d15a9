//! A compiled Avro binary reader returning exactly what `schemas.codegen.compile_reader`'s generated
//! pure-Python reader returns.
//!
//! The schema arrives already lowered by `schemas/accel.py` (names resolved by the same rules as the pure
//! generator): nested tuples such as `("long",)`, `("record", 3)`, `("union", [...])`. A tag this crate does
//! not know raises `Unsupported`, and the caller keeps the pure reader for that schema: a schema is read
//! entirely here or not at all.
//!
//! Values the fast path does not mirror bit for bit (malformed input of any kind, varints beyond 64 bits,
//! `float` NaNs, decimals that fastavro would round) are not approximated: the whole message is handed to
//! the pure reader, which then returns or raises exactly what it always does. Errors are rare (poison
//! messages), so they cost nothing worth measuring, and the reader never has an error path of its own.

use std::os::raw::c_char;

mod copy;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};

create_exception!(
    cdc_accel,
    Unsupported,
    PyException,
    "The lowered schema uses something this reader does not read; keep the pure reader."
);

/// Records nest deeper than this only through recursive schemas; past it the pure reader decides (it
/// raises RecursionError or reads the value), the native stack is never at risk.
pub(crate) const MAX_DEPTH: u32 = 400;

pub(crate) enum Node {
    Null,
    Boolean,
    Long,
    Float,
    Double,
    String,
    Bytes,
    /// `fast`: (precision, scale) when both are plain integers fastavro accepts; otherwise every value goes
    /// through `read` (fastavro's own conversion, which the pure reader calls too).
    Decimal {
        fast: Option<(u32, i64)>,
        spec: Py<PyAny>,
        read: Py<PyAny>,
    },
    Record(usize),
    Array(Box<Node>),
    Union(Vec<Node>),
}

struct Record {
    fields: Vec<(Py<PyString>, Node)>,
}

/// The input needs the pure reader (malformed, or a value the fast path does not mirror exactly).
pub(crate) struct Fail;

impl From<PyErr> for Fail {
    fn from(_: PyErr) -> Self {
        Fail
    }
}

impl From<std::convert::Infallible> for Fail {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

pub(crate) struct Cursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    pub(crate) fn byte(&mut self) -> Res<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(Fail),
        }
    }

    /// A zig-zag varint of at most 64 bits; anything longer (the pure reader reads arbitrary Python ints)
    /// is left to the pure reader.
    #[inline(always)]
    pub(crate) fn long(&mut self) -> Res<i64> {
        let b = self.byte()?;
        let n = if b & 0x80 == 0 {
            b as u64
        } else {
            let mut n = (b & 0x7F) as u64;
            let mut shift = 7u32;
            loop {
                let b = self.byte()?;
                if shift == 63 && b > 1 {
                    return Err(Fail);
                }
                n |= ((b & 0x7F) as u64) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            n
        };
        Ok(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    #[inline(always)]
    pub(crate) fn take(&mut self, size: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(size).ok_or(Fail)?;
        let out = self.buf.get(self.pos..end).ok_or(Fail)?;
        self.pos = end;
        Ok(out)
    }

    #[inline(always)]
    pub(crate) fn sized(&mut self) -> Res<&'a [u8]> {
        let size = self.long()?;
        if size < 0 {
            return Err(Fail);
        }
        self.take(size as usize)
    }
}

/// A reader compiled for one schema: `reader(buf, pos) -> (value, end)`, the pure reader's signature.
#[pyclass(frozen, module = "cdc_accel")]
struct Reader {
    records: Vec<Record>,
    root: Node,
    fallback: Py<PyAny>,
    decimal: Py<PyAny>,
}

fn tag_of<'py>(node: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyTuple>, String)> {
    let tuple = node.cast::<PyTuple>()?.clone();
    let tag: String = tuple.get_item(0)?.extract()?;
    Ok((tuple, tag))
}

pub(crate) fn lower(node: &Bound<'_, PyAny>) -> PyResult<Node> {
    let (tuple, tag) = tag_of(node)?;
    Ok(match tag.as_str() {
        "null" => Node::Null,
        "boolean" => Node::Boolean,
        "long" => Node::Long,
        "float" => Node::Float,
        "double" => Node::Double,
        "string" => Node::String,
        "bytes" => Node::Bytes,
        "decimal" => {
            let precision: Option<u32> = tuple.get_item(1)?.extract()?;
            let scale: Option<i64> = tuple.get_item(2)?.extract()?;
            Node::Decimal {
                fast: precision.zip(scale),
                spec: tuple.get_item(3)?.unbind(),
                read: tuple.get_item(4)?.unbind(),
            }
        }
        "record" => Node::Record(tuple.get_item(1)?.extract()?),
        "array" => Node::Array(Box::new(lower(&tuple.get_item(1)?)?)),
        "union" => {
            let branches = tuple.get_item(1)?;
            let mut out = Vec::new();
            for branch in branches.try_iter()? {
                out.push(lower(&branch?)?);
            }
            Node::Union(out)
        }
        other => return Err(Unsupported::new_err(other.to_string())),
    })
}

pub(crate) fn digits(mut n: u128) -> u32 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

impl Reader {
    fn read<'py>(&self, py: Python<'py>, cur: &mut Cursor<'_>, node: &Node, depth: u32) -> Res<Bound<'py, PyAny>> {
        Ok(match node {
            Node::Null => py.None().into_bound(py),
            Node::Boolean => PyBool::new(py, cur.byte()? != 0).to_owned().into_any(),
            Node::Long => cur.long()?.into_pyobject(py)?.into_any(),
            Node::Float => {
                let raw = cur.take(4)?;
                let x = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                if x.is_nan() {
                    return Err(Fail); // the pure reader widens NaN payloads as its Python build does
                }
                PyFloat::new(py, x as f64).into_any()
            }
            Node::Double => {
                let raw = cur.take(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(raw);
                PyFloat::new(py, f64::from_le_bytes(b)).into_any()
            }
            Node::String => {
                let raw = cur.sized()?;
                // Python's own strict UTF-8 decoder: the same acceptance as `bytes.decode()`.
                let ptr = unsafe {
                    ffi::PyUnicode_DecodeUTF8(raw.as_ptr() as *const c_char, raw.len() as ffi::Py_ssize_t, std::ptr::null())
                };
                if ptr.is_null() {
                    drop(PyErr::fetch(py));
                    return Err(Fail);
                }
                unsafe { Bound::from_owned_ptr(py, ptr) }
            }
            Node::Bytes => PyBytes::new(py, cur.sized()?).into_any(),
            Node::Decimal { fast, spec, read } => {
                let raw = cur.sized()?;
                if let Some((precision, scale)) = *fast {
                    if raw.len() <= 16 {
                        let mut n: i128 = if raw.first().is_some_and(|b| b & 0x80 != 0) { -1 } else { 0 };
                        for &b in raw {
                            n = (n << 8) | b as i128;
                        }
                        // Within the precision fastavro's context does not round: coefficient n, exponent -scale.
                        if digits(n.unsigned_abs()) <= precision {
                            let text = format!("{}E{}", n, -scale);
                            return Ok(self.decimal.bind(py).call1((text,))?);
                        }
                    }
                }
                read.bind(py).call1((PyBytes::new(py, raw), spec.bind(py)))?
            }
            Node::Record(index) => {
                if depth >= MAX_DEPTH {
                    return Err(Fail);
                }
                let dict = PyDict::new(py);
                for (name, field) in &self.records[*index].fields {
                    let value = self.read(py, cur, field, depth + 1)?;
                    dict.set_item(name.bind(py), value)?;
                }
                dict.into_any()
            }
            Node::Array(item) => {
                let list = PyList::empty(py);
                loop {
                    let mut count = cur.long()?;
                    if count == 0 {
                        break;
                    }
                    if count < 0 {
                        count = count.checked_neg().ok_or(Fail)?;
                        cur.long()?; // the block's size in bytes: not needed
                    }
                    // More items than bytes left: corrupt, or items of zero bytes (nulls); either way the pure
                    // reader decides, at its own pace (a corrupt count must not fill memory in a tight loop).
                    if count as u64 > (cur.buf.len() - cur.pos) as u64 {
                        return Err(Fail);
                    }
                    for _ in 0..count {
                        list.append(self.read(py, cur, item, depth)?)?;
                    }
                }
                list.into_any()
            }
            Node::Union(branches) => {
                let index = cur.long()?;
                let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
                self.read(py, cur, branch, depth)?
            }
        })
    }
}

#[pymethods]
impl Reader {
    /// `root`: the lowered root node; `records`: each record's `[(field name, node), ...]`, indexed by
    /// `("record", i)`; `fallback`: the pure reader, which reads whatever this one leaves to it.
    #[new]
    fn new(py: Python<'_>, root: &Bound<'_, PyAny>, records: &Bound<'_, PyAny>, fallback: Py<PyAny>) -> PyResult<Self> {
        let mut lowered = Vec::new();
        for record in records.try_iter()? {
            let mut fields = Vec::new();
            for field in record?.try_iter()? {
                let field = field?;
                let name: String = field.get_item(0)?.extract()?;
                fields.push((PyString::intern(py, &name).unbind(), lower(&field.get_item(1)?)?));
            }
            lowered.push(Record { fields });
        }
        let root = lower(root)?;
        let count = lowered.len();
        fn check(node: &Node, count: usize) -> PyResult<()> {
            match node {
                Node::Record(i) if *i >= count => Err(Unsupported::new_err("record index out of range")),
                Node::Array(item) => check(item, count),
                Node::Union(branches) => branches.iter().try_for_each(|b| check(b, count)),
                _ => Ok(()),
            }
        }
        check(&root, count)?;
        for record in &lowered {
            for (_, node) in &record.fields {
                check(node, count)?;
            }
        }
        let decimal = py.import("decimal")?.getattr("Decimal")?.unbind();
        Ok(Reader { records: lowered, root, fallback, decimal })
    }

    fn __call__<'py>(&self, py: Python<'py>, buf: &Bound<'py, PyAny>, pos: usize) -> PyResult<Bound<'py, PyAny>> {
        if let Ok(bytes) = buf.cast::<PyBytes>() {
            let mut cur = Cursor { buf: bytes.as_bytes(), pos };
            if let Ok(value) = self.read(py, &mut cur, &self.root, 0) {
                return Ok(PyTuple::new(py, [value, cur.pos.into_pyobject(py)?.into_any()])?.into_any());
            }
        }
        self.fallback.bind(py).call1((buf, pos))
    }
}

#[pymodule]
fn cdc_accel(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reader>()?;
    m.add_class::<copy::ChangeReader>()?;
    m.add("Unsupported", m.py().get_type::<Unsupported>())?;
    Ok(())
}
