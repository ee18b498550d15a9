//! An envelope read straight into what the PostgreSQL sink applies: the change's identity and position, and
//! its row as one line of PostgreSQL's text COPY format, with no Python value per column.
//!
//! The line is what `psycopg`'s `write_row` writes for the values the pure path hands it (the Avro values
//! after the column's converter, `sinks/postgres/copylines.py`), byte for byte, for the kinds of column
//! claimed here; tests/unit/sinks/test_sink_copylines.py proves it on random values. A message with
//! anything else (a value outside what a kind mirrors exactly, unsent TOAST columns, no change id or LSN, an
//! op other than c/u/r/d, malformed input) gives None: the caller takes the pure path for that message, so
//! results and errors never differ.

use std::fmt::Write as _;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};

use crate::{digits, lower, Cursor, Fail, Node, Res, Unsupported};

/// How a column's value is written, mirroring the pure path's value and psycopg's text dumper for it.
#[derive(Clone, Copy)]
enum Kind {
    /// A value written as the reader returns it (no converter), by its Avro type: an int/long as a Python int
    /// (decimal digits), a boolean (`t` / `f`), a string (its UTF-8 bytes with COPY's escapes; a NUL is
    /// psycopg's error, left to the pure path), a decimal of the fast read (`str(Decimal)`).
    Plain,
    /// Integer time since the epoch in 1/`units` seconds, converted to a `datetime` by `types._epoch`:
    /// `str(datetime)`, with `+00:00` when `zone`. Values outside Python's years 1..9999 go the pure way.
    Timestamp { units: i128, zone: bool },
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Skip,
    Before,
    After,
    Source,
    Op,
    TsMs,
    ChangeId,
    Toast,
    Schema,
    Table,
    Lsn,
    CommitLsn,
}

fn slot(name: &str) -> Slot {
    match name {
        "before" => Slot::Before,
        "after" => Slot::After,
        "source" => Slot::Source,
        "op" => Slot::Op,
        "ts_ms" => Slot::TsMs,
        "change_id" => Slot::ChangeId,
        "unchanged_toast" => Slot::Toast,
        "schema" => Slot::Schema,
        "table" => Slot::Table,
        "lsn" => Slot::Lsn,
        "commit_lsn" => Slot::CommitLsn,
        _ => Slot::Skip,
    }
}

/// A scalar read from the envelope or its source block.
enum Scalar<'a> {
    Null,
    Long(i64),
    Str(&'a [u8]),
    Other,
}

/// Reads one kind of envelope (one value schema) into `(op, change_id, commit_lsn, lsn, schema, table, ts_ms,
/// line)` (`change_id` a `uuid.UUID`), or None where the pure path must decide.
#[pyclass(frozen, module = "cdc_accel")]
pub(crate) struct ChangeReader {
    records: Vec<Vec<Node>>,
    envelope: usize,
    slots: Vec<Slot>,
    source: usize,
    source_slots: Vec<Slot>,
    row: usize,
    kinds: Vec<Kind>,
    /// `uuid.UUID`, `uuid.SafeUUID.unknown` and the attribute names a `UUID` is made of (what `UUID(text)` sets).
    uuid: Py<PyType>,
    safe_unknown: Py<PyAny>,
    int_name: Py<PyString>,
    is_safe_name: Py<PyString>,
}

fn kind_of(spec: &Bound<'_, PyAny>) -> PyResult<Kind> {
    let tuple = spec.cast::<PyTuple>()?;
    let tag: String = tuple.get_item(0)?.extract()?;
    Ok(match tag.as_str() {
        "plain" => Kind::Plain,
        "timestamp" => {
            let units: i64 = tuple.get_item(1)?.extract()?;
            if units <= 0 {
                return Err(Unsupported::new_err("timestamp units"));
            }
            Kind::Timestamp { units: units as i128, zone: tuple.get_item(2)?.extract()? }
        }
        other => return Err(Unsupported::new_err(other.to_string())),
    })
}

/// Whether every value `node` can hold is written by `kind` (null always is).
fn fits(node: &Node, kind: Kind) -> bool {
    match (node, kind) {
        (Node::Null, _) => true,
        (Node::Union(branches), _) => branches.iter().all(|b| fits(b, kind)),
        (Node::Long, Kind::Plain | Kind::Timestamp { .. }) => true,
        (Node::Boolean | Node::String | Node::Decimal { fast: Some(_), .. }, Kind::Plain) => true,
        _ => false,
    }
}

/// The record a before/after/source field holds (directly or as the non-null member of a union).
fn record_in(node: &Node) -> Option<usize> {
    match node {
        Node::Record(i) => Some(*i),
        Node::Union(branches) => {
            let mut found = None;
            for branch in branches {
                match branch {
                    Node::Null => {}
                    Node::Record(i) if found.is_none() => found = Some(*i),
                    _ => return None,
                }
            }
            found
        }
        _ => None,
    }
}

impl ChangeReader {
    fn skip(&self, cur: &mut Cursor<'_>, node: &Node, depth: u32) -> Res<()> {
        match node {
            Node::Null => {}
            Node::Boolean => {
                cur.byte()?;
            }
            Node::Long => {
                cur.long()?;
            }
            Node::Float => {
                cur.take(4)?;
            }
            Node::Double => {
                cur.take(8)?;
            }
            Node::String | Node::Bytes | Node::Decimal { .. } => {
                cur.sized()?;
            }
            Node::Record(index) => {
                if depth >= crate::MAX_DEPTH {
                    return Err(Fail);
                }
                for field in &self.records[*index] {
                    self.skip(cur, field, depth + 1)?;
                }
            }
            Node::Array(item) => loop {
                let mut count = cur.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    count = count.checked_neg().ok_or(Fail)?;
                    cur.long()?;
                }
                if count as u64 > (cur.buf.len() - cur.pos) as u64 {
                    return Err(Fail);
                }
                for _ in 0..count {
                    self.skip(cur, item, depth)?;
                }
            },
            Node::Union(branches) => {
                let index = cur.long()?;
                let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
                self.skip(cur, branch, depth)?;
            }
        }
        Ok(())
    }

    fn scalar<'a>(&self, cur: &mut Cursor<'a>, node: &Node) -> Res<Scalar<'a>> {
        Ok(match node {
            Node::Null => Scalar::Null,
            Node::Long => Scalar::Long(cur.long()?),
            Node::String => Scalar::Str(cur.sized()?),
            Node::Union(branches) => {
                let index = cur.long()?;
                let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
                self.scalar(cur, branch)?
            }
            other => {
                self.skip(cur, other, 1)?;
                Scalar::Other
            }
        })
    }

    /// Position of the image record (None for a null image), the cursor moved past it.
    fn image(&self, cur: &mut Cursor<'_>, node: &Node) -> Res<Option<usize>> {
        match node {
            Node::Null => Ok(None),
            Node::Union(branches) => {
                let index = cur.long()?;
                let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
                self.image(cur, branch)
            }
            Node::Record(i) if *i == self.row => {
                let at = cur.pos;
                self.skip(cur, node, 1)?;
                Ok(Some(at))
            }
            _ => Err(Fail),
        }
    }

    /// True when the array (or null) holds no item.
    fn empty(&self, cur: &mut Cursor<'_>, node: &Node) -> Res<bool> {
        match node {
            Node::Null => Ok(true),
            Node::Union(branches) => {
                let index = cur.long()?;
                let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
                self.empty(cur, branch)
            }
            Node::Array(_) => {
                let at = cur.pos;
                let first = cur.long()?;
                cur.pos = at;
                self.skip(cur, node, 1)?;
                Ok(first == 0)
            }
            _ => Err(Fail),
        }
    }

    fn line(&self, cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Res<()> {
        for (i, (node, kind)) in self.records[self.row].iter().zip(&self.kinds).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            value(cur, node, *kind, out)?;
        }
        Ok(())
    }
}

fn value(cur: &mut Cursor<'_>, node: &Node, kind: Kind, out: &mut Vec<u8>) -> Res<()> {
    match (node, kind) {
        (Node::Null, _) => out.extend_from_slice(b"\\N"),
        (Node::Union(branches), _) => {
            let index = cur.long()?;
            let branch = usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?;
            value(cur, branch, kind, out)?;
        }
        (Node::Long, Kind::Plain) => {
            let v = cur.long()?;
            if v < 0 {
                out.push(b'-');
            }
            digits_of(v.unsigned_abs(), 1, out);
        }
        (Node::Long, Kind::Timestamp { units, zone }) => timestamp(cur.long()?, units, zone, out)?,
        (Node::Boolean, Kind::Plain) => out.push(if cur.byte()? != 0 { b't' } else { b'f' }),
        (Node::String, Kind::Plain) => text(cur.sized()?, out)?,
        (Node::Decimal { fast: Some((precision, scale)), .. }, Kind::Plain) => {
            decimal(cur.sized()?, *precision, *scale, out)?
        }
        _ => return Err(Fail),
    }
    Ok(())
}

fn text(raw: &[u8], out: &mut Vec<u8>) -> Res<()> {
    // Python's strict decoder and Rust's accept the same UTF-8 (no surrogates, no overlong forms).
    std::str::from_utf8(raw).map_err(|_| Fail)?;
    for &b in raw {
        match b {
            0 => return Err(Fail), // psycopg refuses it; the pure path raises that error
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0B => out.extend_from_slice(b"\\v"),
            0x0C => out.extend_from_slice(b"\\f"),
            _ => out.push(b),
        }
    }
    Ok(())
}

/// `str(Decimal(f"{n}E{-scale}"))`: Python's to-scientific-string of coefficient |n|, exponent -scale.
fn decimal(raw: &[u8], precision: u32, scale: i64, out: &mut Vec<u8>) -> Res<()> {
    if raw.len() > 16 {
        return Err(Fail);
    }
    let mut n: i128 = if raw.first().is_some_and(|b| b & 0x80 != 0) { -1 } else { 0 };
    for &b in raw {
        n = (n << 8) | b as i128;
    }
    if digits(n.unsigned_abs()) > precision {
        return Err(Fail); // the pure read goes through fastavro's context there
    }
    let coefficient = n.unsigned_abs().to_string();
    let c = coefficient.as_bytes();
    let len = c.len() as i64;
    if n < 0 {
        out.push(b'-');
    }
    let exponent = -scale;
    let adjusted = exponent + len - 1;
    if exponent == 0 {
        out.extend_from_slice(c);
    } else if adjusted >= -6 {
        // exponent < 0 here (scale > 0): plain notation.
        let point = len + exponent;
        if point > 0 {
            out.extend_from_slice(&c[..point as usize]);
            out.push(b'.');
            out.extend_from_slice(&c[point as usize..]);
        } else {
            out.extend_from_slice(b"0.");
            out.resize(out.len() + (-point) as usize, b'0');
            out.extend_from_slice(c);
        }
    } else {
        out.push(c[0]);
        if c.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&c[1..]);
        }
        let mut tail = String::new();
        let _ = write!(tail, "E{}", adjusted); // adjusted < -6: always signed negative
        out.extend_from_slice(tail.as_bytes());
    }
    Ok(())
}

/// `n` in decimal, zero-padded to at least `width` digits (at most 20).
fn digits_of(mut n: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while n > 0 {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = i.min(buf.len() - width.max(1));
    out.extend_from_slice(&buf[start..]);
}

const PY_MIN_MICROS: i128 = -62_135_596_800_000_000;
const PY_MAX_MICROS: i128 = 253_402_300_799_999_999;
const MICROS_PER_DAY: i128 = 86_400_000_000;

fn timestamp(value: i64, units: i128, zone: bool, out: &mut Vec<u8>) -> Res<()> {
    let micros = (value as i128 * 1_000_000).div_euclid(units);
    if !(PY_MIN_MICROS..=PY_MAX_MICROS).contains(&micros) {
        return Err(Fail); // infinities and years beyond Python's datetime: the converter writes text
    }
    let days = micros.div_euclid(MICROS_PER_DAY) as i64;
    let rest = micros.rem_euclid(MICROS_PER_DAY) as i64;
    // Days since 1970-01-01 -> civil date (Howard Hinnant's algorithm, as `types._civil`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (seconds, fraction) = (rest / 1_000_000, rest % 1_000_000);
    digits_of(year as u64, 4, out);
    out.push(b'-');
    digits_of(month as u64, 2, out);
    out.push(b'-');
    digits_of(day as u64, 2, out);
    out.push(b' ');
    digits_of((seconds / 3600) as u64, 2, out);
    out.push(b':');
    digits_of((seconds / 60 % 60) as u64, 2, out);
    out.push(b':');
    digits_of((seconds % 60) as u64, 2, out);
    if fraction != 0 {
        out.push(b'.');
        digits_of(fraction as u64, 6, out);
    }
    if zone {
        out.extend_from_slice(b"+00:00");
    }
    Ok(())
}

/// The 128-bit value of a UUID in its canonical text (hyphens at 8, 13, 18, 23; hex digits of either case);
/// None for any other spelling `uuid.UUID` accepts (braces, `urn:uuid:`, no hyphens): the pure path reads those.
fn uuid_value(raw: &[u8]) -> Option<u128> {
    if raw.len() != 36 {
        return None;
    }
    let mut n: u128 = 0;
    for (i, &b) in raw.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        n = (n << 4) | (b as char).to_digit(16)? as u128;
    }
    Some(n)
}

fn str_of<'py>(py: Python<'py>, raw: &[u8]) -> Res<Bound<'py, PyAny>> {
    let text = std::str::from_utf8(raw).map_err(|_| Fail)?;
    Ok(PyString::new(py, text).into_any())
}

#[pymethods]
impl ChangeReader {
    /// `root`, `records` as for `Reader` (each record's `[(field name, node), ...]`); `kinds`: per field of the
    /// row record, `("plain",)` or `("timestamp", units, zone)`.
    #[new]
    fn new(root: &Bound<'_, PyAny>, records: &Bound<'_, PyAny>, kinds: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut lowered = Vec::new();
        let mut names = Vec::new();
        for record in records.try_iter()? {
            let mut fields = Vec::new();
            let mut field_names = Vec::new();
            for field in record?.try_iter()? {
                let field = field?;
                field_names.push(field.get_item(0)?.extract::<String>()?);
                fields.push(lower(&field.get_item(1)?)?);
            }
            lowered.push(fields);
            names.push(field_names);
        }
        let envelope = match lower(root)? {
            Node::Record(i) if i < lowered.len() => i,
            _ => return Err(Unsupported::new_err("not an envelope record")),
        };
        let slots: Vec<Slot> = names[envelope].iter().map(|n| slot(n)).collect();
        let find = |wanted: Slot| slots.iter().position(|s| *s == wanted);
        let (before, after, source) = match (find(Slot::Before), find(Slot::After), find(Slot::Source)) {
            (Some(b), Some(a), Some(s)) => (b, a, s),
            _ => return Err(Unsupported::new_err("not an envelope")),
        };
        let row = record_in(&lowered[envelope][after]).ok_or_else(|| Unsupported::new_err("after"))?;
        if record_in(&lowered[envelope][before]) != Some(row) {
            return Err(Unsupported::new_err("before and after differ"));
        }
        let source_index = record_in(&lowered[envelope][source]).ok_or_else(|| Unsupported::new_err("source"))?;
        if source_index == envelope || row == envelope || source_index >= lowered.len() || row >= lowered.len() {
            return Err(Unsupported::new_err("record index"));
        }
        let mut envelope_slots = slots.clone();
        for s in envelope_slots.iter_mut() {
            if matches!(s, Slot::Schema | Slot::Table | Slot::Lsn | Slot::CommitLsn) {
                *s = Slot::Skip; // those names count in the source block only
            }
        }
        let source_slots = names[source_index]
            .iter()
            .map(|n| match slot(n) {
                s @ (Slot::Schema | Slot::Table | Slot::Lsn | Slot::CommitLsn) => s,
                _ => Slot::Skip,
            })
            .collect();
        let mut parsed = Vec::new();
        for spec in kinds.try_iter()? {
            parsed.push(kind_of(&spec?)?);
        }
        if parsed.len() != lowered[row].len() {
            return Err(Unsupported::new_err("one kind per column"));
        }
        for (node, kind) in lowered[row].iter().zip(&parsed) {
            if !fits(node, *kind) {
                return Err(Unsupported::new_err("a column's Avro type does not fit its kind"));
            }
        }
        let py = root.py();
        let module = py.import("uuid")?;
        Ok(ChangeReader {
            uuid: module.getattr("UUID")?.cast_into::<PyType>()?.unbind(),
            safe_unknown: module.getattr("SafeUUID")?.getattr("unknown")?.unbind(),
            int_name: PyString::intern(py, "int").unbind(),
            is_safe_name: PyString::intern(py, "is_safe").unbind(),
            records: lowered,
            envelope,
            slots: envelope_slots,
            source: source_index,
            source_slots,
            row,
            kinds: parsed,
        })
    }

    /// The change in `buf` from `pos` (the Avro body after the wire header), or None: the pure path decides.
    fn __call__<'py>(&self, py: Python<'py>, buf: &Bound<'py, PyBytes>, pos: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = buf.as_bytes();
        Ok(self.read(py, data, pos).ok())
    }
}

impl ChangeReader {
    /// `uuid.UUID(text)` for a canonical `text`, built as that constructor leaves it (`int`, `is_safe`)
    /// without its parsing in Python.
    fn uuid_of<'py>(&self, py: Python<'py>, value: u128) -> Res<Bound<'py, PyAny>> {
        let bytes = value.to_le_bytes();
        // SAFETY: plain CPython calls on owned references; `PyType_GenericAlloc` is what `object.__new__`
        // allocates a `UUID` (a class with slots) with, and a failed call returns NULL with an exception set.
        unsafe {
            let int = ffi::_PyLong_FromByteArray(bytes.as_ptr(), 16, 1, 0);
            if int.is_null() {
                drop(PyErr::fetch(py));
                return Err(Fail);
            }
            let int = Bound::from_owned_ptr(py, int);
            let object = ffi::PyType_GenericAlloc(self.uuid.as_ptr() as *mut ffi::PyTypeObject, 0);
            if object.is_null() {
                drop(PyErr::fetch(py));
                return Err(Fail);
            }
            let object = Bound::from_owned_ptr(py, object);
            for (name, item) in [(self.int_name.bind(py), int.as_any()), (self.is_safe_name.bind(py), self.safe_unknown.bind(py))] {
                // UUID's own __setattr__ refuses (immutable); its constructor sets these slots the same way.
                if ffi::PyObject_GenericSetAttr(object.as_ptr(), name.as_ptr(), item.as_ptr()) != 0 {
                    drop(PyErr::fetch(py));
                    return Err(Fail);
                }
            }
            Ok(object)
        }
    }
}

impl ChangeReader {
    fn read<'py>(&self, py: Python<'py>, data: &[u8], pos: usize) -> Res<Bound<'py, PyAny>> {
        let mut cur = Cursor { buf: data, pos };
        let (mut before, mut after) = (None, None);
        let (mut op, mut change_id, mut ts_ms) = (None, None, None);
        let (mut schema, mut table, mut lsn, mut commit_lsn) = (None, None, None, None);
        for (node, slot) in self.records[self.envelope].iter().zip(&self.slots) {
            match slot {
                Slot::Before => before = self.image(&mut cur, node)?,
                Slot::After => after = self.image(&mut cur, node)?,
                Slot::Op => op = Some(self.scalar(&mut cur, node)?),
                Slot::TsMs => ts_ms = Some(self.scalar(&mut cur, node)?),
                Slot::ChangeId => change_id = Some(self.scalar(&mut cur, node)?),
                Slot::Toast => {
                    if !self.empty(&mut cur, node)? {
                        return Err(Fail);
                    }
                }
                Slot::Source => {
                    let record = match node {
                        Node::Union(branches) => {
                            let index = cur.long()?;
                            usize::try_from(index).ok().and_then(|i| branches.get(i)).ok_or(Fail)?
                        }
                        other => other,
                    };
                    if !matches!(record, Node::Record(i) if *i == self.source) {
                        return Err(Fail); // a null source block: the pure path
                    }
                    for (field, s) in self.records[self.source].iter().zip(&self.source_slots) {
                        match s {
                            Slot::Schema => schema = Some(self.scalar(&mut cur, field)?),
                            Slot::Table => table = Some(self.scalar(&mut cur, field)?),
                            Slot::Lsn => lsn = Some(self.scalar(&mut cur, field)?),
                            Slot::CommitLsn => commit_lsn = Some(self.scalar(&mut cur, field)?),
                            _ => self.skip(&mut cur, field, 2)?,
                        }
                    }
                }
                _ => self.skip(&mut cur, node, 1)?,
            }
        }
        if cur.pos != data.len() {
            return Err(Fail);
        }
        let op = match op {
            Some(Scalar::Str(raw)) if matches!(raw, b"c" | b"u" | b"r" | b"d") => raw,
            _ => return Err(Fail),
        };
        let image = if op == b"d" { before } else { after }.ok_or(Fail)?;
        let change_id = match change_id {
            Some(Scalar::Str(raw)) => uuid_value(raw).ok_or(Fail)?,
            _ => return Err(Fail), // no id in the envelope: a header's or Debezium's, the pure path derives it
        };
        let lsn = match lsn {
            Some(Scalar::Long(v)) => v,
            _ => return Err(Fail),
        };
        let commit_lsn = match commit_lsn {
            Some(Scalar::Long(v)) => v,
            _ => lsn,
        };
        let (schema, table) = match (schema, table) {
            (Some(Scalar::Str(s)), Some(Scalar::Str(t))) => (s, t),
            _ => return Err(Fail),
        };
        let ts_ms = match ts_ms {
            Some(Scalar::Long(v)) => v.into_pyobject(py)?.into_any(),
            Some(Scalar::Null) | None => py.None().into_bound(py),
            _ => return Err(Fail),
        };
        let mut line = Vec::with_capacity(128);
        let mut row = Cursor { buf: data, pos: image };
        self.line(&mut row, &mut line)?;
        let items: [Bound<'py, PyAny>; 8] = [
            str_of(py, op)?,
            self.uuid_of(py, change_id)?,
            commit_lsn.into_pyobject(py)?.into_any(),
            lsn.into_pyobject(py)?.into_any(),
            str_of(py, schema)?,
            str_of(py, table)?,
            ts_ms,
            PyBytes::new(py, &line).into_any(),
        ];
        Ok(PyTuple::new(py, items)?.into_any())
    }
}
