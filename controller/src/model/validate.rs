//! Edge validation of request fields: every rule names the field it guards. Numeric
//! resource bounds live in `limits.rs`.

/// A request field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    pub field: &'static str,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }
}

/// Names of tenants, VPSes, plans, templates and nodes: `^[a-z][a-z0-9-]{0,62}$`.
pub fn name(field: &'static str, value: &str) -> Result<(), ValidationError> {
    let rule = "must match ^[a-z][a-z0-9-]{0,62}$ (a lowercase letter, then up to 62 lowercase letters, digits or '-')";
    let mut chars = value.chars();
    let valid = value.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if value.is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    if !valid {
        return Err(ValidationError::new(field, format!("{value:?} {rule}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rule() {
        for good in ["a", "web1", "my-vps-2", &"a".repeat(63)] {
            assert!(name("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "Web",
            "1web",
            "-a",
            "a_b",
            "a.b",
            &"a".repeat(64),
            "wéb",
        ] {
            let error = name("name", bad).expect_err(bad);
            assert_eq!(error.field, "name");
        }
        assert!(name("name", "../etc")
            .expect_err("bad")
            .to_string()
            .starts_with("name: \"../etc\" must match"));
    }
}
