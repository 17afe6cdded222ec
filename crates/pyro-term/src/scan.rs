//! Where a byte stream can be cut: a mirror of `vte`'s parser states, reduced to what tells
//! whether the parser is back in its ground state.
//!
//! `vte` keeps its state private, so [`Scan`] repeats its transition table (vte 0.15,
//! `src/lib.rs`) for the facts that matter here: which byte ends a sequence, and that ESC,
//! CAN and SUB act from any state. A sequence's bytes never reach the screen, so the state
//! after the last ESC depends only on the bytes after it.

/// How far back an unterminated sequence may start and still hold back the whole chunk's
/// end: past this, a chunk that *starts* inside it is consumed whole so reads make progress.
pub(crate) const MAX_SEQUENCE: usize = 64 * 1024;

const ESC: u8 = 0x1B;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1A;

/// The parser states that matter for cutting, as in `vte::State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    Ground,
    Escape,
    EscapeIntermediate,
    /// Any CSI state: all of them end at a final byte 0x40..=0x7E.
    Csi,
    DcsEntry,
    DcsParam,
    DcsIntermediate,
    DcsIgnore,
    DcsPassthrough,
    Osc,
    /// SOS, PM and APC strings: ended only by ESC, CAN or SUB.
    SosPmApc,
}

impl Scan {
    /// The state after `byte`.
    pub(crate) fn step(self, byte: u8) -> Scan {
        match byte {
            CAN | SUB => return Scan::Ground,
            ESC => return Scan::Escape,
            _ => {}
        }
        match self {
            Scan::Ground => Scan::Ground,
            Scan::Escape => match byte {
                0x20..=0x2F => Scan::EscapeIntermediate,
                0x50 => Scan::DcsEntry,
                0x58 | 0x5E | 0x5F => Scan::SosPmApc,
                0x5B => Scan::Csi,
                0x5D => Scan::Osc,
                0x30..=0x7E => Scan::Ground,
                _ => Scan::Escape,
            },
            Scan::EscapeIntermediate => match byte {
                0x30..=0x7E => Scan::Ground,
                _ => Scan::EscapeIntermediate,
            },
            Scan::Csi => match byte {
                0x40..=0x7E => Scan::Ground,
                _ => Scan::Csi,
            },
            Scan::DcsEntry => match byte {
                0x20..=0x2F => Scan::DcsIntermediate,
                0x30..=0x3F => Scan::DcsParam,
                0x40..=0x7E => Scan::DcsPassthrough,
                _ => Scan::DcsEntry,
            },
            Scan::DcsParam => match byte {
                0x20..=0x2F => Scan::DcsIntermediate,
                0x3C..=0x3F => Scan::DcsIgnore,
                0x40..=0x7E => Scan::DcsPassthrough,
                _ => Scan::DcsParam,
            },
            Scan::DcsIntermediate => match byte {
                0x30..=0x3F => Scan::DcsIgnore,
                0x40..=0x7E => Scan::DcsPassthrough,
                _ => Scan::DcsIntermediate,
            },
            Scan::DcsIgnore => Scan::DcsIgnore,
            Scan::DcsPassthrough => match byte {
                0x9C => Scan::Ground,
                _ => Scan::DcsPassthrough,
            },
            Scan::Osc => match byte {
                0x07 => Scan::Ground,
                _ => Scan::Osc,
            },
            Scan::SosPmApc => Scan::SosPmApc,
        }
    }
}

/// What the end of a chunk holds, for a parser that started it in the ground state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// The parser is in the ground state with nothing pending.
    Clean,
    /// An incomplete UTF-8 character starts at this offset.
    PartialUtf8(usize),
    /// An unterminated escape sequence starts at this offset.
    Sequence(usize),
}

/// Classifies the end of `raw`.
pub(crate) fn tail(raw: &[u8]) -> Tail {
    let Some(esc) = raw.iter().rposition(|&b| b == ESC) else {
        return ground_tail(raw, 0, raw.len(), Tail::Clean);
    };
    match run_to_ground(raw, esc, raw.len()) {
        Some(ground_from) => ground_tail(raw, ground_from, raw.len(), Tail::Clean),
        None => {
            // The cut goes before the ESC, or, when that ESC ends an earlier sequence (the ST
            // of an OSC, an ESC after an ESC), before that sequence. If the ground text
            // before ends in an incomplete character (which the ESC turns into U+FFFD),
            // before that too.
            let mut esc = esc;
            loop {
                let ground_from = match raw[..esc].iter().rposition(|&b| b == ESC) {
                    None => 0,
                    Some(prev) => match run_to_ground(raw, prev, esc) {
                        Some(ground_from) => ground_from,
                        None => {
                            esc = prev;
                            continue;
                        }
                    },
                };
                return ground_tail(raw, ground_from, esc, Tail::Sequence(esc));
            }
        }
    }
}

/// Runs the mirror over `raw[esc..end]` (`raw[esc]` is ESC): where the ground state
/// resumes, if it does. Nothing after an ESC but another ESC can leave the ground state.
fn run_to_ground(raw: &[u8], esc: usize, end: usize) -> Option<usize> {
    let mut state = Scan::Ground;
    for (i, &b) in raw[..end].iter().enumerate().skip(esc) {
        state = state.step(b);
        if state == Scan::Ground {
            return Some(i + 1);
        }
    }
    None
}

/// The tail of ground text `raw[from..end]`: `otherwise` unless it ends in an incomplete
/// character. The cut then goes before it, and before any incomplete one that this one
/// ends (it is U+FFFD in the whole but would be held back if the cut left it last), a
/// few times at most.
fn ground_tail(raw: &[u8], from: usize, end: usize, otherwise: Tail) -> Tail {
    let mut cut = None;
    let mut end = end;
    for _ in 0..8 {
        match partial_utf8(&raw[from..end]) {
            Some(start) => {
                end = from + start;
                cut = Some(end);
            }
            None => break,
        }
    }
    match (cut, otherwise) {
        (None, otherwise) => otherwise,
        (Some(cut), Tail::Sequence(_)) => Tail::Sequence(cut),
        (Some(cut), _) => Tail::PartialUtf8(cut),
    }
}

/// Where an incomplete UTF-8 character at the end of `text` starts, if one does. Like
/// `str::from_utf8` (which `vte` uses), an incomplete character is a valid prefix of one.
pub(crate) fn partial_utf8(text: &[u8]) -> Option<usize> {
    (1..=text.len().min(3)).find_map(|k| {
        let start = text.len() - k;
        match std::str::from_utf8(&text[start..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => Some(start),
            _ => None,
        }
    })
}

/// See [`crate::safe_end`].
pub(crate) fn safe_end(raw: &[u8]) -> usize {
    match tail(raw) {
        Tail::Clean => raw.len(),
        Tail::PartialUtf8(start) => start,
        // An unterminated sequence longer than any sensible one at the very start of a chunk
        // would stall the reader: consume it (its rest is rendered as text by the next read).
        Tail::Sequence(0) if raw.len() > MAX_SEQUENCE => raw.len(),
        Tail::Sequence(start) => start,
    }
}

/// The first offset after 0 at which a parser that started `raw` is back in the ground
/// state with no partial character, if any.
pub(crate) fn first_safe(raw: &[u8]) -> Option<usize> {
    let mut state = Scan::Ground;
    let mut ground_from = 0;
    for (i, &b) in raw.iter().enumerate() {
        let next = state.step(b);
        if next == Scan::Ground {
            if state != Scan::Ground {
                ground_from = i + 1;
            }
            let end = i + 1;
            if partial_utf8(&raw[ground_from.max(end.saturating_sub(3))..end]).is_none() {
                return Some(end);
            }
        }
        state = next;
    }
    None
}

/// The offsets just after each line feed that the parser meets in the ground state, below
/// `end`: the line boundaries a cut prefers.
pub(crate) fn line_ends(raw: &[u8], end: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut state = Scan::Ground;
    for (i, &b) in raw[..end].iter().enumerate() {
        if b == b'\n' && state == Scan::Ground && i + 1 < end {
            out.push(i + 1);
        }
        state = state.step(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_clean() {
        assert_eq!(tail(b"hello\n"), Tail::Clean);
        assert_eq!(tail(b""), Tail::Clean);
        assert_eq!(safe_end(b"hello"), 5);
    }

    #[test]
    fn unterminated_sequences_hold_back_their_start() {
        assert_eq!(safe_end(b"ab\x1b"), 2);
        assert_eq!(safe_end(b"ab\x1b["), 2);
        assert_eq!(safe_end(b"ab\x1b[3"), 2);
        assert_eq!(safe_end(b"ab\x1b[31;1"), 2);
        assert_eq!(safe_end(b"ab\x1b]0;title"), 2);
        assert_eq!(
            safe_end(b"ab\x1b]0;title\x1b"),
            2,
            "the ST's ESC ends the OSC"
        );
        assert_eq!(safe_end(b"ab\x1b\x1b"), 2);
        assert_eq!(safe_end(b"ab\x1b[1m\x1b"), 6);
        assert_eq!(safe_end(b"ab\x1bP1$r"), 2);
        assert_eq!(safe_end(b"ab\x1b_apc"), 2);
        assert_eq!(safe_end(b"ab\x1b("), 2);
    }

    #[test]
    fn terminated_sequences_are_whole() {
        assert_eq!(safe_end(b"ab\x1b[31m"), 7);
        assert_eq!(safe_end(b"ab\x1b]0;t\x07"), 8);
        assert_eq!(safe_end(b"ab\x1b]0;t\x1b\\"), 9);
        assert_eq!(safe_end(b"ab\x1b(B"), 5);
        assert_eq!(safe_end(b"ab\x1b[3\x18"), 6, "CAN aborts a sequence");
        assert_eq!(safe_end(b"\x1b[1mx\xe2\x82\xac"), 8);
    }

    #[test]
    fn partial_utf8_holds_back_its_start() {
        assert_eq!(safe_end(b"a\xe2"), 1);
        assert_eq!(safe_end(b"a\xe2\x82"), 1);
        assert_eq!(safe_end(b"a\xe2\x82\xac"), 4);
        assert_eq!(safe_end(b"a\xf0\x9f\x98"), 1);
        // Invalid, not incomplete: vte prints U+FFFD for it now.
        assert_eq!(safe_end(b"a\x82"), 2);
        assert_eq!(safe_end(b"a\xff"), 2);
        // A UTF-8 lead inside a CSI is not a character.
        assert_eq!(safe_end(b"a\x1b[\xe2m"), 5);
        assert_eq!(safe_end(b"\x1b[m\xe2\x82"), 3);
    }

    #[test]
    fn a_long_unterminated_sequence_at_the_start_is_consumed() {
        let mut raw = b"\x1b]52;c;".to_vec();
        raw.resize(MAX_SEQUENCE + 1, b'A');
        assert_eq!(safe_end(&raw), raw.len());
        raw.insert(0, b'x');
        assert_eq!(
            safe_end(&raw),
            1,
            "held back where the sequence starts after 0"
        );
    }

    #[test]
    fn first_safe_skips_sequences_and_characters() {
        assert_eq!(first_safe(b"abc"), Some(1));
        assert_eq!(first_safe(b"\x1b[31mx"), Some(5));
        assert_eq!(first_safe(b"\xe2\x82\xacx"), Some(3));
        assert_eq!(first_safe(b"\x1b[31"), None);
        assert_eq!(first_safe(b"\xe2\x82"), None);
    }

    #[test]
    fn line_ends_are_in_the_ground_state() {
        assert_eq!(line_ends(b"a\nb\n", 4), vec![2]);
        assert_eq!(line_ends(b"a\n\x1b]x\ny\x07\nz", 10), vec![2, 9]);
    }
}
