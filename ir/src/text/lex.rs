//! The lexer of the text format. It turns the whole source into tokens up front; a
//! lexical error becomes an `Error` token at its position and ends the stream, so the
//! parser reports it only when it gets there (errors come out in file order).

/// A token kind.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// A word: keyword, op or attribute name, dtype, symbol, `inf`, `extra.key`.
    Ident(String),
    /// `%name`.
    Local(String),
    /// `@name`.
    Global(String),
    /// Decimal digits (the sign is a separate `-`).
    Int(String),
    /// A float literal's text (digits with `.` or an exponent).
    Float(String),
    /// A string literal, escapes resolved.
    Str(String),
    /// One of `{ } ( ) [ ] < > , : = * + -`.
    Punct(char),
    /// `->`.
    Arrow,
    /// End of input.
    Eof,
    /// A lexical error; the stream ends here.
    Error(String),
}

impl Tok {
    /// How the token is named in "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Local(s) => format!("`%{s}`"),
            Tok::Global(s) => format!("`@{s}`"),
            Tok::Int(s) | Tok::Float(s) => format!("number `{s}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Arrow => "`->`".to_string(),
            Tok::Eof => "end of file".to_string(),
            Tok::Error(m) => m.clone(),
        }
    }
}

/// A token and where it starts (1-based line and column in characters).
#[derive(Clone, Debug)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: u32,
    pub col: u32,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: u32,
    col: u32,
}

impl Lexer<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().copied()
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.chars.clone();
        it.next();
        it.next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    fn skip_trivia(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.bump();
            } else if c == ';' || (c == '/' && self.peek2() == Some('/')) {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else {
                break;
            }
        }
    }

    /// A string literal; the opening quote is next. Errors carry their own position.
    fn string(&mut self) -> Result<String, (String, u32, u32)> {
        let (l0, c0) = (self.line, self.col);
        self.bump();
        let mut s = String::new();
        loop {
            let (l, c) = (self.line, self.col);
            match self.bump() {
                None | Some('\n') => {
                    return Err(("unterminated string".to_string(), l0, c0));
                }
                Some('"') => return Ok(s),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('r') => s.push('\r'),
                    Some('t') => s.push('\t'),
                    Some('0') => s.push('\0'),
                    Some('\\') => s.push('\\'),
                    Some('"') => s.push('"'),
                    Some('\'') => s.push('\''),
                    Some('u') => {
                        if self.bump() != Some('{') {
                            return Err(("expected `{` after `\\u`".to_string(), l, c));
                        }
                        let mut hex = String::new();
                        loop {
                            match self.bump() {
                                Some('}') => break,
                                Some(h) if h.is_ascii_hexdigit() && hex.len() < 6 => hex.push(h),
                                _ => {
                                    return Err((
                                        "bad `\\u{...}` escape: expected 1 to 6 hex digits and `}`"
                                            .to_string(),
                                        l,
                                        c,
                                    ))
                                }
                            }
                        }
                        let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        match ch {
                            Some(ch) => s.push(ch),
                            None => {
                                return Err((
                                    format!("`\\u{{{hex}}}` is not a Unicode scalar value"),
                                    l,
                                    c,
                                ))
                            }
                        }
                    }
                    Some(other) => {
                        return Err((format!("unknown escape `\\{}`", other.escape_debug()), l, c))
                    }
                    None => return Err(("unterminated string".to_string(), l0, c0)),
                },
                Some(ch) => s.push(ch),
            }
        }
    }

    fn number(&mut self) -> Tok {
        let mut text = String::new();
        let mut float = false;
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            text.push(c);
            self.bump();
        }
        if self.peek() == Some('.') && self.peek2().is_some_and(|c| c.is_ascii_digit()) {
            float = true;
            text.push('.');
            self.bump();
            while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                text.push(c);
                self.bump();
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            float = true;
            text.push('e');
            self.bump();
            if let Some(c) = self.peek().filter(|c| *c == '+' || *c == '-') {
                text.push(c);
                self.bump();
            }
            let mut digits = 0;
            while let Some(c) = self.peek().filter(char::is_ascii_digit) {
                text.push(c);
                self.bump();
                digits += 1;
            }
            if digits == 0 {
                return Tok::Error(format!("bad number `{text}`: exponent has no digits"));
            }
        }
        if let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            return Tok::Error(format!("bad number `{text}{c}...`"));
        }
        if float {
            Tok::Float(text)
        } else {
            Tok::Int(text)
        }
    }

    fn name(&mut self, sigil: char) -> Tok {
        if self.peek() == Some('"') {
            return match self.string() {
                Ok(s) if sigil == '%' => Tok::Local(s),
                Ok(s) => Tok::Global(s),
                Err((m, _, _)) => Tok::Error(m),
            };
        }
        let mut s = String::new();
        while let Some(c) = self
            .peek()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            s.push(c);
            self.bump();
        }
        if s.is_empty() {
            return Tok::Error(format!("expected a name after `{sigil}`"));
        }
        if sigil == '%' {
            Tok::Local(s)
        } else {
            Tok::Global(s)
        }
    }
}

/// Splits `src` into tokens. The last token is `Eof` or `Error`.
pub(crate) fn lex(src: &str) -> Vec<Token> {
    let mut lx = Lexer {
        chars: src.chars().peekable(),
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    loop {
        lx.skip_trivia();
        let (line, col) = (lx.line, lx.col);
        let Some(c) = lx.peek() else {
            out.push(Token {
                tok: Tok::Eof,
                line,
                col,
            });
            return out;
        };
        let tok = match c {
            '%' | '@' => {
                lx.bump();
                lx.name(c)
            }
            '"' => match lx.string() {
                Ok(s) => Tok::Str(s),
                Err((m, l, c)) => {
                    out.push(Token {
                        tok: Tok::Error(m),
                        line: l,
                        col: c,
                    });
                    return out;
                }
            },
            '0'..='9' => lx.number(),
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(c) = lx
                    .peek()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
                {
                    s.push(c);
                    lx.bump();
                }
                Tok::Ident(s)
            }
            '-' => {
                lx.bump();
                if lx.peek() == Some('>') {
                    lx.bump();
                    Tok::Arrow
                } else {
                    Tok::Punct('-')
                }
            }
            '{' | '}' | '(' | ')' | '[' | ']' | '<' | '>' | ',' | ':' | '=' | '*' | '+' => {
                lx.bump();
                Tok::Punct(c)
            }
            other => Tok::Error(format!("unexpected character `{}`", other.escape_debug())),
        };
        let stop = matches!(tok, Tok::Error(_));
        out.push(Token { tok, line, col });
        if stop {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        lex(src).into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens_and_positions() {
        let t = lex("%a = add(%b, @w.x) ; c\n  -> 1e-5 -2 \"q\\n\"");
        let got: Vec<(Tok, u32, u32)> = t.into_iter().map(|t| (t.tok, t.line, t.col)).collect();
        assert_eq!(
            got,
            vec![
                (Tok::Local("a".into()), 1, 1),
                (Tok::Punct('='), 1, 4),
                (Tok::Ident("add".into()), 1, 6),
                (Tok::Punct('('), 1, 9),
                (Tok::Local("b".into()), 1, 10),
                (Tok::Punct(','), 1, 12),
                (Tok::Global("w.x".into()), 1, 14),
                (Tok::Punct(')'), 1, 18),
                (Tok::Arrow, 2, 3),
                (Tok::Float("1e-5".into()), 2, 6),
                (Tok::Punct('-'), 2, 11),
                (Tok::Int("2".into()), 2, 12),
                (Tok::Str("q\n".into()), 2, 14),
                (Tok::Eof, 2, 19),
            ]
        );
    }

    #[test]
    fn errors_end_the_stream() {
        assert_eq!(
            kinds("1 \"abc"),
            vec![
                Tok::Int("1".into()),
                Tok::Error("unterminated string".into())
            ]
        );
        assert!(matches!(kinds("12ab")[0], Tok::Error(_)));
        assert!(matches!(kinds("1e+")[0], Tok::Error(_)));
        assert!(matches!(kinds("\"\\u{d800}\"")[0], Tok::Error(_)));
        assert!(matches!(kinds("\"\\q\"")[0], Tok::Error(_)));
        assert!(matches!(kinds("% x")[0], Tok::Error(_)));
        assert!(matches!(kinds("#")[0], Tok::Error(_)));
        assert_eq!(kinds("%\"a b\"")[0], Tok::Local("a b".into()));
        assert_eq!(kinds("\"\\u{1F600}\"")[0], Tok::Str("\u{1F600}".into()));
    }
}
