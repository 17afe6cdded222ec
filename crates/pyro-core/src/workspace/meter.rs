//! Counting, as a guest's tar stream arrives, the file content its headers declare.
//!
//! An export or a diff stops the transfer once the members' declared sizes pass the limit,
//! at the header of the member that passes it, before any of its bytes: a 15 TiB sparse
//! file (or a full disk's worth of `fallocate`d space) is refused after one header instead
//! of after the limit's worth of zeros has crossed the VM boundary and filled a spool on
//! the host. The stream is the guest's and so hostile: what this cannot follow (GNU sparse
//! members, pax headers, which may change the framing) ends the counting, and the byte
//! bound of the whole spool is then what holds.

/// Size of a tar block (headers, and the unit data is padded to).
const BLOCK: usize = 512;

/// Sums the sizes that the headers of a tar stream declare for regular files, fed the
/// stream in chunks of any size.
#[derive(Debug)]
pub(super) struct ContentMeter {
    /// The current header block, as far as it has arrived.
    header: Vec<u8>,
    /// Bytes (data and padding) of the current member still to pass over.
    skip: u64,
    /// Declared file content so far.
    content: u64,
    /// The stream took a form this meter does not follow: counting has stopped.
    lost: bool,
}

impl Default for ContentMeter {
    fn default() -> Self {
        Self {
            header: Vec::with_capacity(BLOCK),
            skip: 0,
            content: 0,
            lost: false,
        }
    }
}

impl ContentMeter {
    /// Takes the next bytes of the stream.
    pub(super) fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.skip -= n as u64;
                chunk = &chunk[n..];
                continue;
            }
            let n = (BLOCK - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.header.len() == BLOCK {
                self.on_header();
                self.header.clear();
            }
        }
    }

    /// File content the headers so far declared (saturating).
    pub(super) fn content(&self) -> u64 {
        self.content
    }

    fn on_header(&mut self) {
        let h = &self.header;
        // The end-of-archive blocks.
        if h.iter().all(|&b| b == 0) {
            return;
        }
        let Some(size) = parse_size(&h[124..136]) else {
            self.lost = true;
            return;
        };
        match h[156] {
            // Regular files (old style, POSIX, contiguous).
            b'0' | 0 | b'7' => self.content = self.content.saturating_add(size),
            // GNU sparse members carry extension blocks, and pax headers may change the
            // next member's size: neither is followed.
            b'S' | b'x' | b'g' | b'X' => {
                self.lost = true;
                return;
            }
            // Other members (links, directories, long names) are framed by their size too.
            _ => {}
        }
        self.skip = size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64);
    }
}

/// A header's size field: octal digits (space or NUL padded), or GNU base-256 (first byte
/// `0x80`, then big-endian). Sizes past `u64::MAX` saturate; negative or malformed ones are
/// `None`.
fn parse_size(field: &[u8]) -> Option<u64> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        if first != 0x80 {
            // Negative (0xff) or other flagged forms.
            return None;
        }
        return Some(rest.iter().fold(0u64, |acc, &b| {
            acc.checked_mul(256)
                .and_then(|a| a.checked_add(u64::from(b)))
                .unwrap_or(u64::MAX)
        }));
    }
    let digits = field
        .iter()
        .skip_while(|&&b| b == b' ' || b == 0)
        .take_while(|&&b| b != b' ' && b != 0);
    let mut value = 0u64;
    for &b in digits {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .unwrap_or(u64::MAX);
    }
    Some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, u64, tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, size, kind) in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(if kind.is_file() { *size } else { 0 });
            h.set_mode(0o644);
            let data = vec![7u8; if kind.is_file() { *size as usize } else { 0 }];
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn metered(bytes: &[u8], chunk: usize) -> ContentMeter {
        let mut m = ContentMeter::default();
        for c in bytes.chunks(chunk) {
            m.feed(c);
        }
        m
    }

    #[test]
    fn counts_declared_file_content_in_any_chunking() {
        let long = "d/".repeat(80) + "file";
        let bytes = tar_of(&[
            ("d", 0, tar::EntryType::Directory),
            ("a", 1000, tar::EntryType::Regular),
            (&long, 513, tar::EntryType::Regular),
            ("l", 0, tar::EntryType::Symlink),
            ("e", 0, tar::EntryType::Regular),
        ]);
        for chunk in [1, 7, 511, 512, 513, 4096, bytes.len()] {
            let m = metered(&bytes, chunk);
            assert_eq!(m.content(), 1513, "chunk {chunk}");
            assert!(!m.lost);
        }
    }

    #[test]
    fn a_huge_sparse_file_is_seen_at_its_header() {
        // What the agent sends for `truncate -s 15T f`: a GNU header in base-256.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(15 << 40);
        h.set_path("f").unwrap();
        h.set_cksum();
        let m = metered(h.as_bytes(), 100);
        assert_eq!(m.content(), 15 << 40);
    }

    #[test]
    fn hostile_headers_stop_the_count_or_saturate() {
        let mut block = [0u8; 512];
        block[0] = b'x';
        block[124..136].copy_from_slice(b"zzzzzzzzzzz\0");
        block[156] = b'0';
        let m = metered(&block, 512);
        assert!(m.lost);
        assert_eq!(
            parse_size(b"\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Some(u64::MAX)
        );
        assert_eq!(
            parse_size(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            None
        );
        assert_eq!(parse_size(b"77777777777777777777777"), Some(u64::MAX));
        assert_eq!(parse_size(b"  0000644 \0\0"), Some(0o644));
        assert_eq!(parse_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
        // A pax header ends the counting.
        block[124..136].copy_from_slice(b"00000000000\0");
        block[156] = b'x';
        assert!(metered(&block, 512).lost);
    }
}
