//! Access tokens exactly as an application mints them: HS256 JWTs signed with an API key's
//! secret (see `proto/README.md`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Grants of a token.
#[derive(Clone, Copy, Debug)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    pub admin: bool,
}

/// Mints a token for `identity` in `meeting` (empty for an admin token over the node).
pub fn mint(
    key: &str,
    secret: &str,
    meeting: &str,
    identity: &str,
    grants: Grants,
    ttl_s: u64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": key, "sub": identity, "name": identity, "meeting": meeting,
        "grants": {"join": true, "publish": grants.publish, "subscribe": grants.subscribe,
                   "create": true, "admin": grants.admin},
        "iat": now, "nbf": now, "exp": now + ttl_s,
    });
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(c.as_bytes());
    let s = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{h}.{c}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_three_parts_and_the_claims() {
        let t = mint(
            "K",
            "S",
            "m1",
            "u1",
            Grants {
                publish: true,
                subscribe: false,
                admin: false,
            },
            60,
        );
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["meeting"], "m1");
        assert_eq!(claims["grants"]["subscribe"], false);
        assert_eq!(
            claims["exp"].as_u64().unwrap_or(0) - claims["iat"].as_u64().unwrap_or(0),
            60
        );
    }
}
