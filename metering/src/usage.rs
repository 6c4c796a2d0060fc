//! Token counts from the upstream's own usage blocks: the JSON body of a
//! plain answer, or, for a streamed one, a side parser fed each chunk as it
//! passes through (it never holds the stream back).
//!
//! Mapping (as OpenClaw maps them): `input` is the uncached input, so
//! OpenAI's prompt/input count minus its cache reads and writes; Anthropic
//! reports the three apart already.
use serde::Deserialize;

use crate::api::Api;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_write: i64,
}

impl Usage {
    /// What the allowance counts.
    pub fn tokens(&self) -> i64 {
        self.input.saturating_add(self.output)
    }
}

#[derive(Deserialize, Default)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<i64>,
    #[serde(default)]
    cache_write_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<i64>,
    #[serde(default)]
    completion_tokens: Option<i64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<i64>,
    #[serde(default)]
    output_tokens: Option<i64>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<i64>,
    #[serde(default)]
    output_tokens: Option<i64>,
    #[serde(default)]
    cache_read_input_tokens: Option<i64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<i64>,
}

fn count(value: Option<i64>) -> i64 {
    value.unwrap_or(0).max(0)
}

impl From<ChatUsage> for Usage {
    fn from(u: ChatUsage) -> Usage {
        let details = u.prompt_tokens_details.unwrap_or_default();
        let (read, write) = (count(details.cached_tokens), count(details.cache_write_tokens));
        Usage {
            input: (count(u.prompt_tokens) - read - write).max(0),
            output: count(u.completion_tokens),
            cache_read: read,
            cache_write: write,
        }
    }
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Usage {
        let details = u.input_tokens_details.unwrap_or_default();
        let (read, write) = (count(details.cached_tokens), count(details.cache_write_tokens));
        Usage {
            input: (count(u.input_tokens) - read - write).max(0),
            output: count(u.output_tokens),
            cache_read: read,
            cache_write: write,
        }
    }
}

impl Usage {
    /// Anthropic's counts are cumulative; a later block overrides the
    /// fields it carries (`message_delta` has the final output count).
    fn merge_anthropic(&mut self, u: AnthropicUsage) {
        if let Some(v) = u.input_tokens {
            self.input = v.max(0);
        }
        if let Some(v) = u.output_tokens {
            self.output = v.max(0);
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = v.max(0);
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_write = v.max(0);
        }
    }
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ResponsesBody {
    #[serde(default)]
    usage: Option<ResponsesUsage>,
}

/// A responses stream event: `response.completed` (or `.incomplete`,
/// `.failed`) carries the response with its usage.
#[derive(Deserialize)]
struct ResponsesEvent {
    #[serde(default)]
    response: Option<ResponsesBody>,
}

#[derive(Deserialize)]
struct AnthropicBody {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// `message_start` nests the usage in `message`; `message_delta` has it
/// at the top.
#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(default)]
    message: Option<AnthropicBody>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// The usage of a whole (non-streamed) JSON answer, if it has one.
pub(crate) fn from_body(api: Api, body: &[u8]) -> Option<Usage> {
    match api {
        Api::Chat => serde_json::from_slice::<ChatBody>(body).ok()?.usage.map(Usage::from),
        Api::Responses => serde_json::from_slice::<ResponsesBody>(body).ok()?.usage.map(Usage::from),
        Api::Anthropic => {
            let mut usage = Usage::default();
            usage.merge_anthropic(serde_json::from_slice::<AnthropicBody>(body).ok()?.usage?);
            Some(usage)
        }
    }
}

/// One event's data longer than this is passed through unparsed (usage
/// blocks are small; this bounds what one stream holds).
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Reads the usage out of an SSE stream fed chunk by chunk.
pub(crate) struct SseUsage {
    api: Api,
    line: Vec<u8>,
    data: Vec<u8>,
    /// The current event's data outgrew MAX_EVENT_BYTES: skip to its end.
    skipping: bool,
    usage: Usage,
}

impl SseUsage {
    pub(crate) fn new(api: Api) -> Self {
        SseUsage { api, line: Vec::new(), data: Vec::new(), skipping: false, usage: Usage::default() }
    }

    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }

    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.on_line(&chunk[..end]);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..end]);
                self.on_line(&line);
                line.clear();
                self.line = line;
            }
            chunk = &chunk[end + 1..];
        }
        if self.line.len() + chunk.len() > MAX_EVENT_BYTES {
            self.skipping = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(chunk);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.skipping && !self.data.is_empty() {
                self.on_event();
            }
            self.data.clear();
            self.skipping = false;
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else { return };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.skipping || self.data.len() + value.len() > MAX_EVENT_BYTES {
            self.skipping = true;
            self.data.clear();
            return;
        }
        if !self.data.is_empty() {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
    }

    fn on_event(&mut self) {
        // Most events are text deltas: only those that mention a usage
        // block are parsed.
        if !contains(&self.data, b"\"usage\"") {
            return;
        }
        match self.api {
            Api::Chat => {
                if let Some(usage) = serde_json::from_slice::<ChatBody>(&self.data).ok().and_then(|b| b.usage) {
                    self.usage = usage.into();
                }
            }
            Api::Responses => {
                let event = serde_json::from_slice::<ResponsesEvent>(&self.data).ok();
                if let Some(usage) = event.and_then(|e| e.response).and_then(|r| r.usage) {
                    self.usage = usage.into();
                }
            }
            Api::Anthropic => {
                if let Ok(event) = serde_json::from_slice::<AnthropicEvent>(&self.data) {
                    if let Some(usage) = event.message.and_then(|m| m.usage) {
                        self.usage.merge_anthropic(usage);
                    }
                    if let Some(usage) = event.usage {
                        self.usage.merge_anthropic(usage);
                    }
                }
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(api: Api, stream: &str, piece: usize) -> Usage {
        let mut parser = SseUsage::new(api);
        for chunk in stream.as_bytes().chunks(piece) {
            parser.feed(chunk);
        }
        parser.usage()
    }

    #[test]
    fn streams_give_their_usage_however_they_are_cut() {
        let chat = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n\
                    data: [DONE]\n\n";
        let responses = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
                    event: response.completed\r\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":50,\"output_tokens\":7,\"input_tokens_details\":{\"cached_tokens\":8}}}}\r\n\r\n";
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":42,\"cache_read_input_tokens\":8,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n\
                    event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
                    event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";
        let openai = Usage { input: 42, output: 7, cache_read: 8, cache_write: 0 };
        let claude = Usage { input: 42, output: 7, cache_read: 8, cache_write: 3 };
        for piece in [1, 3, 7, 64, 4096] {
            assert_eq!(fed(Api::Chat, chat, piece), openai, "chat in pieces of {piece}");
            assert_eq!(fed(Api::Responses, responses, piece), openai, "responses in pieces of {piece}");
            assert_eq!(fed(Api::Anthropic, anthropic, piece), claude, "anthropic in pieces of {piece}");
        }
    }

    #[test]
    fn bodies_give_their_usage() {
        let chat = br#"{"usage":{"prompt_tokens":10,"completion_tokens":2}}"#;
        assert_eq!(from_body(Api::Chat, chat), Some(Usage { input: 10, output: 2, ..Default::default() }));
        let anthropic = br#"{"usage":{"input_tokens":10,"output_tokens":2,"cache_read_input_tokens":1}}"#;
        assert_eq!(
            from_body(Api::Anthropic, anthropic),
            Some(Usage { input: 10, output: 2, cache_read: 1, cache_write: 0 })
        );
        assert_eq!(from_body(Api::Responses, b"not json"), None);
        assert_eq!(from_body(Api::Chat, b"{}"), None);
    }

    #[test]
    fn an_oversized_event_is_skipped_and_later_ones_still_count() {
        let mut parser = SseUsage::new(Api::Chat);
        parser.feed(b"data: ");
        parser.feed(&vec![b'x'; MAX_EVENT_BYTES + 10]);
        parser.feed(b"\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n");
        assert_eq!(parser.usage(), Usage { input: 3, output: 1, ..Default::default() });
    }
}
