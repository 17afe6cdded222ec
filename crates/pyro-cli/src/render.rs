//! Rendering of results: JSON (2-space indent, sorted keys) and the human text blocks.

use serde::Serialize;

/// JSON text with sorted keys and 2-space indentation.
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into())
}

/// Prints `value` as sorted, indented JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    // Going through `Value` sorts the keys (serde_json's map is a BTreeMap here).
    let v = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    println!("{}", pretty(&v));
}

/// The human block describing one environment.
pub fn env_block(title: &str, e: &pyro_image::EnvironmentInfo) {
    println!("{title}: {}", e.name);
    println!("Version: {}", e.version);
    println!(
        "Distribution: {} {}",
        e.distribution, e.distribution_version
    );
    println!("Installed: {}", if e.installed { "yes" } else { "no" });
    println!("Cache dir: {}", e.cache_dir.display());
    println!("Default packages: {}", e.default_packages.join(", "));
    println!("Description: {}", e.description);
    if let Some(d) = &e.install_dir {
        println!("Install dir: {}", d.display());
    }
    if let Some(m) = &e.install_manifest {
        println!("Install manifest: {}", m.display());
    }
    if let Some(k) = &e.kernel_image {
        println!("Kernel image: {}", k.display());
    }
    if let Some(r) = &e.rootfs_image {
        println!("Rootfs image: {}", r.display());
    }
    if let Some(i) = &e.initramfs_image {
        println!("Initramfs image: {}", i.display());
    }
    if let Some(d) = &e.source_digest {
        println!("Rootfs sha256: {d}");
    }
    println!("Source: {}", e.source);
}
