//! A minimal DNS message parser and writer (RFC 1035), safe on hostile input.
//!
//! Only what the resolver needs: the header, one question, and the answer section's
//! records (A and CNAME understood, everything else kept as opaque rdata). Every read is
//! bounds-checked; names are at most [`MAX_NAME_LEN`] bytes on the wire, compression
//! pointers must point strictly backwards (so they cannot loop) and at most
//! [`MAX_POINTERS`] are followed per name; at most [`MAX_RECORDS`] answers are read. A
//! malformed message is a [`WireError`], never a panic.

use std::net::Ipv4Addr;

/// Longest name on the wire, length bytes and the final zero included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Most compression pointers followed while reading one name.
pub const MAX_POINTERS: usize = 16;
/// Most answer records read from one response; later ones are ignored.
pub const MAX_RECORDS: usize = 64;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 12;

/// Record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Class IN.
pub const CLASS_IN: u16 = 1;

/// Response codes pyro writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    /// No error.
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The upstream failed or did not answer in time.
    ServFail = 2,
    /// The name does not exist (or is not allowed).
    NxDomain = 3,
    /// An opcode other than QUERY.
    NotImp = 4,
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends before the structure it announces.
    #[error("truncated message at offset {at}")]
    Truncated {
        /// Where the missing bytes should have been.
        at: usize,
    },
    /// A name is longer than 255 bytes on the wire.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A label length byte uses the reserved `01`/`10` prefixes.
    #[error("bad label type {byte:#04x} at offset {at}")]
    BadLabel {
        /// The length byte.
        byte: u8,
        /// Its offset.
        at: usize,
    },
    /// A compression pointer that does not point strictly backwards, or too many of them.
    #[error("bad compression pointer at offset {at}")]
    BadPointer {
        /// The pointer's offset.
        at: usize,
    },
    /// A query without exactly one question.
    #[error("expected one question, found {count}")]
    QuestionCount {
        /// QDCOUNT.
        count: u16,
    },
    /// An A record whose rdata is not 4 bytes.
    #[error("A record with {len} bytes of rdata")]
    BadA {
        /// RDLENGTH.
        len: u16,
    },
}

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The query ID.
    pub id: u16,
    /// QR, opcode, AA, TC, RD, RA, Z and RCODE.
    pub flags: u16,
    /// QDCOUNT.
    pub qdcount: u16,
    /// ANCOUNT.
    pub ancount: u16,
    /// NSCOUNT.
    pub nscount: u16,
    /// ARCOUNT.
    pub arcount: u16,
}

impl Header {
    /// Reads the header at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let word = |i: usize| read_u16(buf, i);
        Ok(Header {
            id: word(0)?,
            flags: word(2)?,
            qdcount: word(4)?,
            ancount: word(6)?,
            nscount: word(8)?,
            arcount: word(10)?,
        })
    }

    /// Whether this is a response (QR set).
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The opcode (0 is QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// Whether recursion was desired (RD).
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    /// The response code.
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }

    fn write(&self, out: &mut Vec<u8>) {
        for word in [
            self.id,
            self.flags,
            self.qdcount,
            self.ancount,
            self.nscount,
            self.arcount,
        ] {
            out.extend_from_slice(&word.to_be_bytes());
        }
    }
}

/// A domain name as its labels (raw bytes, case kept), at most [`MAX_NAME_LEN`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Name {
    /// The labels, without the root.
    labels: Vec<Vec<u8>>,
}

impl Name {
    /// The name from dotted text (`a.example.org`, final dot optional); `None` if a label is
    /// empty or too long, or the name too long.
    pub fn from_dotted(text: &str) -> Option<Name> {
        let text = text.strip_suffix('.').unwrap_or(text);
        let mut name = Name::default();
        if text.is_empty() {
            return Some(name);
        }
        let mut wire_len = 1;
        for label in text.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL_LEN {
                return None;
            }
            wire_len += 1 + label.len();
            if wire_len > MAX_NAME_LEN {
                return None;
            }
            name.labels.push(label.as_bytes().to_vec());
        }
        Some(name)
    }

    /// The name in lower case, labels joined by dots, without the final dot. Bytes other
    /// than letters, digits, `-` and `_` are written `\DDD` (RFC 1035 master-file style),
    /// so a `.` inside a label can never pose as a label boundary.
    pub fn to_dotted(&self) -> String {
        let mut text = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            for &b in label {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    text.push(char::from(b.to_ascii_lowercase()));
                } else {
                    text.push_str(&format!("\\{b:03}"));
                }
            }
        }
        text
    }

    /// Whether two names are equal, ignoring ASCII case (RFC 4343).
    pub fn eq_ignore_case(&self, other: &Name) -> bool {
        self.labels.len() == other.labels.len()
            && self
                .labels
                .iter()
                .zip(&other.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// Appends the name in wire form, uncompressed.
    fn write(&self, out: &mut Vec<u8>) {
        for label in &self.labels {
            // Labels are at most 63 bytes, by construction.
            out.push(label.len() as u8);
            out.extend_from_slice(label);
        }
        out.push(0);
    }
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// QNAME.
    pub name: Name,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

/// One resource record; rdata stays opaque ([`RData::Opaque`]) except for A and CNAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner name.
    pub name: Name,
    /// TYPE.
    pub rtype: u16,
    /// CLASS.
    pub rclass: u16,
    /// TTL in seconds.
    pub ttl: u32,
    /// What the record holds.
    pub data: RData,
}

/// A record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An alias target.
    Cname(Name),
    /// Any other type: where its rdata lies in the message, and how long it is.
    Opaque {
        /// Offset of the rdata.
        offset: usize,
        /// RDLENGTH.
        len: u16,
    },
}

/// A parsed query: its header and its one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The header.
    pub header: Header,
    /// The question.
    pub question: Question,
}

/// A parsed response: header, question (if any) and up to [`MAX_RECORDS`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The header.
    pub header: Header,
    /// The question, if QDCOUNT is 1.
    pub question: Option<Question>,
    /// The answer section (the first [`MAX_RECORDS`]).
    pub answers: Vec<Record>,
}

fn read_u8(buf: &[u8], at: usize) -> Result<u8, WireError> {
    buf.get(at).copied().ok_or(WireError::Truncated { at })
}

fn read_u16(buf: &[u8], at: usize) -> Result<u16, WireError> {
    match buf.get(at..at.saturating_add(2)) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(WireError::Truncated { at }),
    }
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, WireError> {
    match buf.get(at..at.saturating_add(4)) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(WireError::Truncated { at }),
    }
}

/// Reads the name at `start`; returns it and the offset just after it (after the first
/// pointer, if it was compressed).
pub fn read_name(buf: &[u8], start: usize) -> Result<(Name, usize), WireError> {
    let mut name = Name::default();
    let mut pos = start;
    // Where the next pointer must point below: strictly backwards, so no loops.
    let mut limit = start;
    let mut after = None;
    let mut pointers = 0;
    let mut wire_len = 1;
    loop {
        let len = read_u8(buf, pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, after.unwrap_or(pos + 1)));
            }
            0x00 => {
                let len = usize::from(len);
                wire_len += 1 + len;
                if wire_len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                let label = buf
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(WireError::Truncated { at: pos + 1 })?;
                name.labels.push(label.to_vec());
                pos += 1 + len;
            }
            0xc0 => {
                let target = usize::from(read_u16(buf, pos)? & 0x3fff);
                pointers += 1;
                if target >= limit || pointers > MAX_POINTERS {
                    return Err(WireError::BadPointer { at: pos });
                }
                after.get_or_insert(pos + 2);
                limit = target;
                pos = target;
            }
            _ => return Err(WireError::BadLabel { byte: len, at: pos }),
        }
    }
}

fn read_question(buf: &[u8], at: usize) -> Result<(Question, usize), WireError> {
    let (name, at) = read_name(buf, at)?;
    let qtype = read_u16(buf, at)?;
    let qclass = read_u16(buf, at + 2)?;
    Ok((
        Question {
            name,
            qtype,
            qclass,
        },
        at + 4,
    ))
}

fn read_record(buf: &[u8], at: usize) -> Result<(Record, usize), WireError> {
    let (name, at) = read_name(buf, at)?;
    let rtype = read_u16(buf, at)?;
    let rclass = read_u16(buf, at + 2)?;
    let ttl = read_u32(buf, at + 4)?;
    let len = read_u16(buf, at + 8)?;
    let offset = at + 10;
    let end = offset + usize::from(len);
    let rdata = buf
        .get(offset..end)
        .ok_or(WireError::Truncated { at: offset })?;
    let data = match (rtype, rclass) {
        (TYPE_A, CLASS_IN) => match rdata {
            &[a, b, c, d] => RData::A(Ipv4Addr::new(a, b, c, d)),
            _ => return Err(WireError::BadA { len }),
        },
        (TYPE_CNAME, CLASS_IN) => {
            let (target, next) = read_name(buf, offset)?;
            if next != end {
                return Err(WireError::Truncated { at: next });
            }
            RData::Cname(target)
        }
        _ => RData::Opaque { offset, len },
    };
    Ok((
        Record {
            name,
            rtype,
            rclass,
            ttl,
            data,
        },
        end,
    ))
}

/// Parses a query: exactly one question; other sections are not read.
pub fn parse_query(buf: &[u8]) -> Result<Query, WireError> {
    let header = Header::parse(buf)?;
    if header.qdcount != 1 {
        return Err(WireError::QuestionCount {
            count: header.qdcount,
        });
    }
    let (question, _) = read_question(buf, HEADER_LEN)?;
    Ok(Query { header, question })
}

/// Parses a response: the question (if one) and the first [`MAX_RECORDS`] answers.
pub fn parse_response(buf: &[u8]) -> Result<Response, WireError> {
    let header = Header::parse(buf)?;
    let mut at = HEADER_LEN;
    let question = match header.qdcount {
        0 => None,
        1 => {
            let (q, next) = read_question(buf, at)?;
            at = next;
            Some(q)
        }
        count => return Err(WireError::QuestionCount { count }),
    };
    let count = usize::from(header.ancount).min(MAX_RECORDS);
    let mut answers = Vec::with_capacity(count);
    for _ in 0..count {
        let (record, next) = read_record(buf, at)?;
        answers.push(record);
        at = next;
    }
    Ok(Response {
        header,
        question,
        answers,
    })
}

/// A query for `question` with `id`, recursion desired, nothing but the question.
pub fn write_query(id: u16, question: &Question) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 4);
    Header {
        id,
        flags: 0x0100,
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: 0,
    }
    .write(&mut out);
    write_question(question, &mut out);
    out
}

fn write_question(question: &Question, out: &mut Vec<u8>) {
    question.name.write(out);
    out.extend_from_slice(&question.qtype.to_be_bytes());
    out.extend_from_slice(&question.qclass.to_be_bytes());
}

/// An answer-less response to the query with `header` (ID, opcode and RD kept; RA set),
/// echoing `question` if known.
pub fn write_error(header: &Header, question: Option<&Question>, rcode: Rcode) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 4);
    let flags = 0x8000 | 0x0080 | (header.flags & 0x7900) | rcode as u16;
    Header {
        id: header.id,
        flags,
        qdcount: u16::from(question.is_some()),
        ancount: 0,
        nscount: 0,
        arcount: 0,
    }
    .write(&mut out);
    if let Some(q) = question {
        write_question(q, &mut out);
    }
    out
}

/// A response with A records, for tests and fake upstreams: `answers` are `(address, ttl)`
/// for the question's name.
pub fn write_a_response(id: u16, question: &Question, answers: &[(Ipv4Addr, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        id,
        flags: 0x8180,
        qdcount: 1,
        ancount: u16::try_from(answers.len()).unwrap_or(u16::MAX),
        nscount: 0,
        arcount: 0,
    }
    .write(&mut out);
    write_question(question, &mut out);
    for (addr, ttl) in answers.iter().take(usize::from(u16::MAX)) {
        // A pointer to the question's name, right after the header.
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}
