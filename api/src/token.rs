//! Access tokens: JWT (RFC 7519) with HS256, signed with an API key's secret.
//!
//! Claims:
//! ```json
//! { "iss": "<api key>", "sub": "<identity>", "name": "<display name>",
//!   "meeting": "<meeting>", "grants": { "join": true, "publish": true, "subscribe": true,
//!   "create": true, "admin": false }, "iat": 1700000000, "nbf": 1700000000, "exp": 1700003600 }
//! ```
//! Only `alg: HS256` is accepted (never `none`, never another algorithm); a header `kid`, if
//! present, must name a known API key and agree with `iss`; the signature is checked in
//! constant time before any claim is trusted. `exp` is strict: a token is refused from its
//! expiry second on (no skew allowance stretches a stolen token's life); `nbf` and `iat` allow
//! 10 seconds of clock skew for an issuer whose clock runs ahead. Time arithmetic saturates.

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
    /// Turn the meeting's captions on and off (written only when granted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub captions: bool,
}

impl From<GrantClaims> for Grants {
    fn from(g: GrantClaims) -> Self {
        Grants {
            join: g.join,
            publish: g.publish,
            subscribe: g.subscribe,
            create: g.create,
            admin: g.admin,
            captions: g.captions,
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
            captions: g.captions,
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
    /// The signing key's id; when present it must be a known API key equal to `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
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
        if let Some(kid) = &header.kid {
            if self.secret(kid).is_none() {
                return Err(TokenError::UnknownKey);
            }
            if *kid != claims.iss {
                return Err(TokenError::Claims("kid and iss name different API keys"));
            }
        }
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
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let skew_limit = now.saturating_add(LEEWAY_SECS);
        if claims.nbf > skew_limit || claims.iat > skew_limit {
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
    // `kid` names the signing key (the issuer's API key), as verifiers with several keys
    // expect; Hearth checks it matches `iss`.
    let header = Header {
        alg: "HS256".into(),
        typ: Some("JWT".into()),
        kid: Some(claims.iss.clone()),
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
        exp: iat.saturating_add(ttl.as_secs()),
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

    /// Signs `claims` under a hand-made header (what an attacker or a foreign library sends).
    fn with_header(header: &str, claims: &Claims, secret: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(header.as_bytes());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{header}.{body}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{body}.{sig}")
    }

    #[test]
    fn the_refused_forms_each_have_their_error() {
        let now = SystemTime::now();
        let c = claims(now);
        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "alg none, signed",
                with_header(r#"{"alg":"none"}"#, &c, "secret-one"),
                TokenError::Algorithm,
            ),
            (
                "alg None (case)",
                with_header(r#"{"alg":"None"}"#, &c, "secret-one"),
                TokenError::Algorithm,
            ),
            (
                "unexpected algorithm HS512",
                with_header(r#"{"alg":"HS512"}"#, &c, "secret-one"),
                TokenError::Algorithm,
            ),
            (
                "unexpected algorithm RS256",
                with_header(r#"{"alg":"RS256","typ":"JWT"}"#, &c, "secret-one"),
                TokenError::Algorithm,
            ),
            (
                "no alg at all",
                with_header(r#"{"typ":"JWT"}"#, &c, "secret-one"),
                TokenError::Malformed("a part is not the expected JSON"),
            ),
            (
                "kid of an unknown key",
                with_header(r#"{"alg":"HS256","kid":"APIunknown"}"#, &c, "secret-one"),
                TokenError::UnknownKey,
            ),
        ];
        for (what, token, want) in cases {
            assert_eq!(store().verify(&token, now), Err(want), "{what}");
        }
        // kid and iss must agree.
        let mut keys = store();
        keys.insert("APIkey2", "secret-two");
        let token = with_header(r#"{"alg":"HS256","kid":"APIkey2"}"#, &c, "secret-one");
        assert_eq!(
            keys.verify(&token, now),
            Err(TokenError::Claims("kid and iss name different API keys"))
        );
        // A matching kid is fine.
        let token = with_header(r#"{"alg":"HS256","kid":"APIkey1"}"#, &c, "secret-one");
        assert_eq!(keys.verify(&token, now), Ok(c.clone()));

        // nbf in the future (beyond the skew allowance) and iat in the future.
        let mut future = claims(now);
        future.nbf += 60;
        assert_eq!(
            store().verify(&mint(&future, "secret-one"), now),
            Err(TokenError::NotYetValid)
        );
        let mut future = claims(now);
        future.iat += 3600;
        assert_eq!(
            store().verify(&mint(&future, "secret-one"), now),
            Err(TokenError::NotYetValid)
        );
        // Expiry within the clock skew: expired is expired.
        let mut just_expired = claims(now);
        just_expired.exp = unix(now) - 1;
        assert_eq!(
            store().verify(&mint(&just_expired, "secret-one"), now),
            Err(TokenError::Expired)
        );
        let mut at_expiry = claims(now);
        at_expiry.exp = unix(now);
        assert_eq!(
            store().verify(&mint(&at_expiry, "secret-one"), now),
            Err(TokenError::Expired)
        );
        // Extreme numbers saturate instead of overflowing.
        let mut huge = claims(now);
        huge.exp = u64::MAX;
        assert!(store().verify(&mint(&huge, "secret-one"), now).is_ok());
        let far = claims_for(
            "APIkey1",
            "m",
            "ada",
            "Ada",
            Grants::default(),
            now,
            Duration::from_secs(u64::MAX),
        );
        assert_eq!(far.exp, u64::MAX);
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
