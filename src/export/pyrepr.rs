//! Python's `repr` of a float, which bitsandbytes' quant-state JSON is written with.

/// `repr(float(x))`: the shortest digits that round-trip, positional for exponents in
/// -4..16, else `1.5e-07` style.
pub fn py_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{x:e}"); // shortest round-trip digits: "5.142974853515625e-2"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{x}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::py_repr;

    #[test]
    fn matches_python() {
        assert_eq!(py_repr(0.05142974853515625), "0.05142974853515625");
        assert_eq!(py_repr(1.0), "1.0");
        assert_eq!(py_repr(1e-05), "1e-05");
        assert_eq!(py_repr(1.5e-07), "1.5e-07");
        assert_eq!(py_repr(0.0001), "0.0001");
        assert_eq!(py_repr(1e16), "1e+16");
        assert_eq!(py_repr(123456.5), "123456.5");
        assert_eq!(py_repr(f32::MIN_POSITIVE as f64), "1.1754943508222875e-38");
    }
}
