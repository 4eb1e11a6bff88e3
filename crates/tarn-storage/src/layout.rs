//! How segment files lay out struct columns: every field of a struct is a column of its own
//! in the file, so a query that reads `user.screen_name` decodes that field and not the
//! forty others of a tweet's `user`.
//!
//! A file written this way marks its schema with [`LAYOUT_KEY`]. Its columns are the
//! preorder walk of the segment's columns: a struct column (not a variant) becomes a column
//! of type `Struct<>` that holds only its validity, followed by its fields, each marked with
//! its name and its parent's position. Files without the mark (written before) hold the
//! segment's columns as they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use parking_lot::Mutex;
use tarn_common::{TarnError, TarnResult};

use crate::adapt::arrow_error;
use crate::types;

pub const LAYOUT_KEY: &str = "tarn.layout";
const FIELDS_LAYOUT: &str = "fields";
const NAME_KEY: &str = "tarn.name";
const PARENT_KEY: &str = "tarn.parent";

/// The fields of a struct column that a reader needs: each named field wholly (`None`) or
/// only some of its own fields. Fields not named are returned all null. Of a list of
/// structs, the fields named are those of its elements ([`crate::narrow`]); a file holds
/// such a list as one column and decodes it whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subfields(pub BTreeMap<String, Option<Subfields>>);

impl Subfields {
    /// What two readers need together; `None` is the whole column.
    pub fn union(a: Option<Subfields>, b: Option<Subfields>) -> Option<Subfields> {
        let (mut a, b) = (a?, b?);
        for (name, sub) in b.0 {
            let merged = match a.0.remove(&name) {
                Some(mine) => Subfields::union(mine, sub),
                None => sub,
            };
            a.0.insert(name, merged);
        }
        Some(a)
    }

    /// Whether `field` is needed, and how much of it: `None` when it is not needed.
    fn wants(&self, field: &str) -> Option<Option<&Subfields>> {
        self.0.get(field).map(Option::as_ref)
    }
}

/// The batch as a file of this layout stores it.
pub fn flatten(batch: &RecordBatch) -> TarnResult<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        push_flat(field, column, None, &mut fields, &mut columns);
    }
    let mut metadata = batch.schema().metadata().clone();
    metadata.insert(LAYOUT_KEY.into(), FIELDS_LAYOUT.into());
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new_with_metadata(fields, metadata)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(arrow_error)
}

fn push_flat(
    field: &Field,
    column: &ArrayRef,
    parent: Option<usize>,
    fields: &mut Vec<Field>,
    columns: &mut Vec<ArrayRef>,
) {
    let at = fields.len();
    let mut metadata = field.metadata().clone();
    metadata.insert(NAME_KEY.into(), field.name().clone());
    if let Some(p) = parent {
        metadata.insert(PARENT_KEY.into(), p.to_string());
    }
    match field.data_type() {
        DataType::Struct(children)
            if !children.is_empty() && !types::is_variant(field.data_type()) =>
        {
            let s = column.as_struct();
            fields.push(
                Field::new(
                    at.to_string(),
                    DataType::Struct(Fields::empty()),
                    field.is_nullable(),
                )
                .with_metadata(metadata),
            );
            columns.push(Arc::new(StructArray::new_empty_fields(
                s.len(),
                s.nulls().cloned(),
            )));
            for (child, values) in children.iter().zip(s.columns()) {
                push_flat(child, values, Some(at), fields, columns);
            }
        }
        t => {
            fields.push(
                Field::new(at.to_string(), t.clone(), field.is_nullable()).with_metadata(metadata),
            );
            columns.push(column.clone());
        }
    }
}

/// The path of each column of a file (`user.screen_name`; struct fields joined by `.`):
/// what the column cache remembers queries read. Files without the layout name their
/// columns by their own names.
pub fn column_paths(file: &Schema) -> Vec<String> {
    let mut paths: Vec<String> = Vec::with_capacity(file.fields().len());
    for f in file.fields() {
        let name = f.metadata().get(NAME_KEY).unwrap_or(f.name());
        let parent = f
            .metadata()
            .get(PARENT_KEY)
            .and_then(|p| p.parse::<usize>().ok())
            .and_then(|p| paths.get(p));
        paths.push(match parent {
            Some(parent) => format!("{parent}.{name}"),
            None => name.clone(),
        });
    }
    paths
}

/// One column of a segment as a file of this layout holds it.
#[derive(Debug)]
pub enum FlatColumn {
    Leaf {
        file_index: usize,
    },
    Struct {
        /// The column holding the struct's validity.
        file_index: usize,
        fields: Fields,
        children: Vec<FlatColumn>,
    },
}

/// The segment's schema and its columns' places, read from a file schema of this layout;
/// `None` for a file that holds the segment's columns as they are.
pub fn unflatten_schema(file: &Schema) -> TarnResult<Option<(SchemaRef, Vec<FlatColumn>)>> {
    if file.metadata().get(LAYOUT_KEY).map(String::as_str) != Some(FIELDS_LAYOUT) {
        return Ok(None);
    }
    let fields = file.fields();
    let mut top = Vec::new();
    let mut columns = Vec::new();
    let mut at = 0;
    while at < fields.len() {
        let (field, column, next) = unflatten_from(fields, at)?;
        top.push(field);
        columns.push(column);
        at = next;
    }
    let mut metadata = file.metadata().clone();
    metadata.remove(LAYOUT_KEY);
    Ok(Some((
        Arc::new(Schema::new_with_metadata(top, metadata)),
        columns,
    )))
}

fn unflatten_from(fields: &Fields, at: usize) -> TarnResult<(FieldRef, FlatColumn, usize)> {
    let f = &fields[at];
    let mut metadata = f.metadata().clone();
    let name = metadata
        .remove(NAME_KEY)
        .ok_or_else(|| TarnError::internal(format!("segment file column {at} has no name")))?;
    metadata.remove(PARENT_KEY);
    let parent_of = |i: usize| {
        fields
            .get(i)
            .and_then(|c| c.metadata().get(PARENT_KEY))
            .and_then(|p| p.parse::<usize>().ok())
    };
    let mut next = at + 1;
    let mut children = Vec::new();
    let mut child_fields = Vec::new();
    while parent_of(next) == Some(at) {
        let (field, column, after) = unflatten_from(fields, next)?;
        child_fields.push(field);
        children.push(column);
        next = after;
    }
    if children.is_empty() {
        let field =
            Field::new(name, f.data_type().clone(), f.is_nullable()).with_metadata(metadata);
        return Ok((Arc::new(field), FlatColumn::Leaf { file_index: at }, next));
    }
    let child_fields = Fields::from(child_fields);
    let field = Field::new(
        name,
        DataType::Struct(child_fields.clone()),
        f.is_nullable(),
    )
    .with_metadata(metadata);
    Ok((
        Arc::new(field),
        FlatColumn::Struct {
            file_index: at,
            fields: child_fields,
            children,
        },
        next,
    ))
}

impl FlatColumn {
    /// Adds the file columns this column needs, wholly (`sub` = `None`) or in part.
    pub fn needed(&self, sub: Option<&Subfields>, out: &mut Vec<usize>) {
        match self {
            FlatColumn::Leaf { file_index } => out.push(*file_index),
            FlatColumn::Struct {
                file_index,
                fields,
                children,
            } => {
                out.push(*file_index);
                for (field, child) in fields.iter().zip(children) {
                    if let Some(inner) = wanted(sub, field) {
                        child.needed(inner, out);
                    }
                }
            }
        }
    }

    /// The column, from the file columns `get` gives (all of those [`Self::needed`] named);
    /// fields not needed are all null.
    pub fn assemble(
        &self,
        sub: Option<&Subfields>,
        rows: usize,
        get: &dyn Fn(usize) -> TarnResult<ArrayRef>,
    ) -> TarnResult<ArrayRef> {
        match self {
            FlatColumn::Leaf { file_index } => get(*file_index),
            FlatColumn::Struct {
                file_index,
                fields,
                children,
            } => {
                let validity = get(*file_index)?.logical_nulls();
                let arrays = fields
                    .iter()
                    .zip(children)
                    .map(|(field, child)| match wanted(sub, field) {
                        Some(inner) => child.assemble(inner, rows, get),
                        None => Ok(null_array(field.data_type(), rows)),
                    })
                    .collect::<TarnResult<Vec<_>>>()?;
                Ok(Arc::new(
                    StructArray::try_new(fields.clone(), arrays, validity).map_err(arrow_error)?,
                ))
            }
        }
    }
}

/// Whether a struct's `field` is read under `sub`, and how much of it. A field that cannot
/// hold nulls is always read whole: nulls cannot stand in for it.
pub(crate) fn wanted<'a>(
    sub: Option<&'a Subfields>,
    field: &Field,
) -> Option<Option<&'a Subfields>> {
    match sub {
        None => Some(None),
        Some(s) => match s.wants(field.name()) {
            Some(inner) => Some(inner),
            None if !field.is_nullable() => Some(None),
            None => None,
        },
    }
}

/// An all-null array, shared: a scan fills the fields it does not read with these. One array
/// per type is kept, as long as the longest asked for, and shorter ones are slices of it:
/// scans ask for every length their filters leave, and making each anew was a tenth of a
/// filtered scan's time over a tweet's forty `user` fields.
pub(crate) fn null_array(data_type: &DataType, rows: usize) -> ArrayRef {
    static SHARED: Mutex<Option<HashMap<DataType, ArrayRef>>> = Mutex::new(None);
    let mut shared = SHARED.lock();
    let map = shared.get_or_insert_with(HashMap::new);
    if let Some(a) = map.get(data_type)
        && a.len() >= rows
    {
        return a.slice(0, rows);
    }
    if map.len() >= 512 {
        map.clear();
    }
    let a = arrow::array::new_null_array(data_type, rows.max(8192));
    map.insert(data_type.clone(), a.clone());
    a.slice(0, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::batch_of;
    use serde_json::json;

    fn batch() -> RecordBatch {
        batch_of(&[
            json!({"u": {"name": "ann", "n": 1, "deep": {"a": 1, "b": "x"}}, "tags": [{"t": "a"}], "s": "x"}),
            json!({"u": null, "s": "y"}),
            json!({"u": {"name": "bob", "deep": {"b": "y"}}, "e": {}, "v": 1}),
            json!({"v": "one", "u": {"name": 3}}),
        ])
    }

    fn assemble_all(b: &RecordBatch, sub: &HashMap<&str, Subfields>) -> RecordBatch {
        let flat = flatten(b).unwrap();
        let (schema, columns) = unflatten_schema(&flat.schema()).unwrap().unwrap();
        assert_eq!(schema.as_ref(), b.schema().as_ref());
        let arrays = schema
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| {
                let s = sub.get(f.name().as_str());
                let mut needed = Vec::new();
                c.needed(s, &mut needed);
                c.assemble(s, b.num_rows(), &|i| {
                    assert!(
                        needed.contains(&i),
                        "column {i} read but not named as needed"
                    );
                    Ok(flat.column(i).clone())
                })
                .unwrap()
            })
            .collect();
        RecordBatch::try_new(schema, arrays).unwrap()
    }

    #[test]
    fn flattened_columns_assemble_to_the_batch() {
        let b = batch();
        assert!(flatten(&b).unwrap().num_columns() > b.num_columns());
        assert_eq!(assemble_all(&b, &HashMap::new()), b);
    }

    #[test]
    fn unread_fields_come_back_null_and_read_ones_equal() {
        let b = batch();
        let mut want = Subfields::default();
        want.0.insert("name".into(), None);
        let mut deep = Subfields::default();
        deep.0.insert("b".into(), None);
        want.0.insert("deep".into(), Some(deep));
        let got = assemble_all(&b, &HashMap::from([("u", want)]));
        let u = got.column_by_name("u").unwrap().as_struct();
        let orig = b.column_by_name("u").unwrap().as_struct();
        assert_eq!(u.nulls(), orig.nulls());
        assert_eq!(u.column_by_name("name"), orig.column_by_name("name"));
        assert_eq!(u.column_by_name("n").unwrap().null_count(), 4);
        let deep = u.column_by_name("deep").unwrap().as_struct();
        let odeep = orig.column_by_name("deep").unwrap().as_struct();
        assert_eq!(deep.column_by_name("b"), odeep.column_by_name("b"));
        assert_eq!(deep.column_by_name("a").unwrap().null_count(), 4);
        // Other columns are whole.
        assert_eq!(got.column_by_name("tags"), b.column_by_name("tags"));
    }

    #[test]
    fn file_columns_are_named_by_their_paths() {
        let flat = flatten(&batch()).unwrap();
        let paths = column_paths(&flat.schema());
        assert_eq!(paths.len(), flat.num_columns());
        for p in [
            "u", "u.name", "u.n", "u.deep", "u.deep.a", "u.deep.b", "tags", "s", "e",
        ] {
            assert!(paths.iter().any(|q| q == p), "{p} in {paths:?}");
        }
        // A file without the layout names its columns as they are.
        assert_eq!(
            column_paths(&batch().schema()),
            batch()
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn union_keeps_the_wider_need() {
        let f = |names: &[&str]| {
            Some(Subfields(
                names.iter().map(|n| (n.to_string(), None)).collect(),
            ))
        };
        assert_eq!(Subfields::union(f(&["a"]), None), None);
        assert_eq!(Subfields::union(f(&["a"]), f(&["b"])), f(&["a", "b"]));
        let mut deep = Subfields::default();
        deep.0.insert("x".into(), f(&["y"]));
        let mut whole_x = Subfields::default();
        whole_x.0.insert("x".into(), None);
        assert_eq!(
            Subfields::union(Some(deep), Some(whole_x.clone())),
            Some(whole_x)
        );
    }
}
