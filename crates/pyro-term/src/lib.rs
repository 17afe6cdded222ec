//! Plain-text rendering of PTY shell transcripts.
//!
//! An agent reads a shell's output as text: [`render_plain`] runs a chunk of raw terminal
//! bytes through a real terminal parser ([`vte`]) into a minimal screen model and returns the
//! text a person would read: escape sequences gone, `\r` overwrites, backspaces and erases
//! applied, full-screen programs shown as their screen. [`decode_text`] is the raw variant
//! (UTF-8 only). Both return a [`Rendered`]: the text, bounded by `max_chars`, and how many
//! bytes it accounts for, which is where the caller's next read starts.
//!
//! # Reading a stream in pieces
//!
//! Each call renders its own bytes on a fresh screen. Two rules make successive calls lose
//! nothing:
//!
//! - **The cut is safe.** Unless the stream is over (`at_end`), `consumed` never ends inside
//!   an escape sequence or a UTF-8 character ([`safe_end`]), so a sequence split across two
//!   reads is rendered whole by the second.
//! - **The bound cuts bytes, not text.** When the render does not fit in `max_chars`,
//!   `consumed` is a shorter prefix whose whole render fits: whole lines when at least one
//!   fits, else a prefix of the first line. The rest is the next read's.
//!
//! For output without cursor movement (plain lines), the texts of successive calls
//! concatenate to the text of one call over everything.
//!
//! # The screen model
//!
//! A `rows`×`cols` grid. Printing overwrites at the cursor and wraps at the right margin; a
//! wrapped row joins the next without a newline, so long lines come back whole. A row that
//! scrolls off the top of the main screen is *committed*: it stays in the text, and no erase
//! can take it back. The text is the committed rows, then the screen's rows up to the last
//! with content or the cursor's, trailing blanks trimmed (the cursor's row keeps its blanks
//! up to the cursor, so a cut after a space keeps the space). On the main screen a line feed
//! also returns the carriage (as a PTY's `onlcr` does); on the alternate screen it does not.
//! While the alternate screen is shown, the text is the committed rows, the main screen's
//! rows with content, then the alternate screen's: what the program drew, without losing
//! what came before it. Rows scrolled off the alternate screen are not committed.

mod scan;
mod screen;

use screen::Term;

/// Rows and columns are clamped to this.
const MAX_SIDE: u16 = 1000;

/// What a render produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    /// The text, at most `max_chars` characters.
    pub text: String,
    /// How many bytes of the input the text accounts for: where the next read starts.
    pub consumed: usize,
}

/// Renders terminal output `raw` as plain text of at most `max_chars` chars (Unicode scalar
/// values), on a `cols`×`rows` screen (each clamped to 1..=1000).
///
/// `consumed` is how many bytes of `raw` the text accounts for: the caller's next read starts
/// there, so nothing is lost. `consumed` never ends inside an escape sequence or a UTF-8
/// character unless `at_end` (the stream is over), so a sequence split across reads is
/// rendered whole by the next read. When the whole render of `raw` fits, `consumed` is
/// `raw.len()` (less such an incomplete tail). When it does not fit, `consumed` is the
/// longest prefix ending at a line end whose render fits; if no line fits, the longest safe
/// prefix of the first line that does; if not even the first character (or sequence) fits,
/// that one is consumed and its render cut, so a call with `max_chars > 0` on input with a
/// safe boundary always makes progress.
pub fn render_plain(raw: &[u8], cols: u16, rows: u16, max_chars: usize, at_end: bool) -> Rendered {
    let cols = usize::from(cols.clamp(1, MAX_SIDE));
    let rows = usize::from(rows.clamp(1, MAX_SIDE));
    let end = if at_end { raw.len() } else { safe_end(raw) };
    let finish = |pos: usize| at_end && pos == raw.len();
    let fresh = Term::new(cols, rows, max_chars);

    // The render of `raw[..pos]`, continued from `base` (the render of `raw[..from]`), if
    // it fits.
    let try_render = |base: &Term, from: usize, pos: usize| -> Option<Term> {
        let mut term = base.clone();
        term.feed(&raw[from..pos], finish(pos));
        (!term.overflowed() && term.text_chars() <= max_chars).then_some(term)
    };

    if let Some(term) = try_render(&fresh, 0, end) {
        return Rendered {
            text: term.text(),
            consumed: end,
        };
    }

    // The render is not monotonic in the prefix (`\r`, erases), so this finds a prefix that
    // fits whose next candidate does not. Each try continues from the best prefix so far,
    // so the bytes fed over the whole search are at most about twice `end`.
    let mut best = fresh.clone();
    let mut best_pos = 0;
    let lines = scan::line_ends(raw, end);
    let (mut lo, mut hi) = (0, lines.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match try_render(&best, best_pos, lines[mid]) {
            Some(term) => {
                best = term;
                best_pos = lines[mid];
                lo = mid + 1;
            }
            None => hi = mid,
        }
    }
    if best_pos > 0 {
        return Rendered {
            text: best.text(),
            consumed: best_pos,
        };
    }

    // Not even the first line fits: the longest safe prefix of it that does. `hi` does not
    // fit; there is no safe offset in `best_pos+1..=lo`, so each try moves `lo` or `hi`.
    let (mut lo, mut hi) = (0, lines.first().copied().unwrap_or(end));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let pos = best_pos + safe_end(&raw[best_pos..mid]);
        if pos == best_pos {
            lo = mid;
            continue;
        }
        match try_render(&best, best_pos, pos) {
            Some(term) => {
                best = term;
                best_pos = pos;
                lo = pos;
            }
            None => hi = pos,
        }
    }
    if best_pos > 0 || max_chars == 0 {
        return Rendered {
            text: best.text(),
            consumed: best_pos,
        };
    }

    // Not even the first unit fits (a cursor move far down renders as blank lines): consume
    // it and cut its text, so that reads make progress.
    let Some(pos) = scan::first_safe(&raw[..end]).or((end > 0).then_some(end)) else {
        return Rendered::default();
    };
    let mut term = Term::new(cols, rows, usize::MAX);
    term.feed(&raw[..pos], finish(pos));
    Rendered {
        text: term.text().chars().take(max_chars).collect(),
        consumed: pos,
    }
}

/// The non-plain variant: `raw` decoded as UTF-8 (each invalid sequence → U+FFFD), at most
/// `max_chars` chars, never splitting a UTF-8 character at the end unless `at_end`;
/// `consumed` as in [`render_plain`].
pub fn decode_text(raw: &[u8], max_chars: usize, at_end: bool) -> Rendered {
    let mut text = String::new();
    let mut chars = 0;
    let mut consumed = 0;
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if chars == max_chars {
                return Rendered { text, consumed };
            }
            text.push(c);
            chars += 1;
            consumed += c.len_utf8();
        }
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        let incomplete =
            consumed + invalid.len() == raw.len() && scan::partial_utf8(invalid) == Some(0);
        if (incomplete && !at_end) || chars == max_chars {
            break;
        }
        text.push(char::REPLACEMENT_CHARACTER);
        chars += 1;
        consumed += invalid.len();
    }
    Rendered { text, consumed }
}

/// Length of the longest prefix of `raw` that does not end inside an escape sequence or a
/// UTF-8 character (what [`render_plain`] can consume when not at the end).
///
/// An unterminated sequence (a lone ESC, a CSI without its final byte, an OSC without BEL or
/// ST, a DCS/SOS/PM/APC string) or an incomplete UTF-8 character at the end is held back from
/// its start. So that reads make progress, a chunk that starts with an unterminated sequence
/// and is longer than 64 KiB is consumable whole.
pub fn safe_end(raw: &[u8]) -> usize {
    scan::safe_end(raw)
}

#[cfg(test)]
mod tests;
