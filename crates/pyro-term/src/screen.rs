//! A minimal terminal: a grid of characters, a cursor, scrollback committed as text, and an
//! alternate screen. It implements [`vte::Perform`]; see the crate docs for its semantics.

use vte::{Params, Perform};

const BLANK: char = ' ';
const TAB: usize = 8;

/// A `rows`×`cols` grid of characters; `wraps[r]` says row `r` was soft-wrapped into row
/// `r + 1` (autowrap at the right margin), so the text joins them without a newline.
#[derive(Debug, Clone)]
struct Grid {
    cols: usize,
    rows: usize,
    cells: Vec<char>,
    wraps: Vec<bool>,
}

impl Grid {
    fn new(cols: usize, rows: usize) -> Grid {
        Grid {
            cols,
            rows,
            cells: vec![BLANK; cols * rows],
            wraps: vec![false; rows],
        }
    }

    fn row(&self, r: usize) -> &[char] {
        &self.cells[r * self.cols..(r + 1) * self.cols]
    }

    fn row_mut(&mut self, r: usize) -> &mut [char] {
        &mut self.cells[r * self.cols..(r + 1) * self.cols]
    }

    /// The length of row `r` without its trailing blanks.
    fn trimmed_len(&self, r: usize) -> usize {
        self.row(r)
            .iter()
            .rposition(|&c| c != BLANK)
            .map_or(0, |i| i + 1)
    }

    fn last_content_row(&self) -> Option<usize> {
        (0..self.rows).rev().find(|&r| self.trimmed_len(r) > 0)
    }

    fn clear_rows(&mut self, from: usize, to: usize) {
        self.cells[from * self.cols..to * self.cols].fill(BLANK);
        self.wraps[from..to].fill(false);
    }

    /// Moves rows `top+n..=bottom` up to `top`, blanking the `n` rows freed at the bottom.
    fn shift_up(&mut self, top: usize, bottom: usize, n: usize) {
        let n = n.min(bottom + 1 - top);
        let cols = self.cols;
        self.cells
            .copy_within((top + n) * cols..(bottom + 1) * cols, top * cols);
        self.wraps.copy_within(top + n..bottom + 1, top);
        self.clear_rows(bottom + 1 - n, bottom + 1);
    }

    /// Moves rows `top..=bottom-n` down to `top+n`, blanking the `n` rows freed at the top.
    fn shift_down(&mut self, top: usize, bottom: usize, n: usize) {
        let n = n.min(bottom + 1 - top);
        let cols = self.cols;
        self.cells
            .copy_within(top * cols..(bottom + 1 - n) * cols, (top + n) * cols);
        self.wraps.copy_within(top..bottom + 1 - n, top + n);
        self.clear_rows(top, top + n);
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    row: usize,
    col: usize,
    /// A character was written in the last column: the next one wraps first (xterm's
    /// deferred wrap), so a line exactly `cols` wide followed by CR LF makes no blank row.
    pending_wrap: bool,
}

/// The main screen and its cursor, kept while the alternate screen is shown.
#[derive(Debug, Clone)]
struct SavedMain {
    grid: Grid,
    cursor: Cursor,
}

/// The terminal state; [`Term::text`] is what [`crate::render_plain`] returns.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    grid: Grid,
    cursor: Cursor,
    saved_cursor: Cursor,
    /// Set while the alternate screen is shown.
    main: Option<SavedMain>,
    /// The scroll region, inclusive.
    top: usize,
    bottom: usize,
    autowrap: bool,
    /// Rows scrolled off the top of the main screen, joined as in the output.
    committed: String,
    committed_chars: usize,
    committed_rows: usize,
    committed_last_wraps: bool,
    /// Once `committed_chars` passes this, the text cannot fit: stop working.
    limit: usize,
    overflow: bool,
}

impl Term {
    /// An empty screen; `cols` and `rows` are at least 1. Once the committed text is longer
    /// than `limit` characters the terminal stops (see [`Term::overflowed`]).
    pub(crate) fn new(cols: usize, rows: usize, limit: usize) -> Term {
        Term {
            grid: Grid::new(cols, rows),
            cursor: Cursor::default(),
            saved_cursor: Cursor::default(),
            main: None,
            top: 0,
            bottom: rows - 1,
            autowrap: true,
            committed: String::new(),
            committed_chars: 0,
            committed_rows: 0,
            committed_last_wraps: false,
            limit,
            overflow: false,
        }
    }

    /// Feeds `bytes` through a fresh parser: the caller cuts only where the parser is in
    /// its ground state, so a fresh one behaves as one that saw everything before. With
    /// `finish`, an incomplete character at the end is shown as U+FFFD.
    pub(crate) fn feed(&mut self, bytes: &[u8], finish: bool) {
        let mut parser = vte::Parser::new();
        let _read = parser.advance_until_terminated(self, bytes);
        if finish
            && !self.overflow
            && matches!(crate::scan::tail(bytes), crate::scan::Tail::PartialUtf8(_))
        {
            self.print(char::REPLACEMENT_CHARACTER);
        }
    }

    /// Whether the committed text alone is longer than the limit given to [`Term::new`].
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The rendered text: committed rows, then (while the alternate screen is shown) the
    /// main screen's rows with content, then the current screen's rows.
    pub(crate) fn text(&self) -> String {
        let mut out = self.committed.clone();
        self.write_screens(&mut out);
        out
    }

    /// The number of characters in [`Term::text`].
    pub(crate) fn text_chars(&self) -> usize {
        let mut screens = String::new();
        self.write_screens(&mut screens);
        self.committed_chars + screens.chars().count()
    }

    fn write_screens(&self, out: &mut String) {
        let mut joiner = Joiner {
            started: self.committed_rows > 0,
            glue: self.committed_last_wraps,
        };
        if let Some(main) = &self.main {
            if let Some(last) = main.grid.last_content_row() {
                write_rows(out, &mut joiner, &main.grid, last, None);
            }
            if let Some(last) = self.grid.last_content_row() {
                write_rows(out, &mut joiner, &self.grid, last, None);
            }
        } else {
            // The main screen shows rows up to the cursor's, and the cursor's row up to the
            // cursor: "a\n" is "a\n", and text cut before a space keeps the space.
            let last = self
                .grid
                .last_content_row()
                .unwrap_or(0)
                .max(self.cursor.row);
            write_rows(out, &mut joiner, &self.grid, last, Some(self.cursor));
        }
    }

    fn alternate(&self) -> bool {
        self.main.is_some()
    }

    fn commit_top_row(&mut self) {
        let wraps = self.grid.wraps[0];
        let len = if wraps {
            self.grid.cols
        } else {
            self.grid.trimmed_len(0)
        };
        if self.committed_rows > 0 && !self.committed_last_wraps {
            self.committed.push('\n');
            self.committed_chars += 1;
        }
        self.committed.extend(&self.grid.row(0)[..len]);
        self.committed_chars += len;
        self.committed_rows += 1;
        self.committed_last_wraps = wraps;
        if self.committed_chars > self.limit {
            self.overflow = true;
        }
    }

    /// Scrolls the region up `n` rows; rows leaving the top of the main screen are committed.
    fn scroll_up(&mut self, n: usize) {
        let n = n.min(self.bottom + 1 - self.top);
        if self.top == 0 && !self.alternate() {
            for _ in 0..n {
                self.commit_top_row();
                self.grid.shift_up(0, self.bottom, 1);
            }
        } else {
            self.grid.shift_up(self.top, self.bottom, n);
        }
    }

    fn scroll_down(&mut self, n: usize) {
        self.grid.shift_down(self.top, self.bottom, n);
    }

    /// Moves down one row, scrolling at the bottom of the scroll region.
    fn index(&mut self) {
        self.cursor.pending_wrap = false;
        if self.cursor.row == self.bottom {
            self.scroll_up(1);
        } else if self.cursor.row + 1 < self.grid.rows {
            self.cursor.row += 1;
        }
    }

    fn reverse_index(&mut self) {
        self.cursor.pending_wrap = false;
        if self.cursor.row == self.top {
            self.scroll_down(1);
        } else {
            self.cursor.row = self.cursor.row.saturating_sub(1);
        }
    }

    fn goto(&mut self, row: usize, col: usize) {
        self.cursor = Cursor {
            row: row.min(self.grid.rows - 1),
            col: col.min(self.grid.cols - 1),
            pending_wrap: false,
        };
    }

    fn erase_in_row(&mut self, row: usize, from: usize, to: usize) {
        let to = to.min(self.grid.cols);
        if from < to {
            self.grid.row_mut(row)[from..to].fill(BLANK);
        }
        if to == self.grid.cols {
            self.grid.wraps[row] = false;
        }
    }

    fn erase_display(&mut self, mode: u16) {
        let Cursor { row, col, .. } = self.cursor;
        let rows = self.grid.rows;
        match mode {
            0 => {
                self.erase_in_row(row, col, usize::MAX);
                self.grid.clear_rows(row + 1, rows);
            }
            1 => {
                self.grid.clear_rows(0, row);
                self.erase_in_row(row, 0, col + 1);
            }
            2 | 3 => self.grid.clear_rows(0, rows),
            _ => {}
        }
    }

    fn erase_line(&mut self, mode: u16) {
        let Cursor { row, col, .. } = self.cursor;
        match mode {
            0 => self.erase_in_row(row, col, usize::MAX),
            1 => self.erase_in_row(row, 0, col + 1),
            2 => self.erase_in_row(row, 0, usize::MAX),
            _ => {}
        }
    }

    /// Shows the alternate screen (blank) or the main screen again. The cursor stays where
    /// it is, except that leaving through 1049 restores where it was on entering.
    fn set_alternate(&mut self, on: bool, restore_cursor: bool) {
        match (on, self.main.take()) {
            (true, None) => {
                let grid = Grid::new(self.grid.cols, self.grid.rows);
                let grid = std::mem::replace(&mut self.grid, grid);
                self.main = Some(SavedMain {
                    grid,
                    cursor: self.cursor,
                });
            }
            (false, Some(main)) => {
                self.grid = main.grid;
                if restore_cursor {
                    self.cursor = main.cursor;
                }
            }
            (_, main) => self.main = main,
        }
    }

    fn set_mode(&mut self, params: &Params, private: bool, on: bool) {
        if !private {
            return;
        }
        for param in params.iter() {
            match param.first().copied().unwrap_or(0) {
                7 => self.autowrap = on,
                1049 => self.set_alternate(on, true),
                1047 | 47 => self.set_alternate(on, false),
                _ => {}
            }
        }
    }

    fn reset(&mut self) {
        self.grid.clear_rows(0, self.grid.rows);
        self.cursor = Cursor::default();
        self.top = 0;
        self.bottom = self.grid.rows - 1;
        self.autowrap = true;
    }
}

/// Joins rows into text: a newline between rows unless the first was soft-wrapped.
struct Joiner {
    started: bool,
    glue: bool,
}

/// Writes rows `0..=last` of `grid`, each without trailing blanks unless it wraps into the
/// next written row; with `cursor`, that cursor's row keeps its blanks up to the cursor.
fn write_rows(
    out: &mut String,
    joiner: &mut Joiner,
    grid: &Grid,
    last: usize,
    cursor: Option<Cursor>,
) {
    for r in 0..=last {
        if joiner.started && !joiner.glue {
            out.push('\n');
        }
        let wraps = grid.wraps[r] && r < last;
        let mut len = if wraps {
            grid.cols
        } else {
            grid.trimmed_len(r)
        };
        if let Some(c) = cursor.filter(|c| c.row == r) {
            len = len.max(if c.pending_wrap { grid.cols } else { c.col });
        }
        out.extend(&grid.row(r)[..len]);
        joiner.started = true;
        joiner.glue = wraps;
    }
}

/// The first parameter as a mode selector (absent is 0).
fn mode(params: &Params) -> u16 {
    params
        .iter()
        .next()
        .and_then(|p| p.first().copied())
        .unwrap_or(0)
}

/// The `i`th parameter, or `default` when it is absent or 0.
fn arg(params: &Params, i: usize, default: u16) -> usize {
    let v = params
        .iter()
        .nth(i)
        .and_then(|p| p.first().copied())
        .unwrap_or(0);
    usize::from(if v == 0 { default } else { v })
}

impl Perform for Term {
    fn print(&mut self, c: char) {
        if self.overflow || c == '\u{7f}' {
            return;
        }
        if self.cursor.pending_wrap {
            self.grid.wraps[self.cursor.row] = true;
            self.cursor.col = 0;
            self.index();
        }
        let Cursor { row, col, .. } = self.cursor;
        self.grid.row_mut(row)[col] = c;
        if col + 1 < self.grid.cols {
            self.cursor.col += 1;
        } else if self.autowrap {
            self.cursor.pending_wrap = true;
        }
    }

    fn execute(&mut self, byte: u8) {
        if self.overflow {
            return;
        }
        match byte {
            // LF, VT, FF. On the main screen a line feed also returns the carriage, as a
            // PTY's `onlcr` does for programs in cooked mode; full-screen programs on the
            // alternate screen run raw and mean a bare line feed.
            0x0A..=0x0C => {
                self.index();
                if !self.alternate() {
                    self.cursor.col = 0;
                }
            }
            b'\r' => {
                self.cursor.col = 0;
                self.cursor.pending_wrap = false;
            }
            0x08 => {
                self.cursor.col = self.cursor.col.saturating_sub(1);
                self.cursor.pending_wrap = false;
            }
            b'\t' => {
                let next = (self.cursor.col / TAB + 1) * TAB;
                self.cursor.col = next.min(self.grid.cols - 1);
                self.cursor.pending_wrap = false;
            }
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: char) {
        if self.overflow || ignore {
            return;
        }
        let private = intermediates == b"?";
        if !intermediates.is_empty() && !private {
            return;
        }
        let Cursor { row, col, .. } = self.cursor;
        let n = arg(params, 0, 1);
        match (action, private) {
            ('h', _) => self.set_mode(params, private, true),
            ('l', _) => self.set_mode(params, private, false),
            (_, true) => {}
            ('A', _) => self.goto(row.saturating_sub(n), col),
            ('B' | 'e', _) => self.goto(row.saturating_add(n), col),
            ('C' | 'a', _) => self.goto(row, col.saturating_add(n)),
            ('D', _) => self.goto(row, col.saturating_sub(n)),
            ('E', _) => self.goto(row.saturating_add(n), 0),
            ('F', _) => self.goto(row.saturating_sub(n), 0),
            ('G' | '`', _) => self.goto(row, n - 1),
            ('d', _) => self.goto(n - 1, col),
            ('H' | 'f', _) => self.goto(n - 1, arg(params, 1, 1) - 1),
            ('J', _) => self.erase_display(mode(params)),
            ('K', _) => self.erase_line(mode(params)),
            ('L' | 'M', _) if (self.top..=self.bottom).contains(&row) => {
                if action == 'L' {
                    self.grid.shift_down(row, self.bottom, n);
                } else {
                    self.grid.shift_up(row, self.bottom, n);
                }
                self.goto(row, 0);
            }
            ('S', _) => self.scroll_up(n),
            ('T', _) => self.scroll_down(n),
            ('@' | 'P' | 'X', _) => {
                let cols = self.grid.cols;
                let n = n.min(cols - col);
                let line = self.grid.row_mut(row);
                match action {
                    '@' => {
                        line.copy_within(col..cols - n, col + n);
                        line[col..col + n].fill(BLANK);
                    }
                    'P' => {
                        line.copy_within(col + n..cols, col);
                        line[cols - n..].fill(BLANK);
                    }
                    _ => line[col..col + n].fill(BLANK),
                }
                self.cursor.pending_wrap = false;
            }
            ('r', _) => {
                let top = arg(params, 0, 1) - 1;
                let bottom = arg(params, 1, u16::MAX).min(self.grid.rows) - 1;
                if top < bottom {
                    self.top = top;
                    self.bottom = bottom;
                    self.goto(0, 0);
                }
            }
            ('s', _) => self.saved_cursor = self.cursor,
            ('u', _) => {
                let saved = self.saved_cursor;
                self.goto(saved.row, saved.col);
            }
            _ => {}
        }
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], _ignore: bool, byte: u8) {
        // Charset designations (`ESC ( B`) and the like carry intermediates: no effect.
        if self.overflow || !intermediates.is_empty() {
            return;
        }
        match byte {
            b'7' => self.saved_cursor = self.cursor,
            b'8' => {
                let saved = self.saved_cursor;
                self.goto(saved.row, saved.col);
            }
            b'D' => self.index(),
            b'E' => {
                self.index();
                self.cursor.col = 0;
            }
            b'M' => self.reverse_index(),
            b'c' => self.reset(),
            _ => {}
        }
    }

    fn terminated(&self) -> bool {
        self.overflow
    }
}
