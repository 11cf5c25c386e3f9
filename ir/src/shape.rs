//! Shapes whose dims are constants or expressions over named symbols (`batch`, `seq`,
//! `past`). LLM graphs need more than bare symbols: a KV cache concat gives
//! `past + seq`, a head split reshape gives `batch*seq`, so a dim is a small polynomial
//! with integer coefficients kept in canonical form, which makes equality structural.

use std::collections::BTreeMap;
use std::fmt;

/// A product of symbols (sorted, with repetition), e.g. `batch*seq`. Empty = constant 1.
pub type Monomial = Vec<String>;

/// A dim: a polynomial over symbols with integer coefficients, canonical (no zero
/// coefficients, monomials sorted).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Dim {
    terms: BTreeMap<Monomial, i64>,
}

impl Dim {
    /// A constant dim.
    pub fn c(v: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if v != 0 {
            terms.insert(Vec::new(), v);
        }
        Dim { terms }
    }

    /// A named symbol.
    pub fn sym(name: &str) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![name.to_string()], 1);
        Dim { terms }
    }

    /// The constant value, if this dim has no symbols.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// The terms: each monomial (sorted symbols, repeated for powers; empty for the
    /// constant term) with its nonzero coefficient, in canonical order.
    pub fn terms(&self) -> impl Iterator<Item = (&Monomial, i64)> {
        self.terms.iter().map(|(m, c)| (m, *c))
    }

    /// True if the dim is a known constant.
    pub fn is_const(&self) -> bool {
        self.as_const().is_some()
    }

    /// The symbols this dim mentions.
    pub fn symbols(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .terms
            .keys()
            .flat_map(|m| m.iter().map(|s| s.as_str()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Evaluates the dim with the given symbol values; `None` if a symbol is unbound.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut t = *c;
            for s in m {
                t = t.checked_mul(env(s)?)?;
            }
            total = total.checked_add(t)?;
        }
        Some(total)
    }

    /// `self + other`.
    pub fn add(&self, other: &Dim) -> Dim {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e += c;
            if *e == 0 {
                terms.remove(m);
            }
        }
        Dim { terms }
    }

    /// `self - other`.
    pub fn sub(&self, other: &Dim) -> Dim {
        self.add(&other.mul(&Dim::c(-1)))
    }

    /// `self * other`.
    pub fn mul(&self, other: &Dim) -> Dim {
        let mut terms: BTreeMap<Monomial, i64> = BTreeMap::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                let e = terms.entry(m.clone()).or_insert(0);
                *e += ca * cb;
                if *e == 0 {
                    terms.remove(&m);
                }
            }
        }
        Dim { terms }
    }

    /// `self + other`, or `None` when a coefficient overflows i64.
    pub fn checked_add(&self, other: &Dim) -> Option<Dim> {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.checked_add(*c)?;
            if *e == 0 {
                terms.remove(m);
            }
        }
        Some(Dim { terms })
    }

    /// `self - other`, or `None` when a coefficient overflows i64.
    pub fn checked_sub(&self, other: &Dim) -> Option<Dim> {
        self.checked_add(&other.checked_mul(&Dim::c(-1))?)
    }

    /// `self * other`, or `None` when a coefficient overflows i64.
    pub fn checked_mul(&self, other: &Dim) -> Option<Dim> {
        let mut terms: BTreeMap<Monomial, i64> = BTreeMap::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                m.sort();
                let e = terms.entry(m.clone()).or_insert(0);
                *e = e.checked_add(ca.checked_mul(*cb)?)?;
                if *e == 0 {
                    terms.remove(&m);
                }
            }
        }
        Some(Dim { terms })
    }

    /// Exact division: `Some(q)` with `q * other == self`, when `other` is a nonzero
    /// constant dividing every coefficient, a single monomial dividing every term, or a
    /// polynomial of which `self` is a constant multiple.
    pub fn div_exact(&self, other: &Dim) -> Option<Dim> {
        if let Some(c) = other.as_const() {
            if c == 0 {
                return None;
            }
            let mut terms = BTreeMap::new();
            for (m, v) in &self.terms {
                if v % c != 0 {
                    return None;
                }
                terms.insert(m.clone(), v / c);
            }
            return Some(Dim { terms });
        }
        if other.terms.len() != 1 {
            // A constant multiple of a polynomial (`64*a + 64*b` over `16*a + 16*b`).
            let (om, oc) = other.terms.iter().next()?;
            let v = *self.terms.get(om)?;
            if v % oc != 0 {
                return None;
            }
            let q = Dim::c(v / oc);
            return (other.checked_mul(&q)? == *self).then_some(q);
        }
        let (om, oc) = other.terms.iter().next()?;
        let mut terms = BTreeMap::new();
        for (m, v) in &self.terms {
            if v % oc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in om {
                let i = rest.iter().position(|x| x == s)?;
                rest.remove(i);
            }
            terms.insert(rest, v / oc);
        }
        Some(Dim { terms })
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::c(v)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Symbolic terms first (in canonical order), constant last: `past + seq + 1`.
        let mut first = true;
        let mut items: Vec<(&Monomial, &i64)> =
            self.terms.iter().filter(|(m, _)| !m.is_empty()).collect();
        if let Some(c) = self.terms.get_key_value(&Vec::new()) {
            items.push(c);
        }
        for (m, c) in items {
            let (neg, mag) = if *c < 0 {
                (true, -(*c as i128))
            } else {
                (false, *c as i128)
            };
            if first {
                if neg {
                    f.write_str("-")?;
                }
            } else {
                f.write_str(if neg { " - " } else { " + " })?;
            }
            first = false;
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                f.write_str(&m.join("*"))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A tensor shape.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of constant dims.
    pub fn of(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::c(d)).collect())
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// All dims as constants, if they are.
    pub fn as_consts(&self) -> Option<Vec<i64>> {
        self.0.iter().map(|d| d.as_const()).collect()
    }

    /// The element count as a dim expression.
    pub fn numel(&self) -> Dim {
        self.0.iter().fold(Dim::c(1), |acc, d| acc.mul(d))
    }

    /// The element count, or `None` when a coefficient overflows i64.
    pub fn checked_numel(&self) -> Option<Dim> {
        self.0
            .iter()
            .try_fold(Dim::c(1), |acc, d| acc.checked_mul(d))
    }

    /// Resolves a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        norm_axis(axis, self.rank())
    }

    /// Numpy-style broadcast of two shapes; `None` if the dims disagree.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let n = self.rank().max(other.rank());
        let one = Dim::c(1);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let a = if i + self.rank() >= n {
                &self.0[i + self.rank() - n]
            } else {
                &one
            };
            let b = if i + other.rank() >= n {
                &other.0[i + other.rank() - n]
            } else {
                &one
            };
            out.push(if a == b || *b == one {
                a.clone()
            } else if *a == one {
                b.clone()
            } else {
                return None;
            });
        }
        Some(Shape(out))
    }
}

/// Resolves a possibly negative axis (`-1` = last) against `rank`.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Some(a as usize)
    } else {
        None
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The static type of a value: element type and shape.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TensorType {
    /// Element type.
    pub dtype: crate::DType,
    /// Shape.
    pub shape: Shape,
}

impl TensorType {
    /// Builds a type.
    pub fn new(dtype: crate::DType, shape: Shape) -> TensorType {
        TensorType { dtype, shape }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_dims() {
        let b = Dim::sym("batch");
        let s = Dim::sym("seq");
        let p = Dim::sym("past");
        assert_eq!(p.add(&s).to_string(), "past + seq");
        assert_eq!(b.mul(&s).mul(&Dim::c(576)).to_string(), "576*batch*seq");
        assert_eq!(
            b.mul(&s).mul(&Dim::c(576)).div_exact(&Dim::c(576)),
            Some(b.mul(&s))
        );
        assert_eq!(b.mul(&s).div_exact(&s), Some(b.clone()));
        // dynamo's `reshape(k, [-1, past + seq, 16])` of k [1, 4, past + seq, 16].
        let ps = p.add(&s);
        let c = |v| Dim::c(v);
        assert_eq!(ps.mul(&c(64)).div_exact(&ps.mul(&c(16))), Some(c(4)));
        assert_eq!(ps.mul(&c(64)).div_exact(&ps.mul(&c(24))), None);
        assert_eq!(ps.mul(&c(64)).add(&c(1)).div_exact(&ps.mul(&c(16))), None);
        assert_eq!(s.add(&Dim::c(1)).to_string(), "seq + 1");
        assert_eq!(s.sub(&Dim::c(1)).to_string(), "seq - 1");
        assert_eq!(s.sub(&s), Dim::c(0));
        assert_eq!(Dim::c(-3).to_string(), "-3");
        assert_eq!(
            b.mul(&s).eval(&|n| Some(if n == "batch" { 2 } else { 5 })),
            Some(10)
        );
    }

    #[test]
    fn broadcasting() {
        let a = Shape(vec![Dim::sym("b"), Dim::c(1), Dim::c(4)]);
        let b = Shape::of(&[3, 1]);
        assert_eq!(a.broadcast(&b).unwrap().to_string(), "[b, 3, 4]");
        assert!(Shape::of(&[2]).broadcast(&Shape::of(&[3])).is_none());
    }
}
