//! Signing and signature checks shared by ingest (verifying pushes) and sinks and pollers
//! (signing calls): always over the raw bytes, compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Lowercase hex MD5 of the concatenation of `parts`.
pub(crate) fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hex_lower(&hasher.finalize())
}

/// Constant-time equality of two byte strings (for base64 signatures, which are case-sensitive).
pub(crate) fn same_bytes(expected: &[u8], given: &[u8]) -> bool {
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

/// WangDianTong's openapi2 sign: the pairs but `sign`, sorted by name, each written
/// `%02d-name:%04d-value` with lengths in characters, joined with `;`, then
/// md5hex(that + appsecret). Used to verify its pushes and to sign calls to it.
pub(crate) fn wdt_sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    appsecret: &str,
) -> String {
    let mut sorted: Vec<(&str, &str)> = params.into_iter().filter(|(k, _)| *k != "sign").collect();
    sorted.sort_unstable();
    let joined = sorted
        .iter()
        .map(|(key, value)| {
            format!(
                "{:02}-{key}:{:04}-{value}",
                key.chars().count(),
                value.chars().count()
            )
        })
        .collect::<Vec<_>>()
        .join(";");
    md5_hex(&[joined.as_bytes(), appsecret.as_bytes()])
}

/// TOP's (Taobao TMC, JD JOS) sign: md5hex(secret + the pairs' names and values in name order +
/// secret), uppercase.
pub(crate) fn top_sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    secret: &str,
) -> String {
    let mut sorted: Vec<(&str, &str)> = params.into_iter().collect();
    sorted.sort_unstable();
    let mut text = String::from(secret);
    for (name, value) in sorted {
        text.push_str(name);
        text.push_str(value);
    }
    text.push_str(secret);
    md5_hex(&[text.as_bytes()]).to_ascii_uppercase()
}

/// Lowercase hex HMAC-SHA256 of `message` under `key` (Douyin's `hmac-sha256` sign).
pub(crate) fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    hex_lower(&hmac_sha256(key, message))
}

/// Base64 HMAC-SHA256 of `message` under `key` (Kuaishou's `HMAC_SHA256` sign).
pub(crate) fn hmac_sha256_base64(key: &[u8], message: &[u8]) -> String {
    STANDARD.encode(hmac_sha256(key, message))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0x0f) as usize] as char);
    }
    out
}

/// Constant-time equality of two ASCII signatures (case-insensitive for hex digests).
pub(crate) fn same_signature(expected: &str, given: &str) -> bool {
    let given = given.trim().to_ascii_lowercase();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A Standard Webhooks signing key (`whsec_` + base64), keyed into HMAC-SHA256 once: each
/// signature starts from a copy of the keyed state instead of hashing the key's two pads again.
#[derive(Clone)]
pub(crate) struct WebhookKey(Hmac<Sha256>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(<redacted>)")
    }
}

/// Why a Standard Webhooks signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WebhookSignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the accepted tolerance")]
    Stale,
    #[error("no webhook-signature matches the body")]
    Mismatch,
}

impl WebhookKey {
    /// Parses `whsec_<base64>` (the prefix is optional).
    pub(crate) fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        STANDARD
            .decode(encoded.trim())
            .map(|key| WebhookKey(Hmac::new_from_slice(&key).expect("HMAC takes any key length")))
            .map_err(|e| format!("not a whsec_ base64 secret ({e})"))
    }

    /// The `v1,<base64>` signature of `body` under `id` and `timestamp`.
    pub(crate) fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Verifies the three Standard Webhooks headers against `body`, with `now_s` the current
    /// unix time and `tolerance_s` the accepted clock difference.
    pub(crate) fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now_s: i64,
        tolerance_s: i64,
    ) -> Result<(), WebhookSignatureError> {
        use WebhookSignatureError::*;
        let id = id.ok_or(MissingHeader("webhook-id"))?;
        let timestamp = timestamp.ok_or(MissingHeader("webhook-timestamp"))?;
        let signatures = signatures.ok_or(MissingHeader("webhook-signature"))?;
        let ts: i64 = timestamp.trim().parse().map_err(|_| BadTimestamp)?;
        if (now_s - ts).abs() > tolerance_s {
            return Err(Stale);
        }
        let expected = self.sign(id, timestamp.trim(), body);
        let matched = signatures
            .split_whitespace()
            .filter(|s| s.starts_with("v1,"))
            .any(|s| {
                s.len() == expected.len() && bool::from(s.as_bytes().ct_eq(expected.as_bytes()))
            });
        if matched { Ok(()) } else { Err(Mismatch) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks specification (shared/reference/protocols.md §4).
    #[test]
    fn standard_webhooks_test_vector() {
        let key = WebhookKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let id = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
        assert_eq!(
            key.sign(id, "1649367553", body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        let header =
            "v1,bm9ub3RhcmVhbHNpZ25hdHVyZQ== v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
        let at = 1_649_367_553;
        assert_eq!(
            key.verify(Some(id), Some("1649367553"), Some(header), body, at, 300),
            Ok(())
        );
        assert_eq!(
            key.verify(Some(id), Some("1649367553"), Some(header), b"{}", at, 300),
            Err(WebhookSignatureError::Mismatch)
        );
        assert_eq!(
            key.verify(
                Some(id),
                Some("1649367553"),
                Some(header),
                body,
                at + 301,
                300
            ),
            Err(WebhookSignatureError::Stale)
        );
        assert_eq!(
            key.verify(None, Some("1649367553"), Some(header), body, at, 300),
            Err(WebhookSignatureError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn md5_hex_matches_a_known_digest() {
        // md5("abc") from RFC 1321's test suite.
        assert_eq!(md5_hex(&[b"a", b"bc"]), "900150983cd24fb0d6963f7d28e17f72");
        assert!(same_signature(
            "900150983cd24fb0d6963f7d28e17f72",
            "900150983CD24FB0D6963F7D28E17F72"
        ));
        assert!(!same_signature(
            "900150983cd24fb0d6963f7d28e17f72",
            "900150983cd24fb0"
        ));
    }
}
