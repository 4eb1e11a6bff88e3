//! JSON documents parsed into flat arrays of nodes ("tapes"), and Arrow batches built
//! straight from their texts: the ingest path's cheaper alternative to walking
//! `serde_json::Value` trees, with no allocation per value.
//!
//! Contract: [`documents_to_batch_from_texts`] gives the batch that
//! [`crate::build::documents_to_batch_refs`] gives for the same documents, column for
//! column and value for value. Where it cannot promise that (a key twice in one object,
//! text that is not the JSON serde_json would accept) it returns `None`, and the caller
//! builds from the documents' values instead.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanArray, BooleanBufferBuilder, BooleanBuilder, Float64Array,
    Float64Builder, Int64Array, Int64Builder, ListArray, StringArray, StringBuilder, StructArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::build::{build_array, field_index, variant_array};
use crate::document::{Document, IngestContext};
use crate::types::{self, EVENT_TIME, ID, META, NULLS};

/// One node of a tape. Containers are followed by their contents; an object's contents are
/// pairs of a `Str` key node and the value's nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`: stored as a variant, as a `serde_json` value would be.
    UInt(u64),
    Float(f64),
    /// Bytes `start..start + len` of the source text, or of the tape's unescaped text.
    Str {
        start: u32,
        len: u32,
        escaped: bool,
    },
    /// `end` is the index of the first node after the container's contents.
    Array {
        len: u32,
        end: u32,
    },
    Object {
        len: u32,
        end: u32,
    },
}

/// The input could not be put on a tape the way `serde_json` would read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotOnTape;

/// A JSON text's nodes, kept apart from the text their strings point into: a document
/// prepared from its text keeps them, so that storing it does not parse the text again.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    nodes: Vec<Node>,
    unescaped: String,
    text_len: usize,
}

/// A JSON text and its nodes.
pub struct Tape<'a> {
    src: &'a str,
    nodes: &'a [Node],
    unescaped: &'a str,
}

/// Nesting deeper than a document may is left to the value path, which refuses it; so
/// whatever the tape takes is within the depth limit.
const MAX_TAPE_DEPTH: usize = tarn_common::limits::MAX_DOCUMENT_DEPTH;

impl Parsed {
    /// Parses one JSON value, as strictly as `serde_json::from_slice`.
    pub fn parse(src: &[u8]) -> Result<Parsed, NotOnTape> {
        Parsed::parse_text(src).map(|(_, parsed)| parsed)
    }

    /// [`Parsed::parse`], also giving back the text as the UTF-8 it was checked to be.
    fn parse_text(src: &[u8]) -> Result<(&str, Parsed), NotOnTape> {
        if src.len() >= u32::MAX as usize {
            return Err(NotOnTape);
        }
        let src = std::str::from_utf8(src).map_err(|_| NotOnTape)?;
        let mut p = Parser {
            s: src.as_bytes(),
            i: 0,
            nodes: Vec::with_capacity(src.len() / 12 + 4),
            unescaped: String::new(),
        };
        p.document()?;
        let parsed = Parsed {
            nodes: p.nodes,
            unescaped: p.unescaped,
            text_len: src.len(),
        };
        Ok((src, parsed))
    }
}

impl<'a> Tape<'a> {
    /// The tape of `src` from its nodes; `None` when they are not of a text this long.
    fn of(src: &'a [u8], parsed: &'a Parsed) -> Option<Tape<'a>> {
        if parsed.text_len != src.len() {
            return None;
        }
        Some(Tape {
            src: std::str::from_utf8(src).ok()?,
            nodes: &parsed.nodes,
            unescaped: &parsed.unescaped,
        })
    }

    fn root(&self) -> V<'_> {
        V { tape: self, at: 0 }
    }
}

struct Parser<'s> {
    s: &'s [u8],
    i: usize,
    nodes: Vec<Node>,
    unescaped: String,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), NotOnTape> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            Err(NotOnTape)
        }
    }

    /// The whole text: one value, whitespace around it. Iterative, so depth costs no stack.
    fn document(&mut self) -> Result<(), NotOnTape> {
        // Open containers: the index of their node and how many items they hold so far.
        let mut open: Vec<(usize, u32)> = Vec::new();
        'value: loop {
            self.skip_ws();
            match self.peek().ok_or(NotOnTape)? {
                c @ (b'{' | b'[') => {
                    // As deep as `jsonscan::value_depth` counts: `{}` is 1, `{"a":[]}` 2.
                    if open.len() + 1 > MAX_TAPE_DEPTH {
                        return Err(NotOnTape);
                    }
                    self.i += 1;
                    let at = self.nodes.len();
                    let is_object = c == b'{';
                    self.nodes.push(if is_object {
                        Node::Object { len: 0, end: 0 }
                    } else {
                        Node::Array { len: 0, end: 0 }
                    });
                    self.skip_ws();
                    let close = if is_object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        self.close(at, 0);
                    } else {
                        open.push((at, 0));
                        if is_object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                b'"' => {
                    self.i += 1;
                    let node = self.string()?;
                    self.nodes.push(node);
                }
                b't' => self.literal(b"true", Node::Bool(true))?,
                b'f' => self.literal(b"false", Node::Bool(false))?,
                b'n' => self.literal(b"null", Node::Null)?,
                b'-' | b'0'..=b'9' => {
                    let node = self.number()?;
                    self.nodes.push(node);
                }
                _ => return Err(NotOnTape),
            }
            // A value ended: continue its container, or close it (and maybe its parents).
            loop {
                let Some((at, count)) = open.last_mut() else {
                    self.skip_ws();
                    return if self.i == self.s.len() {
                        Ok(())
                    } else {
                        Err(NotOnTape)
                    };
                };
                *count += 1;
                let is_object = matches!(self.nodes[*at], Node::Object { .. });
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if is_object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if is_object => {}
                    Some(b']') if !is_object => {}
                    _ => return Err(NotOnTape),
                }
                self.i += 1;
                let (at, count) = open.pop().expect("a container is open");
                self.close(at, count);
            }
        }
    }

    fn close(&mut self, at: usize, len: u32) {
        let end = self.nodes.len() as u32;
        self.nodes[at] = match self.nodes[at] {
            Node::Object { .. } => Node::Object { len, end },
            _ => Node::Array { len, end },
        };
    }

    /// An object key and its colon.
    fn key(&mut self) -> Result<(), NotOnTape> {
        self.expect(b'"')?;
        let node = self.string()?;
        self.nodes.push(node);
        self.expect(b':')
    }

    fn literal(&mut self, word: &[u8], node: Node) -> Result<(), NotOnTape> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            self.nodes.push(node);
            Ok(())
        } else {
            Err(NotOnTape)
        }
    }

    /// A string whose opening quote was read.
    fn string(&mut self) -> Result<Node, NotOnTape> {
        let start = self.i;
        self.i = plain_run_end(self.s, self.i);
        loop {
            match self.peek().ok_or(NotOnTape)? {
                b'"' => {
                    let node = Node::Str {
                        start: start as u32,
                        len: (self.i - start) as u32,
                        escaped: false,
                    };
                    self.i += 1;
                    return Ok(node);
                }
                b'\\' => break,
                0..=0x1f => return Err(NotOnTape),
                _ => self.i += 1,
            }
        }
        // Escapes: the string is copied, unescaped, into the tape's own text.
        let from = self.unescaped.len();
        let plain = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| NotOnTape)?;
        self.unescaped.push_str(plain);
        loop {
            let b = self.peek().ok_or(NotOnTape)?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or(NotOnTape)?;
                    self.i += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(NotOnTape),
                    };
                    self.unescaped.push(c);
                }
                0..=0x1f => return Err(NotOnTape),
                _ => {
                    // Copy the run up to the next quote or escape at once.
                    let run_start = self.i - 1;
                    self.i = plain_run_end(self.s, self.i);
                    let run =
                        std::str::from_utf8(&self.s[run_start..self.i]).map_err(|_| NotOnTape)?;
                    self.unescaped.push_str(run);
                }
            }
        }
        Ok(Node::Str {
            start: from as u32,
            len: (self.unescaped.len() - from) as u32,
            escaped: true,
        })
    }

    fn hex4(&mut self) -> Result<u32, NotOnTape> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(NotOnTape)?;
        let mut n = 0u32;
        for &d in digits {
            n = n * 16 + (d as char).to_digit(16).ok_or(NotOnTape)?;
        }
        self.i += 4;
        Ok(n)
    }

    /// `\uXXXX` (after the `u`), with surrogate pairs; a lone surrogate is refused, as
    /// serde_json refuses it.
    fn unicode_escape(&mut self) -> Result<char, NotOnTape> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                    return Err(NotOnTape);
                }
                self.i += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(NotOnTape);
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(NotOnTape),
            n => n,
        };
        char::from_u32(code).ok_or(NotOnTape)
    }

    /// A number, typed as `serde_json` types it: i64 when it fits, u64 above that, f64 for
    /// fractions, exponents and integers beyond u64.
    fn number(&mut self) -> Result<Node, NotOnTape> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        let int_start = self.i;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return Err(NotOnTape),
        }
        let int_end = self.i;
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(NotOnTape);
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            is_float = true;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(NotOnTape);
            }
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
        }
        if !is_float {
            let mut magnitude: u64 = 0;
            let mut overflow = false;
            for &d in &self.s[int_start..int_end] {
                match magnitude
                    .checked_mul(10)
                    .and_then(|m| m.checked_add((d - b'0') as u64))
                {
                    Some(m) => magnitude = m,
                    None => {
                        overflow = true;
                        break;
                    }
                }
            }
            if !overflow {
                if !negative {
                    return Ok(match i64::try_from(magnitude) {
                        Ok(n) => Node::Int(n),
                        Err(_) => Node::UInt(magnitude),
                    });
                }
                if magnitude <= i64::MAX as u64 + 1 {
                    // serde_json reads "-0" as the float -0.0.
                    if magnitude == 0 {
                        return Ok(Node::Float(-0.0));
                    }
                    return Ok(Node::Int((magnitude as i64).wrapping_neg()));
                }
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| NotOnTape)?;
        let f: f64 = text.parse().map_err(|_| NotOnTape)?;
        if f.is_finite() {
            Ok(Node::Float(f))
        } else {
            Err(NotOnTape)
        }
    }
}

/// A value on a tape.
#[derive(Clone, Copy)]
struct V<'t> {
    tape: &'t Tape<'t>,
    at: usize,
}

impl<'t> V<'t> {
    fn node(self) -> Node {
        self.tape.nodes[self.at]
    }

    /// The index just past this value's nodes.
    fn end(self) -> usize {
        match self.node() {
            Node::Array { end, .. } | Node::Object { end, .. } => end as usize,
            _ => self.at + 1,
        }
    }

    fn str(self) -> Option<&'t str> {
        match self.node() {
            Node::Str {
                start,
                len,
                escaped,
            } => {
                let text = if escaped {
                    self.tape.unescaped
                } else {
                    self.tape.src
                };
                text.get(start as usize..start as usize + len as usize)
            }
            _ => None,
        }
    }

    fn is_object(self) -> bool {
        matches!(self.node(), Node::Object { .. })
    }

    fn is_array(self) -> bool {
        matches!(self.node(), Node::Array { .. })
    }

    /// An array's items.
    fn items(self) -> impl Iterator<Item = V<'t>> {
        let (len, mut at) = match self.node() {
            Node::Array { len, .. } => (len, self.at + 1),
            _ => (0, self.at + 1),
        };
        (0..len).map(move |_| {
            let v = V {
                tape: self.tape,
                at,
            };
            at = v.end();
            v
        })
    }

    /// An object's pairs; at the document's top level without the fields tarn keeps apart
    /// (`_id`, `_event_time`, `_meta`), as a prepared document's body is.
    fn pairs(self, top: bool) -> impl Iterator<Item = (&'t str, V<'t>)> {
        let (len, mut at) = match self.node() {
            Node::Object { len, .. } => (len, self.at + 1),
            _ => (0, self.at + 1),
        };
        (0..len)
            .map(move |_| {
                let key = V {
                    tape: self.tape,
                    at,
                };
                let value = V {
                    tape: self.tape,
                    at: at + 1,
                };
                at = value.end();
                (key.str().unwrap_or_default(), value)
            })
            .filter(move |(k, _)| !(top && matches!(*k, ID | EVENT_TIME | META)))
    }
}

/// An object to gather fields from: a value, and whether it is a document's top level.
type Obj<'t> = (V<'t>, bool);

fn infer(v: V) -> Result<DataType, NotOnTape> {
    Ok(match v.node() {
        Node::Null => DataType::Null,
        Node::Bool(_) => DataType::Boolean,
        Node::Int(_) => DataType::Int64,
        Node::UInt(_) => types::variant_type(),
        Node::Float(_) => DataType::Float64,
        Node::Str { .. } => DataType::Utf8,
        Node::Array { .. } => {
            let mut elem = DataType::Null;
            for item in v.items() {
                elem = types::merge(&elem, &infer(item)?);
            }
            types::list_of(elem)
        }
        Node::Object { .. } => infer_object((v, false))?,
    })
}

fn infer_object((v, top): Obj) -> Result<DataType, NotOnTape> {
    let mut fields = Vec::new();
    for (k, value) in v.pairs(top) {
        fields.push(Arc::new(Field::new(k, infer(value)?, true)));
    }
    // Unique names are what gathering relies on to see a key given twice.
    if fields.len() > 1 {
        let mut names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(NotOnTape);
        }
    }
    Ok(DataType::Struct(fields.into()))
}

fn fits(dt: &DataType, v: V) -> bool {
    match v.node() {
        Node::Null => true,
        _ if types::is_variant(dt) => true,
        Node::Bool(_) => dt == &DataType::Boolean,
        Node::Int(_) => dt == &DataType::Int64,
        Node::UInt(_) => false,
        Node::Float(_) => dt == &DataType::Float64,
        Node::Str { .. } => dt == &DataType::Utf8,
        Node::Array { .. } => match dt {
            DataType::List(item) => v.items().all(|i| fits(item.data_type(), i)),
            _ => false,
        },
        Node::Object { .. } => match dt {
            DataType::Struct(fields) => object_fits(fields, (v, false)),
            _ => false,
        },
    }
}

fn object_fits(fields: &Fields, (v, top): Obj) -> bool {
    v.pairs(top).enumerate().all(|(pos, (k, value))| {
        let field = match fields.get(pos) {
            Some(f) if f.name() == k => Some(f),
            _ => fields.find(k).map(|(_, f)| f),
        };
        field.is_some_and(|f| fits(f.data_type(), value))
    })
}

fn widen_object(dt: &mut DataType, obj: Obj) -> Result<(), NotOnTape> {
    let fits_already = matches!(dt, DataType::Struct(f) if object_fits(f, obj));
    if !fits_already {
        *dt = types::merge(dt, &infer_object(obj)?);
    }
    Ok(())
}

/// As `build::gather_fields`; a key met twice in one object is `NotOnTape`.
fn gather_fields<'t>(
    objects: &[Option<Obj<'t>>],
    fields: &Fields,
) -> Result<Vec<Vec<Option<V<'t>>>>, NotOnTape> {
    let mut columns: Vec<Vec<Option<V>>> = vec![vec![None; objects.len()]; fields.len()];
    let mut by_name: Option<HashMap<&str, usize>> = None;
    for (row, obj) in objects.iter().enumerate() {
        let Some(obj) = obj else { continue };
        for (pos, (k, v)) in obj.0.pairs(obj.1).enumerate() {
            let Some(idx) = field_index(fields, &mut by_name, pos, k) else {
                continue;
            };
            let slot = &mut columns[idx][row];
            if slot.is_some() {
                return Err(NotOnTape);
            }
            *slot = Some(v);
        }
    }
    Ok(columns)
}

/// As [`crate::build::build_array`], over tape values.
fn build(values: &[Option<V>], dt: &DataType) -> Result<ArrayRef, NotOnTape> {
    Ok(match dt {
        DataType::Null => new_null_array(dt, values.len()),
        DataType::Boolean => Arc::new(
            values
                .iter()
                .map(|v| match v.map(V::node) {
                    Some(Node::Bool(b)) => Some(b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        DataType::Int64 => Arc::new(
            values
                .iter()
                .map(|v| match v.map(V::node) {
                    Some(Node::Int(n)) => Some(n),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Float64 => Arc::new(
            values
                .iter()
                .map(|v| match v.map(V::node) {
                    Some(Node::Float(f)) => Some(f),
                    Some(Node::Int(n)) => Some(n as f64),
                    Some(Node::UInt(n)) => Some(n as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        DataType::Utf8 => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(V::str))
                .collect::<StringArray>(),
        ),
        dt if types::is_variant(dt) => {
            let mut text: Vec<Option<String>> = Vec::with_capacity(values.len());
            for v in values {
                text.push(match v {
                    Some(v) => {
                        let mut out = Vec::new();
                        write_json(*v, &mut out)?;
                        Some(String::from_utf8(out).map_err(|_| NotOnTape)?)
                    }
                    None => None,
                });
            }
            variant_array(text.into_iter().collect())
        }
        DataType::Struct(fields) => {
            let validity = NullBuffer::from(
                values
                    .iter()
                    .map(|v| v.is_some_and(V::is_object))
                    .collect::<Vec<_>>(),
            );
            if fields.is_empty() {
                return Ok(Arc::new(StructArray::new_empty_fields(
                    values.len(),
                    Some(validity),
                )));
            }
            let objects: Vec<Option<Obj>> = values
                .iter()
                .map(|v| v.filter(|v| v.is_object()).map(|v| (v, false)))
                .collect();
            let mut children = Vec::with_capacity(fields.len());
            for (f, child) in fields.iter().zip(gather_fields(&objects, fields)?) {
                children.push(build(&child, f.data_type())?);
            }
            Arc::new(StructArray::new(fields.clone(), children, Some(validity)))
        }
        DataType::List(item) => {
            let mut offsets = Vec::with_capacity(values.len() + 1);
            let mut elems: Vec<Option<V>> = Vec::new();
            offsets.push(0i32);
            for v in values {
                if let Some(v) = v.filter(|v| v.is_array()) {
                    elems.extend(v.items().map(Some));
                }
                offsets.push(i32::try_from(elems.len()).map_err(|_| NotOnTape)?);
            }
            let validity = NullBuffer::from(
                values
                    .iter()
                    .map(|v| v.is_some_and(V::is_array))
                    .collect::<Vec<_>>(),
            );
            let child = build(&elems, item.data_type())?;
            Arc::new(ListArray::new(
                item.clone(),
                OffsetBuffer::new(offsets.into()),
                child,
                Some(validity),
            ))
        }
        _ => return Err(NotOnTape),
    })
}

/// Writes a value as `serde_json` serializes a `Value` (compact, its escaping, its number
/// format). A key given twice in one object is `NotOnTape`: serde_json would keep one.
fn write_json(v: V, out: &mut Vec<u8>) -> Result<(), NotOnTape> {
    use std::io::Write;
    let to = |r: Result<(), serde_json::Error>| r.map_err(|_| NotOnTape);
    match v.node() {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(true) => out.extend_from_slice(b"true"),
        Node::Bool(false) => out.extend_from_slice(b"false"),
        Node::Int(n) => write!(out, "{n}").map_err(|_| NotOnTape)?,
        Node::UInt(n) => write!(out, "{n}").map_err(|_| NotOnTape)?,
        Node::Float(f) => to(serde_json::to_writer(&mut *out, &f))?,
        Node::Str { .. } => to(serde_json::to_writer(&mut *out, v.str().unwrap_or("")))?,
        Node::Array { .. } => {
            out.push(b'[');
            for (i, item) in v.items().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out)?;
            }
            out.push(b']');
        }
        Node::Object { .. } => {
            let keys: Vec<&str> = v.pairs(false).map(|(k, _)| k).collect();
            if keys.len() > 1 {
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                if sorted.windows(2).any(|w| w[0] == w[1]) {
                    return Err(NotOnTape);
                }
            }
            out.push(b'{');
            for (i, (k, value)) in v.pairs(false).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                to(serde_json::to_writer(&mut *out, k))?;
                out.push(b':');
                write_json(value, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The index of the first byte at or after `i` that ends a plain run of string text: a
/// quote, a backslash or a control character (`s.len()` if none). Eight bytes at a time:
/// tweets' strings are long, and this scan was the parser's largest cost.
fn plain_run_end(s: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` below `n`. Borrows can flag bytes above the first
    // true one, never below it, so the lowest flag is exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGHS;
    while let Some(chunk) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let flags = below(w ^ (ONES * b'"' as u64), 1)
            | below(w ^ (ONES * b'\\' as u64), 1)
            | below(w, 0x20);
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// As [`crate::build::null_pointers`], over a document's top level. The path of a null is
/// spelled out only when one is found.
fn null_pointers(root: V) -> Option<String> {
    let mut out = String::new();
    let mut path: Vec<PathStep> = Vec::new();
    object_nulls((root, true), &mut path, &mut out);
    (!out.is_empty()).then(|| {
        out.push(']');
        out
    })
}

/// Appends the pointer of `path` to `out`, the text of a JSON array of strings being
/// written, exactly as serde_json writes it. Most keys need no escaping of either kind and
/// are copied as they are; the others are spelled out and escaped by serde_json.
fn push_pointer_item(path: &[PathStep], out: &mut String) {
    out.push(if out.is_empty() { '[' } else { ',' });
    let plain = path.iter().all(|step| match step {
        PathStep::Key(k) => plain_pointer_key(k),
        PathStep::Index(_) => true,
    });
    if !plain {
        let item = serde_json::to_string(&pointer(path)).expect("strings serialize");
        out.push_str(&item);
        return;
    }
    out.push('"');
    for step in path {
        out.push('/');
        match step {
            PathStep::Key(k) => out.push_str(k),
            PathStep::Index(i) => push_decimal(out, *i),
        }
    }
    out.push('"');
}

#[derive(Clone, Copy)]
enum PathStep<'t> {
    Key(&'t str),
    Index(usize),
}

fn pointer(path: &[PathStep]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            PathStep::Key(k) => crate::build::push_pointer_segment(&mut s, k),
            PathStep::Index(i) => {
                s.push('/');
                s.push_str(&i.to_string());
            }
        }
    }
    s
}

fn object_nulls<'t>((v, top): Obj<'t>, path: &mut Vec<PathStep<'t>>, out: &mut String) {
    for (k, value) in v.pairs(top) {
        match value.node() {
            Node::Null => {
                path.push(PathStep::Key(k));
                push_pointer_item(path, out);
                path.pop();
            }
            Node::Object { .. } | Node::Array { .. } => {
                path.push(PathStep::Key(k));
                nested_nulls(value, path, out);
                path.pop();
            }
            _ => {}
        }
    }
}

fn nested_nulls<'t>(v: V<'t>, path: &mut Vec<PathStep<'t>>, out: &mut String) {
    match v.node() {
        Node::Object { .. } => object_nulls((v, false), path, out),
        Node::Array { .. } => {
            for (i, item) in v.items().enumerate() {
                if item.is_object() || item.is_array() {
                    path.push(PathStep::Index(i));
                    nested_nulls(item, path, out);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// [`crate::document::prepare`] read from a document's text: `None` where the tape does
/// not take the text or the document is not plainly valid (the caller then goes the value
/// path's way, which says what is wrong). The document's `body` is left empty.
pub(crate) fn prepare_from_text(
    text: &[u8],
    ctx: &IngestContext,
) -> Option<Result<Document, String>> {
    let (src, parsed) = Parsed::parse_text(text).ok()?;
    let tape = Tape {
        src,
        nodes: &parsed.nodes,
        unescaped: &parsed.unescaped,
    };
    let root = tape.root();
    if !root.is_object() {
        return None;
    }
    // As in a parsed object, the last of a key given twice wins.
    let (mut id, mut event_time) = (None, None);
    for (k, v) in root.pairs(false) {
        match k {
            ID => id = Some(v),
            EVENT_TIME => event_time = Some(v),
            NULLS => return None,
            _ => {}
        }
    }
    let id = match id.map(V::node) {
        None | Some(Node::Null) => crate::document::new_document_id(),
        Some(Node::Str { len, .. }) if len > 0 => id?.str()?.to_owned(),
        Some(_) => return None,
    };
    let event_time = match event_time.map(V::node) {
        None | Some(Node::Null) => match ctx.event_time_info {
            Some(info) => {
                let mut parts = info.field.split('.');
                let first = parts.next().unwrap_or_default();
                let mut cur = root.pairs(true).filter(|(k, _)| *k == first).last();
                for p in parts {
                    cur = cur.and_then(|(_, v)| v.pairs(false).filter(|(k, _)| *k == p).last());
                }
                match cur.map(|(_, v)| v).filter(|v| v.node() != Node::Null) {
                    Some(v) => match info.event_time_of(&to_value(v)) {
                        Ok(t) => t,
                        Err(e) => return Some(Err(e)),
                    },
                    None => ctx.now_micros,
                }
            }
            None => ctx.now_micros,
        },
        Some(Node::Int(n)) => n,
        Some(Node::Str { .. }) => tarn_common::time::parse_iso8601_micros(event_time?.str()?)?,
        Some(_) => return None,
    };
    Some(Ok(Document {
        id,
        event_time,
        meta: ctx.meta.clone(),
        body: serde_json::Map::new(),
        tape: Some(Arc::new(parsed)),
    }))
}

/// A tape value as a `serde_json` value.
fn to_value(v: V) -> Value {
    match v.node() {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(n) => Value::from(n),
        Node::UInt(n) => Value::from(n),
        Node::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Node::Str { .. } => Value::String(v.str().unwrap_or_default().to_owned()),
        Node::Array { .. } => Value::Array(v.items().map(to_value).collect()),
        Node::Object { .. } => Value::Object(
            v.pairs(false)
                .map(|(k, v)| (k.to_owned(), to_value(v)))
                .collect(),
        ),
    }
}

/// Builds the batch of [`crate::build::documents_to_batch_refs`] from each document's JSON
/// text (its body, possibly with `_id`, `_event_time` and `_meta` at the top level, which
/// are taken from the document instead). `None` when a text is not on a tape the way the
/// value path reads it; the caller then builds from the values.
pub fn documents_to_batch_from_texts(docs: &[(&Document, &[u8])]) -> Option<RecordBatch> {
    // Documents prepared from their text bring its nodes along.
    let fresh: Vec<Option<Parsed>> = docs
        .iter()
        .map(|(d, text)| match &d.tape {
            Some(p) if p.text_len == text.len() => Ok(None),
            _ => Parsed::parse(text).map(Some),
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let tapes: Vec<Tape> = docs
        .iter()
        .zip(&fresh)
        .map(|((d, text), fresh)| match (fresh, &d.tape) {
            (Some(p), _) => Tape::of(text, p),
            (None, Some(p)) => Tape::of(text, p.as_ref()),
            (None, None) => None,
        })
        .collect::<Option<_>>()?;
    if tapes.iter().any(|t| !t.root().is_object()) {
        return None;
    }
    // One pass over the tapes where every path keeps one type (the usual case); where one
    // does not, the types are inferred first and the columns built after.
    let (body, nulls) = match one_pass(&tapes) {
        Ok(built) => built,
        Err(NotOnTape) => {
            let nulls: StringArray = tapes.iter().map(|t| null_pointers(t.root())).collect();
            (two_passes(&tapes)?, nulls)
        }
    };
    let mut meta_type = DataType::Null;
    for (d, _) in docs {
        types::widen(&mut meta_type, &d.meta);
    }
    let mut fields: Vec<Field> = vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(EVENT_TIME, types::event_time_type(), false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            docs.iter().map(|(d, _)| d.id.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(docs.iter().map(|(d, _)| d.event_time))
                .with_timezone("UTC"),
        ),
    ];
    if meta_type != DataType::Null {
        let metas: Vec<Option<&Value>> = docs.iter().map(|(d, _)| Some(&d.meta)).collect();
        columns.push(build_array(&metas, &meta_type));
        fields.push(Field::new(META, meta_type, true));
    }
    for (f, column) in body {
        fields.push(f);
        columns.push(column);
    }
    columns.push(Arc::new(nulls));
    fields.push(Field::new(NULLS, DataType::Utf8, true));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()
}

/// The body columns by inferring the batch's types, then gathering and building each path.
fn two_passes(tapes: &[Tape]) -> Option<Vec<(Field, ArrayRef)>> {
    let roots: Vec<Option<Obj>> = tapes.iter().map(|t| Some((t.root(), true))).collect();
    let mut body_type = DataType::Struct(Fields::empty());
    for root in roots.iter().flatten() {
        widen_object(&mut body_type, *root).ok()?;
    }
    let DataType::Struct(body_fields) = body_type else {
        unreachable!("widening keeps a struct a struct")
    };
    let gathered = gather_fields(&roots, &body_fields).ok()?;
    let mut out = Vec::with_capacity(body_fields.len());
    for (f, values) in body_fields.iter().zip(gathered) {
        out.push((
            Field::new(f.name(), f.data_type().clone(), true),
            build(&values, f.data_type()).ok()?,
        ));
    }
    Some(out)
}

/// The body columns and each document's explicit nulls (as [`null_pointers`]) in one pass:
/// each value is appended to its path's builder as the documents are read. A path whose
/// values change type (which the value path stores as a variant, or as a wider type) is
/// gathered and typed at the end instead ([`MixedPaths`]). A key given twice is
/// `NotOnTape`, and so is a batch that changes more paths than are learnt.
fn one_pass<'t>(tapes: &'t [Tape<'t>]) -> Result<(Vec<(Field, ArrayRef)>, StringArray), NotOnTape> {
    // A path seen to change type is learnt, and the pass begins again with it mixed; a
    // few times at most, since streams change few paths.
    for _ in 0..4 {
        let known = MIXED_PATHS.read().clone();
        match one_pass_with(tapes, known) {
            Ok(built) => return Ok(built),
            Err(OnePassError::Changed(path)) if learn_mixed_path(&path) => continue,
            Err(_) => return Err(NotOnTape),
        }
    }
    Err(NotOnTape)
}

/// [`one_pass`] with the paths learnt so far built as mixed.
fn one_pass_with<'t>(
    tapes: &'t [Tape<'t>],
    mixed: Option<Arc<MixedPaths>>,
) -> Result<(Vec<(Field, ArrayRef)>, StringArray), OnePassError> {
    let mut root = StructCol::new(0, tapes.len(), mixed);
    let mut nulls = NullsSeen::default();
    let mut pointers = StringBuilder::with_capacity(tapes.len(), tapes.len() * 64);
    for t in tapes {
        root.append_object((t.root(), true), &mut nulls)?;
        if nulls.out.is_empty() {
            pointers.append_null();
        } else {
            nulls.out.push(']');
            pointers.append_value(&nulls.out);
            nulls.out.clear();
        }
    }
    Ok((root.finish_fields()?, pointers.finish()))
}

/// Where a one-pass build is in the current document, and the pointers of the explicit
/// nulls it has met there so far, written as [`null_pointers`] writes them.
#[derive(Default)]
struct NullsSeen<'t> {
    path: Vec<PathStep<'t>>,
    out: String,
    /// The pointer of `path` as written when no key on it needs escaping, kept as the path
    /// grows and shrinks so that a null is written without walking its path again.
    prefix: String,
    /// For each step of `path`: the length of `prefix` before it, and whether its key needs
    /// escaping.
    marks: Vec<(usize, bool)>,
    /// How many keys on `path` need escaping: where any does, pointers are spelled out.
    escaped: usize,
}

impl<'t> NullsSeen<'t> {
    fn enter(&mut self, step: PathStep<'t>) {
        let escaped = match step {
            PathStep::Key(k) if plain_pointer_key(k) => {
                self.marks.push((self.prefix.len(), false));
                self.prefix.push('/');
                self.prefix.push_str(k);
                false
            }
            PathStep::Key(_) => {
                self.marks.push((self.prefix.len(), true));
                true
            }
            PathStep::Index(i) => {
                self.marks.push((self.prefix.len(), false));
                self.prefix.push('/');
                push_decimal(&mut self.prefix, i);
                false
            }
        };
        self.escaped += escaped as usize;
        self.path.push(step);
    }

    fn leave(&mut self) {
        self.path.pop();
        let (len, escaped) = self.marks.pop().expect("left a step entered");
        self.escaped -= escaped as usize;
        self.prefix.truncate(len);
    }

    /// Records that key `k` of the object at `path` is an explicit null.
    fn null_at(&mut self, k: &'t str) {
        if self.escaped == 0 && plain_pointer_key(k) {
            self.out.push(if self.out.is_empty() { '[' } else { ',' });
            self.out.push('"');
            self.out.push_str(&self.prefix);
            self.out.push('/');
            self.out.push_str(k);
            self.out.push('"');
        } else {
            self.path.push(PathStep::Key(k));
            push_pointer_item(&self.path, &mut self.out);
            self.path.pop();
        }
    }
}

/// Whether a key is written into a pointer, and the pointer into JSON, as it is: no `~` or
/// `/` for the pointer to escape, no quote, backslash or control character for JSON.
fn plain_pointer_key(k: &str) -> bool {
    !k.bytes()
        .any(|b| matches!(b, b'~' | b'/' | b'"' | b'\\' | 0..=0x1f))
}

/// Appends `n` in decimal, as `write!` would, without the formatting machinery.
fn push_decimal(out: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// The builder of one path's column, typed by the first non-null value.
enum Col<'t> {
    /// Only nulls (or nothing) so far: this many, of about `rows_hint` rows to come; with
    /// the mixed paths below, for the struct or list it may become.
    Pending {
        nulls: usize,
        rows_hint: usize,
        mixed: Option<Arc<MixedPaths>>,
    },
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Struct(Box<StructCol<'t>>),
    List(Box<ListCol<'t>>),
    /// A path whose values change type: its values (`None` where a row has none), typed
    /// and built at the end.
    Mixed(Vec<Option<V<'t>>>),
}

/// `a == b` for object keys, without a call to `memcmp` for the short keys documents mostly
/// have: two overlapping word loads per key. Comparing the expected key was 8% of building.
fn same_key(a: &str, b: &str) -> bool {
    let (a, b, n) = (a.as_bytes(), b.as_bytes(), a.len());
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// Why a one-pass build stopped.
#[derive(Debug, PartialEq)]
enum OnePassError {
    /// The tapes are not built this way at all (a key given twice, say).
    NotOnTape,
    /// The values at this path change type; its steps innermost first.
    Changed(Vec<MixedStep>),
}

impl From<NotOnTape> for OnePassError {
    fn from(_: NotOnTape) -> OnePassError {
        OnePassError::NotOnTape
    }
}

/// A step of a path to a column: a field of a struct, or a list's items.
#[derive(Debug, Clone, PartialEq)]
enum MixedStep {
    Key(String),
    Items,
}

/// Paths whose values were seen to change type, in any batch so far: their columns gather
/// their values and are typed and built at the end (as two passes would build them), while
/// the rest of the batch is still built in one pass. Streams keep their shapes, so a path
/// learnt once is mixed in the batches after it too: one recorded tweet in two hundred has a
/// count written as a string, and that sent whole batches to two passes, at half the speed.
#[derive(Debug, Default, Clone)]
struct MixedPaths {
    here: bool,
    fields: HashMap<String, Arc<MixedPaths>>,
    items: Option<Arc<MixedPaths>>,
}

/// Learnt paths, for all collections: a path built as mixed gets the same column it would
/// get otherwise, only more slowly, so sharing them costs little and keeps no state per
/// collection.
static MIXED_PATHS: parking_lot::RwLock<Option<Arc<MixedPaths>>> = parking_lot::RwLock::new(None);
/// At most this many paths are learnt; past that, batches with new changes go two passes.
const MAX_MIXED_PATHS: usize = 256;

impl MixedPaths {
    fn field(this: &Option<Arc<MixedPaths>>, k: &str) -> Option<Arc<MixedPaths>> {
        this.as_ref().and_then(|m| m.fields.get(k).cloned())
    }

    fn items(this: &Option<Arc<MixedPaths>>) -> Option<Arc<MixedPaths>> {
        this.as_ref().and_then(|m| m.items.clone())
    }

    fn is_here(this: &Option<Arc<MixedPaths>>) -> bool {
        this.as_ref().is_some_and(|m| m.here)
    }

    /// How many paths are marked here and below.
    fn count(&self) -> usize {
        usize::from(self.here)
            + self.fields.values().map(|f| f.count()).sum::<usize>()
            + self.items.as_ref().map_or(0, |i| i.count())
    }

    /// A copy with `path` (outermost step first) marked; `None` if it was marked already.
    fn with(&self, path: &[MixedStep]) -> Option<MixedPaths> {
        let mut out = self.clone();
        match path.split_first() {
            None if self.here => return None,
            None => out.here = true,
            Some((step, rest)) => {
                let slot = match step {
                    MixedStep::Key(k) => out.fields.entry(k.clone()).or_default(),
                    MixedStep::Items => out.items.get_or_insert_with(Default::default),
                };
                *slot = Arc::new(slot.with(rest)?);
            }
        }
        Some(out)
    }
}

/// Marks `path` (innermost step first) as mixed for the builds to come; false when too many
/// are learnt already. A path another build learnt meanwhile counts as learnt: the next
/// pass sees it.
fn learn_mixed_path(innermost_first: &[MixedStep]) -> bool {
    let path: Vec<MixedStep> = innermost_first.iter().rev().cloned().collect();
    let mut known = MIXED_PATHS.write();
    if known.as_ref().map_or(0, |paths| paths.count()) >= MAX_MIXED_PATHS {
        return false;
    }
    let updated = match known.as_deref() {
        Some(paths) => paths.with(&path),
        None => MixedPaths::default().with(&path),
    };
    match updated {
        Some(paths) => {
            *known = Some(Arc::new(paths));
            true
        }
        None => true,
    }
}

/// A struct's builder. Its fields' columns may lag behind its own rows: the rows they lack
/// are nulls, appended in one go when the next value comes (or at the end). So a row
/// without the struct, or without some of its fields, costs nothing per field: tweets
/// without `retweeted_status` were a null appended to each of its hundred columns.
struct StructCol<'t> {
    fields: Vec<(String, Col<'t>)>,
    /// The rows each field's column holds so far.
    lens: Vec<usize>,
    index: HashMap<String, usize, foldhash::quality::RandomState>,
    validity: BooleanBufferBuilder,
    /// How many rows this struct's columns are expected to hold: their builders start
    /// that large instead of growing (and copying) their way there.
    rows_hint: usize,
    /// The mixed paths below this struct.
    mixed: Option<Arc<MixedPaths>>,
}

struct ListCol<'t> {
    offsets: Vec<i32>,
    validity: BooleanBufferBuilder,
    item: Col<'t>,
}

impl<'t> StructCol<'t> {
    fn new(nulls: usize, rows_hint: usize, mixed: Option<Arc<MixedPaths>>) -> StructCol<'t> {
        let mut validity = BooleanBufferBuilder::new(nulls.max(rows_hint).max(16));
        validity.append_n(nulls, false);
        StructCol {
            fields: Vec::new(),
            lens: Vec::new(),
            index: HashMap::default(),
            validity,
            rows_hint,
            mixed,
        }
    }

    fn len(&self) -> usize {
        self.validity.len()
    }

    fn append_object(
        &mut self,
        obj: Obj<'t>,
        nulls: &mut NullsSeen<'t>,
    ) -> Result<(), OnePassError> {
        let row = self.len();
        // Documents of one stream mostly list their keys in one order, some of them left
        // out: the field after the last one matched is the likely next.
        let mut expected = 0;
        for (k, v) in obj.0.pairs(obj.1) {
            let idx = match self.fields.get(expected) {
                Some((name, _)) if same_key(name, k) => expected,
                _ => match self.index.get(k) {
                    Some(&i) => i,
                    None => {
                        let col = Col::new(self.rows_hint, MixedPaths::field(&self.mixed, k));
                        self.fields.push((k.to_owned(), col));
                        self.lens.push(0);
                        self.index.insert(k.to_owned(), self.fields.len() - 1);
                        self.fields.len() - 1
                    }
                },
            };
            expected = idx + 1;
            let lagging = row.checked_sub(std::mem::replace(&mut self.lens[idx], row + 1));
            let col = &mut self.fields[idx].1;
            match lagging {
                Some(0) => {}
                Some(n) => col.append_nulls(n),
                None => return Err(OnePassError::NotOnTape), // the key was given twice
            }
            let appended = match v.node() {
                Node::Null => {
                    nulls.null_at(k);
                    match col {
                        // A variant keeps an explicit null as JSON's `null`.
                        Col::Mixed(values) => values.push(Some(v)),
                        _ => col.append_null(),
                    }
                    Ok(())
                }
                Node::Object { .. } | Node::Array { .. } => {
                    nulls.enter(PathStep::Key(k));
                    let appended = col.append(v, nulls);
                    nulls.leave();
                    appended
                }
                _ => col.append(v, nulls),
            };
            if let Err(OnePassError::Changed(mut path)) = appended {
                path.push(MixedStep::Key(k.to_owned()));
                return Err(OnePassError::Changed(path));
            }
            appended?;
        }
        self.validity.append(true);
        Ok(())
    }

    fn append_nulls(&mut self, n: usize) {
        self.validity.append_n(n, false);
    }

    /// The fields' columns, each brought up to the struct's rows.
    fn finish_fields(&mut self) -> Result<Vec<(Field, ArrayRef)>, NotOnTape> {
        let len = self.len();
        std::mem::take(&mut self.fields)
            .into_iter()
            .zip(std::mem::take(&mut self.lens))
            .map(|((name, mut col), col_len)| {
                col.append_nulls(len - col_len);
                let (dt, array) = col.finish()?;
                Ok((Field::new(name, dt, true), array))
            })
            .collect()
    }

    fn finish(mut self) -> Result<(DataType, ArrayRef), NotOnTape> {
        let len = self.len();
        let (fields, children): (Vec<Field>, Vec<ArrayRef>) =
            self.finish_fields()?.into_iter().unzip();
        let validity = NullBuffer::new(self.validity.finish());
        let fields = Fields::from(fields);
        let array: ArrayRef = if fields.is_empty() {
            Arc::new(StructArray::new_empty_fields(len, Some(validity)))
        } else {
            Arc::new(StructArray::new(fields.clone(), children, Some(validity)))
        };
        Ok((DataType::Struct(fields), array))
    }
}

impl<'t> ListCol<'t> {
    fn new(nulls: usize, rows_hint: usize, mixed: Option<Arc<MixedPaths>>) -> ListCol<'t> {
        let mut validity = BooleanBufferBuilder::new(nulls.max(rows_hint).max(16));
        validity.append_n(nulls, false);
        let mut offsets = Vec::with_capacity(nulls.max(rows_hint) + 1);
        offsets.resize(nulls + 1, 0);
        ListCol {
            offsets,
            validity,
            // About one item a row: lists of tweets' entities mostly hold none to a few.
            item: Col::new(rows_hint, MixedPaths::items(&mixed)),
        }
    }

    fn append_items(&mut self, v: V<'t>, nulls: &mut NullsSeen<'t>) -> Result<(), OnePassError> {
        for (i, item) in v.items().enumerate() {
            // An array's null items are nulls of its list, so only containers are walked.
            let appended = if item.is_object() || item.is_array() {
                nulls.enter(PathStep::Index(i));
                let appended = self.item.append(item, nulls);
                nulls.leave();
                appended
            } else {
                self.item.append(item, nulls)
            };
            if let Err(OnePassError::Changed(mut path)) = appended {
                path.push(MixedStep::Items);
                return Err(OnePassError::Changed(path));
            }
            appended?;
        }
        self.offsets
            .push(i32::try_from(self.item.len()).map_err(|_| NotOnTape)?);
        self.validity.append(true);
        Ok(())
    }

    fn append_nulls(&mut self, n: usize) {
        let last = *self.offsets.last().expect("offsets start with 0");
        self.offsets.resize(self.offsets.len() + n, last);
        self.validity.append_n(n, false);
    }

    fn finish(mut self) -> Result<(DataType, ArrayRef), NotOnTape> {
        let validity = NullBuffer::new(self.validity.finish());
        let (item_type, items) = self.item.finish()?;
        let item = Arc::new(Field::new("item", item_type, true));
        let array = ListArray::new(
            item.clone(),
            OffsetBuffer::new(self.offsets.into()),
            items,
            Some(validity),
        );
        Ok((DataType::List(item), Arc::new(array)))
    }
}

impl<'t> Col<'t> {
    /// An empty column of about `rows_hint` rows to come, at a path marked mixed or not.
    fn new(rows_hint: usize, mixed: Option<Arc<MixedPaths>>) -> Col<'t> {
        if MixedPaths::is_here(&mixed) {
            Col::Mixed(Vec::new())
        } else {
            Col::Pending {
                nulls: 0,
                rows_hint,
                mixed,
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Pending { nulls, .. } => *nulls,
            Col::Bool(b) => b.len(),
            Col::Int(b) => b.len(),
            Col::Float(b) => b.len(),
            Col::Str(b) => b.len(),
            Col::Struct(s) => s.len(),
            Col::List(l) => l.offsets.len() - 1,
            Col::Mixed(values) => values.len(),
        }
    }

    fn append_null(&mut self) {
        self.append_nulls(1);
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Col::Pending { nulls, .. } => *nulls += n,
            Col::Bool(b) => b.append_nulls(n),
            Col::Int(b) => b.append_nulls(n),
            Col::Float(b) => b.append_nulls(n),
            Col::Str(b) => b.append_nulls(n),
            Col::Struct(s) => s.append_nulls(n),
            Col::List(l) => l.append_nulls(n),
            Col::Mixed(values) => values.resize(values.len() + n, None),
        }
    }

    /// Appends a value; one of another type than the column's so far is
    /// `OnePassError::Changed` (with an empty path: the callers above add their steps).
    /// `nulls.path` is the value's own path.
    fn append(&mut self, v: V<'t>, nulls: &mut NullsSeen<'t>) -> Result<(), OnePassError> {
        let node = v.node();
        if let Col::Pending {
            nulls: n,
            rows_hint,
            mixed,
        } = self
        {
            let (n, rows_hint) = (*n, *rows_hint);
            let capacity = n.max(rows_hint).max(16);
            *self = match node {
                Node::Null => {
                    self.append_nulls(1);
                    return Ok(());
                }
                Node::Bool(_) => {
                    let mut b = BooleanBuilder::with_capacity(capacity);
                    b.append_nulls(n);
                    Col::Bool(b)
                }
                Node::Int(_) => {
                    let mut b = Int64Builder::with_capacity(capacity);
                    b.append_nulls(n);
                    Col::Int(b)
                }
                Node::Float(_) => {
                    let mut b = Float64Builder::with_capacity(capacity);
                    b.append_nulls(n);
                    Col::Float(b)
                }
                Node::Str { len, .. } => {
                    // The first string's length stands for the others'.
                    let bytes = capacity.saturating_mul(len as usize).clamp(1024, 1 << 22);
                    let mut b = StringBuilder::with_capacity(capacity, bytes);
                    b.append_nulls(n);
                    Col::Str(b)
                }
                Node::Object { .. } => {
                    Col::Struct(Box::new(StructCol::new(n, rows_hint, mixed.take())))
                }
                Node::Array { .. } => Col::List(Box::new(ListCol::new(n, rows_hint, mixed.take()))),
                // A variant in the value path: built as one.
                Node::UInt(_) => return Err(OnePassError::Changed(Vec::new())),
            };
        }
        match (self, node) {
            (Col::Mixed(values), _) => {
                if v.is_object() || v.is_array() {
                    // The value is not walked by a builder, so its nulls are looked for here.
                    nested_nulls(v, &mut nulls.path, &mut nulls.out);
                }
                values.push(Some(v));
            }
            (col, Node::Null) => col.append_null(),
            (Col::Bool(b), Node::Bool(x)) => b.append_value(x),
            (Col::Int(b), Node::Int(x)) => b.append_value(x),
            (Col::Float(b), Node::Float(x)) => b.append_value(x),
            (Col::Str(b), Node::Str { .. }) => b.append_value(v.str().unwrap_or_default()),
            (Col::Struct(s), Node::Object { .. }) => s.append_object((v, false), nulls)?,
            (Col::List(l), Node::Array { .. }) => l.append_items(v, nulls)?,
            _ => return Err(OnePassError::Changed(Vec::new())),
        }
        Ok(())
    }

    fn finish(self) -> Result<(DataType, ArrayRef), NotOnTape> {
        Ok(match self {
            Col::Pending { nulls, .. } => (DataType::Null, new_null_array(&DataType::Null, nulls)),
            Col::Bool(mut b) => (DataType::Boolean, Arc::new(b.finish())),
            Col::Int(mut b) => (DataType::Int64, Arc::new(b.finish())),
            Col::Float(mut b) => (DataType::Float64, Arc::new(b.finish())),
            Col::Str(mut b) => (DataType::Utf8, Arc::new(b.finish())),
            Col::Struct(s) => s.finish()?,
            Col::List(l) => l.finish()?,
            Col::Mixed(values) => {
                // Typed as two passes type a path: the merge of its values' types.
                let mut dt = DataType::Null;
                for v in values.iter().flatten() {
                    if !fits(&dt, *v) {
                        dt = types::merge(&dt, &infer(*v)?);
                    }
                }
                let array = build(&values, &dt)?;
                (dt, array)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::documents_to_batch_refs;
    use proptest::prelude::*;
    use serde_json::json;

    fn doc_from_text(text: &str) -> Document {
        let Value::Object(mut body) = serde_json::from_str(text).unwrap() else {
            panic!("not an object: {text}")
        };
        for k in [ID, EVENT_TIME, META] {
            body.shift_remove(k);
        }
        Document {
            id: "x".into(),
            event_time: 7,
            meta: json!({"source": "test"}),
            body,
            tape: None,
        }
    }

    /// Both builds over the same texts, which must agree.
    fn assert_same(texts: &[&str]) {
        let docs: Vec<Document> = texts.iter().map(|t| doc_from_text(t)).collect();
        let refs: Vec<&Document> = docs.iter().collect();
        let want = documents_to_batch_refs(&refs);
        let pairs: Vec<(&Document, &[u8])> = docs
            .iter()
            .zip(texts)
            .map(|(d, t)| (d, t.as_bytes()))
            .collect();
        let got = documents_to_batch_from_texts(&pairs)
            .unwrap_or_else(|| panic!("not built from the tape: {texts:?}"));
        assert_batches_equal(&got, &want, texts);
        // The two ways of building from tapes each agree with the value path on their own.
        let parsed = parse_all(texts);
        let tapes = tapes_of(texts, &parsed);
        let body_of = |w: &RecordBatch| -> Vec<(Field, ArrayRef)> {
            w.schema()
                .fields()
                .iter()
                .zip(w.columns())
                .filter(|(f, _)| !types::is_special(f.name()))
                .map(|(f, c)| (f.as_ref().clone(), c.clone()))
                .collect()
        };
        let want_body = body_of(&want);
        let two = two_passes(&tapes).expect("two passes build every test document");
        assert_bodies_equal(&two, &want_body, texts);
        if let Ok((one, nulls)) = one_pass(&tapes) {
            assert_bodies_equal(&one, &want_body, texts);
            let walked: StringArray = tapes.iter().map(|t| null_pointers(t.root())).collect();
            assert_eq!(nulls, walked, "explicit nulls of {texts:?}");
        }
    }

    fn parse_all(texts: &[&str]) -> Vec<Parsed> {
        texts
            .iter()
            .map(|t| Parsed::parse(t.as_bytes()).unwrap())
            .collect()
    }

    fn tapes_of<'a>(texts: &[&'a str], parsed: &'a [Parsed]) -> Vec<Tape<'a>> {
        texts
            .iter()
            .zip(parsed)
            .map(|(t, p)| Tape::of(t.as_bytes(), p).unwrap())
            .collect()
    }

    fn assert_batches_equal(got: &RecordBatch, want: &RecordBatch, texts: &[&str]) {
        assert_eq!(got.schema(), want.schema(), "{texts:?}");
        for (i, (g, w)) in got.columns().iter().zip(want.columns()).enumerate() {
            assert_eq!(
                g.to_data(),
                w.to_data(),
                "column {} of {texts:?}",
                want.schema().field(i).name()
            );
        }
    }

    fn assert_bodies_equal(got: &[(Field, ArrayRef)], want: &[(Field, ArrayRef)], texts: &[&str]) {
        let names = |b: &[(Field, ArrayRef)]| -> Vec<String> {
            b.iter().map(|(f, _)| f.name().clone()).collect()
        };
        assert_eq!(names(got), names(want), "{texts:?}");
        for ((gf, g), (wf, w)) in got.iter().zip(want) {
            assert_eq!(gf, wf, "{texts:?}");
            assert_eq!(
                g.to_data(),
                w.to_data(),
                "column {} of {texts:?}",
                wf.name()
            );
        }
    }

    #[test]
    fn one_pass_builds_paths_that_change_type_as_two_passes_do() {
        let texts = [
            r#"{"a":1,"o":{"x":null},"l":[]}"#,
            r#"{"o":{"x":"s","y":[1]},"a":2,"l":[{"k":true}]}"#,
        ];
        let parsed = parse_all(&texts);
        assert!(one_pass_with(&tapes_of(&texts, &parsed), None).is_ok());
        for (changed, path) in [
            (r#"{"a":"one"}"#, vec![MixedStep::Key("a".into())]),
            (r#"{"a":1.5}"#, vec![MixedStep::Key("a".into())]),
            (r#"{"o":[1]}"#, vec![MixedStep::Key("o".into())]),
            (
                r#"{"a":18446744073709551615}"#,
                vec![MixedStep::Key("a".into())],
            ),
            (
                r#"{"o":{"x":{"z":null,"w":[{"v":null}]},"y":[2]}}"#,
                vec![MixedStep::Key("o".into()), MixedStep::Key("x".into())],
            ),
            (
                r#"{"l":[{"k":"yes"}]}"#,
                vec![
                    MixedStep::Key("l".into()),
                    MixedStep::Items,
                    MixedStep::Key("k".into()),
                ],
            ),
        ] {
            let all = [texts[0], texts[1], changed];
            let parsed = parse_all(&all);
            let tapes = tapes_of(&all, &parsed);
            // Unlearnt, the pass stops at the path and names it.
            let mut innermost_first = path.clone();
            innermost_first.reverse();
            assert_eq!(
                one_pass_with(&tapes, None).err(),
                Some(OnePassError::Changed(innermost_first)),
                "{changed}"
            );
            // Learnt, the path is gathered and typed at the end: the columns and the nulls
            // are those of two passes (which `assert_same` holds to the value path's).
            let learnt = Arc::new(MixedPaths::default().with(&path).expect("a new path"));
            let (body, nulls) = one_pass_with(&tapes, Some(learnt)).expect("built in one pass");
            assert_bodies_equal(&body, &two_passes(&tapes).expect("two passes"), &all);
            let walked: StringArray = tapes.iter().map(|t| null_pointers(t.root())).collect();
            assert_eq!(nulls, walked, "{changed}");
            assert_same(&all);
        }
    }

    #[test]
    fn keys_compare_as_strings_compare() {
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "abce",
            "xbcd",
            "abcdefg",
            "abcdefh",
            "id_str",
            "created_at",
            "created_an",
            "dreated_at",
            "followers_count",
            "followers_counu",
            "in_reply_to_status_id",
            "in_reply_to_status_ie",
            "é",
            "éa",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(same_key(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn numbers_are_typed_as_serde_json_types_them() {
        for (text, want) in [
            ("0", Node::Int(0)),
            ("-0", Node::Float(-0.0)),
            ("9223372036854775807", Node::Int(i64::MAX)),
            ("-9223372036854775808", Node::Int(i64::MIN)),
            ("9223372036854775808", Node::UInt(1 << 63)),
            ("18446744073709551615", Node::UInt(u64::MAX)),
            ("18446744073709551616", Node::Float(18446744073709551616.0)),
            ("-9223372036854775809", Node::Float(-9223372036854775809.0)),
            ("1.5e3", Node::Float(1500.0)),
            ("0.1", Node::Float(0.1)),
        ] {
            let parsed = Parsed::parse(text.as_bytes()).unwrap();
            assert_eq!(parsed.nodes, vec![want], "{text}");
            let value: Value = serde_json::from_str(text).unwrap();
            let agrees = match want {
                Node::Int(n) => value.as_i64() == Some(n),
                Node::UInt(n) => value.as_u64() == Some(n) && value.as_i64().is_none(),
                Node::Float(f) => value.is_f64() && value.as_f64() == Some(f),
                _ => false,
            };
            assert!(agrees, "{text}: serde_json reads {value:?}");
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            "-",
            "1e",
            "\"\\ud800\"",
            "\"\\x\"",
            "\"a\u{1}\"",
            "nul",
            "1 2",
            "{\"a\" 1}",
            "1e400",
            "[1}",
        ] {
            assert!(
                serde_json::from_str::<Value>(text).is_err(),
                "serde_json takes {text:?}"
            );
            assert!(
                Parsed::parse(text.as_bytes()).is_err(),
                "the tape takes {text:?}"
            );
        }
        assert!(Parsed::parse(&[b'"', 0xff, b'"']).is_err());
        // Depth is counted as `value_depth` counts it, empty containers included.
        let limit = tarn_common::limits::MAX_DOCUMENT_DEPTH;
        for depth in [limit, limit + 1] {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(crate::jsonscan::value_depth(text.as_bytes()), Ok(depth));
            assert_eq!(
                Parsed::parse(text.as_bytes()).is_ok(),
                depth <= limit,
                "{depth}"
            );
        }
    }

    #[test]
    fn builds_what_the_value_path_builds() {
        assert_same(&[
            r#"{"_id":"a","a":1,"u":{"n":"x","z":null},"m":1,"s":"t\u00e9\"\ud83d\ude00","l":[1,null]}"#,
            r#"{"a":2,"u":{"k":[1,2],"n":"y"},"m":"one","_event_time":5,"l":[],"e":{},"v":[1,"x",{"q":null}]}"#,
            r#"{"_meta":{"x":1},"a":null,"big":18446744073709551615,"f":-0,"x/y~z":null,"arr":[[null,{"n":null}]]}"#,
            r#" { "w" : 1.25 , "f" : 2.5e-3 } "#,
            r#"{"q\"\n\u0001":null,"é":{"\\":[null]},"t":{"a":null,"b/":null}}"#,
        ]);
    }

    #[test]
    fn one_pass_writes_the_pointers_of_explicit_nulls_as_a_walk_does() {
        let texts = [
            r#"{"a":null,"u":{"n":null,"x/y~z":{"q":null},"l":[{"k":null},null],"ll":[[{"k":null}]]}}"#,
            r#"{"u":{"q\"\n":null,"é":{"\\":null},"n":"s"},"b":[],"c":{"d":{"e":null}}}"#,
            r#"{"u":{"l":[{"k":1},{"m":null}],"x/y~z":{"q":null}},"t":{"a":null,"b/":null}}"#,
            r#"{"z":1}"#,
        ];
        let parsed = parse_all(&texts);
        let tapes = tapes_of(&texts, &parsed);
        let (_, nulls) = one_pass(&tapes).expect("no path changes type");
        let walked: StringArray = tapes.iter().map(|t| null_pointers(t.root())).collect();
        assert_eq!(nulls, walked);
        assert!(arrow::array::Array::is_null(&nulls, 3));
        assert!(
            nulls.value(0).contains(r#""/u/x~1y~0z/q""#),
            "{}",
            nulls.value(0)
        );
        assert!(
            nulls.value(0).contains(r#""/u/ll/0/0/k""#),
            "{}",
            nulls.value(0)
        );
        assert_same(&texts);
    }

    #[test]
    fn a_key_given_twice_is_left_to_the_value_path() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"o":{"b":1,"b":"x"}}"#,
            r#"{"v":[{"c":1,"c":2}]}"#,
        ] {
            let d = doc_from_text(text);
            assert!(
                documents_to_batch_from_texts(&[(&d, text.as_bytes())]).is_none(),
                "{text}"
            );
        }
        // Also inside a value stored as a variant.
        let texts = [r#"{"v":1}"#, r#"{"v":{"c":1,"c":2}}"#];
        let docs: Vec<Document> = texts.iter().map(|t| doc_from_text(t)).collect();
        let pairs: Vec<(&Document, &[u8])> = docs
            .iter()
            .zip(texts)
            .map(|(d, t)| (d, t.as_bytes()))
            .collect();
        assert!(documents_to_batch_from_texts(&pairs).is_none());
    }

    #[test]
    fn real_tweets_build_as_the_value_path_builds_them() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/real-tweets.ndjson"
        );
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path} is needed next to the checkout: {e}"));
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2000);
        for chunk in lines.chunks(500) {
            assert_same(chunk);
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            (-1e300f64..1e300).prop_map(|f| json!(f)),
            "[a-c\u{e9}\u{1F600}\"\\\\/\n\u{1}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-d_]{1,2}", inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn plain_runs_end_where_a_byte_by_byte_scan_ends_them(
            // Mostly plain bytes, with quotes, backslashes, control bytes and bytes at and
            // around the boundaries (0x1f, 0x20, 0x7f, 0x80) mixed in at random places.
            bytes in prop::collection::vec(
                prop_oneof![8 => 0x21u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'),
                            1 => 0u8..0x20, 1 => Just(0x20u8), 1 => 0x7fu8..=0xff],
                0..40),
            start in 0usize..40,
        ) {
            let start = start.min(bytes.len());
            let naive = (start..bytes.len())
                .find(|&i| matches!(bytes[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(bytes.len());
            prop_assert_eq!(plain_run_end(&bytes, start), naive);
        }
    }

    proptest! {
        #[test]
        fn random_documents_build_as_the_value_path_builds_them(
            bodies in prop::collection::vec(
                prop::collection::vec(("[a-e]{1,2}|_id|_meta", json_value()), 0..6), 1..6)
        ) {
            let texts: Vec<String> = bodies
                .into_iter()
                .map(|kv| {
                    let map: serde_json::Map<String, Value> = kv.into_iter().collect();
                    serde_json::to_string(&Value::Object(map)).unwrap()
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            assert_same(&refs);
        }
    }
}
