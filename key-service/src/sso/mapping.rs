//! `KEYGATE_OIDC_MAPPINGS`: which account, and which role in it, a person signed in through
//! single sign-on gets, from the claims of their ID token. The first rule that matches
//! wins; no match, no sign-in.
//!
//! Syntax: rules separated by `,` (or new lines), each `CLAIM:VALUE=ACCOUNT:ROLE`:
//!
//! - `email_domain:globex.com=globex:viewer`: the `email` claim's domain (after the last
//!   `@`, any case), unless the token says `email_verified: false`;
//! - `email:ann@acme.com=acme:owner`: the whole `email` (any case), with the same check;
//! - any other claim by name, e.g. `groups:acme-admins=acme:owner`: the claim is that
//!   string, or a list holding it (exactly, case counts); `true`, `false` and numbers
//!   match their JSON text. A name with dots (`realm_access.roles:admin`) also looks into
//!   nested objects when no claim has the whole name.
//!
//! `ROLE` is `owner` or `viewer`. The value runs to the `=`, so it may hold `:`; a `,`,
//! `=` or `\` inside a claim name or value, or a `:` inside a claim name (namespaced
//! claims such as `https\://acme.com/groups`), is written with a `\` before it.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::access::Role;

/// One rule: when `claim` has `value`, the person gets `role` in `account`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub claim: String,
    pub value: String,
    pub account: String,
    pub role: Role,
}

/// The rules in their order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mappings {
    rules: Vec<Rule>,
}

/// Why the rules could not be read: which rule (counted from 1) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {number} ({text:?}): {problem}")]
pub struct MappingError {
    pub number: usize,
    pub text: String,
    pub problem: String,
}

/// The longest account name (as the API allows).
const ACCOUNT_MAX: usize = 64;

/// A character of the rule text, and whether a `\` stood before it.
type Char = (char, bool);

fn chars(text: &str) -> Vec<Char> {
    let mut out = Vec::with_capacity(text.len());
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            out.push((c, true));
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push((c, false));
        }
    }
    if escaped {
        // A lone `\` at the very end stands for itself.
        out.push(('\\', true));
    }
    out
}

/// Splits at every unescaped character that `at` accepts.
fn split(text: &[Char], at: impl Fn(char) -> bool) -> Vec<&[Char]> {
    text.split(|&(c, escaped)| !escaped && at(c)).collect()
}

/// Splits at the first unescaped `sep`.
fn split_once(text: &[Char], sep: char) -> Option<(&[Char], &[Char])> {
    let at = text.iter().position(|&(c, escaped)| !escaped && c == sep)?;
    Some((&text[..at], &text[at + 1..]))
}

fn plain(text: &[Char]) -> String {
    text.iter()
        .map(|&(c, _)| c)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The rule's text as written (escapes included), for error messages.
fn written(text: &[Char]) -> String {
    text.iter()
        .flat_map(|&(c, escaped)| escaped.then_some('\\').into_iter().chain([c]))
        .collect::<String>()
        .trim()
        .to_owned()
}

fn parse_rule(text: &[Char]) -> Result<Rule, String> {
    const SHAPE: &str = "expected CLAIM:VALUE=ACCOUNT:ROLE, e.g. groups:acme-admins=acme:owner";
    let parts = split(text, |c| c == '=');
    let [left, right] = parts.as_slice() else {
        return Err(format!("{SHAPE} (write a `=` inside a value as `\\=`)"));
    };
    let (claim, value) = split_once(left, ':').ok_or_else(|| SHAPE.to_owned())?;
    let (claim, value) = (plain(claim), plain(value));
    if claim.is_empty() {
        return Err(format!("the claim is empty; {SHAPE}"));
    }
    if value.is_empty() {
        return Err(format!("the value of {claim} is empty; {SHAPE}"));
    }
    let parts = split(right, |c| c == ':');
    let [account, role] = parts.as_slice() else {
        return Err(format!("after `=`: {SHAPE}"));
    };
    let (account, role) = (plain(account), plain(role));
    let account_ok = !account.is_empty()
        && account.len() <= ACCOUNT_MAX
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !account_ok {
        return Err(format!(
            "the account {account:?} is not an account name (1-{ACCOUNT_MAX} of A-Z, a-z, \
             0-9, '.', '_', '-')"
        ));
    }
    let role = Role::parse(&role)
        .ok_or_else(|| format!("the role {role:?} is neither owner nor viewer"))?;
    Ok(Rule {
        claim,
        value,
        account,
        role,
    })
}

impl FromStr for Mappings {
    type Err = MappingError;

    /// Empty entries (a trailing comma, blank lines) are skipped.
    fn from_str(text: &str) -> Result<Self, MappingError> {
        let text = chars(text);
        let mut rules = Vec::new();
        for entry in split(&text, |c| c == ',' || c == '\n') {
            if plain(entry).is_empty() {
                continue;
            }
            let rule = parse_rule(entry).map_err(|problem| MappingError {
                number: rules.len() + 1,
                text: written(entry),
                problem,
            })?;
            rules.push(rule);
        }
        Ok(Mappings { rules })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}={}:{}",
            self.claim,
            self.value,
            self.account,
            self.role.as_str()
        )
    }
}

/// A claim by name, or, for a dotted name no claim has, by its path through nested
/// objects.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Whether one JSON value is the rule's text: a string exactly, `true`/`false` and
/// numbers as JSON writes them.
fn is(value: &Value, text: &str) -> bool {
    match value {
        Value::String(s) => s == text,
        Value::Bool(flag) => text == if *flag { "true" } else { "false" },
        Value::Number(number) => {
            let written = number.to_string();
            written == text
        }
        _ => false,
    }
}

/// The email of the token, unless the token itself says it was not verified.
fn email(claims: &Map<String, Value>) -> Option<&str> {
    let unverified = match claims.get("email_verified") {
        Some(Value::Bool(verified)) => !verified,
        Some(Value::String(verified)) => verified.eq_ignore_ascii_case("false"),
        _ => false,
    };
    if unverified {
        return None;
    }
    claims.get("email")?.as_str()
}

impl Rule {
    pub fn matches(&self, claims: &Map<String, Value>) -> bool {
        match self.claim.as_str() {
            "email_domain" => email(claims)
                .and_then(|email| email.rsplit_once('@'))
                .is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(&self.value)),
            "email" => email(claims).is_some_and(|email| email.eq_ignore_ascii_case(&self.value)),
            name => match claim(claims, name) {
                Some(Value::Array(items)) => items.iter().any(|item| is(item, &self.value)),
                Some(value) => is(value, &self.value),
                None => false,
            },
        }
    }
}

impl Mappings {
    /// The first rule the claims match.
    pub fn first_match(&self, claims: &Map<String, Value>) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.matches(claims))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn mapped(rules: &Mappings, value: Value) -> Option<(&str, Role)> {
        rules
            .first_match(&claims(value))
            .map(|rule| (rule.account.as_str(), rule.role))
    }

    const EXAMPLE: &str = "groups:acme-admins=acme:owner,groups:acme-staff=acme:viewer,\
                           email_domain:globex.com=globex:viewer";

    #[test]
    fn the_documented_example_reads_into_three_rules_in_order() {
        let rules: Mappings = EXAMPLE.parse().unwrap();
        let written: Vec<String> = rules.rules().iter().map(Rule::to_string).collect();
        assert_eq!(
            written,
            [
                "groups:acme-admins=acme:owner",
                "groups:acme-staff=acme:viewer",
                "email_domain:globex.com=globex:viewer"
            ]
        );
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules: Mappings = EXAMPLE.parse().unwrap();
        let both = json!({"sub": "1", "groups": ["acme-staff", "acme-admins"]});
        assert_eq!(mapped(&rules, both), Some(("acme", Role::Owner)));
        let staff = json!({"sub": "1", "groups": ["acme-staff"], "email": "a@globex.com"});
        assert_eq!(mapped(&rules, staff), Some(("acme", Role::Viewer)));
        let globex = json!({"sub": "1", "groups": [], "email": "Bob@GLOBEX.com"});
        assert_eq!(mapped(&rules, globex), Some(("globex", Role::Viewer)));
        assert_eq!(mapped(&rules, json!({"sub": "1"})), None);
        // A group name is exact: no prefixes, no other case.
        let near = json!({"sub": "1", "groups": ["acme-admins-old", "ACME-ADMINS"]});
        assert_eq!(mapped(&rules, near), None);
    }

    #[test]
    fn an_email_domain_is_the_part_after_the_last_at_and_must_not_be_unverified() {
        let rules: Mappings = "email_domain:globex.com=globex:owner".parse().unwrap();
        for (email, verified, hit) in [
            (json!("a@globex.com"), json!(null), true),
            (json!("a@globex.com"), json!(true), true),
            (json!("a@globex.com"), json!("true"), true),
            (json!("a@globex.com"), json!(false), false),
            (json!("a@globex.com"), json!("false"), false),
            (json!("a@evil.com@globex.com"), json!(true), true),
            (json!("a@globex.com.evil.com"), json!(true), false),
            (json!("a@sub.globex.com"), json!(true), false),
            (json!("globex.com"), json!(true), false),
            (json!(["a@globex.com"]), json!(true), false),
        ] {
            let token = json!({"sub": "1", "email": email, "email_verified": verified});
            assert_eq!(
                mapped(&rules, token).is_some(),
                hit,
                "{email} verified {verified}"
            );
        }
        let exact: Mappings = "email:Ann@Acme.com=acme:owner".parse().unwrap();
        assert!(mapped(&exact, json!({"email": "ann@acme.COM"})).is_some());
        assert!(mapped(
            &exact,
            json!({"email": "ann@acme.com", "email_verified": false})
        )
        .is_none());
    }

    #[test]
    fn other_claims_match_strings_lists_booleans_numbers_and_nested_paths() {
        let rules: Mappings = "hd:acme.com=acme:viewer,\
             realm_access.roles:keygate-admin=ops:owner,\
             tier:3=gold:viewer,\
             staff:true=staff:viewer,\
             https\\://acme.com/groups:team\\,a=teama:owner"
            .parse()
            .unwrap();
        assert_eq!(
            mapped(&rules, json!({"hd": "acme.com"})),
            Some(("acme", Role::Viewer))
        );
        let keycloak = json!({"realm_access": {"roles": ["offline", "keygate-admin"]}});
        assert_eq!(mapped(&rules, keycloak), Some(("ops", Role::Owner)));
        assert_eq!(
            mapped(&rules, json!({"tier": 3})),
            Some(("gold", Role::Viewer))
        );
        assert_eq!(
            mapped(&rules, json!({"staff": true})),
            Some(("staff", Role::Viewer))
        );
        assert_eq!(mapped(&rules, json!({"staff": "yes"})), None);
        let namespaced = json!({"https://acme.com/groups": ["team,a"]});
        assert_eq!(mapped(&rules, namespaced), Some(("teama", Role::Owner)));
        // Objects and nulls match nothing.
        assert_eq!(mapped(&rules, json!({"hd": {"acme.com": true}})), None);
        assert_eq!(mapped(&rules, json!({"hd": null})), None);
    }

    #[test]
    fn values_may_hold_colons_and_escaped_separators() {
        let rules: Mappings =
            "groups:team:ops=ops:owner,groups:cn\\=admins\\,dc\\=acme=acme:owner\n\
             groups:back\\\\slash=bs:viewer"
                .parse()
                .unwrap();
        let values: Vec<&str> = rules.rules().iter().map(|r| r.value.as_str()).collect();
        assert_eq!(values, ["team:ops", "cn=admins,dc=acme", "back\\slash"]);
        assert_eq!(
            mapped(&rules, json!({"groups": ["cn=admins,dc=acme"]})),
            Some(("acme", Role::Owner))
        );
    }

    #[test]
    fn blank_entries_are_skipped_and_whitespace_trimmed() {
        let rules: Mappings = "\n  groups:a = acme : owner ,, \n".parse().unwrap();
        assert_eq!(rules.rules().len(), 1);
        assert_eq!(rules.rules()[0].to_string(), "groups:a=acme:owner");
        assert!("".parse::<Mappings>().unwrap().is_empty());
    }

    #[test]
    fn mistakes_name_the_rule_and_what_is_wrong() {
        for (text, number, problem) in [
            ("groups:a=acme", 1, "after `=`"),
            (
                "groups:a=acme:owner,groups=acme:owner",
                2,
                "expected CLAIM:VALUE",
            ),
            ("groups:a", 1, "expected CLAIM:VALUE"),
            ("groups:a=b=acme:owner", 1, "\\="),
            (":a=acme:owner", 1, "the claim is empty"),
            ("groups:=acme:owner", 1, "the value of groups is empty"),
            ("groups:a=acme:admin", 1, "neither owner nor viewer"),
            ("groups:a=acme:Owner", 1, "neither owner nor viewer"),
            ("groups:a=ac me:owner", 1, "not an account name"),
            ("groups:a=:owner", 1, "not an account name"),
        ] {
            let err = text.parse::<Mappings>().unwrap_err();
            assert_eq!(err.number, number, "{text}: {err}");
            assert!(err.to_string().contains(problem), "{text}: {err}");
        }
    }
}
