//! Service env values marked `secret`: sealed before they are stored, opened only to
//! start a container, and write-only through the API.
//!
//! - A request carries [`EnvVar`]s (`{"key","value","secret"?}`, SPEC §4a).
//!   [`seal_env`] turns them into [`StoredEnvVar`]s: plaintext for ordinary values,
//!   `age:…` for secret ones. That stored form is what a table keeps (as JSON).
//! - [`redact`] is the only way back to the API: secret values read `"***"` for every
//!   caller, Viewer or Admin alike (adr/018: nobody reads a secret back; whoever
//!   needs it sets it again).
//! - Because clients round-trip what they read, an update ([`seal_env_update`]) takes
//!   a secret entry whose value is exactly `"***"` to mean "keep the stored value".
//! - [`open_env`] hands the values to the engine for a container's environment, in
//!   [`Zeroizing`] buffers; a value that cannot be opened is named by its key only.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Sealer, Zeroizing};

/// What secret values read as through the API.
pub const REDACTED: &str = "***";
/// Most variables in one env list.
pub const MAX_VARS: usize = 200;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 32 * 1024;

/// One environment variable as the API takes and shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    /// `[A-Za-z_][A-Za-z0-9_]*`.
    pub key: String,
    /// For a secret, `"***"` when shown; sent as `"***"` in an update it keeps the stored value.
    pub value: String,
    /// Sealed at rest and never shown again.
    #[serde(default)]
    pub secret: bool,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.secret { &super::Redacted(()) } else { &self.value };
        f.debug_struct("EnvVar").field("key", &self.key).field("value", value).field("secret", &self.secret).finish()
    }
}

/// One environment variable as stored: a secret value only sealed. Its JSON is
/// `{"key","plain"}` or `{"key","sealed":"age:…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredWire", into = "StoredWire")]
pub struct StoredEnvVar {
    pub key: String,
    pub value: StoredValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredValue {
    Plain(String),
    /// `age:…`.
    Sealed(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredWire {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

impl TryFrom<StoredWire> for StoredEnvVar {
    type Error = String;
    fn try_from(w: StoredWire) -> Result<Self, String> {
        let value = match (w.plain, w.sealed) {
            (Some(p), None) => StoredValue::Plain(p),
            (None, Some(s)) if Sealer::is_sealed(&s) => StoredValue::Sealed(s),
            (None, Some(_)) => return Err(format!("env {}: a sealed value must start with age:", w.key)),
            _ => return Err(format!("env {}: exactly one of plain and sealed", w.key)),
        };
        Ok(StoredEnvVar { key: w.key, value })
    }
}

impl From<StoredEnvVar> for StoredWire {
    fn from(v: StoredEnvVar) -> StoredWire {
        match v.value {
            StoredValue::Plain(p) => StoredWire { key: v.key, plain: Some(p), sealed: None },
            StoredValue::Sealed(s) => StoredWire { key: v.key, plain: None, sealed: Some(s) },
        }
    }
}

impl StoredEnvVar {
    pub fn is_secret(&self) -> bool {
        matches!(self.value, StoredValue::Sealed(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Bad input; the message names the key, never the value.
    #[error("{0}")]
    Invalid(String),
    /// A sealed value that this host's key cannot open (lost or replaced key, damage).
    #[error("the secret value of env {0} cannot be opened with this host's key; set it again")]
    Unreadable(String),
    #[error("sealing env {0} failed")]
    Seal(String),
}

/// Checks an env list: shapes, sizes, no duplicate keys.
pub fn check(vars: &[EnvVar]) -> Result<(), EnvError> {
    if vars.len() > MAX_VARS {
        return Err(EnvError::Invalid(format!("env may hold at most {MAX_VARS} variables")));
    }
    let mut seen = std::collections::HashSet::new();
    for v in vars {
        if !crate::validate::is_env_key(&v.key) {
            return Err(EnvError::Invalid(format!("env name {:?} must match [A-Za-z_][A-Za-z0-9_]*", v.key)));
        }
        if !seen.insert(v.key.as_str()) {
            return Err(EnvError::Invalid(format!("env {} is given twice", v.key)));
        }
        if v.value.len() > MAX_VALUE || v.value.contains('\0') {
            return Err(EnvError::Invalid(format!("env {}: value must be under {MAX_VALUE} bytes with no NUL", v.key)));
        }
    }
    Ok(())
}

/// Checks `vars` and seals the secret ones; the plaintext of each secret is wiped.
pub fn seal_env(sealer: &Sealer, vars: Vec<EnvVar>) -> Result<Vec<StoredEnvVar>, EnvError> {
    seal_env_update(sealer, vars, &[])
}

/// Like [`seal_env`] for an update of an existing list: a secret entry whose value is
/// `"***"` keeps `previous`'s sealed value for that key (there must be one).
pub fn seal_env_update(
    sealer: &Sealer,
    vars: Vec<EnvVar>,
    previous: &[StoredEnvVar],
) -> Result<Vec<StoredEnvVar>, EnvError> {
    check(&vars)?;
    let sealed_before = |key: &str| {
        previous.iter().find_map(|p| match &p.value {
            StoredValue::Sealed(s) if p.key == key => Some(s.clone()),
            _ => None,
        })
    };
    vars.into_iter()
        .map(|v| {
            let EnvVar { key, value, secret } = v;
            let value = Zeroizing::new(value);
            let stored = match (secret, value.as_str() == REDACTED) {
                (true, true) => StoredValue::Sealed(sealed_before(&key).ok_or_else(|| {
                    EnvError::Invalid(format!(
                        "env {key}: \"***\" stands for the stored secret value, and {key} has none; send the value"
                    ))
                })?),
                (true, false) => {
                    StoredValue::Sealed(sealer.seal(value.as_bytes()).map_err(|_| EnvError::Seal(key.clone()))?)
                }
                // Clearing `secret` while sending back "***" would store the mask as the value.
                (false, true) if sealed_before(&key).is_some() => {
                    return Err(EnvError::Invalid(format!(
                        "env {key}: a secret value cannot be made plain without sending the value"
                    )));
                }
                (false, _) => StoredValue::Plain(value.to_string()),
            };
            Ok(StoredEnvVar { key, value: stored })
        })
        .collect()
}

/// The values for a container's environment, in order; errors name the key only.
pub fn open_env(sealer: &Sealer, stored: &[StoredEnvVar]) -> Result<Vec<(String, Zeroizing<String>)>, EnvError> {
    stored
        .iter()
        .map(|v| {
            let value = match &v.value {
                StoredValue::Plain(p) => Zeroizing::new(p.clone()),
                StoredValue::Sealed(s) => sealer.open_string(s).map_err(|_| EnvError::Unreadable(v.key.clone()))?,
            };
            Ok((v.key.clone(), value))
        })
        .collect()
}

/// The env as the API shows it to anyone: secret values as `"***"`.
pub fn redact(stored: &[StoredEnvVar]) -> Vec<EnvVar> {
    stored
        .iter()
        .map(|v| match &v.value {
            StoredValue::Plain(p) => EnvVar { key: v.key.clone(), value: p.clone(), secret: false },
            StoredValue::Sealed(_) => EnvVar { key: v.key.clone(), value: REDACTED.to_string(), secret: true },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(key: &str, value: &str, secret: bool) -> EnvVar {
        EnvVar { key: key.into(), value: value.into(), secret }
    }

    fn opened(sealer: &Sealer, stored: &[StoredEnvVar]) -> Vec<(String, String)> {
        open_env(sealer, stored).unwrap().into_iter().map(|(k, v)| (k, v.to_string())).collect()
    }

    #[test]
    fn secrets_are_sealed_opened_and_redacted() {
        let sealer = Sealer::ephemeral();
        let stored = seal_env(
            &sealer,
            vec![var("PORT", "8080", false), var("DB_PASSWORD", "s3cret-db-pw", true), var("EMPTY", "", true)],
        )
        .unwrap();
        assert_eq!(stored[0].value, StoredValue::Plain("8080".into()));
        assert!(stored[1].is_secret() && !stored[0].is_secret());
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains("s3cret-db-pw"), "{json}");
        assert!(json.contains(r#"{"key":"PORT","plain":"8080"}"#), "{json}");
        assert!(json.contains(r#"{"key":"DB_PASSWORD","sealed":"age:"#), "{json}");
        // The stored form round-trips through JSON (a table column) and opens in order.
        let back: Vec<StoredEnvVar> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored);
        assert_eq!(
            opened(&sealer, &back),
            [
                ("PORT".into(), "8080".into()),
                ("DB_PASSWORD".into(), "s3cret-db-pw".into()),
                ("EMPTY".into(), "".into())
            ]
        );
        // Redacted for everyone; Debug never shows a secret.
        let shown = redact(&stored);
        assert_eq!(shown, [var("PORT", "8080", false), var("DB_PASSWORD", "***", true), var("EMPTY", "***", true)]);
        assert!(!format!("{:?}", var("K", "s3cret-db-pw", true)).contains("s3cret"));
        assert!(format!("{:?}", var("K", "visible", false)).contains("visible"));
        // A stored form with both kinds, or an unknown kind, does not parse.
        assert!(serde_json::from_str::<StoredEnvVar>(r#"{"key":"A","plain":"x","sealed":"age:y"}"#).is_err());
        assert!(serde_json::from_str::<StoredEnvVar>(r#"{"key":"A","clear":"x"}"#).is_err());
        assert!(serde_json::from_str::<StoredEnvVar>(r#"{"key":"A"}"#).is_err());
        assert!(serde_json::from_str::<StoredEnvVar>(r#"{"key":"A","sealed":"not-sealed"}"#).is_err());
    }

    #[test]
    fn an_update_keeps_secrets_sent_back_masked() {
        let sealer = Sealer::ephemeral();
        let before =
            seal_env(&sealer, vec![var("TOKEN", "tok-123", true), var("MODE", "a", false), var("OLD", "x", true)])
                .unwrap();
        // The client sends back what it read, changes MODE and adds a new secret.
        let mut sent = redact(&before);
        sent[1].value = "b".into();
        sent.push(var("NEW", "new-secret", true));
        sent.retain(|v| v.key != "OLD");
        let after = seal_env_update(&sealer, sent, &before).unwrap();
        assert_eq!(after[0], before[0], "the masked secret keeps its sealed value untouched");
        assert_eq!(
            opened(&sealer, &after),
            [("TOKEN".into(), "tok-123".into()), ("MODE".into(), "b".into()), ("NEW".into(), "new-secret".into())]
        );
        // A new value replaces it.
        let changed = seal_env_update(&sealer, vec![var("TOKEN", "tok-456", true)], &before).unwrap();
        assert_eq!(opened(&sealer, &changed)[0].1, "tok-456");
        // "***" for a key with no stored secret, or turning a secret plain with the mask: refused.
        for bad in [vec![var("MODE", "***", true)], vec![var("NOPE", "***", true)], vec![var("TOKEN", "***", false)]] {
            let e = seal_env_update(&sealer, bad, &before).unwrap_err();
            assert!(matches!(e, EnvError::Invalid(_)), "{e}");
        }
        // A plain "***" is a fine value where nothing secret is replaced.
        assert!(seal_env_update(&sealer, vec![var("MODE", "***", false)], &before).is_ok());
        // Making a secret plain with its real value is allowed.
        let plain = seal_env_update(&sealer, vec![var("TOKEN", "tok-123", false)], &before).unwrap();
        assert_eq!(plain[0].value, StoredValue::Plain("tok-123".into()));
    }

    #[test]
    fn bad_lists_are_refused_naming_the_key_not_the_value() {
        let sealer = Sealer::ephemeral();
        let cases = [
            vec![var("1X", "v", false)],
            vec![var("A-B", "v", false)],
            vec![var("", "v", false)],
            vec![var("A", "v", false), var("A", "w", true)],
            vec![var("NUL", "sec\0ret-value", true)],
            vec![var("BIG", &"x".repeat(MAX_VALUE + 1), true)],
            (0..=MAX_VARS).map(|i| var(&format!("V{i}"), "v", false)).collect(),
        ];
        for vars in cases {
            let e = seal_env(&sealer, vars).unwrap_err();
            assert!(matches!(e, EnvError::Invalid(_)), "{e}");
            assert!(!e.to_string().contains("ret-value") && !e.to_string().contains("xxxx"), "{e}");
        }
        assert!(seal_env(&sealer, (0..MAX_VARS).map(|i| var(&format!("V{i}"), "v", false)).collect()).is_ok());
    }

    #[test]
    fn values_sealed_under_another_key_are_named_not_opened() {
        let old = Sealer::ephemeral();
        let stored = seal_env(&old, vec![var("A", "1", false), var("API_KEY", "k", true)]).unwrap();
        let e = open_env(&Sealer::ephemeral(), &stored).unwrap_err();
        assert!(matches!(&e, EnvError::Unreadable(k) if k == "API_KEY"), "{e}");
        assert!(e.to_string().contains("API_KEY"));
        // A "sealed" value that is not sealed at all is refused the same way, not passed through.
        let forged = [StoredEnvVar { key: "X".into(), value: StoredValue::Sealed("plaintext".into()) }];
        assert!(matches!(open_env(&old, &forged), Err(EnvError::Unreadable(_))));
    }
}
