//! A writer for the `newc` cpio format (the one the Linux kernel unpacks as an initramfs).
//!
//! Each entry is a 110-byte ASCII header (magic `070701` and thirteen 8-digit hex fields),
//! the NUL-terminated name padded to a multiple of four, then the data padded the same way.
//! The archive ends with an entry named `TRAILER!!!`. Timestamps are written as zero so the
//! same inputs always give the same bytes (and the same digest).

use std::io::{self, Write};

/// Regular file type bits.
const S_IFREG: u32 = 0o100_000;
/// Directory type bits.
const S_IFDIR: u32 = 0o040_000;
/// Character device type bits.
const S_IFCHR: u32 = 0o020_000;

/// Writes a `newc` cpio archive to any [`Write`].
///
/// Names are relative (`init`, `lib/modules/ext4.ko`); a leading `/` is stripped. Parent
/// directories must be added before their children, as the kernel creates entries in order.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds a directory with the given permission bits.
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, 0, 0, &[])
    }

    /// Adds a regular file with the given permission bits and contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, 0, 0, data)
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, major, minor, &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, 0, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmajor: u32,
        rminor: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name == "TRAILER!!!" || name.split('/').any(|c| c == "..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name:?} is larger than 4 GiB"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, nlink, size, mode, rmajor, rminor)?;
        self.write_padded(data)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        nlink: u32,
        size: u32,
        mode: u32,
        rmajor: u32,
        rminor: u32,
    ) -> io::Result<()> {
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio name too long"))?;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            size, 0, // devmajor
            0, // devminor
            rmajor, rminor, namesize, 0, // check
        ];
        let mut h = String::with_capacity(110);
        h.push_str("070701");
        for f in fields {
            h.push_str(&format!("{f:08X}"));
        }
        let mut name_bytes = name.as_bytes().to_vec();
        name_bytes.push(0);
        self.write_raw(h.as_bytes())?;
        self.write_padded(&name_bytes)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` then zeros up to the next multiple of four of the archive offset.
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_raw(bytes)?;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write_raw(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        for d in ["dev", "proc", "lib", "lib/modules", "etc", "etc/pyro"] {
            w.dir(d, 0o755).unwrap();
        }
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("lib/modules/a.ko", 0o644, &[0u8, 1, 2, 3, 4])
            .unwrap();
        w.file("etc/pyro/modules.order", 0o644, b"a.ko\n").unwrap();
        w.file("etc/pyro/empty", 0o600, b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_aligned_and_terminated() {
        let bytes = sample();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 124..]);
        assert!(tail.contains("TRAILER!!!"));
        // Deterministic: same input, same bytes.
        assert_eq!(bytes, sample());
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.dir("TRAILER!!!", 0o755).is_err());
    }

    fn cpio(args: &[&str], input: &[u8], dir: &std::path::Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn round_trips_through_gnu_cpio() {
        let bytes = sample();
        let dir = tempfile::tempdir().unwrap();
        let listing = cpio(&["-it", "--quiet"], &bytes, dir.path());
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(
            names,
            [
                "init",
                "dev",
                "proc",
                "lib",
                "lib/modules",
                "etc",
                "etc/pyro",
                "dev/console",
                "lib/modules/a.ko",
                "etc/pyro/modules.order",
                "etc/pyro/empty"
            ]
        );

        cpio(
            &["-idm", "--quiet", "--no-absolute-filenames"],
            &bytes,
            dir.path(),
        );
        let root = dir.path();
        let mode = |p: &str| {
            fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode("init"), 0o100_755);
        assert_eq!(
            fs::read(root.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(mode("lib/modules"), 0o040_755);
        assert_eq!(mode("lib/modules/a.ko"), 0o100_644);
        assert_eq!(
            fs::read(root.join("lib/modules/a.ko")).unwrap(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            fs::read(root.join("etc/pyro/modules.order")).unwrap(),
            b"a.ko\n"
        );
        assert_eq!(mode("etc/pyro/empty"), 0o100_600);
        assert_eq!(fs::metadata(root.join("etc/pyro/empty")).unwrap().len(), 0);
        // Device nodes need privileges to create; check them only where cpio could.
        if let Ok(m) = fs::symlink_metadata(root.join("dev/console")) {
            assert!(m.file_type().is_char_device());
            assert_eq!(m.rdev(), libc::makedev(5, 1));
        }
    }
}
