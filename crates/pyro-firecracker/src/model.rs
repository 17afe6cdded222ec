//! Request bodies of the Firecracker HTTP API.
//!
//! Only the fields pyro sends are modelled. Optional fields that are `None` are left out of
//! the JSON entirely, so Firecracker applies its own defaults. Responses from Firecracker are
//! not modelled here: the client returns them as [`serde_json::Value`] and callers pick out
//! what they need, leniently.

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`: the guest kernel, optional initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Path of the uncompressed ELF kernel, as the Firecracker process sees it.
    pub kernel_image_path: String,
    /// Path of the initrd, as the Firecracker process sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line.
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}`: one virtio-blk device backed by a host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Identifier, also the last segment of the request path.
    pub drive_id: String,
    /// Backing file, as the Firecracker process sees it.
    pub path_on_host: String,
    /// Whether the kernel should use this drive as `/dev/root`.
    pub is_root_device: bool,
    /// Whether the guest sees the device read-only.
    pub is_read_only: bool,
}

/// `PUT /machine-config`: vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Number of vCPUs (1 or an even number up to 32).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading; pyro always turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
}

/// `PUT /vsock`: the hybrid vsock device and its host-side Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest context identifier (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket, as the Firecracker process sees it; baked into snapshots.
    pub uds_path: String,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// The interface's id (pyro's is `eth0`).
    pub iface_id: String,
    /// The guest's MAC address; Firecracker picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// The TAP's name, as the Firecracker process sees it (its network namespace).
    pub host_dev_name: String,
}

/// The `action_type` of [`InstanceAction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured machine.
    InstanceStart,
    /// Ask the guest to reboot via the i8042 controller (Ctrl+Alt+Del).
    SendCtrlAltDel,
    /// Flush metrics.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceAction {
    /// What to do.
    pub action_type: ActionType,
}

/// The run state of a microVM, as set by `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// vCPUs stopped; required before taking a snapshot.
    Paused,
    /// vCPUs running.
    Resumed,
}

/// `PATCH /vm`: pause or resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// Desired state.
    pub state: VmRunState,
}

/// Kind of snapshot to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only pages dirtied since the last snapshot (needs dirty-page tracking).
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Full or diff.
    pub snapshot_type: SnapshotType,
    /// Where the device/vCPU state file goes, as the Firecracker process sees it.
    pub snapshot_path: String,
    /// Where the guest memory file goes, as the Firecracker process sees it.
    pub mem_file_path: String,
}

/// Kind of memory backend for [`MemBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Map a memory file (private, copy-on-write).
    File,
    /// Serve page faults through userfaultfd.
    Uffd,
}

/// Where restored guest memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemBackend {
    /// Backend kind.
    pub backend_type: MemBackendType,
    /// The memory file (or the UFFD socket), as the Firecracker process sees it.
    pub backend_path: String,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// The state file, as the Firecracker process sees it.
    pub snapshot_path: String,
    /// The memory source.
    pub mem_backend: MemBackend,
    /// Track dirty pages after restore so diff snapshots can be taken.
    pub enable_diff_snapshots: bool,
    /// Resume the vCPUs as soon as the snapshot is loaded.
    pub resume_vm: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn to_value<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or(Value::Null)
    }

    #[test]
    fn boot_source_omits_none() {
        let b = BootSource {
            kernel_image_path: "kernel".into(),
            initrd_path: None,
            boot_args: "console=ttyS0".into(),
        };
        assert_eq!(
            to_value(&b),
            json!({"kernel_image_path": "kernel", "boot_args": "console=ttyS0"})
        );
        let b = BootSource {
            initrd_path: Some("initrd".into()),
            ..b
        };
        assert_eq!(
            to_value(&b),
            json!({"kernel_image_path": "kernel", "initrd_path": "initrd",
                   "boot_args": "console=ttyS0"})
        );
    }

    #[test]
    fn drive_machine_vsock() {
        let d = Drive {
            drive_id: "rootfs".into(),
            path_on_host: "rootfs.disk".into(),
            is_root_device: true,
            is_read_only: false,
        };
        assert_eq!(
            to_value(&d),
            json!({"drive_id": "rootfs", "path_on_host": "rootfs.disk",
                   "is_root_device": true, "is_read_only": false})
        );
        let m = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            smt: Some(false),
        };
        assert_eq!(
            to_value(&m),
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})
        );
        let m = MachineConfig { smt: None, ..m };
        assert_eq!(to_value(&m), json!({"vcpu_count": 2, "mem_size_mib": 256}));
        let v = Vsock {
            guest_cid: 3,
            uds_path: "vsock.sock".into(),
        };
        assert_eq!(
            to_value(&v),
            json!({"guest_cid": 3, "uds_path": "vsock.sock"})
        );
    }

    #[test]
    fn actions_and_state() {
        let a = InstanceAction {
            action_type: ActionType::InstanceStart,
        };
        assert_eq!(to_value(&a), json!({"action_type": "InstanceStart"}));
        let s = VmState {
            state: VmRunState::Paused,
        };
        assert_eq!(to_value(&s), json!({"state": "Paused"}));
        let s = VmState {
            state: VmRunState::Resumed,
        };
        assert_eq!(to_value(&s), json!({"state": "Resumed"}));
    }

    #[test]
    fn snapshots() {
        let c = SnapshotCreateParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: "s.state".into(),
            mem_file_path: "s.mem".into(),
        };
        assert_eq!(
            to_value(&c),
            json!({"snapshot_type": "Diff", "snapshot_path": "s.state", "mem_file_path": "s.mem"})
        );
        let l = SnapshotLoadParams {
            snapshot_path: "s.state".into(),
            mem_backend: MemBackend {
                backend_type: MemBackendType::File,
                backend_path: "s.mem".into(),
            },
            enable_diff_snapshots: false,
            resume_vm: true,
        };
        assert_eq!(
            to_value(&l),
            json!({"snapshot_path": "s.state",
                   "mem_backend": {"backend_type": "File", "backend_path": "s.mem"},
                   "enable_diff_snapshots": false, "resume_vm": true})
        );
    }

    #[test]
    fn rejects_unknown_enum_variant() {
        let r: Result<VmState, _> = serde_json::from_value(json!({"state": "Running"}));
        assert!(r.is_err());
    }
}
