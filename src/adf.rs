//! Atlassian Document Format ↔ plain text.
//!
//! Jira's v3 API carries rich text (descriptions, comment bodies) as ADF; v2 and Salesforce carry
//! plain strings. Plain text maps to paragraphs (split on blank lines) with `hardBreak`s for single
//! newlines, so `text → ADF → text` is the identity. ADF → text keeps the words of every node it
//! knows (lists as `- item`, code blocks verbatim, mentions by their text) and drops formatting.

use serde_json::{json, Value};

/// A document holding `text`; empty text gives an empty document.
pub fn from_text(text: &str) -> Value {
    let normalized = text.replace("\r\n", "\n");
    let content: Vec<Value> = normalized
        .split("\n\n")
        .filter(|p| !p.is_empty())
        .map(|paragraph| {
            let mut inline = Vec::new();
            for (i, line) in paragraph.split('\n').enumerate() {
                if i > 0 {
                    inline.push(json!({ "type": "hardBreak" }));
                }
                // ADF forbids empty text nodes.
                if !line.is_empty() {
                    inline.push(json!({ "type": "text", "text": line }));
                }
            }
            json!({ "type": "paragraph", "content": inline })
        })
        .collect();
    json!({ "version": 1, "type": "doc", "content": content })
}

/// The plain text of a document (or of any ADF node).
pub fn to_text(node: &Value) -> String {
    let mut out = String::new();
    write_block(node, &mut out);
    out.trim_end_matches('\n').to_string()
}

/// Whether `value` has the shape of an ADF document: the three required root keys.
pub fn is_document(value: &Value) -> bool {
    value.get("type").and_then(Value::as_str) == Some("doc")
        && value.get("version").and_then(Value::as_u64) == Some(1)
        && value.get("content").is_some_and(Value::is_array)
}

fn children(node: &Value) -> &[Value] {
    node.get("content")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn write_block(node: &Value, out: &mut String) {
    let kind = node.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "doc" | "blockquote" | "panel" | "table" | "tableRow" | "tableCell" | "tableHeader"
        | "mediaSingle" | "layoutSection" | "layoutColumn" | "expand" => {
            for child in children(node) {
                write_block(child, out);
            }
        }
        "bulletList" | "orderedList" => {
            for (i, item) in children(node).iter().enumerate() {
                let mut text = String::new();
                for child in children(item) {
                    write_block(child, &mut text);
                }
                let marker = if kind == "bulletList" {
                    "- ".to_string()
                } else {
                    format!("{}. ", i + 1)
                };
                if i == 0 {
                    separate(out);
                }
                out.push_str(&marker);
                out.push_str(text.trim_end_matches('\n'));
                out.push('\n');
            }
        }
        "rule" => {
            separate(out);
            out.push_str("---\n");
        }
        "paragraph" | "heading" | "codeBlock" => {
            separate(out);
            for child in children(node) {
                write_inline(child, out);
            }
            out.push('\n');
        }
        _ => write_inline(node, out),
    }
}

/// Paragraph-level blocks are separated by one blank line, matching [`from_text`].
fn separate(out: &mut String) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
}

fn write_inline(node: &Value, out: &mut String) {
    let attr = |name: &str| {
        node.get("attrs")
            .and_then(|a| a.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match node.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => out.push_str(node.get("text").and_then(Value::as_str).unwrap_or("")),
        "hardBreak" => out.push('\n'),
        "mention" | "emoji" | "status" => out.push_str(&attr("text")),
        "inlineCard" => out.push_str(&attr("url")),
        "date" => out.push_str(&attr("timestamp")),
        _ => {
            for child in children(node) {
                write_inline(child, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_survives_a_round_trip_through_adf() {
        for text in [
            "",
            "one line",
            "two\nlines",
            "para one\n\npara two\nwith break",
        ] {
            assert_eq!(to_text(&from_text(text)), text, "{text:?}");
        }
    }

    #[test]
    fn a_document_from_text_has_the_required_root_and_no_empty_text_nodes() {
        let doc = from_text("a\n\nb\n\nc");
        assert!(is_document(&doc));
        assert_eq!(doc["content"].as_array().unwrap().len(), 3);
        let doc = from_text("x\n\ny\n");
        assert!(!doc.to_string().contains(r#""text":"""#));
    }

    #[test]
    fn rich_documents_flatten_to_readable_text() {
        let doc = json!({"version":1,"type":"doc","content":[
            {"type":"heading","attrs":{"level":2},"content":[{"type":"text","text":"Title"}]},
            {"type":"paragraph","content":[
                {"type":"text","text":"Hello "},
                {"type":"text","text":"world","marks":[{"type":"strong"}]},
                {"type":"mention","attrs":{"id":"1","text":"@Ann"}}]},
            {"type":"bulletList","content":[
                {"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"one"}]}]},
                {"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"two"}]}]}]},
            {"type":"codeBlock","content":[{"type":"text","text":"let x = 1;"}]}
        ]});
        assert_eq!(
            to_text(&doc),
            "Title\n\nHello world@Ann\n\n- one\n- two\n\nlet x = 1;"
        );
    }

    #[test]
    fn only_documents_with_the_three_root_keys_count_as_adf() {
        assert!(!is_document(&json!("plain string")));
        assert!(!is_document(&json!({"type":"doc","content":[]})));
        assert!(is_document(&json!({"version":1,"type":"doc","content":[]})));
    }
}
