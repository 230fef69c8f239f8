//! Which sidecar mode the cluster supports: asked of the API server (`GET /version`) once at
//! start.

use std::time::{Duration, Instant};

use crate::config::SidecarMode;

/// `major`/`minor` as the API server reports them; providers append suffixes
/// (`"29+"`, `"1.30-gke.1"`), so only the leading digits count.
pub fn parse(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    Some((digits(major)?, digits(minor)?))
}

/// Asks the API server (in-cluster config, else the kubeconfig) for its version, retrying
/// with backoff for up to `patience`, and picks the mode for it.
pub async fn detect(patience: Duration) -> Result<(SidecarMode, String), String> {
    let deadline = Instant::now() + patience;
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = async {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| format!("no Kubernetes client configuration: {e}"))?;
            let info = client
                .apiserver_version()
                .await
                .map_err(|e| format!("GET /version: {e}"))?;
            let (major, minor) = parse(&info.major, &info.minor).ok_or_else(|| {
                format!(
                    "unreadable server version {:?}.{:?}",
                    info.major, info.minor
                )
            })?;
            Ok::<_, String>((
                SidecarMode::for_server_version(major, minor),
                info.git_version,
            ))
        };
        match attempt.await {
            Ok(found) => return Ok(found),
            Err(error) if Instant::now() + wait >= deadline => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "cannot learn the API server's version yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_with_suffixes() {
        assert_eq!(parse("1", "29"), Some((1, 29)));
        assert_eq!(parse("1", "29+"), Some((1, 29)));
        assert_eq!(parse("1", "30-gke.1"), Some((1, 30)));
        assert_eq!(parse("", "30"), None);
        assert_eq!(SidecarMode::for_server_version(1, 28), SidecarMode::Classic);
        assert_eq!(SidecarMode::for_server_version(1, 29), SidecarMode::Native);
        assert_eq!(SidecarMode::for_server_version(2, 0), SidecarMode::Native);
    }
}
