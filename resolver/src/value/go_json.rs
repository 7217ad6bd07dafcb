//! Where Go's `encoding/json` (what etcd's Go resolver decodes values with) and serde_json
//! disagree on whether a value is a naming update, brought to Go's verdict:
//!
//! - invalid UTF-8 inside strings: Go replaces it with U+FFFD, serde_json refuses the document
//!   (the caller decodes a lossy copy; outside strings both refuse it);
//! - nesting deeper than 10,000 (Go's scanner limit, counting the outer object): Go refuses the
//!   document, serde_json skips deep unknown fields and raw metadata without a limit;
//! - a metadata number beyond float64 (`1e999`): Go's `any` holds float64 and refuses it,
//!   serde_json keeps the raw text.
//!
//! Left as they are: a lone UTF-16 surrogate escape (`"\ud800"`) in a field name, which Go
//! replaces and serde_json refuses (inside metadata both accept it; in `Addr` the address is
//! invalid either way).

/// Go's `maxNestingDepth`.
pub(super) const MAX_DEPTH: usize = 10_000;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`] (outside strings).
pub(super) fn too_deep(text: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether the JSON `text` holds a number (outside strings) that overflows float64.
pub(super) fn float_overflow(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            if text[start..i].parse::<f64>().is_ok_and(f64::is_infinite) {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_outside_strings() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!too_deep(nested(MAX_DEPTH).as_bytes()));
        assert!(too_deep(nested(MAX_DEPTH + 1).as_bytes()));
        let in_string = format!("\"{}\\\"{}\"", "[".repeat(20_000), "{".repeat(20_000));
        assert!(!too_deep(in_string.as_bytes()));
    }

    #[test]
    fn overflowing_numbers() {
        assert!(float_overflow("1e999"));
        assert!(float_overflow(r#"{"a":[1,-1e400]}"#));
        assert!(float_overflow(&"9".repeat(400)));
        for fine in [
            "1e308",
            "1e-999",
            "-0",
            r#""1e999""#,
            r#"{"k\"1e999":1}"#,
            "123456789012345678901234567890",
        ] {
            assert!(!float_overflow(fine), "{fine}");
        }
    }
}
