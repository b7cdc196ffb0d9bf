//! Which user data an identity header can carry: [`IdentityField`], the vocabulary shared
//! by configuration (`[identity.headers]` maps header names to fields), the cache (which
//! renders each field's value once per entry) and metrics (which label omitted values by
//! field). A leaf: it imports nothing of the crate.

/// A field of the user's identity that can become a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    Sub,
    Name,
    Username,
    Email,
    PhoneNumber,
    Picture,
    Gender,
    Status,
    /// Ids of unexpired groups, comma-separated.
    Groups,
    /// The scope from introspection.
    Scope,
    /// `true` / `false`.
    Anonymous,
    ClientId,
}

impl IdentityField {
    pub const ALL: [(&'static str, IdentityField); 12] = [
        ("sub", IdentityField::Sub),
        ("name", IdentityField::Name),
        ("username", IdentityField::Username),
        ("email", IdentityField::Email),
        ("phone_number", IdentityField::PhoneNumber),
        ("picture", IdentityField::Picture),
        ("gender", IdentityField::Gender),
        ("status", IdentityField::Status),
        ("groups", IdentityField::Groups),
        ("scope", IdentityField::Scope),
        ("anonymous", IdentityField::Anonymous),
        ("client_id", IdentityField::ClientId),
    ];

    /// The field called `s` in `[identity.headers]`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    /// Its name in `[identity.headers]` and in metric labels.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("")
    }
}
