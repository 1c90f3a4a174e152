//! Schedules: cron expressions for workflows that start on their own (`[[schedule]]` in
//! the configuration), e.g. a Monday digest. Five fields, in UTC: minute, hour, day of
//! month, month, day of week. Each field takes `*`, a number, a range `1-5`, a list
//! `1,15`, a step `*/15` or `8-18/2`; months and days of the week also take names
//! (`JAN`, `MON`; Sunday is 0 or 7). As in cron, when both day fields are restricted a
//! day matching either is enough.

use crate::domain::Millis;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_restricted: bool,
    weekdays_restricted: bool,
    source: String,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn field(text: &str, name: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<bool>, String> {
    let mut set = vec![false; max as usize + 1];
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + if names.len() == 12 { 1 } else { 0 });
        }
        let v: u32 = s.parse().map_err(|_| format!("`{s}` is not a {name}"))?;
        if v < min || v > max {
            return Err(format!("the {name} `{v}` is outside {min}-{max}"));
        }
        Ok(v)
    };
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| format!("`{s}` is not a step"))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { max } else { v })
        };
        if lo > hi {
            return Err(format!("the range `{range}` runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set[v as usize] = true;
            v += step;
        }
    }
    Ok(set)
}

impl Cron {
    /// Parses `minute hour day-of-month month day-of-week`, e.g. `0 9 * * MON`.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [m, h, d, mo, w] = parts[..] else {
            return Err(format!(
                "a schedule has five fields (minute hour day-of-month month day-of-week, in UTC), like \"0 9 * * MON\"; `{text}` has {}",
                parts.len()
            ));
        };
        let mut weekdays = field(w, "day of the week", 0, 7, &WEEKDAYS)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        weekdays.truncate(7);
        Ok(Cron {
            minutes: field(m, "minute", 0, 59, &[])?,
            hours: field(h, "hour", 0, 23, &[])?,
            days: field(d, "day of the month", 1, 31, &[])?,
            months: field(mo, "month", 1, 12, &MONTHS)?,
            weekdays,
            days_restricted: d != "*",
            weekdays_restricted: w != "*",
            source: text.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }

    fn day_matches(&self, y: i64, mo: u32, d: u32) -> bool {
        let wd = weekday(days_from_civil(y, mo, d));
        if !self.months[mo as usize] {
            return false;
        }
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => self.days[d as usize] || self.weekdays[wd],
            (true, false) => self.days[d as usize],
            (false, true) => self.weekdays[wd],
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` that matches, within the next five years.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        const DAY: i64 = 86_400_000;
        let start = after.0.div_euclid(60_000) * 60_000 + 60_000;
        let first_day = start.div_euclid(DAY);
        let first_minute = (start.rem_euclid(DAY) / 60_000) as u32;
        for (i, day) in (0..5 * 366).zip(first_day..) {
            let (y, mo, d) = civil_from_days(day);
            if self.day_matches(y, mo, d) {
                let from = if i == 0 { first_minute } else { 0 };
                for minute_of_day in from..1440 {
                    let (h, m) = (minute_of_day / 60, minute_of_day % 60);
                    if self.hours[h as usize] && self.minutes[m as usize] {
                        return Some(Millis(day * DAY + i64::from(minute_of_day) * 60_000));
                    }
                }
            }
        }
        None
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// 0 = Sunday.
fn weekday(days: i64) -> usize {
    (days + 4).rem_euclid(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Millis {
        Millis::parse_rfc3339(s).unwrap()
    }

    fn next(cron: &str, after: &str) -> String {
        Cron::parse(cron).unwrap().next_after(at(after)).unwrap().rfc3339()
    }

    #[test]
    fn next_times_follow_cron() {
        // 2026-11-26 is a Thursday.
        assert_eq!(next("0 9 * * MON", "2026-11-26T12:00:00Z"), "2026-11-30T09:00:00.000Z");
        assert_eq!(next("0 9 * * MON", "2026-11-30T09:00:00Z"), "2026-12-07T09:00:00.000Z", "strictly after");
        assert_eq!(next("*/15 * * * *", "2026-11-26T12:07:30Z"), "2026-11-26T12:15:00.000Z");
        assert_eq!(next("30 8-18/2 * * 1-5", "2026-11-27T19:00:00Z"), "2026-11-30T08:30:00.000Z");
        assert_eq!(next("0 0 29 FEB *", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00.000Z");
        assert_eq!(next("0 12 1 * SUN", "2026-11-26T00:00:00Z"), "2026-11-29T12:00:00.000Z", "either day field");
        assert_eq!(next("0 0 * * 7", "2026-11-26T00:00:00Z"), "2026-11-29T00:00:00.000Z", "7 is Sunday too");
        assert_eq!(next("59 23 31 DEC *", "2026-12-31T23:59:00Z"), "2027-12-31T23:59:00.000Z");
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("0 9 * *", "five fields"),
            ("61 9 * * *", "outside 0-59"),
            ("0 9 * * FUNDAY", "is not a day of the week"),
            ("0 9-5 * * *", "runs backwards"),
            ("*/0 * * * *", "is not a step"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(Millis(0)), None, "never");
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_500, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(weekday(days_from_civil(2026, 11, 26)), 4);
    }
}
