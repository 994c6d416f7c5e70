//! Build-time probe: `wmap_avx512` is set when this rustc has stable AVX-512 intrinsics
//! (1.89 and later), so the crate still builds with its declared rust-version (1.85),
//! without the AVX-512 NF4 encoder, on an older compiler.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(wmap_avx512)");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return;
    };
    // "rustc 1.95.0 (…)": the minor version.
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo:rustc-cfg=wmap_avx512");
    }
}
