//! The parser: hand-written recursive descent over the lexer's tokens, driven by the op
//! table (op names, attribute kinds, shape rules). In checked mode (`parse`) every node
//! is typed as it is read: operand count, attributes and the written result types are
//! checked against the op table, so a module that parses is well typed. The lenient
//! mode (`parse_unchecked`) takes result types as written, keeps unknown or mistyped
//! attributes and resolves forward references, so that the verifier can be tested from
//! text. Every error names a position; no input makes the parser panic.

use super::lex::{lex, Tok, Token};
use super::{is_symbol_name, ParseError};
use crate::attr::AttrKind;
use crate::module::{ModelInfo, Module, Node, NodeId, TokenizerSource, ValueDef, ValueId};
use crate::tensor::{round_to, wrap_int};
use crate::{Attr, Attrs, DType, Dim, Op, Shape, Tensor, TensorType, WeightData};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

type Result<T> = std::result::Result<T, ParseError>;

/// Parses a module and checks every node against the op table: operand count,
/// attributes (names, kinds, required ones), and the written result types against the
/// op's inference rule. `file` is used in error messages only.
pub fn parse(src: &str, file: &str) -> Result<Module> {
    Parser::new(src, file, true).module()
}

/// Parses a module without the op-table checks (operand counts, attributes, result
/// types) and allowing operands defined later in the graph. For testing the verifier
/// from text; anything else should use [`parse`].
pub fn parse_unchecked(src: &str, file: &str) -> Result<Module> {
    Parser::new(src, file, false).module()
}

/// [`parse`] for raw file bytes: invalid UTF-8 is a parse error at the first bad byte.
pub fn parse_bytes(src: &[u8], file: &str) -> Result<Module> {
    match std::str::from_utf8(src) {
        Ok(s) => parse(s, file),
        Err(e) => {
            let good = src.get(..e.valid_up_to()).unwrap_or_default();
            let good = std::str::from_utf8(good).unwrap_or_default();
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            let byte = src.get(e.valid_up_to()).copied().unwrap_or_default();
            Err(ParseError {
                file: file.to_string(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
                col: u32::try_from(col).unwrap_or(u32::MAX),
                msg: format!("invalid UTF-8 (byte 0x{byte:02x}); llmc text files are UTF-8"),
            })
        }
    }
}

/// Parses one tensor literal (`dense<f32[2]: [1.0, 2.5]>`) making up all of `src`.
pub fn parse_tensor(src: &str, file: &str) -> Result<Tensor> {
    let mut p = Parser::new(src, file, true);
    let t = p.tensor()?;
    p.expect_eof()?;
    Ok(t)
}

/// A value reference as written.
#[derive(Clone, Debug)]
enum ValRef {
    Local(String),
    Global(String),
}

impl ValRef {
    fn show(&self) -> String {
        match self {
            ValRef::Local(n) => format!("%{n}"),
            ValRef::Global(n) => format!("@{n}"),
        }
    }
}

/// A number literal.
enum Num {
    I(i64),
    F(f64),
}

/// Names in scope: value id and where it was defined.
type Scope = HashMap<String, (ValueId, (u32, u32))>;

struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    file: &'a str,
    checked: bool,
    eof: Token,
}

impl<'a> Parser<'a> {
    fn new(src: &str, file: &'a str, checked: bool) -> Parser<'a> {
        Parser {
            toks: lex(src),
            pos: 0,
            file,
            checked,
            eof: Token {
                tok: Tok::Eof,
                line: 1,
                col: 1,
            },
        }
    }

    // ----- token plumbing -----

    fn tok(&self) -> &Token {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .unwrap_or(&self.eof)
    }

    fn peek2(&self) -> &Tok {
        match self.toks.get(self.pos + 1) {
            Some(t) => &t.tok,
            None => &self.eof.tok,
        }
    }

    /// Returns the current token and moves on (never past `Eof`/`Error`).
    fn next(&mut self) -> Token {
        let t = self.tok().clone();
        if !matches!(t.tok, Tok::Eof | Tok::Error(_)) {
            self.pos += 1;
        }
        t
    }

    fn err_at(&self, line: u32, col: u32, msg: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line,
            col,
            msg: msg.into(),
        }
    }

    fn err(&self, t: &Token, msg: impl Into<String>) -> ParseError {
        self.err_at(t.line, t.col, msg)
    }

    /// "expected WHAT, found X" at the current token (or the lexical error there).
    fn unexpected(&self, what: &str) -> ParseError {
        let t = self.tok();
        match &t.tok {
            Tok::Error(m) => self.err(t, m.clone()),
            other => self.err(t, format!("expected {what}, found {}", other.describe())),
        }
    }

    fn is_punct(&self, c: char) -> bool {
        self.tok().tok == Tok::Punct(c)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<Token> {
        if self.is_punct(c) {
            Ok(self.next())
        } else {
            Err(self.unexpected(&format!("`{c}`")))
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok().tok, Tok::Ident(s) if s == kw)
    }

    fn expect_kw(&mut self, kw: &str) -> Result<Token> {
        if self.is_kw(kw) {
            Ok(self.next())
        } else {
            Err(self.unexpected(&format!("`{kw}`")))
        }
    }

    fn expect_eof(&mut self) -> Result<()> {
        if self.tok().tok == Tok::Eof {
            Ok(())
        } else {
            Err(self.unexpected("end of input"))
        }
    }

    fn global(&mut self, what: &str) -> Result<(String, Token)> {
        match &self.tok().tok {
            Tok::Global(n) => {
                let n = n.clone();
                Ok((n, self.next()))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn local(&mut self, what: &str) -> Result<(String, Token)> {
        match &self.tok().tok {
            Tok::Local(n) => {
                let n = n.clone();
                Ok((n, self.next()))
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn valref(&mut self, what: &str) -> Result<(ValRef, Token)> {
        let r = match &self.tok().tok {
            Tok::Local(n) => ValRef::Local(n.clone()),
            Tok::Global(n) => ValRef::Global(n.clone()),
            _ => return Err(self.unexpected(what)),
        };
        Ok((r, self.next()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        match &self.tok().tok {
            Tok::Str(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    // ----- literals -----

    /// A number: optional `-`, then an integer, a float, `inf` or `nan`.
    fn number(&mut self) -> Result<Num> {
        let start = self.tok().clone();
        let neg = self.eat_punct('-');
        let t = self.tok().clone();
        let n = match &t.tok {
            Tok::Int(s) => Num::I(self.int_value(&start, s, neg)?),
            Tok::Float(s) => {
                let v: f64 = s
                    .parse()
                    .map_err(|_| self.err(&t, format!("bad float `{s}`")))?;
                if v.is_infinite() {
                    return Err(self.err(&start, format!("float `{s}` is out of range")));
                }
                Num::F(if neg { -v } else { v })
            }
            Tok::Ident(s) if s == "inf" => Num::F(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }),
            Tok::Ident(s) if s == "nan" => Num::F(f64::NAN),
            _ => return Err(self.unexpected("a number")),
        };
        self.next();
        Ok(n)
    }

    fn int_value(&self, at: &Token, digits: &str, neg: bool) -> Result<i64> {
        let sign = if neg { "-" } else { "" };
        let out_of_range = || self.err(at, format!("integer `{sign}{digits}` is out of range"));
        let mag: u128 = digits.parse().map_err(|_| out_of_range())?;
        let v = i128::try_from(mag).map_err(|_| out_of_range())?;
        let v = if neg { -v } else { v };
        i64::try_from(v).map_err(|_| out_of_range())
    }

    fn int(&mut self, what: &str) -> Result<i64> {
        let start = self.tok().clone();
        match self.number() {
            Ok(Num::I(v)) => Ok(v),
            Ok(Num::F(_)) => Err(self.err(&start, format!("expected {what}, found a float"))),
            Err(_) if !matches!(start.tok, Tok::Int(_) | Tok::Punct('-')) => {
                Err(self.unexpected(what))
            }
            Err(e) => Err(e),
        }
    }

    /// `[i, j, ...]` of integers.
    fn int_list(&mut self, what: &str) -> Result<Vec<i64>> {
        self.expect_punct('[')?;
        let mut v = Vec::new();
        if self.eat_punct(']') {
            return Ok(v);
        }
        loop {
            v.push(self.int(what)?);
            if !self.eat_punct(',') {
                self.expect_punct(']')?;
                return Ok(v);
            }
        }
    }

    /// One dim: a polynomial with integer coefficients over symbols
    /// (`past + seq`, `576*batch*seq`, `seq - 1`, `-1`).
    fn dim(&mut self) -> Result<Dim> {
        let start = self.tok().clone();
        let overflow = |p: &Self| p.err(&start, "dim is out of range");
        let mut terms: BTreeMap<Vec<String>, i128> = BTreeMap::new();
        let mut sign: i128 = if self.eat_punct('-') { -1 } else { 1 };
        loop {
            let (mono, coef) = self.dim_term()?;
            let c = coef.checked_mul(sign).ok_or_else(|| overflow(self))?;
            let e = terms.entry(mono).or_insert(0);
            *e = e.checked_add(c).ok_or_else(|| overflow(self))?;
            if self.eat_punct('+') {
                sign = 1;
            } else if self.eat_punct('-') {
                sign = -1;
            } else {
                break;
            }
        }
        let mut d = Dim::c(0);
        for (mono, c) in terms {
            if c == 0 {
                continue;
            }
            let c = i64::try_from(c).map_err(|_| overflow(self))?;
            let mut t = Dim::c(c);
            for s in &mono {
                t = t.mul(&Dim::sym(s));
            }
            // Distinct monomials: adding never combines (or overflows) coefficients.
            d = d.add(&t);
        }
        Ok(d)
    }

    /// A product of integers and symbols.
    fn dim_term(&mut self) -> Result<(Vec<String>, i128)> {
        let mut coef: i128 = 1;
        let mut mono = Vec::new();
        loop {
            let t = self.tok().clone();
            match &t.tok {
                Tok::Int(s) => {
                    let v: u128 = s
                        .parse()
                        .ok()
                        .filter(|v| *v <= 1u128 << 64)
                        .ok_or_else(|| self.err(&t, "dim is out of range"))?;
                    coef = coef
                        .checked_mul(v as i128)
                        .filter(|c| c.unsigned_abs() <= 1u128 << 64)
                        .ok_or_else(|| self.err(&t, "dim is out of range"))?;
                }
                Tok::Ident(s) if is_symbol_name(s) => mono.push(s.clone()),
                Tok::Ident(s) => {
                    return Err(self.err(&t, format!("`{s}` cannot be a dim symbol")));
                }
                Tok::Float(s) => {
                    return Err(self.err(
                        &t,
                        format!("a dim is an integer or a symbol, found number `{s}`"),
                    ));
                }
                _ => return Err(self.unexpected("a dim (an integer or a symbol)")),
            }
            self.next();
            if !self.eat_punct('*') {
                break;
            }
        }
        mono.sort();
        Ok((mono, coef))
    }

    /// `[DIM, ...]`.
    fn dims(&mut self) -> Result<Vec<Dim>> {
        self.expect_punct('[')?;
        let mut v = Vec::new();
        if self.eat_punct(']') {
            return Ok(v);
        }
        loop {
            v.push(self.dim()?);
            if !self.eat_punct(',') {
                self.expect_punct(']')?;
                return Ok(v);
            }
        }
    }

    /// `DTYPE[DIMS]`.
    fn ty(&mut self) -> Result<TensorType> {
        let t = self.tok().clone();
        let dtype = match &t.tok {
            Tok::Ident(s) => {
                DType::from_name(s).ok_or_else(|| self.err(&t, format!("unknown dtype `{s}`")))?
            }
            _ => return Err(self.unexpected("a type such as `f32[2, 3]`")),
        };
        self.next();
        let dims = self.dims()?;
        Ok(TensorType::new(dtype, Shape(dims)))
    }

    /// A value's type: in checked mode its constant dims must not be negative (shape
    /// rules may assume that).
    fn value_ty(&mut self) -> Result<TensorType> {
        let t = self.tok().clone();
        let ty = self.ty()?;
        if self.checked
            && ty
                .shape
                .0
                .iter()
                .any(|d| d.as_const().is_some_and(|c| c < 0))
        {
            return Err(self.err(&t, format!("type {ty} has a negative dim")));
        }
        Ok(ty)
    }

    /// `dense<DTYPE[DIMS]: [v, ...]>`.
    fn tensor(&mut self) -> Result<Tensor> {
        let start = self.expect_kw("dense")?;
        self.expect_punct('<')?;
        let tyt = self.tok().clone();
        let ty = self.ty()?;
        let dtype = ty.dtype;
        if dtype.is_quantized() {
            return Err(self.err(
                &tyt,
                format!("a dense tensor cannot be of block format {dtype}"),
            ));
        }
        let shape: Option<Vec<usize>> = ty
            .shape
            .0
            .iter()
            .map(|d| d.as_const().and_then(|c| usize::try_from(c).ok()))
            .collect();
        let shape = shape.ok_or_else(|| {
            self.err(
                &tyt,
                format!("a dense tensor needs constant dims >= 0, got {}", ty.shape),
            )
        })?;
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(&tyt, format!("dense tensor {ty} is too large")))?;
        self.expect_punct(':')?;
        self.expect_punct('[')?;
        let mut fs: Vec<f64> = Vec::new();
        let mut is: Vec<i64> = Vec::new();
        let mut count = 0usize;
        if !self.eat_punct(']') {
            loop {
                let at = self.tok().clone();
                let n = self.number()?;
                count += 1;
                if count > numel {
                    return Err(
                        self.err(&at, format!("too many values: dense<{ty}> holds {numel}"))
                    );
                }
                match (n, dtype.is_float()) {
                    (Num::F(v), true) => {
                        let r = round_to(dtype, v);
                        if r.is_infinite() && v.is_finite() {
                            return Err(self.err(&at, format!("{v:?} overflows {dtype}")));
                        }
                        fs.push(r);
                    }
                    (Num::I(v), true) => fs.push(round_to(dtype, v as f64)),
                    (Num::I(v), false) => {
                        if wrap_int(dtype, v) != v {
                            return Err(self.err(&at, format!("{v} is out of range for {dtype}")));
                        }
                        is.push(v);
                    }
                    (Num::F(_), false) => {
                        return Err(self.err(&at, format!("a {dtype} tensor holds integers")));
                    }
                }
                if !self.eat_punct(',') {
                    self.expect_punct(']')?;
                    break;
                }
            }
        }
        self.expect_punct('>')?;
        if count != numel {
            return Err(self.err(
                &start,
                format!("dense<{ty}> needs {numel} value(s), got {count}"),
            ));
        }
        Ok(if dtype.is_float() {
            Tensor::from_f64(dtype, shape, fs)
        } else {
            Tensor::from_i64(dtype, shape, is)
        })
    }

    /// An attribute literal, read by its syntax (a list of constant ints is `Ints`; the
    /// caller converts it when the op table asks for `Floats` or a `Shape`).
    fn attr_value(&mut self) -> Result<Attr> {
        let t = self.tok().clone();
        match &t.tok {
            Tok::Str(s) => {
                let s = s.clone();
                self.next();
                Ok(Attr::Str(s))
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.next();
                Ok(Attr::Bool(s == "true"))
            }
            Tok::Ident(s) if s == "dense" => Ok(Attr::Tensor(self.tensor()?)),
            Tok::Ident(s) if s == "inf" || s == "nan" => self.number().map(num_attr),
            Tok::Ident(s) => match DType::from_name(s) {
                Some(d) => {
                    self.next();
                    Ok(Attr::Type(d))
                }
                None => Err(self.err(&t, format!("`{s}` is not an attribute value"))),
            },
            Tok::Punct('[') => self.list(),
            Tok::Punct('-') | Tok::Int(_) | Tok::Float(_) => self.number().map(num_attr),
            _ => Err(self.unexpected("an attribute value")),
        }
    }

    /// `[...]`: floats if any item is a float, a shape if any item is symbolic, else ints.
    fn list(&mut self) -> Result<Attr> {
        let start = self.expect_punct('[')?;
        let mut floats: Vec<f64> = Vec::new();
        let mut dims: Vec<Dim> = Vec::new();
        let mut any_float = false;
        if !self.eat_punct(']') {
            loop {
                let float_word = |t: &Tok| {
                    matches!(t, Tok::Float(_))
                        || matches!(t, Tok::Ident(s) if s == "inf" || s == "nan")
                };
                let is_float =
                    float_word(&self.tok().tok) || (self.is_punct('-') && float_word(self.peek2()));
                if is_float {
                    any_float = true;
                    if let Num::F(v) = self.number()? {
                        floats.push(v);
                    }
                } else {
                    let d = self.dim()?;
                    floats.push(d.as_const().unwrap_or_default() as f64);
                    dims.push(d);
                }
                if !self.eat_punct(',') {
                    self.expect_punct(']')?;
                    break;
                }
            }
        }
        let consts: Option<Vec<i64>> = dims.iter().map(Dim::as_const).collect();
        match (any_float, consts) {
            (true, Some(_)) => Ok(Attr::Floats(floats)),
            (true, None) => Err(self.err(&start, "a list mixes floats and symbolic dims")),
            (false, Some(v)) => Ok(Attr::Ints(v)),
            (false, None) => Ok(Attr::Shape(Shape(dims))),
        }
    }

    // ----- the module -----

    fn module(mut self) -> Result<Module> {
        self.expect_kw("module")?;
        let (mname, _) = self.global("the module name `@name`")?;
        self.expect_punct('{')?;
        let mut m = Module::new(&mname);
        if self.is_kw("info") {
            m.info = self.info()?;
        }
        let mut weights: Scope = HashMap::new();
        while self.is_kw("weight") {
            self.next();
            let (wname, wt) = self.global("a weight name `@name`")?;
            if let Some((_, (l, c))) = weights.get(&wname) {
                return Err(self.err(
                    &wt,
                    format!("weight @{wname} is already declared at {l}:{c}"),
                ));
            }
            self.expect_punct(':')?;
            let tyt = self.tok().clone();
            let ty = self.ty()?;
            let constant = ty
                .shape
                .0
                .iter()
                .all(|d| d.as_const().is_some_and(|c| c >= 0));
            if self.checked && !constant {
                return Err(self.err(
                    &tyt,
                    format!(
                        "weight @{wname} needs a constant shape (dims >= 0), got {}",
                        ty.shape
                    ),
                ));
            }
            let v = m.add_weight(&wname, ty.dtype, ty.shape, WeightData::None);
            weights.insert(wname, (v, (wt.line, wt.col)));
        }
        self.expect_kw("graph")?;
        self.graph(&mut m, &weights)?;
        self.expect_punct('}')?;
        if self.tok().tok != Tok::Eof {
            return Err(self.unexpected("end of file after the module's `}`"));
        }
        Ok(m)
    }

    fn info(&mut self) -> Result<ModelInfo> {
        self.expect_kw("info")?;
        self.expect_punct('{')?;
        let mut info = ModelInfo::default();
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let t = self.tok().clone();
            let key = match &t.tok {
                Tok::Punct('}') => {
                    self.next();
                    return Ok(info);
                }
                Tok::Ident(k) => k.clone(),
                _ => return Err(self.unexpected("an info field or `}`")),
            };
            self.next();
            let extra = match key.strip_prefix("extra.") {
                Some("") => Some(self.string("a quoted key after `extra.`")?),
                Some(k) => Some(k.to_string()),
                None => None,
            };
            let field = match &extra {
                Some(k) => format!("extra.{k}"),
                None => key.clone(),
            };
            if !seen.insert(field.clone()) {
                return Err(self.err(&t, format!("info field `{field}` is given twice")));
            }
            self.expect_punct('=')?;
            if let Some(k) = extra {
                let v = self.string("a string")?;
                info.extra.insert(k, v);
                continue;
            }
            match key.as_str() {
                "architecture" => info.architecture = self.string("a string")?,
                "context_length" => info.context_length = Some(self.int("an integer")?),
                "tokenizer" => {
                    let kt = self.tok().clone();
                    let kind = match &kt.tok {
                        Tok::Ident(s) if s == "gguf" || s == "hf" => s.clone(),
                        _ => return Err(self.unexpected("`gguf(\"PATH\")` or `hf(\"PATH\")`")),
                    };
                    self.next();
                    self.expect_punct('(')?;
                    let path = PathBuf::from(self.string("a path string")?);
                    self.expect_punct(')')?;
                    info.tokenizer = if kind == "gguf" {
                        TokenizerSource::Gguf(path)
                    } else {
                        TokenizerSource::HfJson(path)
                    };
                }
                "bos_token" => info.bos_token = Some(self.int("an integer")?),
                "eos_tokens" => info.eos_tokens = self.int_list("an integer")?,
                "chat_template" => info.chat_template = Some(self.string("a string")?),
                _ => {
                    return Err(self.err(
                        &t,
                        format!(
                            "unknown info field `{key}` (known: architecture, context_length, \
                             tokenizer, bos_token, eos_tokens, chat_template, extra.KEY)"
                        ),
                    ))
                }
            }
        }
    }

    fn lookup(&self, r: &ValRef, locals: &Scope, weights: &Scope) -> Option<ValueId> {
        match r {
            ValRef::Local(n) => locals.get(n).map(|x| x.0),
            ValRef::Global(n) => weights.get(n).map(|x| x.0),
        }
    }

    fn undefined(&self, r: &ValRef, t: &Token) -> ParseError {
        match r {
            ValRef::Local(_) => self.err(t, format!("undefined value {}", r.show())),
            ValRef::Global(_) => self.err(t, format!("undefined weight {}", r.show())),
        }
    }

    fn graph(&mut self, m: &mut Module, weights: &Scope) -> Result<()> {
        let (gname, _) = self.global("the graph name `@name`")?;
        m.graph.name = gname;
        let mut locals: Scope = HashMap::new();
        self.expect_punct('(')?;
        if !self.eat_punct(')') {
            loop {
                let (n, t) = self.local("a graph input `%name`")?;
                self.check_new(&locals, &n, &t)?;
                self.expect_punct(':')?;
                let ty = self.value_ty()?;
                let v = m.graph.add_input(&n, ty);
                locals.insert(n, (v, (t.line, t.col)));
                if !self.eat_punct(',') {
                    self.expect_punct(')')?;
                    break;
                }
            }
        }
        if self.tok().tok != Tok::Arrow {
            return Err(self.unexpected("`->`"));
        }
        self.next();
        self.expect_punct('(')?;
        let mut sig: Vec<(ValRef, Token, TensorType, Token)> = Vec::new();
        if !self.eat_punct(')') {
            loop {
                let (r, t) = self.valref("a graph output `%name: TYPE`")?;
                self.expect_punct(':')?;
                let tyt = self.tok().clone();
                let ty = self.ty()?;
                sig.push((r, t, ty, tyt));
                if !self.eat_punct(',') {
                    self.expect_punct(')')?;
                    break;
                }
            }
        }
        self.expect_punct('{')?;
        let mut pending: Vec<(usize, usize, ValRef, Token)> = Vec::new();
        while matches!(self.tok().tok, Tok::Local(_)) {
            self.node(m, &mut locals, weights, &mut pending)?;
        }
        let ret = self.expect_kw("return")?;
        let mut rets: Vec<(ValRef, Token)> = Vec::new();
        if !self.is_punct('}') {
            loop {
                rets.push(self.valref("a value to return")?);
                if !self.eat_punct(',') {
                    break;
                }
            }
        }
        self.expect_punct('}')?;
        for (n, i, r, t) in pending {
            let v = self
                .lookup(&r, &locals, weights)
                .ok_or_else(|| self.undefined(&r, &t))?;
            if let Some(slot) = m.graph.nodes.get_mut(n).and_then(|n| n.inputs.get_mut(i)) {
                *slot = v;
            }
        }
        if rets.len() != sig.len() {
            return Err(self.err(
                &ret,
                format!(
                    "`return` gives {} value(s), the graph signature declares {}",
                    rets.len(),
                    sig.len()
                ),
            ));
        }
        for ((r, rt), (s, st, sty, sty_tok)) in rets.iter().zip(&sig) {
            if r.show() != s.show() {
                return Err(self.err(
                    rt,
                    format!(
                        "`return {}` does not match the signature's output {}",
                        r.show(),
                        s.show()
                    ),
                ));
            }
            let v = self
                .lookup(s, &locals, weights)
                .ok_or_else(|| self.undefined(s, st))?;
            let have = m.graph.ty(v);
            if have != sty {
                return Err(self.err(
                    sty_tok,
                    format!(
                        "graph output {}: the signature says {sty}, the value is {have}",
                        s.show()
                    ),
                ));
            }
            m.graph.outputs.push(v);
        }
        Ok(())
    }

    fn check_new(&self, locals: &Scope, n: &str, t: &Token) -> Result<()> {
        match locals.get(n) {
            Some((_, (l, c))) => {
                Err(self.err(t, format!("value %{n} is already defined at {l}:{c}")))
            }
            None => Ok(()),
        }
    }

    fn node(
        &mut self,
        m: &mut Module,
        locals: &mut Scope,
        weights: &Scope,
        pending: &mut Vec<(usize, usize, ValRef, Token)>,
    ) -> Result<()> {
        let mut results: Vec<(String, Token)> = Vec::new();
        loop {
            let (n, t) = self.local("a result name `%name`")?;
            self.check_new(locals, &n, &t)?;
            if let Some((_, first)) = results.iter().find(|(r, _)| *r == n) {
                return Err(self.err(
                    &t,
                    format!(
                        "value %{n} is already defined at {}:{}",
                        first.line, first.col
                    ),
                ));
            }
            results.push((n, t));
            if !self.eat_punct(',') {
                break;
            }
        }
        self.expect_punct('=')?;
        let op_tok = self.tok().clone();
        let op = match &op_tok.tok {
            Tok::Ident(s) => {
                Op::from_name(s).ok_or_else(|| self.err(&op_tok, format!("unknown op `{s}`")))?
            }
            _ => return Err(self.unexpected("an op name")),
        };
        self.next();
        let label = format!(
            "{} = {op}",
            results
                .iter()
                .map(|(n, _)| format!("%{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.expect_punct('(')?;
        let mut operands: Vec<(ValRef, Token)> = Vec::new();
        if !self.eat_punct(')') {
            loop {
                operands.push(self.valref("an operand (`%name` or `@weight`)")?);
                if !self.eat_punct(',') {
                    self.expect_punct(')')?;
                    break;
                }
            }
        }
        let attrs = if self.eat_punct('{') {
            self.attrs(op)?
        } else {
            Attrs::new()
        };
        self.expect_punct(':')?;
        let mut tys: Vec<(TensorType, Token)> = Vec::new();
        loop {
            let t = self.tok().clone();
            tys.push((self.value_ty()?, t));
            if !self.eat_punct(',') {
                break;
            }
        }
        if tys.len() != results.len() {
            return Err(self.err(
                &op_tok,
                format!(
                    "{label}: {} result(s) named but {} type(s) written",
                    results.len(),
                    tys.len()
                ),
            ));
        }
        let nid = NodeId(u32::try_from(m.graph.nodes.len()).unwrap_or(u32::MAX));
        let mut inputs = Vec::with_capacity(operands.len());
        for (i, (r, t)) in operands.into_iter().enumerate() {
            match self.lookup(&r, locals, weights) {
                Some(v) => inputs.push(v),
                None if !self.checked && matches!(r, ValRef::Local(_)) => {
                    inputs.push(ValueId(u32::MAX));
                    pending.push((m.graph.nodes.len(), i, r, t));
                }
                None => return Err(self.undefined(&r, &t)),
            }
        }
        if self.checked {
            let d = op.def();
            if !d.arity.accepts(inputs.len()) {
                return Err(self.err(
                    &op_tok,
                    format!(
                        "{label}: `{op}` takes {} operand(s), got {}",
                        d.arity,
                        inputs.len()
                    ),
                ));
            }
            for s in d.attrs {
                if s.required && !attrs.contains_key(s.name) {
                    return Err(self.err(
                        &op_tok,
                        format!(
                            "{label}: missing attribute `{}` ({})",
                            s.name,
                            kind_name(s.kind)
                        ),
                    ));
                }
            }
            let in_tys: Vec<&TensorType> = inputs.iter().map(|&v| m.graph.ty(v)).collect();
            let inferred = op
                .infer(&in_tys, &attrs)
                .map_err(|e| self.err(&op_tok, format!("{label}: {}", e.msg)))?;
            if inferred.len() != tys.len() {
                return Err(self.err(
                    &op_tok,
                    format!(
                        "{label}: `{op}` gives {} result(s), {} written",
                        inferred.len(),
                        tys.len()
                    ),
                ));
            }
            for (((ty, t), want), (n, _)) in tys.iter().zip(&inferred).zip(&results) {
                if ty != want {
                    return Err(self.err(
                        t,
                        format!("{label}: result %{n} is written {ty}, but `{op}` gives {want}"),
                    ));
                }
            }
        }
        let mut outputs = Vec::with_capacity(results.len());
        for (i, ((n, t), (ty, _))) in results.into_iter().zip(tys).enumerate() {
            let v = m.graph.add_value(n.clone(), ty, ValueDef::Node(nid, i));
            outputs.push(v);
            locals.insert(n, (v, (t.line, t.col)));
        }
        m.graph.nodes.push(Node {
            op,
            inputs,
            outputs,
            attrs,
        });
        Ok(())
    }

    /// `name = value, ...}` (the `{` is consumed).
    fn attrs(&mut self, op: Op) -> Result<Attrs> {
        let mut attrs = Attrs::new();
        if self.eat_punct('}') {
            return Ok(attrs);
        }
        loop {
            let nt = self.tok().clone();
            let key = match &nt.tok {
                Tok::Ident(k) => k.clone(),
                _ => return Err(self.unexpected("an attribute name")),
            };
            self.next();
            if attrs.contains_key(&key) {
                return Err(self.err(&nt, format!("attribute `{key}` is given twice")));
            }
            let spec = op.def().attrs.iter().find(|s| s.name == key);
            if self.checked && spec.is_none() {
                let known: Vec<&str> = op.def().attrs.iter().map(|s| s.name).collect();
                let known = if known.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("it takes {}", known.join(", "))
                };
                return Err(self.err(&nt, format!("`{op}` has no attribute `{key}` ({known})")));
            }
            self.expect_punct('=')?;
            let vt = self.tok().clone();
            let mut val = self.attr_value()?;
            if let Some(s) = spec {
                if val.kind() != s.kind {
                    match coerce(&val, s.kind) {
                        Some(c) => val = c,
                        None if self.checked => {
                            return Err(self.err(
                                &vt,
                                format!(
                                    "attribute `{key}` of `{op}` is {}, found {}",
                                    kind_name(s.kind),
                                    kind_name(val.kind())
                                ),
                            ))
                        }
                        None => {}
                    }
                }
            }
            attrs.insert(key, val);
            if !self.eat_punct(',') {
                self.expect_punct('}')?;
                return Ok(attrs);
            }
        }
    }
}

fn num_attr(n: Num) -> Attr {
    match n {
        Num::I(v) => Attr::Int(v),
        Num::F(v) => Attr::Float(v),
    }
}

/// Reads a literal as the kind the op table declares, where the text is the same: an
/// integer as a float, a list of integers as floats or as a shape.
fn coerce(a: &Attr, kind: AttrKind) -> Option<Attr> {
    match (a, kind) {
        (Attr::Int(v), AttrKind::Float) => Some(Attr::Float(*v as f64)),
        (Attr::Ints(v), AttrKind::Floats) => {
            Some(Attr::Floats(v.iter().map(|&x| x as f64).collect()))
        }
        (Attr::Ints(v), AttrKind::Shape) => Some(Attr::Shape(Shape::of(v))),
        _ => None,
    }
}

/// An attribute kind in words, for messages.
pub(crate) fn kind_name(k: AttrKind) -> &'static str {
    match k {
        AttrKind::Int => "an integer",
        AttrKind::Float => "a float",
        AttrKind::Bool => "a bool",
        AttrKind::Str => "a string",
        AttrKind::Ints => "a list of integers",
        AttrKind::Floats => "a list of floats",
        AttrKind::Type => "a dtype",
        AttrKind::Shape => "a shape",
        AttrKind::Tensor => "a dense tensor",
    }
}
