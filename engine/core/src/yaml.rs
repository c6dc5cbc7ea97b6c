//! A YAML document as a tree of nodes that remember where they stand in the
//! file, so every rule-file error can name its `line:column`.
//!
//! Built from `yaml-rust2`'s marked event stream. Anchors, aliases and tags
//! have no place in a rule file and are reported as errors by the caller.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
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

/// Parses one YAML document. An empty document is `None`.
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: pos_of(*e.marker()),
        message: format!("invalid YAML: {}", e.info()),
    })?;
    Ok(builder.root)
}

enum Frame {
    Seq(Vec<Node>, Pos),
    Map(Vec<(Node, Node)>, Option<Node>, Pos),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
}

impl Builder {
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

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = pos_of(mark);
        match event {
            Event::Scalar(value, style, ..) => {
                let plain = style == TScalarStyle::Plain;
                self.push_value(Node::Scalar { value, plain, pos });
            }
            Event::Alias(_) => self.push_value(Node::Alias { pos }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq(Vec::new(), pos)),
            Event::MappingStart(..) => self.stack.push(Frame::Map(Vec::new(), None, pos)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq(items, pos)) => Node::Seq { items, pos },
                    Some(Frame::Map(entries, _, pos)) => {
                        // A block mapping's start mark lies past its first key.
                        let pos = entries.first().map_or(pos, |(k, _)| k.pos());
                        Node::Map { entries, pos }
                    }
                    None => return,
                };
                self.push_value(node);
            }
            _ => {}
        }
    }
}

/// Maps a byte offset inside a scalar's value to its position in the file.
///
/// Walks the value and the source side by side from the scalar's start: a
/// run of whitespace in the value (a folded line break, say) matches a run of
/// whitespace in the source. Where the two part (an escape sequence in a
/// quoted scalar), the position of the last matching character is kept.
pub fn pos_in_scalar(source: &str, start: Pos, value: &str, offset: usize) -> Pos {
    let Some(mut src_idx) = byte_index(source, start) else {
        return start;
    };
    let src = source.as_bytes();
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
            return position_of(source, matched);
        }
        matched = src_idx;
    }
    position_of(source, matched)
}

fn byte_index(source: &str, pos: Pos) -> Option<usize> {
    let line_start = if pos.line <= 1 {
        0
    } else {
        source
            .match_indices('\n')
            .nth(pos.line as usize - 2)
            .map(|(i, _)| i + 1)?
    };
    let rest = &source[line_start..];
    let col = pos.column.saturating_sub(1) as usize;
    Some(line_start + rest.char_indices().nth(col).map_or(rest.len(), |(i, _)| i))
}

fn position_of(source: &str, byte: usize) -> Pos {
    let before = &source[..byte.min(source.len())];
    let line = before.matches('\n').count() as u32 + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos {
        line,
        column: before[line_start..].chars().count() as u32 + 1,
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
    fn syntax_errors_have_positions() {
        let err = parse("a: [1\nb: 2").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, column: 2 });
    }
}
