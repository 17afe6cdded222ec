//! A hand-assembled guest "kernel" of a few dozen bytes, for tests and health checks.
//!
//! [`elf`] builds a minimal ELF64 executable that Firecracker accepts as a `vmlinux`: one
//! `PT_LOAD` segment placed at physical address 1 MiB (Firecracker's kernel load address),
//! entered in 64-bit long mode with paging on. Its code writes a message to the first serial
//! port (COM1, I/O port `0x3f8`), which Firecracker copies to its stdout (the console log),
//! and then either resets the machine through the i8042 keyboard controller, which makes
//! Firecracker exit, or halts forever so the VM stays alive (for pause/snapshot tests).
//!
//! It needs no guest kernel, so it runs even where ordinary kernels cannot boot (for example
//! on a paravirtual KVM), and it proves the whole path: binary, `/dev/kvm`, API, boot,
//! serial console, process exit.

/// Guest-physical address where Firecracker loads kernels (`HIMEM_START`).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// What the guest does after printing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Reset via the i8042 controller: Firecracker stops and its process exits.
    Reset,
    /// Halt forever (interrupts are off), leaving the VM running.
    Halt,
}

/// Size of the ELF header.
const EHDR_SIZE: usize = 64;
/// Size of one program header.
const PHDR_SIZE: usize = 56;

/// Builds the guest: an ELF64 x86-64 image that prints `message` on COM1, then [`Ending`].
pub fn elf(message: &[u8], ending: Ending) -> Vec<u8> {
    let code = code(message, ending);
    let code_offset = EHDR_SIZE + PHDR_SIZE;
    let total = (code_offset + code.len()) as u64;
    let entry = LOAD_ADDR + code_offset as u64;

    let mut out = Vec::with_capacity(total as usize);
    // ELF header.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F']); // magic
    out.push(2); // EI_CLASS: ELFCLASS64
    out.push(1); // EI_DATA: little-endian
    out.push(1); // EI_VERSION: current
    out.push(0); // EI_OSABI: System V
    out.extend_from_slice(&[0; 8]); // EI_ABIVERSION + padding
    out.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    out.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&entry.to_le_bytes()); // e_entry: first instruction
    out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff: right after this header
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    out.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // Program header: the whole file, loaded at LOAD_ADDR.
    out.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    out.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    out.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    out.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    out.extend_from_slice(&total.to_le_bytes()); // p_filesz
    out.extend_from_slice(&total.to_le_bytes()); // p_memsz
    out.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    out.extend_from_slice(&code);
    out
}

/// The machine code (64-bit mode).
fn code(message: &[u8], ending: Ending) -> Vec<u8> {
    let mut c = Vec::with_capacity(8 + 3 * message.len());
    c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8   ; COM1 data port
    for &b in message {
        c.extend_from_slice(&[0xb0, b]); // mov al, <byte>
        c.push(0xee); // out dx, al                         ; transmit it
    }
    if ending == Ending::Reset {
        c.extend_from_slice(&[0xb0, 0xfe]); // mov al, 0xfe ; i8042 "pulse reset line"
        c.extend_from_slice(&[0xe6, 0x64]); // out 0x64, al ; i8042 command port
    }
    c.push(0xf4); // hlt                                    ; wait (forever: IF is clear)
    c.extend_from_slice(&[0xeb, 0xfd]); // jmp -3           ; back to the hlt
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(a)
    }

    #[test]
    fn header_fields() {
        let img = elf(b"hi\n", Ending::Reset);
        assert_eq!(&img[..4], b"\x7fELF");
        assert_eq!(img[4], 2);
        assert_eq!(u64_at(&img, 24), LOAD_ADDR + 120, "e_entry");
        assert_eq!(u64_at(&img, 32), 64, "e_phoff");
        assert_eq!(u64_at(&img, 64 + 16), LOAD_ADDR, "p_vaddr");
        assert_eq!(u64_at(&img, 64 + 24), LOAD_ADDR, "p_paddr");
        assert_eq!(u64_at(&img, 64 + 32), img.len() as u64, "p_filesz");
    }

    #[test]
    fn code_prints_then_ends() {
        let img = elf(b"A", Ending::Reset);
        assert_eq!(
            &img[120..],
            &[
                0x66, 0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd
            ]
        );
        let img = elf(b"A", Ending::Halt);
        assert_eq!(
            &img[120..],
            &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xf4, 0xeb, 0xfd]
        );
    }
}
