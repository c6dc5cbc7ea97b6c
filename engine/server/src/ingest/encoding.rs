//! How a behavior message is encoded: JSON or a protobuf `vitrine.v1.Event`,
//! chosen per message by its `content-type` header (`docs/events.md`,
//! "Binary events").
//!
//! The key design choice: the producer or the operator says, Vitrine never
//! guesses. `--kafka-encoding` ([`MessageEncoding`]) says it for the whole
//! topic (`json`, the default, or `proto`), or hands it to each message's
//! `content-type` header (`header`): no header means JSON (every producer
//! written before binary events); a `content-type` Vitrine does not know is
//! rejected as `unknown_content_type` (counted, logged, dead-lettered),
//! never sniffed and tried both ways.
//!
//! Why the topic-wide modes exist: librdkafka parses a consumed message's
//! headers only when asked, and asking costs an allocation even for a
//! message without any (measured with callgrind on the poll thread: ~1,110
//! instructions for a message with no headers, ~2,080 with one, against
//! ~1,750 that a protobuf event saves over JSON in decoding), so reading
//! headers costs about what the binary encoding saves. `json` and `proto`
//! never read them (`docs/events.md`, "Binary events").

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rdkafka::message::Headers;
use vitrine_core::{Event, EventError};

/// The header that names a behavior message's encoding (its key matched
/// ASCII case-insensitively, so `Content-Type` is the same header). When a
/// message carries it more than once, the last one counts (as Kafka's Java
/// client's `lastHeader`).
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The `content-type` of a JSON event (the default: no header is JSON).
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The `content-type` of a protobuf `vitrine.v1.Event`
/// (`application/protobuf` is accepted too).
pub const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

/// The longest `content-type` value quoted back in a rejection message.
const MAX_QUOTED: usize = 64;

// The two enums are the flags' value types, so they live with the flags
// (`cli.rs`, which imports nothing of the crate); their behavior is here.
pub use crate::cli::{Encoding, MessageEncoding};

impl Encoding {
    /// The `content-type` header value producers set for it.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => JSON_CONTENT_TYPE,
            Encoding::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }

    /// Decodes and validates one event (the same validation either way).
    #[inline]
    pub fn decode(self, payload: &[u8]) -> Result<Event<'_>, EventError> {
        match self {
            Encoding::Json => Event::from_json(payload),
            Encoding::Protobuf => Event::from_proto(payload),
        }
    }

    /// The `shop` of an event that failed validation, for the rejection
    /// metrics' shop label (only compared with the served shops).
    pub(crate) fn shop_of(self, payload: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            Encoding::Json => crate::metrics::labels::shop_of(payload),
            Encoding::Protobuf => Event::proto_shop(payload).map(Cow::Borrowed),
        }
    }

    /// The encoding a `content-type` value names: the media type before any
    /// `;` parameters, ASCII case-insensitive; `None` (no header, or a
    /// header without a value) is JSON. `Err` quotes the value (bounded)
    /// for the rejection message.
    pub fn from_content_type(value: Option<&[u8]>) -> Result<Encoding, String> {
        let Some(value) = value else {
            return Ok(Encoding::Json);
        };
        let media = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        if media.eq_ignore_ascii_case(JSON_CONTENT_TYPE.as_bytes()) {
            Ok(Encoding::Json)
        } else if media.eq_ignore_ascii_case(PROTOBUF_CONTENT_TYPE.as_bytes())
            || media.eq_ignore_ascii_case(b"application/protobuf")
        {
            Ok(Encoding::Protobuf)
        } else {
            let shown = String::from_utf8_lossy(&value[..value.len().min(MAX_QUOTED)]);
            let more = if value.len() > MAX_QUOTED { "..." } else { "" };
            Err(format!(
                "header `{CONTENT_TYPE_HEADER}: {}{more}` names no encoding Vitrine reads; send `{JSON_CONTENT_TYPE}` (or no header) or `{PROTOBUF_CONTENT_TYPE}`",
                shown.escape_debug()
            ))
        }
    }
}

/// The value of a message's last `content-type` header (`None` when it has
/// none, or one without a value); `Err` when the headers cannot be read.
///
/// rdkafka reads a header key as UTF-8 and panics on one that is not
/// (`BorrowedHeaders::try_get`), and a producer controls header keys: the
/// lookup runs under `catch_unwind`, so such a message is rejected
/// (`unknown_content_type`) instead of stopping ingest.
pub(crate) fn content_type<H: Headers + ?Sized>(headers: Option<&H>) -> Result<Option<&[u8]>, String> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    catch_unwind(AssertUnwindSafe(|| {
        let mut found = None;
        for i in 0..headers.count() {
            if let Some(h) = headers.try_get(i) {
                if h.key.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) {
                    found = h.value;
                }
            }
        }
        found
    }))
    .map_err(|_| "a header key is not UTF-8; the message's headers cannot be read".to_string())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    use super::*;

    #[test]
    fn content_types_name_an_encoding_or_are_refused() {
        let of = |v: Option<&str>| Encoding::from_content_type(v.map(str::as_bytes));
        assert_eq!(of(None), Ok(Encoding::Json));
        assert_eq!(of(Some("application/json")), Ok(Encoding::Json));
        assert_eq!(of(Some("Application/JSON; charset=utf-8")), Ok(Encoding::Json));
        assert_eq!(of(Some("application/x-protobuf")), Ok(Encoding::Protobuf));
        assert_eq!(
            of(Some(" application/protobuf ;proto=vitrine.v1.Event")),
            Ok(Encoding::Protobuf)
        );
        assert_eq!(
            of(Some("text/plain")),
            Err("header `content-type: text/plain` names no encoding Vitrine reads; send `application/json` (or no header) or `application/x-protobuf`".into())
        );
        assert_eq!(of(Some("")).map_err(|e| e.contains("`content-type: `")), Err(true));
        let long = "x".repeat(1000);
        let e = of(Some(&long)).unwrap_err();
        assert!(e.contains(&format!("{}...`", "x".repeat(MAX_QUOTED))), "{e}");
    }

    #[test]
    fn the_last_content_type_header_counts() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "Content-Type",
                value: Some("text/plain"),
            })
            .insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some("application/json"),
            })
            .insert(Header {
                key: "other",
                value: Some("x"),
            })
            .insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some(PROTOBUF_CONTENT_TYPE),
            });
        assert_eq!(content_type(Some(&headers)), Ok(Some(PROTOBUF_CONTENT_TYPE.as_bytes())));
        let none = OwnedHeaders::new().insert(Header::<&str> {
            key: CONTENT_TYPE_HEADER,
            value: None,
        });
        assert_eq!(content_type(Some(&none)), Ok(None));
        assert_eq!(content_type::<OwnedHeaders>(None), Ok(None));
    }

    /// Headers that panic as rdkafka does on a key that is not UTF-8.
    struct NotUtf8;

    impl Headers for NotUtf8 {
        fn count(&self) -> usize {
            1
        }

        fn try_get(&self, _: usize) -> Option<Header<'_, &[u8]>> {
            // As rdkafka's `CStr::to_str().unwrap()` on a key not UTF-8.
            panic!("called `Result::unwrap()` on an `Err` value: Utf8Error");
        }
    }

    #[test]
    fn unreadable_headers_are_an_error_not_a_panic() {
        assert_eq!(
            content_type(Some(&NotUtf8)),
            Err("a header key is not UTF-8; the message's headers cannot be read".to_string())
        );
    }
}
