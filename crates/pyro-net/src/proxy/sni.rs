//! The server name (SNI) of a TLS ClientHello, read from the first bytes a client sends.
//!
//! Safe on hostile input: one TLS record of at most [`MAX_RECORD`] bytes is read, every
//! length is checked against what encloses it, and nothing is allocated but the name. A
//! ClientHello split over several records is refused ([`SniError::Fragmented`]): clients
//! send theirs in one record (even with post-quantum key shares it is about 2 KiB).

use super::normalize_host;

/// The largest TLS plaintext record (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_RECORD: usize = 16 * 1024;
/// Record header: type, version, length.
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// Why no server name could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The record is not complete yet: read more and ask again.
    #[error("the TLS record is incomplete")]
    Incomplete,
    /// The bytes are not a TLS handshake record.
    #[error("not a TLS handshake record")]
    NotTls,
    /// The record exceeds [`MAX_RECORD`].
    #[error("the TLS record is longer than {MAX_RECORD} bytes")]
    TooLong,
    /// The handshake message is not a ClientHello.
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello does not fit in the first record.
    #[error("the ClientHello spans more than one TLS record")]
    Fragmented,
    /// A length or field is inconsistent.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello carries no host name.
    #[error("the ClientHello carries no server name")]
    NoSni,
    /// The server name is not a valid host name.
    #[error("the server name is not a valid host name")]
    BadName,
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if n > self.bytes.len() {
            return Err(SniError::Malformed(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SniError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SniError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, SniError> {
        let b = self.take(3, what)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A sub-reader over a field prefixed by a one- or two-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<Reader<'a>, SniError> {
        let n = usize::from(self.u8(what)?);
        Ok(Reader {
            bytes: self.take(n, what)?,
        })
    }

    fn vec16(&mut self, what: &'static str) -> Result<Reader<'a>, SniError> {
        let n = usize::from(self.u16(what)?);
        Ok(Reader {
            bytes: self.take(n, what)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The number of bytes the first record occupies, once its header is in: how much to
/// buffer before [`parse`] can decide. `None` while fewer than 5 bytes are in.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..RECORD_HEADER)?;
    Some(RECORD_HEADER + usize::from(u16::from_be_bytes([header[3], header[4]])))
}

/// The host name in the ClientHello at the start of `buf` (lower case, no final dot).
/// [`SniError::Incomplete`] asks for more bytes; every other error is final.
pub fn parse(buf: &[u8]) -> Result<String, SniError> {
    // Decide "not TLS" from the first byte, before waiting for more.
    match buf.first() {
        None => return Err(SniError::Incomplete),
        Some(&CONTENT_HANDSHAKE) => {}
        Some(_) => return Err(SniError::NotTls),
    }
    if let Some(&major) = buf.get(1)
        && major != 3
    {
        return Err(SniError::NotTls);
    }
    let Some(total) = record_len(buf) else {
        return Err(SniError::Incomplete);
    };
    if total - RECORD_HEADER > MAX_RECORD {
        return Err(SniError::TooLong);
    }
    let Some(record) = buf.get(RECORD_HEADER..total) else {
        return Err(SniError::Incomplete);
    };
    let mut r = Reader { bytes: record };
    if r.u8("handshake type")? != HANDSHAKE_CLIENT_HELLO {
        return Err(SniError::NotClientHello);
    }
    let len = r.u24("handshake length")?;
    if len > r.bytes.len() {
        return Err(SniError::Fragmented);
    }
    let mut hello = Reader {
        bytes: r.take(len, "handshake body")?,
    };
    hello.take(2, "client version")?;
    hello.take(32, "random")?;
    let session = hello.vec8("session id")?;
    if session.bytes.len() > 32 {
        return Err(SniError::Malformed("session id longer than 32 bytes"));
    }
    let suites = hello.vec16("cipher suites")?;
    if suites.is_empty() || suites.bytes.len() % 2 != 0 {
        return Err(SniError::Malformed("cipher suites"));
    }
    if hello.vec8("compression methods")?.is_empty() {
        return Err(SniError::Malformed("no compression method"));
    }
    if hello.is_empty() {
        return Err(SniError::NoSni);
    }
    let mut extensions = hello.vec16("extensions")?;
    if !hello.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    let mut found = None;
    while !extensions.is_empty() {
        let kind = extensions.u16("extension type")?;
        let mut body = extensions.vec16("extension body")?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if found.is_some() {
            return Err(SniError::Malformed("two server_name extensions"));
        }
        let mut list = body.vec16("server name list")?;
        if !body.is_empty() {
            return Err(SniError::Malformed("bytes after the server name list"));
        }
        while !list.is_empty() {
            let name_type = list.u8("name type")?;
            let name = list.vec16("host name")?;
            if name_type != NAME_TYPE_HOST_NAME {
                continue;
            }
            if found.is_some() {
                return Err(SniError::Malformed("two host names"));
            }
            found = Some(normalize_host(name.bytes).ok_or(SniError::BadName)?);
        }
    }
    found.ok_or(SniError::NoSni)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello shaped like a real client's: session id, several suites, SNI between
    /// other extensions.
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        // supported_groups
        ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        // supported_versions: TLS 1.3, 1.2
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x42; 32]);
        body.push(32);
        body.extend_from_slice(&[0x17; 32]);
        body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let hello = client_hello(Some("API.Example.org."));
        assert_eq!(parse(&hello), Ok("api.example.org".to_owned()));
        assert_eq!(record_len(&hello), Some(hello.len()));
        // Bytes after the record (the next record) do not matter.
        let mut more = hello.clone();
        more.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        assert_eq!(parse(&more), Ok("api.example.org".to_owned()));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let hello = client_hello(Some("allowed.test"));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Err(SniError::Incomplete), "cut {cut}");
        }
    }

    #[test]
    fn every_inner_truncation_is_refused() {
        // Shorten the record and fix its length so the record is complete but the hello not.
        let hello = client_hello(Some("allowed.test"));
        for cut in RECORD_HEADER..hello.len() {
            let mut short = hello[..cut].to_vec();
            let len = (cut - RECORD_HEADER) as u16;
            short[3..5].copy_from_slice(&len.to_be_bytes());
            let result = parse(&short);
            assert!(
                matches!(
                    result,
                    Err(SniError::Malformed(_) | SniError::Fragmented | SniError::NoSni)
                ),
                "cut {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn without_a_name_there_is_no_sni() {
        assert_eq!(parse(&client_hello(None)), Err(SniError::NoSni));
    }

    #[test]
    fn other_protocols_and_messages_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        assert_eq!(parse(&[22, 2, 0]), Err(SniError::NotTls));
        let mut hello = client_hello(Some("a.test"));
        hello[5] = 2; // ServerHello
        assert_eq!(parse(&hello), Err(SniError::NotClientHello));
        let mut huge = vec![22, 3, 1, 0x40, 0x01];
        huge.resize(20_000, 0);
        assert_eq!(parse(&huge), Err(SniError::TooLong));
        let mut spans = client_hello(Some("a.test"));
        spans[7] = 0xff; // handshake length beyond the record
        assert_eq!(parse(&spans), Err(SniError::Fragmented));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a b.test", "evil.test\0.allowed.test", "a..test"] {
            assert_eq!(
                parse(&client_hello(Some(name))),
                Err(SniError::BadName),
                "{name:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_hellos_never_panic(at in 0usize..200, byte in any::<u8>()) {
            let mut hello = client_hello(Some("allowed.test"));
            let at = at % hello.len();
            hello[at] = byte;
            let _ = parse(&hello);
        }
    }
}
