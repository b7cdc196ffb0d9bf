//! Which user data an identity header can carry: [`IdentityField`], the vocabulary shared
//! by configuration, the cache (which renders each field's value once per entry) and
//! metrics (which label omitted values by field); and [`IdentityMapping`], which header
//! carries which field. A leaf: it imports nothing of the crate but the `keyword_enum!` macro.

use std::sync::Arc;

use http::HeaderName;

use crate::keyword::keyword_enum;

keyword_enum! {
    /// A field of the user's identity that can become a header, by its name in
    /// `[identity.headers]`.
    pub enum IdentityField {
        Sub = "sub",
        Name = "name",
        Username = "username",
        Email = "email",
        PhoneNumber = "phone_number",
        Picture = "picture",
        Gender = "gender",
        Status = "status",
        /// Ids of unexpired groups, comma-separated.
        Groups = "groups",
        /// The scope from introspection.
        Scope = "scope",
        /// `true` / `false`.
        Anonymous = "anonymous",
        ClientId = "client_id",
    }
}

/// Which field each identity header carries, in header order. Built once from
/// `[identity.headers]` (`config::IdentitySettings::headers`) and handed both to the cache,
/// which renders the values in this order, and to the auth layer, which sets them under
/// these names: one value, so names and values cannot fall out of step. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMapping(Arc<[(HeaderName, IdentityField)]>);

impl IdentityMapping {
    /// `pairs` in header order; names are lower-case (`HeaderName` is).
    pub fn new(pairs: impl IntoIterator<Item = (HeaderName, IdentityField)>) -> Self {
        IdentityMapping(pairs.into_iter().collect())
    }

    /// Every header and its field, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, (HeaderName, IdentityField)> {
        self.0.iter()
    }

    /// The fields, in header order.
    pub fn fields(&self) -> impl Iterator<Item = IdentityField> + '_ {
        self.0.iter().map(|(_, field)| *field)
    }

    /// The field `name` carries, if it is one of these headers.
    pub fn field_of(&self, name: &HeaderName) -> Option<IdentityField> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }

    /// A mapping of names known at compile time (tests, benches); panics on a name that
    /// is not a valid lower-case header name.
    pub fn from_static(pairs: &[(&'static str, IdentityField)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|&(name, field)| (HeaderName::from_static(name), field)),
        )
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
