//! JSON as QMP puts it on the wire: QEMU's spacing (`{"a": 1, "b": [1, 2]}`) and a streamer
//! that cuts the input into messages at balanced braces, as QEMU's json-streamer does.

use serde_json::Value;

/// Writes `v` the way QEMU's JSON writer does (a space after `:` and `,`).
pub fn to_qemu_json(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v);
    s
}

fn write_value(s: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            s.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&Value::String(k.clone()).to_string());
                s.push_str(": ");
                write_value(s, v);
            }
            s.push('}');
        }
        Value::Array(a) => {
            s.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_value(s, v);
            }
            s.push(']');
        }
        other => s.push_str(&other.to_string()),
    }
}

/// Writes an object whose members must come in the given order (serde_json's map sorts keys;
/// QEMU puts "return" before "id" and "timestamp" before "event").
pub fn ordered_object(members: &[(&str, &Value)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&Value::String((*k).to_string()).to_string());
        s.push_str(": ");
        write_value(&mut s, v);
    }
    s.push('}');
    s
}

/// Upper bounds, like QEMU's, so a client cannot make the monitor buffer without end.
const MAX_MESSAGE: usize = 64 << 20;
const MAX_NESTING: usize = 1024;

/// Splits a byte stream into JSON messages.
#[derive(Default)]
pub struct Streamer {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escape: bool,
}

/// One complete message, parsed or not.
pub type Message = Result<Value, String>;

impl Streamer {
    /// Feeds bytes; returns every message they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.in_string {
                self.buf.push(b);
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                    // A string at top level is a whole (non-object) message already.
                    if self.depth == 0 {
                        out.push(self.take_message());
                    }
                }
                continue;
            }
            match b {
                b'"' => {
                    self.in_string = true;
                    self.buf.push(b);
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    self.buf.push(b);
                    if self.depth > MAX_NESTING {
                        out.push(Err("JSON parse error, nesting too deep".into()));
                        self.reset();
                    }
                }
                b'}' | b']' => {
                    self.buf.push(b);
                    if self.depth == 0 {
                        out.push(Err(self.take_error()));
                    } else {
                        self.depth -= 1;
                        if self.depth == 0 {
                            out.push(self.take_message());
                        }
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' => {
                    // A top-level scalar ends at whitespace.
                    if self.depth == 0 && !self.buf.is_empty() {
                        out.push(self.take_message());
                    } else if self.depth > 0 {
                        self.buf.push(b);
                    }
                }
                _ => self.buf.push(b),
            }
            if self.buf.len() > MAX_MESSAGE {
                out.push(Err("JSON parse error, message too big".into()));
                self.reset();
            }
        }
        out
    }

    fn reset(&mut self) {
        *self = Streamer::default();
    }

    /// The bytes of a message begun but not complete; feeding them to a fresh streamer
    /// recreates this one (a live update hands them to the new process).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    fn take_error(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.reset();
        parse(&text)
            .err()
            .unwrap_or_else(|| "JSON parse error, expecting value".into())
    }

    fn take_message(&mut self) -> Message {
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        self.reset();
        parse(&text)
    }
}

/// Parses one message, naming syntax errors as QEMU's parser does.
fn parse(text: &str) -> Message {
    serde_json::from_str(text).map_err(|e| {
        let m = e.to_string();
        let what = if m.starts_with("key must be a string") {
            match text
                .trim_start_matches(['{', ' '])
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
            {
                Some(word) if !word.is_empty() => format!("invalid keyword '{word}'"),
                _ => "key is not a string in object".to_string(),
            }
        } else if m.starts_with("expected `:`") {
            "missing : in object pair".to_string()
        } else if m.starts_with("expected `,` or `}`") {
            "expecting ',' or '}'".to_string()
        } else if m.starts_with("expected `,` or `]`") {
            "expecting ',' or ']'".to_string()
        } else if m.starts_with("expected ident") {
            let word: String = text
                .chars()
                .skip(e.column().saturating_sub(1))
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            format!("invalid keyword '{word}'")
        } else {
            "expecting value".to_string()
        };
        format!("JSON parse error, {what}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn qemu_spacing() {
        assert_eq!(
            to_qemu_json(&json!({"a": 1, "b": [1, "x"], "c": {}})),
            r#"{"a": 1, "b": [1, "x"], "c": {}}"#
        );
        assert_eq!(
            ordered_object(&[("return", &json!({})), ("id", &json!("x"))]),
            r#"{"return": {}, "id": "x"}"#
        );
    }

    #[test]
    fn splits_messages_across_reads() {
        let mut s = Streamer::default();
        assert!(s
            .feed(br#"{"execute": "a", "arguments": {"s": "}{"#)
            .is_empty());
        let m = s.feed(b"\"}}{\"execute\":\"b\"}\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].as_ref().unwrap()["arguments"]["s"], "}{");
        assert_eq!(m[1].as_ref().unwrap()["execute"], "b");
    }

    #[test]
    fn syntax_errors_use_qemu_wording() {
        let mut s = Streamer::default();
        let m = s.feed(br#"{"execute": }"#);
        assert_eq!(
            m,
            vec![Err("JSON parse error, expecting value".to_string())]
        );
        let m = s.feed(b"{\"execute\" \"x\"}");
        assert_eq!(
            m,
            vec![Err("JSON parse error, missing : in object pair".to_string())]
        );
        // The streamer recovers: a good message after a bad one parses.
        let m = s.feed(b"}{\"execute\": \"x\"}");
        assert!(m[0].is_err());
        assert_eq!(m[1].as_ref().unwrap()["execute"], "x");
        assert_eq!(s.feed(b"1 "), vec![Ok(json!(1))]);
        assert_eq!(s.feed(br#""str""#), vec![Ok(json!("str"))]);
    }
}
