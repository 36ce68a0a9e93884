//! SOQL text built from values Tandem did not write: every value goes through [`quote`],
//! [`quote_like`] or [`datetime`]; object and field names, which SOQL cannot escape, must pass
//! [`is_identifier`] / [`is_object_name`] before they are put anywhere near a query or a URL.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// A single-quoted SOQL string literal holding exactly `value`.
pub fn quote(value: &str) -> String {
    escape(value, false)
}

/// A single-quoted literal for the right side of `LIKE`: as [`quote`], and `%` and `_` match
/// themselves instead of acting as wildcards.
pub fn quote_like(value: &str) -> String {
    escape(value, true)
}

fn escape(value: &str, like: bool) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '%' if like => out.push_str("\\%"),
            '_' if like => out.push_str("\\_"),
            // The documented `\uXXXX` escape keeps other control characters from reaching the
            // parser raw; every control character is in the BMP, so four digits suffice.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An unquoted UTC datetime literal in the documented form, `2024-01-15T10:00:00Z`: rounded
/// down to the second, which only widens a `>=` window (the poll's overlap is minutes anyway).
pub fn datetime(ms: i64) -> String {
    // An out-of-range watermark can only come from a corrupt store; the earliest time makes
    // the query wider, never narrower, so no change is skipped.
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A field name or relationship path (`Account.Name`): segments of letters, digits and
/// underscores, each starting with a letter.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.split('.').all(is_segment)
}

/// An object name: one segment (`Case`, `Invoice__c`).
pub fn is_object_name(name: &str) -> bool {
    is_segment(name)
}

fn is_segment(segment: &str) -> bool {
    let mut chars = segment.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_what_could_end_the_literal() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("') OR Id != null --"), r"'\') OR Id != null --'");
        assert_eq!(quote("\") OR 1=1 --"), r#"'\") OR 1=1 --'"#);
        assert_eq!(quote(r"back\slash"), r"'back\\slash'");
        assert_eq!(quote(r"\'"), r"'\\\''");
        assert_eq!(quote("a\nb\rc\td\u{8}e\u{c}f"), r"'a\nb\rc\td\be\ff'");
        assert_eq!(
            quote("nul\u{0}bel\u{7}del\u{7f}"),
            r"'nul\u0000bel\u0007del\u007f'"
        );
        assert_eq!(quote("50%_off"), "'50%_off'");
        assert_eq!(quote("ünïcødé ✓"), "'ünïcødé ✓'");
    }

    #[test]
    fn the_quoted_literal_has_no_unescaped_quote_inside() {
        for hostile in [
            "') OR Id != null --",
            "'",
            "\\'",
            "\\",
            "''",
            "a'b\\'c\\\\'",
        ] {
            let quoted = quote(hostile);
            let inner = &quoted[1..quoted.len() - 1];
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => assert!(chars.next().is_some(), "dangling escape in {quoted}"),
                    '\'' => panic!("unescaped quote in {quoted}"),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn quote_like_also_escapes_wildcards() {
        assert_eq!(quote_like("50%_off"), r"'50\%\_off'");
        assert_eq!(quote_like("it's"), r"'it\'s'");
        assert_eq!(quote_like(r"\%"), r"'\\\%'");
    }

    #[test]
    fn datetime_literals_are_utc_rounded_down_to_the_second() {
        assert_eq!(datetime(1_705_312_800_000), "2024-01-15T10:00:00Z");
        assert_eq!(datetime(1_705_312_800_999), "2024-01-15T10:00:00Z");
        assert_eq!(datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(datetime(i64::MAX), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn identifiers_are_names_and_nothing_else() {
        for good in [
            "Case",
            "Jira_Key__c",
            "Account.Name",
            "Owner.Profile.Name",
            "a1",
        ] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in [
            "",
            "Id, Name",
            "Id FROM Case --",
            "1abc",
            "_x",
            "a..b",
            ".a",
            "a.",
            "Name)",
            "Subj'ect",
            "Näme",
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
        assert!(is_object_name("Invoice__c"));
        assert!(!is_object_name("Account.Name"));
        assert!(!is_object_name("Case/../x"));
    }

    #[test]
    fn the_emulator_reads_back_exactly_the_quoted_value() {
        use crate::sim::salesforce::soql::{parse, Expr, Literal, Op};
        for hostile in [
            "') OR Id != null --",
            "\") OR 1=1 --",
            "it's \"quoted\"",
            r"C:\temp\new",
            "line\nbreak\r\ttab\u{8}\u{c}",
            "nul\u{1}x",
            "50%_off",
        ] {
            let text = format!("SELECT Id FROM Case WHERE Subject = {}", quote(hostile));
            let parsed = parse(&text).expect("the quoted literal parses");
            assert_eq!(
                parsed.filter,
                Some(Expr::Compare {
                    field: "Subject".into(),
                    op: Op::Eq,
                    value: Literal::Str(hostile.into()),
                })
            );
        }
    }
}
