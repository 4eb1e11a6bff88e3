//! The one error type every tarn layer returns, carrying the Rockset error `type` and HTTP status.

use std::fmt;

/// What kind of failure an error is; decides the HTTP status and Rockset's `type` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid (400 INVALIDINPUT).
    InvalidInput,
    /// A query failed to parse, plan or run (400 QUERY_ERROR).
    Query,
    /// A named workspace, collection or other object does not exist (404 NOTFOUND).
    NotFound,
    /// An object with that name already exists (409 ALREADYEXISTS).
    AlreadyExists,
    /// A request or document exceeds a documented limit (413 LIMITREACHED).
    TooLarge,
    /// Missing or invalid API key (401 AUTHEXCEPTION).
    Auth,
    /// The feature is not available in tarn (501 NOTIMPLEMENTEDYET).
    NotImplemented,
    /// The server is shutting down or a resource is temporarily unavailable (503).
    Unavailable,
    /// A bug or an I/O failure on the server (500 INTERNALERROR).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code Rockset's clients expect for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::Query => 400,
            ErrorKind::Auth => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::AlreadyExists => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::NotImplemented => 501,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// Rockset's error `type` string.
    pub fn rockset_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "INVALIDINPUT",
            ErrorKind::Query => "QUERY_ERROR",
            ErrorKind::NotFound => "NOTFOUND",
            ErrorKind::AlreadyExists => "ALREADYEXISTS",
            ErrorKind::TooLarge => "LIMITREACHED",
            ErrorKind::Auth => "AUTHEXCEPTION",
            ErrorKind::NotImplemented => "NOTIMPLEMENTEDYET",
            ErrorKind::Unavailable => "SERVICEUNAVAILABLE",
            ErrorKind::Internal => "INTERNALERROR",
        }
    }
}

/// An error with a message meant for the user: what went wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarnError {
    pub kind: ErrorKind,
    pub message: String,
    /// 1-based line in the request text (SQL or JSON) the error points at, when known.
    pub line: Option<u64>,
    /// 1-based column in the request text the error points at, when known.
    pub column: Option<u64>,
}

impl TarnError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        TarnError {
            kind,
            message: message.into(),
            line: None,
            column: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }
    pub fn query(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Query, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// Attaches a 1-based line and column.
    pub fn at(mut self, line: u64, column: u64) -> Self {
        self.line = Some(line);
        self.column = Some(column);
        self
    }
}

impl fmt::Display for TarnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{} (line {l}, column {c})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TarnError {}

impl From<std::io::Error> for TarnError {
    fn from(e: std::io::Error) -> Self {
        TarnError::internal(format!("I/O error: {e}"))
    }
}

pub type TarnResult<T> = Result<T, TarnError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_rockset_statuses() {
        assert_eq!(ErrorKind::NotFound.http_status(), 404);
        assert_eq!(ErrorKind::AlreadyExists.rockset_type(), "ALREADYEXISTS");
        let e = TarnError::query("bad").at(2, 5);
        assert_eq!(e.to_string(), "bad (line 2, column 5)");
    }
}
