//! Access tokens of the channels' order APIs: obtained on first use, renewed before they expire
//! and once more when the platform calls one expired, one renewal at a time; rotating refresh
//! tokens kept on disk.

use super::{FetchError, TOKEN_MARGIN, now_ms};
use orderhub_actors::order::Millis;
use orderhub_actors::telemetry as t;
use std::future::Future;
use std::path::PathBuf;

/// An access token and what renews it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Token {
    /// The access token.
    pub(crate) access: String,
    /// When it expires (Unix ms).
    pub(crate) expires_at: Millis,
    /// The refresh token, if the flow has one.
    #[serde(default)]
    pub(crate) refresh: Option<String>,
    /// When the refresh token expires (Unix ms), if known.
    #[serde(default)]
    pub(crate) refresh_expires_at: Option<Millis>,
}

impl Token {
    /// A configured access token: used until the platform calls it expired.
    pub(crate) fn configured(access: String) -> Self {
        Token {
            access,
            expires_at: i64::MAX,
            refresh: None,
            refresh_expires_at: None,
        }
    }

    /// Whether the refresh token can still be used at `now`.
    pub(crate) fn refreshable(&self, now: Millis) -> bool {
        self.refresh.is_some() && self.refresh_expires_at.is_none_or(|at| at > now)
    }
}

/// A channel's access token: obtained on first use, renewed [`TOKEN_MARGIN`] before it
/// expires or when the platform calls it expired; one renewal at a time. With a `keep` file
/// the latest token is written there (0600, atomically) and read at start, for flows whose
/// refresh token rotates (Kuaishou, Pinduoduo): the configured one dies at the first refresh.
pub(crate) struct TokenCache {
    channel: &'static str,
    current: tokio::sync::Mutex<Option<Token>>,
    keep: Option<PathBuf>,
}

impl TokenCache {
    /// A cache starting from `initial` (a configured token), or from the `keep` file when that
    /// holds a newer one.
    pub(crate) fn new(
        channel: &'static str,
        initial: Option<Token>,
        keep: Option<PathBuf>,
    ) -> Self {
        let kept = keep
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice::<Token>(&bytes).ok());
        TokenCache {
            channel,
            current: tokio::sync::Mutex::new(kept.or(initial)),
            keep,
        }
    }

    /// A valid access token: the cached one, or one `renew` makes from the current token
    /// (`None`: none yet).
    pub(crate) async fn get<F, Fut>(&self, now: Millis, renew: F) -> Result<String, FetchError>
    where
        F: FnOnce(Option<Token>) -> Fut,
        Fut: Future<Output = Result<Token, FetchError>>,
    {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token.expires_at - TOKEN_MARGIN.as_millis() as i64 > now
        {
            return Ok(token.access.clone());
        }
        let renewed = renew(current.clone()).await;
        let outcome = match &renewed {
            Ok(_) => "renewed",
            Err(FetchError::Credentials(_)) => "refused",
            Err(_) => "failed",
        };
        metrics::counter!(t::DETAILS_TOKEN_RENEWALS, "channel" => self.channel, "outcome" => outcome)
            .increment(1);
        let token = renewed?;
        let access = token.access.clone();
        self.remember(&token);
        *current = Some(token);
        Ok(access)
    }

    /// Marks `access` expired (the platform said so), unless it was renewed meanwhile.
    pub(crate) async fn expire(&self, access: &str) {
        metrics::counter!(t::DETAILS_FETCHES, "channel" => self.channel, "outcome" => "token_expired")
            .increment(1);
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_mut()
            && token.access == access
        {
            token.expires_at = 0;
        }
    }

    fn remember(&self, token: &Token) {
        let Some(path) = &self.keep else { return };
        if let Err(err) = write_private(path, &serde_json::to_vec(token).unwrap_or_default()) {
            tracing::warn!(path = %path.display(), error = %err, "order details: cannot keep the renewed token; a restart falls back to the configured one");
        }
    }
}

/// Writes `bytes` to `path` readable by the owner only, atomically (temp file, fsync, rename).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Calls `fetch` with a token from `tokens` (renewed by `renew`); on an "expired token"
/// answer renews once and calls again.
pub(crate) async fn with_token<T, R, RFut, F, FFut>(
    tokens: &TokenCache,
    renew: R,
    fetch: F,
) -> Result<T, FetchError>
where
    R: Fn(Option<Token>) -> RFut,
    RFut: Future<Output = Result<Token, FetchError>>,
    F: Fn(String) -> FFut,
    FFut: Future<Output = Result<T, FetchError>>,
{
    let token = tokens.get(now_ms(), &renew).await?;
    match fetch(token.clone()).await {
        Err(FetchError::TokenExpired(_)) => {
            tokens.expire(&token).await;
            let token = tokens.get(now_ms(), &renew).await?;
            fetch(token).await
        }
        other => other,
    }
}
