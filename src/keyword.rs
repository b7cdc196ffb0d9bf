//! Closed sets of values with one spelling each, where configuration names them
//! (`auth = "optional"`, `escaped_slashes = "keep"`, `"X-User-Id" = "sub"`): the
//! `keyword_enum!` macro declares such an enum once — its variants and their spellings —
//! and derives everything else from that one list: parsing, printing (`as_str`,
//! `Display`, `Serialize` for the effective configuration), the list of accepted values
//! for error messages, and [`Keyword`] for generic validation (`config`). A leaf: it
//! imports nothing of the crate.

/// A closed set of values, each with one spelling.
pub trait Keyword: Copy + Eq + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];

    /// The value's spelling.
    fn as_str(self) -> &'static str;

    /// The value spelled `s`, exactly.
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Every spelling, quoted and separated by commas: `"bearer", "client"`.
    fn expected() -> String {
        Self::ALL
            .iter()
            .map(|k| format!("{:?}", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Declares an enum whose variants are spelled as given, with inherent `ALL`, `as_str`
/// and `parse`, and `Keyword`, `Display` and `Serialize` impls:
///
/// ```text
/// keyword_enum! {
///     /// `auth` of a route.
///     pub enum AuthMode { Required = "required", Optional = "optional", None = "none" }
/// }
/// ```
///
/// Attributes before `pub enum` (docs, `#[derive(Default)]` with a `#[default]` variant)
/// pass through; `Debug, Clone, Copy, PartialEq, Eq` are derived.
macro_rules! keyword_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value's spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The value spelled `s`, exactly.
            pub fn parse(s: &str) -> Option<Self> {
                <Self as $crate::keyword::Keyword>::parse(s)
            }
        }

        impl $crate::keyword::Keyword for $name {
            const ALL: &'static [$name] = $name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

pub(crate) use keyword_enum;

#[cfg(test)]
mod tests {
    use super::*;

    keyword_enum! {
        enum Mode { Fast = "fast", Slow = "slow" }
    }

    #[test]
    fn one_list_parses_prints_and_names_the_accepted_values() {
        assert_eq!(Mode::parse("slow"), Some(Mode::Slow));
        assert_eq!(Mode::parse("Slow"), None, "spellings are exact");
        assert_eq!(Mode::Fast.to_string(), "fast");
        assert_eq!(<Mode as Keyword>::expected(), "\"fast\", \"slow\"");
        for &mode in Mode::ALL {
            assert_eq!(Mode::parse(mode.as_str()), Some(mode));
        }
    }
}
