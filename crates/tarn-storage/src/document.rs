//! Turning one received JSON value into a [`Document`]: `_id`, `_event_time` and `_meta` resolved.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tarn_common::limits::{MAX_DOCUMENT_BYTES, MAX_DOCUMENT_DEPTH};
use tarn_common::time::parse_iso8601_micros;

use crate::types::{EVENT_TIME, ID, META, NULLS};

/// A document ready to be logged and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    /// Microseconds since the epoch.
    pub event_time: i64,
    pub meta: Value,
    /// The document without `_id`, `_event_time` and `_meta`. Storing a document reads its
    /// JSON text, not this: [`prepare_text`] leaves it empty.
    pub body: Map<String, Value>,
    /// The nodes of the document's JSON text, when it was prepared from that text
    /// ([`prepare_text`]): storing it reads them instead of parsing the text again.
    pub tape: Option<std::sync::Arc<crate::tape::Parsed>>,
}

/// How `_event_time` is derived from a document field (Rockset's `event_time_info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTimeInfo {
    /// The field to read, a top-level name or a dotted path.
    pub field: String,
    /// `milliseconds_since_epoch`, `seconds_since_epoch`, `microseconds_since_epoch`, or
    /// absent for ISO-8601 strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl EventTimeInfo {
    /// Checks the format name when a collection is created.
    pub fn validate(&self) -> Result<(), String> {
        if self.field.is_empty() {
            return Err("event_time_info.field must name a field".into());
        }
        match self.format.as_deref() {
            None
            | Some(
                "milliseconds_since_epoch" | "seconds_since_epoch" | "microseconds_since_epoch",
            ) => Ok(()),
            Some(f) => Err(format!(
                "event_time_info.format '{f}' is not known: use milliseconds_since_epoch, \
                 seconds_since_epoch, microseconds_since_epoch, or omit it for ISO-8601 strings"
            )),
        }
    }

    /// The event time of a document, `Ok(None)` when the field is absent or null.
    fn extract(&self, body: &Map<String, Value>) -> Result<Option<i64>, String> {
        let mut parts = self.field.split('.');
        let mut cur = body.get(parts.next().unwrap_or_default());
        for p in parts {
            cur = cur.and_then(|v| v.get(p));
        }
        match cur.filter(|v| !v.is_null()) {
            Some(v) => self.event_time_of(v).map(Some),
            None => Ok(None),
        }
    }

    /// The event time a (non-null) value of the mapped field gives.
    pub(crate) fn event_time_of(&self, v: &Value) -> Result<i64, String> {
        let scale = match self.format.as_deref() {
            Some("milliseconds_since_epoch") => 1_000,
            Some("seconds_since_epoch") => 1_000_000,
            Some("microseconds_since_epoch") => 1,
            _ => {
                return match v.as_str().and_then(parse_iso8601_micros) {
                    Some(t) => Ok(t),
                    None => Err(format!(
                        "field '{}' is {v}, not an ISO-8601 timestamp",
                        self.field
                    )),
                };
            }
        };
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        n.and_then(|n| n.checked_mul(scale)).ok_or_else(|| {
            format!(
                "field '{}' is {v}, not an integer count of {}",
                self.field,
                self.format.as_deref().unwrap_or_default().replace('_', " ")
            )
        })
    }
}

/// What the server knows about a document besides its text.
pub struct IngestContext<'a> {
    pub event_time_info: Option<&'a EventTimeInfo>,
    /// Ingest time, used when no event time is given or mapped.
    pub now_micros: i64,
    pub meta: &'a Value,
}

/// Resolves the special fields of a parsed document. The error says what is wrong with it.
pub fn prepare(value: Value, ctx: &IngestContext) -> Result<Document, String> {
    let mut body = match value {
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "a document must be a JSON object, not {}",
                json_kind(&other)
            ));
        }
    };
    if body.contains_key(NULLS) {
        return Err(format!("the field name '{NULLS}' is reserved by tarn"));
    }
    let id = match body.shift_remove(ID) {
        None | Some(Value::Null) => new_document_id(),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(other) => {
            return Err(format!(
                "_id must be a non-empty string, not {}: quote it, as in \"_id\": \"{}\"",
                json_kind(&other),
                other
            ));
        }
    };
    body.shift_remove(META); // Rockset ignores a user-supplied _meta.
    let event_time = match body.shift_remove(EVENT_TIME) {
        None | Some(Value::Null) => match ctx.event_time_info {
            Some(info) => info.extract(&body)?.unwrap_or(ctx.now_micros),
            None => ctx.now_micros,
        },
        Some(Value::Number(n)) if n.is_i64() => n.as_i64().unwrap_or_default(),
        Some(Value::String(s)) => parse_iso8601_micros(&s)
            .ok_or_else(|| format!("_event_time '{s}' is not an ISO-8601 timestamp"))?,
        Some(other) => {
            return Err(format!(
                "_event_time must be an ISO-8601 string or integer microseconds since the epoch, not {other}"
            ));
        }
    };
    Ok(Document {
        id,
        event_time,
        meta: ctx.meta.clone(),
        body,
        tape: None,
    })
}

/// [`prepare`] straight from a document's JSON text, without building its value tree: the
/// [`Document`] has an empty `body` and keeps the text's nodes (storing reads the text).
/// `None` where the text needs the value path ([`parse_limited`], then [`prepare`]), which
/// also says what is wrong with it; an error here is the one the value path would give.
pub fn prepare_text(text: &[u8], ctx: &IngestContext) -> Option<Result<Document, String>> {
    // The tape refuses nesting deeper than MAX_DOCUMENT_DEPTH itself.
    if text.len() > MAX_DOCUMENT_BYTES {
        return None;
    }
    crate::tape::prepare_from_text(text, ctx)
}

/// A fresh `_id` for a document that has none: a random (version 4) UUID. Its randomness
/// comes from the thread's own generator (seeded from the OS) rather than from a system call
/// per document, which was a tenth of parsing a tweet.
pub fn new_document_id() -> String {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// Parses one document's JSON text, enforcing the size and depth limits.
pub fn parse_limited(text: &[u8], depth: usize) -> Result<Value, String> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "the document is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes",
            text.len()
        ));
    }
    if depth > MAX_DOCUMENT_DEPTH {
        return Err(format!(
            "the document nests {depth} levels deep; the limit is {MAX_DOCUMENT_DEPTH}"
        ));
    }
    serde_json::from_slice(text).map_err(|e| format!("the document is not valid JSON: {e}"))
}

/// "an object", "a string", ... for messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx<'a>(info: Option<&'a EventTimeInfo>, meta: &'a Value) -> IngestContext<'a> {
        IngestContext {
            event_time_info: info,
            now_micros: 42,
            meta,
        }
    }

    #[test]
    fn prepare_text_agrees_with_parse_and_prepare() {
        let meta = json!({"source": "api"});
        let infos = [
            None,
            Some(EventTimeInfo {
                field: "timestamp_ms".into(),
                format: Some("milliseconds_since_epoch".into()),
                time_zone: None,
            }),
            Some(EventTimeInfo {
                field: "a.when".into(),
                format: None,
                time_zone: None,
            }),
        ];
        let texts = [
            r#"{"_id":"a","x":1}"#,
            r#"{"_id":"a","_id":"b"}"#,
            r#"{"_id":"","x":1}"#,
            r#"{"_id":5}"#,
            r#"{"_id":"a","_event_time":1700000000000000}"#,
            r#"{"_id":"a","_event_time":"2024-01-02T03:04:05Z"}"#,
            r#"{"_id":"a","_event_time":"soon"}"#,
            r#"{"_id":"a","_event_time":1.5}"#,
            r#"{"_id":"a","timestamp_ms":"1607000000000","a":{"when":"2024-01-02T03:04:05.5Z"}}"#,
            r#"{"_id":"a","timestamp_ms":1607000000000,"a":{"when":"yesterday"}}"#,
            r#"{"_id":"a","timestamp_ms":"x","a":{"when":null}}"#,
            r#"{"_id":"a","timestamp_ms":null,"a":[1]}"#,
            r#"{"_id":"a","__tarn_nulls":1}"#,
            r#"{"_id":"a","_meta":{"x":1}}"#,
            r#"[1]"#,
            r#"{"_id":"a","x":}"#,
        ];
        for info in &infos {
            for text in texts {
                let c = ctx(info.as_ref(), &meta);
                let depth = crate::jsonscan::value_depth(text.as_bytes()).unwrap_or(1);
                let want = parse_limited(text.as_bytes(), depth).and_then(|v| prepare(v, &c));
                let got = prepare_text(text.as_bytes(), &c).unwrap_or_else(|| {
                    parse_limited(text.as_bytes(), depth).and_then(|v| prepare(v, &c))
                });
                match (got, want) {
                    (Ok(g), Ok(w)) => {
                        assert_eq!(
                            (&g.id, g.event_time, &g.meta),
                            (&w.id, w.event_time, &w.meta),
                            "{text}"
                        );
                    }
                    (Err(g), Err(w)) => assert_eq!(g, w, "{text}"),
                    (g, w) => panic!("{text} with {info:?}: {g:?} but {w:?}"),
                }
            }
        }
    }

    #[test]
    fn resolves_special_fields() {
        let meta = json!({"source": "api"});
        let d = prepare(json!({"_id": "a", "_meta": 1, "x": 1}), &ctx(None, &meta)).unwrap();
        assert_eq!((d.id.as_str(), d.event_time), ("a", 42));
        assert_eq!(d.meta, meta);
        assert_eq!(Value::Object(d.body), json!({"x": 1}));
        let d = prepare(json!({"x": 1}), &ctx(None, &meta)).unwrap();
        assert_eq!(d.id.len(), 36);
        assert!(
            prepare(json!([1]), &ctx(None, &meta))
                .unwrap_err()
                .contains("array")
        );
        assert!(
            prepare(json!({"_id": 5}), &ctx(None, &meta))
                .unwrap_err()
                .contains("string")
        );
        let d = prepare(
            json!({"_event_time": "2020-12-03T12:53:20Z"}),
            &ctx(None, &meta),
        )
        .unwrap();
        assert_eq!(d.event_time, 1_607_000_000_000_000);
    }

    #[test]
    fn maps_event_time_from_field() {
        let meta = json!(null);
        let info = EventTimeInfo {
            field: "timestamp_ms".into(),
            format: Some("milliseconds_since_epoch".into()),
            time_zone: None,
        };
        let d = prepare(
            json!({"timestamp_ms": "1607000000123"}),
            &ctx(Some(&info), &meta),
        )
        .unwrap();
        assert_eq!(d.event_time, 1_607_000_000_123_000);
        assert_eq!(
            d.body["timestamp_ms"],
            json!("1607000000123"),
            "the mapped field is kept"
        );
        assert_eq!(
            prepare(json!({}), &ctx(Some(&info), &meta))
                .unwrap()
                .event_time,
            42
        );
        assert!(prepare(json!({"timestamp_ms": "soon"}), &ctx(Some(&info), &meta)).is_err());
        let iso = EventTimeInfo {
            field: "t.at".into(),
            format: None,
            time_zone: None,
        };
        let d = prepare(
            json!({"t": {"at": "2020-12-03T12:53:20Z"}}),
            &ctx(Some(&iso), &meta),
        )
        .unwrap();
        assert_eq!(d.event_time, 1_607_000_000_000_000);
        assert!(
            EventTimeInfo {
                format: Some("days".into()),
                ..iso
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn limits_are_errors() {
        assert!(
            parse_limited(b"{}", MAX_DOCUMENT_DEPTH + 1)
                .unwrap_err()
                .contains("levels deep")
        );
        assert!(parse_limited(b"{\"a\":1}", 1).is_ok());
    }
}
