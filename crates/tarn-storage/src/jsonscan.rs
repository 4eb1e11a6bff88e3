//! An iterative JSON validator that splits a `{"data": [...]}` request body into its documents.
//!
//! It never recurses, so a body nested a million levels deep is an ordinary error for the one
//! document that does it, not a stack overflow; and it reports syntax errors with the line and
//! column at which they occur.

use tarn_common::TarnError;

/// One element of the body's `data` array: its bytes and how deeply it nests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementSpan {
    pub start: usize,
    pub end: usize,
    /// 0 for a scalar, 1 for `{}` or `[]`, 2 for `{"a":[]}` and so on.
    pub depth: usize,
}

/// A JSON syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

impl SyntaxError {
    /// Converts to a user error with the 1-based line and column of the offset in `text`.
    pub fn into_tarn_error(self, text: &[u8], what: &str) -> TarnError {
        let (line, column) = line_column(text, self.offset);
        TarnError::invalid(format!(
            "{what} is not valid JSON: {} at line {line}, column {column}",
            self.message
        ))
        .at(line, column)
    }
}

/// The 1-based line and column of a byte offset.
pub fn line_column(text: &[u8], offset: usize) -> (u64, u64) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let col = upto.iter().rev().take_while(|&&b| b != b'\n').count() as u64 + 1;
    (line, col)
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            offset: self.i,
            message: msg.into(),
        })
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.i += 1;
            Ok(())
        } else {
            match self.peek() {
                Some(c) => self.err(format!(
                    "expected '{}' but found '{}'",
                    b as char, c as char
                )),
                None => self.err(format!("expected '{}' but the input ended", b as char)),
            }
        }
    }

    fn string(&mut self) -> Result<(), SyntaxError> {
        // At the opening quote.
        self.i += 1;
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return self.err("invalid \\u escape");
                                }
                                self.i += 1;
                            }
                        }
                        _ => return self.err("invalid escape in string"),
                    }
                }
                Some(c) if c < 0x20 => return self.err("control character in string"),
                Some(_) => self.i += 1,
            }
        }
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
            _ => return self.err("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return self.err("invalid number");
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return self.err("invalid number");
            }
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        debug_assert!(self.i > start);
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), SyntaxError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("expected a value")
        }
    }

    /// Scans one value of any depth without recursion; returns its maximum nesting depth.
    fn value(&mut self) -> Result<usize, SyntaxError> {
        // Each stack entry: is this container an object, and are we expecting the first item.
        let mut stack: Vec<bool> = Vec::new();
        let mut max_depth = 0usize;
        loop {
            // Parse a value start.
            self.skip_ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    stack.push(true);
                    max_depth = max_depth.max(stack.len());
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        stack.pop();
                    } else {
                        self.object_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    stack.push(false);
                    max_depth = max_depth.max(stack.len());
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        stack.pop();
                    } else {
                        continue;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(c) => return self.err(format!("expected a value but found '{}'", c as char)),
                None => return self.err("expected a value but the input ended"),
            }
            // After a complete value: close containers or move to the next item.
            loop {
                let Some(&is_object) = stack.last() else {
                    return Ok(max_depth);
                };
                self.skip_ws();
                match (self.peek(), is_object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.object_key()?;
                        break;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        stack.pop();
                    }
                    (Some(c), true) => {
                        return self.err(format!("expected ',' or '}}' but found '{}'", c as char));
                    }
                    (Some(c), false) => {
                        return self.err(format!("expected ',' or ']' but found '{}'", c as char));
                    }
                    (None, _) => return self.err("unexpected end of input inside a value"),
                }
            }
        }
    }

    fn object_key(&mut self) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        self.string()?;
        self.expect(b':')
    }

    /// Reads a string key and returns its raw bytes (without quotes).
    fn key(&mut self) -> Result<&'a [u8], SyntaxError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return self.err("expected a string key");
        }
        let start = self.i + 1;
        self.string()?;
        Ok(&self.s[start..self.i - 1])
    }
}

/// Validates a whole body of the form `{"data": [doc, ...], ...}` and returns the spans of the
/// elements of `data`. Other top-level keys are validated and ignored.
pub fn split_data_array(body: &[u8]) -> Result<Vec<ElementSpan>, SyntaxError> {
    let mut sc = Scanner { s: body, i: 0 };
    let mut found: Option<Vec<ElementSpan>> = None;
    sc.expect(b'{')?;
    sc.skip_ws();
    if sc.peek() == Some(b'}') {
        sc.i += 1;
    } else {
        loop {
            let key = sc.key()?;
            sc.expect(b':')?;
            sc.skip_ws();
            if key == b"data" && sc.peek() == Some(b'[') {
                sc.i += 1;
                let mut elems = Vec::new();
                sc.skip_ws();
                if sc.peek() == Some(b']') {
                    sc.i += 1;
                } else {
                    loop {
                        sc.skip_ws();
                        let start = sc.i;
                        let depth = sc.value()?;
                        elems.push(ElementSpan {
                            start,
                            end: sc.i,
                            depth,
                        });
                        sc.skip_ws();
                        match sc.peek() {
                            Some(b',') => sc.i += 1,
                            Some(b']') => {
                                sc.i += 1;
                                break;
                            }
                            _ => return sc.err("expected ',' or ']' in \"data\""),
                        }
                    }
                }
                found = Some(elems);
            } else {
                sc.value()?;
            }
            sc.skip_ws();
            match sc.peek() {
                Some(b',') => sc.i += 1,
                Some(b'}') => {
                    sc.i += 1;
                    break;
                }
                _ => return sc.err("expected ',' or '}'"),
            }
        }
    }
    sc.skip_ws();
    if sc.i != body.len() {
        return sc.err("trailing characters after the JSON body");
    }
    found.ok_or(SyntaxError {
        offset: 0,
        message: "the body has no \"data\" array".into(),
    })
}

/// Validates one JSON value and returns its nesting depth (used for stream records).
pub fn value_depth(text: &[u8]) -> Result<usize, SyntaxError> {
    let mut sc = Scanner { s: text, i: 0 };
    let d = sc.value()?;
    sc.skip_ws();
    if sc.i != text.len() {
        return sc.err("trailing characters after the JSON value");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_elements_with_depth() {
        let body = br#"{"data": [{"a":1}, 5, {"b":[{"c":"x]}"}]}], "x": null}"#;
        let spans = split_data_array(body).unwrap();
        let texts: Vec<_> = spans
            .iter()
            .map(|s| std::str::from_utf8(&body[s.start..s.end]).unwrap())
            .collect();
        assert_eq!(texts, vec![r#"{"a":1}"#, "5", r#"{"b":[{"c":"x]}"}]}"#]);
        assert_eq!(
            spans.iter().map(|s| s.depth).collect::<Vec<_>>(),
            vec![1, 0, 3]
        );
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let n = 1_000_000;
        let mut body = b"{\"data\":[".to_vec();
        body.extend(std::iter::repeat_n(b'[', n));
        body.extend(std::iter::repeat_n(b']', n));
        body.extend(b"]}");
        let spans = split_data_array(&body).unwrap();
        assert_eq!(spans[0].depth, n);
    }

    #[test]
    fn reports_error_position() {
        let body = b"{\"data\": [\n  {\"a\": 1,}\n]}";
        let e = split_data_array(body).unwrap_err();
        let (line, col) = line_column(body, e.offset);
        assert_eq!((line, col), (2, 11), "{e:?}");
        assert!(split_data_array(b"{\"data\": [1] } x").is_err());
        assert!(split_data_array(b"{\"nodata\": 1}").is_err());
        assert!(split_data_array(b"[1]").is_err());
    }

    #[test]
    fn agrees_with_serde_on_validity() {
        for ok in [
            r#"{"a":"\u00e9\n","b":-0.5e+3,"c":[true,false,null]}"#,
            "[]",
            "0",
            "\"x\"",
        ] {
            assert!(value_depth(ok.as_bytes()).is_ok(), "{ok}");
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok());
        }
        for bad in [
            "01",
            "[1,]",
            "{\"a\" 1}",
            "tru",
            "\"\\x\"",
            "1.",
            "-",
            "{,}",
        ] {
            assert!(value_depth(bad.as_bytes()).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
