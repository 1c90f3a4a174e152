//! Text from people and scripts: answer validation (limits, patterns, choices) and
//! making hostile text harmless to show on one line.

use crate::engine::AnswerSpec;

/// Why an answer was not taken; said back to the person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Trims an answer, removes NUL and other control characters (keeping new lines and
/// tabs), and checks it against the limit and the question's spec. Returns the answer to
/// record, or what to tell the person.
pub fn validate_answer(raw: &str, spec: &AnswerSpec, max_chars: usize) -> Result<String, Refusal> {
    let limit = spec.max_chars.map_or(max_chars, |m| m.min(max_chars));
    // Count before cleaning too, so a megabyte of control characters is refused, not
    // scanned into an empty answer.
    let n = raw.chars().take(limit.saturating_mul(4).saturating_add(1)).count();
    if n > limit.saturating_mul(4) {
        return Err(too_long(limit));
    }
    let cleaned: String = raw.chars().filter(|c| !c.is_control() || *c == '\n' || *c == '\t').collect();
    let answer = cleaned.trim();
    if answer.chars().count() > limit {
        return Err(too_long(limit));
    }
    if answer.is_empty() {
        return Err(Refusal("That answer is empty. Please type your answer, or `cancel` to stop.".into()));
    }
    if let Some(choices) = &spec.choices {
        return pick_choice(answer, choices).ok_or_else(|| {
            let list: Vec<String> = choices.iter().enumerate().map(|(i, c)| format!("{}. {}", i + 1, c)).collect();
            Refusal(format!("Please answer with one of: {} (the number or the word).", list.join(", ")))
        });
    }
    if let Some(p) = &spec.pattern {
        let ok = answer_pattern(p).is_ok_and(|re| re.is_match(answer));
        if !ok {
            let hint = spec.hint.clone().unwrap_or_else(|| "That answer does not have the expected form.".into());
            return Err(Refusal(format!("{hint} Please try again, or `cancel` to stop.")));
        }
    }
    Ok(answer.to_string())
}

/// The pattern compiled to match a whole answer, or why it does not compile. Compiled
/// once per pattern: scripts use a handful, and compiling costs far more than matching.
pub fn answer_pattern(pattern: &str) -> Result<regex::Regex, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<String, Result<regex::Regex, String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() > 1_000 {
        cache.clear();
    }
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string()))
        .clone()
}

fn too_long(limit: usize) -> Refusal {
    Refusal(format!(
        "That answer is longer than {limit} characters, the most I can take. Please shorten it and send it again."
    ))
}

/// The option an answer picks: its number (1-based) or its label, ignoring case.
pub fn pick_choice(answer: &str, choices: &[String]) -> Option<String> {
    let a = answer.trim().trim_end_matches('.');
    if let Ok(n) = a.parse::<usize>() {
        return n.checked_sub(1).and_then(|i| choices.get(i)).cloned();
    }
    choices.iter().find(|c| c.eq_ignore_ascii_case(a) || c.to_lowercase() == a.to_lowercase()).cloned()
}

/// Folds text onto one line for messages that name it (errors, logs of ids): control
/// characters become spaces and bidirectional overrides are dropped.
pub fn one_line(s: &str) -> String {
    s.chars()
        .filter(|c| !is_bidi_control(*c))
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Right-to-left and isolate overrides, which can make shown text lie about its order.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Text from a person, made safe to show in a terminal or echo into a room: control
/// characters (but new lines) and bidirectional overrides removed.
pub fn for_display(s: &str) -> String {
    s.chars().filter(|c| !is_bidi_control(*c) && (!c.is_control() || *c == '\n')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, spec: &AnswerSpec, max: usize, expected: Result<&str, &str>) {
        let got = validate_answer(raw, spec, max);
        match (got, expected) {
            (Ok(a), Ok(e)) => assert_eq!(a, e),
            (Err(Refusal(r)), Err(e)) => assert!(r.contains(e), "refusal {r:?} should contain {e:?}"),
            (got, expected) => panic!("{raw:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn answers_are_cleaned_and_checked() {
        let free = AnswerSpec::default();
        let choices =
            AnswerSpec { choices: Some(vec!["no".into(), "possibly".into(), "yes".into()]), ..Default::default() };
        let pattern = AnswerSpec {
            pattern: Some(r"[A-Z]{2} \d{4}".into()),
            hint: Some("Two initials and a year, e.g. AB 2015.".into()),
            ..Default::default()
        };
        check("  hello  ", &free, 100, Ok("hello"));
        check("a\0b", &free, 100, Ok("ab"));
        check("\0\0\0", &free, 100, Err("empty"));
        check(&"x".repeat(101), &free, 100, Err("longer than 100 characters"));
        check(&"x".repeat(1_000_000), &free, 4000, Err("longer than 4000 characters"));
        check(&"\0".repeat(1_000_000), &free, 4000, Err("longer than 4000"));
        check("2", &choices, 100, Ok("possibly"));
        check("YES", &choices, 100, Ok("yes"));
        check("4", &choices, 100, Err("1. no, 2. possibly, 3. yes"));
        check("0", &choices, 100, Err("one of"));
        check("AB 2015", &pattern, 100, Ok("AB 2015"));
        check("Alice Smith", &pattern, 100, Err("Two initials and a year"));
        check("AB 2015 and more", &pattern, 100, Err("Two initials"));
    }

    #[test]
    fn a_tighter_spec_limit_wins() {
        let spec = AnswerSpec { max_chars: Some(5), ..Default::default() };
        check("abcdef", &spec, 100, Err("longer than 5"));
    }

    #[test]
    fn one_line_drops_overrides_and_controls() {
        assert_eq!(one_line("a\u{202E}b\nc\0d"), "ab c d");
        assert_eq!(for_display("x\u{2066}y\u{200B}z\r\n"), "xy\u{200B}z\n");
    }
}
