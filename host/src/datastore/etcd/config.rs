//! Which etcd cluster (or kine) holds the datastore, and how to reach it: the settings `init`
//! records, checked before anything connects.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which etcd cluster holds the datastore, and how to reach it (recorded at `init`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the members (`https://127.0.0.1:2379`); requests are balanced over them.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' serving certificates (PEM); required for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate to present (PEM), with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Why an etcd configuration is not usable; `field` names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct EtcdConfigError {
    /// The setting at fault: `endpoint`, `cafile`, `certfile` or `keyfile`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl EtcdConfig {
    /// A configuration from k3s-style settings: comma-separated endpoints and optional files
    /// (made absolute, since later commands may run elsewhere).
    pub fn new(
        endpoints: &str,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<EtcdConfig, EtcdConfigError> {
        let bad = |field, reason: String| EtcdConfigError { field, reason };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad("endpoint", "no endpoint given".into()));
        }
        let absolute = |p: Option<PathBuf>, field| {
            p.map(|p| {
                std::path::absolute(&p).map_err(|e| bad(field, format!("{}: {e}", p.display())))
            })
            .transpose()
        };
        let config = EtcdConfig {
            endpoints,
            ca_file: absolute(ca_file, "cafile")?,
            cert_file: absolute(cert_file, "certfile")?,
            key_file: absolute(key_file, "keyfile")?,
        };
        config.check()?;
        Ok(config)
    }

    /// Whether the settings are usable: at least one endpoint, every one `http://HOST:PORT` or
    /// every one `https://HOST:PORT`, a CA for https, a client certificate with its key. (Also
    /// run on the settings a data dir recorded, before connecting.)
    pub fn check(&self) -> Result<(), EtcdConfigError> {
        let bad = |field, reason: String| EtcdConfigError { field, reason };
        let not_url = |e: &str| {
            bad(
                "endpoint",
                format!("'{e}' is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)"),
            )
        };
        if self.endpoints.is_empty() {
            return Err(bad("endpoint", "no endpoint given".into()));
        }
        let mut schemes = std::collections::BTreeSet::new();
        for e in &self.endpoints {
            let (scheme, rest) = e.split_once("://").ok_or_else(|| not_url(e))?;
            if scheme != "http" && scheme != "https" {
                return Err(not_url(e));
            }
            schemes.insert(scheme);
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            let (host, port) = authority.rsplit_once(':').ok_or_else(|| not_url(e))?;
            let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
            {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            };
            if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(not_url(e));
            }
        }
        if schemes.len() > 1 {
            return Err(bad(
                "endpoint",
                "mixes http:// and https:// endpoints: the members of one etcd cluster serve one way".into(),
            ));
        }
        let tls = schemes.contains("https");
        if tls && self.ca_file.is_none() {
            return Err(bad(
                "cafile",
                "an https endpoint needs the CA that signed etcd's serving certificate".into(),
            ));
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()) {
            return Err(bad(
                "endpoint",
                "TLS files were given for http:// endpoints: use https://".into(),
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(bad("keyfile", "a client certificate needs its key".into())),
            (None, Some(_)) => Err(bad("certfile", "a client key needs its certificate".into())),
            _ => Ok(()),
        }
    }

    /// The endpoints, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(endpoints: &str, ca: bool, cert: bool, key: bool) -> Result<EtcdConfig, &'static str> {
        let p = |b: bool, name: &str| b.then(|| PathBuf::from(name));
        EtcdConfig::new(
            endpoints,
            p(ca, "ca.crt"),
            p(cert, "c.crt"),
            p(key, "c.key"),
        )
        .map_err(|e| e.field)
    }

    #[test]
    fn settings_are_checked_and_named() {
        let ok = field(
            "https://127.0.0.1:2379, https://127.0.0.2:2379",
            true,
            true,
            true,
        )
        .unwrap();
        assert_eq!(ok.endpoints.len(), 2);
        assert!(
            ok.ca_file.unwrap().is_absolute(),
            "recorded as absolute paths"
        );
        assert_eq!(
            field("http://127.0.0.1:2379", false, false, false)
                .unwrap()
                .ca_file,
            None
        );
        assert_eq!(field("", false, false, false), Err("endpoint"));
        assert_eq!(
            field("127.0.0.1:2379", false, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("unix:///run/etcd.sock", false, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://h:1/path", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", false, false, false),
            Err("cafile")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", true, true, false),
            Err("keyfile")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", true, false, true),
            Err("certfile")
        );
        assert_eq!(
            field("http://127.0.0.1:2379", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("http://a:1,https://b:2", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://etcd.example", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://etcd.example:0", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://h st:2379", true, false, false),
            Err("endpoint")
        );
        assert!(
            field(
                "https://[::1]:2379,https://etcd-2.example:2379",
                true,
                false,
                false
            )
            .is_ok()
        );
    }
}
