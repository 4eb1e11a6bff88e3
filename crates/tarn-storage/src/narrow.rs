//! Columns cut down to the fields a query reads: the rows a scan keeps are copied with only
//! those fields, and the other fields of a struct, or of the structs in a list, come back as
//! shared all-null arrays rather than copies.
//!
//! A tweet's `user` has some forty fields and its hashtags carry `indices` beside `text`; a
//! query that reads `user.screen_name` or `hashtags[].text` spent most of its copying on the
//! rest (`perf` of Live Tweets and Related Hashtags over 10 million tweets).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, ListArray, StructArray, UInt32Array};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::take;
use arrow::datatypes::DataType;
use tarn_common::TarnResult;

use crate::adapt::arrow_error;
use crate::layout::{Subfields, null_array, wanted};
use crate::types;

/// Whether [`Subfields`] can narrow a column of this type: a struct that is not a variant.
fn narrowable_struct(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Struct(f) if !f.is_empty()) && !types::is_variant(data_type)
}

/// Whether a scan can read a column of this type in part: such a struct, or a list of them.
pub fn narrowable(data_type: &DataType) -> bool {
    match data_type {
        DataType::List(element) => narrowable_struct(element.data_type()),
        t => narrowable_struct(t),
    }
}

/// The rows `indices` of `column`, in that order. Of the fields `sub` leaves out (of a struct,
/// or of the structs a list holds), the copy holds nulls; `sub` = `None` copies all of it.
pub fn take_fields(
    column: &ArrayRef,
    indices: &UInt32Array,
    sub: Option<&Subfields>,
) -> TarnResult<ArrayRef> {
    let whole = || take(column, indices, None).map_err(arrow_error);
    let Some(sub) = sub else {
        return whole();
    };
    match column.data_type() {
        DataType::Struct(fields) if narrowable_struct(column.data_type()) => {
            let s = column.as_struct();
            let arrays = fields
                .iter()
                .zip(s.columns())
                .map(|(field, values)| match wanted(Some(sub), field) {
                    Some(inner) => take_fields(values, indices, inner),
                    None => Ok(null_array(field.data_type(), indices.len())),
                })
                .collect::<TarnResult<Vec<_>>>()?;
            let nulls = take_nulls(s.nulls(), indices)?;
            Ok(Arc::new(
                StructArray::try_new(fields.clone(), arrays, nulls).map_err(arrow_error)?,
            ))
        }
        DataType::List(element) if narrowable_struct(element.data_type()) => {
            let list = column.as_list::<i32>();
            let offsets = list.value_offsets();
            let mut taken_offsets = Vec::with_capacity(indices.len() + 1);
            let mut value_indices = Vec::new();
            let mut end = 0i32;
            taken_offsets.push(end);
            for &row in indices.values() {
                let (from, to) = (offsets[row as usize], offsets[row as usize + 1]);
                value_indices.extend(from as u32..to as u32);
                end += to - from;
                taken_offsets.push(end);
            }
            let values = take_fields(list.values(), &UInt32Array::from(value_indices), Some(sub))?;
            let nulls = take_nulls(list.nulls(), indices)?;
            Ok(Arc::new(
                ListArray::try_new(
                    element.clone(),
                    OffsetBuffer::new(taken_offsets.into()),
                    values,
                    nulls,
                )
                .map_err(arrow_error)?,
            ))
        }
        _ => whole(),
    }
}

/// The validity of the rows `indices`; `None` when all of them are valid.
fn take_nulls(nulls: Option<&NullBuffer>, indices: &UInt32Array) -> TarnResult<Option<NullBuffer>> {
    let Some(nulls) = nulls else {
        return Ok(None);
    };
    let valid = take(
        &BooleanArray::new(nulls.inner().clone(), None),
        indices,
        None,
    )
    .map_err(arrow_error)?;
    let taken = NullBuffer::new(valid.as_boolean().values().clone());
    Ok((taken.null_count() > 0).then_some(taken))
}

/// `column` with the element fields that `sub` leaves out of its lists of structs replaced by
/// nulls, without copying anything else; what a scan that keeps every row of a segment
/// returns, so that the operators above (an unnest's copy of each element) copy less. The
/// fields of plain structs are left as they are: a segment file already gives the fields a
/// query does not read as nulls.
pub fn narrow(column: &ArrayRef, sub: Option<&Subfields>) -> TarnResult<ArrayRef> {
    let Some(sub) = sub else {
        return Ok(column.clone());
    };
    match column.data_type() {
        DataType::Struct(fields) if narrowable_struct(column.data_type()) => {
            let s = column.as_struct();
            let mut changed = false;
            let arrays = fields
                .iter()
                .zip(s.columns())
                .map(|(field, values)| match wanted(Some(sub), field) {
                    Some(inner) => {
                        let narrowed = narrow(values, inner)?;
                        changed |= !Arc::ptr_eq(&narrowed, values);
                        Ok(narrowed)
                    }
                    None => Ok(values.clone()),
                })
                .collect::<TarnResult<Vec<_>>>()?;
            if !changed {
                return Ok(column.clone());
            }
            Ok(Arc::new(
                StructArray::try_new(fields.clone(), arrays, s.nulls().cloned())
                    .map_err(arrow_error)?,
            ))
        }
        DataType::List(element) if narrowable_struct(element.data_type()) => {
            let list = column.as_list::<i32>();
            let values = list.values().as_struct();
            let arrays = values
                .fields()
                .iter()
                .zip(values.columns())
                .map(|(field, inner_values)| match wanted(Some(sub), field) {
                    Some(inner) => narrow(inner_values, inner),
                    None => Ok(null_array(field.data_type(), values.len())),
                })
                .collect::<TarnResult<Vec<_>>>()?;
            let values =
                StructArray::try_new(values.fields().clone(), arrays, values.nulls().cloned())
                    .map_err(arrow_error)?;
            Ok(Arc::new(
                ListArray::try_new(
                    element.clone(),
                    list.offsets().clone(),
                    Arc::new(values),
                    list.nulls().cloned(),
                )
                .map_err(arrow_error)?,
            ))
        }
        _ => Ok(column.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::batch_of;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn sub(fields: &[&str]) -> Subfields {
        Subfields(
            fields
                .iter()
                .map(|n| (n.to_string(), None))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn field<'a>(s: &'a StructArray, name: &str) -> &'a ArrayRef {
        s.column_by_name(name).unwrap()
    }

    #[test]
    fn copies_only_the_fields_read_of_structs_and_of_the_structs_in_lists() {
        let batch = batch_of(&[
            json!({"u": {"name": "ann", "k": 1}, "tags": [{"text": "a", "at": [1, 2]}, {"text": "b", "at": [3]}]}),
            json!({"u": null, "tags": []}),
            json!({"u": {"name": "bob", "k": 2}}),
            json!({"u": {"name": "cy", "k": 3}, "tags": [{"text": "c", "at": []}, null]}),
        ]);
        let u = batch.column_by_name("u").unwrap();
        let tags = batch.column_by_name("tags").unwrap();
        let rows = UInt32Array::from(vec![3, 0, 1, 2]);

        let all_of_u = take(u, &rows, None).unwrap();
        let (all_of_u, u_taken) = (
            all_of_u.as_struct(),
            take_fields(u, &rows, Some(&sub(&["name"]))).unwrap(),
        );
        let u_taken = u_taken.as_struct();
        assert_eq!(u_taken.nulls(), all_of_u.nulls());
        assert_eq!(field(u_taken, "name"), field(all_of_u, "name"));
        assert_eq!(field(u_taken, "k").null_count(), 4);

        let all_tags = take(tags, &rows, None).unwrap();
        let all_tags = all_tags.as_list::<i32>();
        let tags_taken = take_fields(tags, &rows, Some(&sub(&["text"]))).unwrap();
        let tags_taken = tags_taken.as_list::<i32>();
        assert_eq!(tags_taken.offsets(), all_tags.offsets());
        assert_eq!(tags_taken.nulls(), all_tags.nulls());
        let (values, all_values) = (
            tags_taken.values().as_struct(),
            all_tags.values().as_struct(),
        );
        assert_eq!(values.len(), 4);
        assert_eq!(values.nulls(), all_values.nulls());
        assert_eq!(field(values, "text"), field(all_values, "text"));
        assert_eq!(field(values, "at").null_count(), 4);

        // Whole, the copy is arrow's own.
        assert_eq!(
            &take_fields(tags, &rows, None).unwrap(),
            &take(tags, &rows, None).unwrap()
        );

        // In place, only the structs inside lists lose fields.
        let narrowed = narrow(tags, Some(&sub(&["text"]))).unwrap();
        let narrowed = narrowed.as_list::<i32>();
        let original = tags.as_list::<i32>();
        assert_eq!(narrowed.offsets(), original.offsets());
        let values = narrowed.values().as_struct();
        assert_eq!(field(values, "at").null_count(), values.len());
        assert_eq!(
            field(values, "text"),
            field(original.values().as_struct(), "text")
        );
        assert!(Arc::ptr_eq(&narrow(u, Some(&sub(&["name"]))).unwrap(), u));
    }
}
