//! The parsed form of a patch: files, hunks and lines.

/// A parsed patch: one [`FilePatch`] per file section, in patch order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patch {
    /// The file sections. No path occurs twice as an old path, nor twice as a new path.
    pub files: Vec<FilePatch>,
}

/// What a file section does to its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// Creates `new_path` (`--- /dev/null`, `new file mode`).
    Added,
    /// Removes `old_path` (`+++ /dev/null`, `deleted file mode`); its hunks must empty it.
    Deleted,
    /// Changes the content (and possibly the mode) of a file that keeps its path.
    Modified,
    /// Moves `old_path` to `new_path` (`rename from`/`rename to`), with or without hunks.
    Renamed,
    /// Only changes the mode (`old mode`/`new mode`, no hunks).
    ModeChanged,
}

/// One file section of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePatch {
    /// The path before the change, without the `a/` prefix; `None` for [`FileKind::Added`].
    pub old_path: Option<String>,
    /// The path after the change, without the `b/` prefix; `None` for [`FileKind::Deleted`].
    pub new_path: Option<String>,
    /// The git mode before the change (`0o100644`, `0o100755`, `0o120000` for a symlink), when
    /// the patch states it (`old mode`, `deleted file mode`, or the mode on the `index` line).
    pub old_mode: Option<u32>,
    /// The git mode after the change, when the patch states it (`new mode`, `new file mode`,
    /// or the mode on the `index` line).
    pub new_mode: Option<u32>,
    /// What the section does.
    pub kind: FileKind,
    /// The hunks, in patch order.
    pub hunks: Vec<Hunk>,
    /// The 1-based line of the patch where the section starts.
    pub line: usize,
}

impl FilePatch {
    /// The path to name this section by: the new path, or the old one for a deletion.
    pub fn path(&self) -> &str {
        self.new_path
            .as_deref()
            .or(self.old_path.as_deref())
            .unwrap_or_default()
    }
}

/// One `@@ -a,b +c,d @@` hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// `a`: the first old line the hunk covers (1-based); when `old_count` is 0, the line
    /// after which the new lines go (0 = the start of the file).
    pub old_start: usize,
    /// `b`: how many old lines (context and removed) the hunk covers.
    pub old_count: usize,
    /// `c`: the first new line, in the same convention as `old_start`.
    pub new_start: usize,
    /// `d`: how many new lines (context and added) the hunk produces.
    pub new_count: usize,
    /// The text after the closing `@@` (a function name, usually), without the separating
    /// space; empty when there is none.
    pub section: String,
    /// The body, in patch order.
    pub lines: Vec<Line>,
    /// The 1-based line of the patch holding the `@@` header.
    pub line: usize,
}

impl Hunk {
    /// The lines the hunk expects in the old file (context and removed), in order.
    pub fn old_lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().filter_map(|line| match line {
            Line::Context(text) | Line::Removed(text) => Some(text.as_slice()),
            Line::Added(_) => None,
        })
    }

    /// The lines the hunk leaves in the new file (context and added), in order.
    pub fn new_lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().filter_map(|line| match line {
            Line::Context(text) | Line::Added(text) => Some(text.as_slice()),
            Line::Removed(_) => None,
        })
    }
}

/// One line of a hunk body. The text is the file's line as bytes, *including* its trailing
/// `\n`, which is absent only where a `\ No newline at end of file` marker followed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// ` text`: present on both sides.
    Context(Vec<u8>),
    /// `-text`: only in the old file.
    Removed(Vec<u8>),
    /// `+text`: only in the new file.
    Added(Vec<u8>),
}

/// Git's file modes.
pub(crate) mod mode {
    /// A regular file.
    pub const REGULAR: u32 = 0o100644;
    /// An executable regular file.
    pub const EXECUTABLE: u32 = 0o100755;
    /// A symbolic link; its content is the target.
    pub const SYMLINK: u32 = 0o120000;
    /// The file-type bits of a mode.
    pub const TYPE_MASK: u32 = 0o170000;
    /// A gitlink (submodule commit).
    pub const GITLINK: u32 = 0o160000;
    /// The file-type bits of a regular file.
    pub const TYPE_REGULAR: u32 = 0o100000;

    /// Whether a mode (git's or `st_mode`) names a symlink.
    pub fn is_symlink(mode: u32) -> bool {
        mode & TYPE_MASK == SYMLINK
    }
}
