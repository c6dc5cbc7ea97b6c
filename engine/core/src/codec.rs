//! The byte codec every on-disk format is written with: a writer of
//! little-endian integers, LEB128 varints and length-prefixed strings, and a
//! bounded reader of the same.
//!
//! The reader is for bytes from a disk that may be damaged or forged: it
//! never panics, never reads past its input, and never lets a length or a
//! count drive an allocation larger than the bytes left could justify (a
//! length of 2^60 is an [`Error`], not an allocation). Every error says what
//! was wrong and at which offset.
//!
//! Strings come in three length prefixes, because the formats already on
//! disk chose differently: a varint ([`Put::put_str`], events and
//! snapshots), a `u16` ([`Put::put_str16`], the claims journal) and a `u32`
//! ([`Put::put_str32`], snapshot positions).

use std::fmt;

/// What a [`Reader`] refused, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Offset of the defect from the start of the input (plus the reader's base).
    pub offset: usize,
    /// What was expected and not found.
    pub what: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.what, self.offset)
    }
}

impl std::error::Error for Error {}

/// A field the input ends inside of.
pub const TRUNCATED: &str = "a field runs past the end of the input";
/// A varint of more than 64 bits.
pub const VARINT_OVERFLOW: &str = "varint overflows 64 bits";
/// A varint that should fit a `u32` and does not.
pub const U32_OVERFLOW: &str = "a number field overflows 32 bits";
/// A string field that is not UTF-8.
pub const NOT_UTF8: &str = "a string field is not UTF-8";
/// A count of elements the bytes left cannot hold.
pub const COUNT_TOO_LARGE: &str = "a count larger than the bytes that follow";
/// Bytes after the last field.
pub const TRAILING: &str = "trailing bytes";

/// Bytes of `v` as a varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Zigzag: signed integers near zero become small unsigned ones.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// `bytes` as lowercase hex, two digits a byte (for golden tests and logs).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes of a hex string, whitespace ignored; `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Appends fields to a byte buffer.
pub trait Put {
    /// One byte.
    fn put_u8(&mut self, v: u8);
    /// Raw bytes, no length.
    fn put_bytes(&mut self, v: &[u8]);

    /// A `u16`, little-endian.
    fn put_u16(&mut self, v: u16) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// A `u32`, little-endian.
    fn put_u32(&mut self, v: u32) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// A `u64`, little-endian.
    fn put_u64(&mut self, v: u64) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// An `i32`, little-endian.
    fn put_i32(&mut self, v: i32) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// An `i64`, little-endian.
    fn put_i64(&mut self, v: i64) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// An `f64`, little-endian IEEE 754 bits.
    fn put_f64(&mut self, v: f64) {
        self.put_bytes(&v.to_le_bytes());
    }
    /// An unsigned LEB128 varint (at most 10 bytes).
    fn put_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.put_u8(v as u8 | 0x80);
            v >>= 7;
        }
        self.put_u8(v as u8);
    }
    /// A varint byte length, then the bytes.
    fn put_str(&mut self, s: &str) {
        self.put_varint(s.len() as u64);
        self.put_bytes(s.as_bytes());
    }
    /// A `u16` byte length, then the bytes; cut at `u16::MAX` bytes, so
    /// callers refuse longer strings first.
    fn put_str16(&mut self, s: &str) {
        let n = s.len().min(usize::from(u16::MAX));
        self.put_u16(n as u16);
        self.put_bytes(&s.as_bytes()[..n]);
    }
    /// A `u32` byte length, then the bytes; cut at `u32::MAX` bytes.
    fn put_str32(&mut self, s: &str) {
        let n = s.len().min(u32::MAX as usize);
        self.put_u32(n as u32);
        self.put_bytes(&s.as_bytes()[..n]);
    }
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_bytes(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
}

/// Reserves a `u64` length at the end of `out`, to be filled in by [`end_len`].
pub fn begin_len(out: &mut Vec<u8>) -> usize {
    out.put_u64(0);
    out.len()
}

/// Fills in the length reserved by [`begin_len`] at `start`: the bytes since.
pub fn end_len(out: &mut [u8], start: usize) {
    let len = out.len().saturating_sub(start) as u64;
    if let Some(slot) = start.checked_sub(8).and_then(|at| out.get_mut(at..start)) {
        slot.copy_from_slice(&len.to_le_bytes());
    }
}

/// A cursor over bytes that never reads past their end (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in a larger input, for errors.
    base: usize,
}

/// What reading gives.
pub type Result<T> = std::result::Result<T, Error>;

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, base: 0 }
    }

    /// A reader at the start of `buf` whose errors count offsets from `base`.
    pub fn with_base(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    /// The offset of the next byte (from the base).
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// An error about the bytes at the current offset.
    pub fn error(&self, what: &'static str) -> Error {
        Error {
            offset: self.offset(),
            what,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Refuses bytes left over.
    pub fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(TRAILING))
        }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(TRUNCATED));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Every byte not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// The next `n` bytes as a reader of their own, its offsets continuing ours.
    pub fn sub(&mut self, n: usize) -> Result<Reader<'a>> {
        let base = self.offset();
        Ok(Reader::with_base(self.bytes(n)?, base))
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian `i32`.
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A little-endian `f64`.
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    pub fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            // The tenth byte holds the 64th bit only.
            if i == 9 && b > 1 {
                return Err(self.error(VARINT_OVERFLOW));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error(VARINT_OVERFLOW))
    }

    /// A varint that fits a `u32`.
    pub fn varint_u32(&mut self) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| self.error(U32_OVERFLOW))
    }

    /// Checks a count of elements of at least `min_bytes` each against the
    /// bytes left, so that it can size an allocation.
    pub fn check_count(&self, n: u64, min_bytes: usize) -> Result<usize> {
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_bytes.max(1)) <= self.remaining() => Ok(n),
            _ => Err(self.error(COUNT_TOO_LARGE)),
        }
    }

    /// A varint count of elements of at least `min_bytes` each (see [`Reader::check_count`]).
    pub fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.varint()?;
        self.check_count(n, min_bytes)
    }

    /// A `u32` count of elements of at least `min_bytes` each (see [`Reader::check_count`]).
    pub fn count32(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.u32()?;
        self.check_count(n.into(), min_bytes)
    }

    /// `n` bytes of UTF-8.
    fn utf8(&mut self, n: u64) -> Result<&'a str> {
        let n = self.check_count(n, 1).map_err(|_| self.error(TRUNCATED))?;
        let at = self.offset();
        std::str::from_utf8(self.bytes(n)?).map_err(|_| Error {
            offset: at,
            what: NOT_UTF8,
        })
    }

    /// A string with a varint length ([`Put::put_str`]).
    pub fn str(&mut self) -> Result<&'a str> {
        let n = self.varint()?;
        self.utf8(n)
    }

    /// A string with a `u16` length ([`Put::put_str16`]).
    pub fn str16(&mut self) -> Result<&'a str> {
        let n = self.u16()?;
        self.utf8(n.into())
    }

    /// A string with a `u32` length ([`Put::put_str32`]).
    pub fn str32(&mut self) -> Result<&'a str> {
        let n = self.u32()?;
        self.utf8(n.into())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fields_roundtrip_in_their_documented_bytes() {
        let mut out = Vec::new();
        out.put_u8(7);
        out.put_u16(0x0102);
        out.put_u32(0x0304_0506);
        out.put_u64(u64::MAX - 1);
        out.put_i32(-2);
        out.put_i64(i64::MIN);
        out.put_f64(-0.0);
        out.put_varint(300);
        out.put_str("hé");
        out.put_str16("ab");
        out.put_str32("");
        let golden = "07 0201 06050403 feffffffffffffff feffffff 0000000000000080 \
                      0000000000000080 ac02 0368c3a9 02006162 00000000";
        assert_eq!(hex(&out), golden.replace(' ', ""));
        assert_eq!(unhex(golden), Some(out.clone()));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("123"), None);

        let mut r = Reader::new(&out);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(0x0102));
        assert_eq!(r.u32(), Ok(0x0304_0506));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.i32(), Ok(-2));
        assert_eq!(r.i64(), Ok(i64::MIN));
        assert_eq!(r.f64().map(f64::to_bits), Ok((-0.0f64).to_bits()));
        assert_eq!(r.varint(), Ok(300));
        assert_eq!(r.str(), Ok("hé"));
        assert_eq!(r.str16(), Ok("ab"));
        assert_eq!(r.str32(), Ok(""));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn errors_say_what_and_where() {
        // Truncated: the offset is where the missing field starts.
        let mut r = Reader::with_base(&[1, 2, 3], 100);
        r.u8().unwrap();
        assert_eq!(
            r.u32(),
            Err(Error {
                offset: 101,
                what: TRUNCATED
            })
        );
        assert_eq!(
            r.error(TRUNCATED).to_string(),
            "a field runs past the end of the input at offset 101"
        );
        // An eleventh varint byte, and a tenth holding more than the 64th bit.
        let overlong = [0xff; 10];
        assert_eq!(Reader::new(&overlong).varint().unwrap_err().what, VARINT_OVERFLOW);
        let mut max = vec![0xff; 9];
        max.push(1);
        assert_eq!(Reader::new(&max).varint(), Ok(u64::MAX));
        max[9] = 2;
        assert_eq!(
            Reader::new(&max).varint(),
            Err(Error {
                offset: 10,
                what: VARINT_OVERFLOW
            })
        );
        assert_eq!(
            Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x10])
                .varint_u32()
                .unwrap_err()
                .what,
            U32_OVERFLOW
        );
        // Not UTF-8: the offset is the string's first byte.
        assert_eq!(
            Reader::new(&[1, 0xff]).str(),
            Err(Error {
                offset: 1,
                what: NOT_UTF8
            })
        );
        assert_eq!(
            Reader::new(&[0, 0]).finish(),
            Err(Error {
                offset: 0,
                what: TRAILING
            })
        );
    }

    #[test]
    fn absurd_lengths_and_counts_are_errors_not_allocations() {
        // A string length of 2^60 in a 9-byte input.
        let mut huge = Vec::new();
        huge.put_varint(1 << 60);
        assert_eq!(Reader::new(&huge).str().unwrap_err().what, TRUNCATED);
        let mut r = Reader::new(&huge);
        assert_eq!(r.count(1).unwrap_err().what, COUNT_TOO_LARGE);
        // A count of u32::MAX elements of 2 bytes each over 8 bytes left.
        let mut counted = Vec::new();
        counted.put_u32(u32::MAX);
        counted.put_u64(0);
        let mut r = Reader::new(&counted);
        assert_eq!(
            r.count32(2),
            Err(Error {
                offset: 4,
                what: COUNT_TOO_LARGE
            })
        );
        let mut exact = Vec::new();
        exact.put_u32(4);
        exact.put_u64(0);
        assert_eq!(Reader::new(&exact).count32(2), Ok(4));
        // One element more than the bytes left hold.
        exact[0] = 5;
        assert_eq!(Reader::new(&exact).count32(2).unwrap_err().what, COUNT_TOO_LARGE);
    }

    #[test]
    fn lengths_are_patched_in_place() {
        let mut out = vec![9];
        let at = begin_len(&mut out);
        out.put_str("abc");
        end_len(&mut out, at);
        let mut r = Reader::new(&out);
        assert_eq!(r.u8(), Ok(9));
        let n = r.u64().unwrap();
        assert_eq!(n, 4);
        let mut block = r.sub(n as usize).unwrap();
        assert_eq!(block.offset(), 9);
        assert_eq!(block.str(), Ok("abc"));
        assert!(r.is_empty());
    }

    proptest! {
        #[test]
        fn varints_and_zigzag_roundtrip(v in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            out.put_varint(v);
            prop_assert_eq!(out.len(), varint_len(v));
            prop_assert_eq!(Reader::new(&out).varint(), Ok(v));
            prop_assert_eq!(unzigzag(zigzag(s)), s);
        }

        /// Any bytes, any sequence of reads: an answer or an error, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), ops in proptest::collection::vec(0..12u8, 0..16)) {
            let mut r = Reader::new(&bytes);
            for op in ops {
                let _ = match op {
                    0 => r.u8().map(|_| ()),
                    1 => r.u16().map(|_| ()),
                    2 => r.u32().map(|_| ()),
                    3 => r.u64().map(|_| ()),
                    4 => r.varint().map(|_| ()),
                    5 => r.varint_u32().map(|_| ()),
                    6 => r.str().map(|_| ()),
                    7 => r.str16().map(|_| ()),
                    8 => r.str32().map(|_| ()),
                    9 => r.count(3).map(|_| ()),
                    10 => r.count32(1).map(|_| ()),
                    _ => r.sub(5).map(|_| ()),
                };
                prop_assert!(r.offset() <= bytes.len());
            }
        }
    }
}
