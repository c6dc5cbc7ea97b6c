//! A YAML document as a tree of nodes that remember where they stand in the
//! file, so every rule-file error can name its `line:column`.
//!
//! Built from `yaml-rust2`'s marked event stream, pulled one event at a
//! time (its own `load` recurses once per nesting level): the tree is built
//! on an explicit stack that refuses to nest deeper than a limit. Anchors,
//! aliases and tags have no place in a rule file and are reported as errors
//! by the caller. A file holds exactly one document and only printable text:
//! the scanner stops at a NUL byte and silently ignores what follows, so NUL
//! and other control characters are refused before parsing.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column (in characters) in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

fn pos_of(mark: Marker) -> Pos {
    Pos {
        line: mark.line() as u32,
        column: mark.col() as u32 + 1,
    }
}

/// One node of the document.
#[derive(Debug, Clone)]
pub enum Node {
    /// A scalar; `plain` is false for quoted and block scalars.
    Scalar { value: String, plain: bool, pos: Pos },
    /// A sequence.
    Seq { items: Vec<Node>, pos: Pos },
    /// A mapping, with its keys in file order (duplicates kept for the validator).
    Map { entries: Vec<(Node, Node)>, pos: Pos },
    /// An alias (`*name`), which rule files do not support.
    Alias { pos: Pos },
}

impl Node {
    /// Where the node starts.
    pub fn pos(&self) -> Pos {
        match self {
            Node::Scalar { pos, .. } | Node::Seq { pos, .. } | Node::Map { pos, .. } => *pos,
            Node::Alias { pos } => *pos,
        }
    }

    /// The scalar's text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Whether this is YAML null (`~`, `null` or an empty plain value).
    pub fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, plain: true, .. } if matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// What kind of node this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { .. } => "a scalar",
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
            Node::Alias { .. } => "an alias",
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: Pos,
    /// What it found wrong.
    pub message: String,
}

/// Default of the deepest nesting of lists and mappings [`parse`] accepts.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Parses one YAML document, nested at most [`DEFAULT_MAX_DEPTH`] levels.
/// An empty document is `None`.
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    parse_with(source, DEFAULT_MAX_DEPTH)
}

/// The text without the byte order mark that may open it (YAML allows one
/// there; [`parse`] refuses it, and positions count from after it).
pub fn strip_bom(source: &str) -> &str {
    source.strip_prefix('\u{feff}').unwrap_or(source)
}

/// Parses one YAML document whose lists and mappings nest at most
/// `max_depth` levels. An empty document is `None`.
pub fn parse_with(source: &str, max_depth: usize) -> Result<Option<Node>, SyntaxError> {
    // The scanner places marks at the end of input on a line past the last
    // one: every position is clamped into the text.
    let lines = Lines::new(source);
    parse_events(source, max_depth, &lines).map_err(|e| SyntaxError {
        pos: lines.clamp(e.pos),
        ..e
    })
}

fn parse_events(source: &str, max_depth: usize, lines: &Lines<'_>) -> Result<Option<Node>, SyntaxError> {
    check_characters(source)?;
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        max_depth,
        lines,
    };
    let mut parser = Parser::new_from_str(source);
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| SyntaxError {
            pos: pos_of(*e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        match event {
            Event::StreamEnd => return Ok(builder.root),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        pos: pos_of(mark),
                        message: "a rule file holds one YAML document; a second one starts here".into(),
                    });
                }
            }
            event => builder.on_event(event, mark)?,
        }
    }
}

/// Refuses NUL (the scanner would stop there and ignore the rest), other
/// control characters, a CR that is not part of CR LF (a line break to
/// YAML, which would shift every position after it) and a byte order mark
/// past the start.
fn check_characters(source: &str) -> Result<(), SyntaxError> {
    let (mut line, mut column) = (1u32, 1u32);
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        let problem = match c {
            // YAML reads a lone CR as a line break; positions here count LFs.
            '\r' if chars.peek() != Some(&'\n') => {
                Some("carriage return without a line feed: line breaks are LF or CR LF".to_string())
            }
            '\n' => {
                line = line.saturating_add(1);
                column = 1;
                continue;
            }
            '\0' => Some("NUL byte: a rule file is text, and nothing after a NUL byte would be read".to_string()),
            '\u{feff}' => {
                Some("byte order mark (U+FEFF) inside the file; only the first character may be one".to_string())
            }
            '\t' | '\r' => None,
            c if c.is_control() => Some(format!(
                "control character U+{:04X}: a rule file holds printable text, tabs and line breaks only",
                u32::from(c)
            )),
            _ => None,
        };
        if let Some(message) = problem {
            return Err(SyntaxError {
                pos: Pos { line, column },
                message,
            });
        }
        column = column.saturating_add(1);
    }
    Ok(())
}

enum Frame {
    Seq(Vec<Node>, Pos),
    Map(Vec<(Node, Node)>, Option<Node>, Pos),
}

struct Builder<'l> {
    stack: Vec<Frame>,
    root: Option<Node>,
    max_depth: usize,
    lines: &'l Lines<'l>,
}

impl Builder<'_> {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
            None => self.root = Some(node),
        }
    }
}

impl Builder<'_> {
    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), SyntaxError> {
        if self.stack.len() >= self.max_depth {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "YAML nested too deeply: more than {} levels of lists and mappings",
                    self.max_depth
                ),
            });
        }
        self.stack.push(frame);
        Ok(())
    }

    fn on_event(&mut self, event: Event, mark: Marker) -> Result<(), SyntaxError> {
        let pos = self.lines.clamp(pos_of(mark));
        match event {
            Event::Scalar(value, style, ..) => {
                let plain = style == TScalarStyle::Plain;
                self.push_value(Node::Scalar { value, plain, pos });
            }
            Event::Alias(_) => self.push_value(Node::Alias { pos }),
            Event::SequenceStart(..) => self.open(Frame::Seq(Vec::new(), pos), pos)?,
            Event::MappingStart(..) => self.open(Frame::Map(Vec::new(), None, pos), pos)?,
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(items, pos)) => Node::Seq { items, pos },
                    Some(Frame::Map(entries, _, pos)) => {
                        // A block mapping's start mark lies past its first key.
                        let pos = entries.first().map_or(pos, |(k, _)| k.pos());
                        Node::Map { entries, pos }
                    }
                    None => return Ok(()),
                };
                self.push_value(node);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Line starts of a source text, to turn byte offsets into positions and
/// back in time proportional to one line (constant on an ASCII line), not
/// to the whole text.
#[derive(Debug, Clone)]
pub struct Lines<'s> {
    source: &'s str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
    /// Whether each line is ASCII (a column is then a byte offset).
    ascii: Vec<bool>,
    /// Characters on each line, its line break excluded.
    chars: Vec<u32>,
}

impl<'s> Lines<'s> {
    /// Indexes `source` once.
    pub fn new(source: &'s str) -> Lines<'s> {
        let mut starts = vec![0];
        let mut ascii = Vec::new();
        let mut chars = Vec::new();
        let mut line_ascii = true;
        let mut line_chars = 0u32;
        for (i, b) in source.bytes().enumerate() {
            line_ascii &= b.is_ascii();
            if b == b'\n' {
                starts.push(i + 1);
                ascii.push(line_ascii);
                chars.push(line_chars);
                line_ascii = true;
                line_chars = 0;
            } else if b & 0xC0 != 0x80 {
                line_chars = line_chars.saturating_add(1);
            }
        }
        ascii.push(line_ascii);
        chars.push(line_chars);
        Lines {
            source,
            starts,
            ascii,
            chars,
        }
    }

    /// The position itself if it lies in the text (or just past the end of
    /// a line); else the end of its line, or the end of the text.
    pub fn clamp(&self, pos: Pos) -> Pos {
        let line = (pos.line.max(1) - 1) as usize;
        match self.chars.get(line) {
            None => self.position_of(self.source.len()),
            Some(&n) => Pos {
                line: pos.line.max(1),
                column: pos.column.clamp(1, n.saturating_add(1)),
            },
        }
    }

    /// The byte offset of a position (the end of its line if the column lies past it).
    fn byte_index(&self, pos: Pos) -> Option<usize> {
        let line = (pos.line.max(1) - 1) as usize;
        let start = *self.starts.get(line)?;
        let end = self.starts.get(line + 1).map_or(self.source.len(), |&s| s);
        let col = pos.column.saturating_sub(1) as usize;
        if self.ascii[line] {
            return Some(start + col.min(end - start));
        }
        let rest = &self.source[start..end];
        Some(start + rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i))
    }

    /// The position of a byte offset.
    pub fn position_of(&self, byte: usize) -> Pos {
        let byte = byte.min(self.source.len());
        let line = self.starts.partition_point(|&s| s <= byte) - 1;
        let start = self.starts[line];
        let column = if self.ascii[line] {
            byte - start
        } else {
            let mut b = byte;
            while !self.source.is_char_boundary(b) {
                b -= 1;
            }
            self.source[start..b].chars().count()
        };
        Pos {
            line: u32::try_from(line + 1).unwrap_or(u32::MAX),
            column: u32::try_from(column + 1).unwrap_or(u32::MAX),
        }
    }

    /// Maps a byte offset inside a scalar's value to its position in the file.
    ///
    /// Walks the value and the source side by side from the scalar's start: a
    /// run of whitespace in the value (a folded line break, say) matches a run of
    /// whitespace in the source. Where the two part (an escape sequence in a
    /// quoted scalar), the position of the last matching character is kept.
    pub fn pos_in_scalar(&self, start: Pos, value: &str, offset: usize) -> Pos {
        let Some(mut src_idx) = self.byte_index(start) else {
            return start;
        };
        let src = self.source.as_bytes();
        // Skip an opening quote or a block indicator line (`|`, `>`).
        match src.get(src_idx) {
            Some(b'"' | b'\'') => src_idx += 1,
            Some(b'|' | b'>') => {
                while src_idx < src.len() && src[src_idx] != b'\n' {
                    src_idx += 1;
                }
                while src_idx < src.len() && src[src_idx].is_ascii_whitespace() {
                    src_idx += 1;
                }
            }
            _ => {}
        }
        let val = value.as_bytes();
        let mut v = 0;
        let mut matched = src_idx;
        while v < offset.min(val.len()) {
            if val[v].is_ascii_whitespace() {
                while v < val.len() && val[v].is_ascii_whitespace() {
                    v += 1;
                }
                while src_idx < src.len() && src[src_idx].is_ascii_whitespace() {
                    src_idx += 1;
                }
            } else if src.get(src_idx) == Some(&val[v]) {
                v += 1;
                src_idx += 1;
            } else {
                return self.position_of(matched);
            }
            matched = src_idx;
        }
        self.position_of(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_at(node: &Node, key: &str) -> (String, Pos) {
        if let Node::Map { entries, .. } = node {
            for (k, v) in entries {
                if k.as_str() == Some(key) {
                    if let Node::Scalar { value, pos, .. } = v {
                        return (value.clone(), *pos);
                    }
                }
            }
        }
        panic!("no scalar {key}");
    }

    #[test]
    fn positions_of_offsets_inside_scalars() {
        let src = "a:   visited(7d) and\n     bogus\nb: \"x and é y\"\nc: |\n  one\n  two\n";
        let root = parse(src).unwrap().unwrap();
        let lines = Lines::new(src);
        let pos_in_scalar = |_: &str, pos, value: &str, offset| lines.pos_in_scalar(pos, value, offset);
        let (value, pos) = scalar_at(&root, "a");
        assert_eq!(value, "visited(7d) and bogus");
        assert_eq!(pos, Pos { line: 1, column: 6 });
        assert_eq!(pos_in_scalar(src, pos, &value, 0), Pos { line: 1, column: 6 });
        assert_eq!(pos_in_scalar(src, pos, &value, 16), Pos { line: 2, column: 6 });
        let (value, pos) = scalar_at(&root, "b");
        assert_eq!(
            pos_in_scalar(src, pos, &value, value.find('y').unwrap()),
            Pos { line: 3, column: 13 }
        );
        let (value, pos) = scalar_at(&root, "c");
        assert_eq!(pos_in_scalar(src, pos, &value, 4), Pos { line: 6, column: 3 });
    }

    #[test]
    fn positions_of_bytes() {
        let src = "ab\néx\n\nz";
        let lines = Lines::new(src);
        let at = |b| lines.position_of(b);
        assert_eq!(at(0), Pos { line: 1, column: 1 });
        assert_eq!(at(2), Pos { line: 1, column: 3 });
        assert_eq!(at(3), Pos { line: 2, column: 1 });
        assert_eq!(at(5), Pos { line: 2, column: 2 });
        assert_eq!(at(4), Pos { line: 2, column: 1 }, "inside é: its start");
        assert_eq!(at(8), Pos { line: 4, column: 1 });
        assert_eq!(at(99), Pos { line: 4, column: 2 });
        assert_eq!(lines.byte_index(Pos { line: 2, column: 2 }), Some(5));
        assert_eq!(lines.byte_index(Pos { line: 9, column: 1 }), None);
    }

    fn error_of(src: &str) -> (String, String) {
        let e = parse(src).unwrap_err();
        (e.pos.to_string(), e.message)
    }

    /// Regression (hardening #14): text after a NUL byte was silently
    /// ignored (the scanner stops there); other control characters and a
    /// BOM past the start are refused too.
    #[test]
    fn control_characters_are_refused() {
        let nul = "shop: a\nbanners: []\0\nbenefits: [broken";
        assert_eq!(
            error_of(nul),
            (
                "2:12".into(),
                "NUL byte: a rule file is text, and nothing after a NUL byte would be read".into()
            )
        );
        assert_eq!(
            error_of("a: b\u{1}c"),
            (
                "1:5".into(),
                "control character U+0001: a rule file holds printable text, tabs and line breaks only".into()
            )
        );
        assert_eq!(error_of("a: é\u{7f}").0, "1:5");
        assert_eq!(error_of("a: \"x\u{85}y\"").0, "1:6");
        assert_eq!(error_of("a: b\u{feff}").0, "1:5");
        assert!(parse("a: \"x\ty\"\r\nc: d\n").is_ok());
        assert_eq!(strip_bom("\u{feff}a: b"), "a: b");
        assert_eq!(
            error_of("a: b\r\nc: d\re: f"),
            (
                "2:5".into(),
                "carriage return without a line feed: line breaks are LF or CR LF".into()
            )
        );
    }

    /// Regression (hardening #14): a second YAML document, even a broken
    /// one, was silently ignored.
    #[test]
    fn a_second_document_is_refused() {
        let one_doc = "a rule file holds one YAML document; a second one starts here";
        for (src, at) in [
            ("a: b\n---\nc: [\n", "2:1"),
            ("a: b\n---\nc: d\n", "2:1"),
            ("a: b\n...\ngarbage: [\n", "3:8"),
        ] {
            let (pos, message) = error_of(src);
            assert_eq!(pos, at, "{src:?}");
            assert!(message.ends_with(one_doc), "{message}");
        }
        assert!(parse("---\na: b\n...\n").is_ok());
    }

    /// Regression (hardening #14): nesting is bounded; 100k levels of flow
    /// or block nesting are an error, not a stack overflow.
    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&ok).is_ok());
        let too_deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            error_of(&too_deep),
            (
                "1:65".into(),
                "YAML nested too deeply: more than 64 levels of lists and mappings".into()
            )
        );
        let n = 100_000;
        for src in [
            format!("{}1{}", "[".repeat(n), "]".repeat(n)),
            format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
            format!("{}1", "- ".repeat(n)),
            format!("{}1", "a: ".repeat(n)),
        ] {
            assert!(parse(&src).is_err(), "{}", &src[..20]);
        }
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1\nb: 2").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 2 });
        // At the end of input, not on a line past it.
        assert_eq!(parse("{").unwrap_err().pos, Pos { line: 1, column: 2 });
        let Some(Node::Scalar { pos, .. }) = parse("&x ").unwrap() else {
            panic!()
        };
        assert_eq!(pos, Pos { line: 1, column: 4 });
    }
}
