//! Shapes: what each layer and op does to them, and the checker that follows a forward
//! body through them, reporting every mismatch at its token and writing the Rust code of
//! the body as it goes.

use super::dim::{Atom, Ctx, Dim};
use super::parse::{ArgDecl, ShapeItem, ShapeLit, ValKind};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use std::collections::{HashMap, HashSet};
use std::fmt;
use syn::spanned::Spanned;
use syn::{Expr, Ident};

/// A shape: an optional unknown prefix (`..`, with an id so that two shapes sharing it
/// are known to agree there) and known trailing dims.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The unknown prefix, if any.
    pub rest: Option<u32>,
    /// The known dims.
    pub dims: Vec<Dim>,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.rest.is_some() {
            parts.push("..".into());
        }
        parts.extend(self.dims.iter().map(|d| d.to_string()));
        write!(f, "[{}]", parts.join(", "))
    }
}

impl Shape {
    fn known(dims: Vec<Dim>) -> Shape {
        Shape { rest: None, dims }
    }

    fn with_last(&self, d: Dim) -> Shape {
        let mut s = self.clone();
        match s.dims.last_mut() {
            Some(x) => *x = d,
            None => s.dims.push(d),
        }
        s
    }

    /// Resolves a dim index (negative from the end) against the known dims.
    fn index(&self, i: i64) -> Option<usize> {
        let n = self.dims.len() as i64;
        if i < 0 {
            (i + n >= 0).then_some((i + n) as usize)
        } else if self.rest.is_none() && i < n {
            Some(i as usize)
        } else {
            None
        }
    }
}

/// How names in sizes are read in one model.
pub struct Names {
    /// The model's name.
    pub model: String,
    /// Const generics.
    pub generics: Vec<String>,
    /// Constructor parameters of type `usize` (sizes) and the rest (options).
    pub params: Vec<(String, bool)>,
    /// Data symbols of the forward signature.
    pub syms: HashSet<String>,
}

impl Names {
    /// Reads a size expression. `new_syms`: an unknown lower-case name is a new data
    /// symbol (in the forward signature) rather than an error.
    pub fn dim(&mut self, e: &Expr, new_syms: bool) -> syn::Result<Dim> {
        use syn::BinOp::*;
        match e {
            Expr::Lit(l) => match &l.lit {
                syn::Lit::Int(i) => Ok(Dim::lit(i.base10_parse::<i64>()?)),
                _ => Err(syn::Error::new(l.span(), "a size is an integer")),
            },
            Expr::Path(p) if p.qself.is_none() => {
                if let Some(id) = p.path.get_ident() {
                    self.atom(id, new_syms).map(Dim::atom)
                } else {
                    // `consts::WIDTH`: a const item by path.
                    let text = p.path.segments.iter().map(|s| s.ident.to_string()).collect::<Vec<_>>().join("::");
                    Ok(Dim::atom(Atom::Const(text)))
                }
            }
            Expr::Paren(p) => self.dim(&p.expr, new_syms),
            Expr::Group(g) => self.dim(&g.expr, new_syms),
            Expr::Binary(b) => {
                let (l, r) = (self.dim(&b.left, new_syms)?, self.dim(&b.right, new_syms)?);
                match b.op {
                    Add(_) => Ok(l.add(&r)),
                    Sub(_) => Ok(l.sub(&r)),
                    Mul(_) => Ok(l.mul(&r)),
                    Div(_) => Ok(l.div(&r)),
                    Rem(_) => Ok(l.rem(&r)),
                    _ => Err(syn::Error::new(b.op.span(), "sizes combine with + - * / %")),
                }
            }
            _ => Err(syn::Error::new(
                e.span(),
                "a size is an integer, a name (`D`, `t`, `vocab`) or an arithmetic expression of them",
            )),
        }
    }

    fn atom(&mut self, id: &Ident, new_syms: bool) -> syn::Result<Atom> {
        let n = id.to_string();
        if self.generics.contains(&n) {
            return Ok(Atom::Generic(n));
        }
        if let Some((_, is_size)) = self.params.iter().find(|(p, _)| *p == n) {
            if !is_size {
                return Err(syn::Error::new(
                    id.span(),
                    format!("`{n}` is not a size: declare it `{n}: usize`"),
                ));
            }
            return Ok(Atom::Param(n));
        }
        if self.syms.contains(&n) {
            return Ok(Atom::Sym(n));
        }
        if n.chars().next().is_some_and(|c| c.is_uppercase()) {
            return Ok(Atom::Const(n));
        }
        if new_syms {
            self.syms.insert(n.clone());
            return Ok(Atom::Sym(n));
        }
        Err(syn::Error::new(
            id.span(),
            format!(
                "unknown size `{n}` in `{}`: declare it as a const generic (`const {n}: usize`), a constructor parameter (`struct {}({n}: usize)`) or in the forward signature",
                self.model, self.model
            ),
        ))
    }

    /// A shape literal (`[b, t, D]`); `rest` is the id to give `..`.
    pub fn shape(&mut self, s: &ShapeLit, new_syms: bool, rest: u32) -> syn::Result<Shape> {
        let mut out = Shape {
            rest: None,
            dims: Vec::new(),
        };
        for (i, item) in s.items.iter().enumerate() {
            match item {
                ShapeItem::Rest(span) => {
                    if i != 0 {
                        return Err(syn::Error::new(
                            *span,
                            "`..` may only lead a shape: `[.., D]`",
                        ));
                    }
                    out.rest = Some(rest);
                }
                ShapeItem::Dim(e) => out.dims.push(self.dim(e, new_syms)?),
            }
        }
        Ok(out)
    }

    /// Rewrites the names in a Rust expression of sizes for `ctx`: parameters become
    /// `self.p` in `forward`, data symbols `__dim_t`.
    pub fn remap(&self, ts: TokenStream, ctx: Ctx) -> TokenStream {
        let mut out = Vec::new();
        let mut after_dot = false;
        for tt in ts {
            match tt {
                TokenTree::Ident(ref id) if !after_dot => {
                    let n = id.to_string();
                    if self.syms.contains(&n) {
                        let i = format_ident!("__dim_{}", n, span = id.span());
                        out.extend(quote!(#i));
                    } else if ctx == Ctx::Forward && self.params.iter().any(|(p, _)| *p == n) {
                        out.extend(quote!(self.#id));
                    } else {
                        out.push(tt.clone());
                    }
                    after_dot = false;
                }
                TokenTree::Group(g) => {
                    let inner = self.remap(g.stream(), ctx);
                    let mut ng = proc_macro2::Group::new(g.delimiter(), inner);
                    ng.set_span(g.span());
                    out.push(TokenTree::Group(ng));
                    after_dot = false;
                }
                TokenTree::Punct(ref p) => {
                    after_dot = p.as_char() == '.';
                    out.push(tt.clone());
                }
                _ => {
                    after_dot = false;
                    out.push(tt.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// The names of sizes a Rust expression mentions, by kind.
    pub fn mentions(&self, ts: &TokenStream, out: &mut Vec<(String, char)>) {
        for tt in ts.clone() {
            match tt {
                TokenTree::Ident(id) => {
                    let n = id.to_string();
                    let k = if self.syms.contains(&n) {
                        's'
                    } else if self.params.iter().any(|(p, _)| *p == n) {
                        'p'
                    } else {
                        continue;
                    };
                    if !out.iter().any(|(m, _)| *m == n) {
                        out.push((n, k));
                    }
                }
                TokenTree::Group(g) => self.mentions(&g.stream(), out),
                _ => {}
            }
        }
    }
}

/// A shape rule: inputs (patterns over their own symbols) and output.
#[derive(Clone)]
pub struct Rule {
    /// Inputs.
    pub args: Vec<(ValKind, Shape)>,
    /// Output.
    pub ret: Shape,
}

/// What a layer does to shapes.
#[derive(Clone)]
pub enum LayerKind {
    /// `[.., IN] -> [.., OUT]`.
    Linear { inp: Dim, out: Dim },
    /// ids `[..] -> [.., D]`.
    Embedding { d: Dim },
    /// `[.., D]`, shape kept.
    LastDim { d: Dim },
    /// `[b, C, ..]`, shape kept.
    Channels { nd: usize, c: Dim },
    /// Any shape, kept.
    Same,
    /// Convolution over `nd` spatial dims.
    Conv {
        nd: usize,
        cin: Dim,
        cout: Dim,
        k: Dim,
        s: Dim,
        p: Dim,
        d: Dim,
    },
    /// Pooling over `nd` spatial dims.
    Pool { nd: usize, k: Dim, s: Dim, p: Dim },
    /// `[b, ..] -> [b, prod]`.
    Flatten,
    /// Batch-first multi-head attention over `d` features.
    Attention { d: Dim, heads: Dim },
    /// A rule from a model of the same block or `#[shape(…)]`.
    Rule(Rule),
    /// A user layer without a rule: a call of `try_forward`, shape unknown.
    Unknown,
}

/// How a layer is called in generated code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CallStyle {
    /// `Forward::try_forward(&layer, &x)`.
    Forward,
    /// `layer.try_forward(&x, …)` (inherent, or `Forward` for one argument).
    Method,
    /// `MultiheadAttention::try_forward(q, k, v, masks).0`.
    Attention,
}

/// A resolved layer field.
pub struct Layer {
    /// The field name.
    pub ident: Ident,
    /// Its shape behaviour.
    pub kind: LayerKind,
    /// How it is called.
    pub call: CallStyle,
    /// Is it a list applied in turn?
    pub list: bool,
}

/// A value in the forward body.
#[derive(Clone)]
struct Val {
    kind: ValKind,
    shape: Shape,
    var: Ident,
    origin: String,
}

/// A dim equality that only the compiler can decide (const generics, `const` items).
pub struct Deferred {
    /// The two sides.
    pub a: Dim,
    /// The other side.
    pub b: Dim,
    /// Where to report it.
    pub span: Span,
    /// The message of the assertion.
    pub msg: String,
}

/// Follows a forward body.
pub struct Checker<'a> {
    /// Names of the model.
    pub names: &'a mut Names,
    /// Its layers.
    pub layers: &'a [Layer],
    /// Errors found.
    pub errors: Vec<syn::Error>,
    /// Equalities left to the compiler.
    pub deferred: Vec<Deferred>,
    stmts: Vec<TokenStream>,
    env: HashMap<String, Val>,
    next_var: usize,
    next_rest: u32,
}

fn lit_int(e: &Expr) -> Option<i64> {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse().ok(),
        Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => lit_int(&u.expr).map(|v| -v),
        Expr::Paren(p) => lit_int(&p.expr),
        _ => None,
    }
}

fn kind_word(k: ValKind) -> &'static str {
    match k {
        ValKind::Float => "a float tensor",
        ValKind::Mask => "a bool mask",
        ValKind::Ids => "integer ids",
    }
}

const FUNCTIONS: [&str; 13] = [
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "silu",
    "exp",
    "log",
    "sqrt",
    "softmax",
    "log_softmax",
    "matmul",
    "cat",
    "positions",
];

impl<'a> Checker<'a> {
    /// A checker for one forward body.
    pub fn new(names: &'a mut Names, layers: &'a [Layer]) -> Self {
        Checker {
            names,
            layers,
            errors: Vec::new(),
            deferred: Vec::new(),
            stmts: Vec::new(),
            env: HashMap::new(),
            next_var: 0,
            next_rest: 1000,
        }
    }

    fn fresh(&mut self) -> Ident {
        self.next_var += 1;
        format_ident!("__t{}", self.next_var)
    }

    fn fresh_rest(&mut self) -> u32 {
        self.next_rest += 1;
        self.next_rest
    }

    fn err(&mut self, span: Span, msg: impl fmt::Display) {
        self.errors.push(syn::Error::new(span, msg));
    }

    fn emit(&mut self, kind: ValKind, shape: Shape, origin: String, code: TokenStream) -> Val {
        let var = self.fresh();
        self.stmts.push(quote!(let #var: ::flint::Tensor = #code;));
        Val {
            kind,
            shape,
            var,
            origin,
        }
    }

    /// Are two dims equal? Decided here when it can be (literals, data symbols), left
    /// to the compiler otherwise. `msg` is the error if they are not.
    fn same_dim(&mut self, a: &Dim, b: &Dim, span: Span, msg: &dyn Fn() -> String) -> bool {
        if a == b || a.has_unknown() || b.has_unknown() {
            return true;
        }
        if (a.as_lit().is_some() && b.as_lit().is_some())
            || a.is_runtime()
            || b.is_runtime()
            || a.differs_always(b)
        {
            self.err(span, msg());
            return false;
        }
        self.deferred.push(Deferred {
            a: a.clone(),
            b: b.clone(),
            span,
            msg: msg(),
        });
        true
    }

    /// Two shapes that must be equal (residuals of lists, the declared output).
    fn same_shape(&mut self, a: &Shape, b: &Shape, span: Span, msg: &dyn Fn() -> String) -> bool {
        if a.rest.is_none() && b.rest.is_none() && a.dims.len() != b.dims.len() {
            self.err(span, msg());
            return false;
        }
        let n = a.dims.len().min(b.dims.len());
        let (da, db) = (&a.dims[a.dims.len() - n..], &b.dims[b.dims.len() - n..]);
        let mut ok = true;
        for (x, y) in da.iter().zip(db) {
            if ok && !self.same_dim(x, y, span, msg) {
                ok = false;
            }
        }
        ok
    }

    /// Numpy broadcasting of two shapes.
    fn broadcast(
        &mut self,
        a: &Shape,
        b: &Shape,
        span: Span,
        msg: &dyn Fn() -> String,
    ) -> Option<Shape> {
        let n = a.dims.len().max(b.dims.len());
        let mut dims = Vec::with_capacity(n);
        for i in 0..n {
            let x = (i < a.dims.len()).then(|| &a.dims[a.dims.len() - 1 - i]);
            let y = (i < b.dims.len()).then(|| &b.dims[b.dims.len() - 1 - i]);
            let d = match (x, y) {
                (Some(x), Some(y)) if x == y => x.clone(),
                (Some(x), Some(y)) if x.as_lit() == Some(1) => y.clone(),
                (Some(x), Some(y)) if y.as_lit() == Some(1) => x.clone(),
                (Some(x), Some(y)) => {
                    if !self.same_dim(x, y, span, msg) {
                        return None;
                    }
                    x.clone()
                }
                (Some(x), None) | (None, Some(x)) => x.clone(),
                (None, None) => return None,
            };
            dims.push(d);
        }
        dims.reverse();
        let rest = if a.dims.len() >= b.dims.len() {
            a.rest.or(b.rest)
        } else {
            b.rest.or(a.rest)
        };
        Some(Shape { rest, dims })
    }

    /// Binds the forward arguments and returns the entry-check statements.
    pub fn bind_args(&mut self, model: &str, args: &[ArgDecl]) -> TokenStream {
        let mut checks = Vec::new();
        let mut seen = HashSet::new();
        let op = format!("{model}::forward");
        for a in args {
            let shape = match self.names.shape(&a.shape, true, 0) {
                Ok(s) => s,
                Err(e) => {
                    self.errors.push(e);
                    continue;
                }
            };
            let name = a.ident.to_string();
            if !seen.insert(name.clone()) {
                self.err(a.ident.span(), format!("two arguments are named `{name}`"));
            }
            let mut spec = Vec::new();
            if shape.rest.is_some() {
                spec.push(quote!(::flint::nn::shape::DimSpec::Rest));
            }
            let mut idx = 0;
            for item in &a.shape.items {
                let ShapeItem::Dim(e) = item else { continue };
                let d = &shape.dims[idx];
                idx += 1;
                match d.as_atom() {
                    Some(Atom::Sym(s)) => spec.push(quote!(::flint::nn::shape::DimSpec::Sym(#s))),
                    _ => {
                        if d.has_sym() {
                            self.err(
                                e.span(),
                                format!("`{d}`: a dim of an argument is one data symbol (`t`), or sizes of the model, not arithmetic on data symbols"),
                            );
                            continue;
                        }
                        let code = d.code(Ctx::Forward);
                        let t = d.to_string();
                        spec.push(quote!(::flint::nn::shape::DimSpec::Fixed(#code, #t)));
                    }
                }
            }
            let kind = match a.kind {
                ValKind::Float => quote!(Float),
                ValKind::Mask => quote!(Mask),
                ValKind::Ids => quote!(Ids),
            };
            let id = &a.ident;
            checks.push(quote!(__check.arg(#name, #id, &[#(#spec),*], ::flint::nn::shape::ArgKind::#kind)?;));
            let var = self.fresh();
            self.stmts
                .push(quote!(let #var: ::flint::Tensor = ::core::clone::Clone::clone(#id);));
            self.env.insert(
                name.clone(),
                Val {
                    kind: a.kind,
                    shape,
                    var,
                    origin: name,
                },
            );
        }
        let mut syms: Vec<&String> = self.names.syms.iter().collect();
        syms.sort();
        let binds = syms.iter().map(|s| {
            let v = format_ident!("__dim_{}", s);
            quote!(#[allow(unused_variables)] let #v: usize = __check.get(#s);)
        });
        quote! {
            let mut __check = ::flint::nn::shape::ShapeCheck::new(#op);
            #(#checks)*
            #(#binds)*
        }
    }

    /// The statements of a block; its value and the span of its final expression.
    fn block(&mut self, block: &syn::Block, default_span: Span) -> (Option<Val>, Span) {
        let mut last: Option<Val> = None;
        let mut last_span = default_span;
        for (i, stmt) in block.stmts.iter().enumerate() {
            match stmt {
                syn::Stmt::Local(l) => {
                    let name = match &l.pat {
                        syn::Pat::Ident(p) if p.subpat.is_none() => p.ident.clone(),
                        other => {
                            self.err(other.span(), "`let` binds one name: `let h = …;`");
                            continue;
                        }
                    };
                    let Some(init) = &l.init else {
                        self.err(l.span(), "`let` needs a value");
                        continue;
                    };
                    match self.expr(&init.expr) {
                        Some(v) => {
                            let v = Val {
                                origin: name.to_string(),
                                ..v
                            };
                            self.env.insert(name.to_string(), v);
                        }
                        None => {
                            self.env.remove(&name.to_string());
                            self.env.insert(
                                name.to_string(),
                                Val {
                                    kind: ValKind::Float,
                                    shape: Shape {
                                        rest: Some(u32::MAX),
                                        dims: vec![],
                                    },
                                    var: format_ident!("__poisoned"),
                                    origin: "<error>".into(),
                                },
                            );
                        }
                    }
                }
                syn::Stmt::Expr(e, None) if i + 1 == block.stmts.len() => {
                    last = self.expr(e);
                    last_span = e.span();
                }
                other => self.err(
                    other.span(),
                    "a forward body is `let` bindings and a final expression",
                ),
            }
        }
        (last, last_span)
    }

    /// Follows the body; returns its statements and the variable holding the result.
    pub fn body(&mut self, block: &syn::Block, ret: &Shape, ret_span: Span) -> TokenStream {
        let (last, last_span) = self.block(block, ret_span);
        match last {
            Some(v) => {
                if v.shape.rest != Some(u32::MAX) {
                    let (got, want) = (v.shape.clone(), ret.clone());
                    self.same_shape(&v.shape, ret, last_span, &|| {
                        format!("shape mismatch: `forward` returns {got} but is declared to return {want}")
                    });
                }
                let var = &v.var;
                let stmts = &self.stmts;
                quote!(#(#stmts)* ::core::result::Result::Ok(#var))
            }
            None => {
                if self.errors.is_empty() {
                    self.err(
                        block.span(),
                        "a forward body ends with the expression it returns",
                    );
                }
                quote!(::core::unreachable!())
            }
        }
    }

    fn is_tensor(&self, e: &Expr) -> bool {
        match e {
            Expr::Path(p) => p
                .path
                .get_ident()
                .is_some_and(|i| self.env.contains_key(&i.to_string())),
            Expr::Call(_) => true,
            Expr::MethodCall(m) => self.is_tensor(&m.receiver),
            Expr::Binary(b) => self.is_tensor(&b.left) || self.is_tensor(&b.right),
            Expr::Paren(p) => self.is_tensor(&p.expr),
            Expr::Block(_) => true,
            Expr::Group(g) => self.is_tensor(&g.expr),
            Expr::Unary(u) => self.is_tensor(&u.expr),
            _ => false,
        }
    }

    fn scalar(&self, e: &Expr) -> TokenStream {
        let code = self.names.remap(quote!(#e), Ctx::Forward);
        quote!(((#code) as f64))
    }

    fn poisoned(v: &Val) -> bool {
        v.shape.rest == Some(u32::MAX)
    }

    fn expr(&mut self, e: &Expr) -> Option<Val> {
        match e {
            Expr::Paren(p) => self.expr(&p.expr),
            Expr::Group(g) => self.expr(&g.expr),
            Expr::Path(p) => {
                let Some(id) = p.path.get_ident() else {
                    self.err(p.span(), "expected a value name");
                    return None;
                };
                match self.env.get(&id.to_string()) {
                    Some(v) if Self::poisoned(v) => None,
                    Some(v) => Some(v.clone()),
                    None => {
                        self.err(id.span(), format!("unknown value `{id}`"));
                        None
                    }
                }
            }
            Expr::Binary(b) => self.binary(b),
            Expr::Block(b) if b.label.is_none() => {
                // A nested scope: its `let`s end with it.
                let saved = self.env.clone();
                let (v, _) = self.block(&b.block, b.span());
                self.env = saved;
                if v.is_none()
                    && b.block
                        .stmts
                        .last()
                        .is_none_or(|s| !matches!(s, syn::Stmt::Expr(_, None)))
                {
                    self.err(
                        b.span(),
                        "a block in a forward body ends with the expression it gives",
                    );
                }
                v
            }
            Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)) => {
                let v = self.expr(&u.expr)?;
                let var = &v.var;
                Some(self.emit(
                    v.kind,
                    v.shape.clone(),
                    v.origin.clone(),
                    quote!(#var.neg()),
                ))
            }
            Expr::Call(c) => self.call(c),
            Expr::MethodCall(m) => self.method(m),
            other => {
                self.err(
                    other.span(),
                    "not supported in a `model!` forward body: use layer calls, tensor methods, `let` and + - * /",
                );
                None
            }
        }
    }

    fn binary(&mut self, b: &syn::ExprBinary) -> Option<Val> {
        use syn::BinOp::*;
        let (op, method) = match b.op {
            Add(_) => ("+", quote!(try_add)),
            Sub(_) => ("-", quote!(try_sub)),
            Mul(_) => ("*", quote!(try_mul)),
            Div(_) => ("/", quote!(try_div)),
            _ => {
                self.err(b.op.span(), "tensors combine with + - * /");
                return None;
            }
        };
        let span = b.op.span();
        let (lt, rt) = (self.is_tensor(&b.left), self.is_tensor(&b.right));
        match (lt, rt) {
            (true, true) => {
                let l = self.expr(&b.left);
                let r = self.expr(&b.right);
                let (l, r) = (l?, r?);
                if l.kind == ValKind::Mask || r.kind == ValKind::Mask {
                    self.err(span, format!("`{op}` on a bool mask"));
                    return None;
                }
                let (ls, rs) = (l.shape.clone(), r.shape.clone());
                let (lo, ro) = (l.origin.clone(), r.origin.clone());
                let shape = self.broadcast(&l.shape, &r.shape, span, &|| {
                    format!(
                        "shape mismatch in `{op}`: left (`{lo}`) is {ls}, right (`{ro}`) is {rs}"
                    )
                })?;
                let (lv, rv) = (&l.var, &r.var);
                let kind = if l.kind == ValKind::Float || r.kind == ValKind::Float {
                    ValKind::Float
                } else {
                    ValKind::Ids
                };
                Some(self.emit(
                    kind,
                    shape,
                    format!("{lo} {op} {ro}"),
                    quote_spanned!(span=> #lv.#method(&#rv)?),
                ))
            }
            (true, false) | (false, true) => {
                let (t, s) = if lt {
                    (&b.left, &b.right)
                } else {
                    (&b.right, &b.left)
                };
                let v = self.expr(t)?;
                let sc = self.scalar(s);
                let var = &v.var;
                let code = if lt {
                    quote_spanned!(span=> #var.#method(#sc)?)
                } else {
                    match op {
                        "+" | "*" => quote_spanned!(span=> #var.#method(#sc)?),
                        "-" => quote_spanned!(span=> #var.neg().try_add(#sc)?),
                        _ => quote_spanned!(span=> #var.reciprocal().try_mul(#sc)?),
                    }
                };
                Some(self.emit(v.kind, v.shape.clone(), v.origin.clone(), code))
            }
            (false, false) => {
                self.err(
                    b.span(),
                    "this expression has no tensor in it; compute sizes in the layer declarations",
                );
                None
            }
        }
    }

    fn layer(&self, name: &str) -> Option<&'a Layer> {
        self.layers.iter().find(|l| l.ident == name)
    }

    fn call(&mut self, c: &syn::ExprCall) -> Option<Val> {
        let Expr::Path(p) = &*c.func else {
            self.err(c.func.span(), "expected a layer or function name");
            return None;
        };
        let Some(fname) = p.path.get_ident() else {
            self.err(p.span(), "expected a layer or function name");
            return None;
        };
        let name = fname.to_string();
        if let Some(layer) = self.layer(&name) {
            return self.call_layer(layer, fname, c);
        }
        let span = fname.span();
        let args: Vec<&Expr> = c.args.iter().collect();
        match name.as_str() {
            "positions" => {
                let [n] = args[..] else {
                    self.err(span, "`positions(t)` takes one size");
                    return None;
                };
                let d = match self.names.dim(n, false) {
                    Ok(d) => d,
                    Err(e) => {
                        self.errors.push(e);
                        return None;
                    }
                };
                let code = d.code(Ctx::Forward);
                let dev = self.device();
                Some(self.emit(ValKind::Ids, Shape::known(vec![d]), "positions".into(), quote_spanned!(span=>
                    ::flint::Tensor::try_arange(0.0, (#code) as f64, 1.0, ::flint::TensorOptions { dtype: ::flint::DType::I64, device: #dev })?
                )))
            }
            "matmul" => {
                let [a, b] = args[..] else {
                    self.err(span, "`matmul(a, b)` takes two tensors");
                    return None;
                };
                let (a, b) = (self.expr(a), self.expr(b));
                self.matmul(a?, b?, span)
            }
            "cat" => self.cat(&args, span),
            "softmax" | "log_softmax" => {
                let [x, d] = args[..] else {
                    self.err(span, format!("`{name}(x, dim)` takes a tensor and a dim"));
                    return None;
                };
                let v = self.expr(x)?;
                self.unary_dim(v, &name, d, span)
            }
            _ if FUNCTIONS.contains(&name.as_str()) => {
                let [x] = args[..] else {
                    self.err(span, format!("`{name}(x)` takes one tensor"));
                    return None;
                };
                let v = self.expr(x)?;
                self.elementwise(v, &name, span)
            }
            _ => {
                let names: Vec<String> = self
                    .layers
                    .iter()
                    .map(|l| format!("`{}`", l.ident))
                    .collect();
                self.err(
                    span,
                    format!(
                        "unknown layer or function `{name}`: the layers of `{}` are {}; the functions are {}",
                        self.names.model,
                        if names.is_empty() { "none".to_string() } else { names.join(", ") },
                        FUNCTIONS.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn device(&self) -> TokenStream {
        // The device of the first argument: every forward has one.
        let mut vals: Vec<&Val> = self.env.values().collect();
        vals.sort_by_key(|v| v.var.to_string());
        match vals.first() {
            Some(v) => {
                let var = &v.var;
                quote!(#var.device())
            }
            None => quote!(::flint::Device::Cpu),
        }
    }

    fn elementwise(&mut self, v: Val, name: &str, span: Span) -> Option<Val> {
        if v.kind != ValKind::Float {
            self.err(
                span,
                format!(
                    "`{name}` needs a float tensor, got {} (`{}`)",
                    kind_word(v.kind),
                    v.origin
                ),
            );
            return None;
        }
        let var = &v.var;
        let code = match name {
            "gelu" => quote_spanned!(span=> #var.gelu(::flint::ops::GeluApprox::None)),
            _ => {
                let m = format_ident!("{}", name, span = span);
                quote_spanned!(span=> #var.#m())
            }
        };
        Some(self.emit(v.kind, v.shape.clone(), v.origin.clone(), code))
    }

    fn dim_arg(
        &mut self,
        v: &Val,
        d: &Expr,
        what: &str,
        span: Span,
    ) -> Option<(i64, Option<usize>)> {
        let Some(i) = lit_int(d) else {
            self.err(d.span(), format!("`{what}` takes an integer dim"));
            return None;
        };
        let rank_known = v.shape.rest.is_none();
        let idx = v.shape.index(i);
        if rank_known && idx.is_none() {
            self.err(
                span,
                format!(
                    "`{what}`: dim {i} is out of range for `{}` of shape {}",
                    v.origin, v.shape
                ),
            );
            return None;
        }
        Some((i, idx))
    }

    fn unary_dim(&mut self, v: Val, name: &str, d: &Expr, span: Span) -> Option<Val> {
        let (i, _) = self.dim_arg(&v, d, name, span)?;
        let var = &v.var;
        let m = format_ident!("{}", name, span = span);
        let i = i as isize;
        Some(self.emit(
            v.kind,
            v.shape.clone(),
            v.origin.clone(),
            quote_spanned!(span=> #var.#m(#i)),
        ))
    }

    fn matmul(&mut self, a: Val, b: Val, span: Span) -> Option<Val> {
        if a.shape.dims.len() < 2 || b.shape.dims.len() < 2 {
            self.err(
                span,
                format!(
                    "`matmul` needs two tensors of rank 2 or more, got {} and {}",
                    a.shape, b.shape
                ),
            );
            return None;
        }
        let (n, k1) = (
            &a.shape.dims[a.shape.dims.len() - 2],
            &a.shape.dims[a.shape.dims.len() - 1],
        );
        let (k2, m) = (
            &b.shape.dims[b.shape.dims.len() - 2],
            &b.shape.dims[b.shape.dims.len() - 1],
        );
        let (as_, bs) = (a.shape.clone(), b.shape.clone());
        let (ao, bo) = (a.origin.clone(), b.origin.clone());
        if !self.same_dim(k1, k2, span, &|| {
            format!("shape mismatch in `matmul`: `{ao}` is {as_} and `{bo}` is {bs}; the inner dims must agree")
        }) {
            return None;
        }
        let (ab, bb) = (
            Shape {
                rest: a.shape.rest,
                dims: a.shape.dims[..a.shape.dims.len() - 2].to_vec(),
            },
            Shape {
                rest: b.shape.rest,
                dims: b.shape.dims[..b.shape.dims.len() - 2].to_vec(),
            },
        );
        let mut out = self
            .broadcast(&ab, &bb, span, &|| {
                "batch dims of `matmul` do not broadcast".to_string()
            })
            .unwrap_or(ab);
        out.dims.push(n.clone());
        out.dims.push(m.clone());
        let (av, bv) = (&a.var, &b.var);
        Some(self.emit(
            ValKind::Float,
            out,
            "matmul".into(),
            quote_spanned!(span=> #av.try_matmul(&#bv)?),
        ))
    }

    fn cat(&mut self, args: &[&Expr], span: Span) -> Option<Val> {
        let [list, d] = args[..] else {
            self.err(
                span,
                "`cat([a, b, …], dim)` takes a list of tensors and a dim",
            );
            return None;
        };
        let Expr::Array(arr) = list else {
            self.err(list.span(), "`cat` takes a list `[a, b, …]`");
            return None;
        };
        let mut vals = Vec::new();
        for e in &arr.elems {
            vals.push(self.expr(e));
        }
        let vals: Vec<Val> = vals.into_iter().collect::<Option<_>>()?;
        let first = vals.first()?.clone();
        let (_, idx) = self.dim_arg(&first, d, "cat", span)?;
        let Some(idx) = idx else {
            self.err(
                span,
                "`cat` along a dim inside `..` is not checked; name the dims",
            );
            return None;
        };
        let mut total = first.shape.dims[idx].clone();
        for v in &vals[1..] {
            let (fs, vs, vo) = (first.shape.clone(), v.shape.clone(), v.origin.clone());
            if v.shape.dims.len() != first.shape.dims.len() || v.shape.rest != first.shape.rest {
                self.err(
                    span,
                    format!("`cat`: `{vo}` is {vs} but the first tensor is {fs}"),
                );
                return None;
            }
            for (j, (x, y)) in first.shape.dims.iter().zip(&v.shape.dims).enumerate() {
                if j == idx {
                    continue;
                }
                let msg = || {
                    format!("shape mismatch in `cat`: `{vo}` is {vs} but the first tensor is {fs} (all dims but the joined one must agree)")
                };
                if !self.same_dim(x, y, span, &msg) {
                    return None;
                }
            }
            total = total.add(&v.shape.dims[idx]);
        }
        let mut shape = first.shape.clone();
        shape.dims[idx] = total;
        let vars = vals.iter().map(|v| &v.var);
        let dd = lit_int(d).unwrap_or(0) as isize;
        Some(self.emit(
            first.kind,
            shape,
            "cat".into(),
            quote_spanned!(span=> ::flint::Tensor::try_cat(&[#(&#vars),*], #dd)?),
        ))
    }

    fn method(&mut self, m: &syn::ExprMethodCall) -> Option<Val> {
        let v = self.expr(&m.receiver)?;
        let name = m.method.to_string();
        let span = m.method.span();
        let args: Vec<&Expr> = m.args.iter().collect();
        let var = v.var.clone();
        match name.as_str() {
            "relu" | "gelu" | "tanh" | "sigmoid" | "silu" | "exp" | "log" | "sqrt" | "abs"
                if args.is_empty() =>
            {
                self.elementwise(v, &name, span)
            }
            "softmax" | "log_softmax" if args.len() == 1 => self.unary_dim(v, &name, args[0], span),
            "matmul" if args.len() == 1 => {
                let b = self.expr(args[0])?;
                self.matmul(v, b, span)
            }
            "transpose" if args.len() == 2 => {
                let (i, a) = self.dim_arg(&v, args[0], "transpose", span)?;
                let (j, b) = self.dim_arg(&v, args[1], "transpose", span)?;
                let (Some(a), Some(b)) = (a, b) else {
                    self.err(
                        span,
                        format!(
                            "`transpose`: dims {i} and {j} must be named dims of {}",
                            v.shape
                        ),
                    );
                    return None;
                };
                let mut shape = v.shape.clone();
                shape.dims.swap(a, b);
                let (i, j) = (i as isize, j as isize);
                Some(self.emit(
                    v.kind,
                    shape,
                    v.origin.clone(),
                    quote_spanned!(span=> #var.try_transpose(#i, #j)?),
                ))
            }
            "permute" if args.len() == 1 => {
                let Expr::Array(arr) = args[0] else {
                    self.err(args[0].span(), "`permute` takes `[dims]`");
                    return None;
                };
                let idx: Option<Vec<i64>> = arr.elems.iter().map(lit_int).collect();
                let n = v.shape.dims.len();
                let Some(idx) = idx.filter(|ix| v.shape.rest.is_none() && ix.len() == n) else {
                    self.err(
                        span,
                        format!("`permute` takes one integer per dim of {}", v.shape),
                    );
                    return None;
                };
                let mut dims = Vec::new();
                let mut seen = HashSet::new();
                for &i in &idx {
                    match v.shape.index(i) {
                        Some(k) if seen.insert(k) => dims.push(v.shape.dims[k].clone()),
                        _ => {
                            self.err(
                                span,
                                format!(
                                    "`permute({idx:?})` is not a permutation of the dims of {}",
                                    v.shape
                                ),
                            );
                            return None;
                        }
                    }
                }
                let idx = idx.iter().map(|&i| i as isize);
                Some(self.emit(
                    v.kind,
                    Shape::known(dims),
                    v.origin.clone(),
                    quote_spanned!(span=> #var.try_permute(&[#(#idx),*])?),
                ))
            }
            "reshape" | "view" if args.len() == 1 => self.reshape(v, args[0], &name, span),
            "flatten" if args.len() <= 2 => {
                let s = args.first().map_or(Some(0), |a| lit_int(a));
                let e = args.get(1).map_or(Some(-1), |a| lit_int(a));
                let (Some(s), Some(e)) = (s, e) else {
                    self.err(span, "`flatten(start, end)` takes integer dims");
                    return None;
                };
                let (a, b) = (v.shape.index(s), v.shape.index(e));
                let shape = match (a, b) {
                    (Some(a), Some(b)) if a <= b => {
                        let mut dims = v.shape.dims[..a].to_vec();
                        let prod = v.shape.dims[a..=b]
                            .iter()
                            .fold(Dim::lit(1), |p, d| p.mul(d));
                        dims.push(prod);
                        dims.extend_from_slice(&v.shape.dims[b + 1..]);
                        Shape {
                            rest: v.shape.rest,
                            dims,
                        }
                    }
                    _ if v.shape.rest.is_none() => {
                        self.err(
                            span,
                            format!("`flatten({s}, {e})` does not fit {}", v.shape),
                        );
                        return None;
                    }
                    _ => Shape {
                        rest: Some(self.fresh_rest()),
                        dims: vec![],
                    },
                };
                let (s, e) = (s as isize, e as isize);
                Some(self.emit(
                    v.kind,
                    shape,
                    v.origin.clone(),
                    quote_spanned!(span=> #var.try_flatten(#s, #e)?),
                ))
            }
            "unsqueeze" if args.len() == 1 => {
                let Some(i) = lit_int(args[0]) else {
                    self.err(args[0].span(), "`unsqueeze` takes an integer dim");
                    return None;
                };
                let n = v.shape.dims.len() as i64;
                let pos = if i < 0 { i + n + 1 } else { i };
                if v.shape.rest.is_none() && !(0..=n).contains(&pos)
                    || (v.shape.rest.is_some() && i >= 0)
                {
                    self.err(span, format!("`unsqueeze({i})` does not fit {}", v.shape));
                    return None;
                }
                let mut shape = v.shape.clone();
                shape.dims.insert(pos.clamp(0, n) as usize, Dim::lit(1));
                let i = i as isize;
                Some(self.emit(
                    v.kind,
                    shape,
                    v.origin.clone(),
                    quote_spanned!(span=> #var.try_unsqueeze(#i)?),
                ))
            }
            "sum" | "mean" if !args.is_empty() && args.len() <= 2 => {
                let (i, idx) = self.dim_arg(&v, args[0], &name, span)?;
                let keep = match args.get(1) {
                    None => false,
                    Some(Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    })) => b.value,
                    Some(o) => {
                        self.err(o.span(), "keepdim is `true` or `false`");
                        return None;
                    }
                };
                let mut shape = v.shape.clone();
                match idx {
                    Some(k) if keep => shape.dims[k] = Dim::lit(1),
                    Some(k) => {
                        shape.dims.remove(k);
                    }
                    None => {
                        shape = Shape {
                            rest: Some(self.fresh_rest()),
                            dims: vec![],
                        }
                    }
                }
                let m = format_ident!("try_{}", name, span = span);
                let i = i as isize;
                Some(self.emit(
                    ValKind::Float,
                    shape,
                    v.origin.clone(),
                    quote_spanned!(span=> #var.#m(#i, #keep)?),
                ))
            }
            "masked_fill" if args.len() == 2 => {
                let mask = self.expr(args[0])?;
                if mask.kind != ValKind::Mask {
                    self.err(
                        args[0].span(),
                        format!(
                            "`masked_fill` takes a bool mask, got {} (`{}`)",
                            kind_word(mask.kind),
                            mask.origin
                        ),
                    );
                    return None;
                }
                let (vs, ms, mo) = (v.shape.clone(), mask.shape.clone(), mask.origin.clone());
                self.broadcast(&v.shape, &mask.shape, span, &|| {
                    format!("shape mismatch in `masked_fill`: the mask `{mo}` is {ms}, which does not broadcast to {vs}")
                })?;
                let value = self.scalar(args[1]);
                let mv = &mask.var;
                Some(self.emit(
                    v.kind,
                    v.shape.clone(),
                    v.origin.clone(),
                    quote_spanned!(span=> #var.try_masked_fill(&#mv, #value)?),
                ))
            }
            "split_heads" if args.len() == 1 => {
                let h = match self.names.dim(args[0], false) {
                    Ok(h) => h,
                    Err(e) => {
                        self.errors.push(e);
                        return None;
                    }
                };
                if v.shape.dims.len() < 3 && v.shape.rest.is_none() || v.shape.dims.len() < 2 {
                    self.err(
                        span,
                        format!("`split_heads` takes [b, t, D], got {}", v.shape),
                    );
                    return None;
                }
                let n = v.shape.dims.len();
                let d = v.shape.dims[n - 1].clone();
                if let (Some(dl), Some(hl)) = (d.as_lit(), h.as_lit())
                    && (hl == 0 || dl % hl != 0)
                {
                    self.err(
                        args[0].span(),
                        format!("`split_heads({hl})`: {hl} heads do not divide the model dim {dl}"),
                    );
                    return None;
                }
                let mut dims = v.shape.dims[..n - 2].to_vec();
                dims.push(h.clone());
                dims.push(v.shape.dims[n - 2].clone());
                dims.push(d.div(&h));
                let hc = h.code(Ctx::Forward);
                Some(self.emit(v.kind, Shape { rest: v.shape.rest, dims }, v.origin.clone(), quote_spanned!(span=> {
                    let __s = #var.shape().to_vec();
                    let __n = __s.len();
                    let mut __new: ::std::vec::Vec<isize> = __s[..__n - 1].iter().map(|&d| d as isize).collect();
                    __new.push((#hc) as isize);
                    __new.push(-1);
                    #var.try_reshape(__new)?.try_transpose(-3, -2)?
                })))
            }
            "merge_heads" if args.is_empty() => {
                let n = v.shape.dims.len();
                if n < 3 {
                    self.err(
                        span,
                        format!("`merge_heads` takes [b, H, t, d], got {}", v.shape),
                    );
                    return None;
                }
                let mut dims = v.shape.dims[..n - 3].to_vec();
                dims.push(v.shape.dims[n - 2].clone());
                dims.push(v.shape.dims[n - 3].mul(&v.shape.dims[n - 1]));
                Some(self.emit(v.kind, Shape { rest: v.shape.rest, dims }, v.origin.clone(), quote_spanned!(span=> {
                    let __y = #var.try_transpose(-3, -2)?;
                    let __s = __y.shape().to_vec();
                    let __n = __s.len();
                    let mut __new: ::std::vec::Vec<isize> = __s[..__n - 2].iter().map(|&d| d as isize).collect();
                    __new.push(-1);
                    __y.try_reshape(__new)?
                })))
            }
            _ => {
                self.err(
                    span,
                    format!("unknown tensor method `{name}` with {} argument(s) in a `model!` body; known: relu, gelu, tanh, sigmoid, silu, exp, log, sqrt, abs, softmax(d), log_softmax(d), matmul(y), transpose(i, j), permute([..]), reshape([..]), view([..]), flatten(s, e), unsqueeze(d), sum(d, keep), mean(d, keep), masked_fill(mask, v), split_heads(h), merge_heads()", args.len()),
                );
                None
            }
        }
    }

    fn reshape(&mut self, v: Val, arg: &Expr, name: &str, span: Span) -> Option<Val> {
        let Expr::Array(arr) = arg else {
            self.err(arg.span(), format!("`{name}` takes `[dims]`"));
            return None;
        };
        let mut dims = Vec::new();
        let mut infer = None;
        let mut codes = Vec::new();
        for (i, e) in arr.elems.iter().enumerate() {
            if lit_int(e) == Some(-1) {
                if infer.is_some() {
                    self.err(e.span(), format!("`{name}`: only one dim may be -1"));
                    return None;
                }
                infer = Some(i);
                dims.push(Dim::lit(0));
                codes.push(quote!(-1isize));
                continue;
            }
            match self.names.dim(e, false) {
                Ok(d) => {
                    let c = d.code(Ctx::Forward);
                    codes.push(quote!((#c) as isize));
                    dims.push(d);
                }
                Err(err) => {
                    self.errors.push(err);
                    return None;
                }
            }
        }
        let known = |ds: &[Dim]| ds.iter().fold(Dim::lit(1), |p, d| p.mul(d));
        if v.shape.rest.is_none() {
            let total = known(&v.shape.dims);
            match infer {
                Some(i) => {
                    let others: Vec<Dim> = dims
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, d)| d.clone())
                        .collect();
                    let o = known(&others);
                    if let (Some(t), Some(ol)) = (total.as_lit(), o.as_lit())
                        && (ol == 0 || t % ol != 0)
                    {
                        self.err(
                            span,
                            format!(
                                "`{name}`: {} ({t} elements) cannot be viewed as [{}]",
                                v.shape,
                                arr.elems
                                    .iter()
                                    .map(|e| quote!(#e).to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        return None;
                    }
                    dims[i] = total.div(&o);
                }
                None => {
                    let new = known(&dims);
                    if let (Some(t), Some(n)) = (total.as_lit(), new.as_lit())
                        && t != n
                    {
                        self.err(
                            span,
                            format!(
                                "`{name}`: {} has {t} elements but [{}] has {n}",
                                v.shape,
                                dims.iter()
                                    .map(|d| d.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        return None;
                    }
                }
            }
        } else if let Some(i) = infer {
            dims[i] = Dim::atom(Atom::Sym(format!("?{}", self.fresh_rest())));
        }
        let var = &v.var;
        let m = format_ident!("try_{}", name, span = span);
        Some(self.emit(
            v.kind,
            Shape::known(dims),
            v.origin.clone(),
            quote_spanned!(span=> #var.#m([#(#codes),*])?),
        ))
    }

    fn call_layer(&mut self, layer: &'a Layer, fname: &Ident, c: &syn::ExprCall) -> Option<Val> {
        let span = fname.span();
        let lname = fname.to_string();
        // Arguments: tensors, the `causal` flag, `padding = mask`.
        let mut vals: Vec<(Val, Span)> = Vec::new();
        let mut causal = false;
        let mut padding: Option<(Val, Span)> = None;
        let mut failed = false;
        for a in &c.args {
            match a {
                Expr::Path(p) if p.path.is_ident("causal") && !self.env.contains_key("causal") => {
                    causal = true
                }
                Expr::Assign(asg) if matches!(&*asg.left, Expr::Path(p) if p.path.is_ident("padding")) => {
                    match self.expr(&asg.right) {
                        Some(v) => padding = Some((v, asg.right.span())),
                        None => failed = true,
                    }
                }
                _ => match self.expr(a) {
                    Some(v) => vals.push((v, a.span())),
                    None => failed = true,
                },
            }
        }
        if failed {
            return None;
        }
        let is_attention = matches!(layer.kind, LayerKind::Attention { .. });
        if (causal || padding.is_some()) && !is_attention {
            self.err(span, format!("`causal` and `padding = …` are arguments of attention layers; `{lname}` is not one"));
            return None;
        }
        let Some((x, _)) = vals.first().cloned() else {
            self.err(span, format!("`{lname}` needs an input"));
            return None;
        };
        let produced = |v: &Val| format!("`{}` produces {}", v.origin, v.shape);
        let want_float = |this: &mut Self, v: &Val, sp: Span| -> bool {
            if v.kind != ValKind::Float {
                this.err(
                    sp,
                    format!(
                        "`{lname}` takes a float tensor, but `{}` is {}",
                        v.origin,
                        kind_word(v.kind)
                    ),
                );
                false
            } else {
                true
            }
        };
        let one_arg = |this: &mut Self| -> bool {
            if vals.len() != 1 {
                this.err(
                    span,
                    format!("`{lname}` takes one input, got {}", vals.len()),
                );
                false
            } else {
                true
            }
        };
        let out_shape: Shape = match &layer.kind {
            LayerKind::Linear { .. } | LayerKind::LastDim { .. } => {
                let (inp, out) = match &layer.kind {
                    LayerKind::Linear { inp, out } => (inp, out),
                    LayerKind::LastDim { d } => (d, d),
                    _ => unreachable!("matched above"),
                };
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                let Some(last) = x.shape.dims.last() else {
                    if x.shape.rest.is_none() {
                        self.err(
                            span,
                            format!(
                                "`{lname}` expects [.., {inp}] but {} (a scalar)",
                                produced(&x)
                            ),
                        );
                        return None;
                    }
                    let r = self.fresh_rest();
                    return Some(self.finish_call(
                        layer,
                        &vals,
                        None,
                        false,
                        Shape {
                            rest: Some(r),
                            dims: vec![out.clone()],
                        },
                        span,
                    ));
                };
                let msg = || {
                    format!(
                        "shape mismatch: {} but `{lname}` expects [.., {inp}]",
                        produced(&x)
                    )
                };
                if !self.same_dim(last, inp, span, &msg) {
                    return None;
                }
                x.shape.with_last(out.clone())
            }
            LayerKind::Embedding { d } => {
                if !one_arg(self) {
                    return None;
                }
                if x.kind != ValKind::Ids {
                    self.err(span, format!("`{lname}` is an embedding and takes integer ids (`Ids[..]`), but `{}` is {}", x.origin, kind_word(x.kind)));
                    return None;
                }
                let mut s = x.shape.clone();
                s.dims.push(d.clone());
                s
            }
            LayerKind::Same => {
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                x.shape.clone()
            }
            LayerKind::Channels { nd, c } => {
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                let ranks: Vec<usize> = if *nd == 1 { vec![2, 3] } else { vec![nd + 2] };
                if x.shape.rest.is_none() && !ranks.contains(&x.shape.dims.len())
                    || x.shape.dims.len() < 2
                {
                    self.err(
                        span,
                        format!(
                            "`{lname}` expects [b, {c}, ..] (rank {}) but {}",
                            ranks
                                .iter()
                                .map(|r| r.to_string())
                                .collect::<Vec<_>>()
                                .join(" or "),
                            produced(&x)
                        ),
                    );
                    return None;
                }
                let ci = if x.shape.rest.is_none() {
                    1
                } else {
                    x.shape.dims.len() - nd - 1
                };
                let msg = || {
                    format!(
                        "shape mismatch: {} but `{lname}` expects {c} channels at dim 1",
                        produced(&x)
                    )
                };
                if !self.same_dim(&x.shape.dims[ci], c, span, &msg) {
                    return None;
                }
                x.shape.clone()
            }
            LayerKind::Conv {
                nd,
                cin,
                cout,
                k,
                s,
                p,
                d,
            } => {
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                self.spatial(&x, &lname, *nd, Some((cin, cout)), (k, s, p, d), span)?
            }
            LayerKind::Pool { nd, k, s, p } => {
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                self.spatial(&x, &lname, *nd, None, (k, s, p, &Dim::lit(1)), span)?
            }
            LayerKind::Flatten => {
                if !one_arg(self) || !want_float(self, &x, span) {
                    return None;
                }
                if x.shape.rest.is_some() || x.shape.dims.is_empty() {
                    Shape {
                        rest: None,
                        dims: vec![
                            x.shape
                                .dims
                                .first()
                                .cloned()
                                .unwrap_or(Dim::atom(Atom::Sym("?".into()))),
                            Dim::atom(Atom::Sym(format!("?{}", self.fresh_rest()))),
                        ],
                    }
                } else {
                    let prod = x.shape.dims[1..].iter().fold(Dim::lit(1), |a, b| a.mul(b));
                    Shape::known(vec![x.shape.dims[0].clone(), prod])
                }
            }
            LayerKind::Attention { d, heads } => {
                return self.attention(layer, &lname, &vals, causal, padding, d, heads, span);
            }
            LayerKind::Rule(rule) => self.apply_rule(rule, &lname, &vals, span)?,
            LayerKind::Unknown => Shape {
                rest: Some(self.fresh_rest()),
                dims: vec![],
            },
        };
        if layer.list {
            let (i, o) = (x.shape.clone(), out_shape.clone());
            let msg = || {
                format!("`{lname}` is a list of layers applied in turn, so each must keep the shape; here it maps {i} to {o}")
            };
            if !self.same_shape(&x.shape, &out_shape, span, &msg) {
                return None;
            }
        }
        Some(self.finish_call(layer, &vals, None, false, out_shape, span))
    }

    fn finish_call(
        &mut self,
        layer: &Layer,
        vals: &[(Val, Span)],
        pad: Option<&Val>,
        causal: bool,
        shape: Shape,
        span: Span,
    ) -> Val {
        let f = &layer.ident;
        let recv = if layer.list {
            quote!(__m)
        } else {
            quote!(self.#f)
        };
        let first = if layer.list {
            quote!(__acc)
        } else {
            let v = &vals[0].0.var;
            quote!(#v)
        };
        let rest: Vec<&Ident> = vals[1..].iter().map(|(v, _)| &v.var).collect();
        let call = match layer.call {
            CallStyle::Forward => {
                quote_spanned!(span=> ::flint::nn::Forward::try_forward(&#recv, &#first)?)
            }
            CallStyle::Method => quote_spanned!(span=> #recv.try_forward(&#first #(, &#rest)*)?),
            CallStyle::Attention => {
                let kv = rest.first().map_or_else(|| first.clone(), |v| quote!(#v));
                let mask = match rest.get(1) {
                    Some(m) => quote!(::core::option::Option::Some(&#m)),
                    None => quote!(::core::option::Option::None),
                };
                let pad = match pad {
                    Some(p) => {
                        let p = &p.var;
                        quote!(::core::option::Option::Some(&#p))
                    }
                    None => quote!(::core::option::Option::None),
                };
                quote_spanned!(span=> #recv.try_forward(&#first, &#kv, &#kv, &::flint::nn::AttnMasks {
                    attn_mask: #mask,
                    key_padding_mask: #pad,
                    is_causal: #causal,
                    need_weights: false,
                    ..::core::default::Default::default()
                })?.0)
            }
        };
        let code = if layer.list {
            let v0 = &vals[0].0.var;
            quote_spanned!(span=> {
                let mut __acc: ::flint::Tensor = ::core::clone::Clone::clone(&#v0);
                for __m in self.#f.iter() {
                    __acc = #call;
                }
                __acc
            })
        } else {
            call
        };
        self.emit(ValKind::Float, shape, f.to_string(), code)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        layer: &Layer,
        lname: &str,
        vals: &[(Val, Span)],
        causal: bool,
        padding: Option<(Val, Span)>,
        d: &Dim,
        heads: &Dim,
        span: Span,
    ) -> Option<Val> {
        let _ = heads;
        // attn(x), attn(x, mask), attn(q, kv), attn(q, kv, mask): a mask is told apart by its kind.
        let mut tensors: Vec<&(Val, Span)> = Vec::new();
        let mut mask: Option<&(Val, Span)> = None;
        for v in vals {
            if v.0.kind == ValKind::Mask {
                if mask.is_some() {
                    self.err(v.1, format!("`{lname}` takes one attention mask"));
                    return None;
                }
                mask = Some(v);
            } else {
                tensors.push(v);
            }
        }
        if tensors.is_empty() || tensors.len() > 2 {
            self.err(span, format!("`{lname}` takes a query and optionally a key/value tensor, then an optional mask, `causal` and `padding = …`; got {} tensors", tensors.len()));
            return None;
        }
        let q = &tensors[0].0;
        let kv = tensors.get(1).map_or(q, |t| &t.0);
        for (v, sp) in &tensors {
            if v.kind != ValKind::Float {
                self.err(
                    *sp,
                    format!(
                        "`{lname}` takes float tensors, but `{}` is {}",
                        v.origin,
                        kind_word(v.kind)
                    ),
                );
                return None;
            }
            let rank_ok = v.shape.rest.is_some() || v.shape.dims.len() == 3;
            if !rank_ok || v.shape.dims.is_empty() {
                self.err(
                    *sp,
                    format!(
                        "`{lname}` (batch-first attention) expects [b, t, {d}] but `{}` is {}",
                        v.origin, v.shape
                    ),
                );
                return None;
            }
            let msg = || {
                format!(
                    "shape mismatch: `{}` produces {} but `{lname}` expects [b, t, {d}]",
                    v.origin, v.shape
                )
            };
            if !self.same_dim(v.shape.dims.last()?, d, *sp, &msg) {
                return None;
            }
        }
        let (qt, st) = (
            q.shape
                .dims
                .len()
                .checked_sub(2)
                .map(|i| q.shape.dims[i].clone()),
            kv.shape
                .dims
                .len()
                .checked_sub(2)
                .map(|i| kv.shape.dims[i].clone()),
        );
        if let Some((m, msp)) = mask {
            let n = m.shape.dims.len();
            let want = match (&qt, &st) {
                (Some(a), Some(b)) => format!("[{a}, {b}]"),
                _ => "[t, s]".into(),
            };
            if m.shape.rest.is_some() || (n != 2 && n != 3) {
                self.err(*msp, format!("wrong mask rank: `{lname}` takes an attention mask {want} (queries × keys), but `{}` is {} (rank {n})", m.origin, m.shape));
                return None;
            }
            if let (Some(a), Some(b)) = (&qt, &st) {
                let got = Shape::known(m.shape.dims[n - 2..].to_vec());
                let msg = || {
                    format!("shape mismatch: the mask `{}` is {} but `{lname}` attends {want} (queries × keys)", m.origin, m.shape)
                };
                if !self.same_shape(&got, &Shape::known(vec![a.clone(), b.clone()]), *msp, &msg) {
                    return None;
                }
            }
        }
        if let Some((p, psp)) = &padding {
            if p.kind != ValKind::Mask || p.shape.rest.is_some() || p.shape.dims.len() != 2 {
                self.err(*psp, format!("`padding = …` takes a bool mask [b, s] (true at padded keys), but `{}` is {} {}", p.origin, kind_word(p.kind), p.shape));
                return None;
            }
            if let Some(s) = &st {
                let msg = || {
                    format!(
                        "shape mismatch: the padding mask `{}` is {} but the keys have length {s}",
                        p.origin, p.shape
                    )
                };
                if !self.same_dim(&p.shape.dims[1], s, *psp, &msg) {
                    return None;
                }
            }
        }
        // Order the generated call's arguments: query, kv, mask.
        let mut ordered: Vec<(Val, Span)> = vec![
            tensors[0].clone(),
            tensors
                .get(1)
                .map_or_else(|| tensors[0].clone(), |t| (*t).clone()),
        ];
        if let Some(m) = mask {
            ordered.push(m.clone());
        }
        let shape = q.shape.clone();
        Some(self.finish_call(
            layer,
            &ordered,
            padding.as_ref().map(|p| &p.0),
            causal,
            shape,
            span,
        ))
    }

    fn spatial(
        &mut self,
        x: &Val,
        lname: &str,
        nd: usize,
        ch: Option<(&Dim, &Dim)>,
        (k, s, p, d): (&Dim, &Dim, &Dim, &Dim),
        span: Span,
    ) -> Option<Shape> {
        let n = x.shape.dims.len();
        let rank_ok = if x.shape.rest.is_some() {
            n > nd
        } else {
            n == nd + 2 || n == nd + 1
        };
        if !rank_ok {
            let cin = ch.map_or("C".to_string(), |c| c.0.to_string());
            let sp = ["h", "w", "d"][..nd].join(", ");
            self.err(
                span,
                format!(
                    "`{lname}` expects [b, {cin}, {sp}] (rank {}) but `{}` produces {} (rank {n})",
                    nd + 2,
                    x.origin,
                    x.shape
                ),
            );
            return None;
        }
        let mut out = x.shape.clone();
        if let Some((cin, cout)) = ch {
            let ci = n - nd - 1;
            let msg = || {
                format!("shape mismatch: `{}` produces {} but `{lname}` expects {cin} input channels at dim {}", x.origin, x.shape, ci)
            };
            if !self.same_dim(&x.shape.dims[ci], cin, span, &msg) {
                return None;
            }
            out.dims[ci] = cout.clone();
        }
        for i in n - nd..n {
            let size = &x.shape.dims[i];
            // (size + 2p - d(k - 1) - 1) / s + 1, as PyTorch's docs give it.
            let num = size
                .add(&p.mul(&Dim::lit(2)))
                .sub(&d.mul(&k.sub(&Dim::lit(1))))
                .sub(&Dim::lit(1));
            if let Some(v) = num.as_lit()
                && v < 0
            {
                self.err(span, format!("`{lname}`: the input size {size} at dim {i} is smaller than the kernel ({k}, dilation {d}, padding {p})"));
                return None;
            }
            out.dims[i] = num.div(s).add(&Dim::lit(1));
        }
        Some(out)
    }

    fn apply_rule(
        &mut self,
        rule: &Rule,
        lname: &str,
        vals: &[(Val, Span)],
        span: Span,
    ) -> Option<Shape> {
        if vals.len() != rule.args.len() {
            self.err(
                span,
                format!(
                    "`{lname}` takes {} input(s), got {}",
                    rule.args.len(),
                    vals.len()
                ),
            );
            return None;
        }
        let mut bound: HashMap<String, Dim> = HashMap::new();
        for ((kind, pat), (v, sp)) in rule.args.iter().zip(vals) {
            if *kind != v.kind {
                self.err(
                    *sp,
                    format!(
                        "`{lname}` takes {} here, but `{}` is {}",
                        kind_word(*kind),
                        v.origin,
                        kind_word(v.kind)
                    ),
                );
                return None;
            }
            let fail = |this: &mut Self| {
                let subst = pat_subst(pat, &bound, false);
                this.err(
                    *sp,
                    format!(
                        "shape mismatch: `{}` produces {} but `{lname}` expects {subst}",
                        v.origin, v.shape
                    ),
                );
            };
            if pat.rest.is_none() && v.shape.rest.is_none() && pat.dims.len() != v.shape.dims.len()
                || v.shape.rest.is_none() && v.shape.dims.len() < pat.dims.len()
            {
                fail(self);
                return None;
            }
            let n = pat.dims.len().min(v.shape.dims.len());
            let off_p = pat.dims.len() - n;
            let off_v = v.shape.dims.len() - n;
            for i in 0..n {
                let (pd, vd) = (&pat.dims[off_p + i], &v.shape.dims[off_v + i]);
                if let Some(Atom::Sym(s)) = pd.as_atom()
                    && !bound.contains_key(s)
                {
                    bound.insert(s.clone(), vd.clone());
                    continue;
                }
                let want = pd.subst(&|a| match a {
                    Atom::Sym(s) => bound.get(s).cloned(),
                    _ => None,
                });
                if want.atoms_unbound(&bound) {
                    continue;
                }
                let (vo, vs, ws) = (
                    v.origin.clone(),
                    v.shape.clone(),
                    pat_subst(pat, &bound, false),
                );
                let msg =
                    || format!("shape mismatch: `{vo}` produces {vs} but `{lname}` expects {ws}");
                if !self.same_dim(vd, &want, *sp, &msg) {
                    return None;
                }
            }
        }
        let mut out = pat_subst(&rule.ret, &bound, true);
        if rule.ret.rest.is_some() {
            out.rest = vals
                .first()
                .and_then(|(v, _)| v.shape.rest)
                .or(Some(self.fresh_rest()));
            // A rule's `..` stands for the leading dims of its first input.
            if let Some((v, _)) = vals.first()
                && let Some(pat) = rule.args.first()
            {
                if pat.1.rest.is_some() && v.shape.dims.len() > pat.1.dims.len() {
                    let extra = v.shape.dims.len() - pat.1.dims.len();
                    let mut dims = v.shape.dims[..extra].to_vec();
                    dims.extend(out.dims);
                    out = Shape {
                        rest: v.shape.rest,
                        dims,
                    };
                } else {
                    out.rest = v.shape.rest;
                }
            }
        }
        Some(out)
    }
}

impl Dim {
    fn atoms_unbound(&self, bound: &HashMap<String, Dim>) -> bool {
        let mut names = Vec::new();
        collect_syms(self, &mut names);
        names.iter().any(|n| !bound.contains_key(n))
    }
}

fn collect_syms(d: &Dim, out: &mut Vec<String>) {
    for a in d.atom_list() {
        match a {
            Atom::Sym(n) => out.push(n.clone()),
            Atom::Opaque(n, m, _) => {
                collect_syms(n, out);
                collect_syms(m, out);
            }
            _ => {}
        }
    }
}

/// A rule's pattern with its bound symbols replaced; an unbound one stays as written
/// (for messages) or, with `unknown`, becomes the unknown `?s` (for outputs).
fn pat_subst(pat: &Shape, bound: &HashMap<String, Dim>, unknown: bool) -> Shape {
    Shape {
        rest: pat.rest,
        dims: pat
            .dims
            .iter()
            .map(|d| {
                d.subst(&|a| match a {
                    Atom::Sym(s) => bound
                        .get(s)
                        .cloned()
                        .or_else(|| unknown.then(|| Dim::atom(Atom::Sym(format!("?{s}"))))),
                    _ => None,
                })
            })
            .collect(),
    }
}

/// Reads a rule (`#[shape(…)]` or a model's signature) into patterns, with `subst` for
/// the callee's generics and parameters.
pub fn rule_from(names: &mut Names, args: &[ArgDecl], ret: &ShapeLit) -> syn::Result<Rule> {
    let mut out = Vec::new();
    for a in args {
        out.push((a.kind, names.shape(&a.shape, true, 1)?));
    }
    let ret = names.shape(ret, true, 1)?;
    Ok(Rule { args: out, ret })
}

/// Checks a chain of single-input layers (`#[module(sequential)]`): each declared output
/// against the next declared input. `None` = unknown rule (the chain is cut); layers known
/// to keep the shape are left out by the caller.
pub fn check_chain(chain: &[(String, Span, Rule)]) -> Vec<syn::Error> {
    let mut names = Names {
        model: String::new(),
        generics: vec![],
        params: vec![],
        syms: HashSet::new(),
    };
    let layers: Vec<Layer> = Vec::new();
    let mut ck = Checker::new(&mut names, &layers);
    let mut errors = Vec::new();
    for w in chain.windows(2) {
        let (prev, next) = (&w[0], &w[1]);
        // The previous layer's own symbols are unknowns here, not data dims.
        let unknown = |d: &Dim| {
            d.subst(&|a| match a {
                Atom::Sym(n) if !n.starts_with('?') => Some(Dim::atom(Atom::Sym(format!("?{n}")))),
                _ => None,
            })
        };
        let val = Val {
            kind: ValKind::Float,
            shape: Shape {
                rest: prev.2.ret.rest,
                dims: prev.2.ret.dims.iter().map(unknown).collect(),
            },
            var: format_ident!("x"),
            origin: prev.0.clone(),
        };
        ck.apply_rule(&next.2, &next.0, &[(val, next.1)], next.1);
    }
    errors.append(&mut ck.errors);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn names() -> Names {
        Names {
            model: "M".into(),
            generics: vec!["D".into()],
            params: vec![("vocab".into(), true)],
            syms: HashSet::new(),
        }
    }

    #[test]
    fn reads_dims() {
        let mut n = names();
        let d = n.dim(&syn::parse_quote!(4 * D + vocab), false).unwrap();
        assert_eq!(d.to_string(), "4 * D + vocab");
        assert!(n.dim(&syn::parse_quote!(t), false).is_err());
        assert!(n.dim(&syn::parse_quote!(t), true).is_ok());
        assert!(n.syms.contains("t"));
        assert_eq!(
            n.dim(&syn::parse_quote!(WIDTH), false).unwrap().to_string(),
            "WIDTH"
        );
        let code = n.remap(quote!((vocab as f64).sqrt() * t as f64), Ctx::Forward);
        assert_eq!(
            code.to_string(),
            "(self . vocab as f64) . sqrt () * __dim_t as f64"
        );
    }

    #[test]
    fn chain_reports_literal_mismatch() {
        let mut n = names();
        let r1 = rule_from(
            &mut n,
            &[syn::parse_quote!(x: [.., 784])],
            &syn::parse_quote!([.., 512]),
        )
        .unwrap();
        let r2 = rule_from(
            &mut n,
            &[syn::parse_quote!(x: [.., 256])],
            &syn::parse_quote!([.., 10]),
        )
        .unwrap();
        let errs = check_chain(&[
            ("fc1".into(), Span::call_site(), r1.clone()),
            ("fc2".into(), Span::call_site(), r2),
        ]);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "shape mismatch: `fc1` produces [.., 512] but `fc2` expects [.., 256]"
        );
        let r3 = rule_from(
            &mut n,
            &[syn::parse_quote!(x: [.., 512])],
            &syn::parse_quote!([.., 10]),
        )
        .unwrap();
        assert!(check_chain(&[
            ("fc1".into(), Span::call_site(), r1),
            ("fc3".into(), Span::call_site(), r3)
        ])
        .is_empty());
    }
}
