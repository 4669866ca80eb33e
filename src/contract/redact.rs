//! Redaction of secrets in connection URLs, for every log line, error and status message.
//!
//! One function serves the API, the worker and the operator. It fails closed: a URL that does not
//! parse is never echoed, since the part that fails to parse (a port, a host) can sit right after
//! the password.

/// Query parameters whose values are treated as secrets.
const SECRET_QUERY_KEYS: [&str; 5] = ["password", "pass", "token", "secret", "key"];

/// `url` with its password, a user name that stands alone (often a token) and secret-looking query
/// values replaced by `***`; an unparsable URL becomes `<unparsable URL>`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable URL>".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    } else if !parsed.username().is_empty() {
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_QUERY_KEYS.iter().any(|s| lower.contains(s));
                (
                    k.into_owned(),
                    if secret { "***".into() } else { v.into_owned() },
                )
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://:secret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("redis://default:secret@h:6379/0"),
            "redis://default:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[test]
    fn an_unparsable_url_is_never_echoed() {
        let out = redact_url("redis://:WrongSecretPW123@127.0.0.1:notaport/0");
        assert_eq!(out, "<unparsable URL>");
        assert_eq!(redact_url("not a url with secret"), "<unparsable URL>");
    }

    #[test]
    fn a_lone_user_name_is_hidden() {
        assert_eq!(
            redact_url("rediss://tok3n@h:6380/1"),
            "rediss://***@h:6380/1"
        );
    }

    #[test]
    fn secret_query_values_are_hidden() {
        let out = redact_url("redis://h/0?password=pw1&protocol=resp3&auth_token=t0k");
        assert!(!out.contains("pw1") && !out.contains("t0k"), "{out}");
        assert!(out.contains("protocol=resp3"), "{out}");
    }
}
