//! The CUDA kernels against the CPU reference, byte for byte: the golden cases and random
//! tensors of awkward sizes, every format, quantize and dequantize, and one tensor over
//! 2^31 bytes. Every test here is `#[ignore]`d, so a run without a GPU reports them as
//! ignored rather than passed; `scripts/gpu-test.sh` runs them with `--include-ignored`,
//! and there a missing device is a failure.
#![cfg(feature = "cuda")]

mod common;

use wmap::cuda::{Gpu, KernelVersion};
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
    let bad = differences(gpu, format, x, shape, false);
    assert!(bad.is_empty(), "{what} {format:?}: {}", bad.join("; "));
}

/// The parts of the GPU's quantization of `x` (codes, scales, nested scales, tensor
/// scale, dequantized bf16) that differ from the CPU reference, each with its first
/// differing index and both values there. `any_nan`: a dequantized NaN equals any NaN
/// (the GPU's multiply returns its canonical NaN, the CPU's keeps or makes another).
fn differences(gpu: &Gpu, format: Format, x: &[u16], shape: &[u64], any_nan: bool) -> Vec<String> {
    fn first<T: PartialEq + std::fmt::Debug>(part: &str, got: &[T], want: &[T]) -> Option<String> {
        if got.len() != want.len() {
            return Some(format!("{part}: {} values, want {}", got.len(), want.len()));
        }
        let i = got.iter().zip(want).position(|(a, b)| a != b)?;
        Some(format!("{part}[{i}] = {:?}, want {:?}", got[i], want[i]))
    }
    let cpu = quant::quantize(format, &to_f32(x), shape);
    let dev_x = gpu.stream.clone_htod(x).unwrap();
    let q = gpu.quantize(format, &dev_x.as_view(), shape).unwrap();
    let g = q.to_host(gpu).unwrap();
    let mut bad: Vec<String> = [
        first("codes", &g.data, &cpu.data),
        first("scales", &scales_bytes(&g), &scales_bytes(&cpu)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if g.nested != cpu.nested {
        bad.push("nested".into());
    }
    if g.tensor_scale != cpu.tensor_scale {
        bad.push(format!(
            "tensor scale {:?}, want {:?}",
            g.tensor_scale, cpu.tensor_scale
        ));
    }
    let mut out = gpu.stream.alloc_zeros::<u16>(x.len()).unwrap();
    gpu.dequantize(&q, &mut out).unwrap();
    let got = gpu.stream.clone_dtoh(&out).unwrap();
    let mut want = vec![half::bf16::ZERO; x.len()];
    cpu.dequantize_bf16(&mut want);
    let want: Vec<u16> = want.iter().map(|b| b.to_bits()).collect();
    let nan = |b: u16| any_nan && (b & 0x7fff) > 0x7f80;
    let canonical =
        |v: &[u16]| -> Vec<u16> { v.iter().map(|&b| if nan(b) { 0x7fc0 } else { b }).collect() };
    bad.extend(first("dequant", &canonical(&got), &canonical(&want)));
    bad
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn kernels_match_the_cpu_reference() {
    need_gpu();
    let mut gpu = Gpu::new(0).expect("open the GPU");
    println!("device: {} ({})", gpu.name, gpu.arch);
    for version in [KernelVersion::V1, KernelVersion::V2] {
        gpu.kernels_version = version;
        every_format_matches(&gpu, &format!("{version:?}"));
    }
}

fn every_format_matches(gpu: &Gpu, version: &str) {
    // Odd tails, tiny tensors, and sizes on either side of the v2 kernels' tiles
    // (8192 elements per quantize CTA, 16384 per dequantize CTA, 128x128 FP8 tiles).
    let shapes: &[&[u64]] = &[
        &[77],
        &[1, 33],
        &[7, 45],
        &[128, 64],
        &[300, 257],
        &[1024, 4096],
        &[3, 131071],
        &[8192],
        &[8200],
        &[2, 16376],
        &[256, 384],
        &[130, 136],
        &[129, 4100],
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
            check(gpu, f, &x, shape, &format!("{version} random {shape:?}"));
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
            check(gpu, f, &x, &shape, &format!("{version} golden case{case}"));
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
            .to_host(gpu)
            .unwrap();
        assert_eq!(
            q.data, packed,
            "{version} golden case{case}: GPU NF4 equals bitsandbytes"
        );
    }
    println!("{version}: {checks} format × tensor checks byte-identical");
}

/// Values at the edges of every conversion: NaN of both signs, infinities, subnormals,
/// all-zero and all-subnormal blocks (absmax 0 or flushed by the reciprocal), a lone NaN
/// or inf in a block, E4M3 rounding ties and saturation, mixed into random data.
fn bf16_special(n: usize, seed: u64) -> Vec<u16> {
    let special: [u16; 16] = [
        0x7fc0, 0xffc0, 0x7f81, 0x7f80, 0xff80, 0x0001, 0x8001, 0x007f, 0x0080, 0x8000,
        0x43e8, // 464: an E4M3 tie at saturation
        0x43e0, // 448
        0x3f90, // 1.125: E4M3 tie between 1.0 and 1.25 before scaling
        0x3c00, // 2^-7: an E4M3 subnormal after a scale of 1
        0x7f7f, // the largest bf16
        0xff7f,
    ];
    let mut x = bf16_random(n, seed);
    let mut s = seed | 1;
    for (i, v) in x.iter_mut().enumerate() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        match (i / 64) % 8 {
            0 => *v = 0,                   // an all-zero block
            1 => *v = (s as u16) & 0x807f, // subnormals and zeros only
            2 if s % 13 == 0 => *v = special[(s >> 8) as usize % 16],
            3 if i % 64 == 5 => *v = 0x7fc0, // one NaN
            4 if i % 64 == 9 => *v = 0xff80, // one -inf
            _ => {}
        }
    }
    x
}

#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn special_values_match_the_cpu_reference() {
    need_gpu();
    let mut gpu = Gpu::new(0).expect("open the GPU");
    let mut formats = vec![Format::Fp8Block { block: 128 }];
    for bs in [32, 64, 128, 256, 512] {
        formats.push(Format::Nf4 { blocksize: bs });
        formats.push(Format::Fp4 { blocksize: bs });
    }
    let shapes: &[&[u64]] = &[&[256, 512], &[130, 200], &[3, 1001]];
    let (mut checks, mut failures) = (0, Vec::new());
    for version in [KernelVersion::V1, KernelVersion::V2] {
        gpu.kernels_version = version;
        for (i, shape) in shapes.iter().enumerate() {
            let n = shape.iter().product::<u64>() as usize;
            let x = bf16_special(n, 5 + i as u64);
            for &f in &formats {
                // Every difference is listed (a v1 one too: then it predates v2).
                for d in differences(&gpu, f, &x, shape, true) {
                    failures.push(format!("{version:?} {f:?} {shape:?}: {d}"));
                }
                checks += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "special values differ:\n{}",
        failures.join("\n")
    );
    println!("{checks} special-value checks byte-identical");
}

/// The double-quant offset on the device equals `quant::torch_mean` on the CPU (which
/// `tests/torch_mean.rs` holds to torch's own GPU mean) through every launch shape: one
/// strided CTA, vector loads, a split across CTAs, the SM-count cap, a count not exact
/// in f32.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn the_offset_kernels_replay_torchs_mean() {
    need_gpu();
    let gpu = Gpu::new(0).expect("open the GPU");
    let lengths = [
        1,
        2,
        3,
        5,
        31,
        64,
        96,
        127,
        128,
        131,
        257,
        2047,
        2049,
        7681,
        130_560,
        130_561,
        262_144,
        1_000_003,
        4_325_377,
        8_208_384,
        (1 << 24) + 3,
    ];
    for (i, &n) in lengths.iter().enumerate() {
        for kind in [0, 1] {
            let x = common::hashgen::f32_values(kind, 500 + i as u32, n);
            let dev = gpu.stream.clone_htod(&x).unwrap();
            let offset = gpu.mean_offset(&dev).unwrap();
            let got = gpu.stream.clone_dtoh(&offset).unwrap()[0];
            let want = wmap::quant::torch_mean::cuda_mean(&x);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "n={n} kind={kind}: device {got:e}, CPU {want:e}"
            );
        }
    }
    println!("{} lengths × 2 kinds: device offset = CPU", lengths.len());
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
        // Small copy blocks: each fill goes to the device in many copies, queued by the
        // reader threads as their blocks complete.
        for (staging_bytes, chunk, copy_block) in [
            (4096usize, 4096usize, loader::COPY_BLOCK),
            (1 << 20, 1 << 25, loader::COPY_BLOCK),
            (1 << 20, 1 << 25, 8192),
        ] {
            let mut staging = Staging::new(&gpu, 3, staging_bytes).unwrap();
            // Small chunks: stacked experts quantize in many pieces into one tensor.
            staging.chunk_elems = chunk;
            staging.copy_block = copy_block;
            let (store, _) =
                loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, format).unwrap();
            for t in &b.plan.targets {
                let what = format!("{fixture} staging {staging_bytes}/{copy_block}: {}", t.name);
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

/// A shard that shrinks after its header was checked fails the device load with E0511
/// instead of returning tensors of stale bytes; the device and the ring stay usable.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn a_shard_truncated_during_a_device_load_fails_cleanly() {
    need_gpu();
    use wmap::cuda::loader::{self, Staging};
    use wmap::driver::{self, ModelSource};
    let gpu = Gpu::new(0).expect("open the GPU");
    let mut staging = Staging::new(&gpu, 3, 4096).unwrap();
    let dir = common::tempdir("gpu-shrinks");
    let src = common::root().join("tests/fixtures/hf/llama");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("model.safetensors"))
        .unwrap();
    f.set_len(8192).unwrap();
    let fmt = Some(Format::Nf4 { blocksize: 64 });
    let err = match loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, fmt) {
        Ok(_) => panic!("a truncated shard loaded"),
        Err(e) => wmap::diag::Diagnostic::from(e),
    };
    assert_eq!(err.code.as_str(), "E0511", "{}", err.message);
    let _ = std::fs::remove_dir_all(&dir);
    // The same ring and device load a whole checkpoint afterwards.
    let dir = common::root().join("tests/fixtures/hf/llama");
    let mut c = driver::compile(&ModelSource::Detect, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, &dir, true).unwrap();
    loader::load(&gpu, &mut staging, &b.plan, &b.checkpoint, None).unwrap();
    println!("a truncated shard fails a device load with E0511");
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
        ("qwen3_moe", Format::Nvfp4),
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
    println!("GPU weight manager: nf4, nf4-dq, mxfp4, fp8-block, nvfp4 gets match the CPU");
}

/// A device load with an offload budget goes through the Loader and hands back the
/// weights manager: experts in their host groups (none resident), the rest on the
/// device, every `get` within the budget and equal to the manager built by hand from
/// the same load (the path the CLI's report and the Python store share).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn a_device_load_with_a_budget_returns_the_weights_manager() {
    need_gpu();
    use wmap::loader::{Device, Loader, Tensors};
    use wmap::offload::Policy;
    let dir = common::root().join("tests/fixtures/hf/qwen3_moe");
    let format = Format::Nf4 { blocksize: 64 };
    let budget = 100 << 10;
    let load = |offload: bool| {
        let l = Loader::new(&dir).device(Device::Cuda(0)).quant(format);
        let l = if offload {
            l.offload(budget, Policy::OrderAware)
        } else {
            l
        };
        l.load().unwrap_or_else(|f| panic!("{:?}", f.diags))
    };
    let Tensors::DeviceOffloaded(mut got) = load(true).tensors else {
        panic!("a budget on the device returns the weights manager");
    };
    let plain = load(false);
    let Tensors::Device(d) = plain.tensors else {
        panic!("no budget: the device store");
    };
    let mut want =
        wmap::loader::offload_device(&d.gpu, &plain.plan, d.store, budget, Policy::OrderAware)
            .unwrap();
    let w = &mut got.weights;
    assert_eq!(w.offload.group_count(), 16);
    assert!(w.group_of("layers.0.moe.experts.down[3]").is_some());
    assert!(w.resident("layers.0.moe.experts.down[3]").is_none());
    assert!(w.resident("final_norm.weight").is_some());
    assert!(got.loaded_bytes > w.offload.host_bytes());
    let names: Vec<String> = w.names().map(str::to_string).collect();
    for name in &names {
        let a = w.get(name).unwrap();
        let b = want.get(name).unwrap();
        assert!(w.offload.device_bytes() <= budget, "over budget at {name}");
        let gpu = w.gpu().clone();
        let a = gpu.stream.clone_dtoh(a.data.as_ref().unwrap()).unwrap();
        let b = gpu.stream.clone_dtoh(b.data.as_ref().unwrap()).unwrap();
        assert_eq!(a, b, "{name}");
    }
    println!(
        "Loader with a device budget: {} gets equal the hand-built manager's",
        names.len()
    );
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
            let got = gpu
                .stream
                .clone_dtoh(m.acquire(g).unwrap().slice())
                .unwrap();
            assert!(got == want, "group {g}: bytes after two dropped managers");
            m.release(g);
        }
    }
    println!("offload: managers dropped with 768 MiB of prefetches in flight; the next one copies exactly");
}

/// Memory freed on the compute stream while its kernels still write it, taken again for
/// the copy stream to fill (`alloc_for_copies`): the copy must land after those kernels,
/// or their late writes clobber it. The same sequence without the ordering is run too and
/// its clobbered bytes printed (a race: informative, not asserted).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn a_copy_into_reused_memory_waits_for_the_kernels_that_freed_it() {
    need_gpu();
    use cudarc::driver::DevicePtr;
    let gpu = Gpu::new(0).expect("open the GPU");
    let n = 32usize << 20;
    let x = gpu.stream.clone_htod(&bf16_random(n, 11)).unwrap();
    let q = gpu
        .quantize(Format::Nf4 { blocksize: 64 }, &x.as_view(), &[n as u64])
        .unwrap();
    let pattern: Vec<u8> = (0..2 * n).map(|i| (i % 251) as u8).collect();
    let mut clobbered = Vec::new();
    for ordered in [true, false] {
        let mut out = unsafe { gpu.stream.alloc::<u16>(n) }.unwrap();
        let freed = out.device_ptr(&gpu.stream).0;
        // Milliseconds of kernels writing `out`, queued and not waited for.
        for _ in 0..40 {
            gpu.dequantize(&q, &mut out).unwrap();
        }
        drop(out);
        let mut b = if ordered {
            unsafe { gpu.alloc_for_copies::<u8>(2 * n) }.unwrap()
        } else {
            unsafe { gpu.stream.alloc::<u8>(2 * n) }.unwrap()
        };
        assert_eq!(
            b.device_ptr(&gpu.stream).0,
            freed,
            "the pool did not hand the freed memory back: this test checks nothing"
        );
        gpu.copy_stream.memcpy_htod(&pattern, &mut b).unwrap();
        gpu.compute_after_copies().unwrap();
        let got = gpu.stream.clone_dtoh(&b).unwrap();
        let bad = got.iter().zip(&pattern).filter(|(a, b)| a != b).count();
        if ordered {
            assert_eq!(bad, 0, "the copy landed under the kernels still writing");
        }
        clobbered.push(bad);
    }
    println!(
        "ordering: a copy into reused memory exact; without the wait {} of {} bytes clobbered",
        clobbered[1],
        2 * n
    );
}

/// An offload group's buffer evicted while kernels still read it: the next copy may get the
/// same memory, and must land only after those kernels (`GroupBuffer::read_on_compute`
/// marks them; the free waits for the mark). The same without the mark is run too and its
/// differing elements printed (a race: informative, not asserted).
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn an_evicted_group_buffer_is_reused_only_after_its_readers() {
    need_gpu();
    use cudarc::driver::DevicePtr;
    use std::sync::Arc;
    use wmap::cuda::offload::CudaBackend;
    use wmap::offload::Backend;
    let gpu = Arc::new(Gpu::new(0).expect("open the GPU"));
    let backend = CudaBackend::new(gpu.clone());
    let n = 16usize << 20;
    // Two groups of n bf16 values: 1.0 in the first, 2.0 in the second.
    let mut host = vec![0u8; 4 * n];
    for (i, pair) in host.chunks_exact_mut(2).enumerate() {
        let v = half::bf16::from_f32(if i < n { 1.0 } else { 2.0 });
        pair.copy_from_slice(&v.to_bits().to_le_bytes());
    }
    let host = Arc::new(host);
    backend.prepare(&host).unwrap();
    let mut clobbered = Vec::new();
    for marked in [true, false] {
        let first = backend
            .wait(backend.start_copy(&host, 0..2 * n).unwrap())
            .unwrap();
        let freed = first.slice().device_ptr(&gpu.copy_stream).0;
        let mut out = gpu.stream.alloc_zeros::<u16>(n).unwrap();
        // Milliseconds of kernels reading the group, queued and not waited for.
        for _ in 0..40 {
            gpu.to_bf16(&first.slice().as_view(), 2, &mut out).unwrap();
        }
        if marked {
            first.read_on_compute().unwrap();
        }
        drop(first);
        let second = backend
            .wait(backend.start_copy(&host, 2 * n..4 * n).unwrap())
            .unwrap();
        assert_eq!(
            second.slice().device_ptr(&gpu.copy_stream).0,
            freed,
            "the pool did not hand the freed memory back: this test checks nothing"
        );
        let got = gpu.stream.clone_dtoh(&out).unwrap();
        let one = half::bf16::from_f32(1.0).to_bits();
        let bad = got.iter().filter(|&&v| v != one).count();
        if marked {
            assert_eq!(
                bad, 0,
                "a copy landed under the kernels reading the evicted group"
            );
        }
        clobbered.push(bad);
        gpu.sync().unwrap();
    }
    println!(
        "ordering: an evicted group's memory reused after its readers; unmarked {} of {n} elements read the next group",
        clobbered[1]
    );
}

/// The GPU loader's tensors equal the CPU loader's for `format` (`None`: full precision),
/// byte for byte, with staging buffers far smaller than a tensor. Returns the targets
/// compared.
fn gpu_load_equals_cpu_load(
    gpu: &Gpu,
    plan: &wmap::plan::Plan,
    ckpt: &wmap::checkpoint::Checkpoint,
    format: Option<Format>,
    what: &str,
    expect_stored: bool,
) -> usize {
    use wmap::cuda::loader::{self, DeviceTensor, Staging};
    use wmap::quant::Stored;
    let (cpu, through): (std::collections::BTreeMap<String, Stored>, usize) = match format {
        Some(f) => {
            let store = wmap::quant::QuantStore::new(f);
            wmap::load::execute(plan, ckpt, &store, Default::default(), &|_| {}).unwrap();
            let through = store.report().passed_through;
            (store.into_tensors(), through)
        }
        None => {
            let store = wmap::load::HostStore::default();
            wmap::load::execute(plan, ckpt, &store, Default::default(), &|_| {}).unwrap();
            let t = store.into_tensors().into_iter();
            (t.map(|(k, v)| (k, Stored::Full(v))).collect(), 0)
        }
    };
    let mut staging = Staging::new(gpu, 3, 4096).unwrap();
    let (store, stats) = loader::load(gpu, &mut staging, plan, ckpt, format).unwrap();
    let name = format.map_or("bf16", |f| f.name());
    assert_eq!(
        stats.passed_through, through,
        "{what} --quant {name}: passed through"
    );
    assert!(
        !expect_stored || stats.passed_through + stats.decoded > 0,
        "{what} --quant {name}: no pre-quantized source on the device"
    );
    for t in &plan.targets {
        let what = format!("{what} --quant {name}: {}", t.name);
        match (store.get(&t.name).unwrap(), &cpu[&t.name]) {
            (DeviceTensor::Quantized(q), Stored::Quantized(want)) => {
                let g = q.to_host(gpu).unwrap();
                assert_eq!(first_difference(&g.data, &want.data), None, "{what}: codes");
                let (gs, ws) = (scales_bytes(&g), scales_bytes(want));
                assert_eq!(first_difference(&gs, &ws), None, "{what}: scales");
                assert_eq!(g.scale_shape, want.scale_shape, "{what}: scale shape");
                assert_eq!(g.nested, want.nested, "{what}: nested");
                assert_eq!(g.tensor_scale, want.tensor_scale, "{what}: tensor scale");
            }
            (DeviceTensor::Full { data, .. }, Stored::Full(want)) => {
                let got = gpu.stream.clone_dtoh(data).unwrap();
                assert_eq!(first_difference(&got, &want.data), None, "{what}");
            }
            _ => panic!("{what}: quantized on one side only"),
        }
    }
    plan.targets.len()
}

/// Binds `dir` with `model` (`None`: the stdlib model for its config); panics on a
/// diagnostic.
fn bind_prequant(dir: &std::path::Path, model: Option<String>) -> wmap::driver::Bound {
    use wmap::driver::{self, ModelSource};
    let source = match model {
        Some(text) => ModelSource::Text {
            name: "m.wmap".into(),
            text,
        },
        None => ModelSource::Detect,
    };
    let mut c = driver::compile(&source, Some(&dir.join("config.json"))).unwrap();
    let b = driver::bind(&mut c, dir, true);
    let rendered = wmap::diag::render_human(&c.sources, &c.diags, wmap::diag::Color::Never);
    assert!(c.diags.is_empty(), "{rendered}");
    b.unwrap()
}

/// ModelOpt's NVFP4 golden cases (`tests/fixtures/golden/scales.safetensors`) as a
/// checkpoint of four `nvfp4(...)` params, in a temporary folder.
fn nvfp4_checkpoint() -> (std::path::PathBuf, String) {
    let golden =
        std::fs::read(common::root().join("tests/fixtures/golden/scales.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
    let (mut tensors, mut params) = (Vec::new(), String::new());
    for case in 0..4 {
        let shape = golden
            .tensor(&format!("nvfp4.case{case}.input"))
            .unwrap()
            .shape()
            .to_vec();
        for part in ["weight", "weight_scale", "weight_scale_2"] {
            let t = golden.tensor(&format!("nvfp4.case{case}.{part}")).unwrap();
            tensors.push((format!("c{case}.{part}"), t));
        }
        params += &format!(
            "    param c{case}: [{}, {}] quantizable from nvfp4(\"c{case}.weight\")\n",
            shape[0], shape[1]
        );
    }
    let dir = common::tempdir("gpu-nvfp4");
    let file = safetensors::serialize(tensors, &None).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"architectures": ["X"]}"#).unwrap();
    (dir, format!("model M for \"X\" {{\n{params}}}\n"))
}

/// A fine-grained FP8 matrix that does not fill its last tiles, with BF16 scales (as some
/// releases store them), in a temporary folder.
fn fp8_partial_tiles_checkpoint() -> (std::path::PathBuf, String) {
    use safetensors::tensor::TensorView;
    let (rows, cols) = (130usize, 129usize);
    let codes: Vec<u8> = (0..rows * cols).map(|i| (i * 37 % 256) as u8).collect();
    let scales: Vec<u8> = [0.5f32, -0.25, 3.0, 0.125]
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    let file = safetensors::serialize(
        [
            (
                "w",
                TensorView::new(safetensors::Dtype::F8_E4M3, vec![rows, cols], &codes).unwrap(),
            ),
            (
                "w_scale_inv",
                TensorView::new(safetensors::Dtype::BF16, vec![2, 2], &scales).unwrap(),
            ),
        ],
        &None,
    )
    .unwrap();
    let dir = common::tempdir("gpu-fp8-partial");
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"architectures": ["X"]}"#).unwrap();
    let text = r#"model M for "X" { param w: [130, 129] quantizable from fp8_blocks("w", block = [128, 128]) }"#;
    (dir, text.into())
}

/// Pre-quantized checkpoints on the GPU, every stored format × target: exact bf16 decode
/// on the device, the stored codes passed through when the format is the stored one, and
/// requantization (an FP8 release → NF4) — each equal to the CPU loader byte for byte.
/// Covers fused parts, double quant's nested absmax, GPT-OSS's transposed MXFP4 experts,
/// MXFP4 and NVFP4 passed through, NaN codes and BF16 scales.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn pre_quantized_sources_load_on_the_gpu_as_on_the_cpu() {
    need_gpu();
    let gpu = Gpu::new(0).expect("open the GPU");
    let (nf4, nf4_dq) = (
        Format::Nf4 { blocksize: 64 },
        Format::Nf4Dq { blocksize: 64 },
    );
    let fp8 = Format::Fp8Block { block: 128 };
    let fixtures: [(&str, &[Option<Format>]); 5] = [
        ("hf/qwen3_fp8", &[None, Some(fp8), Some(nf4), Some(nf4_dq)]),
        ("hf/llama_bnb_nf4", &[None, Some(nf4), Some(fp8)]),
        ("hf/llama_bnb_nf4_dq", &[None, Some(nf4_dq), Some(nf4)]),
        (
            "prequant/gpt_oss_release",
            &[None, Some(Format::Mxfp4), Some(nf4)],
        ),
        ("prequant/gpt_oss_mxfp4", &[None, Some(nf4)]),
    ];
    let gpt_oss_experts = r#"
model GptOss for "GptOssForCausalLM" {
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}.mlp.experts"
}
block Layer {
    param gate_up: [num_local_experts, hidden_size, 2 * intermediate_size]
        quantizable
        from stacked(expert in 0..num_local_experts,
                     transpose(mxfp4("gate_up_proj_blocks", scales = "gate_up_proj_scales"), 1, 2))
    param down: [num_local_experts, intermediate_size, hidden_size]
        quantizable
        from stacked(expert in 0..num_local_experts,
                     transpose(mxfp4("down_proj_blocks", scales = "down_proj_scales"), 1, 2))
}
"#;
    let mut checks = 0;
    for (fixture, formats) in fixtures {
        let dir = common::root().join("tests/fixtures").join(fixture);
        let model = fixture
            .ends_with("gpt_oss_mxfp4")
            .then(|| gpt_oss_experts.to_string());
        let b = bind_prequant(&dir, model);
        for &f in formats {
            checks += gpu_load_equals_cpu_load(&gpu, &b.plan, &b.checkpoint, f, fixture, true);
        }
    }
    // NaN codes in the partial tiles: decoded and passed through, never requantized (the
    // quantizers' NaN handling is not what this compares).
    // MXFP4 in its stored orientation passes through to `--quant mxfp4`.
    let mxfp4_rows = (
        common::root().join("tests/fixtures/prequant/gpt_oss_mxfp4"),
        r#"
model GptOss for "GptOssForCausalLM" {
    layers: Layer[layer in 0..num_hidden_layers] at "model.layers.{layer}.mlp.experts"
}
block Layer {
    param gate_up: [num_local_experts, 2 * intermediate_size, hidden_size]
        quantizable
        from mxfp4("gate_up_proj_blocks", scales = "gate_up_proj_scales")
    param down: [num_local_experts, hidden_size, intermediate_size]
        quantizable
        from mxfp4("down_proj_blocks", scales = "down_proj_scales")
}
"#
        .to_string(),
    );
    let nvfp4: &[Option<Format>] = &[None, Some(nf4), Some(Format::Nvfp4)];
    let mxfp4: &[Option<Format>] = &[None, Some(nf4), Some(Format::Mxfp4)];
    for (what, (dir, text), formats) in [
        ("nvfp4", nvfp4_checkpoint(), nvfp4),
        ("mxfp4 stored rows", mxfp4_rows, mxfp4),
        (
            "fp8 partial tiles",
            fp8_partial_tiles_checkpoint(),
            &[None, Some(fp8)],
        ),
    ] {
        let b = bind_prequant(&dir, Some(text));
        for &f in formats {
            checks += gpu_load_equals_cpu_load(&gpu, &b.plan, &b.checkpoint, f, what, true);
        }
    }
    println!("pre-quantized sources: {checks} GPU targets match the CPU loader byte for byte");
}

/// Tensor- and expert-parallel ranks on the GPU: each rank's plan (row ranges, column
/// windows assembled on the host, FP8 tiles) loads onto the device byte for byte as the
/// CPU loader loads it, in bf16 and quantized where the shard lands.
#[test]
#[ignore = "needs a CUDA device: scripts/gpu-test.sh runs it with --include-ignored"]
fn tensor_and_expert_parallel_ranks_load_on_the_gpu_as_on_the_cpu() {
    use wmap::ir::shard::Ranks;
    use wmap::loader::Loader;
    need_gpu();
    let gpu = Gpu::new(0).expect("open the GPU");
    let nf4 = Some(Format::Nf4 { blocksize: 64 });
    let cases: [(&str, u64, u64); 5] = [
        ("llama", 2, 1),
        ("llama", 4, 1),
        ("qwen3_moe", 2, 2),
        ("qwen3_fp8", 2, 1),
        ("mixtral", 2, 2),
    ];
    let mut checks = 0;
    for (fixture, tp, ep) in cases {
        let dir = common::root().join("tests/fixtures/hf").join(fixture);
        for tp_rank in 0..tp {
            for ep_rank in 0..ep {
                let ranks = Ranks {
                    tp_rank,
                    tp_size: tp,
                    ep_rank,
                    ep_size: ep,
                };
                let b = Loader::new(&dir)
                    .ranks(ranks)
                    .bind()
                    .expect("a rank's plan");
                let what = format!("{fixture} tp {tp_rank}/{tp} ep {ep_rank}/{ep}");
                for f in [None, nf4] {
                    checks +=
                        gpu_load_equals_cpu_load(&gpu, &b.plan, &b.checkpoint, f, &what, false);
                }
            }
        }
    }
    println!("TP/EP ranks: {checks} GPU targets match the CPU loader byte for byte");
}
