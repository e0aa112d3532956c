//! Symbolic dims: integer polynomials over named sizes, so that `4 * D`, `D * 4` and
//! `2 * D + 2 * D` are one dim, `h + 2 * 1 - 3 + 1` simplifies to `h`, and a division
//! that does not simplify (`D / H`) is an opaque atom compared by its structure.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use std::fmt;

/// What a name in a dim stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Atom {
    /// A const generic of the model (`D` in `struct Block<const D: usize>`).
    Generic(String),
    /// A `const` item in scope (an upper-case name the model does not declare).
    Const(String),
    /// A size given to the constructor (`vocab` in `struct Gpt(vocab: usize)`).
    Param(String),
    /// A size bound by the data when `forward` runs (`b`, `t`).
    Sym(String),
    /// A size the macro cannot name: an inexact division or a remainder.
    Opaque(Box<Dim>, Box<Dim>, bool),
}

/// An integer polynomial over atoms; monomials are sorted atom lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dim {
    terms: BTreeMap<Vec<Atom>, i64>,
}

/// How dims become Rust expressions: where run-time sizes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    /// In the constructor: struct params are local variables.
    Ctor,
    /// In `forward`: struct params are `self.name`, data symbols are `__dim_name`.
    Forward,
    /// In a const context (assertions): only generics and consts may appear.
    Const,
}

impl Dim {
    /// A literal.
    pub fn lit(v: i64) -> Dim {
        let mut terms = BTreeMap::new();
        if v != 0 {
            terms.insert(Vec::new(), v);
        }
        Dim { terms }
    }

    /// A single atom.
    pub fn atom(a: Atom) -> Dim {
        let mut terms = BTreeMap::new();
        terms.insert(vec![a], 1);
        Dim { terms }
    }

    /// The value, when the dim is a literal.
    pub fn as_lit(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// The atom, when the dim is exactly one name.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self.terms.iter().next() {
            Some((m, 1)) if self.terms.len() == 1 && m.len() == 1 => Some(&m[0]),
            _ => None,
        }
    }

    /// Are `self` and `o` different for every choice of sizes (all at least 1)? True when
    /// their difference is a nonzero polynomial whose coefficients all have one sign
    /// (`D` vs `4 * D`, `t + 1` vs `t`); opaque atoms, which may be 0, are left out.
    pub fn differs_always(&self, o: &Dim) -> bool {
        let d = self.sub(o);
        if d.terms.is_empty()
            || d.terms
                .keys()
                .flatten()
                .any(|a| matches!(a, Atom::Opaque(..)))
        {
            return false;
        }
        d.terms.values().all(|c| *c > 0) || d.terms.values().all(|c| *c < 0)
    }

    /// The atoms of the monomials (not looking inside opaque atoms).
    pub fn atom_list(&self) -> Vec<&Atom> {
        self.terms.keys().flatten().collect()
    }

    fn atoms(&self) -> Vec<&Atom> {
        let mut out = Vec::new();
        for m in self.terms.keys() {
            for a in m {
                out.push(a);
                if let Atom::Opaque(n, d, _) = a {
                    out.extend(n.atoms());
                    out.extend(d.atoms());
                }
            }
        }
        out
    }

    /// Does the value depend on sizes only known at run time?
    pub fn is_runtime(&self) -> bool {
        self.atoms()
            .iter()
            .any(|a| matches!(a, Atom::Param(_) | Atom::Sym(_)))
    }

    /// Does it mention a data symbol (`b`, `t`)?
    pub fn has_sym(&self) -> bool {
        self.atoms().iter().any(|a| matches!(a, Atom::Sym(_)))
    }

    /// Does it mention a size nothing determines (`?n`: an output of a rule that no input
    /// binds, a `-1` in a reshape of an unknown rank)? Such a dim matches anything.
    pub fn has_unknown(&self) -> bool {
        self.atoms()
            .iter()
            .any(|a| matches!(a, Atom::Sym(n) if n.starts_with('?')))
    }

    /// Does it mention a const generic of the model?
    pub fn has_generic(&self) -> bool {
        self.atoms().iter().any(|a| matches!(a, Atom::Generic(_)))
    }

    /// Replaces atoms (e.g. a callee's generics by the caller's dims).
    pub fn subst(&self, f: &dyn Fn(&Atom) -> Option<Dim>) -> Dim {
        let mut out = Dim::lit(0);
        for (m, c) in &self.terms {
            let mut term = Dim::lit(*c);
            for a in m {
                let d = match a {
                    Atom::Opaque(n, d, rem) => {
                        let (n, d) = (n.subst(f), d.subst(f));
                        if *rem {
                            n.rem(&d)
                        } else {
                            n.div(&d)
                        }
                    }
                    _ => f(a).unwrap_or_else(|| Dim::atom(a.clone())),
                };
                term = term.mul(&d);
            }
            out = out.add(&term);
        }
        out
    }

    fn normalized(mut self) -> Dim {
        self.terms.retain(|_, c| *c != 0);
        self
    }

    /// `self + o`.
    pub fn add(&self, o: &Dim) -> Dim {
        let mut out = self.clone();
        for (m, c) in &o.terms {
            *out.terms.entry(m.clone()).or_insert(0) += c;
        }
        out.normalized()
    }

    /// `self - o`.
    pub fn sub(&self, o: &Dim) -> Dim {
        self.add(&o.scale(-1))
    }

    fn scale(&self, k: i64) -> Dim {
        Dim {
            terms: self.terms.iter().map(|(m, c)| (m.clone(), c * k)).collect(),
        }
        .normalized()
    }

    /// `self * o`.
    pub fn mul(&self, o: &Dim) -> Dim {
        let mut out = Dim::default();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &o.terms {
                let mut m: Vec<Atom> = m1.iter().chain(m2.iter()).cloned().collect();
                m.sort();
                *out.terms.entry(m).or_insert(0) += c1 * c2;
            }
        }
        out.normalized()
    }

    /// `self / o`, rounding down as `usize` division does: exact when the divisor is a
    /// literal dividing every coefficient or a monomial dividing every term, a literal
    /// when both are literals, else an opaque atom.
    pub fn div(&self, o: &Dim) -> Dim {
        if let (Some(a), Some(b)) = (self.as_lit(), o.as_lit())
            && b != 0
        {
            return Dim::lit(a.div_euclid(b));
        }
        if let Some(k) = o.as_lit()
            && k != 0
            && self.terms.values().all(|c| c % k == 0)
        {
            return Dim {
                terms: self.terms.iter().map(|(m, c)| (m.clone(), c / k)).collect(),
            };
        }
        if o.terms.len() == 1 {
            let (dm, dc) = o
                .terms
                .iter()
                .next()
                .map(|(m, c)| (m.clone(), *c))
                .unwrap_or_default();
            if dc != 0 && !dm.is_empty() {
                let mut out = Dim::default();
                let mut ok = true;
                for (m, c) in &self.terms {
                    let mut rest = m.clone();
                    for a in &dm {
                        match rest.iter().position(|x| x == a) {
                            Some(i) => {
                                rest.remove(i);
                            }
                            None => ok = false,
                        }
                    }
                    if c % dc != 0 {
                        ok = false;
                    }
                    out.terms.insert(rest, c / dc);
                }
                if ok {
                    return out.normalized();
                }
            }
        }
        Dim::atom(Atom::Opaque(
            Box::new(self.clone()),
            Box::new(o.clone()),
            false,
        ))
    }

    /// `self % o`.
    pub fn rem(&self, o: &Dim) -> Dim {
        if let (Some(a), Some(b)) = (self.as_lit(), o.as_lit())
            && b != 0
        {
            return Dim::lit(a.rem_euclid(b));
        }
        if self.div(o).mul(o) == *self {
            return Dim::lit(0);
        }
        Dim::atom(Atom::Opaque(
            Box::new(self.clone()),
            Box::new(o.clone()),
            true,
        ))
    }

    /// A Rust `usize` expression for the dim.
    pub fn code(&self, ctx: Ctx) -> TokenStream {
        let (pos, neg) = self.split_code(ctx);
        match neg {
            None => pos,
            Some(n) if ctx == Ctx::Const => quote!((#pos - #n)),
            Some(n) => quote!((#pos).saturating_sub(#n)),
        }
    }

    /// The positive and negative parts as `usize` expressions, for comparisons that must
    /// not underflow.
    pub fn split_code(&self, ctx: Ctx) -> (TokenStream, Option<TokenStream>) {
        let mut pos = Vec::new();
        let mut neg = Vec::new();
        for (m, c) in &self.terms {
            let mut factors: Vec<TokenStream> = m.iter().map(|a| atom_code(a, ctx)).collect();
            let k = c.unsigned_abs() as usize;
            if k != 1 || factors.is_empty() {
                factors.insert(0, quote!(#k));
            }
            let mut it = factors.into_iter();
            let first = it.next().unwrap_or_else(|| quote!(1usize));
            let mut t = first;
            let mut many = false;
            for f in it {
                t = quote!(#t * #f);
                many = true;
            }
            let t = if many { quote!((#t)) } else { t };
            if *c > 0 {
                pos.push(t);
            } else {
                neg.push(t);
            }
        }
        let sum = |v: Vec<TokenStream>| match v.len() {
            0 => quote!(0usize),
            1 => v.into_iter().collect(),
            _ => quote!((#(#v)+*)),
        };
        let neg = (!neg.is_empty()).then(|| sum(neg));
        let pos = sum(pos);
        (pos, neg)
    }
}

fn atom_code(a: &Atom, ctx: Ctx) -> TokenStream {
    match a {
        Atom::Generic(n) | Atom::Const(n) => {
            let i = format_ident!("{}", n, span = Span::call_site());
            quote!(#i)
        }
        Atom::Param(n) => {
            let i = format_ident!("{}", n);
            if ctx == Ctx::Forward {
                quote!(self.#i)
            } else {
                quote!(#i)
            }
        }
        Atom::Sym(n) => {
            let i = format_ident!("__dim_{}", n);
            quote!(#i)
        }
        Atom::Opaque(n, d, rem) => {
            let (n, d) = (n.code(ctx), d.code(ctx));
            if *rem {
                quote!((#n % #d))
            } else {
                quote!((#n / #d))
            }
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Generic(n) | Atom::Const(n) | Atom::Param(n) | Atom::Sym(n) => f.write_str(n),
            Atom::Opaque(n, d, rem) => {
                let op = if *rem { "%" } else { "/" };
                let wrap = |x: &Dim| {
                    if x.as_lit().is_some() || x.as_atom().is_some() {
                        x.to_string()
                    } else {
                        format!("({x})")
                    }
                };
                write!(f, "{} {op} {}", wrap(n), wrap(d))
            }
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Higher-degree terms first, the constant last: `4 * D + 1`, `h - 2`.
        let mut terms: Vec<(&Vec<Atom>, &i64)> = self.terms.iter().collect();
        terms.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
        for (i, (m, c)) in terms.into_iter().enumerate() {
            let k = c.unsigned_abs();
            if i == 0 {
                if *c < 0 {
                    f.write_str("-")?;
                }
            } else if *c < 0 {
                f.write_str(" - ")?;
            } else {
                f.write_str(" + ")?;
            }
            let mut parts: Vec<String> = Vec::new();
            if k != 1 || m.is_empty() {
                parts.push(k.to_string());
            }
            for a in m {
                let s = a.to_string();
                parts.push(
                    if matches!(a, Atom::Opaque(..)) && m.len() + usize::from(k != 1) > 1 {
                        format!("({s})")
                    } else {
                        s
                    },
                );
            }
            f.write_str(&parts.join(" * "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: &str) -> Dim {
        Dim::atom(Atom::Generic(n.into()))
    }
    fn s(n: &str) -> Dim {
        Dim::atom(Atom::Sym(n.into()))
    }

    #[test]
    fn algebra_canonicalises() {
        let d = g("D");
        assert_eq!(d.mul(&Dim::lit(4)), Dim::lit(4).mul(&d));
        assert_eq!(
            d.mul(&Dim::lit(2)).add(&d.mul(&Dim::lit(2))),
            d.mul(&Dim::lit(4))
        );
        let h = s("h");
        // Conv arithmetic with kernel 3, padding 1, stride 1: h + 2 - 2 - 1 + 1 = h.
        let out = h
            .add(&Dim::lit(2))
            .sub(&Dim::lit(2))
            .sub(&Dim::lit(1))
            .div(&Dim::lit(1))
            .add(&Dim::lit(1));
        assert_eq!(out, h);
        assert_eq!(d.mul(&g("H")).div(&g("H")), d);
        assert_eq!(Dim::lit(7).div(&Dim::lit(2)), Dim::lit(3));
        assert_eq!(Dim::lit(7).rem(&Dim::lit(2)), Dim::lit(1));
        assert_eq!(d.mul(&Dim::lit(4)).rem(&Dim::lit(2)), Dim::lit(0));
        let q = d.div(&g("H"));
        assert!(matches!(q.as_atom(), Some(Atom::Opaque(..))));
        assert!(d.differs_always(&d.mul(&Dim::lit(4))));
        assert!(!g("F").differs_always(&d.mul(&Dim::lit(2))));
        assert!(s("t").add(&Dim::lit(1)).differs_always(&s("t")));
        assert!(!q.differs_always(&Dim::lit(1)));
        assert_eq!(q, g("D").div(&g("H")));
        assert_eq!(q.mul(&g("H")).to_string(), "H * (D / H)");
    }

    #[test]
    fn displays_readably() {
        assert_eq!(
            g("D").mul(&Dim::lit(4)).add(&Dim::lit(1)).to_string(),
            "4 * D + 1"
        );
        assert_eq!(s("h").sub(&Dim::lit(2)).to_string(), "h - 2");
        assert_eq!(s("b").mul(&s("t")).to_string(), "b * t");
        assert_eq!(Dim::lit(0).to_string(), "0");
        assert_eq!(
            s("h").sub(&Dim::lit(1)).div(&Dim::lit(2)).to_string(),
            "(h - 1) / 2"
        );
    }

    #[test]
    fn classifies() {
        assert!(s("t").mul(&g("D")).is_runtime());
        assert!(!g("D").is_runtime() && g("D").has_generic());
        assert!(g("D").div(&Dim::atom(Atom::Param("v".into()))).is_runtime());
        let sub = g("D").mul(&Dim::lit(2)).subst(&|a| match a {
            Atom::Generic(n) if n == "D" => Some(Dim::lit(8)),
            _ => None,
        });
        assert_eq!(sub, Dim::lit(16));
    }

    #[test]
    fn code_has_no_underflow_in_split() {
        let d = s("h").sub(&Dim::lit(2));
        let (p, n) = d.split_code(Ctx::Forward);
        assert_eq!(p.to_string(), "__dim_h");
        assert_eq!(n.map(|t| t.to_string()), Some("2usize".into()));
        assert_eq!(
            g("D").mul(&Dim::lit(4)).code(Ctx::Const).to_string(),
            "(4usize * D)"
        );
        assert_eq!(
            g("D").add(&Dim::lit(1)).code(Ctx::Const).to_string(),
            "(1usize + D)"
        );
    }
}
