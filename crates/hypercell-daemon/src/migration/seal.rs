//! A migration's connection after the handshake: every byte each way is sealed with
//! AES-256-GCM under a key of its own direction, derived from the shared secret and
//! both peers' nonces, in frames of at most [`FRAME`] bytes whose nonce is their
//! number in that direction. A frame altered, dropped, reordered, replayed or sent the
//! other way fails to open, and the migration ends; nothing on the path learns the
//! cell's memory or can change it.
//!
//! The keys come from the long-term secret and nonces sent in the clear: whoever later
//! learns the secret can open traffic recorded before (no forward secrecy).

use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::Sha256;

/// Most bytes of one frame's plaintext.
pub(crate) const FRAME: usize = 64 << 10;
/// Bytes of a frame's tag.
pub(crate) const TAG: usize = 16;

/// Which way bytes go.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    /// From the source to the destination.
    ToDestination,
    /// From the destination to the source.
    ToSource,
}

/// The key of `direction` for a connection whose source sent `source_nonce` and whose
/// destination sent `destination_nonce`.
pub(crate) fn key(
    secret: &[u8],
    direction: Direction,
    source_nonce: &[u8],
    destination_nonce: &[u8],
) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(match direction {
        Direction::ToDestination => b"hypercell migration key to destination",
        Direction::ToSource => b"hypercell migration key to source",
    });
    mac.update(source_nonce);
    mac.update(destination_nonce);
    mac.finalize().into_bytes().into()
}

/// Seals or opens the frames of one direction.
pub(crate) struct Seal {
    cipher: LessSafeKey,
    /// The number of the next frame, its nonce.
    next: u64,
}

impl Seal {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key).expect("an AES-256 key is 32 bytes"),
            ),
            next: 0,
        }
    }

    fn nonce(&mut self) -> std::io::Result<Nonce> {
        let number = self.next;
        // A nonce never repeats under one key.
        self.next = number
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("the migration sent 2^64 frames"))?;
        let mut nonce = [0; 12];
        nonce[4..].copy_from_slice(&number.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Appends `plain` (at most [`FRAME`] bytes) to `out` as a frame: the length of
    /// what follows (little-endian u32), the ciphertext and the tag.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        debug_assert!(plain.len() <= FRAME);
        let nonce = self.nonce()?;
        out.extend_from_slice(&((plain.len() + TAG) as u32).to_le_bytes());
        let body = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[body..])
            .map_err(|_| std::io::Error::other("a frame could not be sealed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `plain` (at most [`FRAME`] bytes) where it lies, leaving its ciphertext
    /// there; returns what goes before it (its frame's length) and after it (the tag).
    pub fn seal_in_place(&mut self, plain: &mut [u8]) -> std::io::Result<([u8; 4], [u8; TAG])> {
        debug_assert!(plain.len() <= FRAME);
        let nonce = self.nonce()?;
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce, Aad::empty(), plain)
            .map_err(|_| std::io::Error::other("a frame could not be sealed"))?;
        let mut tag_bytes = [0; TAG];
        tag_bytes.copy_from_slice(tag.as_ref());
        Ok((((plain.len() + TAG) as u32).to_le_bytes(), tag_bytes))
    }

    /// Opens `frame` (a frame's ciphertext and tag) in place, leaving its plaintext.
    pub fn open(&mut self, frame: &mut Vec<u8>) -> std::io::Result<()> {
        let Some(split) = frame.len().checked_sub(TAG) else {
            return Err(altered());
        };
        let tag: [u8; TAG] = frame[split..].try_into().map_err(|_| altered())?;
        frame.truncate(split);
        self.open_apart(frame, tag)
    }

    /// Opens a frame whose ciphertext is `body` and whose tag is `tag`, leaving its
    /// plaintext in `body`.
    pub fn open_apart(&mut self, body: &mut [u8], tag: [u8; TAG]) -> std::io::Result<()> {
        let nonce = self.nonce()?;
        self.cipher
            .open_in_place_separate_tag(nonce, Aad::empty(), Tag::from(tag), body, 0..)
            .map(drop)
            .map_err(|_| altered())
    }
}

/// Why a frame did not open.
fn altered() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the connection's bytes were altered, reordered or replayed on the way",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Seal, Seal) {
        let key = key(b"secret", Direction::ToDestination, b"s", b"d");
        (Seal::new(key), Seal::new(key))
    }

    fn body(frame: &[u8]) -> Vec<u8> {
        frame[4..].to_vec()
    }

    #[test]
    fn frames_open_in_order_and_only_so() {
        let (mut sealing, mut opening) = pair();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        sealing.seal(b"first", &mut first).unwrap();
        sealing.seal(b"second", &mut second).unwrap();
        assert_eq!(
            u32::from_le_bytes(first[..4].try_into().unwrap()),
            5 + TAG as u32
        );
        assert!(
            !first.windows(5).any(|w| w == b"first"),
            "sealed, not plain"
        );
        let mut frame = body(&first);
        opening.open(&mut frame).unwrap();
        assert_eq!(frame, b"first");
        // Replayed: its number is past.
        let mut replayed = body(&first);
        assert!(opening.open(&mut replayed).is_err());
    }

    #[test]
    fn an_altered_or_reordered_frame_fails() {
        let (mut sealing, mut opening) = pair();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        sealing.seal(b"first", &mut first).unwrap();
        sealing.seal(b"second", &mut second).unwrap();
        let mut reordered = body(&second);
        assert!(opening.open(&mut reordered).is_err());

        let (mut sealing, mut opening) = pair();
        let mut frame = Vec::new();
        sealing.seal(b"the cell's memory", &mut frame).unwrap();
        let mut altered = body(&frame);
        altered[3] ^= 1;
        let error = opening.open(&mut altered).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn each_direction_and_connection_has_its_own_key() {
        let to_destination = key(b"secret", Direction::ToDestination, b"s", b"d");
        assert_ne!(
            to_destination,
            key(b"secret", Direction::ToSource, b"s", b"d")
        );
        assert_ne!(
            to_destination,
            key(b"secret", Direction::ToDestination, b"t", b"d")
        );
        assert_ne!(
            to_destination,
            key(b"other", Direction::ToDestination, b"s", b"d")
        );
    }
}
