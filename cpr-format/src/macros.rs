//! The [`state!`](crate::state) macro: one declaration gives a state struct, its serde
//! derives, its schema and its [`SectionState`](crate::SectionState) impl.

/// Declare state structs whose schema is derived from the declaration.
///
/// ```
/// cpr_format::state! {
///     /// A segment register.
///     pub struct Segment {
///         #[hint(addr)] pub base: u64,
///         pub limit: u32,
///         pub selector: u16,
///     }
///
///     /// General-purpose registers of one vCPU.
///     #[section(name = "cpu.regs", version = 2, min_version = 1, required = true)]
///     #[derive(Default)]
///     pub struct RegsState {
///         /// Accumulator.
///         #[hint(hex)] pub rax: u64,
///         #[hint(flags)] pub rflags: u64,
///         #[hint(addr)] pub rip: u64,
///         pub cs: Option<Segment>,
///         pub xsave: cpr_format::Bytes,
///         #[since(2)] #[hint(unit("ns"))] pub extra: Option<u64>,
///     }
/// }
/// use cpr_format::SectionState;
/// assert_eq!(RegsState::NAME, "cpu.regs");
/// assert_eq!(RegsState::schema().payload.fields[5].since, 2);
/// ```
///
/// Rules:
/// - Field attributes come in this order: doc comments, `#[since(N)]`, `#[hint(H)]`, where
///   `H` is `hex`, `flags`, `addr`, `size` or `unit("...")`.
/// - A field with `#[since(N)]` must be an `Option<T>` (checked at compile time): it is
///   omitted when `None` and read as `None` from images older than version `N`.
/// - Field types must implement [`Describe`](crate::Describe) (use
///   [`Bytes`](crate::Bytes) for byte strings; nested types declared with `state!` do).
/// - Extra attributes such as `#[derive(Default)]` may follow `#[section(...)]` or the
///   doc comments of a plain struct. The macro derives `Debug, Clone, PartialEq`,
///   `Serialize` and `Deserialize`.
/// - The calling crate refers to this crate as `cpr_format`.
///
/// A field added after version 1 that is not optional does not compile:
///
/// ```compile_fail
/// cpr_format::state! {
///     #[section(name = "x", version = 2, min_version = 1, required = true)]
///     pub struct X {
///         pub a: u64,
///         #[since(2)] pub b: u64,
///     }
/// }
/// ```
#[macro_export]
macro_rules! state {
    () => {};
    (
        @struct
        [$(#[doc = $doc:literal])*]
        [$(#[$meta:meta])*]
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                $(#[since($since:literal)])?
                $(#[hint($($hint:tt)+)])?
                $fvis:vis $fname:ident : $fty:ty
            ),*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(
            ::std::fmt::Debug,
            ::std::clone::Clone,
            ::std::cmp::PartialEq,
            $crate::__private::serde::Serialize,
            $crate::__private::serde::Deserialize
        )]
        #[serde(crate = "cpr_format::__private::serde")]
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[doc = $fdoc])*
                $(
                    #[doc = concat!("\n\nSince version ", stringify!($since), ".")]
                    #[serde(default, skip_serializing_if = "Option::is_none")]
                )?
                $fvis $fname : $fty,
            )*
        }

        impl $crate::Describe for $name {
            fn field_type() -> $crate::FieldType {
                $crate::FieldType::Struct(<$name as $crate::__private::DescribeStruct>::struct_schema())
            }
        }

        impl $crate::__private::DescribeStruct for $name {
            fn struct_schema() -> $crate::StructSchema {
                // Fields added after version 1 must be optional, or older images
                // (which lack them) could not be loaded.
                $($(
                    let _ = $since;
                    fn $fname<T: $crate::OptionalField>() {}
                    $fname::<$fty>();
                )?)*
                $crate::StructSchema {
                    name: ::std::string::String::from(stringify!($name)),
                    fields: ::std::vec![
                        $(
                            $crate::FieldSchema {
                                name: ::std::string::String::from(stringify!($fname)),
                                ty: <$fty as $crate::Describe>::field_type(),
                                hint: $crate::__hint!($($($hint)+)?),
                                since: $crate::__since!($($since)?),
                                doc: $crate::__private::first_doc_line(&[$($fdoc),*]),
                            }
                        ),*
                    ],
                }
            }
        }
    };
    (
        $(#[doc = $doc:literal])*
        #[section(name = $sname:literal, version = $ver:literal, min_version = $minv:literal, required = $req:literal)]
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                $(#[since($since:literal)])?
                $(#[hint($($hint:tt)+)])?
                $fvis:vis $fname:ident : $fty:ty
            ),* $(,)?
        }
        $($rest:tt)*
    ) => {
        $crate::state! {
            @struct
            [$(#[doc = $doc])*]
            [$(#[$meta])*]
            $vis struct $name {
                $(
                    $(#[doc = $fdoc])*
                    $(#[since($since)])?
                    $(#[hint($($hint)+)])?
                    $fvis $fname : $fty
                ),*
            }
        }
        impl $crate::SectionState for $name {
            const NAME: &'static str = $sname;
            const VERSION: u32 = $ver;
            const MIN_VERSION: u32 = $minv;
            const REQUIRED: bool = $req;
            fn schema() -> $crate::SectionSchema {
                // Built once per type: a vCPU's schema takes ~90 us to build on the build
                // machines, a clone a fraction of that, and a live update's pause pays it.
                static SCHEMA: ::std::sync::OnceLock<$crate::SectionSchema> =
                    ::std::sync::OnceLock::new();
                SCHEMA
                    .get_or_init(|| $crate::SectionSchema {
                        name: ::std::string::String::from($sname),
                        version: $ver,
                        min_version: $minv,
                        required: $req,
                        doc: $crate::__private::first_doc_line(&[$($doc),*]),
                        payload: <$name as $crate::__private::DescribeStruct>::struct_schema(),
                    })
                    .clone()
            }
        }
        $crate::state! { $($rest)* }
    };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $fdoc:literal])*
                $(#[since($since:literal)])?
                $(#[hint($($hint:tt)+)])?
                $fvis:vis $fname:ident : $fty:ty
            ),* $(,)?
        }
        $($rest:tt)*
    ) => {
        $crate::state! {
            @struct
            []
            [$(#[$meta])*]
            $vis struct $name {
                $(
                    $(#[doc = $fdoc])*
                    $(#[since($since)])?
                    $(#[hint($($hint)+)])?
                    $fvis $fname : $fty
                ),*
            }
        }
        $crate::state! { $($rest)* }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __hint {
    () => {
        $crate::Hint::None
    };
    (hex) => {
        $crate::Hint::Hex
    };
    (flags) => {
        $crate::Hint::Flags
    };
    (addr) => {
        $crate::Hint::Addr
    };
    (size) => {
        $crate::Hint::Size
    };
    (unit($u:literal)) => {
        $crate::Hint::Unit(::std::string::String::from($u))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __since {
    () => {
        1u32
    };
    ($n:literal) => {
        $n
    };
}
