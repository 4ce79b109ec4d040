//! A walk over JSON that checks it against JSON's grammar without building anything: the members of
//! an object and the elements of an array are handed to the caller at the index where each starts,
//! and the values the caller has no use for are skipped, strings eight bytes at a time.
//!
//! Callers fall back to a full parse wherever the walk returns `None`: the walk never says why, the
//! full parse does. UTF-8 is the caller's to check.

/// A word with every byte set to `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

const HIGH_BITS: u64 = splat(0x80);

/// The high bit set in bytes of `w` that are below `n` (at most 0x80). Only the lowest flagged
/// byte is sure to be one: a borrow can flag bytes above it, which callers never look at.
#[inline]
fn bytes_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(splat(n)) & !w & HIGH_BITS
}

/// The high bit set in bytes of `w` equal to `b`, with the same caveat as [`bytes_below`].
#[inline]
fn bytes_equal(w: u64, b: u8) -> u64 {
    bytes_below(w ^ splat(b), 1)
}

/// The eight bytes at `i` as a little-endian word, so the lowest set bit is the first byte.
#[inline]
fn word_at(json: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = json.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Index of the first byte of `json` at or after `i` whose word flags (`flags`) pick out, eight
/// bytes at a time; at the tail, where no word is left, `i` itself, for a byte-wise check.
#[inline]
fn next_flagged(json: &[u8], mut i: usize, flags: impl Fn(u64) -> u64) -> usize {
    while let Some(w) = word_at(json, i) {
        let found = flags(w);
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// Index of the first byte at or after `i` that is not JSON whitespace.
#[inline]
fn skip_whitespace(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = json.get(i) {
        i += 1;
    }
    i
}

/// Index of the quote that closes the string whose contents start at `i`. A key may hold no
/// escape: its raw bytes would not be its text, which callers compare.
fn string_end(json: &[u8], mut i: usize, key: bool) -> Option<usize> {
    loop {
        i = next_flagged(json, i, |w| {
            bytes_equal(w, b'"') | bytes_equal(w, b'\\') | bytes_below(w, 0x20)
        });
        match *json.get(i)? {
            b'"' => return Some(i),
            b'\\' if !key => i = escape_end(json, i + 1)?,
            b'\\' | 0..0x20 => return None,
            _ => i += 1,
        }
    }
}

/// Index just past the escape whose letter is at `i`: one of `"\\/bfnrt`, or `u` and four hex
/// digits.
fn escape_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 1),
        b'u' => {
            let digits = json.get(i + 1..i + 5)?;
            digits.iter().all(u8::is_ascii_hexdigit).then_some(i + 5)
        }
        _ => None,
    }
}

/// How deep the walk goes into nested objects and arrays; deeper ones go to the full parse.
const MAX_DEPTH: u32 = 64;

/// Index just past `literal` at `i`.
fn literal_end(json: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    let end = i + literal.len();
    (json.get(i..end)? == literal).then_some(end)
}

/// Index just past the digits at `i`, at least one.
fn digits_end(json: &[u8], i: usize) -> Option<usize> {
    let count = json
        .get(i..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    (count > 0).then_some(i + count)
}

/// Index just past the number at `i`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(json: &[u8], mut i: usize) -> Option<usize> {
    if json.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match json.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits_end(json, i)?,
        _ => return None,
    };
    if json.get(i) == Some(&b'.') {
        i = digits_end(json, i + 1)?;
    }
    if let Some(b'e' | b'E') = json.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = json.get(i) {
            i += 1;
        }
        i = digits_end(json, i)?;
    }
    Some(i)
}

/// Index just past the value that starts at `i`.
pub(crate) fn value_end(json: &[u8], i: usize) -> Option<usize> {
    nested_value_end(json, i, 0)
}

/// [`value_end`] for a value `depth` levels down.
fn nested_value_end(json: &[u8], i: usize, depth: u32) -> Option<usize> {
    match json.get(i)? {
        b'"' => Some(string_end(json, i + 1, false)? + 1),
        b'{' | b'[' if depth == MAX_DEPTH => None,
        b'{' => walk_object(json, i, |_, at| nested_value_end(json, at, depth + 1)),
        b'[' => walk_array(json, i, |at| nested_value_end(json, at, depth + 1)),
        b't' => literal_end(json, i, b"true"),
        b'f' => literal_end(json, i, b"false"),
        b'n' => null_end(json, i),
        _ => number_end(json, i),
    }
}

/// Index just past the `null` at `i`, if that is what is there.
pub(crate) fn null_end(json: &[u8], i: usize) -> Option<usize> {
    literal_end(json, i, b"null")
}

/// The whole, non-negative number at `i` that fits 64 bits, and the index just past it; `None`
/// for any other value, a fraction or exponent included.
pub(crate) fn count_at(json: &[u8], i: usize) -> Option<(u64, usize)> {
    let end = number_end(json, i)?;
    let digits = json.get(i..end)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let count = digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some((count, end))
}

/// Walks the comma-separated items between `open` at `i` and `close`, calling `item` at each
/// item's first byte; `item` returns the index just past the item. Returns the index just past
/// `close`.
fn walk_items(
    json: &[u8],
    i: usize,
    open: u8,
    close: u8,
    mut item: impl FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    if json.get(i) != Some(&open) {
        return None;
    }
    let mut i = skip_whitespace(json, i + 1);
    if json.get(i) == Some(&close) {
        return Some(i + 1);
    }
    loop {
        i = skip_whitespace(json, item(i)?);
        match json.get(i)? {
            b',' => i = skip_whitespace(json, i + 1),
            &c if c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

/// Walks the object that opens at `i`. `member` gets each key's raw bytes (without quotes) and
/// the index where its value starts, and returns the index just past the value: [`value_end`]'s
/// for a value it has no use for. Returns the index just past the object. `None` when there is
/// no object at `i`, when a key holds an escape, or when `member` returns `None`.
pub(crate) fn walk_object<'a>(
    json: &'a [u8],
    i: usize,
    mut member: impl FnMut(&'a [u8], usize) -> Option<usize>,
) -> Option<usize> {
    walk_items(json, i, b'{', b'}', |i| {
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(json, i + 1, true)?;
        let colon = skip_whitespace(json, end + 1);
        if json.get(colon) != Some(&b':') {
            return None;
        }
        member(json.get(i + 1..end)?, skip_whitespace(json, colon + 1))
    })
}

/// Walks the array that opens at `i`, as [`walk_object`] walks an object: `element` gets the
/// index where each element starts and returns the index just past it.
pub(crate) fn walk_array(
    json: &[u8],
    i: usize,
    element: impl FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    walk_items(json, i, b'[', b']', element)
}

/// Walks `json` as [`walk_object`] does, when it is one object with only whitespace around it.
pub(crate) fn walk_document<'a>(
    json: &'a [u8],
    member: impl FnMut(&'a [u8], usize) -> Option<usize>,
) -> Option<()> {
    let end = walk_object(json, skip_whitespace(json, 0), member)?;
    (skip_whitespace(json, end) == json.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The document's members as key and value bytes, each value skipped.
    fn members(json: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        let mut out = Vec::new();
        walk_document(json, |key, at| {
            let end = value_end(json, at)?;
            out.push((key, &json[at..end]));
            Some(end)
        })?;
        Some(out)
    }

    const COMPLETION: &[u8] = include_bytes!("../../tests/fixtures/openai/chat_text.json");
    const TOOL_CALL: &[u8] = include_bytes!("../../tests/fixtures/openai/chat_tool.json");

    /// Documents whose tricky bytes land on every offset within a word.
    fn tricky_documents() -> Vec<Vec<u8>> {
        let mut docs = vec![COMPLETION.to_vec(), TOOL_CALL.to_vec()];
        let pieces = [
            r#""a \"quoted\" {[ word ]}""#,
            r#""back\\slash\\""#,
            r#""\\\"""#,
            r#""ünïcödé ✓ \u00e9""#,
            r#"[1, -2.5e+3, 0, 0.25, -0, 1E9, true, false, null, "}", "]"]"#,
            r#"{"deep": [[[{"x": [{}]}]]], "empty": {}, "none": []}"#,
        ];
        for pad in 0..8 {
            let padding = " ".repeat(pad);
            let members: Vec<String> = pieces
                .iter()
                .enumerate()
                .map(|(n, piece)| format!("{padding}\"k{n}\":{padding}{piece}"))
                .collect();
            docs.push(format!("{{{}}}", members.join(",")).into_bytes());
        }
        docs
    }

    #[test]
    fn members_are_those_a_full_parse_finds() {
        for doc in tricky_documents() {
            let parsed: serde_json::Map<String, Value> = serde_json::from_slice(&doc).unwrap();
            let mut walked: Vec<(String, Value)> = members(&doc)
                .unwrap()
                .into_iter()
                .map(|(key, value)| {
                    let key = std::str::from_utf8(key).unwrap().to_owned();
                    (key, serde_json::from_slice(value).unwrap())
                })
                .collect();
            let mut expected: Vec<(String, Value)> = parsed.into_iter().collect();
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            walked.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(walked, expected, "{}", String::from_utf8_lossy(&doc));
        }
    }

    #[test]
    fn elements_are_those_a_full_parse_finds() {
        let doc = br#"[ {"a": "]"}, [1, [2]], "x\"y", 3.5, null ] "#;
        let parsed: Vec<Value> = serde_json::from_slice(doc).unwrap();
        let mut walked = Vec::new();
        let end = walk_array(doc, 0, |at| {
            let end = value_end(doc, at)?;
            walked.push(serde_json::from_slice::<Value>(&doc[at..end]).unwrap());
            Some(end)
        });
        assert_eq!(end, Some(doc.len() - 1));
        assert_eq!(walked, parsed);
        assert_eq!(walk_array(b"[]", 0, |_| None), Some(2));
        assert_eq!(walk_array(b"[1]", 0, |_| None), None);
        assert_eq!(walk_array(b"[1 2]", 0, |at| value_end(b"[1 2]", at)), None);
    }

    #[test]
    fn no_cut_document_is_walked() {
        for doc in tricky_documents() {
            for end in 0..doc.len() {
                let cut = &doc[..end];
                // A cut that leaves only trailing whitespace off is still the whole document.
                if cut.trim_ascii_end() == doc.trim_ascii_end() {
                    continue;
                }
                assert_eq!(members(cut), None, "{}", String::from_utf8_lossy(cut));
            }
        }
    }

    #[test]
    fn malformed_documents_are_not_walked() {
        let bad: [&[u8]; 30] = [
            b"",
            b"[]",
            b"{} {}",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":}",
            b"{a:1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":tru}",
            b"{\"a\":[1}",
            b"{\"a\":{\"b\":1]}",
            b"{\"a\":\"line\nbreak\"}",
            b"{\"a\":[\"tab\tin string\"]}",
            b"{\"a\":]}",
            b"{\"k\\u0065y\":1}",
            b"{\"a\":1}}",
            // Inside values the walk only skips, the grammar holds all the same.
            b"{\"a\":{\"b\":1 \"c\":2}}",
            b"{\"a\":{\"b\" 1}}",
            b"{\"a\":[nul]}",
            b"{\"a\":[01]}",
            b"{\"a\":[1.,-]}",
            b"{\"a\":[+1]}",
            b"{\"a\":{,}}",
            b"{\"a\":[1,]}",
            b"{\"a\":[\x01]}",
            b"{\"a\":\"\\q\"}",
            b"{\"a\":[\"\\u12\"]}",
            b"{\"a\":[\"\\u12g4\"]}",
        ];
        for doc in bad {
            assert_eq!(members(doc), None, "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn nesting_deeper_than_a_word_of_levels_is_left_to_the_full_parse() {
        let nested = |levels: usize| {
            format!("{{\"a\":{}{}}}", "[".repeat(levels), "]".repeat(levels)).into_bytes()
        };
        assert!(members(&nested(64)).is_some());
        assert_eq!(members(&nested(65)), None);
    }

    #[test]
    fn counts_are_whole_non_negative_numbers_that_fit() {
        let count = |json: &[u8]| count_at(json, 0);
        assert_eq!(count(b"0"), Some((0, 1)));
        assert_eq!(count(b"1024,"), Some((1024, 4)));
        assert_eq!(count(b"18446744073709551615"), Some((u64::MAX, 20)));
        // A number ends at its leading zero; what follows is the walk's to refuse.
        assert_eq!(count(b"01"), Some((0, 1)));
        for bad in [
            &b"18446744073709551616"[..],
            b"-1",
            b"1.0",
            b"1e3",
            b"null",
            b"\"1\"",
        ] {
            assert_eq!(count(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
