//! Documented limits on requests and documents; README.md lists the same numbers.

/// Largest HTTP request body accepted; larger requests get 413.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;
/// Largest single document (its JSON text); larger documents get status ERROR.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of objects and arrays in a document (the document itself is depth 1).
pub const MAX_DOCUMENT_DEPTH: usize = 64;
/// Longest workspace or collection name.
pub const MAX_NAME_LEN: usize = 100;
