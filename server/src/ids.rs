//! Identifiers and clocks.

use rand::RngCore;

/// A new id: 24 lowercase hex digits, like a MongoDB ObjectId: 4 bytes of seconds since
/// the epoch (so ids sort roughly by creation) and 8 random bytes.
pub fn new_id() -> String {
    let mut bytes = [0u8; 12];
    let secs = (now_ms() / 1000) as u32;
    bytes[..4].copy_from_slice(&secs.to_be_bytes());
    rand::rng().fill_bytes(&mut bytes[4..]);
    hex::encode(bytes)
}

/// A new secret (session cookie, API token): 32 random bytes as hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the database keeps of a secret: its BLAKE3 hash. Secrets are 256 random bits, so
/// a fast hash is enough (no password stretching needed).
pub fn secret_hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_lowercase_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(app::model::is_valid_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn secret_hash_is_stable_and_not_the_secret() {
        let s = new_secret();
        assert_eq!(s.len(), 64);
        assert_eq!(secret_hash(&s), secret_hash(&s));
        assert_ne!(secret_hash(&s), s);
    }
}
