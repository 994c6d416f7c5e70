//! Every CUDA kernel compiles with NVRTC for sm_90, on a machine without a GPU: CI
//! installs libnvrtc from the `nvidia-cuda-nvrtc` wheel. Without libnvrtc the test says
//! so and passes, except in CI (`CI` set), where a missing compiler is a failure.
#![cfg(feature = "cuda")]

#[test]
fn every_kernel_compiles_for_sm_90() {
    match wmap::cuda::sources::compile_all("sm_90") {
        Ok(ptx) => {
            let names: Vec<&str> = ptx.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                names,
                ["bnb4", "bnb4_v2", "fp8", "fp4", "convert", "prequant"]
            );
            // Every kernel the device loads by name is an entry of its file's PTX.
            for (module, code) in &ptx {
                let src = code.to_src();
                for f in wmap::cuda::kernel_names(module) {
                    assert!(
                        src.contains(&format!(".entry {f}(")),
                        "kernels/{module}.cu defines no kernel `{f}`"
                    );
                }
            }
            println!("compiled {} kernel files for sm_90", ptx.len());
        }
        Err(e)
            if e.to_string().starts_with("libnvrtc could not be loaded")
                && std::env::var_os("CI").is_none() =>
        {
            println!("skipped: {e}");
        }
        Err(e) => panic!("{e}"),
    }
}

/// The kernel cache: the first process compiles every file to a CUBIN and stores it, the
/// next reads the same images back; a damaged entry is recompiled, never loaded.
#[test]
fn kernels_are_compiled_once_then_read_from_the_cache() {
    let dir = std::env::temp_dir().join(format!("wmap-kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("WMAP_KERNEL_CACHE", &dir);
    let first = match wmap::cuda::sources::device_code("sm_90") {
        Ok(r) => r,
        Err(e)
            if e.to_string().contains("libnvrtc could not be loaded")
                && std::env::var_os("CI").is_none() =>
        {
            println!("skipped: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let n = wmap::cuda::sources::FILES.len();
    assert_eq!((first.1.cached, first.1.compiled), (0, n));
    let second = wmap::cuda::sources::device_code("sm_90").unwrap();
    assert_eq!((second.1.cached, second.1.compiled), (n, 0));
    for ((a, x), (b, y)) in first.0.iter().zip(&second.0) {
        assert_eq!(a, b);
        assert_eq!(x, y, "{a}: the cached image differs");
        assert!(x.starts_with(b"\x7fELF"), "{a}: not a CUBIN");
    }
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    let third = wmap::cuda::sources::device_code("sm_90").unwrap();
    assert_eq!((third.1.cached, third.1.compiled), (n - 1, 1));
    std::fs::remove_dir_all(&dir).unwrap();
}
