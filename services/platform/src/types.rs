//! The two shapes every service's types take: id newtypes (a `PurchaseId` cannot be passed
//! where a `PersonId` is expected) and states stored as text (matched exhaustively, spelled
//! once for the database, JSON and the command line).

/// Declares a `Uuid` newtype id that is stored as a `uuid` column and serialised as the bare
/// uuid (so job payloads and exports keep their shape), displayed and parsed as one.
#[macro_export]
macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

/// Declares an enum stored as `text`: each variant's spelling, written once, is the same in
/// the database, in JSON and on the command line (clap's `ValueEnum`); `as_str` and `Display`
/// give it back, `ALL` lists the variants.
///
/// The spellings are taken as `tt`, not `literal`: a `literal` fragment reaches the derives
/// wrapped in an invisible group, which serde and sqlx unwrap but utoipa does not (the OpenAPI
/// document then listed `OptOutOfSale`, and the contract test caught it).
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:tt),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, sqlx::Type, clap::ValueEnum,
        )]
        #[sqlx(type_name = "text")]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $text)]
                #[sqlx(rename = $text)]
                #[value(name = $text)]
                $variant
            ),+
        }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
