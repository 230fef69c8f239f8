//! Reading and checking the config file.

use std::path::{Path, PathBuf};

use super::Config;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses YAML (JSON is YAML too). An empty file means "all defaults".
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?
    };
    config.validate().map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use std::time::Duration;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.yaml"), text)
    }

    #[test]
    fn reads_every_field() {
        let c = p(r#"
detectTimeout: 250ms
skipDetectPorts: [3306, 9000]
connectTimeout: 2s
headerReadTimeout: 5s
httpIdleTimeout: 1m
tcpIdleTimeout: 2h
maxHeaderBytes: 16384
inboundMtls:
  default: strict
  ports:
    8080: permissive
listeners:
  - name: orders
    bind: 127.0.0.1:9001
    target: 127.0.0.1:8081
    protocol: http2
    identity: spiffe://cluster.local/ns/shop/sa/orders
"#)
        .unwrap();
        assert_eq!(c.detect_timeout, Duration::from_millis(250));
        assert!(c.skip_detect_ports.contains(&9000));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.http_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.tcp_idle_timeout, Duration::from_secs(7200));
        assert_eq!(c.max_header_bytes, 16384);
        assert_eq!(c.listeners[0].protocol, Protocol::Http2);
        assert_eq!(c.listeners[0].target.port(), 8081);
        assert_eq!(
            c.listeners[0].identity.as_ref().map(|id| id.as_str()),
            Some("spiffe://cluster.local/ns/shop/sa/orders")
        );
        use crate::config::MtlsMode;
        assert_eq!(c.inbound_mtls.mode(8080), MtlsMode::Permissive);
        assert_eq!(c.inbound_mtls.mode(9090), MtlsMode::Strict);
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(p("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_problem() {
        let unknown = p("detectTimout: 1s").unwrap_err().to_string();
        assert!(unknown.contains("detectTimout"), "{unknown}");
        let unitless = p("detectTimeout: 10").unwrap_err().to_string();
        assert!(unitless.contains("unit"), "{unitless}");
        let zero = p("connectTimeout: 0s").unwrap_err().to_string();
        assert!(
            zero.contains("connectTimeout must be greater than zero"),
            "{zero}"
        );
        let dup = p(r#"
listeners:
  - {name: a, bind: "127.0.0.1:1", target: "127.0.0.1:2"}
  - {name: a, bind: "127.0.0.1:3", target: "127.0.0.1:2"}
"#)
        .unwrap_err()
        .to_string();
        assert!(dup.contains("used twice"), "{dup}");
        let bad_id = p(r#"
listeners:
  - {name: a, bind: "127.0.0.1:1", target: "127.0.0.1:2", identity: "spiffe://TD/x"}
"#)
        .unwrap_err()
        .to_string();
        assert!(bad_id.contains("trust domain"), "{bad_id}");
        let bad_mode = p("inboundMtls: {default: maybe}").unwrap_err().to_string();
        assert!(bad_mode.contains("maybe"), "{bad_mode}");
        let garbage = p("listeners: [[[").unwrap_err().to_string();
        assert!(garbage.contains("test.yaml"), "{garbage}");
    }
}
