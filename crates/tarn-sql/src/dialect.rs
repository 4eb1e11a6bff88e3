//! The Rockset SQL dialect for sqlparser: Generic SQL where `user` and other keywords are
//! ordinary names, so `t.user.screen_name` is a path rather than a call to `USER`.

use datafusion::sql::sqlparser::dialect::Dialect;

/// sqlparser's Generic and PostgreSQL dialects parse a bare `user` as the `USER` function;
/// a dialect of our own is not either of them, so the parser treats it as an identifier.
#[derive(Debug, Default, Clone, Copy)]
pub struct RocksetDialect;

impl Dialect for RocksetDialect {
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        ch == '"' || ch == '`'
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch == '_' || ch == '@'
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        ch.is_alphabetic() || ch.is_ascii_digit() || ch == '@' || ch == '$' || ch == '_'
    }
    fn supports_group_by_expr(&self) -> bool {
        true
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        true
    }
    fn supports_window_function_null_treatment_arg(&self) -> bool {
        true
    }
    fn supports_window_clause_named_window_reference(&self) -> bool {
        true
    }
    fn supports_select_wildcard_except(&self) -> bool {
        true
    }
    fn supports_parens_around_table_factor(&self) -> bool {
        true
    }
    fn supports_values_as_table_factor(&self) -> bool {
        true
    }
    fn supports_projection_trailing_commas(&self) -> bool {
        false
    }
    fn supports_nested_comments(&self) -> bool {
        true
    }
    fn supports_struct_literal(&self) -> bool {
        true
    }
    fn supports_lambda_functions(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::parser::Parser;

    #[test]
    fn user_is_a_path_segment() {
        let stmts = Parser::parse_sql(
            &RocksetDialect,
            "SELECT t.user.screen_name FROM \"twitter-kinesis-demo\" t",
        )
        .unwrap();
        let text = stmts[0].to_string();
        assert!(text.contains("t.user.screen_name"), "{text}");
        let generic = Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
            "SELECT t.user.screen_name FROM x t",
        );
        assert!(
            generic.is_err() || !format!("{:?}", generic.unwrap()).contains("CompoundIdentifier")
        );
    }
}
