//! A `pg_catalog` schema for Postgres tools (psql's `\dt`, SQLAlchemy's reflection):
//! workspaces as namespaces, collections as tables (`relkind = 'r'`), top-level fields as
//! attributes, built from the storage at each lookup. Also the catalog functions those
//! tools call (`pg_table_is_visible`, `pg_get_userbyid`, `format_type`...).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use tarn_storage::Storage;
use tarn_storage::types::{NULLS, rockset_type_name};

/// The schema name.
pub const PG_CATALOG: &str = "pg_catalog";

const NAMESPACE_PG_CATALOG: i64 = 11;
const NAMESPACE_INFORMATION_SCHEMA: i64 = 13_000;

/// The Postgres type (oid, name) a tarn column shows as.
pub fn pg_type_of(dt: &DataType) -> (i64, &'static str) {
    match rockset_type_name(dt) {
        "int" => (20, "int8"),
        "float" => (701, "float8"),
        "bool" => (16, "bool"),
        "timestamp" => (1184, "timestamptz"),
        "object" | "array" | "variant" => (3802, "jsonb"),
        _ => (25, "text"),
    }
}

/// A stable oid in the user range for a name.
fn oid_of(kind: &str, name: &str) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (kind, name).hash(&mut h);
    16_384 + (h.finish() % 2_000_000_000) as i64
}

fn i64s(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}
fn strs(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}
fn bools(v: Vec<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from(v))
}

fn table(fields: Vec<(&str, DataType)>, columns: Vec<ArrayRef>) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn empty(fields: Vec<(&str, DataType)>) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// The `pg_catalog` schema.
#[derive(Debug)]
pub struct PgCatalogSchema {
    pub storage: Arc<Storage>,
}

const TABLES: [&str; 15] = [
    "pg_sequence",
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_settings",
    "pg_am",
    "pg_description",
    "pg_index",
    "pg_constraint",
    "pg_attrdef",
    "pg_inherits",
    "pg_collation",
    "pg_proc",
];

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        use DataType::{Boolean as B, Float64 as F, Int64 as I, Utf8 as S};
        let workspaces = self.storage.list_workspaces();
        let collections = self.storage.list_collections(None);
        let t = match name {
            "pg_namespace" => {
                let mut oid = vec![NAMESPACE_PG_CATALOG, NAMESPACE_INFORMATION_SCHEMA];
                let mut names = vec![PG_CATALOG.to_owned(), "information_schema".to_owned()];
                for w in &workspaces {
                    oid.push(oid_of("ns", &w.name));
                    names.push(w.name.clone());
                }
                let n = oid.len();
                table(
                    vec![("oid", I), ("nspname", S), ("nspowner", I), ("nspacl", S)],
                    vec![
                        i64s(oid),
                        strs(names),
                        i64s(vec![10; n]),
                        strs(vec![String::new(); n]),
                    ],
                )?
            }
            "pg_class" => {
                let n = collections.len();
                let oid: Vec<i64> = collections
                    .iter()
                    .map(|(i, _)| oid_of("rel", &format!("{}.{}", i.workspace, i.name)))
                    .collect();
                let names = collections.iter().map(|(i, _)| i.name.clone()).collect();
                let ns = collections
                    .iter()
                    .map(|(i, _)| oid_of("ns", &i.workspace))
                    .collect();
                let rows: Vec<f64> = collections
                    .iter()
                    .map(|(_, c)| c.stats().doc_count as f64)
                    .collect();
                table(
                    vec![
                        ("oid", I),
                        ("relname", S),
                        ("relnamespace", I),
                        ("relkind", S),
                        ("relowner", I),
                        ("relam", I),
                        ("relpersistence", S),
                        ("reltuples", F),
                        ("relhasindex", B),
                        ("relispartition", B),
                        ("relchecks", I),
                        ("reltype", I),
                        ("relpartbound", S),
                        ("reloptions", S),
                        ("relhasrules", B),
                        ("relhastriggers", B),
                        ("relrowsecurity", B),
                        ("relforcerowsecurity", B),
                        ("reltablespace", I),
                        ("reloftype", I),
                        ("relreplident", S),
                        ("reltoastrelid", I),
                        ("relacl", S),
                    ],
                    vec![
                        i64s(oid),
                        strs(names),
                        i64s(ns),
                        strs(vec!["r".into(); n]),
                        i64s(vec![10; n]),
                        i64s(vec![2; n]),
                        strs(vec!["p".into(); n]),
                        Arc::new(Float64Array::from(rows)),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        i64s(vec![0; n]),
                        i64s(vec![0; n]),
                        Arc::new(StringArray::from(vec![None::<String>; n])),
                        Arc::new(StringArray::from(vec![None::<String>; n])),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        i64s(vec![0; n]),
                        i64s(vec![0; n]),
                        strs(vec!["d".into(); n]),
                        i64s(vec![0; n]),
                        Arc::new(StringArray::from(vec![None::<String>; n])),
                    ],
                )?
            }
            "pg_attribute" => {
                let (mut rel, mut name, mut typ, mut num) = (vec![], vec![], vec![], vec![]);
                for (info, c) in &collections {
                    let oid = oid_of("rel", &format!("{}.{}", info.workspace, info.name));
                    let schema = c.schema();
                    let fields = schema.fields().iter().filter(|f| f.name() != NULLS);
                    for (k, f) in fields.enumerate() {
                        rel.push(oid);
                        name.push(f.name().clone());
                        typ.push(pg_type_of(f.data_type()).0);
                        num.push(k as i64 + 1);
                    }
                }
                let n = rel.len();
                table(
                    vec![
                        ("attrelid", I),
                        ("attname", S),
                        ("atttypid", I),
                        ("attnum", I),
                        ("attnotnull", B),
                        ("atthasdef", B),
                        ("attisdropped", B),
                        ("atttypmod", I),
                        ("attlen", I),
                        ("attidentity", S),
                        ("attgenerated", S),
                        ("attcollation", I),
                    ],
                    vec![
                        i64s(rel),
                        strs(name),
                        i64s(typ),
                        i64s(num),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        bools(vec![false; n]),
                        i64s(vec![-1; n]),
                        i64s(vec![-1; n]),
                        strs(vec![String::new(); n]),
                        strs(vec![String::new(); n]),
                        i64s(vec![0; n]),
                    ],
                )?
            }
            "pg_type" => {
                let types: [(i64, &str, i64); 6] = [
                    (16, "bool", 1000),
                    (20, "int8", 1016),
                    (25, "text", 1009),
                    (701, "float8", 1022),
                    (1184, "timestamptz", 1185),
                    (3802, "jsonb", 3807),
                ];
                let n = types.len();
                table(
                    vec![
                        ("oid", I),
                        ("typname", S),
                        ("typnamespace", I),
                        ("typarray", I),
                        ("typtype", S),
                        ("typbasetype", I),
                        ("typtypmod", I),
                        ("typnotnull", B),
                        ("typrelid", I),
                        ("typelem", I),
                        ("typlen", I),
                        ("typcollation", I),
                    ],
                    vec![
                        i64s(types.iter().map(|t| t.0).collect()),
                        strs(types.iter().map(|t| t.1.to_owned()).collect()),
                        i64s(vec![NAMESPACE_PG_CATALOG; n]),
                        i64s(types.iter().map(|t| t.2).collect()),
                        strs(vec!["b".into(); n]),
                        i64s(vec![0; n]),
                        i64s(vec![-1; n]),
                        bools(vec![false; n]),
                        i64s(vec![0; n]),
                        i64s(vec![0; n]),
                        i64s(vec![-1; n]),
                        i64s(vec![0; n]),
                    ],
                )?
            }
            "pg_database" => table(
                vec![
                    ("oid", I),
                    ("datname", S),
                    ("encoding", I),
                    ("datallowconn", B),
                ],
                vec![
                    i64s(vec![1]),
                    strs(vec!["tarn".into()]),
                    i64s(vec![6]),
                    bools(vec![true]),
                ],
            )?,
            "pg_settings" => {
                let settings = [
                    ("server_version", crate::functions::PG_SERVER_VERSION),
                    ("server_encoding", "UTF8"),
                    ("client_encoding", "UTF8"),
                    ("standard_conforming_strings", "on"),
                    ("TimeZone", "UTC"),
                    ("search_path", tarn_storage::DEFAULT_WORKSPACE),
                    ("max_identifier_length", "63"),
                ];
                table(
                    vec![("name", S), ("setting", S)],
                    vec![
                        strs(settings.iter().map(|s| s.0.to_owned()).collect()),
                        strs(settings.iter().map(|s| s.1.to_owned()).collect()),
                    ],
                )?
            }
            "pg_am" => table(
                vec![("oid", I), ("amname", S)],
                vec![i64s(vec![2]), strs(vec!["heap".into()])],
            )?,
            "pg_description" => empty(vec![
                ("objoid", I),
                ("classoid", I),
                ("objsubid", I),
                ("description", S),
            ])?,
            "pg_index" => empty(vec![
                ("indexrelid", I),
                ("indrelid", I),
                ("indisprimary", B),
                ("indisunique", B),
                ("indkey", S),
            ])?,
            "pg_constraint" => empty(vec![
                ("oid", I),
                ("conname", S),
                ("conrelid", I),
                ("contype", S),
                ("connamespace", I),
                ("conkey", S),
            ])?,
            "pg_attrdef" => empty(vec![("oid", I), ("adrelid", I), ("adnum", I), ("adbin", S)])?,
            "pg_inherits" => empty(vec![("inhrelid", I), ("inhparent", I), ("inhseqno", I)])?,
            "pg_collation" => empty(vec![("oid", I), ("collname", S)])?,
            "pg_proc" => empty(vec![("oid", I), ("proname", S), ("pronamespace", I)])?,
            "pg_sequence" => empty(vec![
                ("seqrelid", I),
                ("seqtypid", I),
                ("seqstart", I),
                ("seqincrement", I),
                ("seqmax", I),
                ("seqmin", I),
                ("seqcache", I),
                ("seqcycle", B),
            ])?,
            _ => return Ok(None),
        };
        Ok(Some(t))
    }
}

/// A catalog function with a constant answer, taking any arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// Registers the catalog functions Postgres tools call.
pub fn register(ctx: &SessionContext) {
    for (name, value) in [
        ("pg_table_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        ("has_table_privilege", ScalarValue::Boolean(Some(true))),
        ("pg_get_userbyid", ScalarValue::Utf8(Some("tarn".into()))),
        (
            "pg_encoding_to_char",
            ScalarValue::Utf8(Some("UTF8".into())),
        ),
        ("pg_get_expr", ScalarValue::Utf8(None)),
        ("obj_description", ScalarValue::Utf8(None)),
        ("col_description", ScalarValue::Utf8(None)),
        ("pg_get_indexdef", ScalarValue::Utf8(None)),
        ("pg_get_constraintdef", ScalarValue::Utf8(None)),
        ("to_regtype", ScalarValue::Int64(None)),
        ("to_regclass", ScalarValue::Int64(None)),
    ] {
        ctx.register_udf(ScalarUDF::from(Constant {
            name,
            value,
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
    use DataType::{Int64 as I, Utf8 as S};
    // format_type(oid, typmod): the type's name.
    ctx.register_udf(create_udf(
        "format_type",
        vec![I, I],
        S,
        Volatility::Immutable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = datafusion::arrow::array::AsArray::as_primitive::<
                datafusion::arrow::datatypes::Int64Type,
            >(&arrays[0]);
            let names: StringArray = oids
                .iter()
                .map(|o| {
                    o.map(|o| match o {
                        16 => "boolean",
                        20 => "bigint",
                        701 => "double precision",
                        1184 => "timestamp with time zone",
                        3802 => "jsonb",
                        _ => "text",
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(names)))
        }),
    ));
}
