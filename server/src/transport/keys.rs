//! The cluster key file: one 32-byte key per line as 64 hex characters.
//!
//! The first key seals every frame this node sends; every listed key is tried when
//! opening a frame. Rotation without downtime: add the new key as a second line
//! everywhere, move it to the top everywhere, then remove the old one.

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;
use std::path::Path;

/// A malformed key file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A line is not 64 hex characters.
    #[error("line {line}: a key must be 64 hex characters (32 bytes), got {len} characters")]
    BadLength {
        /// 1-based line number.
        line: usize,
        /// Characters found.
        len: usize,
    },
    /// A line has a non-hex character.
    #[error("line {line}: not a hex key")]
    NotHex {
        /// 1-based line number.
        line: usize,
    },
    /// No key at all.
    #[error("no key in the file (expected one 64-hex-character key per line)")]
    Empty,
}

/// The keys this node accepts, the first of which it sends with.
#[derive(Clone)]
pub struct KeyRing {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "KeyRing({} keys)", self.ciphers.len())
    }
}

impl KeyRing {
    /// A ring from raw keys (the first sends). Errors when `keys` is empty.
    pub fn from_keys(keys: &[[u8; 32]]) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(KeyRing {
            ciphers: keys
                .iter()
                .map(|k| XChaCha20Poly1305::new(k.into()))
                .collect(),
        })
    }

    /// Parses key-file text: one key per line; blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<KeyRing, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.len() != 64 {
                return Err(KeyError::BadLength {
                    line: i + 1,
                    len: line.chars().count(),
                });
            }
            let mut key = [0u8; 32];
            hex::decode_to_slice(line, &mut key).map_err(|_| KeyError::NotHex { line: i + 1 })?;
            keys.push(key);
        }
        Self::from_keys(&keys)
    }

    /// Reads and parses a key file; the error names the file.
    pub fn load(path: &Path) -> anyhow::Result<KeyRing> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read cluster key file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("cluster key file {}: {e}", path.display()))
    }

    /// A fresh random key as one key-file line (with a trailing newline), for `ringlab keygen`.
    pub fn generate_file() -> String {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        format!("{}\n", hex::encode(key))
    }

    /// Number of accepted keys.
    pub fn len(&self) -> usize {
        self.ciphers.len()
    }

    /// Always false: a ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
    }

    /// The key frames are sealed with.
    pub(crate) fn sending(&self) -> &XChaCha20Poly1305 {
        &self.ciphers[0]
    }

    /// Every accepted key, sending key first.
    pub(crate) fn accepted(&self) -> &[XChaCha20Poly1305] {
        &self.ciphers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blanks_and_several_keys() {
        let a = "11".repeat(32);
        let b = "AB".repeat(32);
        let ring = KeyRing::parse(&format!("# cluster key\n\n{a}\n  {b}  # old\n")).unwrap();
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn rejects_malformed_files() {
        assert_eq!(KeyRing::parse("").unwrap_err(), KeyError::Empty);
        assert_eq!(KeyRing::parse("# only\n").unwrap_err(), KeyError::Empty);
        assert_eq!(
            KeyRing::parse("abc").unwrap_err(),
            KeyError::BadLength { line: 1, len: 3 }
        );
        let bad = format!("\n{}zz", "0".repeat(62));
        assert_eq!(
            KeyRing::parse(&bad).unwrap_err(),
            KeyError::NotHex { line: 2 }
        );
        // Multi-byte characters must not panic the length check or hex decoding.
        assert!(KeyRing::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn generated_files_parse_and_differ() {
        let a = KeyRing::generate_file();
        let b = KeyRing::generate_file();
        assert_ne!(a, b);
        assert_eq!(a.len(), 65);
        assert_eq!(KeyRing::parse(&a).unwrap().len(), 1);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let err = KeyRing::load(&p).unwrap_err().to_string();
        assert!(err.contains("key"), "{err}");
        std::fs::write(&p, "nope\n").unwrap();
        let err = KeyRing::load(&p).unwrap_err().to_string();
        assert!(
            err.contains(&p.display().to_string()) && err.contains("line 1"),
            "{err}"
        );
    }
}
