//! A small OpenID Connect provider for the single sign-on tests, on loopback: discovery,
//! its keys (JWKS), `/authorize` that signs the configured person in at once and sends
//! the browser back with a code, and `/token` that trades the code for an ID token only
//! for the right client, redirect URI and PKCE verifier (S256). Its keys are made in the
//! test process. Knobs make it misbehave the ways a key-service must not trust: an ID
//! token for another audience, already expired, signed by a key it does not publish, or
//! with another nonce; or refuse the sign-in outright.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Who `/authorize` signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn new(subject: &str, email: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            email: Some(email.into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// How the provider misbehaves on the next sign-ins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    None,
    /// The ID token's `aud` is another client.
    WrongAudience,
    /// The ID token expired ten minutes ago.
    Expired,
    /// The ID token is signed by a key the provider does not publish (same key id).
    BadSignature,
    /// The ID token carries another nonce than the sign-in sent.
    WrongNonce,
    /// `/authorize` sends the browser back with `error=access_denied`.
    Deny,
    /// `/authorize` sends the browser back with another `state` than the sign-in sent.
    TamperState,
}

/// A signing key and its public JWK.
pub struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo` (jsonwebtoken signs with
/// the former; aws-lc-rs writes the latter).
fn pkcs1(pkcs8: &[u8]) -> Vec<u8> {
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
    // SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey }
    let (tag, body, _) = read(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 is a SEQUENCE");
    let (_, _, rest) = read(body);
    let (_, _, rest) = read(rest);
    let (tag, key, _) = read(rest);
    assert_eq!(tag, 0x04, "PKCS#8's private key is an OCTET STRING");
    key.to_vec()
}

impl Signer {
    /// A fresh RSA-2048 key for RS256.
    pub fn rsa(kid: &str) -> Signer {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("an RSA key");
        let der = AsDer::<Pkcs8V1Der>::as_der(&pair).expect("PKCS#8 of the RSA key");
        let public = pair.public_key();
        Signer {
            alg: Algorithm::RS256,
            kid: kid.into(),
            key: EncodingKey::from_rsa_der(&pkcs1(der.as_ref())),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            }),
        }
    }

    /// A fresh P-256 key for ES256.
    pub fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("an EC key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("the EC key read back");
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

    /// The same kind of key, freshly made, claiming the same key id: an impostor.
    fn impostor(&self) -> Signer {
        match self.alg {
            Algorithm::ES256 => Signer::ec(&self.kid),
            _ => Signer::rsa(&self.kid),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("an ID token")
    }
}

/// A code given out by `/authorize`, waiting for `/token`.
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    identity: Identity,
    misbehaviour: Misbehaviour,
}

struct Shared {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    signer: Signer,
    impostor: Signer,
    redirect_uris: Mutex<Vec<String>>,
    identity: Mutex<Identity>,
    misbehaviour: Mutex<Misbehaviour>,
    codes: Mutex<HashMap<String, Grant>>,
    /// Why `/token` or `/authorize` turned a request away, in order.
    refusals: Mutex<Vec<String>>,
    /// How many ID tokens `/token` issued.
    issued: Mutex<u32>,
    /// Where `/authorize` last sent the browser back to.
    last_redirect: Mutex<Option<String>>,
}

/// The provider, running on its own runtime until dropped.
pub struct Provider {
    pub issuer: String,
    pub client_id: String,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

fn random(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Provider {
    /// Starts a provider for one client (`client_secret`: a confidential one) signing with
    /// `signer`, signing `identity` in.
    pub fn start(
        client_id: &str,
        client_secret: Option<&str>,
        signer: Signer,
        identity: Identity,
    ) -> Provider {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the provider's runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let issuer = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            issuer: issuer.clone(),
            client_id: client_id.into(),
            client_secret: client_secret.map(str::to_owned),
            impostor: signer.impostor(),
            signer,
            redirect_uris: Mutex::default(),
            identity: Mutex::new(identity),
            misbehaviour: Mutex::new(Misbehaviour::None),
            codes: Mutex::default(),
            refusals: Mutex::default(),
            issued: Mutex::new(0),
            last_redirect: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app)
                .await
                .expect("the provider serves");
        });
        Provider {
            issuer,
            client_id: client_id.into(),
            shared,
            _runtime: runtime,
        }
    }

    /// Registers a redirect URI of the client (a key-service's callback).
    pub fn allow_redirect(&self, uri: &str) {
        lock(&self.shared.redirect_uris).push(uri.into());
    }

    /// Who the next sign-ins sign in.
    pub fn sign_in_as(&self, identity: Identity) {
        *lock(&self.shared.identity) = identity;
    }

    pub fn misbehave(&self, how: Misbehaviour) {
        *lock(&self.shared.misbehaviour) = how;
    }

    /// Why requests were turned away so far.
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.shared.refusals).clone()
    }

    /// How many ID tokens were issued so far.
    pub fn issued(&self) -> u32 {
        *lock(&self.shared.issued)
    }

    /// Where `/authorize` last sent a browser back to (code and state included).
    pub fn last_redirect(&self) -> Option<String> {
        lock(&self.shared.last_redirect).clone()
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let issuer = &shared.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "keys": [shared.signer.jwk] }))
}

fn refuse(shared: &Shared, why: String) -> Response {
    lock(&shared.refusals).push(why.clone());
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_request", "error_description": why})),
    )
        .into_response()
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let param = |name: &str| query.get(name).cloned().unwrap_or_default();
    let redirect_uri = param("redirect_uri");
    if param("client_id") != shared.client_id {
        return refuse(
            &shared,
            format!("authorize: unknown client {:?}", param("client_id")),
        );
    }
    if !lock(&shared.redirect_uris).contains(&redirect_uri) {
        return refuse(
            &shared,
            format!("authorize: redirect_uri {redirect_uri:?} not registered"),
        );
    }
    if param("response_type") != "code" {
        return refuse(&shared, "authorize: response_type is not code".into());
    }
    if !param("scope").split(' ').any(|s| s == "openid") {
        return refuse(&shared, "authorize: no openid scope".into());
    }
    if param("code_challenge_method") != "S256" || param("code_challenge").len() != 43 {
        return refuse(&shared, "authorize: no S256 code challenge".into());
    }
    let misbehaviour = *lock(&shared.misbehaviour);
    let state = match misbehaviour {
        Misbehaviour::TamperState => format!("{}x", param("state")),
        _ => param("state"),
    };
    let mut back = url::Url::parse(&redirect_uri).expect("a registered URI parses");
    if misbehaviour == Misbehaviour::Deny {
        back.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair(
                "error_description",
                "The user is not allowed to use keygate",
            )
            .append_pair("state", &state);
        *lock(&shared.last_redirect) = Some(back.to_string());
        return Redirect::to(back.as_str()).into_response();
    }
    let code = random(24);
    lock(&shared.codes).insert(
        code.clone(),
        Grant {
            client_id: param("client_id"),
            redirect_uri,
            challenge: param("code_challenge"),
            nonce: query.get("nonce").cloned(),
            identity: lock(&shared.identity).clone(),
            misbehaviour,
        },
    );
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state)
        .append_pair("iss", &shared.issuer);
    *lock(&shared.last_redirect) = Some(back.to_string());
    Redirect::to(back.as_str()).into_response()
}

/// The client's credentials: HTTP Basic (form-encoded parts), or `client_id` in the form.
fn client(headers: &HeaderMap, form: &HashMap<String, String>) -> (String, Option<String>) {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let decode = |part: &str| {
        url::form_urlencoded::parse(format!("x={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    match basic.as_deref().and_then(|b| b.split_once(':')) {
        Some((id, secret)) => (decode(id), Some(decode(secret))),
        None => (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned(),
        ),
    }
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let (client_id, secret) = client(&headers, &form);
    if client_id != shared.client_id {
        return refuse(&shared, format!("token: unknown client {client_id:?}"));
    }
    if shared.client_secret.is_some() && secret != shared.client_secret {
        return refuse(&shared, "token: wrong client secret".into());
    }
    if field("grant_type") != "authorization_code" {
        return refuse(
            &shared,
            "token: grant_type is not authorization_code".into(),
        );
    }
    // A code serves once, whatever happens next.
    let Some(grant) = lock(&shared.codes).remove(&field("code")) else {
        return refuse(&shared, "token: unknown or used code".into());
    };
    if grant.client_id != client_id {
        return refuse(&shared, "token: the code is another client's".into());
    }
    if field("redirect_uri") != grant.redirect_uri {
        return refuse(
            &shared,
            "token: redirect_uri differs from the authorization's".into(),
        );
    }
    let verifier = field("code_verifier");
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
        return refuse(
            &shared,
            "token: the code_verifier does not match the challenge".into(),
        );
    }
    let now = now();
    let identity = &grant.identity;
    let mut claims = json!({
        "iss": shared.issuer,
        "sub": identity.subject,
        "aud": shared.client_id,
        "iat": now,
        "exp": now + 300,
        "auth_time": now,
        "email": identity.email,
        "email_verified": true,
        "groups": identity.groups,
    });
    if let Some(nonce) = &grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    let mut signer = &shared.signer;
    match grant.misbehaviour {
        Misbehaviour::WrongAudience => claims["aud"] = json!("another-client"),
        Misbehaviour::Expired => {
            claims["iat"] = json!(now - 900);
            claims["exp"] = json!(now - 600);
        }
        Misbehaviour::BadSignature => signer = &shared.impostor,
        Misbehaviour::WrongNonce => claims["nonce"] = json!(random(16)),
        Misbehaviour::None | Misbehaviour::Deny | Misbehaviour::TamperState => {}
    }
    *lock(&shared.issued) += 1;
    Json(json!({
        "access_token": random(24),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": signer.sign(&claims),
    }))
    .into_response()
}
