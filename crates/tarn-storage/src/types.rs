//! The type lattice that turns schemaless JSON into Arrow types, and the special columns.
//!
//! Every JSON path gets one Arrow type per segment. Two types at a path merge as follows:
//! null merges into anything; objects merge field by field; arrays merge their element types;
//! any other pair (an int and a string, an int and a float, an object and a string) becomes
//! the *variant* type, which keeps each value as its JSON text. Nothing is ever cast.

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// The document id column (string, never null).
pub const ID: &str = "_id";
/// The event time column (timestamp, microseconds, UTC, never null).
pub const EVENT_TIME: &str = "_event_time";
/// Where the document came from.
pub const META: &str = "_meta";
/// Hidden column: the JSON pointers of the document's explicit nulls, as a JSON array text.
/// It lets `SELECT *` tell `{"a": null}` from `{}` although both are an Arrow null.
pub const NULLS: &str = "__tarn_nulls";
/// The single child of a variant struct: the value's JSON text.
pub const VARIANT_FIELD: &str = "$json";

/// The Arrow type of `_event_time`.
pub fn event_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The variant type: a struct with one `$json` string child holding the value's JSON text.
pub fn variant_type() -> DataType {
    DataType::Struct(Fields::from(vec![Field::new(
        VARIANT_FIELD,
        DataType::Utf8,
        true,
    )]))
}

/// Whether a type is the variant type.
pub fn is_variant(dt: &DataType) -> bool {
    match dt {
        DataType::Struct(f) => {
            f.len() == 1 && f[0].name() == VARIANT_FIELD && f[0].data_type() == &DataType::Utf8
        }
        _ => false,
    }
}

/// Whether a column name is one of tarn's own (not from the document body).
pub fn is_special(name: &str) -> bool {
    matches!(name, ID | EVENT_TIME | META | NULLS)
}

/// The Arrow type of one JSON value.
pub fn infer(v: &serde_json::Value) -> DataType {
    use serde_json::Value;
    match v {
        Value::Null => DataType::Null,
        Value::Bool(_) => DataType::Boolean,
        Value::Number(n) => {
            if n.is_i64() {
                DataType::Int64
            } else if n.is_u64() {
                // Beyond i64: kept exactly as JSON text rather than rounded to a float.
                variant_type()
            } else {
                DataType::Float64
            }
        }
        Value::String(_) => DataType::Utf8,
        Value::Array(items) => {
            let mut elem = DataType::Null;
            for item in items {
                elem = merge(&elem, &infer(item));
            }
            list_of(elem)
        }
        Value::Object(map) => infer_object(map),
    }
}

/// The struct type of a JSON object.
pub fn infer_object(map: &serde_json::Map<String, serde_json::Value>) -> DataType {
    DataType::Struct(
        map.iter()
            .map(|(k, v)| Arc::new(Field::new(k, infer(v), true)))
            .collect(),
    )
}

/// Whether a value's own type already merges into `dt` without changing it.
pub fn fits(dt: &DataType, v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        _ if is_variant(dt) => true,
        Value::Bool(_) => dt == &DataType::Boolean,
        Value::Number(n) if n.is_i64() => dt == &DataType::Int64,
        Value::Number(n) if n.is_u64() => false,
        Value::Number(_) => dt == &DataType::Float64,
        Value::String(_) => dt == &DataType::Utf8,
        Value::Array(items) => match dt {
            DataType::List(item) => items.iter().all(|i| fits(item.data_type(), i)),
            _ => false,
        },
        Value::Object(map) => match dt {
            DataType::Struct(fields) => object_fits(fields, map),
            _ => false,
        },
    }
}

fn object_fits(fields: &Fields, map: &serde_json::Map<String, serde_json::Value>) -> bool {
    // Documents of one stream usually list keys in the same order: try the same position first.
    map.iter().enumerate().all(|(pos, (k, v))| {
        let field = match fields.get(pos) {
            Some(f) if f.name() == k => Some(f),
            _ => fields.find(k).map(|(_, f)| f),
        };
        field.is_some_and(|f| fits(f.data_type(), v))
    })
}

/// Widens `dt` so that it holds `v` too; allocates only when the type changes.
pub fn widen(dt: &mut DataType, v: &serde_json::Value) {
    if !fits(dt, v) {
        *dt = merge(dt, &infer(v));
    }
}

/// [`widen`] for a document body (an object).
pub fn widen_object(dt: &mut DataType, map: &serde_json::Map<String, serde_json::Value>) {
    let fits_already = matches!(dt, DataType::Struct(f) if object_fits(f, map));
    if !fits_already {
        *dt = merge(dt, &infer_object(map));
    }
}

/// A nullable list of `elem`.
pub fn list_of(elem: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", elem, true)))
}

/// The least type holding values of both types (see the module docs).
pub fn merge(a: &DataType, b: &DataType) -> DataType {
    match (a, b) {
        _ if a == b => a.clone(),
        (DataType::Null, x) | (x, DataType::Null) => x.clone(),
        _ if is_variant(a) || is_variant(b) => variant_type(),
        (DataType::Struct(fa), DataType::Struct(fb)) => DataType::Struct(merge_fields(fa, fb)),
        (DataType::List(ea), DataType::List(eb)) => list_of(merge(ea.data_type(), eb.data_type())),
        _ => variant_type(),
    }
}

/// Merges two field lists by name, keeping the order of `a` then the new names of `b`.
pub fn merge_fields(a: &Fields, b: &Fields) -> Fields {
    let mut out: Vec<Field> = Vec::with_capacity(a.len().max(b.len()));
    for fa in a.iter() {
        match b.find(fa.name()) {
            Some((_, fb)) => out.push(Field::new(
                fa.name(),
                merge(fa.data_type(), fb.data_type()),
                true,
            )),
            None => out.push(fa.as_ref().clone()),
        }
    }
    for fb in b.iter() {
        if a.find(fb.name()).is_none() {
            out.push(fb.as_ref().clone());
        }
    }
    Fields::from(out)
}

/// Merges two collection schemas; special columns keep their place first and last.
pub fn merge_schemas(a: &Schema, b: &Schema) -> SchemaRef {
    Arc::new(Schema::new(order_columns(merge_fields(
        a.fields(),
        b.fields(),
    ))))
}

/// Orders columns: `_id`, `_event_time`, `_meta`, the document's fields, then the hidden nulls.
pub fn order_columns(fields: Fields) -> Fields {
    let mut out: Vec<Arc<Field>> = Vec::with_capacity(fields.len());
    for name in [ID, EVENT_TIME, META] {
        if let Some((_, f)) = fields.find(name) {
            out.push(f.clone());
        }
    }
    out.extend(fields.iter().filter(|f| !is_special(f.name())).cloned());
    if let Some((_, f)) = fields.find(NULLS) {
        out.push(f.clone());
    }
    Fields::from(out)
}

/// The schema of an empty collection: only the special columns.
pub fn base_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(ID, DataType::Utf8, false),
        Field::new(EVENT_TIME, event_time_type(), false),
        Field::new(NULLS, DataType::Utf8, true),
    ]))
}

/// Rockset's name for a column type, for `column_fields` and schema listings.
pub fn rockset_type_name(dt: &DataType) -> &'static str {
    match dt {
        DataType::Null => "null",
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int",
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "int",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "float",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "float",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytes",
        DataType::Timestamp(..) => "timestamp",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time",
        DataType::Interval(arrow::datatypes::IntervalUnit::YearMonth) => "month_interval",
        DataType::Interval(_) | DataType::Duration(_) => "microsecond_interval",
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::ListView(_) => "array",
        dt if is_variant(dt) => "variant",
        DataType::Struct(_) | DataType::Map(..) => "object",
        DataType::Dictionary(_, v) => rockset_type_name(v),
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn infers_nested_types() {
        let dt = infer(&json!({"a": 1, "b": [1.5, null], "c": {"d": "x"}, "e": null}));
        let DataType::Struct(f) = dt else { panic!() };
        assert_eq!(f[0].data_type(), &DataType::Int64);
        assert_eq!(f[1].data_type(), &list_of(DataType::Float64));
        assert_eq!(f[3].data_type(), &DataType::Null);
    }

    #[test]
    fn conflicts_become_variant_never_casts() {
        assert!(is_variant(&merge(&DataType::Int64, &DataType::Utf8)));
        assert!(is_variant(&merge(&DataType::Int64, &DataType::Float64)));
        assert!(is_variant(&infer(&json!(u64::MAX))));
        assert_eq!(merge(&DataType::Null, &DataType::Utf8), DataType::Utf8);
        let a = infer(&json!({"x": 1}));
        let b = infer(&json!({"y": "s", "x": null}));
        let DataType::Struct(f) = merge(&a, &b) else {
            panic!()
        };
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].data_type(), &DataType::Int64);
        assert!(is_variant(&merge(&a, &DataType::Utf8)));
        assert!(is_variant(&merge(
            &list_of(DataType::Int64),
            &DataType::Int64
        )));
    }
}
