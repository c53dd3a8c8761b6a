//! Rotating the service-account key and the join token.
//!
//! - `rotor certificate rotate-service-key [--keep N]`: a new key becomes the signing key; the
//!   previous keys stay after it (the N most recent with `--keep`), so tokens they signed remain
//!   valid. The datastore is updated in one atomic step; `rotor start` then writes the key files
//!   (`service.key` and `service.current.key`, or `sa.key` and `sa.pub`).
//! - `rotor token rotate --new-token T`: the bootstrap record is re-encrypted under the new
//!   token's password and the old record deleted, so the old token no longer decrypts anything;
//!   the token file changes in the same step.

use time::OffsetDateTime;

use super::{Change, Cluster, ClusterError, Input, Result};
use crate::datastore::Op;
use crate::fs::{PRIVATE_FILE, failpoint};
use crate::pki::{PrivateKey, Token};

/// What `rotate-service-key` did.
#[derive(Debug)]
pub(crate) struct ServiceKeyRotation {
    /// Keys now in the list, the new signing key included.
    pub keys: usize,
    /// Previous keys dropped because of `--keep`.
    pub dropped: usize,
}

pub(crate) fn rotate_service_key(
    cluster: &mut Cluster,
    token: Option<&str>,
    keep: Option<usize>,
    now: OffsetDateTime,
) -> Result<ServiceKeyRotation> {
    if keep == Some(0) {
        return Err(ClusterError::BadInput {
            input: Input::KeepKeys,
            reason: "0 would drop the current signing key and invalidate every service-account token; keep at least 1".into(),
        });
    }
    let (token, mut data) = cluster.open_bootstrap(token, now)?;
    let sk = &cluster.layout.service_key;
    let old = data
        .get(sk.field)
        .map(|f| PrivateKey::all_from_pem("datastore service-account key", &f.content))
        .transpose()?
        .unwrap_or_default();
    let kept = keep.map_or(old.len(), |k| k.min(old.len()));
    let mut pem = sk.key_type.generate()?.pem().as_bytes().to_vec();
    for k in &old[..kept] {
        pem.extend_from_slice(k.pem().as_bytes());
    }
    data.set(sk.field, pem, crate::clock::system_now());
    let format = cluster.record_format(&token.password)?;
    // Only the datastore changes (`rotor start` writes the key files): one compare-and-swap.
    let mut change = Change::default();
    change.ops.push(crate::datastore::bootstrap_put(
        &token.password,
        &data,
        format,
    )?);
    cluster.commit(change, false)?;
    Ok(ServiceKeyRotation {
        keys: kept + 1,
        dropped: old.len() - kept,
    })
}

/// `rotor token rotate --new-token T`.
pub(crate) fn rotate_token(
    cluster: &mut Cluster,
    token: Option<&str>,
    new_token: &str,
    now: OffsetDateTime,
) -> Result<Token> {
    let (old, data) = cluster.open_bootstrap(token, now)?;
    let new = Token::parse(new_token).map_err(|source| ClusterError::BadToken {
        input: Input::NewToken,
        source,
    })?;
    if new.password == old.password {
        return Err(ClusterError::BadInput {
            input: Input::NewToken,
            reason: "it has the same password as the current token".into(),
        });
    }
    // The new token pins the current CA, whatever hash it was given with.
    let hash = cluster.token_ca_hash(&data, now)?;
    if let Some(h) = &new.ca_hash
        && *h != hash
    {
        return Err(ClusterError::TokenPinsAnotherCa {
            input: Input::NewToken,
            given: h.clone(),
            cluster: hash,
        });
    }
    let new = Token {
        ca_hash: Some(hash),
        user: old.user.clone(),
        ..new
    };
    let format = cluster.record_format(&old.password)?;
    // One change: the record under the new token, the old record deleted (one compare-and-swap),
    // and the token file, switched together. The new token file is durable in the staged
    // generation before the datastore drops the old record; a crash in between rolls forward.
    let mut change = Change::default();
    change.ops.push(crate::datastore::bootstrap_put(
        &new.password,
        &data,
        format,
    )?);
    change.ops.push(Op::Delete {
        key: crate::datastore::bootstrap_key(&old.password),
    });
    change.write(
        cluster.layout.token_file.clone(),
        format!("{}\n", new.render()).into_bytes(),
        PRIVATE_FILE,
    );
    cluster.commit(change, false)?;
    failpoint("token-rotate:saved");
    Ok(new)
}
