//! Typed flag values: clap value parsers for devices, sizes and bounded counts.
//!
//! Input: the text of one flag. Output: its typed value, or a one-line reason that clap
//! shows as `invalid value '…' for '--flag': <reason>` (rendered as E0802 by the CLI).
//! Invariant: no value is clamped or truncated silently; what cannot be represented
//! exactly as asked is refused.

/// `--device`: where tensors land.
pub use crate::loader::Device;

pub fn device(s: &str) -> Result<Device, String> {
    Device::parse(s).ok_or_else(|| "expected cpu, cuda, cuda:N or auto".to_string())
}

/// `--offload-policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Evict the least recently used group.
    Lru,
    /// Evict by the order of the forward pass and prefetch the next groups.
    Order,
}

impl Policy {
    pub fn offload(self) -> crate::offload::Policy {
        match self {
            Policy::Lru => crate::offload::Policy::Lru,
            Policy::Order => crate::offload::Policy::OrderAware,
        }
    }
}

/// A byte count: `123`, `100KB`, `100KiB`, `1.5GiB`, `2GB` (decimal units are powers of
/// 1000, binary ones of 1024; `B` alone is bytes). Fractions must come to whole bytes.
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("a size cannot be empty".into());
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.starts_with('-') || unit.starts_with('-') {
        return Err("a size cannot be negative".into());
    }
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit `{other}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 1.5GiB)"
            ))
        }
    };
    exact_bytes(num, mult).ok_or_else(|| {
        format!(
            "`{t}` is not a whole number of bytes that fits in 64 bits (e.g. 123, 100KB, 1.5GiB)"
        )
    })
}

/// `int[.frac] × mult` in exact integer arithmetic: no float rounding, no NaN or inf.
fn exact_bytes(num: &str, mult: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let whole = int.checked_mul(mult)?;
    if frac.is_empty() {
        return Some(whole);
    }
    let den = 10u128.pow(frac.len() as u32);
    let part = u128::from(frac.parse::<u64>().ok()?) * u128::from(mult);
    if part % den != 0 {
        return None;
    }
    whole.checked_add(u64::try_from(part / den).ok()?)
}

/// The most worker threads a load may start: four per core, never more than 1024.
/// More only adds memory in flight (threads × the largest tensor) and scheduling cost.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.saturating_mul(4).min(1024)
}

/// `--threads`: 0 (every core) up to [`max_threads`].
pub fn threads(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of threads (0: one per core)".to_string())?;
    let max = max_threads();
    if n > 1024 {
        return Err("at most 1024 threads; 0 uses one per core".into());
    }
    if n > max {
        return Err(format!(
            "at most {max} threads on this machine (four per core); 0 uses one per core"
        ));
    }
    Ok(n)
}

/// The most `--repeat` runs: each is a full load.
pub const MAX_REPEAT: usize = 1000;

/// `--repeat`: 1 to [`MAX_REPEAT`].
pub fn repeat(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_REPEAT).contains(&n) => Ok(n),
        _ => Err(format!("expected a count from 1 to {MAX_REPEAT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_honor_decimal_and_binary_units() {
        assert_eq!(size("123"), Ok(123));
        assert_eq!(size("100KB"), Ok(100_000));
        assert_eq!(size("100KiB"), Ok(102_400));
        assert_eq!(size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(size("2GB"), Ok(2_000_000_000));
        assert_eq!(size(" 4 MiB "), Ok(4 << 20));
        assert_eq!(size(".5KiB"), Ok(512));
    }

    #[test]
    fn sizes_refuse_what_they_cannot_represent() {
        for bad in [
            "",
            "-1GiB",
            "-0",
            "NaN",
            "inf",
            "1e3",
            "1.5",
            "0.1B",
            "1..2",
            ".",
            "GiB",
            "12XB",
            "18446744073709551616",
            "17179869184GiB",
            "1,000",
        ] {
            assert!(
                size(bad).is_err(),
                "{bad:?} was accepted as {:?}",
                size(bad)
            );
        }
        assert_eq!(size("-1GiB"), Err("a size cannot be negative".into()));
    }

    #[test]
    fn devices_parse_to_their_enum() {
        assert_eq!(device("cpu"), Ok(Device::Cpu));
        assert_eq!(device("cuda"), Ok(Device::Cuda(0)));
        assert_eq!(device("cuda:3"), Ok(Device::Cuda(3)));
        assert_eq!(device("auto"), Ok(Device::Auto));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "CPU"] {
            assert!(device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn threads_and_repeat_are_bounded() {
        assert_eq!(threads("0"), Ok(0));
        assert!(threads("10000").is_err());
        assert!(threads("-1").is_err());
        assert_eq!(repeat("3"), Ok(3));
        assert!(repeat("0").is_err());
        assert!(repeat("1001").is_err());
    }
}
