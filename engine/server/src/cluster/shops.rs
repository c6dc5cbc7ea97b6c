//! `--shops`: which shops a replica holds and serves, as names or globs
//! (`*` any run of characters, `?` one character), so that shops can be
//! spread over replica groups.

/// The most patterns `--shops` may list.
pub const MAX_PATTERNS: usize = 256;
/// The longest pattern, in bytes (a shop name is at most 80).
pub const MAX_PATTERN_BYTES: usize = 160;

/// The shops of this replica. The default serves every shop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shops {
    /// `None`: every shop.
    patterns: Option<Vec<Box<str>>>,
}

impl Shops {
    /// Every shop.
    pub fn all() -> Shops {
        Shops::default()
    }

    /// Parses `--shops`: comma-separated names or globs; `*` (or empty)
    /// means every shop.
    pub fn parse(text: &str) -> Result<Shops, String> {
        let patterns: Vec<&str> = text.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if patterns.is_empty() || patterns.contains(&"*") {
            return Ok(Shops::all());
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(format!("--shops: {} patterns, at most {MAX_PATTERNS}", patterns.len()));
        }
        if let Some(p) = patterns.iter().find(|p| p.len() > MAX_PATTERN_BYTES) {
            return Err(format!(
                "--shops: `{}...` is longer than {MAX_PATTERN_BYTES} bytes",
                p.chars().take(20).collect::<String>()
            ));
        }
        if let Some(p) = patterns.iter().find(|p| p.chars().any(char::is_control)) {
            return Err(format!("--shops: {p:?} holds a control character"));
        }
        Ok(Shops {
            patterns: Some(patterns.into_iter().map(Into::into).collect()),
        })
    }

    /// Whether this replica serves `shop`. Linear in the pattern and name
    /// lengths (no backtracking blow-up), for each pattern.
    pub fn serves(&self, shop: &str) -> bool {
        match &self.patterns {
            None => true,
            Some(patterns) => patterns.iter().any(|p| glob_match(p.as_bytes(), shop.as_bytes())),
        }
    }

    /// Whether every shop is served.
    pub fn is_all(&self) -> bool {
        self.patterns.is_none()
    }

    /// The patterns as given (for messages and logs); `*` for every shop.
    pub fn describe(&self) -> String {
        match &self.patterns {
            None => "*".to_string(),
            Some(p) => p.join(","),
        }
    }
}

/// Glob matching with `*` and `?`, by the classic two-pointer walk that
/// remembers only the last `*`: O(pattern x text) at worst, no recursion.
/// Both are UTF-8: `?` and each step of `*` take one whole character (a
/// shop name may hold any character but controls), literals match bytes.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // The bytes of the character starting at `i` (continuation bytes follow).
    let width = |i: usize| 1 + text[i + 1..].iter().take_while(|&&b| b & 0xC0 == 0x80).count();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'?') => {
                p += 1;
                t += width(t);
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + width(st);
                    star = Some((sp, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_globs() {
        let shops = Shops::parse("demo-apparel, fresh-*,t?cket").unwrap();
        assert!(shops.serves("demo-apparel"));
        assert!(!shops.serves("demo-apparel2"));
        assert!(shops.serves("fresh-"));
        assert!(shops.serves("fresh-market"));
        assert!(!shops.serves("fresh"));
        assert!(shops.serves("ticket"));
        assert!(shops.serves("tacket"));
        assert!(!shops.serves("tickets"));
        assert!(!shops.serves(""));
        assert_eq!(shops.describe(), "demo-apparel,fresh-*,t?cket");
    }

    #[test]
    fn star_or_nothing_is_every_shop() {
        for text in ["", "*", " , ", "a,*"] {
            let shops = Shops::parse(text).unwrap();
            assert!(shops.is_all(), "{text:?}");
            assert!(shops.serves("anything"));
        }
    }

    /// `?` is one character, not one byte (a shop name may be `café`).
    #[test]
    fn a_question_mark_is_one_character() {
        let shops = Shops::parse("caf?,?-shop").unwrap();
        assert!(shops.serves("café"));
        assert!(shops.serves("cafe"));
        assert!(!shops.serves("caféé"));
        assert!(shops.serves("日-shop"));
        assert!(!shops.serves("日日-shop"));
        assert!(glob_match("*é".as_bytes(), "thé".as_bytes()));
        assert!(glob_match("a*?c".as_bytes(), "aéc".as_bytes()));
        assert!(!glob_match("a*?c".as_bytes(), "ac".as_bytes()));
    }

    #[test]
    fn globs_in_the_middle_and_repeated() {
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(glob_match(b"a*b*c", b"abc"));
        assert!(!glob_match(b"a*b*c", b"acb"));
        assert!(glob_match(b"**", b""));
        assert!(glob_match(b"*x", b"xxxx"));
        assert!(!glob_match(b"*x", b"xxxy"));
    }

    /// Hostile patterns: many stars against a long near-miss finish (a
    /// backtracking matcher takes exponential time here).
    #[test]
    fn many_stars_do_not_blow_up() {
        let pattern = "*a".repeat(70) + "b";
        let shops = Shops::parse(&pattern[..MAX_PATTERN_BYTES.min(pattern.len())]).unwrap();
        assert!(!shops.serves(&"a".repeat(80)));
    }

    #[test]
    fn bounds_are_errors() {
        assert!(Shops::parse(&"x".repeat(MAX_PATTERN_BYTES + 1))
            .unwrap_err()
            .contains("longer than"));
        let many = (0..=MAX_PATTERNS)
            .map(|i| format!("s{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Shops::parse(&many).unwrap_err().contains("at most"));
        assert!(Shops::parse("a\u{7}b").unwrap_err().contains("control"));
    }
}
