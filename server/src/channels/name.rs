//! Channel names: 1-128 bytes of `[A-Za-z0-9_.:/-]`. The alphabet needs no
//! escaping in JSON or URLs, so a name can be copied into a frame as is.

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME: usize = 128;

/// Whether `name` is a valid channel name.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::is_valid;

    #[test]
    fn channel_name_rules() {
        for good in [
            "a",
            "clinic:42/slots",
            "user/8812",
            "A-b_c.d",
            &"x".repeat(128),
        ] {
            assert!(is_valid(good), "{good}");
        }
        for bad in ["", "a b", "a\"b", "é", "a\\b", "a?b", &"x".repeat(129)] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
