//! Random damage to valid encodings, for the decoders' `fuzz_*` property
//! tests: whatever a file or a message holds, a decoder returns a value or
//! an error, never a panic, an abort or an allocation sized by a length field
//! rather than by the input.
//!
//! A short run is part of `cargo test`; a long one sets `PROPTEST_CASES`,
//! e.g. `PROPTEST_CASES=100000 cargo test --release -p vitrine --lib fuzz_`.

use proptest::prelude::*;

/// `short` cases, unless `PROPTEST_CASES` asks for another number.
pub fn config(short: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = short;
    }
    config
}

/// One change to a valid encoding.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// XOR a byte (at a position taken modulo the length).
    Flip(usize, u8),
    /// Keep only a prefix.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Overwrite eight bytes with a little-endian number: a length or count
    /// of 2^60 or `u64::MAX` must not allocate that much.
    Length(usize, u64),
}

/// A mutation.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        (
            any::<usize>(),
            prop_oneof![
                Just(1u64 << 60),
                Just(u64::MAX),
                Just(u64::from(u32::MAX)),
                any::<u64>()
            ]
        )
            .prop_map(|(at, n)| Mutation::Length(at, n)),
    ]
}

/// One to three mutations.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

/// Applies `mutations` to `bytes`, leaving the first `from` bytes (a
/// protected prefix, such as a file header) alone.
pub fn apply(bytes: &mut Vec<u8>, mutations: &[Mutation], from: usize) {
    for m in mutations {
        let room = bytes.len().saturating_sub(from);
        match m {
            Mutation::Flip(at, x) if room > 0 => {
                let at = from + at % room;
                bytes[at] ^= x;
            }
            Mutation::Truncate(at) => bytes.truncate(from + at % (room + 1)),
            Mutation::Extend(more) => bytes.extend_from_slice(more),
            Mutation::Length(at, n) if room >= 8 => {
                let at = from + at % (room - 7);
                bytes[at..at + 8].copy_from_slice(&n.to_le_bytes());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protected_prefix_is_left_alone() {
        let mut bytes = vec![0u8; 32];
        let all = [
            Mutation::Flip(3, 0xff),
            Mutation::Length(0, u64::MAX),
            Mutation::Truncate(10),
            Mutation::Extend(vec![7; 5]),
        ];
        apply(&mut bytes, &all, 8);
        assert_eq!(&bytes[..8], &[0u8; 8]);
        assert!(bytes.len() >= 8);
        let mut short = vec![1u8; 4];
        apply(&mut short, &[Mutation::Truncate(0), Mutation::Flip(0, 1)], 8);
        assert_eq!(short, [1u8; 4]);
    }
}
