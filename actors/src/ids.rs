//! Identifier newtypes. Ids cross module and crate lines only as these types.

use std::fmt;
use std::sync::Arc;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghijkmnopqrstuvwxyz";

/// Random alphanumeric string of `len` characters (ids, ICE credentials).
pub fn random_string(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// A fresh random id with this type's prefix.
            pub fn random() -> Self {
                Self(format!("{}{}", $prefix, random_string(12)).into())
            }
            /// Wraps an existing id string (as received from a client).
            pub fn from_string(s: impl Into<Arc<str>>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A participant in a meeting (`PA_...`), unique within the node.
    ParticipantId,
    "PA_"
);
string_id!(
    /// A published track (`TR_...`), unique within the node.
    TrackId,
    "TR_"
);
string_id!(
    /// A meeting, named by the application (the token's `meeting` claim).
    MeetingId,
    ""
);

impl MeetingId {
    /// Meeting names: 1 to 128 characters of `[A-Za-z0-9._~-]`.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
        ok.then(|| Self::from_string(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_prefix_and_differ() {
        let a = ParticipantId::random();
        let b = ParticipantId::random();
        assert!(a.as_str().starts_with("PA_"));
        assert_eq!(a.as_str().len(), 15);
        assert_ne!(a, b);
        assert!(TrackId::random().as_str().starts_with("TR_"));
    }

    #[test]
    fn meeting_names_are_validated() {
        assert!(MeetingId::parse("standup-2026.11").is_some());
        assert!(MeetingId::parse("").is_none());
        assert!(MeetingId::parse("a b").is_none());
        assert!(MeetingId::parse(&"x".repeat(129)).is_none());
        assert!(MeetingId::parse("../etc").is_none());
    }
}
