//! The ID token's checks (OpenID Connect Core 3.1.3.7): its signature by one of the
//! provider's keys (RS256/384/512, PS256/384/512, ES256/384; never `none` or an HMAC),
//! `iss` exactly the configured issuer, `aud` holding the client id (and `azp`, when
//! present, that client), `exp`, `nbf` and `iat` within [`LEEWAY`] of the clock, `sub`
//! present, and `nonce` the one this sign-in sent.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Clock skew allowed between the provider and this service, in seconds.
pub const LEEWAY: u64 = 30;

/// The algorithms an ID token may be signed with.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// What the token must say.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
}

/// Who signed in, from a token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    /// Every claim, for the mapping rules.
    pub claims: Map<String, Value>,
}

/// Why a token was refused, in words fit for the person signing in and the log (never
/// the token or any part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the ID token is malformed")]
    Malformed,
    #[error("the ID token is signed with {0}, which keygate does not accept")]
    Algorithm(String),
    #[error("none of the identity provider's published keys matches the ID token's key")]
    UnknownKey,
    #[error("the ID token's signature is not valid")]
    BadSignature,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token is not valid yet (check the clocks)")]
    NotYetValid,
    #[error("the ID token was not issued by the configured issuer")]
    WrongIssuer,
    #[error("the ID token is meant for another client (its audience is not this client id)")]
    WrongAudience,
    #[error("the ID token's nonce is not the one this sign-in sent")]
    WrongNonce,
    #[error("the ID token has no {0} claim")]
    Missing(&'static str),
}

/// Whether `jwk` can verify a token signed with `alg` (its family, and its own `alg` and
/// `use` when it names them).
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let family = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        )
    );
    let named = jwk
        .common
        .key_algorithm
        .is_none_or(|a| format!("{a:?}") == format!("{alg:?}"));
    let signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    family && named && signing
}

/// The keys of `keys` that could have signed `token`: those with its `kid` (all, when it
/// names none) that fit its algorithm. Empty: the provider may have new keys.
pub fn candidates<'a>(token: &str, keys: &'a [Jwk]) -> Result<Vec<&'a Jwk>, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    Ok(keys
        .iter()
        .filter(|jwk| {
            header
                .kid
                .as_deref()
                .is_none_or(|kid| jwk.common.key_id.as_deref() == Some(kid))
        })
        .filter(|jwk| fits(jwk, header.alg))
        .collect())
}

fn refusal(error: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::Missing("exp"),
            "iss" => TokenError::Missing("iss"),
            "aud" => TokenError::Missing("aud"),
            "sub" => TokenError::Missing("sub"),
            _ => TokenError::Malformed,
        },
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm("another algorithm".into()),
        _ => TokenError::Malformed,
    }
}

/// Checks `token` against the provider's `keys` and what this sign-in expects, at unix
/// second `now` (for `iat`; `exp` and `nbf` are read against the system clock).
pub fn verify(
    token: &str,
    keys: &[Jwk],
    expected: Expected<'_>,
    now: i64,
) -> Result<Identity, TokenError> {
    let candidates = candidates(token, keys)?;
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = LEEWAY;
    validation.validate_nbf = true;
    let mut last = TokenError::BadSignature;
    let mut claims = None;
    for jwk in candidates {
        let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::UnknownKey)?;
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            // Another key with the same id (or none) may be the one.
            Err(e) if refusal(&e) == TokenError::BadSignature => {}
            Err(e) => {
                last = refusal(&e);
                break;
            }
        }
    }
    let claims = claims.ok_or(last)?;

    let nonce = claims.get("nonce").and_then(Value::as_str);
    let nonce = nonce.ok_or(TokenError::Missing("nonce"))?;
    if !bool::from(nonce.as_bytes().ct_eq(expected.nonce.as_bytes())) {
        return Err(TokenError::WrongNonce);
    }
    let iat = claims.get("iat").and_then(Value::as_i64);
    let iat = iat.ok_or(TokenError::Missing("iat"))?;
    if iat > now.saturating_add(LEEWAY.cast_signed()) {
        return Err(TokenError::NotYetValid);
    }
    if let Some(azp) = claims.get("azp") {
        if azp.as_str() != Some(expected.client_id) {
            return Err(TokenError::WrongAudience);
        }
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(TokenError::Missing("sub"))?
        .to_owned();
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Identity {
        subject,
        email,
        claims,
    })
}

/// Signing keys made in the test process, and ID tokens signed with them: shared by this
/// module's tests and the provider's.
#[cfg(test)]
pub(crate) mod testing {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    /// A private key and its public JWK.
    pub struct Signer {
        pub alg: Algorithm,
        pub kid: String,
        key: EncodingKey,
        pub jwk: Value,
    }

    /// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (what jsonwebtoken reads).
    fn pkcs1(pkcs8: &[u8]) -> Vec<u8> {
        // SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey }
        fn read(der: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = der[0];
            let (len, start) = if der[1] < 0x80 {
                (usize::from(der[1]), 2)
            } else {
                let n = usize::from(der[1] & 0x7f);
                let len = der[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                (len, 2 + n)
            };
            (tag, &der[start..start + len], &der[start + len..])
        }
        let (tag, body, _) = read(pkcs8);
        assert_eq!(tag, 0x30);
        let (_, _, rest) = read(body);
        let (_, _, rest) = read(rest);
        let (tag, key, _) = read(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    impl Signer {
        pub fn rsa(kid: &str) -> Signer {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
            let public = pair.public_key();
            let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
            Signer {
                alg: Algorithm::RS256,
                kid: kid.into(),
                key: EncodingKey::from_rsa_der(&pkcs1(der.as_ref())),
                jwk: json!({
                    "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                }),
            }
        }

        pub fn ec(kid: &str) -> Signer {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
            // Uncompressed point: 0x04 || X || Y.
            let point = pair.public_key().as_ref();
            Signer {
                alg: Algorithm::ES256,
                kid: kid.into(),
                key: EncodingKey::from_ec_der(pkcs8.as_ref()),
                jwk: json!({
                    "kty": "EC", "use": "sig", "alg": "ES256", "kid": kid, "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                }),
            }
        }

        pub fn public(&self) -> Jwk {
            serde_json::from_value(self.jwk.clone()).unwrap()
        }

        pub fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.key).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Signer;
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com/realms/acme";
    const CLIENT: &str = "keygate-console";
    const NONCE: &str = "n0nce-from-the-login";

    fn now() -> i64 {
        crate::expiry::now()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "user-1", "email": "ann@acme.com",
            "groups": ["acme-admins"], "nonce": NONCE,
            "iat": now(), "exp": now() + 300,
        })
    }

    fn with(changes: Value) -> Value {
        let mut claims = claims();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn expected() -> Expected<'static> {
        Expected {
            issuer: ISSUER,
            client_id: CLIENT,
            nonce: NONCE,
        }
    }

    #[test]
    fn a_good_token_from_either_kind_of_key_yields_who_signed_in() {
        for signer in [Signer::rsa("r1"), Signer::ec("e1")] {
            let keys = [Signer::ec("other").public(), signer.public()];
            let identity = verify(&signer.sign(&claims()), &keys, expected(), now()).unwrap();
            assert_eq!(identity.subject, "user-1");
            assert_eq!(identity.email.as_deref(), Some("ann@acme.com"));
            assert_eq!(identity.claims["groups"], json!(["acme-admins"]));
        }
    }

    #[test]
    fn an_audience_list_holding_the_client_passes_and_azp_must_be_this_client() {
        let signer = Signer::ec("e1");
        let keys = [signer.public()];
        let listed = with(json!({"aud": ["other", CLIENT], "azp": CLIENT}));
        assert!(verify(&signer.sign(&listed), &keys, expected(), now()).is_ok());
        let foreign = with(json!({"aud": ["other", CLIENT], "azp": "other"}));
        assert_eq!(
            verify(&signer.sign(&foreign), &keys, expected(), now()),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn each_broken_promise_is_refused_with_its_reason() {
        let signer = Signer::rsa("r1");
        let keys = [signer.public()];
        let t = now();
        for (changes, reason) in [
            (json!({"aud": "someone-else"}), TokenError::WrongAudience),
            (json!({"aud": ["a", "b"]}), TokenError::WrongAudience),
            (json!({"aud": null}), TokenError::Missing("aud")),
            (
                json!({"iss": format!("{ISSUER}/")}),
                TokenError::WrongIssuer,
            ),
            (
                json!({"iss": "https://evil.example.com"}),
                TokenError::WrongIssuer,
            ),
            (json!({"exp": t - 300, "iat": t - 900}), TokenError::Expired),
            (json!({"exp": null}), TokenError::Missing("exp")),
            (json!({"nbf": t + 600}), TokenError::NotYetValid),
            (json!({"iat": t + 600}), TokenError::NotYetValid),
            (json!({"iat": null}), TokenError::Missing("iat")),
            (json!({"nonce": "another"}), TokenError::WrongNonce),
            (json!({"nonce": null}), TokenError::Missing("nonce")),
            (json!({"sub": null}), TokenError::Missing("sub")),
            (json!({"sub": ""}), TokenError::Missing("sub")),
        ] {
            let token = signer.sign(&with(changes.clone()));
            assert_eq!(
                verify(&token, &keys, expected(), t),
                Err(reason),
                "{changes}"
            );
        }
        // Within the leeway, a token just expired or issued a moment ahead still passes.
        let skewed = with(json!({"exp": t - 5, "iat": t + 5}));
        assert!(verify(&signer.sign(&skewed), &keys, expected(), t).is_ok());
    }

    #[test]
    fn a_signature_by_another_key_is_refused_whatever_key_id_it_claims() {
        let published = Signer::rsa("r1");
        let keys = [published.public()];
        // The impostor claims the published key's id.
        let impostor = Signer::rsa("r1");
        assert_eq!(
            verify(&impostor.sign(&claims()), &keys, expected(), now()),
            Err(TokenError::BadSignature)
        );
        // Or an id the provider does not publish (a caller fetches the keys again).
        let unknown = Signer::rsa("r2");
        assert_eq!(
            verify(&unknown.sign(&claims()), &keys, expected(), now()),
            Err(TokenError::UnknownKey)
        );
        // A token's payload changed after signing.
        let token = published.sign(&claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = {
            use base64::Engine;
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            engine.encode(with(json!({"sub": "admin"})).to_string())
        };
        parts[1] = forged;
        assert_eq!(
            verify(&parts.join("."), &keys, expected(), now()),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unsigned_hmac_and_mismatched_keys_are_refused() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let rsa = Signer::rsa("k");
        let keys = [rsa.public()];
        let body = engine.encode(claims().to_string());
        let none = format!("{}.{body}.", engine.encode(r#"{"alg":"none","kid":"k"}"#));
        assert!(verify(&none, &keys, expected(), now()).is_err());
        // An HMAC token "signed" with the public key's bytes: the classic confusion.
        let hmac = jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some("k".into()),
                ..jsonwebtoken::Header::new(Algorithm::HS256)
            },
            &claims(),
            &jsonwebtoken::EncodingKey::from_secret(rsa.jwk["n"].as_str().unwrap().as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(&hmac, &keys, expected(), now()),
            Err(TokenError::Algorithm("HS256".into()))
        );
        // An EC-signed token never meets an RSA key of the same id.
        let ec = Signer::ec("k");
        assert_eq!(
            verify(&ec.sign(&claims()), &keys, expected(), now()),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            verify("not.a.token", &keys, expected(), now()),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn encryption_keys_are_not_used_to_verify() {
        let signer = Signer::rsa("r1");
        let mut jwk = signer.jwk.clone();
        jwk["use"] = json!("enc");
        let keys = [serde_json::from_value(jwk).unwrap()];
        assert_eq!(
            verify(&signer.sign(&claims()), &keys, expected(), now()),
            Err(TokenError::UnknownKey)
        );
    }
}
