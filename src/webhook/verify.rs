//! Is a delivery from AutoSend? `X-Webhook-Signature` is the hex HMAC-SHA256 of the exact raw
//! body, keyed with the webhook secret.
//!
//! The header is decoded to bytes and handed to `Mac::verify_slice`, which compares in
//! constant time: comparing hex strings would leak, through timing, how long a prefix of a
//! forged signature is right. Decoding first also makes the case of the hex irrelevant
//! without a case-folding comparison. Each way a header can be wrong is its own
//! [`Refused`] variant, so a misconfigured sender (no header, base64, `sha256=` prefix) is
//! told apart from a forged or stale-secret one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Refused;

type HmacSha256 = Hmac<Sha256>;

/// Digits of an HMAC-SHA256 in hex.
const SIGNATURE_HEX_LEN: usize = 64;

/// Checks `header` (the `X-Webhook-Signature` value, lowercase or uppercase hex) against the
/// HMAC-SHA256 of `body` keyed with `secret`.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), Refused> {
    if secret.is_empty() {
        return Err(Refused::NoSecret);
    }
    let given = header.map(str::trim).unwrap_or_default();
    if given.is_empty() {
        return Err(Refused::MissingSignature);
    }
    if !given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::SignatureNotHex);
    }
    if given.len() != SIGNATURE_HEX_LEN {
        return Err(Refused::SignatureWrongLength { got: given.len() });
    }
    let mut tag = [0u8; SIGNATURE_HEX_LEN / 2];
    for (byte, pair) in tag.iter_mut().zip(given.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    // HMAC takes a key of any length; the error cannot happen, and would refuse, not accept.
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| Refused::NoSecret)?;
    mac.update(body);
    mac.verify_slice(&tag).map_err(|_| Refused::BadSignature)
}

/// The value of one hex digit, already checked to be one.
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test-0123456789abcdef";
    const BODY: &[u8] =
        br#"{"type":"email.bounced","createdAt":"2025-11-12T10:20:00.000Z","data":{}}"#;

    /// The signature as AutoSend computes it, independently of the code under test.
    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn a_signature_computed_over_the_raw_body_verifies() {
        let sig = sign(SECRET, BODY);
        assert_eq!(verify_signature(SECRET, BODY, Some(&sig)), Ok(()));
    }

    #[test]
    fn the_rfc_4231_test_vector_verifies() {
        // RFC 4231, test case 2.
        let sig = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            verify_signature(b"Jefe", b"what do ya want for nothing?", Some(sig)),
            Ok(())
        );
    }

    #[test]
    fn uppercase_hex_and_surrounding_spaces_are_accepted() {
        let sig = sign(SECRET, BODY).to_ascii_uppercase();
        assert_eq!(verify_signature(SECRET, BODY, Some(&sig)), Ok(()));
        assert_eq!(
            verify_signature(SECRET, BODY, Some(&format!(" {sig}\t"))),
            Ok(())
        );
    }

    #[test]
    fn one_flipped_byte_of_the_body_fails() {
        let sig = sign(SECRET, BODY);
        for i in [0, BODY.len() / 2, BODY.len() - 1] {
            let mut body = BODY.to_vec();
            body[i] ^= 0x01;
            assert_eq!(
                verify_signature(SECRET, &body, Some(&sig)),
                Err(Refused::BadSignature),
                "byte {i}"
            );
        }
    }

    #[test]
    fn one_flipped_digit_of_the_signature_fails() {
        let sig = sign(SECRET, BODY);
        for i in [0, 31, 63] {
            let mut forged = sig.clone().into_bytes();
            forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(forged).unwrap();
            assert_eq!(
                verify_signature(SECRET, BODY, Some(&forged)),
                Err(Refused::BadSignature),
                "digit {i}"
            );
        }
    }

    #[test]
    fn the_wrong_secret_fails() {
        let sig = sign(b"another secret", BODY);
        assert_eq!(
            verify_signature(SECRET, BODY, Some(&sig)),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn a_missing_or_empty_header_is_refused_as_missing() {
        assert_eq!(
            verify_signature(SECRET, BODY, None),
            Err(Refused::MissingSignature)
        );
        assert_eq!(
            verify_signature(SECRET, BODY, Some("  ")),
            Err(Refused::MissingSignature)
        );
    }

    #[test]
    fn a_header_that_is_not_hex_is_refused_as_not_hex() {
        let sig = sign(SECRET, BODY);
        for header in [format!("sha256={sig}"), "g".repeat(64), "a2V5".to_string()] {
            assert_eq!(
                verify_signature(SECRET, BODY, Some(&header)),
                Err(Refused::SignatureNotHex),
                "{header}"
            );
        }
    }

    #[test]
    fn a_hex_header_of_the_wrong_length_is_refused_with_its_length() {
        let sig = sign(SECRET, BODY);
        assert_eq!(
            verify_signature(SECRET, BODY, Some(&sig[..63])),
            Err(Refused::SignatureWrongLength { got: 63 })
        );
        assert_eq!(
            verify_signature(SECRET, BODY, Some(&format!("{sig}00"))),
            Err(Refused::SignatureWrongLength { got: 66 })
        );
    }

    #[test]
    fn an_empty_secret_refuses_even_a_matching_signature() {
        let sig = sign(b"", BODY);
        assert_eq!(
            verify_signature(b"", BODY, Some(&sig)),
            Err(Refused::NoSecret)
        );
    }

    #[test]
    fn no_reason_repeats_the_secret_or_the_expected_signature() {
        let expected = sign(SECRET, BODY);
        let secret = String::from_utf8_lossy(SECRET).into_owned();
        let wrong = sign(SECRET, b"other");
        for header in [None, Some("zz"), Some("abcd"), Some(wrong.as_str())] {
            let reason = verify_signature(SECRET, BODY, header)
                .unwrap_err()
                .to_string();
            assert!(!reason.contains(&expected), "{reason}");
            assert!(!reason.contains(&secret), "{reason}");
        }
    }
}
