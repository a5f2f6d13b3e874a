//! `pigeon dictionary …`: the global field names, through the admin API.

use anyhow::bail;
use reqwest::Method;

use super::client::Client;
use pigeon_admin::dictionary::FieldView;
use pigeon_bus::dictionary::{Field, FieldType};

/// What `dictionary set` was told; whatever it leaves out stays as it is.
#[derive(Debug, Default)]
pub struct Change {
    /// The field's type.
    pub kind: Option<FieldType>,
    /// Its description.
    pub description: Option<String>,
    /// Its aliases, replacing the old ones when any is given.
    pub aliases: Vec<String>,
}

/// The field `dictionary set NAME` asks for: the existing one changed, or a new one, which
/// needs a type and a description.
pub fn merge(name: &str, existing: Option<Field>, change: Change) -> anyhow::Result<Field> {
    let mut field = match (existing, &change.kind, &change.description) {
        (Some(field), _, _) => field,
        (None, Some(kind), Some(description)) => Field {
            name: name.to_owned(),
            kind: *kind,
            description: description.clone(),
            aliases: Vec::new(),
        },
        (None, _, _) => bail!("{name:?} is a new field: give it --type and --description"),
    };
    if let Some(kind) = change.kind {
        field.kind = kind;
    }
    if let Some(description) = change.description {
        field.description = description;
    }
    if !change.aliases.is_empty() {
        field.aliases = change.aliases;
    }
    Ok(field)
}

/// `dictionary list`: one line per field.
pub async fn list(client: &Client) -> anyhow::Result<String> {
    let fields: Vec<FieldView> = client.call(Method::GET, "/dictionary", None::<&()>).await?;
    let mut out =
        format!("{:<16} {:<8} {:>7}  {:<28} {}\n", "NAME", "TYPE", "VERSION", "ALIASES", "DESCRIPTION");
    for f in fields {
        out.push_str(&format!(
            "{:<16} {:<8} {:>7}  {:<28} {}\n",
            f.field.name,
            f.field.kind.as_str(),
            f.version,
            f.field.aliases.join(", "),
            f.field.description
        ));
    }
    Ok(out)
}

/// `dictionary set`: creates or changes a field; returns it as saved.
pub async fn set(client: &Client, name: &str, change: Change) -> anyhow::Result<FieldView> {
    let fields: Vec<FieldView> = client.call(Method::GET, "/dictionary", None::<&()>).await?;
    let existing = fields.into_iter().find(|f| f.field.name == name).map(|f| f.field);
    let field = merge(name, existing, change)?;
    client.call(Method::PUT, &format!("/dictionary/{name}"), Some(&field)).await
}

/// `dictionary delete`: removes a field; returns it as it was.
pub async fn delete(client: &Client, name: &str) -> anyhow::Result<FieldView> {
    client.call(Method::DELETE, &format!("/dictionary/{name}"), None::<&()>).await
}

/// `dictionary drift`: fields the dictionary does not know, per source topic.
pub async fn drift(client: &Client) -> anyhow::Result<String> {
    let drift: Vec<pigeon_bus::store::Drift> =
        client.call(Method::GET, "/dictionary/drift", None::<&()>).await?;
    if drift.is_empty() {
        return Ok("no unknown fields seen (only pigeons in normalize or enforce mode look)\n".into());
    }
    let mut out = format!("{:<24} {:<24} {:>10}  {}\n", "TOPIC", "FIELD", "SEEN", "LAST SEEN");
    for d in drift {
        out.push_str(&format!(
            "{:<24} {:<24} {:>10}  {}\n",
            d.topic,
            d.field,
            d.seen,
            pigeon_sdk::letter::format_time_ms(d.last_seen)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_changes_what_it_is_told_and_keeps_the_rest() {
        let user = Field {
            name: "userId".into(),
            kind: FieldType::Integer,
            description: "The user".into(),
            aliases: vec!["uid".into()],
        };
        let more = Change { aliases: vec!["uid".into(), "user_id".into()], ..Default::default() };
        let changed = merge("userId", Some(user.clone()), more).unwrap();
        assert_eq!((changed.kind, changed.description.as_str()), (FieldType::Integer, "The user"));
        assert_eq!(changed.aliases, ["uid", "user_id"]);
        let retyped =
            merge("userId", Some(user), Change { kind: Some(FieldType::String), ..Default::default() });
        assert_eq!(retyped.unwrap().aliases, ["uid"], "aliases stay unless given");

        let new = Change { kind: Some(FieldType::Number), description: Some("Tips".into()), aliases: vec![] };
        assert_eq!(merge("tip", None, new).unwrap().kind, FieldType::Number);
        let incomplete = merge("tip", None, Change { kind: Some(FieldType::Number), ..Default::default() });
        assert!(incomplete.unwrap_err().to_string().contains("give it --type and --description"));
    }
}
