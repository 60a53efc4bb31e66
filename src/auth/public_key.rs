//! Institution public keys: Ed25519 only, given as PEM (SubjectPublicKeyInfo) or as the
//! base64 of the raw 32 bytes.

use base64::Engine;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows it.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

pub fn parse_ed25519(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let invalid = || {
        "'public_key' must be an Ed25519 public key: PEM (-----BEGIN PUBLIC KEY-----) or base64 of 32 bytes".to_string()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = if let Some(rest) = text.strip_prefix("-----BEGIN PUBLIC KEY-----") {
        let body = rest.split("-----END PUBLIC KEY-----").next().ok_or_else(invalid)?;
        let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let der = b64.decode(body).map_err(|_| invalid())?;
        der.strip_prefix(&ED25519_SPKI_PREFIX[..]).ok_or_else(invalid)?.to_vec()
    } else {
        b64.decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| invalid())?
    };
    bytes.try_into().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn accepts_pem_and_raw_base64() {
        let from_pem = parse_ed25519(PEM).unwrap();
        assert_eq!(from_pem[0], 0x19);
        let raw = base64::engine::general_purpose::STANDARD.encode(from_pem);
        assert_eq!(parse_ed25519(&raw).unwrap(), from_pem);
    }

    #[test]
    fn refuses_other_keys() {
        assert!(parse_ed25519("not a key").is_err());
        assert!(parse_ed25519("AAAA").is_err());
        let rsa_like = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf\n-----END PUBLIC KEY-----";
        assert!(parse_ed25519(rsa_like).is_err());
    }
}
