//! Decimal digits written without the formatting machinery: on the request path `format!`
//! and `write!` cost more than the work around them (content lengths, counts in the route
//! reason, the cost headers).

/// Writes `n` in decimal to end just before `buf[end]`; returns the index of its first digit.
/// Any u64 fits in 20 bytes.
pub(crate) fn decimal_before(buf: &mut [u8], end: usize, mut n: u64) -> usize {
    let mut at = end;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// `n` in decimal, in `buf`.
pub(crate) fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let at = decimal_before(buf, 20, n);
    &buf[at..]
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(s: &mut String, n: u64) {
    for &d in decimal(n, &mut [0; 20]) {
        s.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 613, 1_000_000, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string().as_bytes());
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        let mut buf = *b"....abc";
        assert_eq!(decimal_before(&mut buf, 4, 42), 2);
        assert_eq!(&buf, b"..42abc");
    }
}
