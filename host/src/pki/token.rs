//! The join token, `K10<ca-hash>::<user>:<password>`, as k3s and RKE2 print and parse it.
//!
//! The bootstrap data is encrypted with a key derived from the password part only, so a CA
//! rotation changes the hash but not the encryption key.

use std::fmt;

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// 64 lowercase hex digits, when the token pins a CA.
    pub ca_hash: Option<String>,
    /// The kubeconfig user whose credentials hold the certificate.
    pub user: String,
    /// The password: it names and opens the bootstrap record.
    pub password: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("ca_hash", &self.ca_hash)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A token that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The CA hash is not 64 hex digits.
    #[error("invalid token: the CA hash must be 64 hex digits, got {0}")]
    HashLength(usize),
    /// Not `K10<hash>::<user>:<password>` nor a bare password.
    #[error("invalid token: expected K10<hash>::<user>:<password>")]
    Format,
    /// The password is empty.
    #[error("invalid token: empty password")]
    EmptyPassword,
}

impl Token {
    /// Parse `K10<hash>::user:password`, `K10::user:password`, or a bare password (user `server`).
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix("K10") else {
            if s.is_empty() {
                return Err(TokenError::EmptyPassword);
            }
            return Ok(Token {
                ca_hash: None,
                user: "server".into(),
                password: s.to_string(),
            });
        };
        let (hash, creds) = rest.split_once("::").ok_or(TokenError::Format)?;
        let ca_hash = match hash.len() {
            0 => None,
            64 if hash.bytes().all(|b| b.is_ascii_hexdigit()) => Some(hash.to_ascii_lowercase()),
            n => return Err(TokenError::HashLength(n)),
        };
        let (user, password) = creds.split_once(':').ok_or(TokenError::Format)?;
        if password.is_empty() {
            return Err(TokenError::EmptyPassword);
        }
        Ok(Token {
            ca_hash,
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The token text: `K10<hash>::<user>:<password>`.
    pub fn render(&self) -> String {
        format!(
            "K10{}::{}:{}",
            self.ca_hash.as_deref().unwrap_or(""),
            self.user,
            self.password
        )
    }

    /// The same credentials pinned to another CA hash.
    pub fn with_hash(&self, hash: String) -> Token {
        Token {
            ca_hash: Some(hash),
            ..self.clone()
        }
    }
}

/// A fresh server password: 16 random bytes as 32 hex digits (as k3s's `util.Random(16)`).
pub fn generate_password() -> Result<String, super::PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| super::PkiError::NoRandomness("a token password"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_render() {
        let h = "a".repeat(64);
        let t = Token::parse(&format!("K10{h}::server:secret")).unwrap();
        assert_eq!(
            (t.ca_hash.as_deref(), t.user.as_str(), t.password.as_str()),
            (Some(h.as_str()), "server", "secret")
        );
        assert_eq!(t.render(), format!("K10{h}::server:secret"));
        assert_eq!(Token::parse("K10::server:pw").unwrap().ca_hash, None);
        assert_eq!(
            Token::parse("justapassword").unwrap().password,
            "justapassword"
        );
        assert_eq!(
            Token::parse("K10abc::server:pw"),
            Err(TokenError::HashLength(3))
        );
        assert_eq!(Token::parse("K10::server"), Err(TokenError::Format));
        assert_eq!(Token::parse("K10::server:"), Err(TokenError::EmptyPassword));
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn passwords_are_32_hex_digits() {
        let p = generate_password().unwrap();
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(p, generate_password().unwrap());
    }
}
