//! Rockset's scalar functions that DataFusion lacks: `UNIX_MILLIS` and friends, `MINUTES(n)`,
//! `TYPEOF`, `JSON_FORMAT` and `JSON_PARSE`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, IntervalMonthDayNanoArray, StringArray,
};
use datafusion::arrow::datatypes::{
    DataType, IntervalMonthDayNanoType, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;

/// `UNIX_MILLIS(ts)`, `UNIX_MICROS(ts)`, `UNIX_SECONDS(ts)`: a timestamp of any unit as an
/// integer count since the epoch.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UnixTime {
    name: &'static str,
    micros_per_unit: i64,
    signature: Signature,
}

impl UnixTime {
    fn new(name: &'static str, micros_per_unit: i64) -> Self {
        let ts = |u| DataType::Timestamp(u, None);
        let tz = |u| DataType::Timestamp(u, Some("+00:00".into()));
        let utc = |u| DataType::Timestamp(u, Some("UTC".into()));
        let mut sigs = Vec::new();
        for u in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ] {
            sigs.push(TypeSignature::Exact(vec![ts(u)]));
            sigs.push(TypeSignature::Exact(vec![tz(u)]));
            sigs.push(TypeSignature::Exact(vec![utc(u)]));
        }
        UnixTime {
            name,
            micros_per_unit,
            signature: Signature::one_of(sigs, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for UnixTime {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let micros = datafusion::arrow::compute::cast(
            &arrays[0],
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        let micros = micros.as_primitive::<TimestampMicrosecondType>();
        let per = self.micros_per_unit;
        let out: Int64Array = micros
            .iter()
            .map(|v| v.map(|us| us.div_euclid(per)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `SECONDS(n)`, `MINUTES(n)`, `HOURS(n)`, `DAYS(n)`: an interval of n units.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalOf {
    name: &'static str,
    days: i32,
    nanos: i64,
    signature: Signature,
}

impl IntervalOf {
    fn new(name: &'static str, days: i32, nanos: i64) -> Self {
        IntervalOf {
            name,
            days,
            nanos,
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for IntervalOf {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Interval(
            datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
        ))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(n) = arrays[0].as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>()
        else {
            return exec_err!("{}() takes an integer", self.name);
        };
        let out: IntervalMonthDayNanoArray = n
            .iter()
            .map(|v| {
                v.map(|k| {
                    let days = (self.days as i64)
                        .saturating_mul(k)
                        .clamp(i32::MIN as i64, i32::MAX as i64)
                        as i32;
                    IntervalMonthDayNanoType::make_value(0, days, self.nanos.saturating_mul(k))
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

/// `TYPEOF(x)`: Rockset's type name (`int`, `string`, `object`...), per value for variants.
/// `JSON_FORMAT(x)`: any value as JSON text. `JSON_PARSE(s)`: JSON text as a value.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    name: &'static str,
    signature: Signature,
}

fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        serde_json::Value::Number(_) => "float",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.name {
            "json_parse" => tarn_storage::types::variant_type(),
            _ => DataType::Utf8,
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use tarn_storage::to_json::value_at;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arr = &arrays[0];
        let mut path = String::new();
        let out: ArrayRef = match self.name {
            "typeof" => {
                let dt = arr.data_type();
                let names: StringArray = (0..arr.len())
                    .map(|row| {
                        Some(if arr.is_null(row) {
                            "null"
                        } else if tarn_storage::types::is_variant(dt) {
                            value_at(arr, row, &mut path, None)
                                .as_ref()
                                .map_or("null", json_type_name)
                        } else {
                            tarn_storage::types::rockset_type_name(dt)
                        })
                    })
                    .collect();
                Arc::new(names)
            }
            "json_format" => {
                let texts: StringArray = (0..arr.len())
                    .map(|row| {
                        Some(
                            value_at(arr, row, &mut path, None)
                                .unwrap_or(serde_json::Value::Null)
                                .to_string(),
                        )
                    })
                    .collect();
                Arc::new(texts)
            }
            _ => {
                let text = datafusion::arrow::compute::cast(arr, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                for (row, t) in text.iter().enumerate() {
                    if let Some(t) = t
                        && let Err(e) = serde_json::from_str::<serde_json::Value>(t)
                    {
                        return exec_err!(
                            "JSON_PARSE: row {} is not valid JSON ({e}): {t}",
                            row + 1
                        );
                    }
                }
                tarn_storage::build::variant_array(text.clone())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The name of [`ArrayFieldHas`].
pub const ARRAY_FIELD_HAS: &str = "array_field_has";

/// `array_field_has(list, 'field', x)`: whether some element's `field` (or the element itself
/// when `field` is '') equals `x`. The rewrite of `x IN (SELECT h.field FROM UNNEST(list) h)`.
/// Never NULL: a missing list, element or field is no match.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayFieldHas {
    signature: Signature,
}

impl ScalarUDFImpl for ArrayFieldHas {
    fn name(&self) -> &str {
        ARRAY_FIELD_HAS
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::BooleanArray;
        let rows = args.number_rows;
        let list = args.args[0].to_array(rows)?;
        let field = match &args.args[1] {
            ColumnarValue::Scalar(v) => v.to_string(),
            _ => return exec_err!("array_field_has: the field name must be a constant"),
        };
        let (offsets, values): (Vec<usize>, ArrayRef) = match list.data_type() {
            DataType::List(_) => {
                let l = list.as_list::<i32>();
                (
                    l.value_offsets().iter().map(|o| *o as usize).collect(),
                    l.values().clone(),
                )
            }
            DataType::LargeList(_) => {
                let l = list.as_list::<i64>();
                (
                    l.value_offsets().iter().map(|o| *o as usize).collect(),
                    l.values().clone(),
                )
            }
            DataType::Null => {
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(
                    vec![false; rows],
                ))));
            }
            other => return exec_err!("array_field_has: {other} is not an array"),
        };
        let elements: ArrayRef = if field.is_empty() {
            values
        } else {
            match values
                .as_struct_opt()
                .and_then(|s| s.column_by_name(&field))
            {
                Some(c) => c.clone(),
                None => {
                    return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(
                        vec![false; rows],
                    ))));
                }
            }
        };
        // The usual case, a constant string among strings (`'music' IN (SELECT h.text ...)`):
        // each row's elements are compared until one matches, by length first.
        if let (ColumnarValue::Scalar(v), Some(strings)) =
            (&args.args[2], elements.as_string_opt::<i32>())
            && let Some(Some(needle)) = v.try_as_str()
        {
            let needle = needle.as_bytes();
            let (starts, bytes) = (strings.value_offsets(), strings.value_data());
            let mut found = datafusion::arrow::array::BooleanBufferBuilder::new(rows);
            let list_nulls = list.logical_nulls();
            let element_nulls = strings.nulls().filter(|n| n.null_count() > 0);
            // The first byte before the rest: most elements of the needle's length differ
            // there, and a call to memcmp per element was a quarter of this function.
            let first = needle.first().copied();
            let matches = |j: usize| {
                let (from, to) = (starts[j] as usize, starts[j + 1] as usize);
                to - from == needle.len()
                    && first.is_none_or(|b| bytes[from] == b)
                    && &bytes[from..to] == needle
                    && element_nulls.is_none_or(|n| n.is_valid(j))
            };
            for row in 0..rows {
                let hit = list_nulls.as_ref().is_none_or(|n| n.is_valid(row))
                    && (offsets[row]..offsets[row + 1]).any(matches);
                found.append(hit);
            }
            return Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
                found.finish(),
                None,
            ))));
        }
        // Another constant: one vectorised comparison over all elements.
        if let ColumnarValue::Scalar(v) = &args.args[2] {
            let probe = match datafusion::arrow::compute::cast(
                &v.to_array_of_size(1)?,
                elements.data_type(),
            ) {
                Ok(p) if p.is_valid(0) => p,
                _ => {
                    return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(
                        vec![false; rows],
                    ))));
                }
            };
            let hits = datafusion::arrow::compute::kernels::cmp::eq(
                &elements,
                &datafusion::arrow::array::Scalar::new(probe),
            )?;
            // A null element is no match.
            let bits = match hits.nulls() {
                Some(valid) => hits.values() & valid.inner(),
                None => hits.values().clone(),
            };
            // Walk the matching elements once, mapping each to its row.
            let mut found = vec![false; rows];
            let mut row = 0;
            for j in bits.set_indices() {
                while row < rows && offsets[row + 1] <= j {
                    row += 1;
                }
                if row < rows && list.is_valid(row) {
                    found[row] = true;
                }
            }
            let out = BooleanArray::from(found);
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        let needle = args.args[2].to_array(rows)?;
        let needle = match datafusion::arrow::compute::cast(&needle, elements.data_type()) {
            Ok(n) => n,
            Err(_) => {
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(
                    vec![false; rows],
                ))));
            }
        };
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let (start, end) = (offsets[row], offsets[row + 1]);
            if list.is_null(row) || needle.is_null(row) || start == end {
                out.push(false);
                continue;
            }
            let probe = datafusion::arrow::array::Scalar::new(needle.slice(row, 1));
            let hits = datafusion::arrow::compute::kernels::cmp::eq(
                &elements.slice(start, end - start),
                &probe,
            )?;
            out.push(hits.true_count() > 0);
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}

/// Registers tarn's functions in a session.
pub fn register(ctx: &SessionContext) {
    for udf in [
        ScalarUDF::from(UnixTime::new("unix_millis", 1_000)),
        ScalarUDF::from(UnixTime::new("unix_micros", 1)),
        ScalarUDF::from(UnixTime::new("unix_seconds", 1_000_000)),
        ScalarUDF::from(IntervalOf::new("seconds", 0, 1_000_000_000)),
        ScalarUDF::from(IntervalOf::new("minutes", 0, 60_000_000_000)),
        ScalarUDF::from(IntervalOf::new("hours", 0, 3_600_000_000_000)),
        ScalarUDF::from(IntervalOf::new("days", 1, 0)),
        ScalarUDF::from(ArrayFieldHas {
            signature: Signature::any(3, Volatility::Immutable),
        }),
        ScalarUDF::from(JsonFn {
            name: "typeof",
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::from(JsonFn {
            name: "json_format",
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::from(JsonFn {
            name: "json_parse",
            signature: Signature::any(1, Volatility::Immutable),
        }),
    ] {
        ctx.register_udf(udf);
    }
    crate::pgcatalog::register(ctx);
    // What Postgres tools ask when they connect (through tarn's Postgres endpoint).
    for (name, value) in [
        (
            "version",
            "PostgreSQL 16.0 (tarn) on x86_64, compiled by rustc",
        ),
        ("current_schema", DEFAULT_WORKSPACE_NAME),
        ("current_database", "tarn"),
        ("current_user", "tarn"),
    ] {
        let value = value.to_owned();
        ctx.register_udf(datafusion::logical_expr::create_udf(
            name,
            vec![],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(move |_| {
                Ok(ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::Utf8(Some(value.clone())),
                ))
            }),
        ));
    }
}

const DEFAULT_WORKSPACE_NAME: &str = tarn_storage::DEFAULT_WORKSPACE;

/// The Postgres version tarn's Postgres endpoint reports.
pub const PG_SERVER_VERSION: &str = "16.0";
