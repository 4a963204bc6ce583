//! What makes an SMS right: a number that can exist (libphonenumber's metadata, by the
//! `phonenumber` crate), stored in E.164; and the encoding and segments carriers will bill it
//! as. GSM 03.38 (GSM-7) takes 160 characters in one segment and 153 per segment of a long
//! message, the extension table (`€ ^ { } [ ] ~ \ |` and form feed) counting twice and never
//! split across segments; anything else makes the whole message UCS-2: 70 UTF-16 units in one
//! segment, 67 per segment of a long one, a surrogate pair never split.

use phonenumber::country::Id;
use serde::Serialize;

use super::recipient::PhoneNumber;

/// A number from a request: E.164, or national when a default region is configured
/// (`channels.sms.default_region`); it must be a number that can exist. Stored as E.164.
pub fn number(raw: &str, default_region: Option<Id>) -> Result<PhoneNumber, String> {
    let raw = raw.trim();
    if !raw.starts_with('+') && default_region.is_none() {
        return Err("expected an E.164 phone number such as +14155550100 (a national number needs \
                    channels.sms.default_region)"
            .into());
    }
    let parsed = phonenumber::parse(default_region, raw).map_err(|e| format!("not a phone number: {e}"))?;
    let e164 = parsed.format().mode(phonenumber::Mode::E164).to_string();
    if !phonenumber::is_valid(&parsed) {
        let region = parsed.country().id().map(|r| format!(" in {}", r.as_ref())).unwrap_or_default();
        return Err(format!("{e164} is not a number that can exist{region}"));
    }
    PhoneNumber::parse(&e164)
}

/// A region code from configuration (`GB`, `US`).
pub fn region(code: &str) -> Option<Id> {
    code.trim().to_ascii_uppercase().parse().ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

/// How carriers will send and bill a text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Segments {
    pub encoding: Encoding,
    pub segments: u32,
    /// UCS-2 only: the characters that are not GSM-7, each once, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ucs2_characters: Vec<char>,
}

const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// GSM-7 septets a character takes: 1 in the basic table, 2 in the extension table.
fn septets(c: char) -> Option<u32> {
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Pack units into segments of `single` (one segment) or `part` (each of several), no unit
/// split across two.
fn count(units: impl Iterator<Item = u32> + Clone, single: u32, part: u32) -> u32 {
    if units.clone().sum::<u32>() <= single {
        return 1;
    }
    let (mut segments, mut used) = (1, 0);
    for u in units {
        if used + u > part {
            segments += 1;
            used = 0;
        }
        used += u;
    }
    segments
}

pub fn segments(text: &str) -> Segments {
    if text.chars().all(|c| septets(c).is_some()) {
        let segments = count(text.chars().filter_map(septets), 160, 153);
        return Segments { encoding: Encoding::Gsm7, segments, ucs2_characters: Vec::new() };
    }
    let mut ucs2_characters = Vec::new();
    for c in text.chars().filter(|c| septets(*c).is_none()) {
        if !ucs2_characters.contains(&c) {
            ucs2_characters.push(c);
        }
    }
    let segments = count(text.chars().map(|c| c.len_utf16() as u32), 70, 67);
    Segments { encoding: Encoding::Ucs2, segments, ucs2_characters }
}

/// The text with the look-alikes that force UCS-2 (curly quotes, dashes, non-breaking and
/// other spaces, the ellipsis) replaced by their GSM-7 forms, when that makes it GSM-7.
pub fn gsm7_safe(text: &str) -> Option<String> {
    let safe: String = text
        .chars()
        .flat_map(|c| -> Vec<char> {
            match c {
                '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{2032}' => vec!['\''],
                '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{2033}' => vec!['"'],
                '\u{2013}' | '\u{2014}' | '\u{2212}' => vec!['-'],
                '\u{a0}' | '\u{2002}' | '\u{2003}' | '\u{2009}' | '\u{202f}' => vec![' '],
                '\u{2026}' => vec!['.', '.', '.'],
                c => vec![c],
            }
        })
        .collect();
    (safe != text && segments(&safe).encoding == Encoding::Gsm7).then_some(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_counts_160_then_153_and_the_extension_table_twice() {
        let s = segments(&"a".repeat(160));
        assert_eq!((s.encoding, s.segments), (Encoding::Gsm7, 1));
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
        // `€` takes two septets: 80 of them fill one segment, 81 do not.
        assert_eq!(segments(&"€".repeat(80)).segments, 1);
        assert_eq!(segments(&"€".repeat(81)).segments, 2);
        for c in ['^', '{', '}', '[', ']', '~', '\\', '|', '€'] {
            let s = segments(&format!("{c}{}", "a".repeat(158)));
            assert_eq!((s.encoding, s.segments), (Encoding::Gsm7, 1), "{c}");
            assert_eq!(segments(&format!("{c}{}", "a".repeat(159))).segments, 2, "{c}");
        }
        // 152 septets then an extension character: it is not split, so it opens segment 2,
        // and 153 + 153 + 1 fill three.
        let text = format!("{}€{}", "a".repeat(152), "a".repeat(153));
        assert_eq!(segments(&text).segments, 3);
    }

    #[test]
    fn anything_else_is_ucs2_at_70_then_67_with_surrogate_pairs_whole() {
        let s = segments(&format!("{}’", "a".repeat(69)));
        assert_eq!((s.encoding, s.segments, s.ucs2_characters.clone()), (Encoding::Ucs2, 1, vec!['’']));
        assert_eq!(segments(&format!("{}’", "a".repeat(70))).segments, 2);
        assert_eq!(segments(&"ж".repeat(134)).segments, 2);
        assert_eq!(segments(&"ж".repeat(135)).segments, 3);
        // An emoji is two UTF-16 units: 35 fill one segment; past it, pairs are not split
        // across the 67-unit boundary (33 per segment).
        assert_eq!(segments(&"😀".repeat(35)).segments, 1);
        assert_eq!(segments(&"😀".repeat(36)).segments, 2);
        assert_eq!(segments(&"😀".repeat(66)).segments, 2);
        assert_eq!(segments(&"😀".repeat(67)).segments, 3);
        assert_eq!(segments("hi 😀 ok 😀").ucs2_characters, vec!['😀']);
    }

    #[test]
    fn look_alikes_have_a_gsm7_rendering() {
        assert_eq!(gsm7_safe("It’s “done” – see…").as_deref(), Some("It's \"done\" - see..."));
        assert_eq!(gsm7_safe("plain"), None);
        assert_eq!(gsm7_safe("Привет’"), None, "still UCS-2: no GSM-7 rendering");
    }

    #[test]
    fn numbers_must_be_able_to_exist_and_are_stored_in_e164() {
        assert_eq!(number("+14155550100", None).map(|p| p.as_str().to_owned()), Ok("+14155550100".into()));
        assert_eq!(number("07911 123456", region("gb")).map(|p| p.as_str().to_owned()), Ok("+447911123456".into()));
        assert!(number("07911 123456", None).is_err_and(|e| e.contains("default_region")));
        assert!(number("+1415555010", None).is_err_and(|e| e.contains("cannot exist") || e.contains("can exist")));
        assert!(number("+999123", None).is_err());
        assert!(number("hello", region("US")).is_err());
        assert_eq!(region("XX"), None);
    }
}
