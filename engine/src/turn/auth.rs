//! TURN long-term credentials (RFC 8489 §9.2): static users, coturn-compatible ephemeral
//! ("TURN REST API") users, and stateless nonces that expire.
//!
//! Nonces carry their own expiry and a MAC under a node secret, so checking one needs no
//! table: `"<expiry, hex seconds since the epoch Instant>-<16 hex digits of HMAC-SHA1>"`.
//! An expired nonce gets 438 (Stale Nonce) with a fresh one.
//!
//! The SFU's own credentials (what a node hands the participants it admits) are ephemeral
//! credentials of a kind of their own: `"<expiry>:sfu:<participant>"`, their password
//! derived from the shared secret through a separate key (see [`Authenticator::sfu_credentials`]),
//! so neither kind can be made into the other by editing the username. They relay only to
//! the SFU's media address, end with their expiry, and can be revoked before it
//! ([`Authenticator::revoke`]). REST user ids starting with `sfu:` are therefore reserved.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun::{Class, Message, MessageBuilder, attr, long_term_key};

/// Who a request was authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The USERNAME as sent (for REST users `"<expiry>:<user>"`).
    pub username: String,
    /// The user the quotas count against (the REST user id, or the static user).
    pub user: String,
    /// The long-term key for MESSAGE-INTEGRITY of this session.
    pub key: [u8; 16],
    pub kind: CredentialKind,
    /// For the SFU's credentials: the only peers they may relay to (the SFU's media
    /// address) and how long they remain valid from the check.
    pub sfu: Option<SfuGrant>,
}

/// Which kind of credential authenticated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A static user (`--turn-user`).
    Static,
    /// An operator's ephemeral (TURN REST API) credential.
    Rest,
    /// A credential the SFU minted for one of its participants.
    Sfu,
}

/// The limits of an SFU credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SfuGrant {
    /// The only peers it may relay to.
    pub peers: Vec<SocketAddr>,
    /// Time left until it expires, as of the check.
    pub valid_for: Duration,
}

/// The prefix of the user part of SFU credentials.
pub const SFU_USER_PREFIX: &str = "sfu:";

/// Why a request was not authenticated; each maps to one error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthReject {
    /// 401: no MESSAGE-INTEGRITY (the normal first round trip), unknown user, expired REST
    /// credential or wrong password.
    Unauthorized(&'static str),
    /// 400: MESSAGE-INTEGRITY without USERNAME, REALM or NONCE.
    BadRequest(&'static str),
    /// 438: the nonce expired or is not ours.
    StaleNonce,
}

impl AuthReject {
    pub fn code(self) -> u16 {
        match self {
            AuthReject::Unauthorized(_) => 401,
            AuthReject::BadRequest(_) => 400,
            AuthReject::StaleNonce => 438,
        }
    }
}

/// Credentials and nonces of one TURN server.
#[derive(Clone)]
pub struct Authenticator {
    realm: String,
    users: HashMap<String, [u8; 16]>,
    rest_secret: Option<Vec<u8>>,
    /// Key of the SFU's credentials, derived from the shared secret.
    sfu_secret: Option<Vec<u8>>,
    /// Where SFU credentials may relay to.
    sfu_peers: Vec<SocketAddr>,
    /// Revoked SFU users and when their credentials expire anyway (Unix seconds); shared
    /// by the clones of this authenticator.
    revoked: Arc<RwLock<HashMap<String, u64>>>,
    nonce_key: [u8; 32],
    nonce_lifetime: Duration,
    epoch: Instant,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest", &self.rest_secret.is_some())
            .field("sfu_peers", &self.sfu_peers)
            .finish()
    }
}

impl Authenticator {
    /// `nonce_key` must be random (the caller draws it); `epoch` anchors nonce expiry times.
    pub fn new(realm: &str, nonce_key: [u8; 32], nonce_lifetime: Duration, epoch: Instant) -> Self {
        Self {
            realm: realm.to_owned(),
            users: HashMap::new(),
            rest_secret: None,
            sfu_secret: None,
            sfu_peers: Vec::new(),
            revoked: Arc::default(),
            nonce_key,
            nonce_lifetime: nonce_lifetime.min(crate::MAX_INTERVAL),
            epoch,
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A static user (`--turn-user user:pass`).
    pub fn add_user(&mut self, user: &str, password: &str) {
        self.users
            .insert(user.to_owned(), long_term_key(user, &self.realm, password));
    }

    /// Enables ephemeral credentials signed with `secret` (coturn's `static-auth-secret`).
    pub fn set_rest_secret(&mut self, secret: &[u8]) {
        self.rest_secret = Some(secret.to_vec());
        let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"hearth: TURN credentials of the SFU's participants");
        self.sfu_secret = Some(mac.finalize().into_bytes().to_vec());
    }

    /// The peers SFU credentials may relay to (the SFU's media address).
    pub fn set_sfu_peers(&mut self, peers: &[SocketAddr]) {
        self.sfu_peers = peers.to_vec();
    }

    /// Credentials for the SFU's participant `participant`, valid until `expiry_unix`:
    /// (username, password). None without a shared secret.
    pub fn sfu_credentials(&self, participant: &str, expiry_unix: u64) -> Option<(String, String)> {
        let secret = self.sfu_secret.as_ref()?;
        let username = format!("{expiry_unix}:{SFU_USER_PREFIX}{participant}");
        let password = rest_password(secret, &username);
        Some((username, password))
    }

    /// Revokes the SFU credentials of `user` (`"sfu:<participant>"`) until `until_unix`
    /// (when they would have expired anyway).
    pub fn revoke(&self, user: &str, until_unix: u64) {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        let entry = revoked.entry(user.to_owned()).or_insert(until_unix);
        *entry = (*entry).max(until_unix);
    }

    pub fn is_revoked(&self, user: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user)
    }

    /// Forgets revocations of credentials that expired by `unix_now`.
    pub fn forget_expired_revocations(&self, unix_now: u64) {
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        revoked.retain(|_, until| *until > unix_now);
    }

    /// A nonce valid from `now` for the nonce lifetime.
    pub fn nonce(&self, now: Instant) -> String {
        let expiry = (now.saturating_duration_since(self.epoch) + self.nonce_lifetime).as_secs();
        format!("{expiry:x}-{}", self.nonce_mac(expiry))
    }

    fn nonce_mac(&self, expiry: u64) -> String {
        let mut mac =
            Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("HMAC takes keys of any length");
        mac.update(&expiry.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn nonce_valid(&self, nonce: &str, now: Instant) -> bool {
        let Some((expiry, mac)) = nonce.split_once('-') else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return false;
        };
        // Compare MACs without an early exit on the first differing byte.
        let want = self.nonce_mac(expiry);
        let same = want.len() == mac.len()
            && want
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same && now.saturating_duration_since(self.epoch).as_secs() < expiry
    }

    /// Authenticates a request (RFC 8489 §9.2.4). `unix_now` checks REST expiry times.
    pub fn check(
        &self,
        msg: &Message<'_>,
        now: Instant,
        unix_now: u64,
    ) -> Result<Authenticated, AuthReject> {
        if !msg.has_integrity() {
            return Err(AuthReject::Unauthorized("credentials required"));
        }
        let (Some(username), Some(_realm), Some(nonce)) = (
            msg.text(attr::USERNAME),
            msg.text(attr::REALM),
            msg.text(attr::NONCE),
        ) else {
            return Err(AuthReject::BadRequest(
                "USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY",
            ));
        };
        if !self.nonce_valid(nonce, now) {
            return Err(AuthReject::StaleNonce);
        }
        let (key, user, kind, expiry) = self.key_for(username, unix_now)?;
        if !msg.check_integrity(&key) {
            return Err(AuthReject::Unauthorized("wrong credentials"));
        }
        if kind == CredentialKind::Sfu && self.is_revoked(&user) {
            return Err(AuthReject::Unauthorized("credentials revoked"));
        }
        let sfu = (kind == CredentialKind::Sfu).then(|| SfuGrant {
            peers: self.sfu_peers.clone(),
            valid_for: Duration::from_secs(expiry.saturating_sub(unix_now)),
        });
        Ok(Authenticated {
            username: username.to_owned(),
            user,
            key,
            kind,
            sfu,
        })
    }

    /// The key, the user, the kind and the expiry (Unix seconds; `u64::MAX` for static
    /// users) of `username`.
    fn key_for(
        &self,
        username: &str,
        unix_now: u64,
    ) -> Result<([u8; 16], String, CredentialKind, u64), AuthReject> {
        if let Some(key) = self.users.get(username) {
            return Ok((*key, username.to_owned(), CredentialKind::Static, u64::MAX));
        }
        let Some(secret) = &self.rest_secret else {
            return Err(AuthReject::Unauthorized("unknown user"));
        };
        let Some((expiry, user)) = username.split_once(':') else {
            return Err(AuthReject::Unauthorized("unknown user"));
        };
        let Ok(expiry) = expiry.parse::<u64>() else {
            return Err(AuthReject::Unauthorized("unknown user"));
        };
        if expiry <= unix_now {
            return Err(AuthReject::Unauthorized("credentials expired"));
        }
        let (secret, kind) = match (user.starts_with(SFU_USER_PREFIX), &self.sfu_secret) {
            (true, Some(sfu)) => (sfu, CredentialKind::Sfu),
            _ => (secret, CredentialKind::Rest),
        };
        let password = rest_password(secret, username);
        Ok((
            long_term_key(username, &self.realm, &password),
            user.to_owned(),
            kind,
            expiry,
        ))
    }

    /// The error response for a rejected request (REALM and NONCE where the RFC asks).
    pub fn reject_response(
        &self,
        msg: &Message<'_>,
        reject: AuthReject,
        now: Instant,
        software: Option<&str>,
    ) -> Vec<u8> {
        let reason = match reject {
            AuthReject::Unauthorized(_) => "Unauthorized",
            AuthReject::BadRequest(r) => r,
            AuthReject::StaleNonce => "Stale Nonce",
        };
        let mut b = MessageBuilder::new(msg.method(), Class::Error, msg.transaction_id())
            .error_code(reject.code(), reason);
        if !matches!(reject, AuthReject::BadRequest(_)) {
            b = b
                .attr(attr::REALM, self.realm.as_bytes())
                .attr(attr::NONCE, self.nonce(now).as_bytes());
        }
        if let Some(s) = software {
            b = b.attr(attr::SOFTWARE, s.as_bytes());
        }
        b.fingerprint().build()
    }
}

/// The password of an ephemeral user: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Ephemeral credentials for `user`, valid until `expiry_unix` (what the SFU hands out).
pub fn ephemeral_credentials(secret: &[u8], user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::method;

    fn auth(epoch: Instant) -> Authenticator {
        let mut a = Authenticator::new("hearth", [9; 32], Duration::from_secs(600), epoch);
        a.add_user("alice", "wonderland");
        a.set_rest_secret(b"northwind");
        a
    }

    fn request(username: &str, realm: &str, nonce: &str, key: &[u8]) -> Vec<u8> {
        MessageBuilder::new(method::ALLOCATE, Class::Request, [3; 12])
            .u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
            .attr(attr::USERNAME, username.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .integrity(key)
            .fingerprint()
            .build()
    }

    #[test]
    fn static_user_full_round_trip() {
        let t0 = Instant::now();
        let a = auth(t0);
        let first = MessageBuilder::new(method::ALLOCATE, Class::Request, [1; 12]).build();
        let m = Message::parse(&first).unwrap();
        let reject = a.check(&m, t0, 1_000).unwrap_err();
        assert_eq!(reject.code(), 401);
        let response = a.reject_response(&m, reject, t0, None);
        let r = Message::parse(&response).unwrap();
        assert_eq!(r.error_code().map(|e| e.0), Some(401));
        let nonce = r.text(attr::NONCE).unwrap();
        assert_eq!(r.text(attr::REALM), Some("hearth"));

        let key = long_term_key("alice", "hearth", "wonderland");
        let bytes = request("alice", "hearth", nonce, &key);
        let ok = a
            .check(&Message::parse(&bytes).unwrap(), t0, 1_000)
            .unwrap();
        assert_eq!((ok.user.as_str(), ok.key), ("alice", key));
    }

    #[test]
    fn wrong_password_unknown_user_and_missing_fields() {
        let t0 = Instant::now();
        let a = auth(t0);
        let nonce = a.nonce(t0);
        let bad = request(
            "alice",
            "hearth",
            &nonce,
            &long_term_key("alice", "hearth", "x"),
        );
        assert_eq!(
            a.check(&Message::parse(&bad).unwrap(), t0, 0)
                .unwrap_err()
                .code(),
            401
        );
        let who = request("mallory", "hearth", &nonce, &[0; 16]);
        assert_eq!(
            a.check(&Message::parse(&who).unwrap(), t0, 0)
                .unwrap_err()
                .code(),
            401
        );
        let no_realm = MessageBuilder::new(method::ALLOCATE, Class::Request, [1; 12])
            .attr(attr::USERNAME, b"alice")
            .integrity(&[0; 16])
            .build();
        assert_eq!(
            a.check(&Message::parse(&no_realm).unwrap(), t0, 0)
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn nonces_expire_and_forged_ones_are_stale() {
        let t0 = Instant::now();
        let a = auth(t0);
        let key = long_term_key("alice", "hearth", "wonderland");
        let nonce = a.nonce(t0);
        let bytes = request("alice", "hearth", &nonce, &key);
        let m = Message::parse(&bytes).unwrap();
        assert!(a.check(&m, t0 + Duration::from_secs(599), 0).is_ok());
        assert_eq!(
            a.check(&m, t0 + Duration::from_secs(601), 0),
            Err(AuthReject::StaleNonce)
        );
        for forged in ["", "ffffffff", "ffffffff-0000000000000000", "zz-zz"] {
            let bytes = request("alice", "hearth", forged, &key);
            assert_eq!(
                a.check(&Message::parse(&bytes).unwrap(), t0, 0),
                Err(AuthReject::StaleNonce),
                "{forged:?}"
            );
        }
        // Another node's nonces (other key) are stale here.
        let other = Authenticator::new("hearth", [1; 32], Duration::from_secs(600), t0);
        let bytes = request("alice", "hearth", &other.nonce(t0), &key);
        assert_eq!(
            a.check(&Message::parse(&bytes).unwrap(), t0, 0),
            Err(AuthReject::StaleNonce)
        );
    }

    #[test]
    fn rest_credentials_are_coturn_compatible() {
        let t0 = Instant::now();
        let a = auth(t0);
        let (username, password) = ephemeral_credentials(b"northwind", "bob", 2_000);
        assert_eq!(username, "2000:bob");
        assert_eq!(password, rest_password(b"northwind", "2000:bob"));
        let key = long_term_key(&username, "hearth", &password);
        let bytes = request(&username, "hearth", &a.nonce(t0), &key);
        let ok = a
            .check(&Message::parse(&bytes).unwrap(), t0, 1_999)
            .unwrap();
        assert_eq!(ok.user, "bob");
        assert_eq!(
            a.check(&Message::parse(&bytes).unwrap(), t0, 2_000),
            Err(AuthReject::Unauthorized("credentials expired"))
        );
    }

    #[test]
    fn sfu_credentials_are_their_own_kind_and_can_be_revoked() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        let sfu: SocketAddr = "81.2.3.4:7882".parse().unwrap();
        a.set_sfu_peers(&[sfu]);
        let check = |username: &str, password: &str, unix_now: u64| {
            let key = long_term_key(username, "hearth", password);
            let bytes = request(username, "hearth", &a.nonce(t0), &key);
            a.check(&Message::parse(&bytes).unwrap(), t0, unix_now)
        };
        let (username, password) = a.sfu_credentials("PA_1", 2_000).unwrap();
        assert_eq!(username, "2000:sfu:PA_1");
        let ok = check(&username, &password, 1_000).unwrap();
        assert_eq!(
            (ok.kind, ok.user.as_str()),
            (CredentialKind::Sfu, "sfu:PA_1")
        );
        assert_eq!(
            ok.sfu,
            Some(SfuGrant {
                peers: vec![sfu],
                valid_for: Duration::from_secs(1_000)
            })
        );
        // Not a REST password: the SFU's key is not the shared secret.
        assert_ne!(password, rest_password(b"northwind", &username));
        assert!(check(&username, &rest_password(b"northwind", &username), 1_000).is_err());
        // Editing the username (to a REST form, or a later expiry) breaks the password.
        for edited in ["2000:PA_1", "9000:sfu:PA_1", "2000:sfu:PA_2"] {
            assert_eq!(
                check(edited, &password, 1_000).map(|_| ()),
                Err(AuthReject::Unauthorized("wrong credentials")),
                "{edited}"
            );
        }
        // Operator REST credentials are unrestricted, as before.
        let (rest_user, rest_pass) = ephemeral_credentials(b"northwind", "bob", 2_000);
        let rest = check(&rest_user, &rest_pass, 1_000).unwrap();
        assert_eq!((rest.kind, rest.sfu), (CredentialKind::Rest, None));
        // Expired, then revoked.
        assert_eq!(
            check(&username, &password, 2_000).map(|_| ()),
            Err(AuthReject::Unauthorized("credentials expired"))
        );
        a.revoke("sfu:PA_1", 2_000);
        assert_eq!(
            check(&username, &password, 1_000).map(|_| ()),
            Err(AuthReject::Unauthorized("credentials revoked"))
        );
        // Others are unaffected; the revocation is forgotten once the credential expired.
        let (other, other_pass) = a.sfu_credentials("PA_2", 2_000).unwrap();
        assert!(check(&other, &other_pass, 1_000).is_ok());
        a.forget_expired_revocations(1_999);
        assert!(a.is_revoked("sfu:PA_1"));
        a.forget_expired_revocations(2_000);
        assert!(!a.is_revoked("sfu:PA_1"));
    }

    #[test]
    fn rest_password_matches_a_known_value() {
        // HMAC-SHA1("secret", "1234567890:user") computed with openssl:
        // printf %s 1234567890:user | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1234567890:user"),
            "tHbOsg6j8vjx6g3+R1ACZpLMHG0="
        );
    }
}
