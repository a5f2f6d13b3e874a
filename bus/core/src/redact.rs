//! Secrets kept out of logs: client properties and database URLs as they may be shown.

/// Whether a librdkafka property holds a secret that must never be logged.
pub fn is_secret_property(key: &str) -> bool {
    const SECRET_PARTS: [&str; 5] = ["password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "token"];
    let key = key.to_ascii_lowercase();
    SECRET_PARTS.iter().any(|part| key.contains(part))
}

/// Client properties as a loggable string, secrets replaced by `***`.
pub fn redact_properties<K: AsRef<str>, V: AsRef<str>>(props: impl IntoIterator<Item = (K, V)>) -> String {
    props
        .into_iter()
        .map(|(k, v)| {
            let (k, v) = (k.as_ref(), v.as_ref());
            if is_secret_property(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A database URL with its password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let mut props = BTreeMap::new();
        props.insert("sasl.password".to_owned(), "hunter2".to_owned());
        props.insert("ssl.key.password".to_owned(), "hunter3".to_owned());
        props.insert("sasl.username".to_owned(), "pigeon".to_owned());
        let shown = redact_properties(&props);
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("sasl.username=pigeon"), "{shown}");
        assert_eq!(redact_url("mysql://root:s3cret@db:4000/pigeon"), "mysql://root:***@db:4000/pigeon");
        assert_eq!(redact_url("sqlite://pigeon.db"), "sqlite://pigeon.db");
    }
}
