//! A canonical byte encoding of JSON, written while parsing, without building a tree.
//!
//! Two JSON texts that mean the same value encode to the same bytes: object keys are sorted
//! (bytewise), whitespace is gone, and of duplicate keys the last wins (as in
//! `serde_json::Value`). Every item is tagged and every string length-prefixed, so the
//! encoding is unambiguous.
//!
//! Numbers are encoded by their exact decimal value, never through `f64`: `1`, `1.0`, `1e0`
//! and `10e-1` are one number and `-0.0` is `0`, but `18446744073709551616` and
//! `18446744073709551617` (which the same `f64` holds) stay apart, and so do `1e400` and
//! `2e400` (which no `f64` holds). Two spellings that only an `f64` parser merges
//! (`0.1` and `0.10000000000000001`) are two keys: a missed share, never a wrong one.
//!
//! Parsing straight into this encoding is several times faster than parsing into a
//! `serde_json::Value` and walking it: strings are crossed with `memchr` rather than byte by
//! byte, nothing is allocated but keys with escapes, and one buffer is reused per thread.

use std::cell::RefCell;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const INT: u8 = 3;
/// A number that is not an integer below 10^38: sign, exponent, significant digits.
const DECIMAL: u8 = 4;
const STRING: u8 = 5;
const ARRAY: u8 = 6;
const OBJECT: u8 = 7;
const END: u8 = 11;

/// Buffers kept between calls are dropped above this size, so one huge body does not pin
/// memory in every thread forever.
const MAX_RETAINED: usize = 256 * 1024;

/// Buffers reused across calls on one thread: the output, the values of an object being
/// reordered, the entries of every open object, and unescaped keys.
#[derive(Default)]
struct Scratch {
    out: Vec<u8>,
    values: Vec<u8>,
    entries: Vec<Entry>,
    keys: Vec<u8>,
}

impl Scratch {
    fn clear(&mut self) {
        self.out.clear();
        self.values.clear();
        self.entries.clear();
        self.keys.clear();
    }

    fn worth_keeping(&self) -> bool {
        self.out.capacity() + self.values.capacity() + self.keys.capacity() <= MAX_RETAINED
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` on the canonical encoding of `body`, or returns `None` when `body` is not one
/// complete JSON value.
pub(crate) fn with_canonical_json<R>(body: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let mut scratch = SCRATCH.with(|cell| cell.take());
    scratch.clear();
    let mut scanner = Scanner {
        input: body,
        pos: 0,
        s: &mut scratch,
    };
    let parsed = scanner.value(0).and_then(|()| {
        scanner.skip_ws();
        (scanner.pos == body.len()).then_some(())
    });
    let result = parsed.map(|()| f(&scratch.out));
    if scratch.worth_keeping() {
        SCRATCH.with(|cell| cell.replace(scratch));
    }
    result
}

/// Appends the canonical encoding of `value` to `out`; the same bytes as parsing its text.
///
/// A number is encoded from its text (`Display`), so the tree and its text agree whether
/// serde_json holds numbers as `i64`/`u64`/`f64` or, with its `arbitrary_precision` feature,
/// as the text itself.
pub(crate) fn encode_value(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(b) => out.push(if *b { TRUE } else { FALSE }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                int(out, i128::from(i));
            } else if let Some(u) = n.as_u64() {
                int(out, i128::from(u));
            } else {
                number(out, n.to_string().as_bytes());
            }
        }
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(ARRAY);
            for item in items {
                encode_value(item, out);
            }
            out.push(END);
        }
        Value::Object(map) => {
            out.push(OBJECT);
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in entries {
                raw_string(out, key);
                encode_value(value, out);
            }
            out.push(END);
        }
    }
}

fn int(out: &mut Vec<u8>, value: i128) {
    out.push(INT);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Writes the number spelled `text` (JSON's number grammar) by its exact value: as
/// [`INT`] when it is an integer below 10^38 in magnitude (whatever its spelling: `1e3`,
/// `1000.0`), else as [`DECIMAL`]: sign, the exponent of the last significant digit, and the
/// significant digits without leading or trailing zeros. Returns `None` for text outside
/// the grammar or an exponent too large to hold, which no real request has.
fn number(out: &mut Vec<u8>, text: &[u8]) -> Option<()> {
    let (negative, rest) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let mantissa_end = rest
        .iter()
        .position(|b| matches!(b, b'e' | b'E'))
        .unwrap_or(rest.len());
    let (mantissa, exponent) = rest.split_at(mantissa_end);
    let (whole, fraction) = match mantissa.iter().position(|b| *b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &[][..]),
    };
    let all_digits = |part: &[u8]| part.iter().all(u8::is_ascii_digit);
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let mut exponent_value: i64 = match exponent.split_first() {
        None => 0,
        Some((_, digits)) => {
            let (negative, digits) = match digits.split_first()? {
                (b'-', digits) => (true, digits),
                (b'+', digits) => (false, digits),
                _ => (false, digits),
            };
            if digits.is_empty() || !all_digits(digits) {
                return None;
            }
            let magnitude = digits.iter().try_fold(0i64, |acc, d| {
                acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
            })?;
            if negative { -magnitude } else { magnitude }
        }
    };
    // The significant digits: the whole and fractional parts as one run, trimmed of zeros.
    let digit_at = |i: usize| {
        if i < whole.len() {
            whole[i]
        } else {
            fraction[i - whole.len()]
        }
    };
    let len = whole.len() + fraction.len();
    let Some(first) = (0..len).find(|&i| digit_at(i) != b'0') else {
        int(out, 0);
        return Some(());
    };
    let last = (first..len).rev().find(|&i| digit_at(i) != b'0')?;
    // The value is digits[first..=last] times 10^(exponent - digits after `last`).
    let after_last = i64::try_from(len - 1 - last).ok()?;
    let after_point = i64::try_from(fraction.len()).ok()?;
    exponent_value = exponent_value
        .checked_sub(after_point)?
        .checked_add(after_last)?;
    let significant = last - first + 1;
    if let Ok(zeros) = usize::try_from(exponent_value)
        && significant + zeros <= 38
    {
        let mut value =
            (first..=last).fold(0i128, |acc, i| acc * 10 + i128::from(digit_at(i) - b'0'));
        for _ in 0..zeros {
            value *= 10;
        }
        int(out, if negative { -value } else { value });
        return Some(());
    }
    out.push(DECIMAL);
    out.push(u8::from(negative));
    out.extend_from_slice(&exponent_value.to_le_bytes());
    out.extend_from_slice(&(significant as u64).to_le_bytes());
    out.extend((first..=last).map(digit_at));
    Some(())
}

fn raw_string(out: &mut Vec<u8>, s: &str) {
    raw_bytes(out, s.as_bytes());
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.push(STRING);
    raw_string(out, s);
}

/// Nesting deeper than this is refused (the body is then hashed as raw bytes), as
/// serde_json does, so a hostile body cannot overflow the stack.
const MAX_DEPTH: usize = 128;

/// One member of an object being read: where its key is (in the input when it has no
/// escapes, else unescaped in the key buffer) and where its encoded value is.
#[derive(Clone, Copy)]
struct Entry {
    key_in_input: bool,
    key: (usize, usize),
    value: (usize, usize),
}

impl Entry {
    fn key_of<'k>(&self, input: &'k [u8], keys: &'k [u8]) -> &'k [u8] {
        let (from, to) = self.key;
        let source = if self.key_in_input { input } else { keys };
        source.get(from..to).unwrap_or_default()
    }
}

/// A JSON parser (RFC 8259 grammar) that writes the canonical encoding as it goes. Strings
/// are crossed with `memchr2`, which is what makes it fast on prompt-sized text. Inside
/// strings it is lenient where leniency cannot merge two different texts: raw control bytes
/// and invalid UTF-8 are kept verbatim rather than refused.
struct Scanner<'a, 's> {
    input: &'a [u8],
    pos: usize,
    s: &'s mut Scratch,
}

impl Scanner<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, text: &[u8], tag: u8) -> Option<()> {
        let end = self.pos.checked_add(text.len())?;
        (self.input.get(self.pos..end)? == text).then(|| {
            self.pos = end;
            self.s.out.push(tag);
        })
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        self.skip_ws();
        match self.peek()? {
            b'n' => self.literal(b"null", NULL),
            b't' => self.literal(b"true", TRUE),
            b'f' => self.literal(b"false", FALSE),
            b'"' => {
                self.s.out.push(STRING);
                // Length placeholder, patched once the string is unescaped in place.
                let at = self.s.out.len();
                self.s.out.extend_from_slice(&[0; 8]);
                match self.string()? {
                    Str::Plain(from, to) => {
                        let len = (to - from) as u64;
                        self.s.out.extend_from_slice(&self.input[from..to]);
                        self.s.out[at..at + 8].copy_from_slice(&len.to_le_bytes());
                    }
                    Str::Unescaped(text) => {
                        self.s.out[at..at + 8].copy_from_slice(&(text.len() as u64).to_le_bytes());
                        self.s.out.extend_from_slice(&text);
                    }
                }
                Some(())
            }
            b'[' if depth < MAX_DEPTH => self.array(depth + 1),
            b'{' if depth < MAX_DEPTH => self.object(depth + 1),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.s.out.push(ARRAY);
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
        } else {
            loop {
                self.value(depth)?;
                self.skip_ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b']' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.s.out.push(END);
        Some(())
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.s.out.push(OBJECT);
        // Values are encoded in arrival order, then the region is rewritten in key order.
        let start = self.s.out.len();
        let base = self.s.entries.len();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek()? != b'"' {
                    return None;
                }
                let (key_in_input, key) = match self.string()? {
                    Str::Plain(from, to) => (true, (from, to)),
                    Str::Unescaped(text) => {
                        let from = self.s.keys.len();
                        self.s.keys.extend_from_slice(&text);
                        (false, (from, self.s.keys.len()))
                    }
                };
                self.eat(b':')?;
                let from = self.s.out.len();
                self.value(depth)?;
                self.s.entries.push(Entry {
                    key_in_input,
                    key,
                    value: (from - start, self.s.out.len() - start),
                });
                self.skip_ws();
                match self.peek()? {
                    b',' => self.pos += 1,
                    b'}' => {
                        self.pos += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // The entries of enclosing objects stay below `base`; this object's are sorted in place.
        let mut entries = std::mem::take(&mut self.s.entries);
        let mut values = std::mem::take(&mut self.s.values);
        let (input, keys) = (self.input, &self.s.keys);
        let mine = entries.get_mut(base..)?;
        // Stable, so of equal keys the last one stays last; it is the one kept below.
        mine.sort_by(|a, b| a.key_of(input, keys).cmp(b.key_of(input, keys)));
        values.clear();
        values.extend_from_slice(self.s.out.get(start..)?);
        self.s.out.truncate(start);
        for (i, entry) in mine.iter().enumerate() {
            let key = entry.key_of(input, keys);
            if mine
                .get(i + 1)
                .is_some_and(|next| next.key_of(input, keys) == key)
            {
                continue;
            }
            self.s
                .out
                .extend_from_slice(&(key.len() as u64).to_le_bytes());
            self.s.out.extend_from_slice(key);
            self.s
                .out
                .extend_from_slice(values.get(entry.value.0..entry.value.1)?);
        }
        entries.truncate(base);
        self.s.entries = entries;
        self.s.values = values;
        self.s.out.push(END);
        Some(())
    }

    /// A string token: its span in the input when it has no escapes, else its unescaped text.
    fn string(&mut self) -> Option<Str> {
        self.pos += 1;
        let mut unescaped: Option<Vec<u8>> = None;
        loop {
            let rest = self.input.get(self.pos..)?;
            let at = memchr::memchr2(b'"', b'\\', rest)?;
            let end = self.pos + at;
            if rest[at] == b'"' {
                let found = match unescaped {
                    None => Str::Plain(self.pos, end),
                    Some(mut text) => {
                        text.extend_from_slice(&rest[..at]);
                        Str::Unescaped(text)
                    }
                };
                self.pos = end + 1;
                return Some(found);
            }
            let text = unescaped.get_or_insert_with(Vec::new);
            text.extend_from_slice(&rest[..at]);
            self.pos = end + 1;
            self.escape(text)?;
        }
    }
    fn escape(&mut self, text: &mut Vec<u8>) -> Option<()> {
        let byte = self.peek()?;
        self.pos += 1;
        let plain = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let first = self.hex4()?;
                let code = match first {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        if self.input.get(self.pos..self.pos + 2)? != b"\\u" {
                            return None;
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => first,
                };
                let c = char::from_u32(code)?;
                let mut buf = [0u8; 4];
                text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Some(());
            }
            _ => return None,
        };
        text.push(plain);
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.input.get(self.pos..self.pos + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        u32::from_str_radix(text, 16).ok()
    }

    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        let digits = |s: &mut Self| {
            let from = s.pos;
            while let Some(b'0'..=b'9') = s.peek() {
                s.pos += 1;
            }
            s.pos > from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integral = false;
            if !digits(self) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integral = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !digits(self) {
                return None;
            }
        }
        let text = &self.input[start..self.pos];
        // Most numbers in a request are small integers: no need for the general path.
        if integral && text.len() <= 18 {
            let (negative, digits) = match text.split_first()? {
                (b'-', digits) => (true, digits),
                _ => (false, text),
            };
            let value = digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
            int(
                &mut self.s.out,
                i128::from(if negative { -value } else { value }),
            );
            return Some(());
        }
        number(&mut self.s.out, text)
    }
}

/// A string token as [`Scanner::string`] found it.
enum Str {
    Plain(usize, usize),
    Unescaped(Vec<u8>),
}

fn raw_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> Option<Vec<u8>> {
        with_canonical_json(text.as_bytes(), <[u8]>::to_vec)
    }

    #[test]
    fn spelling_does_not_matter() {
        let a = canonical(r#"{"b":[1,2.0,{"y":null,"x":true}],"a":"s\u0041"}"#);
        let b = canonical("{ \"a\" : \"sA\",\n \"b\": [1.0, 2, {\"x\": true, \"y\": null}] }");
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn escaped_keys_sort_like_plain_ones() {
        assert_eq!(
            canonical(r#"{"\u0061":1,"b":2}"#),
            canonical(r#"{"b":2,"a":1}"#)
        );
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(canonical(r#"{"a":1,"a":2}"#), canonical(r#"{"a":2}"#));
        assert_ne!(canonical(r#"{"a":1,"a":2}"#), canonical(r#"{"a":1}"#));
    }

    #[test]
    fn shapes_stay_apart() {
        let texts = [
            r#"[]"#,
            r#"[[]]"#,
            r#"[[],[]]"#,
            r#"{}"#,
            r#"{"":{}}"#,
            r#"[""]"#,
            r#"[null]"#,
            r#"["a","b"]"#,
            r#"["ab"]"#,
            r#"{"a":"b"}"#,
            r#"["a",["b"]]"#,
            r#"1.5"#,
            r#"1"#,
        ];
        let encoded: Vec<_> = texts.iter().map(|t| canonical(t)).collect();
        for i in 0..encoded.len() {
            for j in i + 1..encoded.len() {
                assert_ne!(encoded[i], encoded[j], "{} vs {}", texts[i], texts[j]);
            }
        }
    }

    #[test]
    fn lenient_bytes_inside_strings_stay_distinct() {
        let a = with_canonical_json(b"[\"a\x01\"]", <[u8]>::to_vec);
        let b = with_canonical_json(b"[\"a\x02\"]", <[u8]>::to_vec);
        let c = with_canonical_json(b"[\"a\xff\"]", <[u8]>::to_vec);
        assert!(a.is_some() && b.is_some() && c.is_some());
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn not_json_is_none() {
        for text in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{} {}",
            "nul",
            "\"unterminated",
        ] {
            assert_eq!(canonical(text), None, "{text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(canonical(&deep), None);
    }

    #[test]
    fn tree_and_text_agree() {
        let text = r#"{"model":"m","n":-0.0,"big":18446744073709551615,"f":0.25,
                       "msgs":[{"role":"user","content":"hi"}],"z":{"b":1,"a":[true,false]}}"#;
        let value: serde_json::Value = serde_json::from_str(text).expect("valid");
        let mut from_tree = Vec::new();
        encode_value(&value, &mut from_tree);
        assert_eq!(canonical(text), Some(from_tree));
    }

    /// Spellings of one number, for each of several numbers: a group shares its encoding,
    /// and no two groups do.
    const NUMBERS: &[&[&str]] = &[
        &["1", "1.0", "1e0", "10e-1", "0.1e1", "1.000", "100E-2"],
        &["0", "-0", "0.0", "-0.0", "0e10", "0E-10"],
        &["-1", "-1.0", "-0.1e1"],
        &["0.25", "2.5e-1", "25e-2", "0.250"],
        &["0.1"],
        &["0.10000000000000001"],
        &["9223372036854775807"],
        &["9223372036854775808", "9.223372036854775808e18"],
        &["-9223372036854775809"],
        &["18446744073709551615"],
        &["18446744073709551616", "18446744073709551616.0"],
        &[
            "18446744073709551617",
            "1.8446744073709551617e19",
            "18446744073709551617e0",
        ],
        &["-18446744073709551617"],
        &["99999999999999999999999999999999999999"],
        &["1e38", "100000000000000000000000000000000000000", "10e37"],
        &["170141183460469231731687303715884105728"],
        &["1e400", "10e399", "1.0e400", "0.1e401"],
        &["2e400"],
        &["-1e400"],
        &["1e-400", "0.01e-398"],
    ];

    #[test]
    fn numbers_keep_their_exact_value() {
        let mut seen: Vec<(Vec<u8>, &str)> = Vec::new();
        for group in NUMBERS {
            let first = canonical(group[0]).expect("a number is JSON");
            for text in *group {
                assert_eq!(
                    canonical(text).as_ref(),
                    Some(&first),
                    "{text} vs {}",
                    group[0]
                );
                let wrapped = canonical(&format!("[{text}]")).expect("valid");
                assert_eq!(
                    wrapped[1..wrapped.len() - 1],
                    first[..],
                    "{text} in an array"
                );
            }
            for (other, text) in &seen {
                assert_ne!(other, &first, "{text} vs {}", group[0]);
            }
            seen.push((first, group[0]));
        }
    }

    /// A tree encodes a number as its text does, whenever serde_json holds that number
    /// without loss (always, with its `arbitrary_precision` feature).
    #[test]
    fn trees_encode_numbers_as_their_text() {
        for text in NUMBERS.iter().flat_map(|group| group.iter()) {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if canonical(&value.to_string()) != canonical(text) {
                continue;
            }
            let mut from_tree = Vec::new();
            encode_value(&value, &mut from_tree);
            assert_eq!(Some(from_tree), canonical(text), "{text}");
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        crate::test_json::json_value("\\PC{0,6}")
    }

    proptest::proptest! {
        /// The scanner and the tree encoder agree on every value, compact or pretty.
        #[test]
        fn text_and_tree_agree(value in json_value()) {
            let mut from_tree = Vec::new();
            encode_value(&value, &mut from_tree);
            let compact = serde_json::to_string(&value).expect("serialises");
            let pretty = serde_json::to_string_pretty(&value).expect("serialises");
            proptest::prop_assert_eq!(canonical(&compact), Some(from_tree.clone()));
            proptest::prop_assert_eq!(canonical(&pretty), Some(from_tree));
        }

        /// Damaged JSON: the scanner accepts exactly what serde_json accepts, apart from the
        /// documented leniency inside strings (raw control bytes, invalid UTF-8), which the
        /// printable-ASCII damage here cannot produce.
        #[test]
        fn accepts_what_serde_json_accepts(value in json_value(), cut in 0usize..64, byte in 0x20u8..0x7f) {
            let mut text = serde_json::to_string(&value).expect("serialises").into_bytes();
            if !text.is_empty() {
                let at = cut % text.len();
                text[at] = byte;
            }
            proptest::prop_assume!(std::str::from_utf8(&text).is_ok());
            let ours = with_canonical_json(&text, |_| ()).is_some();
            let theirs = serde_json::from_slice::<serde_json::Value>(&text);
            // serde_json (without `arbitrary_precision`) refuses a number past f64's range;
            // we keep its exact value instead (see the module docs).
            proptest::prop_assume!(
                !theirs.as_ref().is_err_and(|e| e.to_string().contains("number out of range"))
            );
            proptest::prop_assert_eq!(ours, theirs.is_ok(), "{:?}", String::from_utf8_lossy(&text));
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = with_canonical_json(&bytes, <[u8]>::len);
        }
    }
}
