//! The cluster key file: one 32-byte key per line as 64 hex characters.
//!
//! The first key seals every frame this node sends; every listed key is tried when
//! opening a frame. Rotation without downtime: add the new key as a second line
//! everywhere, move it to the top everywhere, then remove the old one; a running
//! node rereads its file on SIGHUP ([`crate::transport::Transport::reload_keys`]),
//! so each step is an edit and a signal, not a restart. Each key has a short
//! fingerprint (logged and in `/metrics`) so an operator can see which key every
//! node sends with before removing the old one.

use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;
use sha2::{Digest, Sha256};
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
    /// [`fingerprint`] of each key, in the same order.
    fingerprints: Vec<String>,
}

/// A key's public name: 8 hex characters of SHA-256 over a domain tag and the key.
/// It identifies a key in logs and metrics without revealing it (a preimage of a
/// 32-bit truncated hash of a 256-bit secret says nothing useful about the secret).
pub fn fingerprint(key: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"ringlab cluster key fingerprint v1\0");
    h.update(key);
    hex::encode(&h.finalize()[..4])
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material; fingerprints are safe.
        write!(f, "KeyRing({:?})", self.fingerprints)
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
            fingerprints: keys.iter().map(fingerprint).collect(),
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

    /// Fingerprints of the accepted keys, the sending key's first.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
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
        assert_eq!(
            ring.fingerprints(),
            [fingerprint(&[0x11; 32]), fingerprint(&[0xAB; 32])]
        );
    }

    #[test]
    fn fingerprints_name_keys_without_showing_them() {
        let (a, b) = (fingerprint(&[1; 32]), fingerprint(&[2; 32]));
        assert_ne!(a, b);
        assert_eq!(a, fingerprint(&[1; 32]), "stable");
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        let ring = KeyRing::from_keys(&[[1; 32], [2; 32]]).unwrap();
        let shown = format!("{ring:?}");
        assert!(shown.contains(&a) && shown.contains(&b), "{shown}");
        assert!(!shown.contains(&"01".repeat(8)), "{shown}");
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
