//! Secrets: read from environment variables named in the config, never logged nor put in an
//! error (an error names the variable, not its value). Injectable for tests.

use std::sync::Arc;

/// Reads a secret by variable name (the process environment, or a test's table).
pub type SecretLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Reads secrets from the process environment.
pub fn env_secrets() -> SecretLookup {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// Reads the secret named by `variable`, or explains what is missing.
pub(crate) fn secret(secrets: &SecretLookup, variable: &str) -> Result<String, String> {
    match secrets(variable) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(format!("environment variable {variable} is not set")),
    }
}
