//! `model!` input → IR. Only syntax is checked here; what the sizes mean is `check`'s.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{bracketed, parenthesized, Attribute, Expr, Ident, Token, Type, Visibility};

/// Everything in one `model! { … }`: one or more models, each a struct and its forward.
pub struct Input {
    /// The models, in order.
    pub models: Vec<ModelDef>,
}

/// One model: `pub struct Name<const D: usize>(vocab: usize) where … { fields } fn forward …`.
pub struct ModelDef {
    /// Doc comments and other attributes of the struct (passed through).
    pub attrs: Vec<Attribute>,
    /// Its visibility.
    pub vis: Visibility,
    /// Its name.
    pub ident: Ident,
    /// Const generics (`const D: usize`), in order.
    pub generics: Vec<Ident>,
    /// Sizes and options given to the constructor: `(vocab: usize, p: f64)`.
    pub params: Vec<(Ident, Type)>,
    /// `where` relations between sizes (`D % H == 0`).
    pub relations: Vec<Expr>,
    /// The layers.
    pub fields: Vec<FieldDecl>,
    /// The forward function.
    pub forward: ForwardDef,
}

/// `name: Layer(args)` or `name: [Layer(args); n]`.
pub struct FieldDecl {
    /// Attributes passed through to the field (docs), `#[shape(…)]` removed.
    pub attrs: Vec<Attribute>,
    /// A user-declared shape rule: `#[shape([.., D] -> [.., D])]`.
    pub shape: Option<RuleDecl>,
    /// The field name.
    pub ident: Ident,
    /// The layer.
    pub spec: LayerSpec,
    /// `[spec; count]`: a list of layers applied in turn.
    pub count: Option<Expr>,
}

/// `Path<generics>(args) = init`.
pub struct LayerSpec {
    /// The layer's type (`Linear`, `Block<D, H>`, `my::Layer`).
    pub path: syn::Path,
    /// The parenthesised arguments, when given.
    pub args: Option<Vec<Arg>>,
    /// Where the arguments are, for errors.
    pub args_span: Span,
    /// `= expr`: how to build it (custom layers).
    pub init: Option<Expr>,
    /// The declaration as written, for the field's doc.
    pub text: String,
}

/// One constructor argument.
pub enum Arg {
    /// `name = value`.
    Opt(Ident, Expr),
    /// `a -> b -> c` (or a single `a`).
    Dims(Vec<Expr>, Span),
}

/// `#[shape(x: [..], m: Mask[..] -> [..])]` or `#[shape([..] -> [..])]`.
pub struct RuleDecl {
    /// The inputs.
    pub args: Vec<ArgDecl>,
    /// The output.
    pub ret: ShapeLit,
}

/// What a forward argument holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValKind {
    /// Floating-point values.
    Float,
    /// A bool mask.
    Mask,
    /// Integer ids.
    Ids,
}

/// `name: Kind[dims]`.
pub struct ArgDecl {
    /// The argument name.
    pub ident: Ident,
    /// What it holds.
    pub kind: ValKind,
    /// Its declared shape.
    pub shape: ShapeLit,
}

/// `[b, t, D]`, `[.., D]`.
#[derive(Clone)]
pub struct ShapeLit {
    /// The items.
    pub items: Vec<ShapeItem>,
    /// The brackets' span.
    pub span: Span,
}

/// One item of a shape literal.
#[derive(Clone)]
pub enum ShapeItem {
    /// `..`: any leading dims.
    Rest(Span),
    /// A size expression.
    Dim(Expr),
}

/// `fn forward(args) -> [shape] where rels { body }`.
pub struct ForwardDef {
    /// Docs of the function.
    pub attrs: Vec<Attribute>,
    /// The arguments.
    pub args: Vec<ArgDecl>,
    /// The declared output shape.
    pub ret: ShapeLit,
    /// Run-time relations (`t <= ctx`).
    pub relations: Vec<Expr>,
    /// The body.
    pub body: syn::Block,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut models = Vec::new();
        while !input.is_empty() {
            models.push(input.parse()?);
        }
        if models.is_empty() {
            return Err(input.error(
                "`model!` needs at least one `struct Name { layers } fn forward(…) -> […] { … }`",
            ));
        }
        Ok(Input { models })
    }
}

fn parse_relations(input: ParseStream<'_>) -> syn::Result<Vec<Expr>> {
    let mut rels = Vec::new();
    if input.peek(Token![where]) {
        input.parse::<Token![where]>()?;
        while !input.peek(syn::token::Brace) && !input.is_empty() {
            rels.push(Expr::parse_without_eager_brace(input)?);
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
            } else {
                break;
            }
        }
    }
    Ok(rels)
}

impl Parse for ModelDef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>()?;
        let ident: Ident = input.parse()?;
        let g: syn::Generics = input.parse()?;
        let mut generics = Vec::new();
        for p in &g.params {
            match p {
                syn::GenericParam::Const(c)
                    if matches!(&c.ty, Type::Path(t) if t.path.is_ident("usize"))
                        && c.default.is_none() =>
                {
                    generics.push(c.ident.clone())
                }
                _ => {
                    return Err(syn::Error::new(
                        p.span(),
                        "the generics of a model are sizes: `const D: usize`",
                    ))
                }
            }
        }
        let mut params = Vec::new();
        if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            while !content.is_empty() {
                let name: Ident = content.parse()?;
                content.parse::<Token![:]>()?;
                let ty: Type = content.parse()?;
                params.push((name, ty));
                if content.is_empty() {
                    break;
                }
                content.parse::<Token![,]>()?;
            }
        }
        let relations = parse_relations(input)?;
        let content;
        syn::braced!(content in input);
        let mut fields = Vec::new();
        while !content.is_empty() {
            fields.push(content.parse()?);
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        let forward = input.parse()?;
        Ok(ModelDef {
            attrs,
            vis,
            ident,
            generics,
            params,
            relations,
            fields,
            forward,
        })
    }
}

impl Parse for FieldDecl {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let all = input.call(Attribute::parse_outer)?;
        let mut attrs = Vec::new();
        let mut shape = None;
        for a in all {
            if a.path().is_ident("shape") {
                if shape.is_some() {
                    return Err(syn::Error::new(
                        a.span(),
                        "a layer has one `#[shape(…)]` rule",
                    ));
                }
                shape = Some(a.parse_args::<RuleDecl>()?);
            } else {
                attrs.push(a);
            }
        }
        let _: Visibility = input.parse()?;
        let ident: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let (spec, count) = if input.peek(syn::token::Bracket) {
            let content;
            bracketed!(content in input);
            let spec: LayerSpec = content.parse()?;
            content.parse::<Token![;]>()?;
            let count: Expr = content.parse()?;
            (spec, Some(count))
        } else {
            (input.parse()?, None)
        };
        Ok(FieldDecl {
            attrs,
            shape,
            ident,
            spec,
            count,
        })
    }
}

impl Parse for LayerSpec {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut path = syn::Path {
            leading_colon: input.parse()?,
            segments: syn::punctuated::Punctuated::new(),
        };
        loop {
            let ident: Ident = input.parse()?;
            let arguments = if input.peek(Token![<]) {
                syn::PathArguments::AngleBracketed(input.parse()?)
            } else {
                syn::PathArguments::None
            };
            path.segments.push(syn::PathSegment { ident, arguments });
            if input.peek(Token![::]) {
                input.parse::<Token![::]>()?;
            } else {
                break;
            }
        }
        let mut text = quote::quote!(#path).to_string().replace(' ', "");
        let (args, args_span) = if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            let ts: TokenStream = content.parse()?;
            text = format!("{text}({})", ts.to_string().replace(" ,", ","));
            (Some(parse_args(ts)?), paren.span.join())
        } else {
            (None, path.span())
        };
        let init = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(LayerSpec {
            path,
            args,
            args_span,
            init,
            text,
        })
    }
}

/// Splits a token stream at top-level `,`.
pub fn split_commas(ts: TokenStream) -> Vec<TokenStream> {
    let mut out = vec![Vec::new()];
    for tt in ts {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => out.push(Vec::new()),
            _ => out.last_mut().map_or((), |v| v.push(tt)),
        }
    }
    if out.last().is_some_and(|v| v.is_empty()) {
        out.pop();
    }
    out.into_iter().map(|v| v.into_iter().collect()).collect()
}

/// Splits at top-level `->`.
fn split_arrows(ts: TokenStream) -> Vec<TokenStream> {
    let toks: Vec<TokenTree> = ts.into_iter().collect();
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < toks.len() {
        let arrow = matches!((&toks[i], toks.get(i + 1)),
            (TokenTree::Punct(a), Some(TokenTree::Punct(b)))
                if a.as_char() == '-' && a.spacing() == proc_macro2::Spacing::Joint && b.as_char() == '>');
        if arrow {
            out.push(Vec::new());
            i += 2;
        } else {
            if let Some(v) = out.last_mut() {
                v.push(toks[i].clone());
            }
            i += 1;
        }
    }
    out.into_iter().map(|v| v.into_iter().collect()).collect()
}

fn span_of(ts: &TokenStream) -> Span {
    let mut it = ts.clone().into_iter();
    let first = it.next().map(|t| t.span());
    let last = ts.clone().into_iter().last().map(|t| t.span());
    match (first, last) {
        (Some(a), Some(b)) => a.join(b).unwrap_or(a),
        (Some(a), None) => a,
        _ => Span::call_site(),
    }
}

/// Parses layer arguments: `a -> b, key = value, …`.
pub fn parse_args(ts: TokenStream) -> syn::Result<Vec<Arg>> {
    let mut out = Vec::new();
    for piece in split_commas(ts) {
        let toks: Vec<TokenTree> = piece.clone().into_iter().collect();
        let is_opt = matches!((toks.first(), toks.get(1)),
            (Some(TokenTree::Ident(_)), Some(TokenTree::Punct(p)))
                if p.as_char() == '=' && p.spacing() == proc_macro2::Spacing::Alone);
        if is_opt {
            let name = match &toks[0] {
                TokenTree::Ident(i) => i.clone(),
                _ => unreachable!("checked above"),
            };
            let value: TokenStream = toks[2..].iter().cloned().collect();
            if value.is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    format!("`{name} =` needs a value"),
                ));
            }
            out.push(Arg::Opt(name, syn::parse2(value)?));
        } else {
            let span = span_of(&piece);
            let mut dims = Vec::new();
            for p in split_arrows(piece) {
                if p.is_empty() {
                    return Err(syn::Error::new(
                        span,
                        "expected a size on each side of `->`",
                    ));
                }
                dims.push(syn::parse2::<Expr>(p)?);
            }
            out.push(Arg::Dims(dims, span));
        }
    }
    Ok(out)
}

impl Parse for ShapeLit {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let content;
        let br = bracketed!(content in input);
        let ts: TokenStream = content.parse()?;
        let mut items = Vec::new();
        for piece in split_commas(ts) {
            let toks: Vec<TokenTree> = piece.clone().into_iter().collect();
            let is_rest = toks.len() == 2
                && toks
                    .iter()
                    .all(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == '.'));
            if is_rest {
                items.push(ShapeItem::Rest(span_of(&piece)));
            } else {
                items.push(ShapeItem::Dim(syn::parse2(piece)?));
            }
        }
        Ok(ShapeLit {
            items,
            span: br.span.join(),
        })
    }
}

fn parse_kind(input: ParseStream<'_>) -> syn::Result<ValKind> {
    if input.peek(Ident) {
        let k: Ident = input.parse()?;
        match k.to_string().as_str() {
            "Mask" => Ok(ValKind::Mask),
            "Ids" => Ok(ValKind::Ids),
            "Tensor" => Ok(ValKind::Float),
            _ => Err(syn::Error::new(
                k.span(),
                format!(
                    "unknown argument kind `{k}`; expected `[dims]`, `Mask[dims]` or `Ids[dims]`"
                ),
            )),
        }
    } else {
        Ok(ValKind::Float)
    }
}

impl Parse for ArgDecl {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let ident: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let kind = parse_kind(input)?;
        let shape = input.parse()?;
        Ok(ArgDecl { ident, kind, shape })
    }
}

impl Parse for RuleDecl {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Vec::new();
        let mut n = 0;
        loop {
            if input.peek(Ident) && input.peek2(Token![:]) {
                args.push(input.parse::<ArgDecl>()?);
            } else {
                let kind = parse_kind(input)?;
                let shape: ShapeLit = input.parse()?;
                args.push(ArgDecl {
                    ident: Ident::new(&format!("arg{n}"), shape.span),
                    kind,
                    shape,
                });
            }
            n += 1;
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
            } else {
                break;
            }
        }
        input.parse::<Token![->]>()?;
        let ret = input.parse()?;
        Ok(RuleDecl { args, ret })
    }
}

impl Parse for ForwardDef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        if !input.peek(Token![fn]) {
            return Err(input.error("expected `fn forward(…) -> […] { … }` after the struct"));
        }
        input.parse::<Token![fn]>()?;
        let name: Ident = input.parse()?;
        if name != "forward" {
            return Err(syn::Error::new(
                name.span(),
                format!("expected `forward`, found `{name}`: a model has one `fn forward`"),
            ));
        }
        let content;
        parenthesized!(content in input);
        let mut args = Vec::new();
        while !content.is_empty() {
            args.push(content.parse()?);
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        input.parse::<Token![->]>()?;
        let ret = input.parse()?;
        let relations = parse_relations(input)?;
        let body = input.parse()?;
        Ok(ForwardDef {
            attrs,
            args,
            ret,
            relations,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_a_block() {
        let input: Input = syn::parse2(quote! {
            /// Docs.
            pub struct Block<const D: usize, const H: usize>(p: f64) where D % H == 0 {
                ln: LayerNorm(D),
                attn: MultiheadAttention(D, heads = H, dropout = p),
                ff: FeedForward(D -> 4 * D -> D),
                #[shape([.., D] -> [.., D])]
                custom: my::Thing<D> = my::Thing::new(D),
                blocks: [Inner<D>; 3],
            }
            fn forward(x: [b, t, D], mask: Mask[t, t]) -> [b, t, D] where t <= 8 {
                x + attn(ln(x), mask)
            }
        })
        .unwrap();
        let m = &input.models[0];
        assert_eq!(m.ident, "Block");
        assert_eq!(m.generics.len(), 2);
        assert_eq!(m.params[0].0, "p");
        assert_eq!(m.relations.len(), 1);
        assert_eq!(m.fields.len(), 5);
        match &m.fields[2].spec.args.as_ref().unwrap()[0] {
            Arg::Dims(d, _) => assert_eq!(d.len(), 3),
            Arg::Opt(..) => panic!("dims expected"),
        }
        match &m.fields[1].spec.args.as_ref().unwrap()[1] {
            Arg::Opt(k, _) => assert_eq!(k, "heads"),
            Arg::Dims(..) => panic!("option expected"),
        }
        assert!(m.fields[3].shape.is_some() && m.fields[3].spec.init.is_some());
        assert!(m.fields[4].count.is_some());
        assert_eq!(m.forward.args[1].kind, ValKind::Mask);
        assert_eq!(m.forward.relations.len(), 1);
        assert!(matches!(m.forward.ret.items[0], ShapeItem::Dim(_)));
    }

    #[test]
    fn parses_rest_and_rules() {
        let r: RuleDecl = syn::parse2(quote!([.., n] -> [.., 2 * n])).unwrap();
        assert!(matches!(r.args[0].shape.items[0], ShapeItem::Rest(_)));
        let r: RuleDecl = syn::parse2(quote!(x: [b, n], m: Mask[b] -> [b, n])).unwrap();
        assert_eq!(r.args.len(), 2);
        assert_eq!(r.args[1].kind, ValKind::Mask);
    }

    #[test]
    fn rejects_bad_syntax() {
        let e = syn::parse2::<Input>(quote! { struct A<T> { } fn forward(x: [n]) -> [n] { x } })
            .err()
            .unwrap();
        assert!(e.to_string().contains("sizes"));
        let e = syn::parse2::<Input>(quote! { struct A { } fn backward(x: [n]) -> [n] { x } })
            .err()
            .unwrap();
        assert!(e.to_string().contains("expected `forward`"));
        let e = syn::parse2::<Input>(quote! { struct A { } fn forward(x: Foo[n]) -> [n] { x } })
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown argument kind"));
    }
}
