//! cls-domain: the vocabulary of CLS as plain Rust values.
//!
//! This crate owns the rules of SPEC §2 that can be checked without looking anything up:
//! the shape of slugs, prefixes, names, emails, license keys, API keys, scopes and instance ids,
//! and how each is normalized. Every value is a newtype with a private field, built only by a
//! `parse` (or `generate`) function, so code that holds one can trust it without re-checking.
//!
//! Invariants (stated as absences): this crate does no I/O, reads no clock (callers pass `now`),
//! and derives no `Serialize`; the contracts crate converts to and from wire types by hand.
//!
//! ```
//! use cls_domain::{InstanceId, KeyPrefix, LicenseKey};
//!
//! let key = LicenseKey::generate(&KeyPrefix::parse("RM")?, &mut rand::rng());
//! // A customer who types the key in lower case, with an `o` for a `0`, still finds it.
//! let typed = key.expose().to_lowercase().replace('0', "o");
//! assert_eq!(LicenseKey::parse(&typed)?.hash(), key.hash());
//!
//! assert_eq!(InstanceId::parse("https://Site.example/")?, InstanceId::parse("https://site.example")?);
//! # Ok::<(), cls_domain::FieldError>(())
//! ```

#![warn(missing_docs)]

pub mod api_key;
pub mod brand;
pub mod email;
pub mod error;
pub mod instance;
pub mod license;
pub mod license_key;
pub mod product;

mod crockford;
mod text;

pub use api_key::{ApiKeyName, ApiKeySecret, Scope, Scopes};
pub use brand::{BrandName, BrandSlug, KeyPrefix};
pub use email::Email;
pub use error::FieldError;
pub use instance::InstanceId;
pub use license::LicenseStatus;
pub use license_key::{KeyHash, LicenseKey};
pub use product::{
    DEFAULT_DURATION_DAYS, DEFAULT_SEAT_LIMIT, DurationDays, ProductCode, ProductName, SeatLimit,
};
