//! The CUDA kernels against the CPU reference, byte for byte: the golden cases and random
//! tensors of awkward sizes, every format, quantize and dequantize, and one tensor over
//! 2^31 bytes. Every test here is `#[ignore]`d, so a run without a GPU reports them as
//! ignored rather than passed; `scripts/gpu-test.sh` runs them with `--include-ignored`,
//! and there a missing device is a failure.
#![cfg(feature = "cuda")]

mod common;

use wmap::cuda::Gpu;
use wmap::quant::{self, Format, QuantizedTensor};

/// Inside an ignored test: the device must be there (a skip would read as a pass).
fn need_gpu() {
    assert!(
        wmap::cuda::available(),
        "no CUDA driver or device: run these tests on a GPU machine"
    );
}

fn bf16_random(n: usize, seed: u64) -> Vec<u16> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Mostly ~N(0,1)-sized values, with zeros, exact ties and large outliers mixed in.
            match i % 97 {
                0 => 0,
                1 => half::bf16::from_f32(0.75).to_bits(),
                2 => half::bf16::from_f32(-3.5e3).to_bits(),
                _ => half::bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0)
                    .to_bits(),
            }
        })
        .collect()
}

fn to_f32(x: &[u16]) -> Vec<f32> {
    x.iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn scales_bytes(q: &QuantizedTensor) -> Vec<u8> {
    match &q.scales {
        quant::Scales::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        quant::Scales::U8(v) => v.clone(),
    }
}

/// GPU quantize (and dequantize) of `x` equals the CPU reference exactly.
fn check(gpu: &Gpu, format: Format, x: &[u16], shape: &[u64], what: &str) {
    let cpu = quant::quantize(format, &to_f32(x), shape);
    let dev_x = gpu.stream.clone_htod(x).unwrap();
    let q = gpu.quantize(format, &dev_x.as_view(), shape).unwrap();
    let g = q.to_host(gpu).unwrap();
    assert_eq!(
        first_difference(&g.data, &cpu.data),
        None,
        "{what} {}: codes",
        format.name()
    );
    assert_eq!(
        first_difference(&scales_bytes(&g), &scales_bytes(&cpu)),
        None,
        "{what} {}: scales",
        format.name()
    );
    assert_eq!(g.nested, cpu.nested, "{what} {}: nested", format.name());
    assert_eq!(
        g.tensor_scale,
        cpu.tensor_scale,
        "{what} {}: tensor scale",
        format.name()
    );
    {
        let mut out = gpu.stream.alloc_zeros::<u16>(x.len()).unwrap();
        gpu.dequantize(&q, &mut out).unwrap();
        let got = gpu.stream.clone_dtoh(&out).unwrap();
        let mut want = vec![half::bf16::ZERO; x.len()];
        cpu.dequantize_bf16(&mut want);
        let want: Vec<u16> = want.iter().map(|b| b.to_bits()).collect();
        let bad = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(bad, None, "{what} {}: dequant", format.name());
    }
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn kernels_match_the_cpu_reference() {
    need_gpu();
    let gpu = Gpu::new(0).expect("open the GPU");
    println!("device: {} ({})", gpu.name, gpu.arch);
    let shapes: &[&[u64]] = &[
        &[77],
        &[1, 33],
        &[7, 45],
        &[128, 64],
        &[300, 257],
        &[1024, 4096],
        &[3, 131071],
    ];
    let mut formats: Vec<Format> = Format::NAMES
        .iter()
        .map(|n| Format::parse(n).unwrap())
        .collect();
    for bs in [32, 128, 256, 512, 1024, 2048, 4096] {
        formats.push(Format::Nf4 { blocksize: bs });
        formats.push(Format::Fp4 { blocksize: bs });
        formats.push(Format::Nf4Dq { blocksize: bs });
    }
    let mut checks = 0;
    for (i, shape) in shapes.iter().enumerate() {
        let n = shape.iter().product::<u64>() as usize;
        let x = bf16_random(n, 17 + i as u64);
        for &f in &formats {
            check(&gpu, f, &x, shape, &format!("random {shape:?}"));
            checks += 1;
        }
    }
    // The golden inputs, as bitsandbytes saw them.
    let golden =
        std::fs::read(common::root().join("tests/fixtures/golden/bnb_4bit.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&golden).unwrap();
    for case in 0..7 {
        let t = st.tensor(&format!("case{case}.nf4.input")).unwrap();
        let x: Vec<u16> = t
            .data()
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
        let bs = i64::from_le_bytes(
            st.tensor(&format!("case{case}.nf4.blocksize"))
                .unwrap()
                .data()[..8]
                .try_into()
                .unwrap(),
        ) as usize;
        for f in [
            Format::Nf4 { blocksize: bs },
            Format::Fp4 { blocksize: bs },
            Format::Nf4Dq { blocksize: bs },
        ] {
            check(&gpu, f, &x, &shape, &format!("golden case{case}"));
            checks += 1;
        }
        let packed = st
            .tensor(&format!("case{case}.nf4.packed"))
            .unwrap()
            .data()
            .to_vec();
        let dev_x = gpu.stream.clone_htod(&x).unwrap();
        let q = gpu
            .quantize(Format::Nf4 { blocksize: bs }, &dev_x.as_view(), &shape)
            .unwrap()
            .to_host(&gpu)
            .unwrap();
        assert_eq!(
            q.data, packed,
            "golden case{case}: GPU NF4 equals bitsandbytes"
        );
    }
    println!("{checks} format × tensor checks byte-identical");
}

/// One input over 2^31 bytes, so 32-bit index arithmetic would show.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn a_tensor_over_two_gib_matches() {
    need_gpu();
    let gpu = Gpu::new(0).expect("open the GPU");
    let n = (1usize << 30) + 4099; // 2 GiB + 8 KiB of bf16
    let x = bf16_random(n, 99);
    let f = Format::Nf4 { blocksize: 64 };
    let cpu = quant::quantize(f, &to_f32(&x), &[n as u64]);
    let dev_x = gpu.stream.clone_htod(&x).unwrap();
    let g = gpu
        .quantize(f, &dev_x.as_view(), &[n as u64])
        .unwrap()
        .to_host(&gpu)
        .unwrap();
    assert_eq!(first_difference(&g.data, &cpu.data), None, "packed");
    assert_eq!(
        first_difference(&scales_bytes(&g), &scales_bytes(&cpu)),
        None,
        "absmax"
    );
    println!("{} elements ({} bytes of bf16) byte-identical", n, 2 * n);
}

/// The GPU loader delivers what the CPU loader does: full-precision targets byte for byte,
/// quantized ones equal to the CPU quantizing sink's — also with staging buffers and
/// quantization chunks far smaller than a tensor, so targets span buffers, small ones
/// share them, and large ones are quantized piece by piece.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn the_gpu_loader_matches_the_cpu_loader() {
    need_gpu();
    use wmap::cuda::loader::{self, DeviceTensor, Staging};
    use wmap::driver::{self, ModelSource};
    let gpu = Gpu::new(0).expect("open the GPU");
    for (fixture, format) in [
        ("qwen3_moe", Some(Format::Nf4 { blocksize: 64 })),
        ("llama_tied", Some(Format::Fp8Block { block: 128 })),
        ("mamba2", None),
    ] {
        let dir = common::root().join("tests/fixtures/hf").join(fixture);
        let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
        let b = driver::bind(&mut c, &dir, true).unwrap();
        let cpu_full = wmap::load::HostStore::default();
        wmap::load::execute(
            &b.plan,
            &b.checkpoint,
            &cpu_full,
            Default::default(),
            &|_| {},
        )
        .unwrap();
        let cpu_full = cpu_full.into_tensors();
        for (staging_bytes, chunk) in [(4096usize, 4096usize), (1 << 20, 1 << 25)] {
            let mut staging = Staging::new(&gpu, 3, staging_bytes).unwrap();
            // Small chunks: stacked experts quantize in many pieces into one tensor.
            staging.chunk_elems = chunk;
            let (store, _) =
                loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, format).unwrap();
            for t in &b.plan.targets {
                let what = format!("{fixture} staging {staging_bytes}: {}", t.name);
                match store.get(&t.name).unwrap() {
                    DeviceTensor::Quantized(q) => {
                        let x: Vec<f32> = quant::to_f32(t.dtype, &cpu_full[&t.name].data);
                        let cpu = quant::quantize(format.unwrap(), &x, &t.shape);
                        let g = q.to_host(&gpu).unwrap();
                        assert_eq!(g.data, cpu.data, "{what}");
                        assert_eq!(scales_bytes(&g), scales_bytes(&cpu), "{what}");
                        assert_eq!(g.nested, cpu.nested, "{what}");
                        assert_eq!(g.tensor_scale, cpu.tensor_scale, "{what}");
                    }
                    DeviceTensor::Full { data, .. } => {
                        let got = gpu.stream.clone_dtoh(data).unwrap();
                        assert_eq!(got, *cpu_full[&t.name].data, "{what}");
                    }
                    DeviceTensor::Tied(_) => unreachable!("get follows ties"),
                }
            }
        }
    }
    println!("GPU loads (nf4, nf4-dq, mxfp4, fp8-block, nvfp4, full; small and large chunks) match the CPU");
}

/// The GPU weight manager: experts offloaded to page-locked host groups under a small
/// budget; every `get` equals the CPU's dequantization of the CPU's quantization.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn the_gpu_weight_manager_serves_exact_bf16() {
    need_gpu();
    use std::sync::Arc;
    use wmap::cuda::loader::{self, Staging};
    use wmap::cuda::weights::DeviceWeights;
    use wmap::driver::{self, ModelSource};
    use wmap::offload::Policy;
    let gpu = Arc::new(Gpu::new(0).expect("open the GPU"));
    for (fixture, format) in [
        ("qwen3_moe", Format::Nf4 { blocksize: 64 }),
        ("qwen3_moe", Format::Nf4Dq { blocksize: 64 }),
        ("nemotron_h_moe", Format::Mxfp4),
        ("nemotron_h_moe", Format::Fp8Block { block: 128 }),
    ] {
        let dir = common::root().join("tests/fixtures/hf").join(fixture);
        let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
        let b = driver::bind(&mut c, &dir, true).unwrap();
        let cpu = wmap::quant::QuantStore::new(format);
        wmap::load::execute(&b.plan, &b.checkpoint, &cpu, Default::default(), &|_| {}).unwrap();
        let cpu = cpu.into_tensors();
        let mut staging = Staging::new(&gpu, 3, 1 << 20).unwrap();
        let (store, _) =
            loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, Some(format)).unwrap();
        let mut w =
            DeviceWeights::new(gpu.clone(), &b.plan, store, 100 << 10, Policy::OrderAware).unwrap();
        let names: Vec<String> = w.names().map(str::to_string).collect();
        for name in &names {
            let view = w.get(name).unwrap();
            let got = gpu.stream.clone_dtoh(view.data.as_ref().unwrap()).unwrap();
            assert!(
                w.offload.device_bytes() <= 100 << 10,
                "{fixture}: over budget"
            );
            let (base, slice) = match name.split_once('[') {
                Some((b, i)) => (
                    b.to_string(),
                    Some(i.trim_end_matches(']').parse::<usize>().unwrap()),
                ),
                None => (name.clone(), None),
            };
            let stored = match (&cpu[&base], slice) {
                (wmap::quant::Stored::Quantized(q), Some(i)) => {
                    wmap::quant::Stored::Quantized(q.slice_leading(i).unwrap())
                }
                (s, _) => s.clone(),
            };
            let mut want = vec![half::bf16::ZERO; got.len()];
            wmap::weights::dequantize_into(&stored, &mut want);
            let want: Vec<u16> = want.iter().map(|b| b.to_bits()).collect();
            assert_eq!(got, want, "{fixture} {}: {name}", format.name());
        }
        assert!(w.reused > 0, "same-shape buffers are reused");
    }
    println!("GPU weight manager: nf4, nf4-dq, mxfp4, fp8-block gets match the CPU");
}

/// Dropping an offload manager while prefetches are still copying: the backend drains
/// the copy stream before it unpins the pool, and in-flight tickets keep the pool alive.
/// A second manager afterwards must pin, copy and return exact bytes (an unpin that never
/// happened would make its registration fail).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn dropping_a_manager_with_prefetches_in_flight_is_sound() {
    need_gpu();
    use std::sync::Arc;
    use wmap::cuda::offload::CudaBackend;
    use wmap::offload::{Manager, Policy};
    let gpu = Arc::new(Gpu::new(0).expect("open the GPU"));
    let groups: Vec<(String, usize)> = (0..48).map(|g| (format!("g{g}"), 16 << 20)).collect();
    for round in 0..3u8 {
        let mut m = Manager::new(
            CudaBackend::new(gpu.clone()),
            &groups,
            u64::MAX,
            Policy::Lru,
        );
        for g in 0..groups.len() {
            let fill = (g as u8).wrapping_mul(7).wrapping_add(round);
            m.host_mut(g).unwrap().fill(fill);
        }
        for g in 0..groups.len() {
            m.prefetch(g).unwrap();
        }
        if round < 2 {
            // 768 MiB still in flight: drop without waiting.
            drop(m);
            continue;
        }
        for g in [0, 17, 47] {
            let want = vec![(g as u8).wrapping_mul(7).wrapping_add(round); 16 << 20];
            let got = gpu.stream.clone_dtoh(m.acquire(g).unwrap()).unwrap();
            assert!(got == want, "group {g}: bytes after two dropped managers");
            m.release(g);
        }
    }
    println!("offload: managers dropped with 768 MiB of prefetches in flight; the next one copies exactly");
}
