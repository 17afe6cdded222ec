//! The guest kernel: Debian's `linux-image-amd64`, its bzImage unpacked to an ELF `vmlinux`,
//! and the handful of modules the guest's first stage loads.
//!
//! Firecracker loads only ELF kernels, and QEMU's `microvm` boots an ELF through its Xen PVH
//! entry point (twice as fast as a bzImage under TCG, which would first decompress itself in
//! the emulator). So the bzImage's compressed payload is located through its setup header
//! (or, failing that, by the stream's magic bytes), decompressed with the matching tool, and
//! the result checked: an x86-64 ELF with a `PT_NOTE` holding the PVH entry note (name
//! `Xen`, type 18).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{ImageError, Result};
use crate::fsutil::HashingWriter;
use crate::tools::{self, Tool};

/// The modules the guest loads, in load order (dependencies first).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "crc16",
    "mbcache",
    "jbd2",
    "crc32c_generic",
    "ext4",
    "overlay",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_console",
];

/// The virtio-net driver and what it needs, in load order (dependencies first: `virtio_net`
/// uses `net_failover`, which uses `failover`). They are put into the initramfs beside
/// [`GUEST_MODULES`] but listed separately, and the agent loads them only when the kernel
/// command line carries `pyro.net=` (a guest without a NIC does not pay for them).
pub const NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

/// Every module the kernel artifacts carry: [`GUEST_MODULES`], then [`NET_MODULES`].
pub fn all_modules() -> impl Iterator<Item = &'static str> {
    GUEST_MODULES.iter().chain(NET_MODULES).copied()
}

/// The Debian package the kernel comes from.
pub const KERNEL_PACKAGE: &str = "linux-image-amd64";

/// ELF note type of the Xen PVH 32-bit entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// What is wrong with a kernel image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Neither the setup header nor a scan found an xz, gzip or zstd stream.
    #[error("no compressed payload found (looked for xz, gzip and zstd streams)")]
    NoPayload,
    /// The decompressed payload does not start with the ELF magic.
    #[error("the decompressed payload is not an ELF file")]
    NotElf,
    /// The ELF is not 64-bit little-endian x86-64.
    #[error("the ELF is not a 64-bit little-endian x86-64 image")]
    UnsupportedElf,
    /// Program headers or notes point outside the file.
    #[error("the ELF is truncated: {what} lies outside the file")]
    Truncated {
        /// Which structure.
        what: &'static str,
    },
    /// No PVH entry note: QEMU cannot boot this ELF with `-kernel`.
    #[error(
        "the ELF has no Xen PVH entry note (PT_NOTE, name \"Xen\", type 18); \
         QEMU cannot boot it directly (kernel built without CONFIG_PVH?)"
    )]
    NoPvhNote,
    /// Reading the image failed.
    #[error("read failed")]
    Read(#[source] io::Error),
}

/// Compression formats the kernel's payload may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// xz (Debian's choice).
    Xz,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    const ALL: [Compression; 3] = [Compression::Xz, Compression::Zstd, Compression::Gzip];

    /// The stream's leading magic bytes.
    pub fn magic(self) -> &'static [u8] {
        match self {
            Compression::Xz => &[0xFD, b'7', b'z', b'X', b'Z', 0x00],
            Compression::Gzip => &[0x1F, 0x8B, 0x08],
            Compression::Zstd => &[0x28, 0xB5, 0x2F, 0xFD],
        }
    }

    fn of(bytes: &[u8]) -> Option<Compression> {
        Self::ALL.into_iter().find(|c| bytes.starts_with(c.magic()))
    }

    fn tool(self) -> Tool {
        match self {
            Compression::Xz => tools::XZ,
            Compression::Gzip => tools::GZIP,
            Compression::Zstd => tools::ZSTD,
        }
    }

    /// Arguments that decompress stdin to stdout, stopping after the first stream.
    fn args(self) -> &'static [&'static str] {
        match self {
            Compression::Xz => &["-dc", "--single-stream"],
            Compression::Gzip => &["-dc"],
            Compression::Zstd => &["-dc"],
        }
    }

    /// Exit codes that still mean "decompressed fine" (gzip warns about trailing bytes
    /// with 2).
    fn ok_code(self, code: i32) -> bool {
        code == 0 || (self == Compression::Gzip && code == 2)
    }
}

/// A compressed stream found inside a bzImage.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// Its format.
    pub compression: Compression,
    /// Its offset in the image.
    pub offset: usize,
    /// The bytes to decompress (exact when the setup header says where the payload ends,
    /// else everything to the end of the image).
    pub data: &'a [u8],
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The payload as the x86 boot protocol (2.08+) describes it: after the setup sectors, at
/// `payload_offset`, `payload_length` bytes long.
fn payload_from_header(image: &[u8]) -> Option<Payload<'_>> {
    if image.get(0x202..0x206)? != b"HdrS" || le16(image, 0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(le32(image, 0x248)?).ok()?;
    let len = usize::try_from(le32(image, 0x24c)?).ok()?;
    let mut data = image.get(start..start.checked_add(len)?)?;
    let compression = Compression::of(data)?;
    if compression == Compression::Zstd {
        // The kernel's build appends the uncompressed size (le32) after a zstd stream, and
        // zstd rejects trailing bytes. (xz stops at the end of its stream; gzip gets none.)
        data = &data[..data.len().saturating_sub(4)];
    }
    Some(Payload {
        compression,
        offset: start,
        data,
    })
}

/// Every place a compressed stream might start: the setup header's answer first, then each
/// occurrence of a magic (xz, then zstd, then gzip), at most `limit` in all.
pub fn payload_candidates(image: &[u8], limit: usize) -> Vec<Payload<'_>> {
    let mut out = Vec::new();
    if let Some(p) = payload_from_header(image) {
        out.push(p);
    }
    for c in Compression::ALL {
        let magic = c.magic();
        let mut from = 0;
        while out.len() < limit {
            let Some(pos) = image[from..].windows(magic.len()).position(|w| w == magic) else {
                break;
            };
            let offset = from + pos;
            if !out.iter().any(|p| p.offset == offset) {
                out.push(Payload {
                    compression: c,
                    offset,
                    data: &image[offset..],
                });
            }
            from = offset + 1;
        }
    }
    out
}

/// Decompresses `input` with the matching command-line tool into `out`.
fn decompress(c: Compression, input: &[u8], out: &mut dyn Write) -> Result<()> {
    let tool = c.tool();
    let program = tools::require(tool, "unpack the kernel image")?;
    let label = format!("{} {}", tool.name, c.args().join(" "));
    let mut child = Command::new(&program)
        .args(c.args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ImageError::Spawn {
            program: label.clone(),
            source: e,
        })?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ImageError::Spawn {
            program: label,
            source: io::Error::other("pipes were not set up"),
        });
    };
    let (copy, err_text) = std::thread::scope(|s| {
        s.spawn(move || {
            // A tool that stops early (end of stream) closes its stdin: not an error here.
            let _ = stdin.write_all(input);
        });
        let err_reader = s.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let copy = io::copy(&mut stdout, out);
        (copy, err_reader.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|e| ImageError::Spawn {
        program: label.clone(),
        source: e,
    })?;
    let failed = |status: String, extra: String| ImageError::CommandFailed {
        program: label.clone(),
        status,
        stderr_tail: tools::tail_of(&format!("{err_text}{extra}")),
        hint: None,
    };
    if let Err(e) = copy {
        return Err(failed("output could not be written".into(), e.to_string()));
    }
    match status.code() {
        Some(code) if c.ok_code(code) => Ok(()),
        _ => Err(failed(tools::describe_status(status), String::new())),
    }
}

/// What [`check_pvh_elf`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfKernel {
    /// The ELF entry point.
    pub entry: u64,
    /// The 32-bit physical PVH entry point from the `Xen` note.
    pub pvh_entry: u64,
}

/// Checks that `r` holds a 64-bit x86-64 ELF with a Xen PVH entry note.
///
/// # Errors
///
/// [`KernelError::NotElf`], [`KernelError::UnsupportedElf`], [`KernelError::Truncated`] or
/// [`KernelError::NoPvhNote`].
pub fn check_pvh_elf<R: Read + Seek>(r: &mut R) -> Result<ElfKernel, KernelError> {
    let file_len = r.seek(SeekFrom::End(0)).map_err(KernelError::Read)?;
    let mut ehdr = [0u8; 64];
    r.seek(SeekFrom::Start(0)).map_err(KernelError::Read)?;
    read_exact_or(r, &mut ehdr, KernelError::NotElf)?;
    if &ehdr[..4] != b"\x7fELF" {
        return Err(KernelError::NotElf);
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian, e_machine 62 = x86-64.
    if ehdr[4] != 2 || ehdr[5] != 1 || le16(&ehdr, 18) != Some(62) {
        return Err(KernelError::UnsupportedElf);
    }
    let bad = |what| KernelError::Truncated { what };
    let entry = le64(&ehdr, 24).ok_or(bad("e_entry"))?;
    let phoff = le64(&ehdr, 32).ok_or(bad("e_phoff"))?;
    let phentsize = u64::from(le16(&ehdr, 54).ok_or(bad("e_phentsize"))?);
    let phnum = u64::from(le16(&ehdr, 56).ok_or(bad("e_phnum"))?);
    if phentsize < 56 || phoff.saturating_add(phentsize * phnum) > file_len {
        return Err(bad("the program header table"));
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        r.seek(SeekFrom::Start(phoff + i * phentsize))
            .map_err(KernelError::Read)?;
        read_exact_or(r, &mut ph, bad("a program header"))?;
        const PT_NOTE: u32 = 4;
        if le32(&ph, 0) != Some(PT_NOTE) {
            continue;
        }
        let offset = le64(&ph, 8).ok_or(bad("p_offset"))?;
        let size = le64(&ph, 32).ok_or(bad("p_filesz"))?;
        if offset.saturating_add(size) > file_len || size > 1 << 20 {
            return Err(bad("a PT_NOTE segment"));
        }
        let mut notes = vec![0u8; usize::try_from(size).map_err(|_| bad("a PT_NOTE segment"))?];
        r.seek(SeekFrom::Start(offset)).map_err(KernelError::Read)?;
        read_exact_or(r, &mut notes, bad("a PT_NOTE segment"))?;
        if let Some(pvh_entry) = find_pvh_note(&notes) {
            return Ok(ElfKernel { entry, pvh_entry });
        }
    }
    Err(KernelError::NoPvhNote)
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], err: KernelError) -> Result<(), KernelError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            err
        } else {
            KernelError::Read(e)
        }
    })
}

/// Walks the notes of one `PT_NOTE` segment looking for `Xen`/18; returns its address.
fn find_pvh_note(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(le32(notes, 0)?).ok()?;
        let descsz = usize::try_from(le32(notes, 4)?).ok()?;
        let ntype = le32(notes, 8)?;
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY && name == b"Xen\0" {
            return match desc.len() {
                4 => le32(desc, 0).map(u64::from),
                8 => le64(desc, 0),
                _ => None,
            };
        }
        notes = notes.get(desc_end..).unwrap_or(&[]);
    }
    None
}

/// The result of unpacking a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmlinux {
    /// sha256 (hex) of the ELF written.
    pub sha256: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Entry points found.
    pub elf: ElfKernel,
    /// The payload's format; `None` when the input already was an ELF.
    pub compression: Option<Compression>,
}

/// Unpacks a bzImage (`vmlinuz`) into an ELF `vmlinux` at `out` (which must not exist) and
/// checks it is PVH-bootable. An image that already is an ELF is copied as is.
///
/// # Errors
///
/// [`ImageError::Kernel`] when no candidate payload decompresses to a PVH-bootable ELF;
/// [`ImageError::MissingTool`] when the decompressor is not installed; I/O errors.
pub fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<Vmlinux> {
    let image = fs::read(bzimage).map_err(|e| ImageError::io("read", bzimage, e))?;
    extract_vmlinux_from(&image, bzimage, out)
}

fn extract_vmlinux_from(image: &[u8], source: &Path, out: &Path) -> Result<Vmlinux> {
    let kernel_err = |e| ImageError::Kernel {
        path: source.to_owned(),
        source: e,
    };
    if image.starts_with(b"\x7fELF") {
        let elf = check_pvh_elf(&mut io::Cursor::new(image)).map_err(kernel_err)?;
        let (sha256, size_bytes) = write_hashed(out, &mut |w| {
            w.write_all(image)
                .map_err(|e| ImageError::io("write", out, e))
        })?;
        return Ok(Vmlinux {
            sha256,
            size_bytes,
            elf,
            compression: None,
        });
    }
    let candidates = payload_candidates(image, 8);
    if candidates.is_empty() {
        return Err(kernel_err(KernelError::NoPayload));
    }
    let mut last_err = None;
    for p in candidates {
        let _ = fs::remove_file(out);
        let written = write_hashed(out, &mut |w| decompress(p.compression, p.data, w));
        let (sha256, size_bytes) = match written {
            Ok(v) => v,
            Err(e @ ImageError::MissingTool { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(offset = p.offset, error = %e, "payload candidate rejected");
                last_err = Some(e);
                continue;
            }
        };
        let mut f = File::open(out).map_err(|e| ImageError::io("open", out, e))?;
        match check_pvh_elf(&mut f) {
            Ok(elf) => {
                return Ok(Vmlinux {
                    sha256,
                    size_bytes,
                    elf,
                    compression: Some(p.compression),
                });
            }
            Err(KernelError::NotElf) => {
                last_err = Some(kernel_err(KernelError::NotElf));
            }
            // A real ELF that lacks the note will not get better at another offset.
            Err(e) => {
                let _ = fs::remove_file(out);
                return Err(kernel_err(e));
            }
        }
    }
    let _ = fs::remove_file(out);
    Err(last_err.unwrap_or_else(|| kernel_err(KernelError::NoPayload)))
}

/// Creates `path` (0644) and lets `fill` write into it through a hasher. (No fsync: the
/// cache syncs a file when it stores it as a blob.)
fn write_hashed(
    path: &Path,
    fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<(String, u64)> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| ImageError::io("create", path, e))?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f));
    fill(&mut w)?;
    let (buf, sha, len) = w.finish();
    buf.into_inner()
        .map_err(|e| ImageError::io("write", path, e.into_error()))?;
    Ok((sha, len))
}

/// mmdebstrap arguments that unpack only what the guest needs from the kernel package:
/// `boot/vmlinuz-*` and the [`all_modules`] files (about 12 MB instead of 465 MB; dpkg's
/// path filters apply to the extract variant too).
pub(crate) fn extract_args() -> Vec<String> {
    let mut args = vec![
        "--variant=extract".to_owned(),
        format!("--include={KERNEL_PACKAGE}"),
        "--dpkgopt=path-exclude=*".to_owned(),
        "--dpkgopt=path-include=/boot/vmlinuz-*".to_owned(),
    ];
    for m in all_modules() {
        // dpkg matches with fnmatch(3) without FNM_PATHNAME: `*` spans directories. Module
        // file names may use `-` where the module name has `_`.
        let file = m.replace('_', "[_-]");
        for base in ["/lib/modules", "/usr/lib/modules"] {
            args.push(format!("--dpkgopt=path-include={base}/*/{file}.ko*"));
        }
    }
    args
}

/// The kernel release and module tree found in an unpacked `linux-image` package.
#[derive(Debug, Clone)]
pub(crate) struct UnpackedKernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
}

/// Finds the single kernel release in a directory `mmdebstrap --variant=extract` produced.
pub(crate) fn locate(root: &Path) -> Result<UnpackedKernel> {
    let layout = |reason: String| ImageError::KernelLayout {
        dir: root.to_owned(),
        reason,
    };
    let base = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_dir())
        .ok_or_else(|| layout("no lib/modules directory".into()))?;
    let mut releases: Vec<String> = fs::read_dir(&base)
        .map_err(|e| ImageError::io("read directory", &base, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    let release = match releases.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(layout(format!(
                "no kernel release under {}",
                base.display()
            )));
        }
        many => {
            return Err(layout(format!(
                "several kernel releases: {}",
                many.join(", ")
            )));
        }
    };
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(layout(format!("no boot/vmlinuz-{release}")));
    }
    Ok(UnpackedKernel {
        modules_dir: base.join(&release),
        release,
        vmlinuz,
    })
}

/// A module file and how it is compressed.
#[derive(Debug, Clone)]
pub(crate) struct ModuleFile {
    pub path: PathBuf,
    pub compression: Option<Compression>,
}

/// Finds each of `wanted` (module names; `-` and `_` are equivalent) under `dir`.
pub(crate) fn find_modules(dir: &Path, wanted: &[&str]) -> Result<Vec<ModuleFile>> {
    let norm = |s: &str| s.replace('-', "_");
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| ImageError::io("read directory", &d, e))?;
        for e in rd {
            let e = e.map_err(|e| ImageError::io("read directory", &d, e))?;
            let ft = e
                .file_type()
                .map_err(|err| ImageError::io("inspect", e.path(), err))?;
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let (stem, compression) = if let Some(s) = name.strip_suffix(".ko") {
                (s, None)
            } else if let Some(s) = name.strip_suffix(".ko.xz") {
                (s, Some(Compression::Xz))
            } else if let Some(s) = name.strip_suffix(".ko.zst") {
                (s, Some(Compression::Zstd))
            } else if let Some(s) = name.strip_suffix(".ko.gz") {
                (s, Some(Compression::Gzip))
            } else {
                continue;
            };
            index.entry(norm(stem)).or_insert(ModuleFile {
                path: e.path(),
                compression,
            });
        }
    }
    wanted
        .iter()
        .map(|m| {
            index
                .get(&norm(m))
                .cloned()
                .ok_or_else(|| ImageError::ModuleMissing {
                    module: (*m).to_owned(),
                    dir: dir.to_owned(),
                })
        })
        .collect()
}

/// Writes a module's plain (decompressed) bytes to `out`; returns sha256 and size.
pub(crate) fn unpack_module(m: &ModuleFile, out: &Path) -> Result<(String, u64)> {
    let bytes = fs::read(&m.path).map_err(|e| ImageError::io("read", &m.path, e))?;
    write_hashed(out, &mut |w| match m.compression {
        None => w
            .write_all(&bytes)
            .map_err(|e| ImageError::io("write", out, e)),
        Some(c) => decompress(c, &bytes, w),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 x86-64 file with one PT_NOTE segment holding `notes`.
    pub(crate) fn fake_elf(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&0x0100_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        f[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend_from_slice(notes);
        // Some bulk so compressors have something to chew on.
        f.extend(std::iter::repeat_n(0x90u8, 4096));
        f
    }

    pub(crate) fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&ntype.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    pub(crate) fn pvh_elf() -> Vec<u8> {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5, 6, 7, 8]);
        notes.extend(note(b"Xen\0", 18, &0x0100_0abcu32.to_le_bytes()));
        fake_elf(&notes)
    }

    fn compress(tool: &str, data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(tool)
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let t = std::thread::spawn(move || stdin.write_all(&data).unwrap());
        let out = child.wait_with_output().unwrap();
        t.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    /// A bzImage-like buffer: setup sectors with a boot-protocol header, the compressed
    /// payload, the kernel's appended size, and some trailing bytes.
    pub(crate) fn fake_bzimage(compressed: &[u8], with_header: bool) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        if with_header {
            img[0x1f1] = setup_sects;
            img[0x202..0x206].copy_from_slice(b"HdrS");
            img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        }
        // Decompressor code before the payload, with a stray gzip-looking magic in it.
        let code = [0x1Fu8, 0x8B, 0x08, 0x00, 0xCC, 0xCC, 0xCC, 0xCC];
        img.extend_from_slice(&code);
        let mut payload = compressed.to_vec();
        payload.extend_from_slice(&1234u32.to_le_bytes());
        if with_header {
            img[0x248..0x24c].copy_from_slice(&(code.len() as u32).to_le_bytes());
            img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        }
        img.extend_from_slice(&payload);
        img.extend_from_slice(&[0xEEu8; 100]);
        img
    }

    #[test]
    fn pvh_note_is_found_and_its_absence_reported() {
        let elf = pvh_elf();
        let k = check_pvh_elf(&mut io::Cursor::new(&elf)).unwrap();
        assert_eq!(k.pvh_entry, 0x0100_0abc);
        assert_eq!(k.entry, 0x0100_0000);

        let no_pvh = fake_elf(&note(b"Xen\0", 17, &[0; 4]));
        assert!(matches!(
            check_pvh_elf(&mut io::Cursor::new(&no_pvh)),
            Err(KernelError::NoPvhNote)
        ));
        assert!(matches!(
            check_pvh_elf(&mut io::Cursor::new(
                b"MZ not an elf at all, nope, no".repeat(4)
            )),
            Err(KernelError::NotElf)
        ));
        let mut truncated = pvh_elf();
        truncated.truncate(100);
        assert!(matches!(
            check_pvh_elf(&mut io::Cursor::new(&truncated)),
            Err(KernelError::Truncated { .. })
        ));
        let mut elf32 = pvh_elf();
        elf32[4] = 1;
        assert!(matches!(
            check_pvh_elf(&mut io::Cursor::new(&elf32)),
            Err(KernelError::UnsupportedElf)
        ));
    }

    #[test]
    fn vmlinux_is_extracted_from_synthetic_bzimages() {
        let elf = pvh_elf();
        let dir = tempfile::tempdir().unwrap();
        for (tool, with_header) in [
            ("xz", true),
            ("xz", false),
            ("gzip", true),
            ("gzip", false),
            ("zstd", true),
        ] {
            let img = fake_bzimage(&compress(tool, &elf), with_header);
            let out = dir.path().join(format!("vmlinux-{tool}-{with_header}"));
            let v = extract_vmlinux_from(&img, Path::new("fake"), &out)
                .unwrap_or_else(|e| panic!("{tool} header={with_header}: {e}"));
            assert_eq!(fs::read(&out).unwrap(), elf, "{tool}");
            assert_eq!(v.size_bytes, elf.len() as u64);
            assert_eq!(v.elf.pvh_entry, 0x0100_0abc);
            let (sha, _) = crate::fsutil::hash_file(&out).unwrap();
            assert_eq!(v.sha256, sha);
        }
    }

    #[test]
    fn bzimage_without_pvh_or_payload_is_rejected_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let no_pvh = fake_elf(&note(b"GNU\0", 3, &[0; 4]));
        let img = fake_bzimage(&compress("xz", &no_pvh), true);
        let err = extract_vmlinux_from(&img, Path::new("k"), &dir.path().join("a")).unwrap_err();
        assert!(matches!(
            err,
            ImageError::Kernel {
                source: KernelError::NoPvhNote,
                ..
            }
        ));
        assert!(!dir.path().join("a").exists());

        let err =
            extract_vmlinux_from(&[0u8; 4096], Path::new("k"), &dir.path().join("b")).unwrap_err();
        assert!(matches!(
            err,
            ImageError::Kernel {
                source: KernelError::NoPayload,
                ..
            }
        ));
    }

    #[test]
    fn modules_are_found_by_normalised_name() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/fs");
        fs::create_dir_all(&k).unwrap();
        fs::write(k.join("ext4.ko"), b"plain").unwrap();
        fs::write(k.join("crc32c-generic.ko.xz"), compress("xz", b"packed")).unwrap();
        let found = find_modules(dir.path(), &["ext4", "crc32c_generic"]).unwrap();
        assert_eq!(found[0].compression, None);
        assert_eq!(found[1].compression, Some(Compression::Xz));
        let out = dir.path().join("out.ko");
        let (_, n) = unpack_module(&found[1], &out).unwrap();
        assert_eq!(n, 6);
        assert_eq!(fs::read(&out).unwrap(), b"packed");
        let err = find_modules(dir.path(), &["overlay"]).unwrap_err();
        assert!(err.to_string().contains("`overlay`"), "{err}");
    }

    #[test]
    fn net_modules_are_extracted_after_the_guest_modules() {
        let all: Vec<&str> = all_modules().collect();
        assert_eq!(all.len(), GUEST_MODULES.len() + NET_MODULES.len());
        assert_eq!(&all[GUEST_MODULES.len()..], NET_MODULES);
        assert_eq!(NET_MODULES, ["failover", "net_failover", "virtio_net"]);
        let args = extract_args();
        for file in [
            "virtio[_-]net",
            "net[_-]failover",
            "failover",
            "virtio[_-]blk",
        ] {
            assert!(
                args.iter().any(|a| a.ends_with(&format!("/*/{file}.ko*"))),
                "{file}: {args:?}"
            );
        }
    }
}
