//! Access tokens: JWT (RFC 7519) with HS256, signed with an API key's secret.
//!
//! Claims:
//! ```json
//! { "iss": "<api key>", "sub": "<identity>", "name": "<display name>",
//!   "meeting": "<meeting>", "grants": { "join": true, "publish": true, "subscribe": true,
//!   "create": true, "admin": false }, "iat": 1700000000, "nbf": 1700000000, "exp": 1700003600 }
//! ```
//! Only `alg: HS256` is accepted (never `none`); the signature is checked in constant time
//! before any claim is trusted; `exp`/`nbf` allow 10 seconds of clock skew.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hearth_actors::Grants;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const LEEWAY_SECS: u64 = 10;
/// Tokens are small; anything bigger is not ours.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm must be HS256")]
    Algorithm,
    #[error("the token was signed by an unknown API key")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's claims are invalid: {0}")]
    Claims(&'static str),
}

/// What the token grants, as JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    #[serde(default)]
    pub join: bool,
    #[serde(default)]
    pub publish: bool,
    #[serde(default)]
    pub subscribe: bool,
    #[serde(default)]
    pub create: bool,
    #[serde(default)]
    pub admin: bool,
}

impl From<GrantClaims> for Grants {
    fn from(g: GrantClaims) -> Self {
        Grants {
            join: g.join,
            publish: g.publish,
            subscribe: g.subscribe,
            create: g.create,
            admin: g.admin,
        }
    }
}

impl From<Grants> for GrantClaims {
    fn from(g: Grants) -> Self {
        GrantClaims {
            join: g.join,
            publish: g.publish,
            subscribe: g.subscribe,
            create: g.create,
            admin: g.admin,
        }
    }
}

/// The claims of a Hearth access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// The participant's identity in the application.
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// The meeting the token is for (empty for admin-only tokens).
    #[serde(default)]
    pub meeting: String,
    pub grants: GrantClaims,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub nbf: u64,
    pub exp: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// API keys and their secrets.
#[derive(Clone, Debug, Default)]
pub struct KeyStore {
    keys: HashMap<String, String>,
}

impl KeyStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, secret: impl Into<String>) {
        self.keys.insert(key.into(), secret.into());
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn secret(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Any one key pair (the node's own, for dev tokens).
    pub fn first(&self) -> Option<(&str, &str)> {
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort();
        keys.first().map(|(k, s)| (k.as_str(), s.as_str()))
    }

    /// Checks `token` and returns its claims.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = decode_json(header_b64)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let claims: Claims = decode_json(claims_b64)?;
        let secret = self.secret(&claims.iss).ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let mut mac =
            HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| TokenError::Signature)?;
        mac.update(header_b64.as_bytes());
        mac.update(b".");
        mac.update(claims_b64.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;

        let now = unix(now);
        if claims.exp + LEEWAY_SECS <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(TokenError::Claims("sub (identity) must be 1 to 256 bytes"));
        }
        if claims.name.len() > 256 {
            return Err(TokenError::Claims("name must be at most 256 bytes"));
        }
        Ok(claims)
    }
}

/// Signs `claims` with `secret` (HS256).
pub fn mint(claims: &Claims, secret: &str) -> String {
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
    };
    // Serializing these plain structs cannot fail.
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{body}.{sig}")
}

/// Builds claims valid from `now` for `ttl`.
pub fn claims_for(
    api_key: &str,
    meeting: &str,
    identity: &str,
    name: &str,
    grants: Grants,
    now: SystemTime,
    ttl: Duration,
) -> Claims {
    let iat = unix(now);
    Claims {
        iss: api_key.into(),
        sub: identity.into(),
        name: name.into(),
        meeting: meeting.into(),
        grants: grants.into(),
        iat,
        nbf: iat,
        exp: iat + ttl.as_secs(),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed("a part is not the expected JSON"))
}

/// Parses durations like `90s`, `15m`, `1h`, `2d` (or plain seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| (&s[..i], &s[i..]));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 90s, 15m, 1h, 2d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> KeyStore {
        let mut keys = KeyStore::new();
        keys.insert("APIkey1", "secret-one");
        keys
    }

    fn claims(now: SystemTime) -> Claims {
        claims_for(
            "APIkey1",
            "standup",
            "ada",
            "Ada",
            Grants::default(),
            now,
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn round_trip() {
        let now = SystemTime::now();
        let c = claims(now);
        let token = mint(&c, "secret-one");
        assert_eq!(store().verify(&token, now).unwrap(), c);
    }

    #[test]
    fn forged_and_foreign_tokens_fail() {
        let now = SystemTime::now();
        let forged = mint(&claims(now), "not-the-secret");
        assert_eq!(store().verify(&forged, now), Err(TokenError::Signature));
        let mut c = claims(now);
        c.iss = "APIother".into();
        assert_eq!(
            store().verify(&mint(&c, "secret-one"), now),
            Err(TokenError::UnknownKey)
        );
        // Tampering with the claims breaks the signature.
        let token = mint(&claims(now), "secret-one");
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut admin = claims(now);
        admin.grants.admin = true;
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap());
        parts[1] = &body;
        assert_eq!(
            store().verify(&parts.join("."), now),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let now = SystemTime::now();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now)).unwrap());
        let token = format!("{header}.{body}.");
        assert_eq!(store().verify(&token, now), Err(TokenError::Algorithm));
    }

    #[test]
    fn expiry_and_not_before() {
        let now = SystemTime::now();
        let token = mint(&claims(now), "secret-one");
        let later = now + Duration::from_secs(3600 + LEEWAY_SECS + 1);
        assert_eq!(store().verify(&token, later), Err(TokenError::Expired));
        let earlier = now - Duration::from_secs(LEEWAY_SECS + 5);
        assert_eq!(
            store().verify(&token, earlier),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let now = SystemTime::now();
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "eyJ.eyJ.sig",
            &"x".repeat(10_000),
        ] {
            assert!(
                matches!(store().verify(bad, now), Err(TokenError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
