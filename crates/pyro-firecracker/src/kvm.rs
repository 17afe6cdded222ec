//! What kind of KVM this host offers.
//!
//! Firecracker needs `/dev/kvm`, but a usable `/dev/kvm` is not enough: some hosts load the
//! paravirtual `kvm_pvm` module instead of `kvm_intel`/`kvm_amd`, and on those an ordinary
//! guest kernel runs in an instruction emulator, far too slowly to boot. [`kvm_status`]
//! reports both facts so backend selection and `doctor` can explain their choice.

use std::ffi::CString;
use std::path::Path;

/// What [`kvm_status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmStatus {
    /// `/dev/kvm` exists.
    pub exists: bool,
    /// The current process may open `/dev/kvm` for reading.
    pub readable: bool,
    /// The current process may open `/dev/kvm` for writing.
    pub writable: bool,
    /// The CPU advertises `vmx` or `svm` and `kvm_intel` or `kvm_amd` is loaded.
    pub hardware_assisted: bool,
    /// The paravirtual `kvm_pvm` module is loaded.
    pub paravirtual_pvm: bool,
    /// One human-readable sentence summarising the above.
    pub reason: String,
}

impl KvmStatus {
    /// Whether Firecracker can be expected to boot ordinary guests at full speed.
    pub fn usable_for_firecracker(&self) -> bool {
        self.exists && self.readable && self.writable && self.hardware_assisted
    }
}

/// Inspects `/dev/kvm`, `/proc/cpuinfo` and `/sys/module` of this host.
pub fn kvm_status() -> KvmStatus {
    let dev = Path::new("/dev/kvm");
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    evaluate(
        dev.exists(),
        can_access(dev, libc::R_OK),
        can_access(dev, libc::W_OK),
        &cpuinfo,
        |m| Path::new("/sys/module").join(m).exists(),
    )
}

fn can_access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// Decides from raw facts; separated from [`kvm_status`] for tests.
fn evaluate(
    exists: bool,
    readable: bool,
    writable: bool,
    cpuinfo: &str,
    module_loaded: impl Fn(&str) -> bool,
) -> KvmStatus {
    let cpu_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| {
            l.split_once(':')
                .map(|(_, v)| v)
                .unwrap_or("")
                .split_whitespace()
        })
        .find(|f| *f == "vmx" || *f == "svm");
    let hw_module = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| module_loaded(m));
    let pvm = module_loaded("kvm_pvm");
    let hardware_assisted = cpu_flag.is_some() && hw_module.is_some();
    let reason = if !exists {
        "/dev/kvm does not exist".to_owned()
    } else if !readable || !writable {
        "/dev/kvm exists but this user cannot open it read-write".to_owned()
    } else if hardware_assisted {
        format!(
            "hardware-assisted KVM ({} with {})",
            cpu_flag.unwrap_or_default(),
            hw_module.unwrap_or_default()
        )
    } else if pvm {
        "KVM is paravirtual (kvm_pvm, no vmx/svm): guest kernels run in an instruction emulator, \
         too slow to boot ordinary guests"
            .to_owned()
    } else if cpu_flag.is_none() {
        "the CPU advertises neither vmx nor svm".to_owned()
    } else {
        "neither kvm_intel nor kvm_amd is loaded".to_owned()
    };
    KvmStatus {
        exists,
        readable,
        writable,
        hardware_assisted,
        paravirtual_pvm: pvm,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 vmx ept\n";
    const PLAIN: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";

    #[test]
    fn hardware_assisted_needs_flag_and_module() {
        let s = evaluate(true, true, true, INTEL, |m| m == "kvm_intel");
        assert!(s.hardware_assisted && s.usable_for_firecracker(), "{s:?}");
        assert!(s.reason.contains("vmx"), "{}", s.reason);
        let s = evaluate(true, true, true, INTEL, |_| false);
        assert!(!s.hardware_assisted, "{s:?}");
        let s = evaluate(true, true, true, PLAIN, |m| m == "kvm_intel");
        assert!(!s.hardware_assisted, "{s:?}");
    }

    #[test]
    fn paravirtual_is_reported() {
        let s = evaluate(true, true, true, PLAIN, |m| m == "kvm_pvm" || m == "kvm");
        assert!(!s.hardware_assisted && s.paravirtual_pvm, "{s:?}");
        assert!(s.reason.contains("kvm_pvm"), "{}", s.reason);
        assert!(!s.usable_for_firecracker());
    }

    #[test]
    fn missing_or_closed_device() {
        let s = evaluate(false, false, false, INTEL, |_| true);
        assert!(!s.usable_for_firecracker());
        assert!(s.reason.contains("does not exist"));
        let s = evaluate(true, true, false, INTEL, |_| true);
        assert!(!s.usable_for_firecracker());
        assert!(s.reason.contains("cannot open"));
    }

    #[test]
    fn flag_must_be_whole_word() {
        let s = evaluate(true, true, true, "flags : vmxnot svmlike\n", |_| true);
        assert!(!s.hardware_assisted, "{s:?}");
    }

    #[test]
    fn this_host_answers() {
        let s = kvm_status();
        eprintln!("{s:?}");
        assert!(!s.reason.is_empty());
        assert_eq!(s.exists, Path::new("/dev/kvm").exists());
    }
}
