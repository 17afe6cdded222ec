use super::*;
use proptest::prelude::*;

/// Renders `raw` whole on a 120×40 screen.
fn plain(raw: &[u8]) -> String {
    let r = render_plain(raw, 120, 40, usize::MAX, true);
    assert_eq!(r.consumed, raw.len());
    r.text
}

/// Reads `raw` the way the host does: from `consumed` on, `max_chars` at a time.
fn read_all(raw: &[u8], cols: u16, rows: u16, max_chars: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let mut cursor = 0;
    while cursor < raw.len() {
        let r = render_plain(&raw[cursor..], cols, rows, max_chars, true);
        assert!(r.consumed > 0, "no progress at {cursor}");
        assert!(r.text.chars().count() <= max_chars);
        texts.push(r.text);
        cursor += r.consumed;
    }
    texts
}

#[test]
fn carriage_return_overwrites() {
    assert_eq!(plain(b"10%\r20%\r100%\n"), "100%\n");
    assert_eq!(plain(b"hello\rab"), "abllo");
}

#[test]
fn backspace_moves_back_without_erasing() {
    assert_eq!(plain(b"ab\x08c"), "ac");
    assert_eq!(plain(b"ab\x08"), "ab");
    assert_eq!(plain(b"\x08\x08x"), "x");
}

#[test]
fn erase_line_modes() {
    assert_eq!(plain(b"hello\x1b[2K\rworld"), "world");
    assert_eq!(plain(b"hello\x1b[3D\x1b[K"), "he");
    assert_eq!(plain(b"hello\x1b[3D\x1b[0K!"), "he!");
    assert_eq!(plain(b"hello\x1b[3D\x1b[1K"), "   lo");
}

#[test]
fn erase_display_modes() {
    assert_eq!(plain(b"a\nb\nc\x1b[2;1H\x1b[J"), "a\n");
    assert_eq!(plain(b"a\nb\nc\x1b[2;1H\x1b[1J"), "\n\nc");
    assert_eq!(plain(b"a\nb\nc\x1b[2J\x1b[H"), "");
    assert_eq!(plain(b"a\nb\x1b[3J\x1b[Hx"), "x");
}

#[test]
fn clearing_the_screen_keeps_committed_scrollback() {
    let r = render_plain(b"one\ntwo\nthree\x1b[2J\x1b[Hfour", 20, 2, usize::MAX, true);
    assert_eq!(r.text, "one\nfour");
}

#[test]
fn colours_and_other_sgr_are_stripped() {
    assert_eq!(
        plain(b"\x1b[1;31mred\x1b[0m plain \x1b[38;5;208mo\x1b[m"),
        "red plain o"
    );
    assert_eq!(plain(b"\x1b[38:2::1:2:3mx"), "x");
}

#[test]
fn charset_designation_leaves_nothing() {
    assert_eq!(plain(b"\x1b(Bok\x1b)0\x1b(B"), "ok");
}

#[test]
fn strings_are_swallowed() {
    assert_eq!(plain(b"\x1b]0;my title\x07prompt$ "), "prompt$ ");
    assert_eq!(plain(b"\x1b]2;title\x1b\\a"), "a");
    assert_eq!(plain(b"\x1bP+q544e\x1b\\b"), "b");
    assert_eq!(plain(b"\x1b_apc\x1b\\c\x1b^pm\x1b\\\x1bXsos\x1b\\"), "c");
}

#[test]
fn bell_and_other_controls_are_ignored() {
    assert_eq!(plain(b"a\x07b\x00c\x7fd\x0ee"), "abcde");
}

#[test]
fn tab_goes_to_the_next_multiple_of_eight() {
    assert_eq!(plain(b"a\tb\n12345678\tc"), "a       b\n12345678        c");
    let r = render_plain(b"abc\t\tx", 10, 2, usize::MAX, true);
    assert_eq!(r.text, "abc      x", "a tab stops at the last column");
}

#[test]
fn a_long_line_comes_back_as_one_line() {
    let line = "x".repeat(150) + " " + &"y".repeat(149);
    assert_eq!(line.len(), 300);
    assert_eq!(
        plain(format!("{line}\n$ ").as_bytes()),
        format!("{line}\n$ ")
    );
    // Wrapped rows that scroll off are committed joined, blanks at the wrap kept.
    let r = render_plain(format!("{line}\n$ ").as_bytes(), 120, 2, usize::MAX, true);
    assert_eq!(r.text, format!("{line}\n$ "));
    let r = render_plain(b"abc defg", 4, 1, usize::MAX, true);
    assert_eq!(r.text, "abc defg");
}

#[test]
fn a_line_exactly_as_wide_as_the_screen_makes_no_blank_row() {
    let r = render_plain(b"abcd\r\nefgh\r\n", 4, 5, usize::MAX, true);
    assert_eq!(r.text, "abcd\nefgh\n");
}

#[test]
fn autowrap_can_be_turned_off() {
    let r = render_plain(b"\x1b[?7labcdef\x1b[?7hgh", 4, 3, usize::MAX, true);
    assert_eq!(r.text, "abcgh", "g overwrote f; h wrapped (soft: joined)");
}

#[test]
fn scrolled_off_rows_are_committed() {
    let r = render_plain(b"1\n2\n3\n4\n5", 10, 2, usize::MAX, true);
    assert_eq!(r.text, "1\n2\n3\n4\n5");
}

#[test]
fn trailing_newline_is_kept_and_blank_rows_dropped() {
    assert_eq!(plain(b"a\n"), "a\n");
    assert_eq!(plain(b"a"), "a");
    assert_eq!(plain(b"a\n\n"), "a\n\n");
    assert_eq!(plain(b"a   \nb"), "a\nb");
    assert_eq!(plain(b""), "");
    assert_eq!(plain(b"a\r\n"), "a\n");
}

#[test]
fn cursor_moves() {
    assert_eq!(plain(b"abc\x1b[2Dx"), "axc");
    assert_eq!(plain(b"a\x1b[3Cb"), "a   b");
    assert_eq!(plain(b"a\nb\x1b[Ac"), "ac\nb");
    assert_eq!(plain(b"a\x1b[2Bb"), "a\n\n b");
    assert_eq!(plain(b"a\nb\x1b[Fc"), "c\nb");
    assert_eq!(plain(b"a\x1b[Eb"), "a\nb");
    assert_eq!(plain(b"abc\x1b[2Gx"), "axc");
    assert_eq!(plain(b"a\x1b[3dx"), "a\n\n x");
    assert_eq!(plain(b"\x1b[2;3Hx\x1b[1;1fy"), "y\n  x");
    assert_eq!(
        plain(b"\x1b[999;999Hx"),
        format!("{}{}x", "\n".repeat(39), " ".repeat(119))
    );
    assert_eq!(plain(b"ab\x1b7\r\ncd\x1b8x"), "abx\ncd");
    assert_eq!(plain(b"ab\x1b[s\r\ncd\x1b[uy"), "aby\ncd");
}

#[test]
fn insert_and_delete_characters_and_lines() {
    assert_eq!(plain(b"abcdef\x1b[4G\x1b[2P"), "abcf");
    assert_eq!(plain(b"abcdef\x1b[2G\x1b[2@"), "a  bcdef");
    assert_eq!(plain(b"abcdef\x1b[2G\x1b[3X"), "a   ef");
    assert_eq!(plain(b"a\nb\nc\x1b[2;1H\x1b[L"), "a\n\nb\nc");
    assert_eq!(plain(b"a\nb\nc\x1b[1;1H\x1b[2M"), "c");
}

#[test]
fn scroll_region_scrolls_within_it() {
    // A 4-row screen, region rows 1..=3; the status line on row 4 stays.
    let raw = b"\x1b[?1049h\x1b[4;1Hstatus\x1b[1;3r\x1b[1;1Ha\r\nb\r\nc\r\nd";
    let r = render_plain(raw, 10, 4, usize::MAX, true);
    assert_eq!(r.text, "b\nc\nd\nstatus");
    // Reverse index at the top of the region scrolls it down.
    let r = render_plain(
        &[&raw[..], b"\x1b[1;1H\x1bMz"].concat(),
        10,
        4,
        usize::MAX,
        true,
    );
    assert_eq!(r.text, "z\nb\nc\nstatus");
}

/// A vim-like program: alternate screen, clear, then lines drawn by cursor position.
const VIM: &[u8] = b"\x1b[?1049h\x1b[2J\x1b[H\x1b[1;1Hfn main() {\x1b[2;1H    body\x1b[3;1H}\
\x1b[5;1H~\x1b[6;1H\x1b[7mNORMAL\x1b[m  main.rs\x1b[2;5H";

#[test]
fn a_full_screen_program_renders_its_screen() {
    let r = render_plain(VIM, 80, 6, usize::MAX, true);
    assert_eq!(r.text, "fn main() {\n    body\n}\n\n~\nNORMAL  main.rs");
}

#[test]
fn leaving_the_alternate_screen_restores_the_prior_text() {
    let raw = [b"$ vim main.rs\r\n".as_slice(), VIM, b"\x1b[?1049l$ "].concat();
    let r = render_plain(&raw, 80, 6, usize::MAX, true);
    assert_eq!(r.text, "$ vim main.rs\n$ ");
}

#[test]
fn the_text_before_a_full_screen_program_is_kept_above_it() {
    let raw = [b"$ vim main.rs\r\n".as_slice(), VIM].concat();
    let r = render_plain(&raw, 80, 6, usize::MAX, true);
    assert_eq!(
        r.text,
        "$ vim main.rs\nfn main() {\n    body\n}\n\n~\nNORMAL  main.rs"
    );
}

#[test]
fn rows_scrolled_off_the_alternate_screen_are_not_committed() {
    let raw = b"\x1b[?1049h1\r\n2\r\n3\r\n4";
    assert_eq!(render_plain(raw, 10, 2, usize::MAX, true).text, "3\n4");
    // 47 and 1047 switch screens too.
    let raw = b"main\x1b[?47h\x1b[Halt\x1b[?47l!";
    assert_eq!(
        render_plain(raw, 10, 2, usize::MAX, true).text,
        "mai!",
        "47 keeps the cursor"
    );
}

#[test]
fn a_line_feed_on_the_alternate_screen_keeps_the_column() {
    let r = render_plain(b"\x1b[?1049hab\ncd", 10, 3, usize::MAX, true);
    assert_eq!(r.text, "ab\n  cd");
}

#[test]
fn a_split_csi_is_held_back_and_rendered_whole_next_time() {
    assert_eq!(safe_end(b"ab\x1b[3"), 2);
    let first = render_plain(b"ab\x1b[3", 80, 24, 1000, false);
    assert_eq!(
        first,
        Rendered {
            text: "ab".into(),
            consumed: 2
        }
    );
    let second = render_plain(b"\x1b[31mred", 80, 24, 1000, false);
    assert_eq!(
        second,
        Rendered {
            text: "red".into(),
            consumed: 8
        }
    );
    // At the end of the stream the incomplete sequence is consumed.
    assert_eq!(render_plain(b"ab\x1b[3", 80, 24, 1000, true).consumed, 5);
}

#[test]
fn a_split_utf8_character_is_held_back() {
    let euro = "€".as_bytes();
    let raw = [b"price ".as_slice(), &euro[..2]].concat();
    assert_eq!(safe_end(&raw), 6);
    let r = render_plain(&raw, 80, 24, 1000, false);
    assert_eq!(
        r,
        Rendered {
            text: "price ".into(),
            consumed: 6
        }
    );
    let r = render_plain(&[euro, b"5"].concat(), 80, 24, 1000, false);
    assert_eq!(r.text, "€5");
    // At the end it is consumed as U+FFFD.
    let r = render_plain(&raw, 80, 24, 1000, true);
    assert_eq!(
        r,
        Rendered {
            text: "price \u{FFFD}".into(),
            consumed: 8
        }
    );
}

#[test]
fn an_unterminated_osc_is_held_back() {
    let r = render_plain(b"ok\x1b]0;tit", 80, 24, 1000, false);
    assert_eq!(
        r,
        Rendered {
            text: "ok".into(),
            consumed: 2
        }
    );
    let r = render_plain(b"\x1b]0;tit", 80, 24, 1000, false);
    assert_eq!(
        r,
        Rendered {
            text: String::new(),
            consumed: 0
        }
    );
}

#[test]
fn max_chars_cuts_at_line_ends_and_the_next_read_continues() {
    let raw: String = (0..1000).map(|n| format!("line {n}\n")).collect();
    let r = render_plain(raw.as_bytes(), 120, 24, 50, true);
    // "line 0\n" .. "line 6\n" is 49 characters; "line 7\n" would make 56.
    assert_eq!(
        r.text,
        (0..7).map(|n| format!("line {n}\n")).collect::<String>()
    );
    assert_eq!(r.consumed, 49);
    let next = render_plain(&raw.as_bytes()[r.consumed..], 120, 24, 50, true);
    assert!(next.text.starts_with("line 7\nline 8\n"), "{:?}", next.text);
    assert_eq!(
        read_all(raw.as_bytes(), 120, 24, 50).concat(),
        plain(raw.as_bytes())
    );
}

#[test]
fn max_chars_cuts_a_line_too_long_to_fit() {
    let raw = "x".repeat(300) + "\nnext\n";
    let r = render_plain(raw.as_bytes(), 120, 24, 50, true);
    assert_eq!(
        r,
        Rendered {
            text: "x".repeat(50),
            consumed: 50
        }
    );
    assert_eq!(read_all(raw.as_bytes(), 120, 24, 50).concat(), raw);
    // The cut does not split a sequence or a character.
    let raw = "\x1b[1mé".repeat(100);
    let r = render_plain(raw.as_bytes(), 120, 24, 10, true);
    assert_eq!(r.text, "é".repeat(10));
    assert_eq!(
        r.consumed,
        10 * "\x1b[1mé".len() + 4,
        "and the SGR after, which renders nothing"
    );
}

#[test]
fn max_chars_zero_consumes_only_what_renders_empty() {
    assert_eq!(
        render_plain(b"\x1b[1m\x1b]0;t\x07", 80, 24, 0, true).consumed,
        10
    );
    assert_eq!(render_plain(b"abc", 80, 24, 0, true), Rendered::default());
}

#[test]
fn a_unit_too_big_to_fit_is_consumed_and_cut() {
    let r = render_plain(b"\x1b[10;1Hx", 80, 24, 3, true);
    assert_eq!(
        r,
        Rendered {
            text: "\n\n\n".into(),
            consumed: 7
        }
    );
}

#[test]
fn sizes_are_clamped() {
    assert_eq!(render_plain(b"abc", 0, 0, 100, true).text, "abc");
    assert_eq!(render_plain(b"ab\ncd", 0, 0, 100, true).text, "ab\ncd");
    let r = render_plain(b"\x1b[5000;5000Hx", u16::MAX, u16::MAX, usize::MAX, true);
    assert_eq!(r.text.lines().count(), 1000);
}

#[test]
fn a_mebibyte_renders_whole() {
    let raw: String = (0..70_000)
        .map(|n| format!("\x1b[32mline\x1b[m {n}\r\n"))
        .collect();
    let raw = &raw.as_bytes()[..1 << 20];
    let r = render_plain(raw, 120, 40, 100_000, false);
    assert!(r.consumed > 0 && r.text.chars().count() <= 100_000);
    assert!(r.text.ends_with('\n'));
}

#[test]
fn decode_text_bounds_and_holds_back_a_split_character() {
    assert_eq!(
        decode_text(b"hello", 3, false),
        Rendered {
            text: "hel".into(),
            consumed: 3
        }
    );
    assert_eq!(
        decode_text(b"a\xe2\x82", 10, false),
        Rendered {
            text: "a".into(),
            consumed: 1
        }
    );
    assert_eq!(
        decode_text(b"a\xe2\x82", 10, true),
        Rendered {
            text: "a\u{FFFD}".into(),
            consumed: 3
        }
    );
    assert_eq!(
        decode_text(b"a\xffb\x1b[1m", 10, false),
        Rendered {
            text: "a\u{FFFD}b\x1b[1m".into(),
            consumed: 7
        }
    );
    assert_eq!(
        decode_text("€€".as_bytes(), 1, false),
        Rendered {
            text: "€".into(),
            consumed: 3
        }
    );
    assert_eq!(
        decode_text(b"a\xff", 1, false),
        Rendered {
            text: "a".into(),
            consumed: 1
        }
    );
}

/// Bytes biased towards what terminals see: controls, escape introducers, parameters, finals,
/// UTF-8 pieces.
fn terminal_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop::sample::select(
        b"\x1b\x1b\x1b[[]]P_;;?0123459mHJKABCDhlrLM@PX\x07\x18\x1a\x9c\n\n\r\x08\t (B\\ \xe2\x82\xac\xf0\x9f"
            .to_vec(),
    );
    prop::collection::vec(
        prop_oneof![3 => interesting, 1 => any::<u8>(), 2 => 0x20u8..0x7f],
        0..max_len,
    )
}

/// What the screen sees of a parse; string contents and hook/unhook are left out: a cut
/// before the ESC that ends a string drops its dispatch, which draws nothing.
#[derive(Debug, Default, PartialEq)]
struct Events(Vec<String>);

impl vte::Perform for Events {
    fn print(&mut self, c: char) {
        self.0.push(format!("p{c}"));
    }
    fn execute(&mut self, byte: u8) {
        self.0.push(format!("x{byte}"));
    }
    fn csi_dispatch(&mut self, params: &vte::Params, inter: &[u8], ignore: bool, action: char) {
        let params: Vec<Vec<u16>> = params.iter().map(<[u16]>::to_vec).collect();
        self.0.push(format!("c{params:?}{inter:?}{ignore}{action}"));
    }
    fn esc_dispatch(&mut self, inter: &[u8], ignore: bool, byte: u8) {
        self.0.push(format!("e{inter:?}{ignore}{byte}"));
    }
}

fn events(parts: &[&[u8]]) -> Events {
    let mut events = Events::default();
    for part in parts {
        vte::Parser::new().advance(&mut events, part);
    }
    events
}

proptest! {
    #[test]
    fn render_never_panics_and_holds_its_bounds(
        raw in terminal_bytes(400),
        cols in 0u16..40,
        rows in 0u16..8,
        max_chars in 0usize..60,
        at_end: bool,
    ) {
        let r = render_plain(&raw, cols, rows, max_chars, at_end);
        prop_assert!(r.text.chars().count() <= max_chars);
        prop_assert!(r.consumed <= raw.len());
        if !at_end {
            prop_assert_eq!(safe_end(&raw[..r.consumed]), r.consumed);
        }
        let can_progress = at_end || safe_end(&raw) > 0;
        if max_chars > 0 && !raw.is_empty() && can_progress {
            prop_assert!(r.consumed > 0);
        }
    }

    #[test]
    fn render_of_arbitrary_bytes_never_panics(raw in prop::collection::vec(any::<u8>(), 0..300)) {
        let r = render_plain(&raw, 20, 5, 30, false);
        prop_assert!(r.text.chars().count() <= 30);
        prop_assert!(r.consumed <= raw.len());
    }

    #[test]
    fn a_whole_render_that_fits_consumes_up_to_the_safe_end(
        raw in terminal_bytes(300),
        at_end: bool,
    ) {
        let r = render_plain(&raw, 30, 6, usize::MAX, at_end);
        prop_assert_eq!(r.consumed, if at_end { raw.len() } else { safe_end(&raw) });
    }

    /// Cutting at `safe_end` and parsing the two parts with fresh parsers is what one parser
    /// over the whole sees: the mirror of vte's states is right.
    #[test]
    fn a_cut_at_safe_end_parses_like_the_whole(raw in terminal_bytes(300), split in 0usize..300) {
        let prefix = &raw[..split.min(raw.len())];
        let cut = safe_end(prefix);
        prop_assert_eq!(events(&[&raw[..cut], &raw[cut..]]), events(&[&raw]));
    }

    #[test]
    fn lines_read_in_pieces_concatenate_to_the_whole(
        text in "[ -~\n]{0,300}",
        cols in 1u16..30,
        rows in 1u16..6,
        max_chars in 1usize..25,
    ) {
        let whole = render_plain(text.as_bytes(), cols, rows, usize::MAX, true).text;
        prop_assert_eq!(read_all(text.as_bytes(), cols, rows, max_chars).concat(), whole);
    }

    #[test]
    fn decode_holds_its_bounds(
        raw in terminal_bytes(300),
        max_chars in 0usize..60,
        at_end: bool,
    ) {
        let r = decode_text(&raw, max_chars, at_end);
        prop_assert!(r.text.chars().count() <= max_chars);
        prop_assert!(r.consumed <= raw.len());
        if max_chars > 0 && !raw.is_empty() && (at_end || scan::partial_utf8(&raw) != Some(0)) {
            prop_assert!(r.consumed > 0);
        }
        // The cut splits no character: the rest decodes as it does in the whole.
        let rest = decode_text(&raw[r.consumed..], usize::MAX, at_end);
        let whole = decode_text(&raw, usize::MAX, at_end);
        prop_assert_eq!(r.text + &rest.text, whole.text);
    }

    #[test]
    fn decode_read_in_pieces_concatenates_to_the_whole(
        raw in terminal_bytes(300),
        max_chars in 1usize..25,
    ) {
        let whole = String::from_utf8_lossy(&raw).into_owned();
        prop_assert_eq!(&decode_text(&raw, usize::MAX, true).text, &whole);
        let mut out = String::new();
        let mut cursor = 0;
        while cursor < raw.len() {
            let r = decode_text(&raw[cursor..], max_chars, true);
            prop_assert!(r.consumed > 0);
            out.push_str(&r.text);
            cursor += r.consumed;
        }
        prop_assert_eq!(out, whole);
    }
}

/// `cargo test --release -p pyro-term -- --ignored --nocapture timing`: render times of
/// 1 MiB chunks in the shapes that cost the most.
#[test]
#[ignore = "a timing report, for release builds"]
fn timing() {
    let lines: String = (0..100_000)
        .map(|n| format!("\x1b[32mline\x1b[m {n}\r\n"))
        .collect();
    let redraws: String = (0..100_000)
        .map(|n| format!("\x1b[{};1Hrow {n} of a redraw", n % 40 + 1))
        .collect();
    let long_line = "word ".repeat(300_000);
    let cases = [
        ("lines, fits", lines.as_bytes(), usize::MAX),
        ("lines, 100k chars", lines.as_bytes(), 100_000),
        ("lines, 50 chars", lines.as_bytes(), 50),
        (
            "alternate-screen redraws, 100 chars",
            redraws.as_bytes(),
            100,
        ),
        ("one long line, 1000 chars", long_line.as_bytes(), 1000),
    ];
    let redraws = [b"\x1b[?1049h".as_slice(), redraws.as_bytes()].concat();
    for (name, raw, max) in cases
        .into_iter()
        .chain([("alt redraws, 100 chars", &redraws[..], 100)])
    {
        let raw = &raw[..raw.len().min(1 << 20)];
        let start = std::time::Instant::now();
        let r = render_plain(raw, 120, 40, max, false);
        println!(
            "{name}: {:?}, consumed {}, {} chars",
            start.elapsed(),
            r.consumed,
            r.text.chars().count()
        );
    }
}
