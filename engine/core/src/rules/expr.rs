//! The audience expression language: lexer, parser and syntax tree.
//!
//! ```text
//! expr       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | primary
//! primary    := "(" expr ")" | "true" | "false" | behavior | metric | tag | member | context
//!               | recency | preview | offered | claimed | NAME
//! behavior   := ("visited" | "viewed" | "carted" | "favorited" | "purchased")
//!               "(" WINDOW [ "," ("item" | "category") "=" STRING ] ")"
//! metric     := ("purchase_count" | "spend" | "avg_order") "(" WINDOW ")" CMP NUMBER
//! recency    := "days_since" "(" ACTION ")" CMP NUMBER
//! member     := "member_tier" CMP NUMBER
//! tag        := "tag" "(" STRING ")"
//! context    := "ctx." IDENT ( CMP STRING | CMP NUMBER | "in" "[" STRING ("," STRING)* "]" )
//! preview    := "preview_tier" CMP NUMBER
//! offered    := "offered" "(" WINDOW [ "," ("benefit" | "kind" | "banner") "=" STRING ] ")"
//! claimed    := "claimed" "(" WINDOW [ "," ("benefit" | "kind") "=" STRING ] ")"
//! WINDOW     := INTEGER ("h" | "d")              e.g. 12h, 7d, 365d (at most 400d)
//! ACTION     := "visit" | "view" | "cart" | "favorite" | "purchase"   (visit: any of the four)
//! CMP        := "==" | "!=" | "<" | "<=" | ">" | ">="
//! NAME       := another audience of the same file
//! STRING     := '"' ( any character but '"' and '\' | '\"' | '\\' )* '"'
//! ```
//!
//! `ctx.NAME CMP NUMBER` compares the context value as a number and is false
//! when the value is missing or not a finite number; `ctx.NAME CMP STRING`
//! compares text. `preview_tier` is the tier the visitor's history earns
//! under the file's `tiers` block (0 without one; see [`super::tiers`]).
//!
//! Keywords (`and`, `or`, `not`, `true`, `false`) are lower case. An
//! expression is at most [`Limits::max_bytes`] long and nests at most
//! [`Limits::max_depth`] levels of parentheses and `not`; the parser
//! refuses more with an error at the offending token. The parser
//! knows nothing of audiences or the index: it returns a tree whose nodes
//! carry byte spans into the expression text, so that the rule loader can
//! turn any error into a `line:column` of the file.

use std::ops::Range;

use crate::time::Window;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    /// Applies the operator.
    #[inline]
    pub fn test<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            Cmp::Eq => left == right,
            Cmp::Ne => left != right,
            Cmp::Lt => left < right,
            Cmp::Le => left <= right,
            Cmp::Gt => left > right,
            Cmp::Ge => left >= right,
        }
    }
}

/// What a behavior atom looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behavior {
    /// `visited`: any of the four actions.
    Visited,
    /// `viewed`: `view` events.
    Viewed,
    /// `carted`: `cart` events.
    Carted,
    /// `favorited`: `favorite` events.
    Favorited,
    /// `purchased`: `purchase` events.
    Purchased,
}

/// A per-visitor purchase metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Number of distinct purchases.
    PurchaseCount,
    /// Sum of `price * quantity` over distinct purchases.
    Spend,
    /// `spend / purchase_count`; false when there is no purchase.
    AvgOrder,
}

/// An optional filter of a behavior atom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `item="x"`
    Item(String),
    /// `category="c"`
    Category(String),
}

/// The test a context atom applies.
#[derive(Debug, Clone, PartialEq)]
pub enum CtxTest {
    /// `ctx.k CMP "v"`
    Cmp(Cmp, String),
    /// `ctx.k in ["a", "b"]`
    In(Vec<String>),
    /// `ctx.k CMP 99`: numeric; false when the value is not a finite number.
    Num(Cmp, f64),
}

/// A parsed audience expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `true` / `false`
    Const(bool),
    /// `a and b and ...`
    And(Vec<Expr>),
    /// `a or b or ...`
    Or(Vec<Expr>),
    /// `not a`
    Not(Box<Expr>),
    /// `viewed(7d, item="x")`
    Behavior {
        behavior: Behavior,
        window: Window,
        filter: Option<Filter>,
    },
    /// `spend(365d) >= 2000`
    Metric {
        metric: Metric,
        window: Window,
        cmp: Cmp,
        value: f64,
    },
    /// `member_tier >= 4`
    Tier { cmp: Cmp, value: f64 },
    /// `tag("x")`
    Tag(String),
    /// `ctx.region in ["south"]`
    Ctx {
        key: String,
        test: CtxTest,
        span: Range<usize>,
    },
    /// Another audience of the same file.
    Ref { name: String, span: Range<usize> },
    /// `days_since(purchase) >= 45`: whole days of the shop's calendar
    /// since the visitor's latest event of the action (`Visited`: any).
    DaysSince { action: Behavior, cmp: Cmp, value: f64 },
    /// `preview_tier >= 2`
    PreviewTier { cmp: Cmp, value: f64 },
    /// `offered(30d, kind="coupon")`: a decision offered the visitor such an entry.
    Offered {
        window: Window,
        filter: Option<OfferFilter>,
    },
    /// `claimed(90d, benefit="x")`: the visitor was granted such a benefit.
    Claimed {
        window: Window,
        filter: Option<OfferFilter>,
    },
}

/// The optional filter of `offered(...)` and `claimed(...)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OfferFilter {
    /// `benefit="x"`: that benefit.
    Benefit(String),
    /// `kind="coupon"`: any benefit of that kind in the rule file.
    Kind(String),
    /// `banner="x"`: that banner was shown (`offered` only).
    Banner(String),
}

impl Expr {
    /// Calls `f` on every node, depth first (pre-order, children in order).
    ///
    /// A loop over an explicit stack: no recursion, whatever the depth.
    pub fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            f(e);
            match e {
                Expr::And(xs) | Expr::Or(xs) => stack.extend(xs.iter().rev()),
                Expr::Not(x) => stack.push(x),
                _ => {}
            }
        }
    }
}

/// Bounds on one expression's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest expression, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of parentheses and `not` (`not (a)` is 2 levels).
    pub max_depth: usize,
}

/// Default of [`Limits::max_bytes`]: 4 KiB.
pub const DEFAULT_MAX_BYTES: usize = 4 << 10;
/// Default of [`Limits::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 64;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// A syntax error at a byte span of the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset where the problem starts.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Whether `name` is a keyword that cannot name an audience.
pub fn is_keyword(name: &str) -> bool {
    matches!(name, "and" | "or" | "not" | "true" | "false" | "in")
}

/// Whether `name` is a valid audience name.
pub fn is_audience_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !is_keyword(name)
}

/// Parses an audience expression within the default [`Limits`].
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    parse_with(text, &Limits::default())
}

/// Parses an audience expression within `limits`.
pub fn parse_with(text: &str, limits: &Limits) -> Result<Expr, ParseError> {
    if text.len() > limits.max_bytes {
        let mut offset = limits.max_bytes;
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        return Err(ParseError {
            offset,
            message: format!(
                "expression is {} bytes long, more than the limit of {} bytes",
                text.len(),
                limits.max_bytes
            ),
        });
    }
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        end: text.len(),
        depth: 0,
        max_depth: limits.max_depth,
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(t) => Err(parser.error_at(t, format!("unexpected {}", t.describe()))),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A number, possibly with a unit suffix (`7d`, `7x`).
    Number(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Assign,
    Cmp(Cmp),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    span: Range<usize>,
}

impl Token {
    fn describe(&self) -> String {
        match &self.tok {
            Tok::Ident(s) | Tok::Number(s) => format!("`{s}`"),
            Tok::Str(s) => format!("string \"{s}\""),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Assign => "`=`".into(),
            Tok::Cmp(c) => format!("`{}`", cmp_text(*c)),
        }
    }
}

fn cmp_text(c: Cmp) -> &'static str {
    match c {
        Cmp::Eq => "==",
        Cmp::Ne => "!=",
        Cmp::Lt => "<",
        Cmp::Le => "<=",
        Cmp::Gt => ">",
        Cmp::Ge => ">=",
    }
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = |next: u8| bytes.get(i + 1) == Some(&next);
        let (tok, len) = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => (Tok::LParen, 1),
            b')' => (Tok::RParen, 1),
            b'[' => (Tok::LBracket, 1),
            b']' => (Tok::RBracket, 1),
            b',' => (Tok::Comma, 1),
            b'.' => (Tok::Dot, 1),
            b'=' if two(b'=') => (Tok::Cmp(Cmp::Eq), 2),
            b'=' => (Tok::Assign, 1),
            b'!' if two(b'=') => (Tok::Cmp(Cmp::Ne), 2),
            b'<' if two(b'=') => (Tok::Cmp(Cmp::Le), 2),
            b'<' => (Tok::Cmp(Cmp::Lt), 1),
            b'>' if two(b'=') => (Tok::Cmp(Cmp::Ge), 2),
            b'>' => (Tok::Cmp(Cmp::Gt), 1),
            b'"' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match text[j..].chars().next() {
                        None => {
                            return Err(ParseError {
                                offset: start,
                                message: "unterminated string".into(),
                            })
                        }
                        Some('"') => break,
                        Some('\\') => match bytes.get(j + 1) {
                            Some(b'"') => {
                                value.push('"');
                                j += 2;
                            }
                            Some(b'\\') => {
                                value.push('\\');
                                j += 2;
                            }
                            _ => {
                                return Err(ParseError {
                                    offset: j,
                                    message: "invalid escape: only \\\" and \\\\ are allowed in strings".into(),
                                })
                            }
                        },
                        Some(ch) => {
                            value.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                (Tok::Str(value), j + 1 - i)
            }
            b'0'..=b'9' | b'-' => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'.' || bytes[j] == b'_') {
                    j += 1;
                }
                (Tok::Number(text[i..j].to_string()), j - i)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i + 1;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                (Tok::Ident(text[i..j].to_string()), j - i)
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(ParseError {
                    offset: i,
                    message: format!("unexpected character `{ch}`"),
                });
            }
        };
        i += len;
        tokens.push(Token { tok, span: start..i });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    end: usize,
    /// Open parentheses and `not`s around the current position.
    depth: usize,
    max_depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn error_at(&self, t: &Token, message: String) -> ParseError {
        ParseError {
            offset: t.span.start,
            message,
        }
    }

    /// An error at the next token, or at the end of the text.
    fn expected(&self, what: &str) -> ParseError {
        match self.peek() {
            Some(t) => self.error_at(t, format!("expected {what}, found {}", t.describe())),
            None => ParseError {
                offset: self.end,
                message: format!("expected {what}, found the end of the expression"),
            },
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ParseError> {
        if self.eat(&tok) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token { tok: Tok::Ident(w), .. }) if w == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut parts = vec![self.and()?];
        while self.eat_keyword("or") {
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut parts = vec![self.unary()?];
        while self.eat_keyword("and") {
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::And(parts)
        })
    }

    /// Enters one nesting level (a `(` or a `not` at token `at`), or refuses
    /// past the limit: the parser recurses once per level.
    fn enter(&mut self, at: usize) -> Result<(), ParseError> {
        if self.depth >= self.max_depth {
            let offset = self.tokens.get(at).map_or(self.end, |t| t.span.start);
            return Err(ParseError {
                offset,
                message: format!(
                    "expression nested too deeply: more than {} levels of parentheses and `not`",
                    self.max_depth
                ),
            });
        }
        self.depth += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let at = self.at;
        if self.eat_keyword("not") {
            self.enter(at)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let Some(token) = self.next() else {
            self.at -= 1;
            return Err(self.expected("an audience expression"));
        };
        let name = match &token.tok {
            Tok::LParen => {
                self.enter(self.at - 1)?;
                let inner = self.or()?;
                self.expect(Tok::RParen, "`)`")?;
                self.depth -= 1;
                return Ok(inner);
            }
            Tok::Ident(name) => name.clone(),
            _ => {
                self.at -= 1;
                return Err(self.expected("an audience expression"));
            }
        };
        let behavior = match name.as_str() {
            "true" => return Ok(Expr::Const(true)),
            "false" => return Ok(Expr::Const(false)),
            "visited" => Some(Behavior::Visited),
            "viewed" => Some(Behavior::Viewed),
            "carted" => Some(Behavior::Carted),
            "favorited" => Some(Behavior::Favorited),
            "purchased" => Some(Behavior::Purchased),
            "purchase_count" | "spend" | "avg_order" => {
                let metric = match name.as_str() {
                    "spend" => Metric::Spend,
                    "avg_order" => Metric::AvgOrder,
                    _ => Metric::PurchaseCount,
                };
                self.expect(Tok::LParen, &format!("`(` after `{name}`"))?;
                let window = self.window()?;
                self.expect(Tok::RParen, "`)`")?;
                let cmp = self.cmp()?;
                let value = self.number()?;
                return Ok(Expr::Metric {
                    metric,
                    window,
                    cmp,
                    value,
                });
            }
            "member_tier" => {
                let cmp = self.cmp()?;
                let value = self.number()?;
                return Ok(Expr::Tier { cmp, value });
            }
            "tag" => {
                self.expect(Tok::LParen, "`(` after `tag`")?;
                let tag = self.string()?;
                self.expect(Tok::RParen, "`)`")?;
                return Ok(Expr::Tag(tag));
            }
            "ctx" => return self.context(token.span.start),
            "days_since" => return self.days_since(),
            "preview_tier" => {
                let cmp = self.cmp()?;
                let value = self.number()?;
                return Ok(Expr::PreviewTier { cmp, value });
            }
            "offered" | "claimed" => return self.offer(&name),
            "and" | "or" | "not" | "in" => {
                self.at -= 1;
                return Err(self.expected("an audience expression"));
            }
            _ => None,
        };
        if let Some(behavior) = behavior {
            self.expect(Tok::LParen, &format!("`(` after `{name}`"))?;
            let window = self.window()?;
            let mut filter = None;
            if self.eat(&Tok::Comma) {
                let key = self.next();
                let kind = match key.as_ref().map(|t| &t.tok) {
                    Some(Tok::Ident(k)) if k == "item" || k == "category" => k.clone(),
                    _ => {
                        self.at -= 1;
                        return Err(self.expected("`item` or `category`"));
                    }
                };
                self.expect(Tok::Assign, "`=`")?;
                let value = self.string()?;
                filter = Some(if kind == "item" {
                    Filter::Item(value)
                } else {
                    Filter::Category(value)
                });
            }
            self.expect(Tok::RParen, "`)`")?;
            return Ok(Expr::Behavior {
                behavior,
                window,
                filter,
            });
        }
        if self.peek().is_some_and(|t| t.tok == Tok::LParen) {
            return Err(self.error_at(&token, format!("unknown function `{name}`")));
        }
        Ok(Expr::Ref { name, span: token.span })
    }

    /// The arguments of `offered(...)` or `claimed(...)`, after the name.
    fn offer(&mut self, name: &str) -> Result<Expr, ParseError> {
        self.expect(Tok::LParen, &format!("`(` after `{name}`"))?;
        let window = self.window()?;
        let mut filter = None;
        if self.eat(&Tok::Comma) {
            let offered = name == "offered";
            let key = match self.next().map(|t| t.tok) {
                Some(Tok::Ident(k)) if k == "benefit" || k == "kind" || (offered && k == "banner") => k,
                _ => {
                    self.at -= 1;
                    return Err(self.expected(if offered {
                        "`benefit`, `kind` or `banner`"
                    } else {
                        "`benefit` or `kind`"
                    }));
                }
            };
            self.expect(Tok::Assign, "`=`")?;
            let value = self.string()?;
            filter = Some(match key.as_str() {
                "benefit" => OfferFilter::Benefit(value),
                "kind" => OfferFilter::Kind(value),
                _ => OfferFilter::Banner(value),
            });
        }
        self.expect(Tok::RParen, "`)`")?;
        Ok(if name == "offered" {
            Expr::Offered { window, filter }
        } else {
            Expr::Claimed { window, filter }
        })
    }

    fn context(&mut self, start: usize) -> Result<Expr, ParseError> {
        self.expect(Tok::Dot, "`.` after `ctx`")?;
        let key = match self.next() {
            Some(Token { tok: Tok::Ident(k), .. }) => k,
            _ => {
                self.at -= 1;
                return Err(self.expected("a context key such as `region`"));
            }
        };
        let end = self.tokens[self.at - 1].span.end;
        let test = if self.eat_keyword("in") {
            self.expect(Tok::LBracket, "`[`")?;
            let mut values = vec![self.string()?];
            while self.eat(&Tok::Comma) {
                values.push(self.string()?);
            }
            self.expect(Tok::RBracket, "`]`")?;
            CtxTest::In(values)
        } else {
            let cmp = match self.peek() {
                Some(Token { tok: Tok::Cmp(c), .. }) => *c,
                _ => return Err(self.expected("a comparison or `in` after the context key")),
            };
            self.at += 1;
            match self.peek() {
                Some(Token {
                    tok: Tok::Number(_), ..
                }) => CtxTest::Num(cmp, self.number()?),
                _ => CtxTest::Cmp(cmp, self.string()?),
            }
        };
        Ok(Expr::Ctx {
            key,
            test,
            span: start..end,
        })
    }

    /// `days_since` after its name: `( ACTION ) CMP NUMBER`.
    fn days_since(&mut self) -> Result<Expr, ParseError> {
        self.expect(Tok::LParen, "`(` after `days_since`")?;
        let action = match self.next() {
            Some(Token {
                tok: Tok::Ident(word),
                span,
            }) => match action_named(&word) {
                Some(action) => action,
                None => {
                    return Err(ParseError {
                        offset: span.start,
                        message: format!(
                            "unknown action `{word}` in `days_since`: expected visit, view, cart, favorite or purchase"
                        ),
                    })
                }
            },
            Some(Token {
                tok: Tok::Number(_),
                span,
            }) => {
                return Err(ParseError {
                    offset: span.start,
                    message: "days_since takes an action, not a window".into(),
                })
            }
            _ => {
                self.at -= 1;
                return Err(self.expected("an action (visit, view, cart, favorite or purchase)"));
            }
        };
        self.expect(Tok::RParen, "`)`")?;
        let cmp = self.cmp()?;
        let value = self.number()?;
        Ok(Expr::DaysSince { action, cmp, value })
    }

    fn window(&mut self) -> Result<Window, ParseError> {
        match self.next() {
            Some(Token {
                tok: Tok::Number(text) | Tok::Ident(text),
                span,
            }) => Window::parse(&text).map_err(|message| ParseError {
                offset: span.start,
                message,
            }),
            _ => {
                self.at -= 1;
                Err(self.expected("a window such as 7d or 12h"))
            }
        }
    }

    fn cmp(&mut self) -> Result<Cmp, ParseError> {
        match self.peek() {
            Some(Token { tok: Tok::Cmp(c), .. }) => {
                let c = *c;
                self.at += 1;
                Ok(c)
            }
            _ => Err(self.expected("a comparison (==, !=, <, <=, >, >=)")),
        }
    }

    fn number(&mut self) -> Result<f64, ParseError> {
        match self.next() {
            Some(Token {
                tok: Tok::Number(text),
                span,
            }) => text.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or(ParseError {
                offset: span.start,
                message: format!("invalid number `{text}`"),
            }),
            _ => {
                self.at -= 1;
                Err(self.expected("a number"))
            }
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Some(Token { tok: Tok::Str(s), .. }) => Ok(s),
            _ => {
                self.at -= 1;
                Err(self.expected("a string in double quotes"))
            }
        }
    }
}

/// The behavior an action word of `days_since` names.
fn action_named(word: &str) -> Option<Behavior> {
    Some(match word {
        "visit" => Behavior::Visited,
        "view" => Behavior::Viewed,
        "cart" => Behavior::Carted,
        "favorite" => Behavior::Favorited,
        "purchase" => Behavior::Purchased,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Unit;

    fn err(text: &str) -> (usize, String) {
        let e = parse(text).unwrap_err();
        (e.offset, e.message)
    }

    #[test]
    fn precedence_and_atoms() {
        let e = parse("not a and (b or c) or viewed(7d, item=\"x\")").unwrap();
        let Expr::Or(parts) = e else { panic!("{e:?}") };
        assert_eq!(parts.len(), 2);
        assert!(matches!(&parts[0], Expr::And(xs) if matches!(xs[0], Expr::Not(_)) && matches!(xs[1], Expr::Or(_))));
        assert_eq!(
            parts[1],
            Expr::Behavior {
                behavior: Behavior::Viewed,
                window: Window {
                    amount: 7,
                    unit: Unit::Days
                },
                filter: Some(Filter::Item("x".into())),
            }
        );
        assert_eq!(
            parse("spend(365d) >= 2000.5").unwrap(),
            Expr::Metric {
                metric: Metric::Spend,
                window: Window {
                    amount: 365,
                    unit: Unit::Days
                },
                cmp: Cmp::Ge,
                value: 2000.5
            }
        );
        assert_eq!(
            parse("member_tier >= 4").unwrap(),
            Expr::Tier {
                cmp: Cmp::Ge,
                value: 4.0
            }
        );
        assert_eq!(parse("tag(\"a\\\"b\")").unwrap(), Expr::Tag("a\"b".into()));
        assert_eq!(
            parse("ctx.region in [\"south\", \"southwest\"]").unwrap(),
            Expr::Ctx {
                key: "region".into(),
                test: CtxTest::In(vec!["south".into(), "southwest".into()]),
                span: 0..10,
            }
        );
        assert!(matches!(
            parse("ctx.page == \"item\"").unwrap(),
            Expr::Ctx {
                test: CtxTest::Cmp(Cmp::Eq, _),
                ..
            }
        ));
        assert_eq!(parse("true").unwrap(), Expr::Const(true));
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(
            err("viewed(7x)"),
            (
                7,
                "invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h".into()
            )
        );
        assert_eq!(
            err("carted(0d)"),
            (7, "invalid window `0d`: must be at least 1h".into())
        );
        assert_eq!(
            err("carted(401d)"),
            (7, "invalid window `401d`: longer than the maximum of 400d".into())
        );
        assert_eq!(
            err("a and"),
            (
                5,
                "expected an audience expression, found the end of the expression".into()
            )
        );
        assert_eq!(
            err("(a or b"),
            (7, "expected `)`, found the end of the expression".into())
        );
        assert_eq!(err("a b"), (2, "unexpected `b`".into()));
        assert_eq!(err("viewd(7d)"), (0, "unknown function `viewd`".into()));
        assert_eq!(
            err("viewed(7d, sku=\"x\")"),
            (11, "expected `item` or `category`, found `sku`".into())
        );
        assert_eq!(
            err("member_tier 4"),
            (12, "expected a comparison (==, !=, <, <=, >, >=), found `4`".into())
        );
        assert_eq!(
            err("tag(x)"),
            (4, "expected a string in double quotes, found `x`".into())
        );
        assert_eq!(err("tag(\"x)"), (4, "unterminated string".into()));
        assert_eq!(err("a & b"), (2, "unexpected character `&`".into()));
        assert_eq!(
            err("ctx.region"),
            (
                10,
                "expected a comparison or `in` after the context key, found the end of the expression".into()
            )
        );
        assert_eq!(err("spend(30d) > abc"), (13, "expected a number, found `abc`".into()));
    }

    #[test]
    fn offered_and_claimed_parse_with_their_filters() {
        let w = |amount| Window {
            amount,
            unit: Unit::Days,
        };
        assert_eq!(
            parse("offered(30d, kind=\"coupon\")").unwrap(),
            Expr::Offered {
                window: w(30),
                filter: Some(OfferFilter::Kind("coupon".into()))
            }
        );
        assert_eq!(
            parse("offered(7d, banner=\"gold\")").unwrap(),
            Expr::Offered {
                window: w(7),
                filter: Some(OfferFilter::Banner("gold".into()))
            }
        );
        assert_eq!(
            parse("offered(12h)").unwrap(),
            Expr::Offered {
                window: Window {
                    amount: 12,
                    unit: Unit::Hours
                },
                filter: None
            }
        );
        assert_eq!(
            parse("claimed(90d, benefit=\"x\")").unwrap(),
            Expr::Claimed {
                window: w(90),
                filter: Some(OfferFilter::Benefit("x".into()))
            }
        );
        assert_eq!(
            err("offered(7d, item=\"x\")"),
            (12, "expected `benefit`, `kind` or `banner`, found `item`".into())
        );
        assert_eq!(
            err("claimed(7d, banner=\"x\")"),
            (12, "expected `benefit` or `kind`, found `banner`".into())
        );
        assert_eq!(
            err("offered()"),
            (8, "expected a window such as 7d or 12h, found `)`".into())
        );
        assert_eq!(
            err("claimed"),
            (
                7,
                "expected `(` after `claimed`, found the end of the expression".into()
            )
        );
        assert_eq!(
            err("offered(401d)"),
            (8, "invalid window `401d`: longer than the maximum of 400d".into())
        );
        assert_eq!(
            err("claimed(1d, kind=coupon)"),
            (17, "expected a string in double quotes, found `coupon`".into())
        );
        assert_eq!(err("offered(1d kind)"), (11, "expected `)`, found `kind`".into()));
    }

    /// Regression (hardening #1): ~3,000 nested parentheses (or `not`s)
    /// overflowed the stack and aborted the process; past the depth limit
    /// the parser now refuses at the offending token.
    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}a{}", "(".repeat(64), ")".repeat(64));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}a{}", "(".repeat(65), ")".repeat(65));
        assert_eq!(
            err(&deep),
            (
                64,
                "expression nested too deeply: more than 64 levels of parentheses and `not`".into()
            )
        );
        let nots = format!("{}a", "not ".repeat(65));
        assert_eq!(err(&nots).0, 64 * 4);
        let mixed = format!("{}a{}", "not (".repeat(40), ")".repeat(40));
        assert_eq!(err(&mixed).0, 32 * 5);
        // Far past the limit: an error, not a stack overflow.
        for n in [3_000, 100_000] {
            let limits = Limits {
                max_bytes: usize::MAX,
                ..Limits::default()
            };
            let parens = format!("{}a{}", "(".repeat(n), ")".repeat(n));
            assert_eq!(parse_with(&parens, &limits).map_err(|e| e.offset), Err(64));
            let nots = format!("{}a", "not ".repeat(n));
            assert_eq!(parse_with(&nots, &limits).map_err(|e| e.offset), Err(256));
        }
    }

    /// Regression (hardening #1): expressions are bounded in length.
    #[test]
    fn length_is_bounded() {
        let long = format!("a{}", " or a".repeat(1_000));
        assert_eq!(
            err(&long),
            (
                4096,
                "expression is 5001 bytes long, more than the limit of 4096 bytes".into()
            )
        );
        let at_limit = format!("tag(\"{}\")", "x".repeat(4096 - 7));
        assert!(parse(&at_limit).is_ok());
        // The error offset stays on a character boundary.
        let wide = format!("tag(\"{}\")", "é".repeat(3000));
        assert_eq!(err(&wide).0, 4095);
    }

    #[test]
    fn walk_visits_in_order_without_recursion() {
        let e = parse("a and (b or not c) and d").unwrap();
        let mut refs = Vec::new();
        e.walk(&mut |x| {
            if let Expr::Ref { name, .. } = x {
                refs.push(name.clone());
            }
        });
        assert_eq!(refs, ["a", "b", "c", "d"]);
        let mut deep = Expr::Const(true);
        for _ in 0..100_000 {
            deep = Expr::And(vec![deep]);
        }
        let mut n = 0;
        deep.walk(&mut |_| n += 1);
        assert_eq!(n, 100_001);
        // Dropping is recursive: unwind it by hand.
        while let Expr::And(mut xs) = deep {
            deep = xs.pop().unwrap_or(Expr::Const(true));
        }
    }

    #[test]
    fn preview_tier_and_numeric_context() {
        assert_eq!(
            parse("preview_tier >= 2").unwrap(),
            Expr::PreviewTier {
                cmp: Cmp::Ge,
                value: 2.0
            }
        );
        assert_eq!(
            parse("ctx.cart_total < 99.5").unwrap(),
            Expr::Ctx {
                key: "cart_total".into(),
                test: CtxTest::Num(Cmp::Lt, 99.5),
                span: 0..14,
            }
        );
        assert!(matches!(
            parse("ctx.cart_total == \"99\"").unwrap(),
            Expr::Ctx {
                test: CtxTest::Cmp(Cmp::Eq, _),
                ..
            }
        ));
        assert_eq!(
            err("preview_tier 2"),
            (13, "expected a comparison (==, !=, <, <=, >, >=), found `2`".into())
        );
        assert_eq!(err("ctx.x > 1e999"), (8, "invalid number `1e999`".into()));
        assert_eq!(
            err("preview_tier(30d) > 1"),
            (12, "expected a comparison (==, !=, <, <=, >, >=), found `(`".into())
        );
    }

    #[test]
    fn audience_names() {
        assert!(is_audience_name("cart_abandoner"));
        assert!(is_audience_name("_x1"));
        assert!(!is_audience_name("and"));
        assert!(!is_audience_name("Vip"));
        assert!(!is_audience_name("1x"));
        assert!(!is_audience_name(""));
    }

    #[test]
    fn recency_and_order_value_atoms() {
        assert_eq!(
            parse("days_since(purchase) >= 45").unwrap(),
            Expr::DaysSince {
                action: Behavior::Purchased,
                cmp: Cmp::Ge,
                value: 45.0
            }
        );
        assert!(matches!(
            parse("days_since(visit) < 1").unwrap(),
            Expr::DaysSince {
                action: Behavior::Visited,
                ..
            }
        ));
        assert!(matches!(
            parse("avg_order(90d) > 120.5").unwrap(),
            Expr::Metric {
                metric: Metric::AvgOrder,
                value,
                ..
            } if value == 120.5
        ));
        assert_eq!(
            err("days_since(7d) > 1"),
            (11, "days_since takes an action, not a window".into())
        );
        assert_eq!(
            err("days_since(views) > 1"),
            (
                11,
                "unknown action `views` in `days_since`: expected visit, view, cart, favorite or purchase".into()
            )
        );
        assert_eq!(
            err("days_since(\"view\") > 1"),
            (
                11,
                "expected an action (visit, view, cart, favorite or purchase), found string \"view\"".into()
            )
        );
        assert_eq!(
            err("days_since > 1"),
            (11, "expected `(` after `days_since`, found `>`".into())
        );
    }
}
