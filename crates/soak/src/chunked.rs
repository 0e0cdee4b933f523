//! An incremental `Transfer-Encoding: chunked` decoder that hands payload
//! slices to a sink as they arrive, without buffering: state survives any
//! split of the input between reads.

use std::fmt;

/// A body that does not follow the chunked grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(&'static str);

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad chunked body: {}", self.0)
    }
}

/// Chunk sizes above this are treated as garbage rather than trusted.
const MAX_CHUNK: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Hex digits of a chunk size.
    #[default]
    Size,
    /// A chunk extension (or whitespace) after the size, up to the line end.
    SizeExt,
    /// Saw `\r` after the size line; expecting `\n`.
    SizeLf,
    /// Inside chunk data; `remaining` bytes to go.
    Data,
    /// After chunk data; expecting `\r\n`.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    /// Saw `\r` on the final blank line.
    EndLf,
    Done,
}

#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u32,
}

impl ChunkedDecoder {
    /// Decodes `input`, passing payload bytes to `sink`. Returns how many bytes
    /// of `input` belong to the body: all of them, unless the body ended inside
    /// `input` (then [`Self::is_done`] is true and the rest is not ours).
    pub fn feed(&mut self, input: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(digit);
                        self.digits += 1;
                        if self.size > MAX_CHUNK {
                            return Err(ChunkError("chunk size too large"));
                        }
                    }
                    b';' | b' ' | b'\t' => self.state = State::SizeExt,
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.end_size_line()?,
                    _ => return Err(ChunkError("invalid chunk size")),
                },
                State::SizeExt => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.end_size_line()?,
                    _ => {}
                },
                State::SizeLf => match b {
                    b'\n' => self.end_size_line()?,
                    _ => return Err(ChunkError("expected LF after chunk size")),
                },
                State::Data => {
                    let n = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    sink(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => self.state = State::DataLf,
                    b'\n' => self.state = State::Size,
                    _ => return Err(ChunkError("chunk data longer than its size")),
                },
                State::DataLf => match b {
                    b'\n' => self.state = State::Size,
                    _ => return Err(ChunkError("expected LF after chunk data")),
                },
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    _ => self.state = State::TrailerLine,
                },
                State::TrailerLine => {
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(i + 1);
                    }
                    _ => return Err(ChunkError("expected LF at the end of the body")),
                },
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    fn end_size_line(&mut self) -> Result<(), ChunkError> {
        if self.digits == 0 {
            return Err(ChunkError("empty chunk size"));
        }
        self.digits = 0;
        self.state = if self.size == 0 { State::TrailerStart } else { State::Data };
        Ok(())
    }

    /// The terminating zero-size chunk and its trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces cut at `cuts`; returns (payload, bytes consumed, done).
    fn decode(wire: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut at = 0;
        for &end in cuts.iter().chain([&wire.len()]) {
            let end = end.clamp(at, wire.len());
            let piece = &wire[at..end];
            let used = d.feed(piece, &mut |p| out.extend_from_slice(p))?;
            consumed += used;
            at = end;
            if d.is_done() {
                break;
            }
            assert_eq!(used, piece.len());
        }
        Ok((out, consumed, d.is_done()))
    }

    const WIRE: &[u8] = b"5\r\nhello\r\n1;ext=1\r\n \r\nC\r\nworld\ndata:\n\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";

    #[test]
    fn whole_and_every_split() {
        let body_len = WIRE.len() - 4;
        assert_eq!(decode(WIRE, &[]).unwrap(), (b"hello world\ndata:\n".to_vec(), body_len, true));
        // Every single cut and every pair of cuts.
        for a in 0..WIRE.len() {
            assert_eq!(decode(WIRE, &[a]).unwrap().0, b"hello world\ndata:\n", "cut at {a}");
            for b in a..WIRE.len() {
                let (payload, used, done) = decode(WIRE, &[a, b]).unwrap();
                assert_eq!((payload.as_slice(), used, done), (&b"hello world\ndata:\n"[..], body_len, true));
            }
        }
        // Byte by byte.
        let cuts: Vec<usize> = (1..WIRE.len()).collect();
        assert_eq!(decode(WIRE, &cuts).unwrap().1, body_len);
    }

    #[test]
    fn bare_lf_and_unfinished() {
        assert_eq!(decode(b"3\nabc\n0\n\n", &[]).unwrap(), (b"abc".to_vec(), 9, true));
        let (payload, _, done) = decode(b"3\r\nabc\r\n4\r\nde", &[]).unwrap();
        assert_eq!((payload.as_slice(), done), (&b"abcde"[..], false));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in
            [&b"x\r\n"[..], b"\r\n", b"3\r\nabcd\r\n", b"3\r\nabc\rX", b"3\rX", b"fffffffffffffff\r\n", b"0\r\n\rX"]
        {
            assert!(decode(bad, &[]).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
