//! Validation of workspace and collection names, with the rules Rockset applied.

use crate::error::TarnError;
use crate::limits::MAX_NAME_LEN;

/// Checks a workspace or collection name: 1–100 characters of ASCII letters, digits, `_` and
/// `-`, starting with a letter or digit. `what` names the object in the error message.
pub fn validate_name(what: &str, name: &str) -> Result<(), TarnError> {
    if name.is_empty() {
        return Err(TarnError::invalid(format!("{what} name must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TarnError::invalid(format!(
            "{what} name '{name}' is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TarnError::invalid(format!(
            "{what} name '{name}' contains '{bad}': use only letters, digits, '_' and '-'"
        )));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(TarnError::invalid(format!(
            "{what} name '{name}' must start with a letter or a digit"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rockset_names() {
        for n in ["commons", "twitter-kinesis-demo", "a_b-9", "9lives"] {
            validate_name("collection", n).unwrap();
        }
    }

    #[test]
    fn refuses_bad_names_with_reason() {
        let e = validate_name("collection", "has space").unwrap_err();
        assert!(e.message.contains("' '"), "{}", e.message);
        assert!(validate_name("collection", "").is_err());
        assert!(
            validate_name("collection", "_x")
                .unwrap_err()
                .message
                .contains("start")
        );
        assert!(validate_name("collection", &"a".repeat(101)).is_err());
        assert!(validate_name("collection", "a.b").is_err());
    }
}
