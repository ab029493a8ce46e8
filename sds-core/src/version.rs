//! Content-derived versions.

use std::fmt;

/// A version derived from content: the SHA-256 digest of what it versions.
///
/// The same content gives the same version after a restart and on every replica, so a
/// reconnecting Envoy, or a re-list with identical content, never sees a spurious change.
/// `Display` prints the first 16 bytes as lowercase hex, which is what goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version([u8; 32]);

// === impl Version ===

impl Version {
    /// The version of the bytes fed to `f`'s hasher.
    pub(crate) fn digest(f: impl FnOnce(&mut Hasher)) -> Self {
        let mut hasher = Hasher(ring::digest::Context::new(&ring::digest::SHA256));
        f(&mut hasher);
        let digest = hasher.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// Combines several versions, in order, into one (e.g. the version of a set of secrets).
    pub fn combine<'a>(versions: impl IntoIterator<Item = &'a Version>) -> Self {
        Self::digest(|h| {
            for v in versions {
                h.update(&v.0);
            }
        })
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

/// Feeds content into a [`Version`] digest. Every field is length-prefixed so that
/// `("ab", "c")` and `("a", "bc")` differ.
pub(crate) struct Hasher(ring::digest::Context);

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_version() {
        let a = Version::digest(|h| h.update(b"abc"));
        let b = Version::digest(|h| h.update(b"abc"));
        assert_eq!(a, b);
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn fields_are_delimited() {
        let a = Version::digest(|h| {
            h.update(b"ab");
            h.update(b"c")
        });
        let b = Version::digest(|h| {
            h.update(b"a");
            h.update(b"bc")
        });
        assert_ne!(a, b);
    }
}
