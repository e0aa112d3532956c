//! `#[derive(Module)]`: parse the item, check the field attributes, generate the two
//! walks of `flint::nn::Module` (and `Display`).
//!
//! Every error is collected (not just the first) and reported at its token; on error the
//! derive still emits an impl whose walks are empty, so the rest of the user's code sees
//! a `Module` and shows no follow-on errors.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericArgument, Ident, LitStr, PathArguments, Type};

/// What a field is to the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A trainable tensor (`Tensor` or `Option<Tensor>`).
    Param,
    /// A non-trainable tensor (`Tensor` or `Option<Tensor>`).
    Buffer,
    /// A submodule (any `Module` type, `Vec`/arrays of them, `Option` of one).
    Child,
    /// Not part of the module (hyper-parameters, caches).
    Skip,
}

/// One field after parsing.
pub struct FieldSpec {
    /// How the field is reached: `self.<member>`.
    pub member: syn::Member,
    /// The name in dotted paths (the field name, or `rename`).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// `Option<…>`: visited only when present.
    pub optional: bool,
    /// The field's span, for errors in generated code.
    pub span: Span,
    /// The field's type.
    pub ty: Type,
    /// A declared shape rule, `#[shape([.., 784] -> [.., 256])]`.
    pub rule: Option<(crate::model::parse::RuleDecl, Span)>,
}

/// Struct-level options.
#[derive(Debug, Default)]
pub struct ItemOptions {
    /// `#[module(name = "…")]`: the name the summary prints.
    pub name: Option<String>,
    /// `#[module(no_display)]`: do not generate `Display`.
    pub no_display: bool,
    /// `#[module(forward)]` on an enum: delegate `Forward` to the variants.
    pub forward: bool,
    /// `#[module(sequential)]` on a struct: `forward` chains the child fields in order.
    pub sequential: Option<Span>,
}

/// Parsed item.
pub enum Shape {
    /// A struct and its fields.
    Struct(Vec<FieldSpec>),
    /// An enum whose variants each hold one module: the variant names.
    Enum(Vec<Ident>),
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

/// `Option<T>` → `Some(T)`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let seg = last_segment(ty)?;
    if seg.ident != "Option" {
        return None;
    }
    match &seg.arguments {
        PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

fn is_tensor(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "Tensor" && s.arguments.is_none())
}

/// Types that are plainly not modules: skipped without an attribute.
fn is_plain_data(ty: &Type) -> bool {
    const PLAIN: [&str; 20] = [
        "bool",
        "char",
        "f32",
        "f64",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "isize",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "usize",
        "String",
        "PhantomData",
        "DType",
        "Device",
    ];
    match ty {
        Type::Reference(_) | Type::Tuple(_) => true,
        _ => last_segment(ty).is_some_and(|s| PLAIN.iter().any(|p| s.ident == p)),
    }
}

/// Parses `#[module(...)]` attributes of the item.
pub fn parse_item_options(input: &DeriveInput, errors: &mut Vec<syn::Error>) -> ItemOptions {
    let mut opts = ItemOptions::default();
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("module")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                let s: LitStr = meta.value()?.parse()?;
                opts.name = Some(s.value());
                Ok(())
            } else if meta.path.is_ident("no_display") {
                opts.no_display = true;
                Ok(())
            } else if meta.path.is_ident("forward") {
                opts.forward = true;
                Ok(())
            } else if meta.path.is_ident("sequential") {
                opts.sequential = Some(meta.path.span());
                Ok(())
            } else {
                Err(meta.error(format!(
                    "unknown module option `{}`; expected `name = \"…\"`, `no_display`, `forward` or `sequential`",
                    path_string(&meta.path)
                )))
            }
        });
        if let Err(e) = r {
            errors.push(e);
        }
    }
    opts
}

fn path_string(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Parses one field: its attributes and what its type says.
pub fn parse_field(
    index: usize,
    field: &syn::Field,
    errors: &mut Vec<syn::Error>,
) -> Option<FieldSpec> {
    let mut kind: Option<(Kind, Span)> = None;
    let mut rename: Option<String> = None;
    let mut ok = true;
    let mut rule = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("shape")) {
        match attr.parse_args::<crate::model::parse::RuleDecl>() {
            Ok(r) if rule.is_none() => rule = Some((r, attr.span())),
            Ok(_) => {
                errors.push(syn::Error::new(
                    attr.span(),
                    "a field has one `#[shape(…)]` rule",
                ));
                ok = false;
            }
            Err(e) => {
                errors.push(e);
                ok = false;
            }
        }
    }
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("module")) {
        let r = attr.parse_nested_meta(|meta| {
            let k = if meta.path.is_ident("param") {
                Some(Kind::Param)
            } else if meta.path.is_ident("buffer") {
                Some(Kind::Buffer)
            } else if meta.path.is_ident("skip") {
                Some(Kind::Skip)
            } else if meta.path.is_ident("child") {
                Some(Kind::Child)
            } else if meta.path.is_ident("rename") {
                let s: LitStr = meta.value()?.parse()?;
                if s.value().is_empty() || s.value().contains('.') {
                    return Err(syn::Error::new(
                        s.span(),
                        "`rename` needs a non-empty name without dots",
                    ));
                }
                rename = Some(s.value());
                None
            } else {
                return Err(meta.error(format!(
                    "unknown field option `{}`; expected `param`, `buffer`, `child`, `skip` or `rename = \"…\"`",
                    path_string(&meta.path)
                )));
            };
            if let Some(k) = k {
                let span = meta.path.span();
                if let Some((prev, _)) = kind {
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "conflicting field options: `{}` and `{}`; a field is one of param, buffer, child or skip",
                            kind_word(prev),
                            kind_word(k)
                        ),
                    ));
                }
                kind = Some((k, span));
            }
            Ok(())
        });
        if let Err(e) = r {
            errors.push(e);
            ok = false;
        }
    }
    let ty = &field.ty;
    let inner = option_inner(ty);
    let base = inner.unwrap_or(ty);
    let kind = match kind {
        Some((k @ (Kind::Param | Kind::Buffer), span)) => {
            if !is_tensor(base) {
                errors.push(syn::Error::new(
                    ty.span(),
                    format!(
                        "`#[module({})]` needs a field of type `Tensor` or `Option<Tensor>`",
                        kind_word(k)
                    ),
                ));
                let _ = span;
                ok = false;
            }
            k
        }
        Some((k, _)) => k,
        None if is_tensor(base) => {
            errors.push(syn::Error::new(
                field_span(field),
                "a `Tensor` field needs `#[module(param)]`, `#[module(buffer)]` or `#[module(skip)]`",
            ));
            ok = false;
            Kind::Skip
        }
        None if is_plain_data(base) => Kind::Skip,
        None => Kind::Child,
    };
    if !ok {
        return None;
    }
    let member = match &field.ident {
        Some(id) => syn::Member::Named(id.clone()),
        None => syn::Member::Unnamed(syn::Index::from(index)),
    };
    let name = rename.unwrap_or_else(|| match &field.ident {
        Some(id) => id.to_string().trim_start_matches("r#").to_string(),
        None => index.to_string(),
    });
    Some(FieldSpec {
        member,
        name,
        kind,
        optional: inner.is_some(),
        span: field_span(field),
        ty: base.clone(),
        rule,
    })
}

/// The field's name (or type, in a tuple struct): where its errors point.
fn field_span(field: &syn::Field) -> Span {
    field
        .ident
        .as_ref()
        .map_or_else(|| field.ty.span(), |i| i.span())
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::Param => "param",
        Kind::Buffer => "buffer",
        Kind::Child => "child",
        Kind::Skip => "skip",
    }
}

/// Parses the item into its shape, collecting errors.
pub fn parse(input: &DeriveInput, errors: &mut Vec<syn::Error>) -> Shape {
    match &input.data {
        Data::Struct(s) => {
            let fields: Vec<&syn::Field> = match &s.fields {
                Fields::Named(f) => f.named.iter().collect(),
                Fields::Unnamed(f) => f.unnamed.iter().collect(),
                Fields::Unit => Vec::new(),
            };
            let mut specs = Vec::new();
            let mut names: Vec<(String, Span)> = Vec::new();
            for (i, f) in fields.into_iter().enumerate() {
                if let Some(spec) = parse_field(i, f, errors) {
                    if spec.kind != Kind::Skip {
                        if let Some((_, _)) = names.iter().find(|(n, _)| *n == spec.name) {
                            errors.push(syn::Error::new(
                                spec.span,
                                format!("two entries are named `{}`; rename one", spec.name),
                            ));
                        }
                        names.push((spec.name.clone(), spec.span));
                    }
                    specs.push(spec);
                }
            }
            Shape::Struct(specs)
        }
        Data::Enum(e) => {
            let mut variants = Vec::new();
            for v in &e.variants {
                match &v.fields {
                    Fields::Unnamed(f) if f.unnamed.len() == 1 => variants.push(v.ident.clone()),
                    _ => errors.push(syn::Error::new(
                        v.span(),
                        "each variant of a module enum holds exactly one module, e.g. `Relu(ReLU)`",
                    )),
                }
            }
            Shape::Enum(variants)
        }
        Data::Union(u) => {
            errors.push(syn::Error::new(
                u.union_token.span,
                "`#[derive(Module)]` works on structs and enums, not unions",
            ));
            Shape::Struct(Vec::new())
        }
    }
}

/// The generics as the type's arguments, with const parameters braced (`Net<'a, T, { D }>`):
/// unbraced, a type named `D` in the user's scope would capture the const argument.
fn ty_generics(g: &syn::Generics) -> TokenStream {
    if g.params.is_empty() {
        return quote!();
    }
    let args = g.params.iter().map(|p| match p {
        syn::GenericParam::Lifetime(l) => {
            let l = &l.lifetime;
            quote!(#l)
        }
        syn::GenericParam::Type(t) => {
            let i = &t.ident;
            quote!(#i)
        }
        syn::GenericParam::Const(c) => {
            let i = &c.ident;
            quote!({ #i })
        }
    });
    quote!(<#(#args),*>)
}

/// Generates the impls (empty walks when `stub`).
pub fn generate(input: &DeriveInput, shape: &Shape, opts: &ItemOptions, stub: bool) -> TokenStream {
    let ident = &input.ident;
    let (impl_g, _, where_g) = input.generics.split_for_impl();
    let ty_g = ty_generics(&input.generics);
    let (visit, visit_mut, training) = if stub {
        (quote!(), quote!(), quote!())
    } else {
        match shape {
            Shape::Struct(fields) => {
                let (a, b) = struct_walks(fields);
                (a, b, quote!())
            }
            Shape::Enum(variants) => enum_walks(variants),
        }
    };
    let type_name = opts.name.as_ref().map(|n| {
        quote! {
            fn type_name(&self) -> ::std::string::String { ::std::string::String::from(#n) }
        }
    });
    let display = (!opts.no_display).then(|| {
        quote! {
            impl #impl_g ::std::fmt::Display for #ident #ty_g #where_g {
                fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                    ::std::fmt::Display::fmt(&::flint::nn::Summary(self), f)
                }
            }
        }
    });
    let forward = match (shape, opts.forward, stub) {
        (Shape::Enum(variants), true, false) => Some(quote! {
            impl #impl_g ::flint::nn::Forward for #ident #ty_g #where_g {
                fn try_forward(&self, x: &::flint::Tensor) -> ::flint::Result<::flint::Tensor> {
                    match self { #( #ident::#variants(m) => ::flint::nn::Forward::try_forward(m, x), )* }
                }
            }
        }),
        _ => None,
    };
    quote! {
        impl #impl_g ::flint::nn::Module for #ident #ty_g #where_g {
            #[allow(unused_variables)]
            fn visit(&self, v: &mut ::flint::nn::Visitor<'_>) { #visit }
            #[allow(unused_variables)]
            fn visit_mut(&mut self, v: &mut ::flint::nn::VisitorMut<'_>) { #visit_mut }
            #type_name
            #training
        }
        #display
        #forward
    }
}

fn struct_walks(fields: &[FieldSpec]) -> (TokenStream, TokenStream) {
    let mut read = Vec::new();
    let mut write = Vec::new();
    for f in fields {
        let (m, name, span) = (&f.member, &f.name, f.span);
        let (r, w) = match (f.kind, f.optional) {
            (Kind::Skip, _) => continue,
            (Kind::Param, false) => (
                quote_spanned!(span=> v.param(#name, &self.#m);),
                quote_spanned!(span=> v.param(#name, &mut self.#m);),
            ),
            (Kind::Param, true) => (
                quote_spanned!(span=> v.param_opt(#name, self.#m.as_ref());),
                quote_spanned!(span=> v.param_opt(#name, self.#m.as_mut());),
            ),
            (Kind::Buffer, false) => (
                quote_spanned!(span=> v.buffer(#name, &self.#m);),
                quote_spanned!(span=> v.buffer(#name, &mut self.#m);),
            ),
            (Kind::Buffer, true) => (
                quote_spanned!(span=> if let ::std::option::Option::Some(t) = &self.#m { v.buffer(#name, t); }),
                quote_spanned!(span=> if let ::std::option::Option::Some(t) = &mut self.#m { v.buffer(#name, t); }),
            ),
            (Kind::Child, false) => (
                quote_spanned!(span=> v.child(#name, &self.#m);),
                quote_spanned!(span=> v.child(#name, &mut self.#m);),
            ),
            (Kind::Child, true) => (
                quote_spanned!(span=> if let ::std::option::Option::Some(c) = &self.#m { v.child(#name, c); }),
                quote_spanned!(span=> if let ::std::option::Option::Some(c) = &mut self.#m { v.child(#name, c); }),
            ),
        };
        read.push(r);
        write.push(w);
    }
    (quote!(#(#read)*), quote!(#(#write)*))
}

/// An enum of modules is transparent: it walks, names and trains as its variant.
fn enum_walks(variants: &[Ident]) -> (TokenStream, TokenStream, TokenStream) {
    let m = format_ident!("m");
    let read =
        quote!(match self { #( Self::#variants(#m) => ::flint::nn::Module::visit(#m, v), )* });
    let write =
        quote!(match self { #( Self::#variants(#m) => ::flint::nn::Module::visit_mut(#m, v), )* });
    let training = quote! {
        fn type_name(&self) -> ::std::string::String {
            match self { #( Self::#variants(#m) => ::flint::nn::Module::type_name(#m), )* }
        }
        fn extra_repr(&self) -> ::std::string::String {
            match self { #( Self::#variants(#m) => ::flint::nn::Module::extra_repr(#m), )* }
        }
        fn set_own_training(&mut self, training: bool) {
            match self { #( Self::#variants(#m) => ::flint::nn::Module::set_own_training(#m, training), )* }
        }
        fn own_training(&self) -> ::std::option::Option<bool> {
            match self { #( Self::#variants(#m) => ::flint::nn::Module::own_training(#m), )* }
        }
    };
    (read, write, training)
}

/// The whole derive on a token stream: parse, check, generate; errors plus stubs on
/// failure.
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Vec::new();
    let opts = parse_item_options(&input, &mut errors);
    let shape = parse(&input, &mut errors);
    if opts.forward && matches!(shape, Shape::Struct(_)) {
        errors.push(syn::Error::new(
            input.ident.span(),
            "`#[module(forward)]` is for enums of layers; write `forward` for a struct, or use `model!`",
        ));
    }
    let seq = match (&shape, opts.sequential) {
        (Shape::Struct(fields), Some(span)) => sequential(fields, span, &mut errors),
        (Shape::Enum(_), Some(span)) => {
            errors.push(syn::Error::new(span, "`#[module(sequential)]` is for structs; an enum of layers uses `#[module(forward)]`"));
            None
        }
        _ => None,
    };
    let stub = !errors.is_empty();
    let mut out = generate(&input, &shape, &opts, stub);
    if let Some(body) = seq.filter(|_| !stub) {
        let ident = &input.ident;
        let (impl_g, _, where_g) = input.generics.split_for_impl();
        let ty_g = ty_generics(&input.generics);
        out.extend(quote! {
            impl #impl_g ::flint::nn::Forward for #ident #ty_g #where_g {
                fn try_forward(&self, x: &::flint::Tensor) -> ::flint::Result<::flint::Tensor> {
                    let mut x: ::flint::Tensor = ::core::clone::Clone::clone(x);
                    #body
                    ::core::result::Result::Ok(x)
                }
            }
        });
    }
    for e in errors {
        out.extend(e.to_compile_error());
    }
    out
}

/// Layers known to keep the shape of their input: a chain checks across them.
const SHAPE_KEEPING: [&str; 11] = [
    "ReLU",
    "Gelu",
    "Tanh",
    "Sigmoid",
    "SiLU",
    "LeakyReLU",
    "Dropout",
    "Identity",
    "Softmax",
    "LogSoftmax",
    "Dropout2d",
];

/// `#[module(sequential)]`: the body of `forward` chaining the child fields, after checking
/// each declared `#[shape]` output against the next declared input.
fn sequential(
    fields: &[FieldSpec],
    span: Span,
    errors: &mut Vec<syn::Error>,
) -> Option<TokenStream> {
    let mut steps = Vec::new();
    let mut chain: Vec<(String, Span, crate::model::check::Rule)> = Vec::new();
    let mut segments = Vec::new();
    for f in fields {
        match f.kind {
            Kind::Skip => continue,
            Kind::Param | Kind::Buffer => {
                errors.push(syn::Error::new(
                    f.span,
                    "a `#[module(sequential)]` struct chains its layers; a parameter or buffer has no place in the chain (write `forward` by hand)",
                ));
                continue;
            }
            Kind::Child => {}
        }
        let m = &f.member;
        let many = matches!(&f.ty, Type::Array(_))
            || last_segment(&f.ty).is_some_and(|s| s.ident == "Vec");
        let call = if many {
            quote_spanned!(f.span=> for __m in self.#m.iter() { x = ::flint::nn::Forward::try_forward(__m, &x)?; })
        } else if f.optional {
            quote_spanned!(f.span=> if let ::std::option::Option::Some(__m) = &self.#m { x = ::flint::nn::Forward::try_forward(__m, &x)?; })
        } else {
            quote_spanned!(f.span=> x = ::flint::nn::Forward::try_forward(&self.#m, &x)?;)
        };
        steps.push(call);
        let keeps = last_segment(&f.ty).is_some_and(|s| SHAPE_KEEPING.iter().any(|k| s.ident == k));
        match &f.rule {
            Some((decl, rspan)) => {
                if decl.args.len() != 1 {
                    errors.push(syn::Error::new(
                        *rspan,
                        "a layer in a sequential chain takes one input",
                    ));
                    continue;
                }
                let mut names = crate::model::check::Names {
                    model: String::new(),
                    generics: Vec::new(),
                    params: Vec::new(),
                    syms: Default::default(),
                };
                match crate::model::check::rule_from(&mut names, &decl.args, &decl.ret) {
                    Ok(r) => chain.push((f.name.clone(), f.span, r)),
                    Err(e) => errors.push(e),
                }
            }
            None if keeps && !f.optional => {}
            None => segments.push(std::mem::take(&mut chain)),
        }
    }
    segments.push(chain);
    for seg in &segments {
        errors.extend(crate::model::check::check_chain(seg));
    }
    // (A field that failed to parse is reported already: no second error for it.)
    if steps.is_empty() && errors.is_empty() {
        errors.push(syn::Error::new(
            span,
            "`#[module(sequential)]` needs at least one layer field",
        ));
    }
    if steps.is_empty() {
        return None;
    }
    Some(quote!(#(#steps)*))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(src: TokenStream) -> (Vec<FieldSpec>, Vec<String>) {
        let input: DeriveInput = syn::parse2(src).expect("parses");
        let mut errors = Vec::new();
        let shape = parse(&input, &mut errors);
        let specs = match shape {
            Shape::Struct(f) => f,
            Shape::Enum(_) => panic!("struct expected"),
        };
        (specs, errors.iter().map(|e| e.to_string()).collect())
    }

    fn derive_errors(src: TokenStream) -> Vec<String> {
        crate::compile_errors(&derive_module(src))
    }

    #[test]
    fn sequential_checks_the_declared_chain() {
        let ok = derive_module(quote! {
            #[module(sequential)]
            struct Mlp {
                #[shape([.., 784] -> [.., 256])]
                fc1: Linear,
                act: ReLU,
                drop: Dropout,
                #[shape([.., 256] -> [.., 10])]
                fc2: Linear,
            }
        })
        .to_string();
        assert!(!ok.contains("compile_error"), "{ok}");
        assert!(
            ok.contains("impl :: flint :: nn :: Forward for Mlp"),
            "{ok}"
        );
        let errs = derive_errors(quote! {
            #[module(sequential)]
            struct Mlp {
                #[shape([.., 784] -> [.., 512])]
                fc1: Linear,
                act: ReLU,
                #[shape([.., 256] -> [.., 10])]
                fc2: Linear,
            }
        });
        assert_eq!(
            errs,
            ["shape mismatch: `fc1` produces [.., 512] but `fc2` expects [.., 256]"]
        );
        // A field with no rule that is not known to keep the shape cuts the chain.
        let errs = derive_errors(quote! {
            #[module(sequential)]
            struct Mlp {
                #[shape([.., 784] -> [.., 512])]
                fc1: Linear,
                mystery: Custom,
                #[shape([.., 256] -> [.., 10])]
                fc2: Linear,
                #[module(param)]
                scale: Tensor,
            }
        });
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("a `#[module(sequential)]` struct chains its layers"),
            "{errs:?}"
        );
    }

    #[test]
    fn fields_are_classified_by_attribute_and_type() {
        let (f, errors) = fields(quote! {
            struct Net {
                fc1: Linear,
                #[module(param)] scale: Tensor,
                #[module(buffer)] steps: Option<Tensor>,
                #[module(skip)] cache: Tensor,
                #[module(rename = "out")] head: Option<Linear>,
                layers: Vec<Block>,
                dim: usize,
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let got: Vec<(&str, Kind, bool)> = f
            .iter()
            .map(|s| (s.name.as_str(), s.kind, s.optional))
            .collect();
        assert_eq!(
            got,
            [
                ("fc1", Kind::Child, false),
                ("scale", Kind::Param, false),
                ("steps", Kind::Buffer, true),
                ("cache", Kind::Skip, false),
                ("out", Kind::Child, true),
                ("layers", Kind::Child, false),
                ("dim", Kind::Skip, false),
            ]
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let (_, errors) = fields(quote! {
            struct Bad {
                #[module(param, buffer)] a: Tensor,
                #[module(weight)] b: Linear,
                c: Tensor,
                #[module(param)] d: Linear,
            }
        });
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].starts_with("conflicting field options: `param` and `buffer`"));
        assert!(errors[1].starts_with("unknown field option `weight`"));
        assert!(errors[2].starts_with("a `Tensor` field needs"));
        assert!(errors[3].contains("needs a field of type `Tensor`"));
    }

    #[test]
    fn generated_walks_name_every_entry() {
        let out = derive_module(quote! {
            struct Net { fc: Linear, #[module(param)] w: Tensor }
        })
        .to_string();
        assert!(out.contains("v . child (\"fc\" , & self . fc)"), "{out}");
        assert!(out.contains("v . param (\"w\" , & mut self . w)"), "{out}");
        assert!(
            out.contains("impl :: std :: fmt :: Display for Net"),
            "{out}"
        );
    }

    #[test]
    fn errors_still_emit_a_stub_impl() {
        let out = derive_module(quote! {
            struct Net { #[module(nonsense)] fc: Linear }
        })
        .to_string();
        assert!(out.contains("impl :: flint :: nn :: Module for Net"));
        assert!(out.contains("compile_error"));
        assert!(!out.contains("v . child"));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let (_, errors) = fields(quote! {
            struct Net { a: Linear, #[module(rename = "a")] b: Linear }
        });
        assert_eq!(errors, ["two entries are named `a`; rename one"]);
    }
}
