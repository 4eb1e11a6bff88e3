//! A `pg_catalog` schema for Postgres tools (psql's `\dt` and `\d TABLE`, SQLAlchemy's
//! reflection): workspaces as namespaces, collections as tables (`relkind = 'r'`), top-level
//! fields as attributes typed as the Postgres endpoint sends them, built from the storage at
//! each lookup. Also the catalog functions those tools call (`format_type`, `pg_get_expr`,
//! `to_regclass`...) and [`rewrite`], the AST pass that turns Postgres-only spellings in
//! their catalog queries (`::regclass`, `::oid`, correlated subqueries...) into SQL
//! DataFusion plans.
//!
//! OIDs line up across the tables: a collection's `pg_class.oid` is its attributes'
//! `attrelid`, a workspace's `pg_namespace.oid` its collections' `relnamespace`, and the
//! type oids are Postgres's own. Catalog tables for things tarn does not have (defaults,
//! constraints, indexes, comments, inheritance, collations, sequences, policies...) exist
//! with Postgres's columns and no rows.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, StringArray, new_empty_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DataType as SqlType, Expr, FunctionArguments, GroupByExpr, Ident, ObjectName,
    Query, Select, SelectItem, SetExpr, SetOperator, Statement, TableFactor, TableWithJoins,
    UnaryOperator, Value, Visit, VisitMut, Visitor, VisitorMut, visit_expressions, visit_relations,
};
use datafusion::sql::sqlparser::parser::Parser;
use tarn_common::TarnError;
use tarn_storage::types::{NULLS, rockset_type_name};
use tarn_storage::{DEFAULT_WORKSPACE, Storage};

use crate::dialect::RocksetDialect;

/// The schema name.
pub const PG_CATALOG: &str = "pg_catalog";

const NAMESPACE_PG_CATALOG: i64 = 11;
const NAMESPACE_INFORMATION_SCHEMA: i64 = 13_000;
/// The one role: `tarn` (Postgres's bootstrap superuser has oid 10).
const ROLE_TARN: i64 = 10;
const AM_HEAP: i64 = 2;

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

/// The oid of a collection's `pg_class` row.
fn rel_oid(workspace: &str, name: &str) -> i64 {
    oid_of("rel", &format!("{workspace}.{name}"))
}

/// The oid of a workspace's `pg_namespace` row.
fn ns_oid(workspace: &str) -> i64 {
    match workspace {
        PG_CATALOG => NAMESPACE_PG_CATALOG,
        "information_schema" => NAMESPACE_INFORMATION_SCHEMA,
        w => oid_of("ns", w),
    }
}

/// One row of `pg_type`.
struct PgType {
    oid: i64,
    name: String,
    /// What `format_type` and `::regtype::text` print.
    format: String,
    len: i64,
    category: &'static str,
    elem: i64,
    array: i64,
}

/// Postgres's built-in types tools look up: (oid, name, format_type name, length, category,
/// array type oid). Each also gets its array type (`_name`, `name[]`).
const BASE_TYPES: [(i64, &str, &str, i64, &str, i64); 26] = [
    (16, "bool", "boolean", 1, "B", 1000),
    (17, "bytea", "bytea", -1, "U", 1001),
    (18, "char", "\"char\"", 1, "Z", 1002),
    (19, "name", "name", 64, "S", 1003),
    (20, "int8", "bigint", 8, "N", 1016),
    (21, "int2", "smallint", 2, "N", 1005),
    (23, "int4", "integer", 4, "N", 1007),
    (24, "regproc", "regproc", 4, "N", 1008),
    (25, "text", "text", -1, "S", 1009),
    (26, "oid", "oid", 4, "N", 1028),
    (114, "json", "json", -1, "U", 199),
    (700, "float4", "real", 4, "N", 1021),
    (701, "float8", "double precision", 8, "N", 1022),
    (1043, "varchar", "character varying", -1, "S", 1015),
    (1082, "date", "date", 4, "D", 1182),
    (1083, "time", "time without time zone", 8, "D", 1183),
    (
        1114,
        "timestamp",
        "timestamp without time zone",
        8,
        "D",
        1115,
    ),
    (
        1184,
        "timestamptz",
        "timestamp with time zone",
        8,
        "D",
        1185,
    ),
    (1186, "interval", "interval", 16, "T", 1187),
    (1700, "numeric", "numeric", -1, "N", 1231),
    (2205, "regclass", "regclass", 4, "N", 2210),
    (2206, "regtype", "regtype", 4, "N", 2211),
    (2950, "uuid", "uuid", 16, "U", 2951),
    (3802, "jsonb", "jsonb", -1, "U", 3807),
    (4089, "regnamespace", "regnamespace", 4, "N", 4090),
    (4096, "regrole", "regrole", 4, "N", 4097),
];

static TYPES: LazyLock<Vec<PgType>> = LazyLock::new(|| {
    let mut out = Vec::with_capacity(BASE_TYPES.len() * 2);
    for &(oid, name, format, len, category, array) in &BASE_TYPES {
        out.push(PgType {
            oid,
            name: name.to_owned(),
            format: format.to_owned(),
            len,
            category,
            elem: 0,
            array,
        });
        out.push(PgType {
            oid: array,
            name: format!("_{name}"),
            format: format!("{format}[]"),
            len: -1,
            category: "A",
            elem: oid,
            array: 0,
        });
    }
    out
});

fn type_by_oid(oid: i64) -> Option<&'static PgType> {
    TYPES.iter().find(|t| t.oid == oid)
}

/// A type by any name Postgres accepts for it here (`int8`, `bigint`, `pg_catalog.int8`,
/// `bigint[]`, `_int8`, `integer`, `int`...).
fn type_by_name(name: &str) -> Option<&'static PgType> {
    let n = name
        .trim()
        .trim_start_matches("pg_catalog.")
        .to_ascii_lowercase();
    let n = match n.as_str() {
        "int" => "int4",
        "boolean" => "bool",
        "float" => "float8",
        "character varying" => "varchar",
        "timestamp with time zone" => "timestamptz",
        other => other,
    };
    TYPES.iter().find(|t| t.name == n || t.format == n)
}

/// What `pg_settings` and `current_setting(name)` answer.
const SETTINGS: [(&str, &str); 10] = [
    ("server_version", crate::functions::PG_SERVER_VERSION),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("TimeZone", "UTC"),
    ("search_path", DEFAULT_WORKSPACE),
    ("max_identifier_length", "63"),
    ("default_table_access_method", "heap"),
    ("default_tablespace", ""),
];

/// The tables of `pg_catalog` tarn has, with Postgres's oids for them (what
/// `'pg_catalog.pg_class'::regclass` is).
const TABLES: [(&str, i64); 26] = [
    ("pg_am", 2601),
    ("pg_attrdef", 2604),
    ("pg_attribute", 1249),
    ("pg_class", 1259),
    ("pg_collation", 3456),
    ("pg_constraint", 2606),
    ("pg_database", 1262),
    ("pg_description", 2609),
    ("pg_foreign_table", 3118),
    ("pg_index", 2610),
    ("pg_inherits", 2611),
    ("pg_namespace", 2615),
    ("pg_opclass", 2616),
    ("pg_partitioned_table", 3350),
    ("pg_policy", 3256),
    ("pg_proc", 1255),
    ("pg_publication", 6104),
    ("pg_publication_namespace", 6237),
    ("pg_publication_rel", 6106),
    ("pg_roles", 12_001),
    ("pg_sequence", 2224),
    ("pg_settings", 12_002),
    ("pg_statistic_ext", 3381),
    ("pg_tablespace", 1213),
    ("pg_trigger", 2620),
    ("pg_type", 1247),
];

/// The catalog tables that never have a row in tarn: it has no column defaults,
/// constraints, indexes, comments, inheritance, collations, sequences, operator classes,
/// policies, extended statistics, publications, triggers, foreign or partitioned tables,
/// and lists no functions. [`rewrite`] folds subqueries over them to their empty answer.
const EMPTY_TABLES: [&str; 17] = [
    "pg_attrdef",
    "pg_collation",
    "pg_constraint",
    "pg_description",
    "pg_foreign_table",
    "pg_index",
    "pg_inherits",
    "pg_opclass",
    "pg_partitioned_table",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_sequence",
    "pg_statistic_ext",
    "pg_trigger",
];

fn int(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}
fn text(v: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(v.into()))
}
fn boolean(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
fn null_int() -> ScalarValue {
    ScalarValue::Int64(None)
}
fn null_text() -> ScalarValue {
    ScalarValue::Utf8(None)
}
fn null_list(item: DataType) -> ScalarValue {
    ScalarValue::try_from(&DataType::List(Arc::new(Field::new_list_field(item, true))))
        .unwrap_or(ScalarValue::Null)
}
/// A Postgres `int2vector`, `oidvector` or `int2[]`/`oid[]` column.
fn ints() -> ScalarValue {
    null_list(DataType::Int64)
}
/// A Postgres `text[]`/`aclitem[]` column.
fn texts() -> ScalarValue {
    null_list(DataType::Utf8)
}

/// A row: values by column name; columns not named take their default.
type Row = Vec<(&'static str, ScalarValue)>;

/// A table of `columns` (name and default value, whose type is the column's) and `rows`.
fn build(columns: &[(&'static str, ScalarValue)], rows: &[Row]) -> Result<Arc<dyn TableProvider>> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, v)| Field::new(*n, v.data_type(), true))
            .collect::<Vec<_>>(),
    ));
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (name, default) in columns {
        if rows.is_empty() {
            arrays.push(new_empty_array(&default.data_type()));
            continue;
        }
        let values = rows.iter().map(|r| {
            r.iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| default.clone(), |(_, v)| v.clone())
        });
        arrays.push(ScalarValue::iter_to_array(values)?);
    }
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// The `pg_catalog` schema.
#[derive(Debug)]
pub struct PgCatalogSchema {
    pub storage: Arc<Storage>,
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|(n, _)| n.to_string()).collect()
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|(n, _)| *n == name)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let t = match name {
            "pg_namespace" => self.pg_namespace()?,
            "pg_class" => self.pg_class()?,
            "pg_attribute" => self.pg_attribute()?,
            "pg_type" => pg_type()?,
            "pg_database" => build(
                &[
                    ("oid", int(1)),
                    ("datname", text("tarn")),
                    ("datdba", int(ROLE_TARN)),
                    ("encoding", int(6)),
                    ("datlocprovider", text("c")),
                    ("datistemplate", boolean(false)),
                    ("datallowconn", boolean(true)),
                    ("datconnlimit", int(-1)),
                    ("datcollate", text("C")),
                    ("datctype", text("C")),
                    ("daticulocale", null_text()),
                    ("dattablespace", int(1663)),
                    ("datacl", texts()),
                ],
                &[vec![]],
            )?,
            "pg_settings" => {
                let rows: Vec<Row> = SETTINGS
                    .iter()
                    .map(|(n, v)| vec![("name", text(*n)), ("setting", text(*v))])
                    .collect();
                build(&[("name", null_text()), ("setting", null_text())], &rows)?
            }
            "pg_roles" => build(
                &[
                    ("oid", int(ROLE_TARN)),
                    ("rolname", text("tarn")),
                    ("rolsuper", boolean(true)),
                    ("rolinherit", boolean(true)),
                    ("rolcreaterole", boolean(false)),
                    ("rolcreatedb", boolean(false)),
                    ("rolcanlogin", boolean(true)),
                    ("rolreplication", boolean(false)),
                    ("rolconnlimit", int(-1)),
                    ("rolpassword", text("********")),
                    ("rolvaliduntil", null_text()),
                    ("rolbypassrls", boolean(false)),
                    ("rolconfig", texts()),
                ],
                &[vec![]],
            )?,
            "pg_tablespace" => build(
                &[
                    ("oid", null_int()),
                    ("spcname", null_text()),
                    ("spcowner", int(ROLE_TARN)),
                    ("spcacl", texts()),
                    ("spcoptions", texts()),
                ],
                &[
                    vec![("oid", int(1663)), ("spcname", text("pg_default"))],
                    vec![("oid", int(1664)), ("spcname", text("pg_global"))],
                ],
            )?,
            "pg_am" => build(
                &[
                    ("oid", null_int()),
                    ("amname", null_text()),
                    ("amhandler", null_text()),
                    ("amtype", null_text()),
                ],
                &[
                    vec![
                        ("oid", int(AM_HEAP)),
                        ("amname", text("heap")),
                        ("amhandler", text("heap_tableam_handler")),
                        ("amtype", text("t")),
                    ],
                    vec![
                        ("oid", int(403)),
                        ("amname", text("btree")),
                        ("amhandler", text("bthandler")),
                        ("amtype", text("i")),
                    ],
                ],
            )?,
            other => match empty_table_columns(other) {
                Some(columns) => build(&columns, &[])?,
                None => return Ok(None),
            },
        };
        Ok(Some(t))
    }
}

impl PgCatalogSchema {
    fn pg_namespace(&self) -> Result<Arc<dyn TableProvider>> {
        let mut rows: Vec<Row> = vec![
            vec![
                ("oid", int(NAMESPACE_PG_CATALOG)),
                ("nspname", text(PG_CATALOG)),
            ],
            vec![
                ("oid", int(NAMESPACE_INFORMATION_SCHEMA)),
                ("nspname", text("information_schema")),
            ],
        ];
        for w in self.storage.list_workspaces() {
            rows.push(vec![
                ("oid", int(ns_oid(&w.name))),
                ("nspname", text(w.name)),
            ]);
        }
        build(
            &[
                ("oid", null_int()),
                ("nspname", null_text()),
                ("nspowner", int(ROLE_TARN)),
                ("nspacl", texts()),
            ],
            &rows,
        )
    }

    fn pg_class(&self) -> Result<Arc<dyn TableProvider>> {
        let rows: Vec<Row> = self
            .storage
            .list_collections(None)
            .into_iter()
            .map(|(info, c)| {
                let natts = c
                    .schema()
                    .fields()
                    .iter()
                    .filter(|f| f.name() != NULLS)
                    .count();
                vec![
                    ("oid", int(rel_oid(&info.workspace, &info.name))),
                    ("relnamespace", int(ns_oid(&info.workspace))),
                    (
                        "reltuples",
                        ScalarValue::Float64(Some(c.stats().doc_count as f64)),
                    ),
                    ("relnatts", int(natts as i64)),
                    ("relname", text(info.name)),
                ]
            })
            .collect();
        build(
            &[
                ("oid", null_int()),
                ("relname", null_text()),
                ("relnamespace", null_int()),
                ("reltype", int(0)),
                ("reloftype", int(0)),
                ("relowner", int(ROLE_TARN)),
                ("relam", int(AM_HEAP)),
                ("relfilenode", int(0)),
                ("reltablespace", int(0)),
                ("relpages", int(0)),
                ("reltuples", ScalarValue::Float64(None)),
                ("relallvisible", int(0)),
                ("reltoastrelid", int(0)),
                ("relhasindex", boolean(false)),
                ("relisshared", boolean(false)),
                ("relpersistence", text("p")),
                ("relkind", text("r")),
                ("relnatts", int(0)),
                ("relchecks", int(0)),
                ("relhasrules", boolean(false)),
                ("relhastriggers", boolean(false)),
                ("relhassubclass", boolean(false)),
                ("relrowsecurity", boolean(false)),
                ("relforcerowsecurity", boolean(false)),
                ("relispopulated", boolean(true)),
                ("relreplident", text("d")),
                ("relispartition", boolean(false)),
                ("relrewrite", int(0)),
                ("relfrozenxid", int(0)),
                ("relminmxid", int(0)),
                ("relacl", texts()),
                ("reloptions", texts()),
                ("relpartbound", null_text()),
            ],
            &rows,
        )
    }

    /// One row per top-level field of each collection, numbered from 1 in schema order.
    /// `_id` and `_event_time` are `NOT NULL`: every document has them.
    fn pg_attribute(&self) -> Result<Arc<dyn TableProvider>> {
        let mut rows: Vec<Row> = Vec::new();
        for (info, c) in self.storage.list_collections(None) {
            let oid = rel_oid(&info.workspace, &info.name);
            let schema = c.schema();
            let fields = schema.fields().iter().filter(|f| f.name() != NULLS);
            for (k, f) in fields.enumerate() {
                let (typ, _) = pg_type_of(f.data_type());
                let t = type_by_oid(typ);
                let len = t.map_or(-1, |t| t.len);
                rows.push(vec![
                    ("attrelid", int(oid)),
                    ("attname", text(f.name().clone())),
                    ("atttypid", int(typ)),
                    ("attlen", int(len)),
                    ("attnum", int(k as i64 + 1)),
                    ("attbyval", boolean(len > 0)),
                    ("attalign", text(if len > 0 { "d" } else { "i" })),
                    ("attstorage", text(if len > 0 { "p" } else { "x" })),
                    (
                        "attnotnull",
                        boolean(f.name() == "_id" || f.name() == "_event_time"),
                    ),
                ]);
            }
        }
        build(
            &[
                ("attrelid", null_int()),
                ("attname", null_text()),
                ("atttypid", null_int()),
                ("attstattarget", int(-1)),
                ("attlen", int(-1)),
                ("attnum", null_int()),
                ("attndims", int(0)),
                ("attcacheoff", int(-1)),
                ("atttypmod", int(-1)),
                ("attbyval", boolean(false)),
                ("attalign", text("i")),
                ("attstorage", text("x")),
                ("attcompression", text("")),
                ("attnotnull", boolean(false)),
                ("atthasdef", boolean(false)),
                ("atthasmissing", boolean(false)),
                ("attidentity", text("")),
                ("attgenerated", text("")),
                ("attisdropped", boolean(false)),
                ("attislocal", boolean(true)),
                ("attinhcount", int(0)),
                ("attcollation", int(0)),
                ("attacl", texts()),
                ("attoptions", texts()),
                ("attfdwoptions", texts()),
                ("attmissingval", null_text()),
            ],
            &rows,
        )
    }
}

fn pg_type() -> Result<Arc<dyn TableProvider>> {
    let rows: Vec<Row> = TYPES
        .iter()
        .map(|t| {
            vec![
                ("oid", int(t.oid)),
                ("typname", text(t.name.clone())),
                ("typlen", int(t.len)),
                ("typbyval", boolean(t.len > 0 && t.len <= 8)),
                ("typcategory", text(t.category)),
                ("typelem", int(t.elem)),
                ("typarray", int(t.array)),
                ("typalign", text(if t.len > 0 { "d" } else { "i" })),
                ("typstorage", text(if t.len > 0 { "p" } else { "x" })),
            ]
        })
        .collect();
    build(
        &[
            ("oid", null_int()),
            ("typname", null_text()),
            ("typnamespace", int(NAMESPACE_PG_CATALOG)),
            ("typowner", int(ROLE_TARN)),
            ("typlen", int(-1)),
            ("typbyval", boolean(false)),
            ("typtype", text("b")),
            ("typcategory", null_text()),
            ("typispreferred", boolean(false)),
            ("typisdefined", boolean(true)),
            ("typdelim", text(",")),
            ("typrelid", int(0)),
            ("typsubscript", int(0)),
            ("typelem", int(0)),
            ("typarray", int(0)),
            ("typalign", text("i")),
            ("typstorage", text("x")),
            ("typnotnull", boolean(false)),
            ("typbasetype", int(0)),
            ("typtypmod", int(-1)),
            ("typndims", int(0)),
            ("typcollation", int(0)),
            ("typdefault", null_text()),
            ("typacl", texts()),
        ],
        &rows,
    )
}

/// The columns of the catalog tables that have no rows in tarn, as `name:type` with types
/// `i` (oids and integers), `s` (text), `b` (bool), `I` (int2vector, oidvector, oid[]) and
/// `S` (text[]).
fn empty_table_columns(name: &str) -> Option<Vec<(&'static str, ScalarValue)>> {
    let spec = match name {
        "pg_attrdef" => "oid:i adrelid:i adnum:i adbin:s",
        "pg_constraint" => {
            "oid:i conname:s connamespace:i contype:s condeferrable:b condeferred:b \
             convalidated:b conrelid:i contypid:i conindid:i conparentid:i confrelid:i \
             confupdtype:s confdeltype:s confmatchtype:s conislocal:b coninhcount:i \
             connoinherit:b conkey:I confkey:I conpfeqop:I conppeqop:I conffeqop:I \
             confdelsetcols:I conexclop:I conbin:s"
        }
        "pg_index" => {
            "indexrelid:i indrelid:i indnatts:i indnkeyatts:i indisunique:b \
             indnullsnotdistinct:b indisprimary:b indisexclusion:b indimmediate:b \
             indisclustered:b indisvalid:b indcheckxmin:b indisready:b indislive:b \
             indisreplident:b indkey:I indcollation:I indclass:I indoption:I indexprs:s indpred:s"
        }
        "pg_description" => "objoid:i classoid:i objsubid:i description:s",
        "pg_inherits" => "inhrelid:i inhparent:i inhseqno:i inhdetachpending:b",
        "pg_collation" => {
            "oid:i collname:s collnamespace:i collowner:i collprovider:s \
             collisdeterministic:b collencoding:i collcollate:s collctype:s colliculocale:s"
        }
        "pg_opclass" => {
            "oid:i opcmethod:i opcname:s opcnamespace:i opcowner:i opcfamily:i opcintype:i \
             opcdefault:b opckeytype:i"
        }
        "pg_proc" => {
            "oid:i proname:s pronamespace:i proowner:i prokind:s prorettype:i proretset:b \
             proargtypes:I"
        }
        "pg_sequence" => {
            "seqrelid:i seqtypid:i seqstart:i seqincrement:i seqmax:i seqmin:i seqcache:i \
             seqcycle:b"
        }
        "pg_policy" => {
            "oid:i polname:s polrelid:i polcmd:s polpermissive:b polroles:I polqual:s \
             polwithcheck:s"
        }
        "pg_statistic_ext" => {
            "oid:i stxrelid:i stxname:s stxnamespace:i stxowner:i stxstattarget:i stxkeys:I \
             stxkind:S stxexprs:s"
        }
        "pg_publication" => {
            "oid:i pubname:s pubowner:i puballtables:b pubinsert:b pubupdate:b pubdelete:b \
             pubtruncate:b pubviaroot:b"
        }
        "pg_publication_rel" => "oid:i prpubid:i prrelid:i prqual:s prattrs:I",
        "pg_publication_namespace" => "oid:i pnpubid:i pnnspid:i",
        "pg_trigger" => {
            "oid:i tgrelid:i tgparentid:i tgname:s tgfoid:i tgtype:i tgenabled:s \
             tgisinternal:b tgconstrrelid:i tgconstrindid:i tgconstraint:i tgdeferrable:b \
             tginitdeferred:b tgnargs:i tgattr:I tgargs:s tgqual:s"
        }
        "pg_foreign_table" => "ftrelid:i ftserver:i ftoptions:S",
        "pg_partitioned_table" => {
            "partrelid:i partstrat:s partnatts:i partdefid:i partattrs:I partclass:I \
             partcollation:I partexprs:s"
        }
        _ => return None,
    };
    let columns = spec
        .split_whitespace()
        .filter_map(|c| c.split_once(':'))
        .map(|(name, t)| {
            let value = match t {
                "i" => null_int(),
                "b" => ScalarValue::Boolean(None),
                "I" => ints(),
                "S" => texts(),
                _ => null_text(),
            };
            (name, value)
        })
        .collect();
    Some(columns)
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

/// Registers the catalog functions Postgres tools call that need no storage.
pub fn register(ctx: &SessionContext) {
    for (name, value) in [
        ("pg_table_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        ("pg_collation_is_visible", ScalarValue::Boolean(Some(true))),
        ("has_table_privilege", ScalarValue::Boolean(Some(true))),
        (
            "pg_relation_is_publishable",
            ScalarValue::Boolean(Some(false)),
        ),
        ("pg_get_userbyid", ScalarValue::Utf8(Some("tarn".into()))),
        (
            "pg_encoding_to_char",
            ScalarValue::Utf8(Some("UTF8".into())),
        ),
        // No defaults, comments, indexes, constraints, sequences or statistics objects
        // exist, so there is never an expression or definition to show.
        ("pg_get_expr", ScalarValue::Utf8(None)),
        ("obj_description", ScalarValue::Utf8(None)),
        ("col_description", ScalarValue::Utf8(None)),
        ("shobj_description", ScalarValue::Utf8(None)),
        ("pg_get_indexdef", ScalarValue::Utf8(None)),
        ("pg_get_constraintdef", ScalarValue::Utf8(None)),
        ("pg_get_serial_sequence", ScalarValue::Utf8(None)),
        ("pg_get_statisticsobjdef_columns", ScalarValue::Utf8(None)),
        ("pg_get_partkeydef", ScalarValue::Utf8(None)),
        ("pg_get_triggerdef", ScalarValue::Utf8(None)),
        ("pg_get_viewdef", ScalarValue::Utf8(None)),
    ] {
        ctx.register_udf(ScalarUDF::from(Constant {
            name,
            value,
            signature: Signature::variadic_any(Volatility::Stable),
        }));
    }
    use DataType::{Int64 as I, Utf8 as S};
    // current_setting(name): the settings `pg_settings` lists (NULL for others).
    ctx.register_udf(create_udf(
        "current_setting",
        vec![S],
        S,
        Volatility::Stable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(names) = arrays.first().and_then(|a| a.as_string_opt::<i32>()) else {
                return Err(DataFusionError::Plan("current_setting(name)".into()));
            };
            let values: StringArray = names
                .iter()
                .map(|n| {
                    n.and_then(|n| {
                        SETTINGS
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(n))
                            .map(|(_, v)| *v)
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(values)))
        }),
    ));
    // __pg_like_escape(pattern, escape): a LIKE pattern with another escape character than
    // `\\` (`LIKE 'pg/_%' ESCAPE '/'`) rewritten for `\\`, the one DataFusion takes.
    ctx.register_udf(create_udf(
        "__pg_like_escape",
        vec![S, S],
        S,
        Volatility::Immutable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (Some(patterns), Some(escapes)) = (
                arrays.first().and_then(|a| a.as_string_opt::<i32>()),
                arrays.get(1).and_then(|a| a.as_string_opt::<i32>()),
            ) else {
                return Err(DataFusionError::Plan(
                    "__pg_like_escape(pattern, escape)".into(),
                ));
            };
            let out: StringArray = patterns
                .iter()
                .zip(escapes.iter())
                .map(|(p, e)| Some(like_with_backslash(p?, e?.chars().next())))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
    ctx.register_udf(create_udf(
        "pg_size_pretty",
        vec![I],
        S,
        Volatility::Immutable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(sizes) = arrays
                .first()
                .and_then(|a| a.as_primitive_opt::<Int64Type>())
            else {
                return Err(DataFusionError::Plan("pg_size_pretty(bigint)".into()));
            };
            let out: StringArray = sizes.iter().map(|b| b.map(size_pretty)).collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ));
    // format_type(oid, typmod): the type's name as Postgres prints it (typmods are -1).
    ctx.register_udf(create_udf(
        "format_type",
        vec![I, I],
        S,
        Volatility::Immutable,
        Arc::new(|args| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(oids) = arrays
                .first()
                .and_then(|a| a.as_primitive_opt::<Int64Type>())
            else {
                return Err(DataFusionError::Plan("format_type(oid, typmod)".into()));
            };
            let names: StringArray = oids
                .iter()
                .map(|o| o.map(|o| type_by_oid(o).map_or("???", |t| t.format.as_str())))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(names)))
        }),
    ));
}

/// A LIKE pattern whose escape character is `escape` (none: no escaping) as the same
/// pattern escaped with `\`.
fn like_with_backslash(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            if let Some(next) = chars.next() {
                out.push('\\');
                out.push(next);
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// Which `reg*` type a cast or lookup is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RegKind {
    Class,
    Type,
    Namespace,
    Role,
}

impl RegKind {
    fn of(type_name: &str) -> Option<RegKind> {
        match type_name {
            "regclass" => Some(RegKind::Class),
            "regtype" => Some(RegKind::Type),
            "regnamespace" => Some(RegKind::Namespace),
            "regrole" => Some(RegKind::Role),
            _ => None,
        }
    }
    fn sql_name(self) -> &'static str {
        match self {
            RegKind::Class => "regclass",
            RegKind::Type => "regtype",
            RegKind::Namespace => "regnamespace",
            RegKind::Role => "regrole",
        }
    }
    /// The function `x::regclass` becomes (an oid, from an oid or a name).
    fn oid_fn(self) -> &'static str {
        match self {
            RegKind::Class => "__pg_regclass",
            RegKind::Type => "__pg_regtype",
            RegKind::Namespace => "__pg_regnamespace",
            RegKind::Role => "__pg_regrole",
        }
    }
    /// The function `x::regclass::text` becomes (the name Postgres prints).
    fn name_fn(self) -> &'static str {
        match self {
            RegKind::Class => "__pg_regclass_name",
            RegKind::Type => "__pg_regtype_name",
            RegKind::Namespace => "__pg_regnamespace_name",
            RegKind::Role => "__pg_regrole_name",
        }
    }
    fn from_oid_fn(name: &str) -> Option<RegKind> {
        [
            RegKind::Class,
            RegKind::Type,
            RegKind::Namespace,
            RegKind::Role,
        ]
        .into_iter()
        .find(|k| k.oid_fn() == name)
    }
}

/// Postgres's `quote_ident`: a name that is not all lower-case letters, digits and `_`
/// is double-quoted.
fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Splits `a."b.c"` into `["a", "b.c"]`.
fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut chars = name.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(p) = parts.last_mut() {
                    p.push('"');
                }
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
            }
        }
    }
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

/// Resolves `reg*` values against the storage: names to oids and back.
#[derive(Debug)]
struct RegFn {
    name: &'static str,
    kind: RegKind,
    /// True: returns the name; false: the oid.
    to_name: bool,
    /// True: an unknown name is an error (a cast); false: NULL (`to_regclass`).
    strict: bool,
    storage: Arc<Storage>,
    signature: Signature,
}

impl PartialEq for RegFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl Eq for RegFn {}
impl Hash for RegFn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl RegFn {
    fn namespaces(&self) -> Vec<(i64, String)> {
        let mut out = vec![
            (NAMESPACE_PG_CATALOG, PG_CATALOG.to_owned()),
            (
                NAMESPACE_INFORMATION_SCHEMA,
                "information_schema".to_owned(),
            ),
        ];
        for w in self.storage.list_workspaces() {
            out.push((ns_oid(&w.name), w.name));
        }
        out
    }

    /// The oid a name stands for (names are matched exactly, then in lower case).
    fn oid_of_name(&self, name: &str) -> Option<i64> {
        if let Ok(oid) = name.trim().parse::<i64>() {
            return Some(oid);
        }
        match self.kind {
            RegKind::Type => type_by_name(name).map(|t| t.oid),
            RegKind::Role => (name.trim().trim_matches('"') == "tarn").then_some(ROLE_TARN),
            RegKind::Namespace => {
                let want = split_qualified(name).pop().unwrap_or_default();
                let spaces = self.namespaces();
                let find = |n: &str| spaces.iter().find(|(_, s)| s == n).map(|(o, _)| *o);
                find(&want).or_else(|| find(&want.to_lowercase()))
            }
            RegKind::Class => {
                let parts = split_qualified(name);
                let lookup = |parts: &[String]| -> Option<i64> {
                    let catalog = |t: &str| TABLES.iter().find(|(n, _)| *n == t).map(|(_, o)| *o);
                    match parts {
                        [t] => catalog(t).or_else(|| {
                            self.storage
                                .get_collection(DEFAULT_WORKSPACE, t)
                                .ok()
                                .map(|(i, _)| rel_oid(&i.workspace, &i.name))
                        }),
                        [s, t] if s == PG_CATALOG => catalog(t),
                        [s, t] => self
                            .storage
                            .get_collection(s, t)
                            .ok()
                            .map(|(i, _)| rel_oid(&i.workspace, &i.name)),
                        _ => None,
                    }
                };
                lookup(&parts).or_else(|| {
                    let lower: Vec<String> = parts.iter().map(|p| p.to_lowercase()).collect();
                    lookup(&lower)
                })
            }
        }
    }

    /// The name Postgres prints for an oid (the oid itself when nothing has it).
    fn name_of_oid(&self, oid: i64, classes: &HashMap<i64, String>) -> String {
        let found = match self.kind {
            RegKind::Type => type_by_oid(oid).map(|t| t.format.clone()),
            RegKind::Role => (oid == ROLE_TARN).then(|| "tarn".to_owned()),
            RegKind::Namespace => self
                .namespaces()
                .into_iter()
                .find(|(o, _)| *o == oid)
                .map(|(_, n)| quote_ident(&n)),
            RegKind::Class => classes.get(&oid).cloned(),
        };
        found.unwrap_or_else(|| oid.to_string())
    }

    /// Relation oids to names, qualified when not on the search path (`commons`,
    /// `pg_catalog`).
    fn classes(&self) -> HashMap<i64, String> {
        let mut out: HashMap<i64, String> =
            TABLES.iter().map(|(n, o)| (*o, (*n).to_owned())).collect();
        for (info, _) in self.storage.list_collections(None) {
            let name = if info.workspace == DEFAULT_WORKSPACE {
                quote_ident(&info.name)
            } else {
                format!(
                    "{}.{}",
                    quote_ident(&info.workspace),
                    quote_ident(&info.name)
                )
            };
            out.insert(rel_oid(&info.workspace, &info.name), name);
        }
        out
    }
}

impl ScalarUDFImpl for RegFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(if self.to_name {
            DataType::Utf8
        } else {
            DataType::Int64
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(input) = arrays.first() else {
            return Err(DataFusionError::Plan(format!(
                "{} takes one argument",
                self.name
            )));
        };
        let n = input.len();
        // Every input is read as an oid (numbers) or as a name (anything else).
        let oids: Vec<Option<i64>> = match input.data_type() {
            DataType::Null => vec![None; n],
            dt if dt.is_integer() => {
                let ints = datafusion::arrow::compute::cast(input, &DataType::Int64)?;
                ints.as_primitive::<Int64Type>().iter().collect()
            }
            _ => {
                let strings = datafusion::arrow::compute::cast(input, &DataType::Utf8)?;
                let mut out = Vec::with_capacity(n);
                for s in strings.as_string::<i32>().iter() {
                    out.push(match s {
                        None => None,
                        Some(s) => match self.oid_of_name(s) {
                            Some(o) => Some(o),
                            None if self.strict => {
                                return Err(DataFusionError::Execution(format!(
                                    "{} \"{s}\" does not exist",
                                    match self.kind {
                                        RegKind::Class => "relation",
                                        RegKind::Type => "type",
                                        RegKind::Namespace => "schema",
                                        RegKind::Role => "role",
                                    }
                                )));
                            }
                            None => None,
                        },
                    });
                }
                out
            }
        };
        let out: ArrayRef = if self.to_name {
            let classes = if self.kind == RegKind::Class {
                self.classes()
            } else {
                HashMap::new()
            };
            Arc::new(
                oids.iter()
                    .map(|o| o.map(|o| self.name_of_oid(o, &classes)))
                    .collect::<StringArray>(),
            )
        } else {
            Arc::new(Int64Array::from(oids))
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Registers the catalog functions that look names up in the storage: `to_regclass`,
/// `to_regtype`, `to_regnamespace`, `to_regrole`, and the `reg*` casts [`rewrite`] produces.
pub fn register_with_storage(ctx: &SessionContext, storage: &Arc<Storage>) {
    for kind in [
        RegKind::Class,
        RegKind::Type,
        RegKind::Namespace,
        RegKind::Role,
    ] {
        let to_reg: &'static str = match kind {
            RegKind::Class => "to_regclass",
            RegKind::Type => "to_regtype",
            RegKind::Namespace => "to_regnamespace",
            RegKind::Role => "to_regrole",
        };
        for (name, to_name, strict) in [
            (kind.oid_fn(), false, true),
            (kind.name_fn(), true, true),
            (to_reg, false, false),
        ] {
            ctx.register_udf(ScalarUDF::from(RegFn {
                name,
                kind,
                to_name,
                strict,
                storage: storage.clone(),
                signature: Signature::any(1, Volatility::Stable),
            }));
        }
    }
    // pg_table_size(oid) and its kin: a collection's stored bytes (segments and runs).
    for name in [
        "pg_table_size",
        "pg_relation_size",
        "pg_total_relation_size",
    ] {
        let storage = storage.clone();
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Int64,
            Volatility::Stable,
            Arc::new(move |args| {
                let arrays = ColumnarValue::values_to_arrays(args)?;
                let Some(oids) = arrays
                    .first()
                    .and_then(|a| a.as_primitive_opt::<Int64Type>())
                else {
                    return Err(DataFusionError::Plan("pg_table_size(oid)".into()));
                };
                let sizes: HashMap<i64, i64> = storage
                    .list_collections(None)
                    .into_iter()
                    .map(|(i, c)| (rel_oid(&i.workspace, &i.name), c.stats().total_size as i64))
                    .collect();
                let out: Int64Array = oids
                    .iter()
                    .map(|o| o.and_then(|o| sizes.get(&o).copied()))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }),
        ));
    }
}

/// Postgres's `pg_size_pretty`: bytes below 10 kB, then kB, MB, GB, TB, rounded half up.
fn size_pretty(bytes: i64) -> String {
    const LIMIT: i64 = 10 * 1024;
    const LIMIT2: i64 = LIMIT * 2 - 1;
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    if bytes.unsigned_abs() < LIMIT as u64 {
        return format!("{bytes} bytes");
    }
    // One extra bit is kept for rounding.
    let mut size = bytes >> 9;
    for unit in ["kB", "MB", "GB"] {
        if size.unsigned_abs() < LIMIT2 as u64 {
            return format!("{} {unit}", half_rounded(size));
        }
        size >>= 10;
    }
    format!("{} TB", half_rounded(size))
}

// ---------------------------------------------------------------------------------------
// The AST pass.

fn parse_expr(text: &str) -> Result<Expr, TarnError> {
    Parser::new(&RocksetDialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| TarnError::internal(format!("rewriting produced invalid SQL `{text}`: {e}")))
}

/// Aggregate functions: a SELECT with one of them and no GROUP BY returns a row even when
/// it reads none, so it is never folded.
const AGGREGATES: &str = "count sum min max avg mean median array_agg string_agg bool_and \
    bool_or every bit_and bit_or bit_xor first_value last_value nth_value json_agg jsonb_agg \
    json_object_agg jsonb_object_agg stddev stddev_pop stddev_samp variance var_pop var_samp \
    covar_pop covar_samp corr approx_distinct approx_median approx_percentile_cont grouping \
    xmlagg";

fn is_aggregate(name: &str) -> bool {
    AGGREGATES.split_whitespace().any(|a| a == name)
}

fn function_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Whether a select computes aggregates without GROUP BY (one row from no rows).
fn aggregates_without_groups(s: &Select) -> bool {
    let grouped = match &s.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(e, _) => !e.is_empty(),
    };
    if grouped {
        return false;
    }
    if s.having.is_some() {
        return true;
    }
    // Aggregates inside a subquery of the list are the subquery's own.
    struct Finder(usize);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.0 += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.0 = self.0.saturating_sub(1);
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Function(f)
                    if self.0 == 0 && f.over.is_none() && is_aggregate(&function_name(&f.name)) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    s.projection.visit(&mut Finder(0)).is_break()
}

/// The pass over one statement; `resolve` says whether a collection shadows a bare
/// `pg_*` name.
struct PgRewriter<'a> {
    resolve: crate::paths::Resolver<'a>,
    /// Query nesting: 1 is the statement's own query.
    depth: usize,
    /// Whether the statement reads a catalog table.
    catalog: bool,
    /// The statement's CTE names.
    ctes: Vec<String>,
    error: Option<TarnError>,
}

impl PgRewriter<'_> {
    /// The `pg_catalog` table a FROM name reads, if it is one.
    fn catalog_table(&self, name: &ObjectName) -> Option<String> {
        let parts: Vec<&str> = name
            .0
            .iter()
            .map(|p| p.as_ident().map_or("", |i| i.value.as_str()))
            .collect();
        match parts.as_slice() {
            [PG_CATALOG, t] | [_, PG_CATALOG, t] => Some((*t).to_owned()),
            // As in Postgres, pg_catalog is on the search path, after tarn's collections
            // (and the statement's CTEs).
            [t] if t.starts_with("pg_")
                && !self.ctes.iter().any(|c| c == t)
                && (self.resolve)(None, t).is_none() =>
            {
                Some((*t).to_owned())
            }
            _ => None,
        }
    }

    fn relation_empty(&self, factor: &TableFactor) -> bool {
        match factor {
            TableFactor::Table {
                name, args: None, ..
            } => self
                .catalog_table(name)
                .is_some_and(|t| EMPTY_TABLES.contains(&t.as_str())),
            TableFactor::Derived { subquery, .. } => self.query_empty(subquery),
            _ => false,
        }
    }

    fn reads_nothing(&self, from: &[TableWithJoins]) -> bool {
        use datafusion::sql::sqlparser::ast::JoinOperator as J;
        from.iter().any(|t| {
            let mut empty = self.relation_empty(&t.relation);
            for j in &t.joins {
                let right = self.relation_empty(&j.relation);
                empty = match &j.join_operator {
                    J::Join(_)
                    | J::Inner(_)
                    | J::CrossJoin(_)
                    | J::Semi(_)
                    | J::LeftSemi(_)
                    | J::RightSemi(_) => empty || right,
                    J::Left(_) | J::LeftOuter(_) | J::Anti(_) | J::LeftAnti(_) => empty,
                    J::Right(_) | J::RightOuter(_) | J::RightAnti(_) => right,
                    J::FullOuter(_) => empty && right,
                    _ => false,
                };
            }
            empty
        })
    }

    /// A select that surely returns no row: it reads an always-empty catalog table (or its
    /// condition is `FALSE`), and does not aggregate without groups.
    fn select_empty(&self, s: &Select) -> bool {
        let no_rows = self.reads_nothing(&s.from)
            || matches!(&s.selection, Some(Expr::Value(v)) if v.value == Value::Boolean(false));
        no_rows && !aggregates_without_groups(s)
    }

    fn query_empty(&self, q: &Query) -> bool {
        self.set_empty(&q.body)
    }

    fn set_empty(&self, body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(s) => self.select_empty(s),
            SetExpr::Query(q) => self.query_empty(q),
            SetExpr::SetOperation {
                op, left, right, ..
            } => match op {
                SetOperator::Union => self.set_empty(left) && self.set_empty(right),
                SetOperator::Intersect => self.set_empty(left) || self.set_empty(right),
                SetOperator::Except | SetOperator::Minus => self.set_empty(left),
            },
            _ => false,
        }
    }

    /// The names a select's FROM binds (aliases, or table names without their schema).
    fn bound_names(s: &Select) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |f: &TableFactor| match f {
            TableFactor::Table { name, alias, .. } => match alias {
                Some(a) => out.push(a.name.value.clone()),
                None => {
                    if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                        out.push(last.value.clone());
                    }
                }
            },
            TableFactor::Derived { alias: Some(a), .. }
            | TableFactor::Function { alias: Some(a), .. }
            | TableFactor::UNNEST { alias: Some(a), .. }
            | TableFactor::TableFunction { alias: Some(a), .. } => out.push(a.name.value.clone()),
            _ => {}
        };
        for t in &s.from {
            add(&t.relation);
            for j in &t.joins {
                add(&j.relation);
            }
        }
        out
    }

    /// Rewrites a correlated scalar subquery over catalog tables into the form DataFusion
    /// decorrelates: conditions on the outer row alone move out into `CASE WHEN`, and the
    /// value is aggregated with `first_value` (a catalog lookup by key yields at most one
    /// row, as Postgres requires of a scalar subquery). Returns the replacement, if any.
    fn decorrelate(&self, q: &Query) -> Option<Result<Expr, TarnError>> {
        if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some()
        {
            return None;
        }
        let SetExpr::Select(s) = q.body.as_ref() else {
            return None;
        };
        let catalog_only = !s.from.is_empty()
            && s.from.iter().all(|t| {
                std::iter::once(&t.relation)
                    .chain(t.joins.iter().map(|j| &j.relation))
                    .all(|r| {
                        matches!(r, TableFactor::Table { name, args: None, .. }
                            if self.catalog_table(name).is_some())
                    })
            });
        let grouped = match &s.group_by {
            GroupByExpr::All(_) => true,
            GroupByExpr::Expressions(e, _) => !e.is_empty(),
        };
        if !catalog_only
            || grouped
            || s.having.is_some()
            || s.distinct.is_some()
            || s.projection.len() != 1
            || aggregates_without_groups(s)
        {
            return None;
        }
        let (value, alias) = match &s.projection[0] {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
            _ => return None,
        };
        let bound = Self::bound_names(s);
        // Whether a column reference names a table of the subquery (unqualified names are
        // taken as the subquery's own).
        let is_outer = |parts: &[Ident]| {
            let n = parts.len();
            n >= 2
                && !bound.contains(&parts[0].value)
                && !(n >= 3 && bound.contains(&parts[n - 2].value))
        };
        // (references the outer row, references the subquery's tables, has a subquery)
        let classify = |e: &Expr| {
            let (mut outer, mut inner, mut nested) = (false, false, false);
            let _ = visit_expressions(e, |x| {
                match x {
                    Expr::CompoundIdentifier(parts) if is_outer(parts) => outer = true,
                    Expr::CompoundIdentifier(_) | Expr::Identifier(_) => inner = true,
                    Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                        nested = true
                    }
                    _ => {}
                }
                ControlFlow::<()>::Continue(())
            });
            (outer, inner, nested)
        };
        let mut conjuncts = Vec::new();
        if let Some(w) = &s.selection {
            split_and(w, &mut conjuncts);
        }
        let (mut hoisted, mut kept) = (Vec::new(), Vec::new());
        let mut correlated = classify(value).0;
        for c in conjuncts {
            match classify(c) {
                (true, false, false) => hoisted.push(c),
                (outer, _, _) => {
                    correlated |= outer;
                    kept.push(c);
                }
            }
        }
        if !correlated && hoisted.is_empty() {
            return None;
        }
        let mut inner = s.clone();
        inner.selection = if kept.is_empty() {
            None
        } else {
            match parse_expr(&join_and(&kept)) {
                Ok(e) => Some(e),
                Err(e) => return Some(Err(e)),
            }
        };
        if correlated {
            let wrapped = match parse_expr(&format!("first_value({value})")) {
                Ok(e) => e,
                Err(e) => return Some(Err(e)),
            };
            inner.projection = vec![match alias {
                Some(a) => SelectItem::ExprWithAlias {
                    expr: wrapped,
                    alias: a.clone(),
                },
                None => SelectItem::UnnamedExpr(wrapped),
            }];
        }
        let sub = format!("({inner})");
        Some(parse_expr(&if hoisted.is_empty() {
            sub
        } else {
            format!("CASE WHEN {} THEN {sub} END", join_and(&hoisted))
        }))
    }

    /// Casts to Postgres's catalog types: `reg*` become lookups, `oid` and `pg_catalog.*`
    /// spellings become the types tarn has.
    fn cast(&self, expr: &mut Expr) -> Option<Result<Expr, TarnError>> {
        let Expr::Cast {
            expr: inner,
            data_type,
            ..
        } = expr
        else {
            return None;
        };
        let name = pg_type_name(data_type)?;
        if let Some(kind) = RegKind::of(&name) {
            return Some(parse_expr(&format!("{}({inner})", kind.oid_fn())));
        }
        // `x::regclass::text`: the name Postgres prints.
        if matches!(
            name.as_str(),
            "text" | "name" | "varchar" | "char" | "bpchar"
        ) && let Expr::Function(f) = inner.as_ref()
            && let Some(kind) = RegKind::from_oid_fn(&function_name(&f.name))
        {
            let args = match &f.args {
                FunctionArguments::List(l) => l
                    .args
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => return None,
            };
            return Some(parse_expr(&format!("{}({args})", kind.name_fn())));
        }
        // Types DataFusion knows (`TEXT`, `VARCHAR(n)`) stay as written.
        if !matches!(data_type, SqlType::Custom(..)) {
            return None;
        }
        *data_type = match name.as_str() {
            "oid" | "regproc" | "regprocedure" | "regoper" | "regoperator" | "xid" | "cid"
            | "int2" | "int4" | "int8" => SqlType::BigInt(None),
            "text" | "name" | "varchar" | "char" | "bpchar" => SqlType::Text,
            "bool" => SqlType::Boolean,
            "float4" | "float8" => {
                SqlType::Double(datafusion::sql::sqlparser::ast::ExactNumberInfo::None)
            }
            _ => return None,
        };
        None
    }
}

/// `ARRAY(SELECT e FROM unnest(a) x [WHERE c])`, which DataFusion does not plan, as the
/// array functions with lambdas it has: `array_transform(array_filter(a, x -> c), x -> e)`.
/// (Over a NULL array the answer is NULL where Postgres has an empty array.)
fn array_of_unnest(q: &Query) -> Option<Result<Expr, TarnError>> {
    if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let grouped = match &s.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(e, _) => !e.is_empty(),
    };
    if grouped || s.having.is_some() || s.distinct.is_some() || s.from.len() != 1 {
        return None;
    }
    let from = &s.from[0];
    if !from.joins.is_empty() {
        return None;
    }
    let (array, alias) = match &from.relation {
        TableFactor::Table {
            name,
            args: Some(args),
            alias: Some(alias),
            ..
        } if function_name(name) == "unnest" && args.args.len() == 1 => {
            (args.args[0].to_string(), alias)
        }
        TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } if array_exprs.len() == 1 => (array_exprs[0].to_string(), alias),
        _ => return None,
    };
    let param = match alias.columns.as_slice() {
        [] => alias.name.clone(),
        [c] => c.name.clone(),
        _ => return None,
    };
    let value = match s.projection.as_slice() {
        [SelectItem::UnnamedExpr(e)] | [SelectItem::ExprWithAlias { expr: e, .. }] => e,
        _ => return None,
    };
    let mut sql = match &s.selection {
        Some(c) => format!("array_filter({array}, {param} -> {c})"),
        None => array,
    };
    if !matches!(value, Expr::Identifier(i) if i.value == param.value) {
        sql = format!("array_transform({sql}, {param} -> {value})");
    }
    Some(parse_expr(&sql))
}

/// The Postgres type a cast names when it is one of those [`PgRewriter::cast`] handles:
/// `regclass`, `pg_catalog.regtype`, `oid`, `name`, `"char"`, `pg_catalog.text`...
fn pg_type_name(t: &SqlType) -> Option<String> {
    match t {
        SqlType::Regclass => Some("regclass".into()),
        SqlType::Text => Some("text".into()),
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => Some("varchar".into()),
        SqlType::Custom(name, modifiers) if modifiers.is_empty() => {
            let parts: Vec<&str> = name
                .0
                .iter()
                .map(|p| p.as_ident().map_or("", |i| i.value.as_str()))
                .collect();
            let last = match parts.as_slice() {
                [t] => *t,
                [s, t] if s.eq_ignore_ascii_case(PG_CATALOG) => *t,
                _ => return None,
            };
            let last = last.to_ascii_lowercase();
            let known = matches!(
                last.as_str(),
                "regclass"
                    | "regtype"
                    | "regnamespace"
                    | "regrole"
                    | "regproc"
                    | "regprocedure"
                    | "regoper"
                    | "regoperator"
                    | "oid"
                    | "xid"
                    | "cid"
                    | "name"
                    | "char"
                    | "bpchar"
                    | "text"
                    | "varchar"
                    | "int2"
                    | "int4"
                    | "int8"
                    | "bool"
                    | "float4"
                    | "float8"
            );
            known.then_some(last)
        }
        _ => None,
    }
}

fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

fn join_and(es: &[&Expr]) -> String {
    es.iter()
        .map(|e| format!("({e})"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn contains_subquery(e: &Expr) -> bool {
    visit_expressions(e, |x| match x {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        Expr::Function(f) if matches!(f.args, FunctionArguments::Subquery(_)) => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

impl VisitorMut for PgRewriter<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    /// A select that surely returns no row keeps its shape, but nothing in it is evaluated:
    /// its condition becomes `FALSE` and the items that hold a subquery become NULL, so
    /// their correlated subqueries (which DataFusion may not plan) are not planned.
    fn pre_visit_select(&mut self, s: &mut Select) -> ControlFlow<()> {
        if !self.select_empty(s) {
            return ControlFlow::Continue(());
        }
        let falsy = match parse_expr("FALSE") {
            Ok(e) => e,
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        };
        s.selection = Some(falsy);
        for (k, item) in s.projection.iter_mut().enumerate() {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.clone())),
                _ => continue,
            };
            if !contains_subquery(expr) {
                continue;
            }
            let alias =
                alias.unwrap_or_else(|| Ident::with_quote('"', format!("?column?{}", k + 1)));
            *item = SelectItem::ExprWithAlias {
                expr: Expr::value(Value::Null),
                alias,
            };
        }
        ControlFlow::Continue(())
    }

    /// In the statement's own SELECT list, a `reg*` value prints as its name (`c.oid::regclass`
    /// shows the table), as Postgres sends it.
    fn post_visit_select(&mut self, s: &mut Select) -> ControlFlow<()> {
        let top = self.depth == 1;
        for item in s.projection.iter_mut().filter(|_| top) {
            let (expr, unnamed) = match item {
                SelectItem::UnnamedExpr(e) => (e, true),
                SelectItem::ExprWithAlias { expr, .. } => (expr, false),
                _ => continue,
            };
            let Expr::Function(f) = expr else { continue };
            let Some(kind) = RegKind::from_oid_fn(&function_name(&f.name)) else {
                continue;
            };
            // Postgres names `c.oid::regclass` after the column, `'x'::regclass` after the type.
            let column = match &f.args {
                FunctionArguments::List(l) => match l.args.first() {
                    Some(datafusion::sql::sqlparser::ast::FunctionArg::Unnamed(
                        datafusion::sql::sqlparser::ast::FunctionArgExpr::Expr(a),
                    )) => match a {
                        Expr::Identifier(i) => Some(i.value.clone()),
                        Expr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            f.name = ObjectName::from(vec![Ident::new(kind.name_fn())]);
            if unnamed {
                let alias = Ident::new(column.unwrap_or_else(|| kind.sql_name().to_owned()));
                let expr = std::mem::replace(expr, Expr::value(Value::Null));
                *item = SelectItem::ExprWithAlias { expr, alias };
            }
        }
        // Postgres allows two items of one name (`SELECT pubname, NULL, NULL`), DataFusion
        // wants distinct names: in catalog queries the repeats are renamed `name2`,
        // `?column?3`...
        let mut seen: Vec<String> = Vec::new();
        let catalog = self.catalog;
        for (k, item) in s.projection.iter_mut().enumerate().filter(|_| catalog) {
            let name = match item {
                SelectItem::UnnamedExpr(e) => e.to_string(),
                SelectItem::ExprWithAlias { alias, .. } => alias.value.clone(),
                _ => continue,
            };
            if !seen.contains(&name) {
                seen.push(name);
                continue;
            }
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let expr = std::mem::replace(e, Expr::value(Value::Null));
                    *item = SelectItem::ExprWithAlias {
                        expr,
                        alias: Ident::with_quote('"', format!("?column?{}", k + 1)),
                    };
                }
                SelectItem::ExprWithAlias { alias, .. } => {
                    *alias = Ident::with_quote('"', format!("{}{}", alias.value, k + 1));
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    /// Table functions are found without their `pg_catalog.` (`pg_catalog.generate_series`).
    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = factor
            && name.0.len() == 2
            && name.0[0]
                .as_ident()
                .is_some_and(|i| i.value.eq_ignore_ascii_case(PG_CATALOG))
        {
            name.0.remove(0);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let replacement = match expr {
            // tarn has one collation.
            Expr::Collate { expr: inner, .. } => Some(Ok(std::mem::replace(
                inner.as_mut(),
                Expr::value(Value::Null),
            ))),
            Expr::Cast { .. } => self.cast(expr),
            // DataFusion's LIKE escapes with `\` only.
            Expr::Like {
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char,
                ..
            } if escape_char.as_ref().is_some_and(
                |e| !matches!(&e.value, Value::SingleQuotedString(c) if c == "\\"),
            ) =>
            {
                let escape = escape_char.take().map(|e| match e.value {
                    Value::SingleQuotedString(c) => c,
                    other => other.to_string(),
                });
                let escape = escape.unwrap_or_default().replace('\'', "''");
                match parse_expr(&format!("__pg_like_escape({pattern}, '{escape}')")) {
                    Ok(p) => {
                        **pattern = p;
                        None
                    }
                    Err(e) => Some(Err(e)),
                }
            }
            // Subqueries over tables that have no rows have the empty answer.
            Expr::Subquery(q) if self.query_empty(q) => Some(Ok(Expr::value(Value::Null))),
            Expr::Exists { subquery, negated } if self.query_empty(subquery) => {
                Some(Ok(Expr::value(Value::Boolean(*negated))))
            }
            Expr::InSubquery {
                subquery, negated, ..
            } if self.query_empty(subquery) => Some(Ok(Expr::value(Value::Boolean(*negated)))),
            Expr::Subquery(q) => self.decorrelate(q),
            Expr::Function(f) => match (function_name(&f.name).as_str(), &f.args) {
                // ARRAY(subquery) over no rows is an empty array.
                ("array", FunctionArguments::Subquery(q)) if self.query_empty(q) => {
                    Some(parse_expr("make_array()"))
                }
                ("array", FunctionArguments::Subquery(q)) => array_of_unnest(q),
                // A set-returning function DataFusion lacks: the subscripts of an array,
                // as a projection unnest beside the array's own.
                ("generate_subscripts", FunctionArguments::List(l)) if l.args.len() == 2 => {
                    Some(parse_expr(&format!(
                        "unnest(generate_series(1, array_length({}, {})))",
                        l.args[0], l.args[1]
                    )))
                }
                ("array_upper", FunctionArguments::List(l)) if l.args.len() == 2 => Some(
                    parse_expr(&format!("array_length({}, {})", l.args[0], l.args[1])),
                ),
                _ => None,
            },
            // `NOT` over a folded subquery.
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr: inner,
            } => match inner.as_ref() {
                Expr::Value(v) => match v.value {
                    Value::Boolean(b) => Some(Ok(Expr::value(Value::Boolean(!b)))),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        match replacement {
            Some(Ok(e)) => {
                *expr = e;
                ControlFlow::Continue(())
            }
            Some(Err(e)) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    }
}

/// Turns what Postgres tools write in their catalog queries into SQL DataFusion plans, with
/// the same answer over tarn's catalog:
/// - `x::regclass`, `::regtype`, `::regnamespace`, `::regrole` look the name up (or keep
///   the oid); `x::regclass::text` is the name, and so is a `reg*` value in the statement's
///   own SELECT list; `::oid`, `::pg_catalog.text`, `::name`, `::"char"` become BIGINT and
///   TEXT; `COLLATE` is dropped (tarn has one collation).
/// - A subquery over a catalog table that has no rows in tarn (pg_attrdef, pg_constraint,
///   pg_index, pg_collation, pg_sequence...) has the empty answer: a scalar subquery is
///   NULL, `EXISTS` false, `IN` false, `ARRAY(...)` empty; a SELECT reading one returns no
///   rows, so its items holding subqueries are not planned.
/// - A correlated scalar subquery over other catalog tables is put in the form DataFusion
///   decorrelates (see `PgRewriter::decorrelate`).
/// - In a statement reading the catalog, two SELECT items of one name (`NULL, NULL`) get
///   distinct names, as DataFusion requires.
/// - Spellings DataFusion lacks, wherever they are: `generate_subscripts(a, 1)`,
///   `array_upper(a, 1)`, `ARRAY(SELECT e FROM unnest(a) x)` (`array_transform`),
///   `LIKE ... ESCAPE '/'` (DataFusion escapes with `\` only), `pg_catalog.` before a
///   table function.
///
/// A statement that reads no catalog table and uses none of these spellings is unchanged.
pub fn rewrite(
    statement: &mut Statement,
    resolve: crate::paths::Resolver,
) -> Result<(), TarnError> {
    let mut r = PgRewriter {
        resolve,
        depth: 0,
        catalog: false,
        ctes: crate::rewrite::cte_names(statement),
        error: None,
    };
    let _ = visit_relations(statement, |name| {
        if r.catalog_table(name).is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .map_break(|()| r.catalog = true);
    let _ = statement.visit(&mut r);
    match r.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut stmt = Parser::parse_sql(&RocksetDialect, sql).unwrap().remove(0);
        rewrite(&mut stmt, &|_, _| None).unwrap();
        stmt.to_string()
    }

    #[test]
    fn casts_to_catalog_types() {
        assert_eq!(
            rewritten("SELECT c.oid::regclass, 'events'::regclass::text, x::oid FROM pg_class c"),
            "SELECT __pg_regclass_name(c.oid) AS oid, __pg_regclass_name('events'), x::BIGINT \
             FROM pg_class c"
        );
        assert_eq!(
            rewritten(
                "SELECT 1 FROM pg_class c WHERE c.oid = 'x'::regclass AND c.relname = 'a' COLLATE pg_catalog.default"
            ),
            "SELECT 1 FROM pg_class c WHERE c.oid = __pg_regclass('x') AND c.relname = 'a'"
        );
        assert_eq!(
            rewritten(
                "SELECT t.reloftype::pg_catalog.regtype::pg_catalog.text AS t FROM pg_class t"
            ),
            "SELECT __pg_regtype_name(t.reloftype) AS t FROM pg_class t"
        );
    }

    #[test]
    fn subqueries_over_empty_tables_are_folded() {
        assert_eq!(
            rewritten(
                "SELECT a.attname, (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
                 WHERE d.adrelid = a.attrelid AND a.atthasdef) FROM pg_attribute a"
            ),
            "SELECT a.attname, NULL FROM pg_attribute a"
        );
        assert_eq!(
            rewritten("SELECT (SELECT count(*) FROM pg_index) AS n"),
            "SELECT (SELECT count(*) FROM pg_index) AS n"
        );
        assert_eq!(
            rewritten(
                "SELECT p.polname, (SELECT x FROM pg_roles r WHERE r.oid = p.polrelid) FROM pg_policy p"
            ),
            "SELECT p.polname, NULL AS \"?column?2\" FROM pg_policy p WHERE false"
        );
        assert_eq!(
            rewritten(
                "SELECT 1 FROM pg_class c WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)"
            ),
            "SELECT 1 FROM pg_class c WHERE true"
        );
        // A collection named like a catalog table is not folded.
        let mut stmt = Parser::parse_sql(&RocksetDialect, "SELECT (SELECT x FROM pg_index) AS y")
            .unwrap()
            .remove(0);
        let schema = Arc::new(Schema::empty());
        rewrite(&mut stmt, &|_, _| Some(schema.clone())).unwrap();
        assert_eq!(stmt.to_string(), "SELECT (SELECT x FROM pg_index) AS y");
    }

    #[test]
    fn correlated_catalog_subqueries_are_decorrelatable() {
        assert_eq!(
            rewritten(
                "SELECT (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid AND a.attnum > 0) FROM pg_attribute a"
            ),
            "SELECT CASE WHEN (a.attnum > 0) THEN (SELECT first_value(t.typname) FROM pg_catalog.pg_type t \
             WHERE (t.oid = a.atttypid)) END FROM pg_attribute a"
        );
        // Not over catalog tables: left alone.
        assert_eq!(
            rewritten("SELECT (SELECT o.x FROM orders o WHERE o.id = c.id) FROM customers c"),
            "SELECT (SELECT o.x FROM orders o WHERE o.id = c.id) FROM customers c"
        );
    }

    #[test]
    fn sizes_print_as_postgres_does() {
        assert_eq!(size_pretty(10_239), "10239 bytes");
        assert_eq!(size_pretty(10_240), "10 kB");
        assert_eq!(size_pretty(1_536 * 1024), "1536 kB");
        assert_eq!(size_pretty(20 * 1024 * 1024), "20 MB");
        assert_eq!(size_pretty(3 << 40), "3072 GB");
        assert_eq!(size_pretty(30 << 40), "30 TB");
        assert_eq!(size_pretty(-20_000), "-20 kB");
        assert!(size_pretty(i64::MIN).ends_with("TB"));
    }

    #[test]
    fn like_escapes() {
        assert_eq!(like_with_backslash("pg/_%", Some('/')), "pg\\_%");
        assert_eq!(like_with_backslash("a\\b//c", Some('/')), "a\\\\b\\/c");
        assert_eq!(like_with_backslash("a\\b", None), "a\\\\b");
        assert_eq!(
            rewritten("SELECT 1 FROM t WHERE n NOT LIKE 'pg/_' || '%' ESCAPE '/'"),
            "SELECT 1 FROM t WHERE n NOT LIKE __pg_like_escape('pg/_' || '%', '/')"
        );
    }

    #[test]
    fn names_and_types() {
        assert_eq!(quote_ident("events"), "events");
        assert_eq!(
            quote_ident("twitter-kinesis-demo"),
            "\"twitter-kinesis-demo\""
        );
        assert_eq!(quote_ident("Big"), "\"Big\"");
        assert_eq!(split_qualified("a.\"b.c\""), vec!["a", "b.c"]);
        assert_eq!(type_by_name("bigint").map(|t| t.oid), Some(20));
        assert_eq!(type_by_name("pg_catalog.int8").map(|t| t.oid), Some(20));
        assert_eq!(type_by_name("jsonb[]").map(|t| t.oid), Some(3807));
        assert_eq!(
            type_by_oid(1184).map(|t| t.format.as_str()),
            Some("timestamp with time zone")
        );
        for t in EMPTY_TABLES {
            let columns = empty_table_columns(t).unwrap_or_default();
            assert!(columns.len() >= 3, "{t} has columns");
            assert!(TABLES.iter().any(|(n, _)| *n == t), "{t} is listed");
        }
    }
}
