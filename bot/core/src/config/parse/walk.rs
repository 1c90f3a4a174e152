//! The walk over toml's spanned tree: tables that report unknown keys (with the near miss)
//! and wrong types, each mistake with its line, column and dotted key.

use super::*;

pub(super) type Span = Range<usize>;
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// An item of an array, with its dotted key.
pub(super) type Item = (String, Sp<String>);

/// A value with the byte range of the text it came from.
#[derive(Clone, Debug)]
pub(super) struct Sp<T> {
    pub(super) v: T,
    pub(super) span: Span,
}

/// The mistakes found so far, and what is needed to place them.
pub(super) struct Report<'a> {
    pub(super) file: &'a Path,
    pub(super) source: &'a str,
    /// Byte offset of the start of each line.
    pub(super) line_starts: Vec<usize>,
    pub(super) errors: Vec<ConfigError>,
}

impl<'a> Report<'a> {
    pub(super) fn new(file: &'a Path, source: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(source.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Report { file, source, line_starts, errors: Vec::new() }
    }

    /// The 1-based line and column (counted in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column =
            self.source.get(start..).unwrap_or("").char_indices().take_while(|&(i, _)| start + i < offset).count();
        (line, column + 1)
    }

    pub(super) fn line(&self, span: &Span) -> usize {
        self.position(span.start).0
    }

    pub(super) fn error(&mut self, span: &Span, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn syntax(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        let what = e.message().trim();
        let message = if what == "duplicate key" {
            "this key or section is already given above; keep only one of them".to_string()
        } else {
            format!(
                "this is not valid TOML ({what}); correct it here (the syntax is at \
                    https://toml.io)"
            )
        };
        self.error(&span, "syntax", message);
    }

    pub(super) fn wrong_type(&mut self, value: &Value<'_>, key: &str, expected: &str, example: &str) {
        let found = article(value.get_ref());
        self.error(&value.span(), key, format!("expected {expected}, found {found}; write it like {example}"));
    }
}

/// One table of the file, and where it is.
pub(super) struct Table<'t, 'i> {
    pub(super) map: &'t DeTable<'i>,
    /// The table's header (`[[person]]`), or the whole inline table: where a missing key
    /// is reported.
    pub(super) span: Span,
    /// The dotted key of the table itself, e.g. `person[2]`; empty at the top level.
    pub(super) path: String,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }

    pub(super) fn get(&self, name: &str) -> Option<&'t Value<'i>> {
        self.map.get(name)
    }

    /// Reports every key not in `allowed`; `noun` is what the keys are ("key",
    /// "platform").
    pub(super) fn check_keys(&self, rep: &mut Report<'_>, allowed: &[&str], noun: &str) {
        self.check_keys_besides(rep, allowed, &[], noun);
    }

    /// As [`Table::check_keys`], leaving alone the keys in `handled` (which get their own
    /// message elsewhere and are not offered as allowed).
    pub(super) fn check_keys_besides(&self, rep: &mut Report<'_>, allowed: &[&str], handled: &[&str], noun: &str) {
        for (key, _) in self.map.iter() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) || handled.contains(&name) {
                continue;
            }
            let hint = match closest(name, allowed.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("remove it, or use one of the {noun}s allowed here: {}", one_of(allowed)),
            };
            rep.error(&key.span(), self.key(name), format!("unknown {noun} `{name}`; {hint}"));
        }
    }

    pub(super) fn missing(&self, rep: &mut Report<'_>, name: &str, advice: &str) {
        rep.error(&self.span, self.key(name), format!("`{name}` is missing; {advice}"));
    }

    /// An optional string.
    pub(super) fn string(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Sp<String>> {
        let value = self.get(name)?;
        expect_string(rep, value, &self.key(name), example)
    }

    /// A required string.
    pub(super) fn required_string(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Sp<String>> {
        if self.get(name).is_none() {
            self.missing(rep, name, &format!("add a line like {example}"));
            return None;
        }
        self.string(rep, name, example)
    }

    /// A required string that must not be blank, such as a display name.
    pub(super) fn required_text(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<String> {
        let text = self.required_string(rep, name, example)?;
        if text.v.trim().is_empty() {
            rep.error(&text.span, self.key(name), format!("`{name}` is empty; write it like {example}"));
            return None;
        }
        Some(text.v)
    }

    /// An optional array of strings, each with its own dotted key (`roles[2]`). The items
    /// that are strings come back; `None` when the key is absent or not an array. Repeats
    /// are reported and dropped.
    pub(super) fn strings(&self, rep: &mut Report<'_>, name: &str, example: &str) -> Option<Vec<Item>> {
        let value = self.get(name)?;
        let key = self.key(name);
        let Some(items) = value.get_ref().as_array() else {
            rep.wrong_type(value, &key, "an array of strings", example);
            return None;
        };
        let mut out: Vec<Item> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{}]", i + 1);
            let Some(s) = expect_string(rep, item, &item_key, example) else {
                continue;
            };
            if let Some((_, first)) = out.iter().find(|(_, o)| o.v == s.v) {
                let line = rep.line(&first.span);
                rep.error(&s.span, item_key, format!("`{}` is already listed on line {line}; remove the repeat", s.v));
                continue;
            }
            out.push((item_key, s));
        }
        Some(out)
    }
}

pub(super) fn expect_string(rep: &mut Report<'_>, value: &Value<'_>, key: &str, example: &str) -> Option<Sp<String>> {
    match value.get_ref().as_str() {
        Some(s) => Some(Sp { v: s.to_string(), span: value.span() }),
        None => {
            rep.wrong_type(value, key, "a string", example);
            None
        }
    }
}

pub(super) fn integer(i: &DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// A single `[name]` section.
pub(super) fn section<'t, 'i>(rep: &mut Report<'_>, root: &Table<'t, 'i>, name: &str) -> Option<Table<'t, 'i>> {
    let value = root.get(name)?;
    match value.get_ref() {
        DeValue::Table(map) => Some(Table { map, span: value.span(), path: name.to_string() }),
        other => {
            let found = article(other);
            rep.error(
                &value.span(),
                name,
                format!(
                    "expected a table, found {found}; write one [{name}] section (single \
                    brackets) with its keys below it"
                ),
            );
            None
        }
    }
}

/// The `[[name]]` sections, in file order.
pub(super) fn sections<'t, 'i>(rep: &mut Report<'_>, root: &Table<'t, 'i>, name: &str) -> Vec<Table<'t, 'i>> {
    let Some(value) = root.get(name) else {
        return Vec::new();
    };
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("{}[{}]", root.key(name), i + 1);
                match item.get_ref() {
                    DeValue::Table(map) => Some(Table { map, span: item.span(), path }),
                    other => {
                        let found = article(other);
                        rep.error(
                            &item.span(),
                            path,
                            format!(
                                "expected a table, found {found}; write each one as a \
                                [[{name}]] section with its keys below it"
                            ),
                        );
                        None
                    }
                }
            })
            .collect(),
        DeValue::Table(map) => {
            rep.error(
                &value.span(),
                name,
                format!("write [[{name}]] with double brackets, one section for each {name}"),
            );
            vec![Table { map, span: value.span(), path: format!("{}[1]", root.key(name)) }]
        }
        other => {
            let found = article(other);
            rep.error(
                &value.span(),
                name,
                format!(
                    "expected [[{name}]] sections, found {found}; write a [[{name}]] section \
                    for each {name}"
                ),
            );
            Vec::new()
        }
    }
}

/// The required `id` of a role, agency, person or group. A malformed id is reported but
/// still returned, so that references to it are not reported a second time.
pub(super) fn read_id(rep: &mut Report<'_>, t: &Table<'_, '_>, example: &str) -> Option<Sp<String>> {
    let id = t.required_string(rep, "id", example)?;
    if id.v.is_empty() {
        rep.error(
            &id.span,
            t.key("id"),
            format!(
                "the id is empty; give one of lowercase letters, digits, `-` and `_`, like \
                {example}"
            ),
        );
        return None;
    }
    if !id.v.chars().all(is_id_char) {
        let suggestion = slug(&id.v);
        let try_this = if suggestion.is_empty() { String::new() } else { format!(", like `{suggestion}`") };
        rep.error(
            &id.span,
            t.key("id"),
            format!(
                "`{}` is not a valid id; use only lowercase letters a-z, digits 0-9, `-` and \
                    `_`{try_this}",
                id.v
            ),
        );
    }
    Some(id)
}

pub(super) fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// `St Mary's` → `st-mary-s`: a valid id close to the text given.
pub(super) fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if is_id_char(c) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// The candidate nearest to `word` by edit distance, if it is within 2 edits.
pub(super) fn closest<'c>(word: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, c)| (d, c))
        .map(|(_, c)| c)
}

/// Levenshtein distance, in characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            let delete = prev[j + 1] + 1;
            let insert = row[j] + 1;
            row.push(substitute.min(delete).min(insert));
        }
        prev = row;
    }
    prev[b.len()]
}

/// `a`, `b` or `c`.
pub(super) fn one_of(words: &[&str]) -> String {
    let words: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.join(""),
    }
}

pub(super) fn article(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
