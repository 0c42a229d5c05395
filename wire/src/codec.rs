//! The [`Codec`] trait and how primitive fields are encoded.
//!
//! Integers are big-endian and fixed width. `bool` is one byte, 0 or 1. Byte strings ([`Bytes`])
//! carry a u32 length prefix, text ([`String`]) a u16 length prefix and must be UTF-8, lists
//! ([`Vec`]) a u16 element count, and [`Option`] a one-byte tag (0 absent, 1 present). Every
//! length is checked against the bytes that remain *before* anything is allocated, so a lying
//! length costs nothing.
//!
//! Encoding is total: it never panics. A value longer than its length prefix can say (text over
//! 65,535 bytes, a list over 65,535 elements, a byte string over 4 GiB) is written cut to what
//! the prefix can say — text at a character boundary — and [`Codec::encoded_len`] counts the cut
//! value, so the bytes always decode. Senders bound what they build long before that (see
//! [`crate::text`]); the cut only keeps a bug from becoming a panic or a corrupt stream.

use bytes::{Buf, BufMut, Bytes};

use crate::DecodeError;

/// A value with a defined wire encoding.
pub trait Codec: Sized {
    /// Appends the encoding of `self` to `buf`.
    fn encode<B: BufMut>(&self, buf: &mut B);
    /// Reads one value from the front of `buf`. Never panics, whatever `buf` holds.
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError>;
    /// The exact number of bytes [`Codec::encode`] writes.
    fn encoded_len(&self) -> usize;
}

fn need<B: Buf>(buf: &B, n: usize) -> Result<(), DecodeError> {
    if buf.remaining() < n {
        Err(DecodeError::Truncated)
    } else {
        Ok(())
    }
}

macro_rules! int_codec {
    ($($t:ty => $put:ident, $get:ident;)*) => {$(
        impl Codec for $t {
            fn encode<B: BufMut>(&self, buf: &mut B) {
                buf.$put(*self);
            }
            fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
                need(buf, size_of::<$t>())?;
                Ok(buf.$get())
            }
            fn encoded_len(&self) -> usize {
                size_of::<$t>()
            }
        }
    )*};
}

int_codec! {
    u8 => put_u8, get_u8;
    u16 => put_u16, get_u16;
    u32 => put_u32, get_u32;
    u64 => put_u64, get_u64;
}

impl Codec for bool {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_u8(u8::from(*self));
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        match u8::decode(buf)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue),
        }
    }
    fn encoded_len(&self) -> usize {
        1
    }
}

impl<const N: usize> Codec for [u8; N] {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        buf.put_slice(self);
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        need(buf, N)?;
        let mut out = [0u8; N];
        buf.copy_to_slice(&mut out);
        Ok(out)
    }
    fn encoded_len(&self) -> usize {
        N
    }
}

/// Byte strings: u32 length, then the bytes. Decoding from [`Bytes`] shares, never copies.
impl Codec for Bytes {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        let len = self.len().min(u32::MAX as usize);
        buf.put_u32(len as u32);
        buf.put_slice(&self[..len]);
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        let len = u32::decode(buf)? as usize;
        need(buf, len)?;
        Ok(buf.copy_to_bytes(len))
    }
    fn encoded_len(&self) -> usize {
        4 + self.len().min(u32::MAX as usize)
    }
}

/// Text: u16 length, then UTF-8.
impl Codec for String {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        let text = crate::text::truncate(self, u16::MAX as usize);
        buf.put_u16(text.len() as u16);
        buf.put_slice(text.as_bytes());
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        let len = u16::decode(buf)? as usize;
        need(buf, len)?;
        let mut raw = vec![0u8; len];
        buf.copy_to_slice(&mut raw);
        Self::from_utf8(raw).map_err(|_| DecodeError::InvalidValue)
    }
    fn encoded_len(&self) -> usize {
        2 + crate::text::truncate(self, u16::MAX as usize).len()
    }
}

/// Lists: u16 count, then the elements.
impl<T: Codec> Codec for Vec<T> {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        let count = self.len().min(u16::MAX as usize);
        buf.put_u16(count as u16);
        for item in &self[..count] {
            item.encode(buf);
        }
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        let count = u16::decode(buf)? as usize;
        // Every element takes at least one byte, so the remaining length bounds the allocation.
        if count > buf.remaining() {
            return Err(DecodeError::Truncated);
        }
        let mut out = Self::with_capacity(count);
        for _ in 0..count {
            out.push(T::decode(buf)?);
        }
        Ok(out)
    }
    fn encoded_len(&self) -> usize {
        let count = self.len().min(u16::MAX as usize);
        2 + self[..count].iter().map(Codec::encoded_len).sum::<usize>()
    }
}

/// Optional values: a tag byte (0 absent, 1 present), then the value.
impl<T: Codec> Codec for Option<T> {
    fn encode<B: BufMut>(&self, buf: &mut B) {
        match self {
            None => buf.put_u8(0),
            Some(v) => {
                buf.put_u8(1);
                v.encode(buf);
            }
        }
    }
    fn decode<B: Buf>(buf: &mut B) -> Result<Self, DecodeError> {
        match u8::decode(buf)? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(buf)?)),
            _ => Err(DecodeError::InvalidValue),
        }
    }
    fn encoded_len(&self) -> usize {
        1 + self.as_ref().map_or(0, Codec::encoded_len)
    }
}

/// Defines a struct whose encoding is its fields in order, with no padding or tags.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::codec::Codec for $name {
            fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
                $( $crate::codec::Codec::encode(&self.$field, buf); )*
            }
            fn decode<B: bytes::Buf>(buf: &mut B) -> Result<Self, $crate::DecodeError> {
                Ok(Self { $( $field: $crate::codec::Codec::decode(buf)?, )* })
            }
            fn encoded_len(&self) -> usize {
                0 $( + $crate::codec::Codec::encoded_len(&self.$field) )*
            }
        }
    };
}
pub(crate) use wire_struct;

/// Defines a one-byte enum; unknown values fail to decode with [`DecodeError::InvalidValue`].
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        #[repr(u8)]
        pub enum $name { $( $(#[$vmeta])* $variant = $value ),* }

        impl $crate::codec::Codec for $name {
            fn encode<B: bytes::BufMut>(&self, buf: &mut B) {
                buf.put_u8(*self as u8);
            }
            fn decode<B: bytes::Buf>(buf: &mut B) -> Result<Self, $crate::DecodeError> {
                match <u8 as $crate::codec::Codec>::decode(buf)? {
                    $( $value => Ok(Self::$variant), )*
                    _ => Err($crate::DecodeError::InvalidValue),
                }
            }
            fn encoded_len(&self) -> usize {
                1
            }
        }
    };
}
pub(crate) use wire_enum;

#[cfg(test)]
pub(crate) mod strategy {
    //! proptest strategies for fields whose defaults would not fit the wire's limits.
    use bytes::Bytes;
    use proptest::prelude::*;

    /// Byte strings up to 256 bytes.
    pub(crate) fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from)
    }

    /// Short text, including multi-byte characters.
    pub(crate) fn text() -> impl Strategy<Value = String> {
        "\\PC{0,24}"
    }

    /// A short list of short text.
    pub(crate) fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lying_lengths_fail_without_allocating() {
        // A byte string claiming 4 GiB, a list claiming 65535 elements: both truncated.
        let mut b: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        assert_eq!(Bytes::decode(&mut b), Err(DecodeError::Truncated));
        let mut b: &[u8] = &[0xff, 0xff, 0];
        assert_eq!(Vec::<u64>::decode(&mut b), Err(DecodeError::Truncated));
    }

    #[test]
    fn overlong_values_encode_cut_and_decode() {
        // 70,000 bytes of two-byte characters: cut at a character boundary below 65,536.
        let long = "é".repeat(35_000);
        let mut buf = Vec::new();
        long.encode(&mut buf);
        assert_eq!(buf.len(), long.encoded_len());
        let back = String::decode(&mut &buf[..]).unwrap();
        assert_eq!(back.len(), 65_534);
        assert!(long.starts_with(&back));

        let list = vec![7u8; 70_000];
        let mut buf = Vec::new();
        list.encode(&mut buf);
        assert_eq!(buf.len(), list.encoded_len());
        assert_eq!(Vec::<u8>::decode(&mut &buf[..]).unwrap().len(), 65_535);
    }

    #[test]
    fn invalid_values() {
        let mut b: &[u8] = &[2];
        assert_eq!(bool::decode(&mut b), Err(DecodeError::InvalidValue));
        let mut b: &[u8] = &[0, 2, 0xc3, 0x28];
        assert_eq!(String::decode(&mut b), Err(DecodeError::InvalidValue));
        let mut b: &[u8] = &[7];
        assert_eq!(Option::<u8>::decode(&mut b), Err(DecodeError::InvalidValue));
    }
}
