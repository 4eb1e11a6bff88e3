//! Rockset's scalar functions that DataFusion lacks: `UNIX_MILLIS` and friends, `MINUTES(n)`...

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, IntervalMonthDayNanoArray};
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
    ] {
        ctx.register_udf(udf);
    }
}
