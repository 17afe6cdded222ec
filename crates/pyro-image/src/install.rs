//! Pulling (building), inspecting, listing, pruning and verifying environments.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cache::{
    ArtifactRef, Cache, EnvironmentArtifacts, EnvironmentManifest, InitramfsRecord, KernelManifest,
    ModuleRef, PYRO_IMAGE_VERSION, SCHEMA_VERSION,
};
use crate::catalog::{self, CatalogEntry};
use crate::debian::{self, Mode};
use crate::error::{ImageError, Result};
use crate::fsutil::{self, FileLock, HashingWriter, LockMode};
use crate::{initramfs, kernel, rootfs};

/// The Debian suite the shared kernel comes from.
pub const KERNEL_SUITE: &str = "bookworm";

/// Number of steps a pull reports.
pub const TOTAL_STEPS: u32 = 6;

/// One progress report from [`ensure_environment`].
///
/// Steps are numbered 1..=[`TOTAL_STEPS`]: 1 `kernel`, 2 `bootstrap`, 3 `mkfs`, 4 `hash`,
/// 5 `initramfs`, 6 `ready`. A step may report several messages (mmdebstrap's progress
/// lines, for instance); steps with nothing to do are skipped or report that they are
/// cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The step's number.
    pub step: u32,
    /// [`TOTAL_STEPS`].
    pub total: u32,
    /// The step's name.
    pub phase: &'static str,
    /// What is happening.
    pub message: String,
    /// Time since the pull started.
    pub elapsed: Duration,
}

struct Reporter<'a> {
    start: Instant,
    sink: RefCell<&'a mut dyn FnMut(Progress)>,
}

impl<'a> Reporter<'a> {
    fn new(sink: &'a mut dyn FnMut(Progress)) -> Self {
        Reporter {
            start: Instant::now(),
            sink: RefCell::new(sink),
        }
    }

    fn emit(&self, step: u32, phase: &'static str, message: impl Into<String>) {
        let p = Progress {
            step,
            total: TOTAL_STEPS,
            phase,
            message: message.into(),
            elapsed: self.start.elapsed(),
        };
        tracing::debug!(step, phase, message = %p.message, "pull progress");
        if let Ok(mut sink) = self.sink.try_borrow_mut() {
            (*sink)(p);
        }
    }
}

/// sha256 digests of what an environment boots, and of the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digests {
    /// The ELF vmlinux.
    pub kernel: String,
    /// The initramfs (which holds the agent given to this pull as `/init`).
    pub initramfs: String,
    /// The rootfs image.
    pub rootfs: String,
    /// The agent binary given to this pull.
    pub agent: String,
    /// The agent installed at `/opt/pyro/bin/pyro-agent` inside the rootfs when it was built;
    /// differs from `agent` when only the initramfs was rebuilt for a newer agent.
    pub rootfs_agent: String,
}

/// An environment ready to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// Catalog name.
    pub name: String,
    /// Catalog version.
    pub version: String,
    /// The ELF vmlinux (read-only blob).
    pub kernel: PathBuf,
    /// The initramfs (uncompressed cpio).
    pub initramfs: PathBuf,
    /// The ext4 rootfs image (read-only blob; attach it read-only or copy it).
    pub rootfs: PathBuf,
    /// The environment's manifest.
    pub manifest: PathBuf,
    /// The kernel's release string.
    pub kernel_release: String,
    /// Digests of all of the above.
    pub digests: Digests,
}

/// Catalog and install state of one environment (the reference's `EnvInfo`, plus the
/// artifact paths when installed).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EnvironmentInfo {
    /// Catalog name.
    pub name: String,
    /// Catalog version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// Advertised packages.
    pub default_packages: Vec<String>,
    /// `debian`.
    pub distribution: String,
    /// `12`.
    pub distribution_version: String,
    /// `linux-x86_64`.
    pub platform: String,
    /// Always `null`: images are built locally, not pulled from a registry.
    pub oci_registry: Option<String>,
    /// Always `null`.
    pub oci_repository: Option<String>,
    /// Always `null`.
    pub oci_reference: Option<String>,
    /// sha256 of the rootfs image when installed.
    pub source_digest: Option<String>,
    /// Range of pyro versions the images suit.
    pub compatibility: String,
    /// Version of the catalog.
    pub catalog_version: String,
    /// Whether the environment is built and its artifacts present.
    pub installed: bool,
    /// The cache's root.
    pub cache_dir: PathBuf,
    /// The environment's directory in the cache (installed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_dir: Option<PathBuf>,
    /// The environment's manifest (installed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_manifest: Option<PathBuf>,
    /// The ELF vmlinux (installed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_image: Option<PathBuf>,
    /// The rootfs image (installed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_image: Option<PathBuf>,
    /// The initramfs most recently prepared for it (installed only, if still present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initramfs_image: Option<PathBuf>,
    /// How the image is made: `local:mmdebstrap debian bookworm`.
    pub source: String,
    /// When it was built, in Unix seconds (installed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_at: Option<f64>,
}

/// What [`prune`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Deleted entries, relative to the cache root, sorted.
    pub deleted: Vec<String>,
    /// Bytes those entries occupied on disk.
    pub freed_bytes: u64,
}

/// The result of re-hashing one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactCheck {
    /// Which artifact (`kernel`, `rootfs`, `initramfs`, `module ext4`).
    pub artifact: String,
    /// Its path.
    pub path: PathBuf,
    /// The digest the manifest records.
    pub expected_sha256: String,
    /// The digest of the file now (`None` when it is missing or unreadable).
    pub actual_sha256: Option<String>,
    /// Whether the two agree (and the size matches).
    pub ok: bool,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The environment.
    pub name: String,
    /// True when every artifact matched.
    pub ok: bool,
    /// Each artifact checked.
    pub artifacts: Vec<ArtifactCheck>,
}

fn source_of(entry: &CatalogEntry) -> String {
    format!("local:mmdebstrap {} {}", entry.distribution, entry.suite)
}

/// Takes a cache lock, telling `on_wait` first if somebody else holds it.
fn lock_or_wait(
    cache: &Cache,
    name: &str,
    mode: LockMode,
    on_wait: &mut dyn FnMut(),
) -> Result<FileLock> {
    let path = cache.lock_path(name);
    if let Some(l) = FileLock::try_acquire(&path, mode)? {
        return Ok(l);
    }
    on_wait();
    FileLock::acquire(&path, mode)
}

/// The environment's manifest if it is complete and current for the catalog entry.
fn installed_manifest(cache: &Cache, entry: &CatalogEntry) -> Option<EnvironmentManifest> {
    match cache.read_environment_manifest(entry.name) {
        Ok(Some(m))
            if m.name == entry.name
                && m.version == entry.version
                && m.packages == entry.packages()
                && cache.has_blob(&m.artifacts.rootfs) =>
        {
            Some(m)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(environment = entry.name, error = %e, "ignoring unreadable manifest");
            None
        }
    }
}

/// The shared kernel's manifest if it is complete.
fn installed_kernel(cache: &Cache) -> Option<KernelManifest> {
    match cache.read_kernel_manifest() {
        Ok(Some(m))
            if m.package == kernel::KERNEL_PACKAGE
                && m.modules
                    .iter()
                    .map(|x| x.name.as_str())
                    .eq(kernel::all_modules())
                && cache.has_blob(&m.vmlinux)
                && m.modules.iter().all(|x| cache.has_blob(&x.artifact)) =>
        {
            Some(m)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable kernel manifest");
            None
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Builds (if needed) and returns an environment ready to boot with `agent` as its guest
/// agent.
///
/// Idempotent and cheap when the environment is already built: it then only hashes the
/// agent and checks that the artifacts exist; if the agent changed, only the initramfs
/// (a few MB) is rebuilt. Safe to call from several threads and processes at once: the
/// environment, the shared kernel and the initramfs each build under an exclusive lock,
/// and whoever waits finds the result installed. An interrupted pull leaves only a
/// directory under `tmp/` that the next pull (or [`prune`]) removes.
///
/// # Errors
///
/// [`ImageError::UnknownEnvironment`], [`ImageError::AgentNotFile`], missing tools,
/// download or build failures, I/O errors.
pub fn ensure_environment(
    cache: &Cache,
    name: &str,
    agent: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Installed> {
    let entry = catalog::lookup(name)?;
    let rep = Reporter::new(progress);
    let agent_bytes = read_agent(agent)?;
    let agent_sha = fsutil::hex(&<sha2::Sha256 as sha2::Digest>::digest(&agent_bytes));

    let _gc = lock_or_wait(cache, "gc", LockMode::Shared, &mut || {
        rep.emit(1, "kernel", "waiting for a prune of the cache to finish")
    })?;
    match cache.sweep_tmp() {
        Ok(swept) if !swept.is_empty() => {
            tracing::info!(?swept, "removed leftovers of interrupted builds");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not sweep leftovers of interrupted builds"),
    }
    let env_lock = format!("env-{}", entry.dir_name());
    let _env = lock_or_wait(cache, &env_lock, LockMode::Exclusive, &mut || {
        rep.emit(
            2,
            "bootstrap",
            format!("another pull of {name} is in progress; waiting for it"),
        )
    })?;

    let kernel = ensure_kernel_locked(cache, &rep)?;

    let (mut manifest, mut dirty) = match installed_manifest(cache, entry) {
        Some(m) => {
            rep.emit(
                2,
                "bootstrap",
                format!(
                    "{name} already built (rootfs sha256 {})",
                    short(&m.artifacts.rootfs.sha256)
                ),
            );
            (m, false)
        }
        None => (
            build_environment(cache, entry, &agent_bytes, &agent_sha, &kernel, &rep)?,
            true,
        ),
    };
    if manifest.artifacts.kernel != kernel.vmlinux
        || manifest.kernel_release != kernel.kernel_release
    {
        manifest.artifacts.kernel = kernel.vmlinux.clone();
        manifest.kernel_release = kernel.kernel_release.clone();
        dirty = true;
    }

    let record = ensure_initramfs(cache, &kernel, &agent_bytes, &agent_sha, &rep)?;
    if manifest.initramfs.as_ref() != Some(&record) {
        manifest.initramfs = Some(record.clone());
        dirty = true;
    }
    if dirty {
        cache.write_environment_manifest(&manifest)?;
    }
    if manifest.rootfs_agent_sha256 != agent_sha {
        tracing::info!(
            environment = name,
            "the rootfs carries an older agent at {}; the initramfs has the current one",
            rootfs::AGENT_PATH
        );
    }
    rep.emit(
        6,
        "ready",
        format!(
            "{name} ready (kernel {}, rootfs {} MiB)",
            kernel.kernel_release,
            manifest.artifacts.rootfs.size_bytes >> 20
        ),
    );
    Ok(Installed {
        name: entry.name.to_owned(),
        version: entry.version.to_owned(),
        kernel: cache.blob_path(&kernel.vmlinux.sha256),
        initramfs: cache.initramfs_path(&record.key),
        rootfs: cache.blob_path(&manifest.artifacts.rootfs.sha256),
        manifest: cache.environment_manifest_path(entry.name),
        kernel_release: kernel.kernel_release.clone(),
        digests: Digests {
            kernel: kernel.vmlinux.sha256.clone(),
            initramfs: record.sha256.clone(),
            rootfs: manifest.artifacts.rootfs.sha256.clone(),
            agent: agent_sha,
            rootfs_agent: manifest.rootfs_agent_sha256.clone(),
        },
    })
}

fn read_agent(agent: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(agent).map_err(|e| ImageError::io("inspect agent binary", agent, e))?;
    if !meta.is_file() {
        return Err(ImageError::AgentNotFile {
            path: agent.to_owned(),
        });
    }
    fs::read(agent).map_err(|e| ImageError::io("read agent binary", agent, e))
}

/// Builds (if needed) the guest kernel shared by every environment: the ELF vmlinux and the
/// modules the initramfs carries. [`ensure_environment`] calls this itself; it is public for
/// warming a cache and for tests. Reports step 1 (`kernel`) only.
///
/// # Errors
///
/// Missing tools, download failures, a kernel without a PVH note, I/O errors.
pub fn ensure_kernel(cache: &Cache, progress: &mut dyn FnMut(Progress)) -> Result<KernelManifest> {
    let rep = Reporter::new(progress);
    let _gc = lock_or_wait(cache, "gc", LockMode::Shared, &mut || {
        rep.emit(1, "kernel", "waiting for a prune of the cache to finish")
    })?;
    ensure_kernel_locked(cache, &rep)
}

fn ensure_kernel_locked(cache: &Cache, rep: &Reporter<'_>) -> Result<KernelManifest> {
    let mut cached = true;
    let m = cache.once(
        "kernel",
        &mut || {
            rep.emit(
                1,
                "kernel",
                "another pull is preparing the guest kernel; waiting for it",
            )
        },
        &mut || Ok(installed_kernel(cache)),
        &mut || {
            cached = false;
            build_kernel(cache, rep)
        },
    )?;
    if cached {
        rep.emit(
            1,
            "kernel",
            format!(
                "kernel {} cached (vmlinux sha256 {})",
                m.kernel_release,
                short(&m.vmlinux.sha256)
            ),
        );
    }
    Ok(m)
}

fn build_kernel(cache: &Cache, rep: &Reporter<'_>) -> Result<KernelManifest> {
    let t0 = Instant::now();
    let tmp = cache.tmp_dir()?;
    let root = tmp.path().join("root");
    let mode = Mode::detect();
    rep.emit(
        1,
        "kernel",
        format!("downloading {} ({KERNEL_SUITE})", kernel::KERNEL_PACKAGE),
    );
    // Without root, a directory target would be owned by subordinate ids we could not
    // delete afterwards; a tarball is written by mmdebstrap itself and unpacked by us.
    let target = match mode {
        Mode::Root { .. } => root.clone(),
        Mode::Unshare => tmp.path().join("root.tar"),
    };
    let cmd = debian::command(
        mode,
        &kernel::extract_args(),
        KERNEL_SUITE,
        &target,
        tmp.path(),
    )?;
    debian::run(cmd, mode, &mut |line| rep.emit(1, "kernel", line))?;
    if target != root {
        debian::unpack_tar(&target, &root)?;
    }
    let unpacked = kernel::locate(&root)?;
    rep.emit(
        1,
        "kernel",
        format!("unpacking vmlinux from vmlinuz-{}", unpacked.release),
    );
    let vmlinux_file = tmp.path().join("vmlinux");
    let vm = kernel::extract_vmlinux(&unpacked.vmlinuz, &vmlinux_file)?;
    let vmlinux = ArtifactRef {
        sha256: vm.sha256,
        size_bytes: vm.size_bytes,
    };
    let names: Vec<&str> = kernel::all_modules().collect();
    let files = kernel::find_modules(&unpacked.modules_dir, &names)?;
    let mut modules = Vec::with_capacity(files.len());
    for (name, file) in names.iter().zip(&files) {
        let out = tmp.path().join(format!("{name}.ko"));
        let (sha256, size_bytes) = kernel::unpack_module(file, &out)?;
        modules.push((
            out,
            ModuleRef {
                name: (*name).to_owned(),
                artifact: ArtifactRef { sha256, size_bytes },
            },
        ));
    }
    // Delete the unpacked package (~450 MB) before the blobs are fsynced: on ext4 with
    // data=ordered a sync would otherwise first write all of it out.
    fsutil::remove_tree(&root)?;
    cache.insert_blob(&vmlinux_file, &vmlinux)?;
    for (file, m) in &modules {
        cache.insert_blob(file, &m.artifact)?;
    }
    let modules = modules.into_iter().map(|(_, m)| m).collect();
    let m = KernelManifest {
        schema_version: SCHEMA_VERSION,
        package: kernel::KERNEL_PACKAGE.to_owned(),
        kernel_release: unpacked.release,
        vmlinux,
        modules,
        built_at: fsutil::unix_now(),
        build_seconds: t0.elapsed().as_secs_f64(),
        pyro_image_version: PYRO_IMAGE_VERSION.to_owned(),
    };
    cache.write_kernel_manifest(&m)?;
    drop(tmp);
    rep.emit(
        1,
        "kernel",
        format!(
            "kernel {} ready in {:.1} s ({} MiB vmlinux, {} modules)",
            m.kernel_release,
            t0.elapsed().as_secs_f64(),
            m.vmlinux.size_bytes >> 20,
            m.modules.len()
        ),
    );
    Ok(m)
}

fn build_environment(
    cache: &Cache,
    entry: &CatalogEntry,
    agent_bytes: &[u8],
    agent_sha: &str,
    kernel: &KernelManifest,
    rep: &Reporter<'_>,
) -> Result<EnvironmentManifest> {
    let t0 = Instant::now();
    let tmp = cache.tmp_dir()?;
    // mmdebstrap uploads this copy, so the rootfs holds exactly the bytes hashed above.
    let agent_copy = tmp.path().join("pyro-agent");
    fs::write(&agent_copy, agent_bytes).map_err(|e| ImageError::io("write", &agent_copy, e))?;
    rep.emit(
        2,
        "bootstrap",
        format!(
            "bootstrapping {} from Debian {} with {}",
            entry.name,
            entry.suite,
            entry.packages().join(", ")
        ),
    );
    let built = rootfs::build(
        entry,
        &agent_copy,
        tmp.path(),
        &mut |line| rep.emit(2, "bootstrap", line),
        &mut |size_mib| rep.emit(3, "mkfs", format!("creating the {size_mib} MiB ext4 image")),
    )?;
    rep.emit(
        4,
        "hash",
        format!(
            "hashing the rootfs (bootstrap {:.1} s, mkfs {:.1} s, {} MiB of files)",
            built.bootstrap.as_secs_f64(),
            built.mkfs.as_secs_f64(),
            built.tree_bytes >> 20
        ),
    );
    let t_hash = Instant::now();
    let (sha256, size_bytes) = fsutil::hash_file(&built.image)?;
    let rootfs = ArtifactRef { sha256, size_bytes };
    cache.insert_blob(&built.image, &rootfs)?;
    let hash = t_hash.elapsed();
    tracing::info!(
        environment = entry.name,
        bootstrap_s = built.bootstrap.as_secs_f64(),
        mkfs_s = built.mkfs.as_secs_f64(),
        hash_s = hash.as_secs_f64(),
        image_mib = built.image_bytes >> 20,
        "rootfs built"
    );
    let m = EnvironmentManifest {
        schema_version: SCHEMA_VERSION,
        name: entry.name.to_owned(),
        version: entry.version.to_owned(),
        source: source_of(entry),
        artifacts: EnvironmentArtifacts {
            kernel: kernel.vmlinux.clone(),
            rootfs,
        },
        kernel_release: kernel.kernel_release.clone(),
        packages: entry.packages(),
        rootfs_agent_sha256: agent_sha.to_owned(),
        initramfs: None,
        built_at: fsutil::unix_now(),
        build_seconds: t0.elapsed().as_secs_f64(),
        pyro_image_version: PYRO_IMAGE_VERSION.to_owned(),
    };
    // Recorded at once so an interruption later in the pull does not cost the rootfs.
    cache.write_environment_manifest(&m)?;
    Ok(m)
}

fn ensure_initramfs(
    cache: &Cache,
    kernel: &KernelManifest,
    agent: &[u8],
    agent_sha: &str,
    rep: &Reporter<'_>,
) -> Result<InitramfsRecord> {
    let key = initramfs::key(agent_sha, kernel);
    let path = cache.initramfs_path(&key);
    let mut cached = true;
    let record = cache.once(
        "initramfs",
        &mut || {
            rep.emit(
                5,
                "initramfs",
                "another pull is writing an initramfs; waiting",
            )
        },
        &mut || {
            Ok(match cache.read_initramfs_record(&key) {
                Ok(Some(r)) if r.key == key && fsutil::file_has_size(&path, r.size_bytes) => {
                    Some(r)
                }
                _ => None,
            })
        },
        &mut || {
            cached = false;
            rep.emit(
                5,
                "initramfs",
                format!(
                    "writing the initramfs (agent sha256 {}, {} modules)",
                    short(agent_sha),
                    kernel.modules.len()
                ),
            );
            write_initramfs(cache, kernel, agent, agent_sha, &key, &path)
        },
    )?;
    if cached {
        rep.emit(
            5,
            "initramfs",
            format!("initramfs cached (sha256 {})", short(&record.sha256)),
        );
    }
    Ok(record)
}

fn write_initramfs(
    cache: &Cache,
    kernel: &KernelManifest,
    agent: &[u8],
    agent_sha: &str,
    key: &str,
    path: &Path,
) -> Result<InitramfsRecord> {
    // The network driver goes into its own list, loaded only by networked guests.
    let mut modules = Vec::with_capacity(kernel.modules.len());
    let mut net_modules = Vec::with_capacity(kernel::NET_MODULES.len());
    for m in &kernel.modules {
        let blob = cache.blob_path(&m.artifact.sha256);
        let bytes = fs::read(&blob).map_err(|e| ImageError::io("read", &blob, e))?;
        if kernel::NET_MODULES.contains(&m.name.as_str()) {
            net_modules.push((m.name.clone(), bytes));
        } else {
            modules.push((m.name.clone(), bytes));
        }
    }
    let tmp = cache.tmp_dir()?;
    let out = tmp.path().join("initramfs.cpio");
    let f = File::create(&out).map_err(|e| ImageError::io("create", &out, e))?;
    let w = HashingWriter::new(BufWriter::with_capacity(1 << 20, f));
    let w = initramfs::write(w, agent, &modules, &net_modules)
        .map_err(|e| ImageError::io("write", &out, e))?;
    let (buf, sha256, size_bytes) = w.finish();
    let f = buf
        .into_inner()
        .map_err(|e| ImageError::io("write", &out, e.into_error()))?;
    f.sync_all().map_err(|e| ImageError::io("sync", &out, e))?;
    drop(f);
    fsutil::set_mode(&out, 0o444)?;
    fs::rename(&out, path).map_err(|e| ImageError::io("rename", &out, e))?;
    if let Some(dir) = path.parent() {
        fsutil::fsync_dir(dir)?;
    }
    let record = InitramfsRecord {
        key: key.to_owned(),
        sha256,
        size_bytes,
        agent_sha256: agent_sha.to_owned(),
        kernel_sha256: kernel.vmlinux.sha256.clone(),
    };
    cache.write_initramfs_record(&record)?;
    Ok(record)
}

fn info(cache: &Cache, entry: &CatalogEntry) -> EnvironmentInfo {
    let m = installed_manifest(cache, entry).filter(|m| cache.has_blob(&m.artifacts.kernel));
    let initramfs_image = m
        .as_ref()
        .and_then(|m| m.initramfs.as_ref())
        .map(|r| (cache.initramfs_path(&r.key), r.size_bytes))
        .filter(|(p, size)| fsutil::file_has_size(p, *size))
        .map(|(p, _)| p);
    EnvironmentInfo {
        name: entry.name.to_owned(),
        version: entry.version.to_owned(),
        description: entry.description.to_owned(),
        default_packages: entry
            .default_packages
            .iter()
            .map(|p| (*p).to_owned())
            .collect(),
        distribution: entry.distribution.to_owned(),
        distribution_version: entry.distribution_version.to_owned(),
        platform: entry.platform.to_owned(),
        oci_registry: None,
        oci_repository: None,
        oci_reference: None,
        source_digest: m.as_ref().map(|m| m.artifacts.rootfs.sha256.clone()),
        compatibility: catalog::COMPATIBILITY.to_owned(),
        catalog_version: catalog::CATALOG_VERSION.to_owned(),
        installed: m.is_some(),
        cache_dir: cache.root().to_owned(),
        install_dir: m.as_ref().map(|_| cache.environment_dir(entry.name)),
        install_manifest: m
            .as_ref()
            .map(|_| cache.environment_manifest_path(entry.name)),
        kernel_image: m
            .as_ref()
            .map(|m| cache.blob_path(&m.artifacts.kernel.sha256)),
        rootfs_image: m
            .as_ref()
            .map(|m| cache.blob_path(&m.artifacts.rootfs.sha256)),
        initramfs_image,
        source: source_of(entry),
        built_at: m.as_ref().map(|m| m.built_at),
    }
}

/// Catalog details and install state of one environment. Reads only; never builds.
///
/// # Errors
///
/// [`ImageError::UnknownEnvironment`].
pub fn inspect(cache: &Cache, name: &str) -> Result<EnvironmentInfo> {
    Ok(info(cache, catalog::lookup(name)?))
}

/// Every catalog environment with its install state, sorted by name.
pub fn list(cache: &Cache) -> Vec<EnvironmentInfo> {
    catalog::CATALOG.iter().map(|e| info(cache, e)).collect()
}

fn tree_size(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fsutil::disk_usage(path).unwrap_or(0),
        Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
        Err(_) => 0,
    }
}

/// Deletes what no current environment needs: working directories of dead builds,
/// manifests of environments that are not in the catalog, outdated, or missing a blob,
/// initramfs images no manifest references, and unreferenced blobs. Waits for running
/// pulls to finish first.
///
/// # Errors
///
/// I/O errors (including [`ImageError::MountedInside`] for a build directory that still
/// has something mounted inside it).
pub fn prune(cache: &Cache) -> Result<PruneReport> {
    let _gc = cache.lock("gc", LockMode::Exclusive)?;
    let mut report = PruneReport::default();
    let root = cache.root().to_owned();
    let delete = |report: &mut PruneReport, rel: String| -> Result<()> {
        let path = root.join(&rel);
        report.freed_bytes += tree_size(&path);
        fsutil::remove_tree(&path)?;
        report.deleted.push(rel);
        Ok(())
    };

    for swept in cache.sweep_tmp()? {
        report.deleted.push(swept);
    }

    // Environments.
    let mut live_envs = Vec::new();
    for name in dir_names(&root.join("environments"))? {
        let entry = catalog::CATALOG.iter().find(|e| e.dir_name() == name);
        let manifest = entry.and_then(|e| installed_manifest(cache, e));
        match manifest {
            Some(m) => {
                remove_leftover_temps(&root.join("environments").join(&name));
                live_envs.push(m);
            }
            None => delete(&mut report, format!("environments/{name}"))?,
        }
    }

    // The kernel.
    let kernel = installed_kernel(cache);
    if kernel.is_none() && cache.kernel_manifest_path().exists() {
        delete(&mut report, "kernel/manifest.json".to_owned())?;
    }
    remove_leftover_temps(&root.join("kernel"));

    // Initramfs images.
    let live_keys: HashSet<&str> = live_envs
        .iter()
        .filter_map(|m| m.initramfs.as_ref().map(|r| r.key.as_str()))
        .collect();
    for name in file_names(&root.join("initramfs"))? {
        let keep = name
            .strip_suffix(".cpio")
            .or_else(|| name.strip_suffix(".json"))
            .is_some_and(|key| live_keys.contains(key));
        if !keep && !name.starts_with('.') {
            delete(&mut report, format!("initramfs/{name}"))?;
        }
    }
    remove_leftover_temps(&root.join("initramfs"));

    // Blobs.
    let mut live_blobs: HashSet<&str> = HashSet::new();
    for m in &live_envs {
        live_blobs.insert(&m.artifacts.kernel.sha256);
        live_blobs.insert(&m.artifacts.rootfs.sha256);
    }
    if let Some(k) = &kernel {
        live_blobs.insert(&k.vmlinux.sha256);
        for m in &k.modules {
            live_blobs.insert(&m.artifact.sha256);
        }
    }
    for name in file_names(&root.join("blobs/sha256"))? {
        if !live_blobs.contains(name.as_str()) {
            delete(&mut report, format!("blobs/sha256/{name}"))?;
        }
    }
    report.deleted.sort();
    Ok(report)
}

fn entries(dir: &Path, want_dirs: bool) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|err| ImageError::io("read directory", dir, err))?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir == want_dirs {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    entries(dir, true)
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    entries(dir, false)
}

/// Deletes temporary files of atomic writes that died before their rename.
fn remove_leftover_temps(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if fsutil::is_atomic_write_leftover(&e.file_name()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Re-hashes every artifact of an installed environment (kernel, modules, rootfs, and its
/// current initramfs) against the manifests.
///
/// # Errors
///
/// [`ImageError::UnknownEnvironment`], [`ImageError::NotInstalled`], or an unreadable
/// manifest. Mismatched or missing artifacts are reported in the result, not as errors.
pub fn verify(cache: &Cache, name: &str) -> Result<VerifyReport> {
    let entry = catalog::lookup(name)?;
    let _gc = cache.lock("gc", LockMode::Shared)?;
    let not_installed = || ImageError::NotInstalled {
        name: entry.name.to_owned(),
        cache_dir: cache.root().to_owned(),
    };
    let m = cache
        .read_environment_manifest(entry.name)?
        .ok_or_else(not_installed)?;
    let mut checks: Vec<(String, PathBuf, ArtifactRef)> = vec![
        (
            "kernel".into(),
            cache.blob_path(&m.artifacts.kernel.sha256),
            m.artifacts.kernel.clone(),
        ),
        (
            "rootfs".into(),
            cache.blob_path(&m.artifacts.rootfs.sha256),
            m.artifacts.rootfs.clone(),
        ),
    ];
    if let Some(k) = cache.read_kernel_manifest()?
        && k.vmlinux == m.artifacts.kernel
    {
        for module in &k.modules {
            checks.push((
                format!("module {}", module.name),
                cache.blob_path(&module.artifact.sha256),
                module.artifact.clone(),
            ));
        }
    }
    if let Some(r) = &m.initramfs {
        checks.push((
            "initramfs".into(),
            cache.initramfs_path(&r.key),
            ArtifactRef {
                sha256: r.sha256.clone(),
                size_bytes: r.size_bytes,
            },
        ));
    }
    let artifacts: Vec<ArtifactCheck> = checks
        .into_iter()
        .map(|(artifact, path, expected)| {
            let actual = if expected.is_well_formed() {
                fsutil::hash_file(&path).ok()
            } else {
                None
            };
            let ok = actual
                .as_ref()
                .is_some_and(|(sha, size)| *sha == expected.sha256 && *size == expected.size_bytes);
            ArtifactCheck {
                artifact,
                path,
                expected_sha256: expected.sha256,
                actual_sha256: actual.map(|(sha, _)| sha),
                ok,
            }
        })
        .collect();
    Ok(VerifyReport {
        name: entry.name.to_owned(),
        ok: artifacts.iter().all(|a| a.ok),
        artifacts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::cache::tests::sample_manifest;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn build_times_round_trip_through_json_exactly() {
        // Two values from a real kernel build that came back 1 ULP off before serde_json's
        // `float_roundtrip` parser was enabled (a manifest compared unequal to itself).
        for x in [1_795_252_417.344_259_7_f64, 9.169_153_938_000_001] {
            let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }

    fn put_blob(cache: &Cache, bytes: &[u8]) -> ArtifactRef {
        let t = cache.tmp_dir().unwrap();
        let p = t.path().join("b");
        fs::write(&p, bytes).unwrap();
        let (sha256, size_bytes) = fsutil::hash_file(&p).unwrap();
        let a = ArtifactRef { sha256, size_bytes };
        cache.insert_blob(&p, &a).unwrap();
        a
    }

    /// A cache where the kernel and `debian:12` look built, without any network.
    fn synthetic_cache() -> (tempfile::TempDir, Cache, KernelManifest) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let vmlinux = put_blob(&cache, &crate::kernel::tests::pvh_elf());
        let modules = kernel::all_modules()
            .map(|name| ModuleRef {
                name: name.to_owned(),
                artifact: put_blob(&cache, format!("module {name}").as_bytes()),
            })
            .collect();
        let k = KernelManifest {
            schema_version: SCHEMA_VERSION,
            package: kernel::KERNEL_PACKAGE.into(),
            kernel_release: "6.1.0-test-amd64".into(),
            vmlinux: vmlinux.clone(),
            modules,
            built_at: 1.0,
            build_seconds: 6.0,
            pyro_image_version: PYRO_IMAGE_VERSION.into(),
        };
        cache.write_kernel_manifest(&k).unwrap();
        let mut m = sample_manifest("debian:12");
        m.packages = catalog::lookup("debian:12").unwrap().packages();
        m.artifacts.kernel = vmlinux;
        m.artifacts.rootfs = put_blob(&cache, b"rootfs of debian:12");
        cache.write_environment_manifest(&m).unwrap();
        (dir, cache, k)
    }

    fn agent(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn pull(cache: &Cache, name: &str, agent: &Path) -> (Installed, Vec<Progress>) {
        let mut seen = Vec::new();
        let inst = ensure_environment(cache, name, agent, &mut |p| seen.push(p)).unwrap();
        (inst, seen)
    }

    #[test]
    fn a_kernel_cached_without_the_net_modules_is_rebuilt() {
        let (_dir, cache, mut k) = synthetic_cache();
        assert!(installed_kernel(&cache).is_some());
        // What an older pyro cached: GUEST_MODULES only.
        k.modules.truncate(kernel::GUEST_MODULES.len());
        cache.write_kernel_manifest(&k).unwrap();
        assert!(installed_kernel(&cache).is_none());
    }

    #[test]
    fn installed_environment_returns_at_once_and_a_new_agent_rebuilds_only_the_initramfs() {
        let (dir, cache, k) = synthetic_cache();
        let a1 = agent(dir.path(), "agent1", b"agent one");
        let (first, seen) = pull(&cache, "debian:12", &a1);
        let phases: Vec<&str> = seen.iter().map(|p| p.phase).collect();
        assert_eq!(phases, ["kernel", "bootstrap", "initramfs", "ready"]);
        assert!(seen.iter().all(|p| p.total == TOTAL_STEPS));
        assert!(seen[2].message.starts_with("writing the initramfs"));
        assert_eq!(first.kernel, cache.blob_path(&k.vmlinux.sha256));
        assert_eq!(first.kernel_release, "6.1.0-test-amd64");
        assert_eq!(first.digests.rootfs_agent, "ab".repeat(32));
        let (agent_sha, _) = fsutil::hash_file(&a1).unwrap();
        assert_eq!(first.digests.agent, agent_sha);
        let (cpio_sha, _) = fsutil::hash_file(&first.initramfs).unwrap();
        assert_eq!(first.digests.initramfs, cpio_sha);
        assert_eq!(
            fs::metadata(&first.initramfs).unwrap().permissions().mode() & 0o777,
            0o444
        );
        // The network driver has its own list (the cpio is uncompressed: names and
        // contents appear as they are).
        let cpio = fs::read(&first.initramfs).unwrap();
        let has = |needle: &[u8]| cpio.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"etc/pyro/modules.net.order\0"));
        assert!(has(b"failover.ko\nnet_failover.ko\nvirtio_net.ko\n"));
        assert!(has(b"lib/modules/virtio_net.ko\0"));
        assert!(
            !has(b"virtio_console.ko\nfailover.ko"),
            "not in the boot list"
        );

        // Same agent: nothing is written.
        let (again, seen) = pull(&cache, "debian:12", &a1);
        assert_eq!(again, first);
        assert!(seen[2].message.starts_with("initramfs cached"), "{seen:?}");

        // New agent: a new initramfs; kernel and rootfs untouched.
        let a2 = agent(dir.path(), "agent2", b"agent two");
        let (second, _) = pull(&cache, "debian:12", &a2);
        assert_ne!(second.initramfs, first.initramfs);
        assert_ne!(second.digests.initramfs, first.digests.initramfs);
        assert_eq!(second.rootfs, first.rootfs);
        assert_eq!(second.kernel, first.kernel);
        let m = cache
            .read_environment_manifest("debian:12")
            .unwrap()
            .unwrap();
        assert_eq!(m.initramfs.unwrap().agent_sha256, second.digests.agent);

        let info = inspect(&cache, "debian:12").unwrap();
        assert!(info.installed);
        assert_eq!(
            info.initramfs_image.as_deref(),
            Some(second.initramfs.as_path())
        );
        assert_eq!(info.rootfs_image.as_deref(), Some(second.rootfs.as_path()));
        assert_eq!(
            info.source_digest.as_deref(),
            Some(second.digests.rootfs.as_str())
        );

        let err = ensure_environment(&cache, "debian:13", &a1, &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::UnknownEnvironment { .. }));
        let err = ensure_environment(&cache, "debian:12", dir.path(), &mut |_| {}).unwrap_err();
        assert!(matches!(err, ImageError::AgentNotFile { .. }), "{err}");
    }

    #[test]
    fn info_json_has_the_contract_fields() {
        let (dir, cache, _) = synthetic_cache();
        let a = agent(dir.path(), "agent", b"agent");
        pull(&cache, "debian:12", &a);
        let all = list(&cache);
        assert_eq!(
            all.iter()
                .map(|i| (i.name.as_str(), i.installed))
                .collect::<Vec<_>>(),
            [
                ("debian:12", true),
                ("debian:12-base", false),
                ("debian:12-build", false)
            ]
        );
        let v = serde_json::to_value(&all[0]).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        let mut want = vec![
            "name",
            "version",
            "description",
            "default_packages",
            "distribution",
            "distribution_version",
            "platform",
            "oci_registry",
            "oci_repository",
            "oci_reference",
            "source_digest",
            "compatibility",
            "catalog_version",
            "installed",
            "cache_dir",
            "install_dir",
            "install_manifest",
            "kernel_image",
            "rootfs_image",
            "initramfs_image",
            "source",
            "built_at",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(v["oci_reference"], serde_json::Value::Null);
        assert_eq!(v["source"], "local:mmdebstrap debian bookworm");
        assert_eq!(
            v["default_packages"],
            serde_json::json!(["bash", "coreutils", "git"])
        );

        let absent = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(absent["installed"], false);
        assert_eq!(absent["source_digest"], serde_json::Value::Null);
        assert!(absent.get("install_dir").is_none());
        assert!(absent.get("kernel_image").is_none());
    }

    #[test]
    fn verify_rehashes_and_reports_damage() {
        let (dir, cache, _) = synthetic_cache();
        let a = agent(dir.path(), "agent", b"agent");
        let (inst, _) = pull(&cache, "debian:12", &a);
        let report = verify(&cache, "debian:12").unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.artifacts.len(), 3 + kernel::all_modules().count());

        fs::set_permissions(&inst.rootfs, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&inst.rootfs, b"rootfs of debian:13").unwrap();
        let report = verify(&cache, "debian:12").unwrap();
        assert!(!report.ok);
        let bad: Vec<&str> = report
            .artifacts
            .iter()
            .filter(|a| !a.ok)
            .map(|a| a.artifact.as_str())
            .collect();
        assert_eq!(bad, ["rootfs"]);

        assert!(matches!(
            verify(&cache, "debian:12-base"),
            Err(ImageError::NotInstalled { .. })
        ));
    }

    #[test]
    fn prune_removes_only_what_nothing_needs() {
        let (dir, cache, k) = synthetic_cache();
        let root = cache.root().to_owned();
        let a1 = agent(dir.path(), "agent1", b"agent one");
        let a2 = agent(dir.path(), "agent2", b"agent two");
        let (old, _) = pull(&cache, "debian:12", &a1);
        let (live, _) = pull(&cache, "debian:12", &a2);

        // An environment that is not in the catalog.
        let mut foreign = sample_manifest("debian:11");
        foreign.artifacts.rootfs = put_blob(&cache, b"rootfs of debian:11");
        cache.write_environment_manifest(&foreign).unwrap();
        // One whose rootfs blob is gone.
        let mut broken = sample_manifest("debian:12-base");
        broken.packages = catalog::lookup("debian:12-base").unwrap().packages();
        cache.write_environment_manifest(&broken).unwrap();
        // One built for an older catalog version.
        let mut outdated = sample_manifest("debian:12-build");
        outdated.version = "0.9.0".into();
        outdated.packages = catalog::lookup("debian:12-build").unwrap().packages();
        outdated.artifacts.rootfs = put_blob(&cache, b"rootfs of debian:12-build 0.9");
        cache.write_environment_manifest(&outdated).unwrap();
        // An unreferenced blob, a dead build, an interrupted atomic write.
        let orphan = put_blob(&cache, b"nobody needs me");
        fs::create_dir_all(root.join("tmp/77-dead/root")).unwrap();
        fs::write(root.join("tmp/77-dead.lock"), b"").unwrap();
        fs::write(
            root.join("environments/debian_12/.manifest.json.tmp-77-ab"),
            b"{",
        )
        .unwrap();

        let report = prune(&cache).unwrap();
        let old_key = old
            .initramfs
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut want = vec![
            "environments/debian_11".to_owned(),
            "environments/debian_12-base".to_owned(),
            "environments/debian_12-build".to_owned(),
            format!("blobs/sha256/{}", foreign.artifacts.rootfs.sha256),
            format!("blobs/sha256/{}", outdated.artifacts.rootfs.sha256),
            format!("blobs/sha256/{}", orphan.sha256),
            format!("initramfs/{old_key}.cpio"),
            format!("initramfs/{old_key}.json"),
            "tmp/77-dead".to_owned(),
        ];
        want.sort();
        assert_eq!(report.deleted, want);
        assert!(report.freed_bytes > 0);
        assert!(
            !root
                .join("environments/debian_12/.manifest.json.tmp-77-ab")
                .exists()
        );

        // What the live environment needs survived, and it is still installed.
        assert!(live.initramfs.exists() && live.rootfs.exists() && live.kernel.exists());
        for m in &k.modules {
            assert!(cache.has_blob(&m.artifact));
        }
        assert!(verify(&cache, "debian:12").unwrap().ok);
        let (again, seen) = pull(&cache, "debian:12", &a2);
        assert_eq!(again, live);
        assert!(seen.iter().all(|p| p.phase != "mkfs"));

        // A second prune finds nothing.
        assert_eq!(prune(&cache).unwrap().deleted, Vec::<String>::new());

        // Without the kernel's blobs the kernel manifest goes too.
        fs::remove_file(cache.blob_path(&k.vmlinux.sha256)).unwrap();
        let report = prune(&cache).unwrap();
        assert!(report.deleted.contains(&"kernel/manifest.json".to_owned()));
        assert!(
            report
                .deleted
                .contains(&format!("blobs/sha256/{}", k.modules[0].artifact.sha256))
        );
        assert!(!inspect(&cache, "debian:12").unwrap().installed);
    }
}
