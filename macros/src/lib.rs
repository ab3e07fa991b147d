//! `#[workflow]` and `#[activity]`: turn plain `async fn`s into Cairn's typed, registered,
//! durable units. Generated code uses only `cairn`'s public API and `cairn::__private`.
//!
//! Each macro replaces the function with a unit struct of the same name (so the name is
//! what you pass to `ctx.activity(..)`, `Runtime::start(..)` and the runtime builder) and
//! keeps the body as its hidden associated function.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, GenericArgument, ItemFn, LitStr, Pat, PathArguments, ReturnType, Token, Type};

mod determinism;

/// Marks an `async fn(ctx: Ctx, ...) -> Result<T, E>` as a durable workflow.
///
/// Arguments after `ctx` form the input (one argument: its type; several: a tuple).
/// `T` and `E` must be serde types; `E` must convert from `cairn::ActivityFailure` to use
/// `?` on activity calls. `#[workflow(name = "...")]` sets the registered name (default:
/// the function's name); keep it stable, running instances are found by it.
///
/// The body is checked for calls that break deterministic replay (wall clocks, randomness,
/// spawning, sleeping, file and network I/O); each is a compile error naming the `ctx`
/// replacement.
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Workflow, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Marks an `async fn(ctx: ActivityCtx, ...) -> Result<T, E>` as an activity: the place
/// for side effects. `E` must convert into `cairn::ActivityError` (any
/// `std::error::Error` does, as a retryable failure).
/// `#[activity(name = "...")]` sets the name recorded in history (default: the
/// function's name). Default options of its calls can be set where it is declared:
/// `#[activity(start_to_close = "30s", max_attempts = 5, initial_backoff = "2s",
/// non_retryable = ["declined"])]`; a call may still override them.
#[proc_macro_attribute]
pub fn activity(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Activity, attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Workflow,
    Activity,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Workflow => "#[workflow]",
            Kind::Activity => "#[activity]",
        }
    }

    fn ctx_type(self) -> &'static str {
        match self {
            Kind::Workflow => "Ctx",
            Kind::Activity => "ActivityCtx",
        }
    }
}

struct Args {
    name: Option<LitStr>,
    /// Default options of an activity's calls, as `(option, tokens that set it)`.
    options: Vec<(syn::Ident, TokenStream2)>,
}

/// Milliseconds of a duration literal: `"500ms"`, `"30s"`, `"5m"`, `"2h"`.
fn duration_ms(literal: &LitStr) -> syn::Result<u64> {
    let text = literal.value();
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if factor > 0 && n > 0 => n
            .checked_mul(factor)
            .ok_or_else(|| syn::Error::new(literal.span(), "the duration is too long")),
        _ => Err(syn::Error::new(
            literal.span(),
            format!("`{text}` is not a duration like \"500ms\", \"30s\", \"5m\" or \"2h\""),
        )),
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut name = None;
        let mut options = Vec::new();
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let setter = match key.to_string().as_str() {
                "name" => {
                    let value: LitStr = input.parse()?;
                    if value.value().trim().is_empty() {
                        return Err(syn::Error::new(value.span(), "the name must not be empty"));
                    }
                    name = Some(value);
                    None
                }
                "start_to_close" => {
                    let ms = duration_ms(&input.parse()?)?;
                    Some(quote!(options.start_to_close = ::core::time::Duration::from_millis(#ms);))
                }
                "initial_backoff" => {
                    let ms = duration_ms(&input.parse()?)?;
                    Some(quote!(options.retry = options.retry.initial_backoff(::core::time::Duration::from_millis(#ms));))
                }
                "max_attempts" => {
                    let attempts: syn::LitInt = input.parse()?;
                    let n: u32 = attempts.base10_parse()?;
                    if n == 0 {
                        return Err(syn::Error::new(attempts.span(), "`max_attempts` must be at least 1"));
                    }
                    Some(quote!(options.retry = options.retry.max_attempts(#n);))
                }
                "non_retryable" => {
                    let kinds: syn::ExprArray = input.parse()?;
                    for kind in &kinds.elems {
                        if !matches!(kind, syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(_), .. })) {
                            return Err(syn::Error::new(kind.span(), "`non_retryable` lists error kinds as string literals"));
                        }
                    }
                    let kinds = kinds.elems.iter();
                    Some(quote!(options.retry = options.retry.non_retryable([#(#kinds),*]);))
                }
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown option `{key}`; the options are `name`, and for activities `start_to_close`, `max_attempts`, `initial_backoff` and `non_retryable`"),
                    ))
                }
            };
            if let Some(setter) = setter {
                options.push((key, setter));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(Self { name, options })
    }
}

fn result_types(kind: Kind, output: &ReturnType, fn_span: Span) -> syn::Result<(Type, Type)> {
    let message = format!(
        "a {} function must return `Result<Output, Error>`{}",
        kind.attr(),
        match kind {
            Kind::Workflow => " (for example `Result<Receipt, cairn::WorkflowError>`)",
            Kind::Activity => " (for example `Result<Reservation, cairn::ActivityError>`)",
        }
    );
    let ReturnType::Type(_, ty) = output else {
        return Err(syn::Error::new(fn_span, message));
    };
    if let Type::Path(path) = ty.as_ref() {
        if let Some(last) = path.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    let types: Vec<&Type> = args
                        .args
                        .iter()
                        .filter_map(|arg| match arg {
                            GenericArgument::Type(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    if let [ok, err] = types.as_slice() {
                        return Ok(((*ok).clone(), (*err).clone()));
                    }
                }
            }
        }
    }
    Err(syn::Error::new(ty.span(), message))
}

fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none() && path.path.segments.last().is_some_and(|s| s.ident == name)
        }
        Type::Reference(_) => false,
        _ => false,
    }
}

fn expand(kind: Kind, attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let args: Args = syn::parse2(attr)?;
    if let (Kind::Workflow, Some((option, _))) = (kind, args.options.first()) {
        return Err(syn::Error::new(
            option.span(),
            format!("`{option}` is an activity option; a workflow takes only `name`"),
        ));
    }
    let option_setters = args.options.iter().map(|(_, setter)| setter);
    let options_fn = if args.options.is_empty() {
        quote!()
    } else {
        quote! {
            fn options() -> ::cairn::ActivityOptions {
                let mut options = ::cairn::ActivityOptions::default();
                #(#option_setters)*
                options
            }
        }
    };
    let func: ItemFn = syn::parse2(item)?;
    let sig = &func.sig;
    let attr_name = kind.attr();

    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!("a {attr_name} function must be `async fn`"),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("a {attr_name} function cannot be generic: its types are recorded in history by name, so each must be concrete"),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(
            variadic.span(),
            format!("a {attr_name} function cannot be variadic"),
        ));
    }

    let mut inputs = sig.inputs.iter();
    let ctx_type = kind.ctx_type();
    let missing_ctx = || {
        syn::Error::new(
            sig.ident.span(),
            format!(
                "the first argument of a {attr_name} function must be `ctx: {ctx_type}`{}",
                match kind {
                    Kind::Workflow => ": every durable call goes through it",
                    Kind::Activity => ": it carries the attempt number and idempotency key",
                }
            ),
        )
    };
    let (ctx_pat, ctx_ty) = match inputs.next() {
        Some(FnArg::Typed(pat)) if is_named(&pat.ty, ctx_type) => (pat.pat.clone(), pat.ty.clone()),
        Some(FnArg::Typed(pat)) => {
            return Err(syn::Error::new(
                pat.ty.span(),
                format!("the first argument of a {attr_name} function must be `ctx: {ctx_type}`, found another type"),
            ))
        }
        Some(FnArg::Receiver(recv)) => {
            return Err(syn::Error::new(recv.span(), format!("a {attr_name} function cannot take `self`")))
        }
        None => return Err(missing_ctx()),
    };

    let mut pats: Vec<Box<Pat>> = Vec::new();
    let mut types: Vec<Box<Type>> = Vec::new();
    for arg in inputs {
        match arg {
            FnArg::Typed(pat) => {
                if let Type::Reference(r) = pat.ty.as_ref() {
                    return Err(syn::Error::new(
                        r.span(),
                        format!("{attr_name} arguments are recorded in history and must be owned values, not references"),
                    ));
                }
                if is_named(&pat.ty, "Ctx") || is_named(&pat.ty, "ActivityCtx") {
                    return Err(syn::Error::new(pat.ty.span(), format!("the context must be the first and only context argument of a {attr_name} function")));
                }
                pats.push(pat.pat.clone());
                types.push(pat.ty.clone());
            }
            FnArg::Receiver(recv) => {
                return Err(syn::Error::new(
                    recv.span(),
                    format!("a {attr_name} function cannot take `self`"),
                ))
            }
        }
    }

    let (ok_ty, err_ty) = result_types(kind, &sig.output, sig.fn_token.span())?;

    if kind == Kind::Workflow {
        let mut checker = determinism::Checker::default();
        checker.visit_block(&func.block);
        if let Some(err) = checker.into_error() {
            return Err(err);
        }
    }

    let vis = &func.vis;
    let ident = &sig.ident;
    let attrs = &func.attrs;
    let block = &func.block;
    let name = args
        .name
        .map(|n| n.value())
        .unwrap_or_else(|| ident.to_string());
    let run_fn = format_ident!(
        "__cairn_{}_body",
        if kind == Kind::Workflow {
            "workflow"
        } else {
            "activity"
        }
    );

    let input_ty = match types.len() {
        0 => quote!(()),
        1 => {
            let ty = &types[0];
            quote!(#ty)
        }
        _ => quote!((#(#types,)*)),
    };
    let arg_names: Vec<_> = (0..types.len())
        .map(|i| format_ident!("__cairn_arg{}", i))
        .collect();
    let call_args = match types.len() {
        0 => quote!(),
        1 => quote!(input),
        _ => quote!(#(#arg_names),*),
    };
    let unpack = if types.len() > 1 {
        quote!(let (#(#arg_names,)*) = input;)
    } else {
        quote!()
    };

    let params = pats.iter().zip(types.iter()).map(|(p, t)| quote!(#p: #t));

    let trait_impl = match kind {
        Kind::Workflow => quote! {
            impl ::cairn::Workflow for #ident {
                const NAME: &'static str = #name;
                type Input = #input_ty;
                type Output = #ok_ty;
                type Error = #err_ty;
                fn run(
                    ctx: ::cairn::Ctx,
                    input: Self::Input,
                ) -> ::cairn::__private::BoxFuture<'static, ::core::result::Result<Self::Output, Self::Error>> {
                    #unpack
                    ::cairn::__private::Box::pin(Self::#run_fn(ctx, #call_args))
                }
            }
        },
        Kind::Activity => quote! {
            impl ::cairn::Activity for #ident {
                const NAME: &'static str = #name;
                type Input = #input_ty;
                type Output = #ok_ty;
                #options_fn
                fn run(
                    ctx: ::cairn::ActivityCtx,
                    input: Self::Input,
                ) -> ::cairn::__private::BoxFuture<'static, ::core::result::Result<Self::Output, ::cairn::ActivityError>> {
                    #unpack
                    ::cairn::__private::Box::pin(async move {
                        Self::#run_fn(ctx, #call_args).await.map_err(::cairn::__private::into_activity_error)
                    })
                }
            }
        },
    };

    Ok(quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        impl #ident {
            #[doc(hidden)]
            #[allow(clippy::too_many_arguments)]
            async fn #run_fn(#ctx_pat: #ctx_ty, #(#params),*) -> ::core::result::Result<#ok_ty, #err_ty> #block
        }

        #trait_impl
    })
}
