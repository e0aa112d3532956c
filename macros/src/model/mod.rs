//! `model!`: parse (`parse`) → check, following the forward body through the shape rules
//! of the layers (`check`, over the symbolic dims of `dim`) → generate (here).
//!
//! Every error is collected and reported at its token; when there are errors the models
//! are still emitted as stubs with the same struct, constructor and `forward` signatures,
//! so the user's other code shows no follow-on errors.

pub mod check;
pub mod dim;
pub mod parse;

use check::{CallStyle, Checker, Deferred, Layer, LayerKind, Names, Rule};
use dim::{Atom, Ctx, Dim};
use parse::{Arg, FieldDecl, Input, ModelDef};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use std::collections::{HashMap, HashSet};
use syn::spanned::Spanned;
use syn::{Expr, Ident};

/// Expands a `model!` invocation.
pub fn expand(input: TokenStream) -> TokenStream {
    let input: Input = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut out = TokenStream::new();
    // The rules of the models of this block, for models that use them.
    let mut sigs: HashMap<String, (&ModelDef, Option<Rule>)> = HashMap::new();
    for m in &input.models {
        let mut names = names_of(m);
        let rule = check::rule_from(&mut names, &m.forward.args, &m.forward.ret).ok();
        sigs.insert(m.ident.to_string(), (m, rule));
    }
    for m in &input.models {
        out.extend(expand_model(m, &sigs));
    }
    out
}

fn names_of(m: &ModelDef) -> Names {
    Names {
        model: m.ident.to_string(),
        generics: m.generics.iter().map(|g| g.to_string()).collect(),
        params: m
            .params
            .iter()
            .map(|(n, t)| {
                (
                    n.to_string(),
                    matches!(t, syn::Type::Path(p) if p.path.is_ident("usize")),
                )
            })
            .collect(),
        syms: HashSet::new(),
    }
}

/// One resolved field: the layer, its Rust type and how to build one.
struct Built {
    layer: Layer,
    ty: TokenStream,
    ctor: TokenStream,
    count: Option<TokenStream>,
    attrs: Vec<syn::Attribute>,
}

fn expand_model(m: &ModelDef, sigs: &HashMap<String, (&ModelDef, Option<Rule>)>) -> TokenStream {
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut names = names_of(m);
    let mut asserts: Vec<TokenStream> = Vec::new();
    let mut free_asserts: Vec<TokenStream> = Vec::new();
    let mut ctor_checks: Vec<TokenStream> = Vec::new();
    let ident = &m.ident;
    let model = ident.to_string();

    let mut seen_params = HashSet::new();
    for (p, _) in &m.params {
        if !seen_params.insert(p.to_string()) {
            errors.push(syn::Error::new(
                p.span(),
                format!("two constructor parameters are named `{p}`"),
            ));
        }
        if p == "opts" {
            errors.push(syn::Error::new(
                p.span(),
                "`opts` is the constructor's tensor-options argument; rename this parameter",
            ));
        }
    }

    // Fields.
    let mut built: Vec<Built> = Vec::new();
    let mut seen = HashSet::new();
    for f in &m.fields {
        if !seen.insert(f.ident.to_string()) {
            errors.push(syn::Error::new(
                f.ident.span(),
                format!("two layers are named `{}`", f.ident),
            ));
        }
        match resolve(f, &mut names, sigs, &mut asserts, &mut free_asserts, &model) {
            Ok(b) => built.push(b),
            Err(e) => {
                errors.push(e);
                // Known to exist, shape unknown: its calls raise no follow-on errors.
                built.push(Built {
                    layer: Layer {
                        ident: f.ident.clone(),
                        kind: LayerKind::Unknown,
                        call: CallStyle::Method,
                        list: false,
                    },
                    ty: quote!(()),
                    ctor: quote!(()),
                    count: None,
                    attrs: Vec::new(),
                });
            }
        }
    }

    // Relations of the struct: const assertions, or checks in the constructor.
    for rel in &m.relations {
        let ts = quote!(#rel);
        let mut ment = Vec::new();
        names.mentions(&ts, &mut ment);
        let text = ts.to_string();
        if let Err(e) = check_relation_literal(rel) {
            errors.push(e);
            continue;
        }
        if ment.is_empty() {
            let msg = format!("{model}: `{text}` does not hold");
            asserts.push(quote_spanned!(rel.span()=> ::core::assert!(#rel, #msg);));
        } else {
            let shown = ment
                .iter()
                .map(|(n, _)| format!("{n} = {{}}"))
                .collect::<Vec<_>>()
                .join(", ");
            let vals = ment.iter().map(|(n, _)| format_ident!("{}", n));
            ctor_checks.push(quote_spanned!(rel.span()=>
                let __holds: bool = #rel;
                if !__holds {
                    return ::core::result::Result::Err(::flint::Error::config(
                        ::core::concat!(::core::stringify!(#ident), "::new"),
                        ::std::format!(::core::concat!("`", #text, "` does not hold (", #shown, ")"), #(#vals),*),
                    ));
                }
            ));
        }
    }

    // The forward body.
    let layers: Vec<Layer> = built.iter().map(|b| clone_layer(&b.layer)).collect();
    let fwd = &m.forward;
    let mut ck = Checker::new(&mut names, &layers);
    let entry = ck.bind_args(&model, &fwd.args);
    let ret = ck.names.shape(&fwd.ret, false, 0);
    let ret = match ret {
        Ok(r) => r,
        Err(e) => {
            ck.errors.push(e);
            check::Shape {
                rest: Some(0),
                dims: vec![],
            }
        }
    };
    let body = ck.body(&fwd.body, &ret, fwd.ret.span);
    let mut fwd_rel = Vec::new();
    for rel in &fwd.relations {
        let ts = quote!(#rel);
        let mut ment = Vec::new();
        ck.names.mentions(&ts, &mut ment);
        let code = ck.names.remap(ts.clone(), Ctx::Forward);
        let text = ts.to_string();
        let shown = ment
            .iter()
            .map(|(n, _)| format!("{n} = {{}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let vals: Vec<TokenStream> = ment
            .iter()
            .map(|(n, _)| {
                let id = format_ident!("{}", n);
                ck.names.remap(quote!(#id), Ctx::Forward)
            })
            .collect();
        fwd_rel.push(quote_spanned!(rel.span()=>
            __check.relation(#code, #text, ::std::format!(#shown, #(#vals),*))?;
        ));
    }
    let deferred = std::mem::take(&mut ck.deferred);
    errors.append(&mut ck.errors);
    drop(ck);
    let mut type_checks = Vec::new();
    for d in &deferred {
        deferred_check(d, Some(&mut type_checks), &mut asserts, &mut free_asserts);
    }

    generate(
        m,
        &built,
        errors,
        GenParts {
            asserts,
            free_asserts,
            ctor_checks,
            type_checks,
            entry,
            fwd_rel,
            body,
        },
    )
}

fn check_relation_literal(rel: &Expr) -> syn::Result<()> {
    match rel {
        Expr::Binary(b)
            if matches!(
                b.op,
                syn::BinOp::Eq(_)
                    | syn::BinOp::Ne(_)
                    | syn::BinOp::Le(_)
                    | syn::BinOp::Lt(_)
                    | syn::BinOp::Ge(_)
                    | syn::BinOp::Gt(_)
                    | syn::BinOp::And(_)
                    | syn::BinOp::Or(_)
            ) =>
        {
            Ok(())
        }
        _ => Err(syn::Error::new(
            rel.span(),
            "a `where` relation compares sizes: `D % H == 0`, `FF == 4 * D`, `t <= ctx`",
        )),
    }
}

fn clone_layer(l: &Layer) -> Layer {
    Layer {
        ident: l.ident.clone(),
        kind: l.kind.clone(),
        call: l.call,
        list: l.list,
    }
}

/// An equality only the compiler can decide: a type error where both sides are plain
/// names or literals (`Dim<FF>` vs `Dim<H>`), else a const assertion.
fn deferred_check(
    d: &Deferred,
    type_checks: Option<&mut Vec<TokenStream>>,
    asserts: &mut Vec<TokenStream>,
    free: &mut Vec<TokenStream>,
) {
    let bare = |x: &Dim| {
        x.as_lit().is_some() || matches!(x.as_atom(), Some(Atom::Generic(_) | Atom::Const(_)))
    };
    let span = d.span;
    if let Some(type_checks) = type_checks.filter(|_| bare(&d.a) && bare(&d.b)) {
        let (a, b) = (d.a.code(Ctx::Const), d.b.code(Ctx::Const));
        type_checks.push(quote_spanned!(span=>
            let _: ::flint::nn::shape::Dim<{ #a }> = ::flint::nn::shape::Dim::<{ #b }>;
        ));
        return;
    }
    let (ap, an) = d.a.split_code(Ctx::Const);
    let (bp, bn) = d.b.split_code(Ctx::Const);
    let an = an.unwrap_or(quote!(0usize));
    let bn = bn.unwrap_or(quote!(0usize));
    let msg = &d.msg;
    let a = quote_spanned!(span=> ::core::assert!(#ap + #bn == #bp + #an, #msg););
    if d.a.has_generic() || d.b.has_generic() {
        asserts.push(a);
    } else {
        free.push(quote_spanned!(span=> const _: () = { #a };));
    }
}

/// Positional size chains and `name = value` options of a layer's arguments.
type SplitArgs<'a> = (Vec<(&'a Vec<Expr>, Span)>, Vec<(&'a Ident, &'a Expr)>);

fn opt_map(args: &[Arg]) -> SplitArgs<'_> {
    let mut dims = Vec::new();
    let mut opts = Vec::new();
    for a in args {
        match a {
            Arg::Dims(d, s) => dims.push((d, *s)),
            Arg::Opt(k, v) => opts.push((k, v)),
        }
    }
    (dims, opts)
}

/// The built-in layers: what `model!` knows of each.
const BUILTINS: [&str; 24] = [
    "Linear",
    "Embedding",
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "ReLU",
    "Gelu",
    "Tanh",
    "Sigmoid",
    "SiLU",
    "Identity",
    "LeakyReLU",
    "Softmax",
    "LogSoftmax",
    "Conv1d",
    "Conv2d",
    "MaxPool1d",
    "MaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "Flatten",
    "MultiheadAttention",
    "FeedForward",
];

fn resolve(
    f: &FieldDecl,
    names: &mut Names,
    sigs: &HashMap<String, (&ModelDef, Option<Rule>)>,
    asserts: &mut Vec<TokenStream>,
    free: &mut Vec<TokenStream>,
    model: &str,
) -> syn::Result<Built> {
    let spec = &f.spec;
    let last = spec
        .path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    let single = spec.path.segments.len() == 1 && spec.path.segments[0].arguments.is_empty();
    let fname = f.ident.to_string();
    let count = match &f.count {
        Some(c) => {
            let d = names.dim(c, false)?;
            Some(d.code(Ctx::Ctor))
        }
        None => None,
    };
    let list = count.is_some();
    let mut attrs = f.attrs.clone();
    if !attrs.iter().any(|a| a.path().is_ident("doc")) {
        let doc = match &f.count {
            Some(c) => format!("`[{}; {}]`", spec.text, quote!(#c)),
            None => format!("`{}`", spec.text),
        };
        attrs.push(syn::parse_quote!(#[doc = #doc]));
    }
    let mk = |kind: LayerKind,
              call: CallStyle,
              ty: TokenStream,
              ctor: TokenStream|
     -> syn::Result<Built> {
        Ok(Built {
            layer: Layer {
                ident: f.ident.clone(),
                kind,
                call,
                list,
            },
            ty,
            ctor,
            count: count.clone(),
            attrs: attrs.clone(),
        })
    };
    if let Some(rule_decl) = &f.shape {
        // A user layer with a declared rule.
        let mut rn = Names {
            model: names.model.clone(),
            generics: names.generics.clone(),
            params: names.params.clone(),
            syms: HashSet::new(),
        };
        let rule = check::rule_from(&mut rn, &rule_decl.args, &rule_decl.ret)?;
        let ty = path_type(&spec.path);
        let ctor = custom_ctor(spec, names)?;
        return mk(LayerKind::Rule(rule), CallStyle::Method, ty, ctor);
    }
    if let Some((callee, rule)) = sigs.get(&last).filter(|_| spec.path.segments.len() == 1) {
        // A model of the same block: its signature, with its generics replaced by ours.
        let seg = &spec.path.segments[0];
        let gargs: Vec<Dim> = match &seg.arguments {
            syn::PathArguments::AngleBracketed(a) => a
                .args
                .iter()
                .map(|g| match g {
                    syn::GenericArgument::Const(e) => names.dim(e, false),
                    syn::GenericArgument::Type(syn::Type::Path(p))
                        if p.path.get_ident().is_some() =>
                    {
                        names.dim(&syn::parse_quote!(#p), false)
                    }
                    other => Err(syn::Error::new(
                        other.span(),
                        "a model's generic arguments are sizes",
                    )),
                })
                .collect::<syn::Result<_>>()?,
            _ => Vec::new(),
        };
        if gargs.len() != callee.generics.len() {
            return Err(syn::Error::new(
                seg.span(),
                format!(
                    "`{last}` takes {} size(s) `<…>`, got {}",
                    callee.generics.len(),
                    gargs.len()
                ),
            ));
        }
        let pargs: Vec<&Expr> = match &spec.args {
            Some(a) => a
                .iter()
                .map(|x| match x {
                    Arg::Dims(d, _) if d.len() == 1 => Ok(&d[0]),
                    other => Err(syn::Error::new(
                        arg_span(other),
                        format!(
                            "`{last}` takes its constructor parameters in order: ({})",
                            callee
                                .params
                                .iter()
                                .map(|(n, _)| n.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                })
                .collect::<syn::Result<_>>()?,
            None => Vec::new(),
        };
        if pargs.len() != callee.params.len() {
            return Err(syn::Error::new(
                spec.args_span,
                format!(
                    "`{last}` takes {} constructor parameter(s) ({}), got {}",
                    callee.params.len(),
                    callee
                        .params
                        .iter()
                        .map(|(n, _)| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    pargs.len()
                ),
            ));
        }
        let gmap: HashMap<String, Dim> = callee
            .generics
            .iter()
            .map(|g| g.to_string())
            .zip(gargs)
            .collect();
        let mut pmap: HashMap<String, Dim> = HashMap::new();
        for ((pn, _), e) in callee.params.iter().zip(&pargs) {
            if let Ok(d) = names.dim(e, false) {
                pmap.insert(pn.to_string(), d);
            }
        }
        let kind = match rule {
            Some(r) => {
                let sub = |d: &Dim| {
                    d.subst(&|a| match a {
                        Atom::Generic(g) => gmap.get(g).cloned(),
                        Atom::Param(p) => Some(
                            pmap.get(p)
                                .cloned()
                                .unwrap_or_else(|| Dim::atom(Atom::Sym(format!("?{p}")))),
                        ),
                        _ => None,
                    })
                };
                let sh = |s: &check::Shape| check::Shape {
                    rest: s.rest,
                    dims: s.dims.iter().map(sub).collect(),
                };
                LayerKind::Rule(Rule {
                    args: r.args.iter().map(|(k, s)| (*k, sh(s))).collect(),
                    ret: sh(&r.ret),
                })
            }
            None => LayerKind::Unknown,
        };
        let ty = path_type(&spec.path);
        let turbo = turbofish(&spec.path);
        let pa = pargs.iter().map(|e| names.remap(quote!(#e), Ctx::Ctor));
        let ctor = quote_spanned!(spec.path.span()=> #turbo::try_new(#(#pa,)* opts)?);
        return mk(kind, CallStyle::Method, ty, ctor);
    }
    if !single || !BUILTINS.contains(&last.as_str()) {
        return Err(syn::Error::new(
            spec.path.span(),
            format!(
                "unknown layer `{last}`: the built-in layers are {}; a layer of your own needs its shape rule and how to build it, e.g. `#[shape([.., D] -> [.., D])] {fname}: MyLayer = MyLayer::new(D, opts)`",
                BUILTINS.join(", ")
            ),
        ));
    }
    let args: &[Arg] = spec.args.as_deref().unwrap_or(&[]);
    let (dims, opts) = opt_map(args);
    let allowed: &[&str] = match last.as_str() {
        "Linear" => &["bias"],
        "Embedding" => &["padding_idx"],
        "LayerNorm" => &["eps", "affine"],
        "BatchNorm1d" | "BatchNorm2d" => &["eps", "momentum", "affine"],
        "Gelu" => &["approximate"],
        "Conv1d" | "Conv2d" => &["kernel", "stride", "padding", "dilation", "groups", "bias"],
        "MaxPool1d" | "MaxPool2d" | "AvgPool1d" | "AvgPool2d" => &["stride", "padding"],
        "MultiheadAttention" => &["heads", "dropout", "bias"],
        "FeedForward" => &["activation", "dropout", "bias"],
        _ => &[],
    };
    let mut seen_opts = HashSet::new();
    for (k, _) in &opts {
        if !allowed.contains(&k.to_string().as_str()) {
            return Err(syn::Error::new(
                k.span(),
                if allowed.is_empty() {
                    format!("unknown option `{k}`: `{last}` takes no options")
                } else {
                    format!(
                        "unknown option `{k}` for `{last}`; expected one of: {}",
                        allowed.join(", ")
                    )
                },
            ));
        }
        if !seen_opts.insert(k.to_string()) {
            return Err(syn::Error::new(
                k.span(),
                format!("option `{k}` is given twice"),
            ));
        }
    }
    let opt = |k: &str| opts.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let code = |names: &Names, e: &Expr| names.remap(quote!(#e), Ctx::Ctor);
    let fopt = |names: &Names, k: &str, default: TokenStream| {
        opt(k).map_or(default, |e| {
            let c = names.remap(quote!(#e), Ctx::Ctor);
            quote!(((#c) as f64))
        })
    };
    let bopt = |names: &Names, k: &str| {
        opt(k).map_or(quote!(true), |e| names.remap(quote!(#e), Ctx::Ctor))
    };
    let span = spec.path.span();
    let arity_err =
        |want: &str| syn::Error::new(spec.args_span, format!("`{last}` takes `{want}`"));
    // The one positional argument, split at `->` into `n` sizes.
    let chain =
        |names: &mut Names, n: usize, want: &str| -> syn::Result<Vec<(Dim, TokenStream, Span)>> {
            match dims.as_slice() {
                [(d, _)] if d.len() == n => d
                    .iter()
                    .map(|e| {
                        let dim = names.dim(e, false)?;
                        let c = dim.code(Ctx::Ctor);
                        Ok((dim, c, e.span()))
                    })
                    .collect(),
                _ => Err(arity_err(want)),
            }
        };
    let nn = quote!(::flint::nn);
    let b = match last.as_str() {
        "Linear" => {
            let d = chain(names, 2, "IN -> OUT")?;
            let (i, o) = (&d[0].1, &d[1].1);
            let bias = bopt(names, "bias");
            mk(
                LayerKind::Linear {
                    inp: d[0].0.clone(),
                    out: d[1].0.clone(),
                },
                CallStyle::Forward,
                quote!(#nn::Linear),
                quote_spanned!(span=> #nn::Linear::with_bias(#i, #o, #bias, opts)),
            )
        }
        "Embedding" => {
            let d = chain(names, 2, "NUM -> DIM")?;
            let (n, e) = (&d[0].1, &d[1].1);
            let pad = opt("padding_idx").map_or(quote!(::core::option::Option::None), |e| {
                let c = code(names, e);
                quote!(::core::option::Option::Some((#c) as usize))
            });
            mk(
                LayerKind::Embedding { d: d[1].0.clone() },
                CallStyle::Method,
                quote!(#nn::Embedding),
                quote_spanned!(span=> #nn::Embedding::with_padding(#n, #e, #pad, opts)),
            )
        }
        "LayerNorm" => {
            let d = chain(names, 1, "DIM")?;
            let n = &d[0].1;
            let eps = fopt(names, "eps", quote!(1e-5));
            let affine = bopt(names, "affine");
            mk(
                LayerKind::LastDim { d: d[0].0.clone() },
                CallStyle::Forward,
                quote!(#nn::LayerNorm),
                quote_spanned!(span=> #nn::LayerNorm::with_config(&[#n], #eps, #affine, opts)),
            )
        }
        "BatchNorm1d" | "BatchNorm2d" => {
            let d = chain(names, 1, "CHANNELS")?;
            let c = &d[0].1;
            let nd = if last == "BatchNorm1d" { 1 } else { 2 };
            let ty = format_ident!("{}", last);
            let eps = fopt(names, "eps", quote!(1e-5));
            let mom = fopt(names, "momentum", quote!(0.1));
            let affine = bopt(names, "affine");
            mk(
                LayerKind::Channels {
                    nd,
                    c: d[0].0.clone(),
                },
                CallStyle::Forward,
                quote!(#nn::#ty),
                quote_spanned!(span=> #nn::#ty::with_config(#c, #nn::BatchNormConfig { eps: #eps, momentum: ::core::option::Option::Some(#mom), affine: #affine, ..::core::default::Default::default() }, opts)),
            )
        }
        "Dropout" => {
            let p = match dims.as_slice() {
                [(d, _)] if d.len() == 1 => code(names, &d[0]),
                _ => return Err(arity_err("P")),
            };
            if let Some(Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Float(v),
                ..
            })) = dims.first().map(|d| &d.0[0])
            {
                let v: f64 = v.base10_parse()?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(syn::Error::new(
                        v_span(&dims),
                        format!("dropout probability {v} is outside [0, 1]"),
                    ));
                }
            }
            mk(
                LayerKind::Same,
                CallStyle::Forward,
                quote!(#nn::Dropout),
                quote_spanned!(span=> #nn::Dropout::new((#p) as f64)),
            )
        }
        "ReLU" | "Tanh" | "Sigmoid" | "SiLU" | "Identity" => {
            if !dims.is_empty() {
                return Err(arity_err("no arguments"));
            }
            let ty = format_ident!("{}", last);
            mk(
                LayerKind::Same,
                CallStyle::Forward,
                quote!(#nn::#ty),
                quote!(#nn::#ty),
            )
        }
        "Gelu" => {
            if !dims.is_empty() {
                return Err(arity_err("no sizes"));
            }
            let a = opt("approximate").map_or(quote!(false), |e| code(names, e));
            mk(
                LayerKind::Same,
                CallStyle::Forward,
                quote!(#nn::Gelu),
                quote!(#nn::Gelu { approximate: #a }),
            )
        }
        "LeakyReLU" => {
            let s = match dims.as_slice() {
                [] => quote!(0.01),
                [(d, _)] if d.len() == 1 => code(names, &d[0]),
                _ => return Err(arity_err("SLOPE")),
            };
            mk(
                LayerKind::Same,
                CallStyle::Forward,
                quote!(#nn::LeakyReLU),
                quote!(#nn::LeakyReLU { negative_slope: (#s) as f64 }),
            )
        }
        "Softmax" | "LogSoftmax" => {
            let d = match dims.as_slice() {
                [(d, _)] if d.len() == 1 => code(names, &d[0]),
                _ => return Err(arity_err("DIM")),
            };
            let ty = format_ident!("{}", last);
            mk(
                LayerKind::Same,
                CallStyle::Forward,
                quote!(#nn::#ty),
                quote!(#nn::#ty { dim: (#d) as isize }),
            )
        }
        "Conv1d" | "Conv2d" => {
            let d = chain(names, 2, "IN -> OUT, kernel = K")?;
            let nd: usize = if last == "Conv1d" { 1 } else { 2 };
            let Some(k) = opt("kernel") else {
                return Err(syn::Error::new(
                    spec.args_span,
                    format!("`{last}` needs `kernel = K`"),
                ));
            };
            let kd = names.dim(k, false)?;
            let get = |names: &mut Names, k: &str, dflt: i64| -> syn::Result<Dim> {
                opt(k).map_or(Ok(Dim::lit(dflt)), |e| names.dim(e, false))
            };
            let (s, p, dl, g) = (
                get(names, "stride", 1)?,
                get(names, "padding", 0)?,
                get(names, "dilation", 1)?,
                get(names, "groups", 1)?,
            );
            if let (Some(ci), Some(co), Some(gl)) = (d[0].0.as_lit(), d[1].0.as_lit(), g.as_lit())
                && (gl <= 0 || ci % gl != 0 || co % gl != 0)
            {
                return Err(syn::Error::new(
                    opt("groups").map_or(span, |e| e.span()),
                    format!("groups = {gl} must divide both channel counts ({ci} -> {co})"),
                ));
            }
            let ty = format_ident!("{}", last);
            let cfg = format_ident!("{}Config", last);
            let (ci, co) = (&d[0].1, &d[1].1);
            let (kc, sc, pc, dc, gc) = (
                kd.code(Ctx::Ctor),
                s.code(Ctx::Ctor),
                p.code(Ctx::Ctor),
                dl.code(Ctx::Ctor),
                g.code(Ctx::Ctor),
            );
            let bias = bopt(names, "bias");
            mk(
                LayerKind::Conv {
                    nd,
                    cin: d[0].0.clone(),
                    cout: d[1].0.clone(),
                    k: kd,
                    s,
                    p,
                    d: dl,
                },
                CallStyle::Forward,
                quote!(#nn::#ty),
                quote_spanned!(span=> #nn::#ty::try_with_config(#ci, #co, #kc, #nn::#cfg { stride: [#sc; #nd], padding: [#pc; #nd], dilation: [#dc; #nd], groups: #gc, bias: #bias }, opts)?),
            )
        }
        "MaxPool1d" | "MaxPool2d" | "AvgPool1d" | "AvgPool2d" => {
            let d = chain(names, 1, "KERNEL")?;
            let nd: usize = if last.ends_with("1d") { 1 } else { 2 };
            let k = d[0].0.clone();
            let s = opt("stride").map_or(Ok(k.clone()), |e| names.dim(e, false))?;
            let p = opt("padding").map_or(Ok(Dim::lit(0)), |e| names.dim(e, false))?;
            let ty = format_ident!("{}", last);
            let (kc, sc, pc) = (k.code(Ctx::Ctor), s.code(Ctx::Ctor), p.code(Ctx::Ctor));
            mk(
                LayerKind::Pool { nd, k, s, p },
                CallStyle::Forward,
                quote!(#nn::#ty),
                quote_spanned!(span=> #nn::#ty::new(#kc).stride(#sc).padding(#pc)),
            )
        }
        "Flatten" => mk(
            LayerKind::Flatten,
            CallStyle::Forward,
            quote!(#nn::Flatten),
            quote!(<#nn::Flatten as ::core::default::Default>::default()),
        ),
        "MultiheadAttention" => {
            let d = chain(names, 1, "DIM, heads = H")?;
            let Some(h) = opt("heads") else {
                return Err(syn::Error::new(
                    spec.args_span,
                    "`MultiheadAttention` needs `heads = H`",
                ));
            };
            let hd = names.dim(h, false)?;
            let dm = d[0].0.clone();
            if let (Some(dl), Some(hl)) = (dm.as_lit(), hd.as_lit()) {
                if hl <= 0 || dl % hl != 0 {
                    return Err(syn::Error::new(
                        h.span(),
                        format!("heads = {hl} does not divide the model dim {dl} of `{fname}`"),
                    ));
                }
            } else if !dm.is_runtime() && !hd.is_runtime() {
                let (dc, hc) = (dm.code(Ctx::Const), hd.code(Ctx::Const));
                let msg =
                    format!("{model}: `{fname}`: heads ({hd}) must divide the model dim ({dm})");
                let a =
                    quote_spanned!(h.span()=> ::core::assert!(#hc > 0 && #dc % #hc == 0, #msg););
                if dm.has_generic() || hd.has_generic() {
                    asserts.push(a);
                } else {
                    free.push(quote!(const _: () = { #a };));
                }
            }
            let (dc, hc) = (&d[0].1, hd.code(Ctx::Ctor));
            let p = fopt(names, "dropout", quote!(0.0));
            let bias = bopt(names, "bias");
            mk(
                LayerKind::Attention { d: dm, heads: hd },
                CallStyle::Attention,
                quote!(#nn::MultiheadAttention),
                quote_spanned!(span=> #nn::MultiheadAttention::try_with_config(#dc, #hc, #nn::MultiheadAttentionConfig { dropout: #p, bias: #bias, batch_first: true, ..::core::default::Default::default() }, opts)?),
            )
        }
        "FeedForward" => {
            let d = chain(names, 3, "DIM -> HIDDEN -> DIM")?;
            let (first, end) = (&d[0].0, &d[2].0);
            let msg = format!("`FeedForward` maps the model dim back to itself: `{first} -> {} -> {end}` must end in {first}", d[1].0);
            if first != end {
                if first.as_lit().is_some() && end.as_lit().is_some()
                    || first.is_runtime()
                    || end.is_runtime()
                    || first.differs_always(end)
                {
                    return Err(syn::Error::new(d[2].2, msg));
                }
                let deferred = Deferred {
                    a: first.clone(),
                    b: end.clone(),
                    span: d[2].2,
                    msg: format!("{model}: {msg}"),
                };
                deferred_check(&deferred, None, asserts, free);
            }
            let act = match opt("activation") {
                None => quote!(Relu),
                Some(Expr::Path(p)) if p.path.get_ident().is_some() => {
                    let a = p
                        .path
                        .get_ident()
                        .map(|i| i.to_string())
                        .unwrap_or_default();
                    let v = match a.as_str() {
                        "ReLU" | "Relu" => "Relu",
                        "Gelu" | "GELU" => "Gelu",
                        "GeluTanh" => "GeluTanh",
                        "Tanh" => "Tanh",
                        "Sigmoid" => "Sigmoid",
                        "SiLU" | "Silu" => "Silu",
                        _ => return Err(syn::Error::new(p.span(), format!("unknown activation `{a}`; expected ReLU, Gelu, GeluTanh, Tanh, Sigmoid or SiLU"))),
                    };
                    let v = format_ident!("{}", v);
                    quote!(#v)
                }
                Some(other) => {
                    return Err(syn::Error::new(
                        other.span(),
                        "`activation` is one of ReLU, Gelu, GeluTanh, Tanh, Sigmoid, SiLU",
                    ))
                }
            };
            let (dc, fc) = (&d[0].1, &d[1].1);
            let p = fopt(names, "dropout", quote!(0.1));
            let bias = bopt(names, "bias");
            mk(
                LayerKind::Linear {
                    inp: d[0].0.clone(),
                    out: d[2].0.clone(),
                },
                CallStyle::Forward,
                quote!(#nn::FeedForward),
                quote_spanned!(span=> #nn::FeedForward::with_config(#dc, #fc, #nn::FeedForwardConfig { activation: #nn::Activation::#act, dropout: #p, bias: #bias }, opts)),
            )
        }
        _ => Err(syn::Error::new(span, format!("unknown layer `{last}`"))),
    }?;
    Ok(b)
}

fn v_span(dims: &[(&Vec<Expr>, Span)]) -> Span {
    dims.first().map_or(Span::call_site(), |d| d.1)
}

fn arg_span(a: &Arg) -> Span {
    match a {
        Arg::Dims(_, s) => *s,
        Arg::Opt(k, _) => k.span(),
    }
}

fn path_type(p: &syn::Path) -> TokenStream {
    quote!(#p)
}

/// `Block<D, 4>` as an expression path, `Block::<{ D }, { 4 }>`: braced, so that a type
/// named `D` in scope cannot capture a const argument.
fn turbofish(p: &syn::Path) -> TokenStream {
    let mut p = p.clone();
    for seg in p.segments.iter_mut() {
        if let syn::PathArguments::AngleBracketed(a) = &mut seg.arguments {
            a.colon2_token = Some(Default::default());
            for arg in a.args.iter_mut() {
                if let syn::GenericArgument::Type(syn::Type::Path(tp)) = arg
                    && tp.qself.is_none()
                    && tp.path.get_ident().is_some()
                {
                    let e = &tp.path;
                    *arg = syn::GenericArgument::Const(syn::parse_quote!({ #e }));
                }
            }
        }
    }
    quote!(#p)
}

fn custom_ctor(spec: &parse::LayerSpec, names: &Names) -> syn::Result<TokenStream> {
    if let Some(init) = &spec.init {
        return Ok(names.remap(quote!(#init), Ctx::Ctor));
    }
    let turbo = turbofish(&spec.path);
    let mut args = Vec::new();
    for a in spec.args.as_deref().unwrap_or(&[]) {
        match a {
            Arg::Dims(d, _) if d.len() == 1 => {
                let e = &d[0];
                args.push(names.remap(quote!(#e), Ctx::Ctor));
            }
            other => {
                return Err(syn::Error::new(
                    arg_span(other),
                    "a layer of your own is built by `Type::try_new(args…, opts)`: give plain arguments, or write `= expr`",
                ))
            }
        }
    }
    Ok(quote_spanned!(spec.path.span()=> #turbo::try_new(#(#args,)* opts)?))
}

struct GenParts {
    asserts: Vec<TokenStream>,
    free_asserts: Vec<TokenStream>,
    ctor_checks: Vec<TokenStream>,
    type_checks: Vec<TokenStream>,
    entry: TokenStream,
    fwd_rel: Vec<TokenStream>,
    body: TokenStream,
}

fn generate(
    m: &ModelDef,
    built: &[Built],
    errors: Vec<syn::Error>,
    parts: GenParts,
) -> TokenStream {
    let stub = !errors.is_empty();
    let ident = &m.ident;
    let vis = &m.vis;
    let attrs = &m.attrs;
    let gens = &m.generics;
    let gdecl = if gens.is_empty() {
        quote!()
    } else {
        quote!(<#(const #gens: usize),*>)
    };
    // Braced (`Block<{ D }>`): a type named `D` in the user's scope must not capture
    // the const generic.
    let guse = if gens.is_empty() {
        quote!()
    } else {
        quote!(<#({ #gens }),*>)
    };
    let phantom = if gens.is_empty() {
        quote!()
    } else {
        quote!(
            #[doc(hidden)]
            pub __flint_sizes: ::core::marker::PhantomData<(#([(); #gens],)*)>,
        )
    };
    let phantom_init = if gens.is_empty() {
        quote!()
    } else {
        quote!(__flint_sizes: ::core::marker::PhantomData,)
    };
    // A stub (the model has errors) renames its parameters, so that a duplicate name
    // (itself reported) raises no second error.
    let stub_name = |prefix: &str, i: usize| format_ident!("__{}{}", prefix, i);
    let pnames: Vec<Ident> = m
        .params
        .iter()
        .enumerate()
        .map(|(i, (n, _))| if stub { stub_name("p", i) } else { n.clone() })
        .collect();
    let ptys: Vec<&syn::Type> = m.params.iter().map(|(_, t)| t).collect();
    // The struct keeps the parameters' own names (each once).
    let mut seen_fields = HashSet::new();
    let (fnames, ftys): (Vec<&Ident>, Vec<&syn::Type>) = m
        .params
        .iter()
        .filter(|(n, _)| seen_fields.insert(n.to_string()))
        .map(|(n, t)| (n, t))
        .unzip();
    let fwd_args: Vec<Ident> = m
        .forward
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if stub {
                stub_name("a", i)
            } else {
                a.ident.clone()
            }
        })
        .collect();
    let fwd_attrs = &m.forward.attrs;
    let model = ident.to_string();

    let (fields, inits) = if stub {
        (Vec::new(), Vec::new())
    } else {
        let fields: Vec<TokenStream> = built
            .iter()
            .map(|b| {
                let (f, ty, a) = (&b.layer.ident, &b.ty, &b.attrs);
                if b.count.is_some() {
                    quote!(#(#a)* pub #f: ::std::vec::Vec<#ty>,)
                } else {
                    quote!(#(#a)* pub #f: #ty,)
                }
            })
            .collect();
        let inits: Vec<TokenStream> = built
            .iter()
            .map(|b| {
                let (f, ctor) = (&b.layer.ident, &b.ctor);
                match &b.count {
                    Some(n) => quote!(#f: {
                        let mut __v = ::std::vec::Vec::with_capacity(#n);
                        for _ in 0..#n { __v.push(#ctor); }
                        __v
                    },),
                    None => quote!(#f: #ctor,),
                }
            })
            .collect();
        (fields, inits)
    };
    let doc_new = format!("Builds a `{model}` with fresh parameters (PyTorch's initialisation) on the device and dtype of `opts`; an error if a size relation does not hold.");
    let new_body = if stub {
        quote!(::core::unreachable!(
            "model! reported errors for this model"
        ))
    } else {
        let checks = &parts.ctor_checks;
        quote! {
            #[allow(clippy::let_unit_value)]
            let () = <Self as ::flint::nn::shape::ShapeAsserts>::CHECK;
            #(#checks)*
            let opts: ::flint::TensorOptions = opts.into();
            let _ = opts;
            ::core::result::Result::Ok(#ident { #(#inits)* #(#pnames,)* #phantom_init })
        }
    };
    let fwd_body = if stub {
        quote!(::core::unreachable!(
            "model! reported errors for this model"
        ))
    } else {
        let (entry, rels, body) = (&parts.entry, &parts.fwd_rel, &parts.body);
        quote! {
            #[allow(unused_imports)]
            use ::flint::nn::Forward as _;
            #entry
            #(#rels)*
            #body
        }
    };
    let asserts = if stub { Vec::new() } else { parts.asserts };
    let type_checks = if stub { Vec::new() } else { parts.type_checks };
    let free = if stub { Vec::new() } else { parts.free_asserts };
    let type_check_fn = (!type_checks.is_empty()).then(|| {
        quote! {
            #[doc(hidden)]
            #[allow(dead_code, clippy::let_unit_value, clippy::manual_is_multiple_of)]
            fn __flint_dim_checks() { #(#type_checks)* }
        }
    });
    let forward_trait = (m.forward.args.len() == 1).then(|| {
        quote! {
            impl #gdecl ::flint::nn::Forward for #ident #guse {
                fn try_forward(&self, x: &::flint::Tensor) -> ::flint::Result<::flint::Tensor> {
                    #ident::try_forward(self, x)
                }
            }
        }
    });
    let fwd_doc =
        format!("The forward pass of `{model}`; the shapes of the arguments are checked on entry.");
    let errs = errors.iter().map(syn::Error::to_compile_error);
    quote! {
        #(#errs)*
        #(#attrs)*
        #[derive(::flint::Module)]
        #vis struct #ident #gdecl {
            #(#fields)*
            #(#[allow(missing_docs)] pub #fnames: #ftys,)*
            #phantom
        }

        impl #gdecl #ident #guse {
            #[doc = #doc_new]
            // the user's size relations (`D % H == 0`) are checked here in their own words
            #[allow(clippy::too_many_arguments, clippy::unnecessary_cast, clippy::manual_is_multiple_of, unused_variables)]
            pub fn try_new(#(#pnames: #ptys,)* opts: impl ::core::convert::Into<::flint::TensorOptions>) -> ::flint::Result<Self> {
                #new_body
            }

            /// Like `try_new`, panicking on an error.
            #[track_caller]
            #[allow(clippy::too_many_arguments)]
            pub fn new(#(#pnames: #ptys,)* opts: impl ::core::convert::Into<::flint::TensorOptions>) -> Self {
                ::flint::error::or_panic(Self::try_new(#(#pnames,)* opts))
            }

            #(#fwd_attrs)*
            #[doc = #fwd_doc]
            #[allow(unused_variables, clippy::redundant_clone, clippy::manual_is_multiple_of)]
            pub fn try_forward(&self, #(#fwd_args: &::flint::Tensor),*) -> ::flint::Result<::flint::Tensor> {
                #fwd_body
            }

            /// Like `try_forward`, panicking with the error and the caller's line.
            #[track_caller]
            pub fn forward(&self, #(#fwd_args: &::flint::Tensor),*) -> ::flint::Tensor {
                ::flint::error::or_panic(self.try_forward(#(#fwd_args),*))
            }

            #type_check_fn
        }

        impl #gdecl ::flint::nn::shape::ShapeAsserts for #ident #guse {
            #[allow(clippy::manual_is_multiple_of)]
            const CHECK: () = { #(#asserts)* };
        }

        #forward_trait
        #(#free)*
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(ts: TokenStream) -> Vec<String> {
        crate::compile_errors(&expand(ts))
    }

    #[test]
    fn literal_chain_mismatch_names_both_layers() {
        let errs = errors_of(quote! {
            struct Mlp {
                fc1: Linear(784 -> 512),
                fc2: Linear(256 -> 10),
            }
            fn forward(x: [b, 784]) -> [b, 10] { fc2(fc1(x).relu()) }
        });
        assert_eq!(
            errs,
            ["shape mismatch: `fc1` produces [b, 512] but `fc2` expects [.., 256]"]
        );
    }

    #[test]
    fn all_errors_at_once_and_stub() {
        let ts = quote! {
            struct Block<const D: usize> {
                ln: LayerNorm(D),
                attn: MultiheadAttention(512, heads = 3),
                up: Linear(D -> 4 * D),
            }
            fn forward(x: [b, t, D], m: Mask[t]) -> [b, t, D] {
                let y = attn(x, m);
                x + up(ln(x))
            }
        };
        let errs = errors_of(ts.clone());
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(
            errs[0],
            "heads = 3 does not divide the model dim 512 of `attn`"
        );
        assert_eq!(
            errs[1],
            "shape mismatch in `+`: left (`x`) is [b, t, D], right (`up`) is [b, t, 4 * D]"
        );
        let out = expand(ts).to_string();
        assert!(out.contains("struct Block"), "stub emitted");
        assert!(out.contains("fn try_forward"), "stub emitted");
    }

    #[test]
    fn residual_and_mask_rank_errors() {
        let errs = errors_of(quote! {
            struct Block<const D: usize> {
                attn: MultiheadAttention(D, heads = 2),
                up: Linear(D -> 4 * D),
            }
            fn forward(x: [b, t, D], m: Mask[t]) -> [b, t, D] {
                let y = attn(x, m);
                x + up(x)
            }
        });
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("wrong mask rank: `attn` takes an attention mask [t, t]"),
            "{errs:?}"
        );
        assert_eq!(
            errs[1],
            "shape mismatch in `+`: left (`x`) is [b, t, D], right (`up`) is [b, t, 4 * D]"
        );
    }

    #[test]
    fn generic_dims_defer_to_the_compiler() {
        let out = expand(quote! {
            struct M<const D: usize, const H: usize, const F: usize> where D % H == 0 {
                a: Linear(D -> F),
                b: Linear(H -> D),
                c: Linear(D -> 2 * D),
                d: Linear(F -> D),
            }
            fn forward(x: [b, D]) -> [b, D] { d(c(b(a(x)))) }
        })
        .to_string();
        assert!(!out.contains("compile_error"), "{out}");
        assert!(out.contains(":: flint :: nn :: shape :: Dim < { F } > = :: flint :: nn :: shape :: Dim :: < { H } >"), "{out}");
        assert!(out.contains("2usize * D"), "{out}");
        assert!(out.contains("D % H == 0"), "{out}");
    }

    #[test]
    fn conv_arithmetic_is_checked() {
        let errs = errors_of(quote! {
            struct Cnn {
                conv: Conv2d(1 -> 8, kernel = 3, padding = 1),
                pool: MaxPool2d(2),
                fc: Linear(8 * 4 * 4 -> 10),
                flat: Flatten,
            }
            fn forward(x: [b, 1, 8, 8]) -> [b, 10] { fc(flat(pool(conv(x)))) }
        });
        assert!(errs.is_empty(), "{errs:?}");
        let errs = errors_of(quote! {
            struct Cnn {
                conv: Conv2d(1 -> 8, kernel = 3),
                flat: Flatten,
                fc: Linear(8 * 8 * 8 -> 10),
            }
            fn forward(x: [b, 1, 8, 8]) -> [b, 10] { fc(flat(conv(x))) }
        });
        assert_eq!(
            errs,
            ["shape mismatch: `flat` produces [b, 288] but `fc` expects [.., 512]"]
        );
    }

    /// Expansion cost: a 24-layer model. Prints the time (`cargo test -p flint-macros
    /// --lib expands_24 -- --nocapture`); asserts only what the expansion contains.
    #[test]
    fn expands_24_layers() {
        let mut fields = Vec::new();
        let mut body = Vec::new();
        for i in 0..24usize {
            let (ln, attn, ff) = (
                format_ident!("ln{}", i),
                format_ident!("attn{}", i),
                format_ident!("ff{}", i),
            );
            fields.push(quote!(#ln: LayerNorm(D), #attn: MultiheadAttention(D, heads = H), #ff: FeedForward(D -> 4 * D -> D),));
            body.push(quote!(let x = { let h = x + #attn(#ln(x), causal); h + #ff(h) };));
        }
        let ts = quote! {
            pub struct Deep<const D: usize, const H: usize> where D % H == 0 { #(#fields)* }
            fn forward(x: [b, t, D]) -> [b, t, D] { #(#body)* x }
        };
        let start = std::time::Instant::now();
        let out = expand(ts).to_string();
        let took = start.elapsed();
        eprintln!("model! with 24 blocks (72 layers) expanded in {took:?}");
        assert!(!out.contains("compile_error"), "{out}");
        assert_eq!(
            out.matches("MultiheadAttention :: try_with_config").count(),
            24
        );
    }

    /// Deleting any one token of a valid input anywhere (including inside groups) gives
    /// errors or an expansion, never a panic.
    #[test]
    fn never_panics_on_mutilated_input() {
        use proc_macro2::{Group, TokenTree};
        let src = quote! {
            pub struct Block<const D: usize, const H: usize>(p: f64) where D % H == 0 {
                ln: LayerNorm(D),
                attn: MultiheadAttention(D, heads = H, dropout = p),
                ff: FeedForward(D -> 4 * D -> D, activation = Gelu),
                conv: Conv1d(D -> D, kernel = 3, padding = 1),
            }
            fn forward(x: [b, t, D], m: Mask[t, t]) -> [b, t, D] where t <= 64 {
                let h = x + attn(ln(x), m);
                let c = conv(h.transpose(1, 2)).transpose(1, 2);
                let s = matmul(h, c.transpose(-2, -1)).softmax(-1).reshape([b, t, -1]);
                ({ let y = ff(c); y + h }) + s.mean(-1, true)
            }
        };
        // Every token tree, flattened, with the path of group indices to reach it.
        fn paths(ts: &TokenStream, prefix: Vec<usize>, out: &mut Vec<Vec<usize>>) {
            for (i, tt) in ts.clone().into_iter().enumerate() {
                let mut p = prefix.clone();
                p.push(i);
                out.push(p.clone());
                if let TokenTree::Group(g) = tt {
                    paths(&g.stream(), p, out);
                }
            }
        }
        fn without(ts: &TokenStream, path: &[usize]) -> TokenStream {
            ts.clone()
                .into_iter()
                .enumerate()
                .filter_map(|(i, tt)| {
                    if i != path[0] {
                        return Some(tt);
                    }
                    if path.len() == 1 {
                        return None;
                    }
                    match tt {
                        TokenTree::Group(g) => Some(TokenTree::Group(Group::new(
                            g.delimiter(),
                            without(&g.stream(), &path[1..]),
                        ))),
                        other => Some(other),
                    }
                })
                .collect()
        }
        assert!(
            errors_of(src.clone()).is_empty(),
            "{:?}",
            errors_of(src.clone())
        );
        let mut all = Vec::new();
        paths(&src, Vec::new(), &mut all);
        assert!(all.len() > 150, "{}", all.len());
        for p in &all {
            let mutated = without(&src, p);
            let r = std::panic::catch_unwind(|| expand(mutated.clone()).to_string());
            assert!(r.is_ok(), "panicked on {mutated}");
        }
    }

    #[test]
    fn models_of_one_block_know_each_other() {
        let errs = errors_of(quote! {
            struct Inner<const D: usize> { fc: Linear(D -> D) }
            fn forward(x: [b, t, D]) -> [b, t, D] { fc(x) }
            struct Outer(layers: usize) {
                blocks: [Inner<16>; layers],
                head: Linear(32 -> 2),
            }
            fn forward(x: [b, t, 16]) -> [b, t, 2] { head(blocks(x)) }
        });
        assert_eq!(
            errs,
            ["shape mismatch: `blocks` produces [b, t, 16] but `head` expects [.., 32]"]
        );
    }
}
