//! How deeply a JSON document nests, found without parsing it, so that a
//! hostile document is refused before any recursive code sees it.

/// The nesting depth of `bytes` when it is deeper than `max`. Nesting cannot
/// be deeper than the number of `{` and `[` bytes, and an event has a handful,
/// which `memchr` finds in a few vectorised strides; the exact walk runs only
/// for the rare document with more openers than the limit (the walk was a
/// tenth of the writer).
pub fn depth_over(bytes: &[u8], max: usize) -> Option<usize> {
    memchr::memchr2_iter(b'{', b'[', bytes).nth(max)?;
    Some(json_depth(bytes)).filter(|&d| d > max)
}

/// The deepest nesting of objects and arrays, found without parsing, so a
/// hostile document is refused before any recursive code sees it. Most of an
/// event's bytes sit inside strings, so strings are skipped with `memchr`
/// rather than walked byte by byte (the walk was a fifth of the writer).
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                // An unterminated string cannot nest deeper: the parser
                // will refuse the document for its own reason.
                let Some(rest) = bytes.get(i..) else {
                    return max;
                };
                match memchr::memchr2(b'"', b'\\', rest) {
                    None => return max,
                    Some(j) if rest[j] == b'\\' => i += j + 2,
                    Some(j) => {
                        i += j + 1;
                        break;
                    }
                }
            },
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
