//! One ext4 image as an overlay [`Layer`], read with `ext4-view` (pure Rust, read-only).
//!
//! The image is opened `O_RDONLY` and never written: `ext4-view` reads through the file it
//! is given and applies a journal's committed transactions in memory, so an image left with
//! a dirty journal (a guest that was killed) reads as the kernel would mount it, unchanged
//! on disk. The guest wrote the workspace disk, so everything read here is hostile input:
//! the superblock is checked for sizes that would make the reader allocate much before it
//! is handed over, extended attributes are parsed with bounds checks, and symlink targets
//! are capped at 4096 bytes (in the vendored crate).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ext4_view::{Ext4, Ext4Error, FileType};

use super::overlay::{Layer, MergeError, Node, NodeKind};

/// Most block groups an image may have (a guard against a forged superblock: the reader
/// keeps every group descriptor in memory). An 8 GiB disk with 4 KiB blocks has 64.
const MAX_BLOCK_GROUPS: u64 = 1 << 20;

/// An opened ext4 image, seen from `prefix` (the upper disk's tree is below `/upper`).
pub struct Image {
    fs: Ext4,
    prefix: Vec<u8>,
    /// Whiteouts, opaque directories and redirects count only in an upper layer.
    upper: bool,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("upper", &self.upper)
            .finish()
    }
}

/// Why an image could not be opened or read.
pub fn describe(e: &Ext4Error) -> String {
    e.to_string()
}

impl Image {
    /// Opens `path` read-only. `prefix` is the layer's root inside the image (`""` for the
    /// whole image); `upper` says whether overlayfs metadata counts.
    pub fn open(path: &Path, prefix: &[u8], upper: bool) -> Result<Image, String> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| format!("cannot open it: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("cannot stat it: {e}"))?
            .len();
        check_superblock(&mut file, len)?;
        let fs = Ext4::load(Box::new(file)).map_err(|e| describe(&e))?;
        Ok(Image {
            fs,
            prefix: prefix.to_vec(),
            upper,
        })
    }

    /// The path of `path` (a layer path) inside the image.
    pub fn full(&self, path: &[u8]) -> Vec<u8> {
        if self.prefix.is_empty() {
            return path.to_vec();
        }
        if path == b"/" {
            return self.prefix.clone();
        }
        let mut p = self.prefix.clone();
        p.extend_from_slice(path);
        p
    }

    /// The underlying reader.
    pub fn fs(&self) -> &Ext4 {
        &self.fs
    }

    fn node_at(&self, full: &[u8], meta: &ext4_view::Metadata) -> Result<Node, MergeError> {
        let kind = kind_of(meta.file_type());
        let size = match kind {
            NodeKind::File | NodeKind::Symlink => meta.len(),
            _ => 0,
        };
        let mut node = Node::new(kind, size, u32::from(meta.mode()) & 0o7777);
        if self.upper && matches!(kind, NodeKind::CharDevice | NodeKind::Directory) {
            let raw = self
                .fs
                .symlink_inode_bytes(path_of(full)?)
                .map_err(layer_err)?;
            if kind == NodeKind::CharDevice {
                node.whiteout = device_numbers(&raw) == (0, 0);
            } else {
                let xattrs = self.xattrs(&raw)?;
                for (name, value) in xattrs {
                    match name.as_slice() {
                        b"trusted.overlay.opaque" | b"user.overlay.opaque" => {
                            node.opaque = value.as_slice() == b"y";
                        }
                        b"trusted.overlay.redirect" | b"user.overlay.redirect" => {
                            node.redirect = Some(value);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(node)
    }

    /// The extended attributes of a raw inode: those in the inode, then those of its
    /// attribute block. Values stored in their own inode (`ea_inode`) are left out.
    fn xattrs(&self, raw: &[u8]) -> Result<Xattrs, MergeError> {
        let mut out = Vec::new();
        // In-inode: after the 128-byte base and i_extra_isize, a magic, then entries whose
        // value offsets count from the first entry.
        if raw.len() > 128 {
            let extra = usize::from(u16_at(raw, 0x80).unwrap_or(0));
            let start = 128 + extra;
            if u32_at(raw, start) == Some(XATTR_MAGIC) {
                let area = &raw[start + 4..];
                parse_entries(area, 0, area, &mut out);
            }
        }
        let lo = u64::from(u32_at(raw, 0x68).unwrap_or(0));
        let hi = u64::from(u16_at(raw, 0x76).unwrap_or(0));
        let block = (hi << 32) | lo;
        if block != 0 {
            let size = usize::try_from(self.fs.block_size()).unwrap_or(4096);
            let mut buf = vec![0u8; size];
            self.fs.read_raw_block(block, &mut buf).map_err(layer_err)?;
            if u32_at(&buf, 0) == Some(XATTR_MAGIC) {
                parse_entries(&buf, 32, &buf, &mut out);
            }
        }
        Ok(out)
    }
}

const XATTR_MAGIC: u32 = 0xEA02_0000;

/// Extended attributes: full names (`trusted.overlay.opaque`) and values.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses `ext4_xattr_entry` records in `area` from `at`; values are at `e_value_offs` in
/// `values`. Stops at the terminating zero word or at the first record that does not fit.
fn parse_entries(area: &[u8], mut at: usize, values: &[u8], out: &mut Xattrs) {
    // Each record takes at least 16 bytes, so this bounds the loop.
    while let Some(first) = u32_at(area, at) {
        if first == 0 {
            break;
        }
        let name_len = usize::from(area[at]);
        let index = area[at + 1];
        let (Some(offs), Some(inum), Some(size)) = (
            u16_at(area, at + 2),
            u32_at(area, at + 4),
            u32_at(area, at + 8),
        ) else {
            break;
        };
        let Some(name) = area.get(at + 16..at + 16 + name_len) else {
            break;
        };
        let prefix: &[u8] = match index {
            1 => b"user.",
            4 => b"trusted.",
            6 => b"security.",
            7 => b"system.",
            _ => b"",
        };
        if inum == 0 {
            let (offs, size) = (usize::from(offs), size as usize);
            if let Some(value) = offs.checked_add(size).and_then(|end| values.get(offs..end)) {
                let mut full = prefix.to_vec();
                full.extend_from_slice(name);
                out.push((full, value.to_vec()));
            }
        }
        at += (16 + name_len + 3) & !3;
    }
}

/// A device inode's (major, minor), from `i_block` (old or new encoding).
pub fn device_numbers(raw: &[u8]) -> (u32, u32) {
    let old = u32_at(raw, 0x28).unwrap_or(0);
    if old != 0 {
        return ((old >> 8) & 0xff, old & 0xff);
    }
    let new = u32_at(raw, 0x2C).unwrap_or(0);
    ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
}

fn kind_of(t: FileType) -> NodeKind {
    if t.is_dir() {
        NodeKind::Directory
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_dev() {
        NodeKind::CharDevice
    } else if t.is_block_dev() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

fn layer_err(e: Ext4Error) -> MergeError {
    match e {
        Ext4Error::NotFound => MergeError::NotFound,
        Ext4Error::NotADirectory => MergeError::NotADirectory,
        Ext4Error::TooManySymlinks => MergeError::Loop,
        e => MergeError::Layer(describe(&e)),
    }
}

fn path_of(p: &[u8]) -> Result<ext4_view::Path<'_>, MergeError> {
    ext4_view::Path::try_from(p).map_err(|e| MergeError::Layer(format!("bad path: {e}")))
}

/// Checks the superblock before the reader trusts it: the magic, a block size of 1 to 64
/// KiB, a filesystem no larger than the image file, and a bounded number of block groups.
fn check_superblock(file: &mut File, len: u64) -> Result<(), String> {
    let mut sb = [0u8; 1024];
    let read = std::io::Seek::seek(file, std::io::SeekFrom::Start(1024))
        .and_then(|_| file.read_exact(&mut sb));
    if read.is_err() {
        return Err("it is too short to hold an ext4 superblock".into());
    }
    let bad = |why: &str| Err(format!("not a usable ext4 image: {why}"));
    if u16_at(&sb, 0x38) != Some(0xEF53) {
        return bad("no ext4 superblock magic");
    }
    let log = u32_at(&sb, 0x18).unwrap_or(u32::MAX);
    if log > 6 {
        return bad("block size out of range");
    }
    let block_size = 1024u64 << log;
    let incompat = u32_at(&sb, 0x60).unwrap_or(0);
    let lo = u64::from(u32_at(&sb, 0x04).unwrap_or(0));
    let hi = if incompat & 0x80 != 0 {
        u64::from(u32_at(&sb, 0x150).unwrap_or(0))
    } else {
        0
    };
    let blocks = (hi << 32) | lo;
    if blocks
        .checked_mul(block_size)
        .is_none_or(|bytes| bytes > len)
    {
        return bad("the superblock claims more blocks than the image holds");
    }
    let per_group = u64::from(u32_at(&sb, 0x20).unwrap_or(0));
    if per_group == 0 || blocks.div_ceil(per_group) > MAX_BLOCK_GROUPS {
        return bad("block group count out of range");
    }
    Ok(())
}

impl Layer for Image {
    fn node(&self, path: &[u8]) -> Result<Option<Node>, MergeError> {
        let full = self.full(path);
        match self.fs.symlink_metadata(path_of(&full)?) {
            Ok(meta) => self.node_at(&full, &meta).map(Some),
            Err(Ext4Error::NotFound) => Ok(None),
            Err(e) => Err(layer_err(e)),
        }
    }

    fn children(&self, path: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Node)>, MergeError> {
        let full = self.full(path);
        let mut out = Vec::new();
        for entry in self.fs.read_dir(path_of(&full)?).map_err(layer_err)? {
            let entry = entry.map_err(layer_err)?;
            let name = entry.file_name().as_ref().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            if out.len() > max {
                break;
            }
            let meta = entry.metadata().map_err(layer_err)?;
            let child = super::overlay::child_path(&full, &name);
            let node = self.node_at(&child, &meta)?;
            out.push((name, node));
        }
        Ok(out)
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>, MergeError> {
        let full = self.full(path);
        let target = self.fs.read_link(path_of(&full)?).map_err(layer_err)?;
        Ok(target.as_ref().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_decode_both_encodings() {
        let mut raw = vec![0u8; 256];
        assert_eq!(device_numbers(&raw), (0, 0));
        raw[0x28..0x2C].copy_from_slice(&0x0103u32.to_le_bytes());
        assert_eq!(device_numbers(&raw), (1, 3));
        raw[0x28..0x2C].copy_from_slice(&0u32.to_le_bytes());
        // new_encode_dev(259, 300): minor low byte, major << 8, minor high bits << 12.
        let new = (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12);
        raw[0x2C..0x30].copy_from_slice(&(new as u32).to_le_bytes());
        assert_eq!(device_numbers(&raw), (259, 300));
    }

    #[test]
    fn xattr_records_parse_and_garbage_stops_the_parse() {
        // One record: name "overlay.opaque" in namespace 4 (trusted), value "y".
        let mut area = vec![0u8; 64];
        let name = b"overlay.opaque";
        area[0] = name.len() as u8;
        area[1] = 4;
        area[2..4].copy_from_slice(&48u16.to_le_bytes());
        area[8..12].copy_from_slice(&1u32.to_le_bytes());
        area[16..16 + name.len()].copy_from_slice(name);
        area[48] = b'y';
        let mut out = Vec::new();
        parse_entries(&area, 0, &area, &mut out);
        assert_eq!(out, [(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]);
        // A value outside the area, and a name running off the end: skipped, no panic.
        let mut bad = area.clone();
        bad[2..4].copy_from_slice(&60u16.to_le_bytes());
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut out = Vec::new();
        parse_entries(&bad, 0, &bad, &mut out);
        assert!(out.is_empty());
        let mut bad = vec![0xffu8; 20];
        bad[0] = 200;
        parse_entries(&bad, 0, &bad, &mut out);
        assert!(out.is_empty());
    }
}
