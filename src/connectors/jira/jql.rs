//! Putting values into JQL safely. Every value the client writes into a query goes through
//! [`quote`] (exact values: dates, keys, names) or [`quote_text`] (text search with `~`); the
//! operator's flow filter is the only raw JQL, and it is always wrapped in parentheses.

/// A double-quoted JQL string literal holding exactly `value`.
///
/// JQL strings take backslash escapes for `"` and `\`, and `\n`, `\t`, `\r` for control
/// characters (a raw newline inside a literal is refused by some JQL parsers). Other control
/// characters have no JQL escape; they are written as `\uXXXX` (unconfirmed: Atlassian documents
/// unicode escapes for JQL reserved characters, not for control characters in general).
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters Jira's text-search syntax (Lucene's query parser) reserves. `/` is not in
/// Atlassian's list but starts a regular expression in the Lucene versions Jira has used, so it
/// is escaped too: escaping a character that needs none is harmless.
const TEXT_SPECIAL: &[char] = &[
    '+', '-', '&', '|', '!', '(', ')', '{', '}', '[', ']', '^', '~', '*', '?', '\\', ':', '"', '/',
];

/// A JQL string literal for the right-hand side of `~` that searches for `value` as a literal
/// phrase: text-search operators and wildcards in it are escaped, the whole is wrapped in a
/// phrase (`"…"`), and the result is quoted as a JQL string. A text search is never exact (Jira
/// drops punctuation and case when indexing), so callers compare the values they get back.
pub fn quote_text(value: &str) -> String {
    let mut phrase = String::with_capacity(value.len() + 8);
    phrase.push('"');
    for c in value.chars() {
        if TEXT_SPECIAL.contains(&c) {
            phrase.push('\\');
        }
        // Text search splits words on control characters anyway, and the caller compares
        // exact values itself, so a space searches the same without needing a `\u` escape.
        if c.is_control() && !matches!(c, '\n' | '\t' | '\r') {
            phrase.push(' ');
        } else {
            phrase.push(c);
        }
    }
    phrase.push('"');
    quote(&phrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_what_would_end_or_break_the_literal() {
        assert_eq!(quote("SUP"), r#""SUP""#);
        assert_eq!(quote(r#"") OR 1=1 --"#), r#""\") OR 1=1 --""#);
        assert_eq!(quote(r#"a"b"#), r#""a\"b""#);
        assert_eq!(quote(r"back\slash\"), r#""back\\slash\\""#);
        assert_eq!(quote("two\nlines\tand\r"), r#""two\nlines\tand\r""#);
        assert_eq!(quote("bell\u{7}"), r#""bell\u0007""#);
        assert_eq!(quote("wild*card?"), r#""wild*card?""#);
        assert_eq!(quote(""), r#""""#);
    }

    /// Undo [`quote`] the way a JQL parser does, to check the literal holds the exact value.
    fn unquote(literal: &str) -> String {
        let inner = literal
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .expect("a quoted literal");
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                panic!("unescaped quote inside {literal}");
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next().expect("complete escape") {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                other => out.push(other),
            }
        }
        out
    }

    #[test]
    fn quoted_hostile_values_round_trip() {
        for value in [
            r#"") OR 1=1 --"#,
            r#"""""#,
            r"\\\",
            "new\nline",
            r#"\" OR project = SUP OR summary ~ ""#,
            "*?*",
        ] {
            assert_eq!(unquote(&quote(value)), value);
        }
    }

    #[test]
    fn quote_text_makes_a_literal_phrase() {
        assert_eq!(quote_text("500A"), r#""\"500A\"""#);
        // The text-search layer sees `"\) OR 1=1 \-\-"` after JQL unescaping.
        assert_eq!(
            unquote(&quote_text(r#"") OR 1=1 --"#)),
            r#""\"\) OR 1=1 \-\-""#
        );
        assert_eq!(unquote(&quote_text("a*b?c")), r#""a\*b\?c""#);
        assert_eq!(unquote(&quote_text(r"back\slash")), r#""back\\slash""#);
        assert_eq!(unquote(&quote_text("x:y/z~1^2")), r#""x\:y\/z\~1\^2""#);
        assert_eq!(unquote(&quote_text("two\nlines")), "\"two\nlines\"");
        assert_eq!(quote_text("bell\u{7}"), r#""\"bell \"""#);
        // Nothing in the text can close the phrase or the JQL string early.
        let hostile = quote_text(r#"" OR key = SUP-1 OR summary ~ ""#);
        assert!(hostile.starts_with(r#""\""#) && hostile.ends_with(r#"\"""#));
        assert_eq!(
            unquote(&hostile),
            r#""\" OR key = SUP\-1 OR summary \~ \"""#
        );
    }
}
