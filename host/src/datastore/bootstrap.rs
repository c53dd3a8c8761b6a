//! The plaintext of a bootstrap record: k3s's JSON of `{"<Field>": {"Timestamp", "Content"}}`.
//!
//! Field names are k3s's `ControlRuntimeBootstrap` names (`ServerCA`, `ServerCAKey`,
//! `ClientCA`, ..., `ServiceKey`), so a record written in the k3s format can be read by k3s.
//! kubeadm clusters use rotor's own field names (`KubeadmCA`, `FrontProxyCA`, `EtcdCA`,
//! `ServiceAccountKey`, ...). Content is base64 of the file's bytes; Timestamp is the file's
//! modification time in RFC 3339.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One file kept in the datastore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapFile {
    /// When it was written (k3s compares it with file times).
    pub timestamp: OffsetDateTime,
    /// The file's bytes.
    pub content: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "Content")]
    content: String,
}

/// Every file of a bootstrap record, by field name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootstrapData {
    /// Files by field name (`ServerCA`, `ServiceKey`, ...).
    pub files: BTreeMap<String, BootstrapFile>,
}

impl BootstrapData {
    /// The file of `field`.
    pub fn get(&self, field: &str) -> Option<&BootstrapFile> {
        self.files.get(field)
    }

    /// Set `field` to `content`, written at `timestamp`.
    pub fn set(&mut self, field: &str, content: Vec<u8>, timestamp: OffsetDateTime) {
        self.files
            .insert(field.to_string(), BootstrapFile { timestamp, content });
    }

    /// The record's JSON, as k3s writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let wire: BTreeMap<&str, Wire> = self
            .files
            .iter()
            .map(|(k, f)| {
                let timestamp = f.timestamp.format(&Rfc3339).unwrap_or_default();
                (
                    k.as_str(),
                    Wire {
                        timestamp,
                        content: B64.encode(&f.content),
                    },
                )
            })
            .collect();
        // Serializing a map of strings cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parse the record's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<BootstrapData, String> {
        let wire: BTreeMap<String, Wire> = serde_json::from_slice(bytes)
            .map_err(|e| format!("bootstrap data is not the expected JSON: {e}"))?;
        let mut files = BTreeMap::new();
        for (k, w) in wire {
            let timestamp = OffsetDateTime::parse(&w.timestamp, &Rfc3339)
                .map_err(|e| format!("bootstrap field {k}: Timestamp: {e}"))?;
            let content = B64
                .decode(&w.content)
                .map_err(|e| format!("bootstrap field {k}: Content: {e}"))?;
            files.insert(k, BootstrapFile { timestamp, content });
        }
        Ok(BootstrapData { files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_k3s_json_with_nanosecond_timestamps() {
        let json =
            br#"{"ServerCA":{"Timestamp":"2024-05-01T10:11:12.123456789Z","Content":"aGVsbG8="}}"#;
        let data = BootstrapData::from_json(json).unwrap();
        let f = data.get("ServerCA").unwrap();
        assert_eq!(f.content, b"hello");
        assert_eq!(f.timestamp.nanosecond(), 123_456_789);
        let again = BootstrapData::from_json(&data.to_json()).unwrap();
        assert_eq!(again, data);
    }

    #[test]
    fn bad_fields_are_named() {
        let err = BootstrapData::from_json(br#"{"ServerCA":{"Timestamp":"x","Content":""}}"#)
            .unwrap_err();
        assert!(
            err.starts_with("bootstrap field ServerCA: Timestamp"),
            "{err}"
        );
    }
}
