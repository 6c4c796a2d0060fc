//! The one parser of OpenClaw transcript events: a `transcript_events` row
//! and a legacy JSONL line hold the same JSON object, and both become a
//! [`TranscriptEvent`] here.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clawplane_proto::v1::{MessageRole, TokenUsage, TranscriptEvent};
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object with a string \"type\"")]
    NoType,
}

/// Parses one event. `fallback_ms` (the row's `created_at`) dates events
/// without a usable `timestamp`.
pub fn parse(bytes: &[u8], fallback_ms: Option<i64>) -> Result<TranscriptEvent, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|err| ParseError::NotJson(err.to_string()))?;
    let event_type = value.get("type").and_then(Value::as_str).ok_or(ParseError::NoType)?.to_string();
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
    let at_ms = value.get("timestamp").and_then(timestamp_ms).or(fallback_ms);
    let mut event = TranscriptEvent {
        event_id: str_at(&value, "id"),
        parent_event_id: str_at(&value, "parentId"),
        event_type,
        event_at: at_ms.map(|ms| SystemTime::from(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)).into()),
        ..Default::default()
    };
    match event.event_type.as_str() {
        "message" => {
            let message = value.get("message").unwrap_or(&Value::Null);
            event.role = match message.get("role").and_then(Value::as_str) {
                Some("user") => MessageRole::User,
                Some("assistant") => MessageRole::Assistant,
                Some("toolResult") => MessageRole::ToolResult,
                Some("system") => MessageRole::System,
                _ => MessageRole::Unspecified,
            } as i32;
            event.text = text_of(message.get("content").unwrap_or(&Value::Null));
            event.model = str_at(message, "model");
            event.provider = str_at(message, "provider");
            event.stop_reason = str_at(message, "stopReason");
            event.usage = message.get("usage").map(usage);
            // A turn that failed (the model refused or was unreachable) is
            // an assistant message with no content and the error beside
            // it: the transcript shows the error as the answer.
            if event.text.is_empty() && event.role == MessageRole::Assistant as i32 {
                event.text = str_at(message, "errorMessage");
            }
        }
        "model_change" => {
            event.model = str_at(&value, "modelId");
            event.provider = str_at(&value, "provider");
        }
        _ => {}
    }
    event.raw_event_json = text.to_string();
    Ok(event)
}

/// Text parts joined by newlines; other parts (images, tool calls) omitted.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn usage(value: &Value) -> TokenUsage {
    let int = |key: &str| value.get(key).and_then(Value::as_i64).unwrap_or(0).max(0);
    TokenUsage {
        input_tokens: int("input"),
        output_tokens: int("output"),
        cache_read_tokens: int("cacheRead"),
        cache_write_tokens: int("cacheWrite"),
        total_tokens: int("totalTokens"),
        cost: value.get("cost").and_then(|c| c.get("total")).and_then(Value::as_f64).unwrap_or(0.0),
    }
}

/// ISO-8601 (`2026-11-24T09:55:41.064Z`) or epoch milliseconds.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes as OpenClaw 2026.9.6 writes them (see OPENCLAW.md).
    const USER: &str = r#"{"type":"message","id":"30ed23d0","parentId":"d2576f29","timestamp":"2026-11-24T09:55:41.854Z","message":{"role":"user","content":"hello there","timestamp":1795514136355}}"#;
    const ASSISTANT: &str = r#"{"type":"message","id":"a2f41fdc","parentId":"30ed23d0","timestamp":"2026-11-24T09:55:41.942Z","message":{"role":"assistant","content":[{"type":"text","text":"pong"},{"type":"toolCall","name":"x"},{"type":"text","text":"from fake"}],"api":"openai-completions","provider":"local","model":"fake-model","usage":{"input":42,"output":7,"cacheRead":1,"cacheWrite":2,"totalTokens":49,"cost":{"input":0,"output":0,"total":0.0125}},"stopReason":"stop"}}"#;

    #[test]
    fn a_failed_turn_shows_its_error_as_the_answer() {
        let failed = r#"{"type":"message","id":"e1","timestamp":"2026-12-03T04:30:00.000Z","message":{"role":"assistant","content":[],"provider":"saas","model":"m","stopReason":"error","errorMessage":"400 Clawplane: the allowance is used up"}}"#;
        let event = parse(failed.as_bytes(), None).unwrap();
        assert_eq!(
            (event.text.as_str(), event.stop_reason.as_str()),
            ("400 Clawplane: the allowance is used up", "error")
        );
        let answered = failed.replace(r#""content":[]"#, r#""content":[{"type":"text","text":"partial"}]"#);
        assert_eq!(parse(answered.as_bytes(), None).unwrap().text, "partial", "content wins");
    }

    #[test]
    fn user_and_assistant_messages_carry_text_usage_and_time() {
        let user = parse(USER.as_bytes(), None).unwrap();
        assert_eq!(user.event_type, "message");
        assert_eq!(user.role, MessageRole::User as i32);
        assert_eq!(user.text, "hello there");
        assert_eq!(user.event_id, "30ed23d0");
        assert_eq!(user.event_at.unwrap().seconds, 1795514141);
        assert_eq!(user.event_at.unwrap().nanos, 854_000_000);
        assert!(user.usage.is_none());
        assert_eq!(user.raw_event_json, USER);

        let assistant = parse(ASSISTANT.as_bytes(), None).unwrap();
        assert_eq!(assistant.role, MessageRole::Assistant as i32);
        assert_eq!(assistant.text, "pong\nfrom fake");
        assert_eq!((assistant.model.as_str(), assistant.provider.as_str()), ("fake-model", "local"));
        assert_eq!(assistant.stop_reason, "stop");
        let usage = assistant.usage.unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens),
            (42, 7, 1, 2)
        );
        assert_eq!(usage.total_tokens, 49);
        assert!((usage.cost - 0.0125).abs() < 1e-12);
    }

    #[test]
    fn other_events_parse_and_fall_back_to_the_row_time() {
        let change =
            parse(br#"{"type":"model_change","provider":"local","modelId":"m1","id":"e1"}"#, Some(1_000)).unwrap();
        assert_eq!((change.model.as_str(), change.provider.as_str()), ("m1", "local"));
        assert_eq!(change.event_at.unwrap().seconds, 1);
        let header = parse(br#"{"type":"session","version":4,"id":"s1","timestamp":1795514136355}"#, None).unwrap();
        assert_eq!(header.event_type, "session");
        assert_eq!(header.event_at.unwrap().seconds, 1795514136);
    }

    #[test]
    fn malformed_events_are_errors_not_panics() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"\xff\xfe{\"type\":\"message\"}", ParseError::NotUtf8),
            (b"{\"type\":", ParseError::NotJson(String::new())),
            (b"[1,2,3]", ParseError::NoType),
            (b"{\"type\":7}", ParseError::NoType),
            (b"", ParseError::NotJson(String::new())),
        ];
        for (input, expected) in cases {
            let got = parse(input, None).unwrap_err();
            assert_eq!(std::mem::discriminant(&got), std::mem::discriminant(expected), "{input:?}");
        }
        // A message without a role still parses; the control plane refuses it.
        let odd = parse(br#"{"type":"message","message":{"content":42}}"#, None).unwrap();
        assert_eq!((odd.role, odd.text.as_str()), (MessageRole::Unspecified as i32, ""));
    }
}
