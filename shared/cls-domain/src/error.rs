//! The one error a domain parser returns.
//!
//! Parsers do not know which request field they are reading (the same `Email` parser serves a
//! JSON body and a query string), so the error carries only a sentence about the value; the
//! caller at the edge pairs it with the field name when it builds a 400/422 problem.

/// A value did not meet its type's rules. `message` is a human sentence that completes
/// "`<field>` …", e.g. "must be 2-40 characters of a-z, 0-9 and '-'".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// What is wrong with the value, written for the API caller. Never contains the value
    /// itself, because some values (license keys, API keys) are secrets.
    pub message: String,
}

impl FieldError {
    /// Builds an error from a sentence.
    pub fn new(msg: impl Into<String>) -> Self {
        Self {
            message: msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_the_message_alone() {
        let e = FieldError::new("must not be empty");
        assert_eq!(e.to_string(), "must not be empty");
        assert_eq!(e, FieldError::new(String::from("must not be empty")));
    }
}
