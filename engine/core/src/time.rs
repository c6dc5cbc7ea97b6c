//! Time in the engine: event-time hours, audience windows, RFC 3339
//! timestamps and shop time zones.
//!
//! # The clock-hour frame
//!
//! Every window is evaluated on whole buckets of the shop's *clock*: a shop
//! has a time zone ([`Zone`], `timezone:` in its rule file, UTC by default),
//! and an instant `ts` falls in clock hour `floor((ts + offset(ts)) / 1h)`,
//! where `offset(ts)` is the zone's UTC offset at that instant (minutes
//! included: +05:45 works). The index stores these clock hours, and `now` is
//! converted the same way ([`Zone::clock_ms`]) before a window's range is
//! computed. So `Nd` covers today on the shop's calendar and the `N - 1`
//! local days before it, exactly, DST included, and `Nh` the current clock
//! hour and the `N - 1` before it. On the night the clocks change, clock
//! hours are not real hours: spring forward skips one (`12h` then spans 11
//! real hours), fall back folds two real hours into one (`12h` spans 13).
//! With UTC the offset is 0 and the clock is the instant itself.
//!
//! Both kinds of window reduce to an inclusive range of clock-hour numbers,
//! which is what the index stores per event.

use std::fmt;

/// Milliseconds in one hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The longest window a rule may use, in hours (400 days).
pub const MAX_WINDOW_HOURS: u32 = 400 * 24;

/// The latest instant the engine answers for: 9999-12-31T23:59:59.999Z.
///
/// Hours and days are `u32` in the index; instants past this bound would
/// need clamping, and a clamped instant gives wrong window answers, so
/// callers refuse them with [`check_instant`] instead.
pub const MAX_NOW_MS: i64 = 253_402_300_799_999;

/// Checks an instant a client sent (ms since the epoch): `0..=MAX_NOW_MS`.
pub fn check_instant(now_ms: i64) -> Result<i64, String> {
    if (0..=MAX_NOW_MS).contains(&now_ms) {
        Ok(now_ms)
    } else {
        Err(format!(
            "instant {now_ms} ms is outside 0..={MAX_NOW_MS} (1970-01-01 to 9999-12-31 UTC)"
        ))
    }
}

/// Hours since the Unix epoch of a millisecond timestamp (0 before the
/// epoch); of a clock reading ([`Zone::clock_ms`]), the clock hour.
pub fn hour_of(ts_ms: i64) -> u32 {
    (ts_ms.max(0) / HOUR_MS).min(u32::MAX as i64) as u32
}

/// Days since the Unix epoch of a millisecond timestamp (0 before the epoch).
pub fn day_of(ts_ms: i64) -> u32 {
    hour_of(ts_ms) / 24
}

/// The unit a window is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `h`: exact to the hour.
    Hours,
    /// `d`: exact to the day of the shop's clock.
    Days,
}

/// A look-back window such as `7d` or `12h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// How many units.
    pub amount: u32,
    /// Hours or days.
    pub unit: Unit,
}

/// An inclusive range of event hours that a window covers at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourRange {
    /// First hour inside the window.
    pub first: u32,
    /// Last hour inside the window (the hour of `now`, or the end of today).
    pub last: u32,
}

impl HourRange {
    /// Whether an event in hour `h` falls inside.
    #[inline]
    pub fn contains(&self, h: u32) -> bool {
        self.first <= h && h <= self.last
    }

    /// First and last day touched by the range.
    pub fn days(&self) -> (u32, u32) {
        (self.first / 24, self.last / 24)
    }

    /// Whether the range is made of whole days only.
    pub fn whole_days(&self) -> bool {
        self.first.is_multiple_of(24) && self.last % 24 == 23
    }
}

impl Window {
    /// Parses `7d`, `12h`: a whole number of 1h up to 400d.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("invalid window `{text}`: expected a whole number followed by h or d, e.g. 7d or 12h");
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = text.split_at(split);
        let unit = match unit {
            "h" => Unit::Hours,
            "d" => Unit::Days,
            _ => return Err(bad()),
        };
        if digits.is_empty() {
            return Err(bad());
        }
        let too_long = || format!("invalid window `{text}`: longer than the maximum of 400d");
        let amount: u32 = digits.parse().map_err(|_| too_long())?;
        if amount == 0 {
            return Err(format!("invalid window `{text}`: must be at least 1h"));
        }
        let window = Window { amount, unit };
        if window.hours() > u64::from(MAX_WINDOW_HOURS) {
            return Err(too_long());
        }
        Ok(window)
    }

    /// Length in hours.
    pub fn hours(&self) -> u64 {
        match self.unit {
            Unit::Hours => u64::from(self.amount),
            Unit::Days => u64::from(self.amount) * 24,
        }
    }

    /// Length in milliseconds.
    pub fn millis(&self) -> i64 {
        self.hours() as i64 * HOUR_MS
    }

    /// The clock hours this window covers at clock reading `now_ms` (an
    /// instant converted by [`Zone::clock_ms`]; with UTC, the instant).
    pub fn range(&self, now_ms: i64) -> HourRange {
        // Saturating: `hour_of` clamps far-future instants to `u32::MAX`
        // hours, where `+ 1` and `* 24 + 23` would overflow.
        let now_hour = hour_of(now_ms);
        match self.unit {
            Unit::Hours => HourRange {
                first: now_hour.saturating_add(1).saturating_sub(self.amount),
                last: now_hour,
            },
            Unit::Days => {
                let today = now_hour / 24;
                HourRange {
                    first: today.saturating_add(1).saturating_sub(self.amount).saturating_mul(24),
                    last: today.saturating_mul(24).saturating_add(23),
                }
            }
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            Unit::Hours => 'h',
            Unit::Days => 'd',
        };
        write!(f, "{}{unit}", self.amount)
    }
}

/// A shop's time zone: an IANA zone from the database built into the
/// binary (no system files), and its name. Cheap to clone (shared).
#[derive(Clone)]
pub struct Zone {
    name: std::sync::Arc<str>,
    tz: jiff::tz::TimeZone,
    /// UTC itself: the clock is the instant, no lookup.
    utc: bool,
}

impl Zone {
    /// UTC, the zone of a rule file without `timezone:`.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            tz: jiff::tz::TimeZone::UTC,
            utc: true,
        }
    }

    /// The IANA zone with this name (`Asia/Shanghai`), `None` when the
    /// database has none. The name is kept as the database spells it.
    pub fn get(name: &str) -> Option<Zone> {
        if name.is_empty() || name.len() > MAX_ZONE_NAME_BYTES {
            return None;
        }
        let tz = jiff::tz::TimeZone::get(name).ok()?;
        let name = tz.iana_name().unwrap_or(name).to_string();
        if name == "UTC" {
            return Some(Zone::utc());
        }
        Some(Zone {
            name: name.into(),
            tz,
            utc: false,
        })
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is UTC (the default).
    pub fn is_utc(&self) -> bool {
        self.utc
    }

    /// The zone's UTC offset at an instant, in milliseconds.
    #[inline]
    pub fn offset_ms(&self, ts_ms: i64) -> i64 {
        if self.utc {
            return 0;
        }
        // Past the last instant the zone database covers (9999-12-30T22:00Z,
        // before MAX_NOW_MS) the offset in force then still holds: an offset
        // of 0 there would turn the clock back by hours in a zone east of
        // UTC, so a later instant would read an earlier clock.
        let ts = jiff::Timestamp::from_millisecond(ts_ms).unwrap_or(if ts_ms < 0 {
            jiff::Timestamp::MIN
        } else {
            jiff::Timestamp::MAX
        });
        i64::from(self.tz.to_offset(ts).seconds()) * 1000
    }

    /// The shop's clock at an instant, as milliseconds since the epoch of
    /// the clock (`ts + offset(ts)`): what windows and days are cut from.
    #[inline]
    pub fn clock_ms(&self, ts_ms: i64) -> i64 {
        ts_ms.saturating_add(self.offset_ms(ts_ms))
    }

    /// The clock hour of an instant (see the module docs).
    #[inline]
    pub fn clock_hour(&self, ts_ms: i64) -> u32 {
        hour_of(self.clock_ms(ts_ms))
    }

    /// The instant a wall-clock time of this zone names. A time the clocks
    /// skip (spring forward) resolves to the later instant, one they repeat
    /// (fall back) to the earlier: RFC 5545's rule.
    fn instant_of(&self, wall: &Wall) -> Option<i64> {
        let extra = (wall.second - 59).max(0) * 1000 + wall.millis;
        if self.utc {
            return Some(wall.naive_ms());
        }
        let dt = jiff::civil::DateTime::new(
            i16::try_from(wall.year).ok()?,
            wall.month as i8,
            wall.day as i8,
            wall.hour as i8,
            wall.minute as i8,
            wall.second.min(59) as i8,
            0,
        )
        .ok()?;
        match self.tz.to_ambiguous_timestamp(dt).compatible() {
            Ok(ts) => Some(ts.as_millisecond() + extra),
            // A wall time past the database's last instant (the last hours of
            // 9999-12-31 east of UTC): the offset in force then, as `offset_ms`.
            Err(_) => {
                let naive = wall.naive_ms();
                Some(naive - self.offset_ms(naive))
            }
        }
    }
}

/// The longest time zone name looked up (IANA names are at most 30 bytes).
pub const MAX_ZONE_NAME_BYTES: usize = 64;

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Zones are equal when their names are (`Asia/Shanghai` and its alias
/// `PRC` are different zones here, which errs on the careful side).
impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Default for Zone {
    fn default() -> Zone {
        Zone::utc()
    }
}

/// A timestamp's fields as written, before its offset is applied.
struct Wall {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
}

impl Wall {
    /// The fields read as UTC.
    fn naive_ms(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        (days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second) * 1000 + self.millis
    }
}

/// Parses an RFC 3339 timestamp with its offset, or a local date-time
/// without one (`2026-11-11T00:00:00`), which is a wall-clock time in
/// `zone` (see [`Zone`] for gaps and folds), into milliseconds since the
/// Unix epoch.
pub fn parse_timestamp_in(text: &str, zone: &Zone) -> Option<i64> {
    let (wall, offset_min) = parse_wall(text)?;
    match offset_min {
        Some(m) => Some(wall.naive_ms() - m * 60_000),
        None => zone.instant_of(&wall),
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-10T23:30:00+08:00`, `...Z`,
/// optional fractional seconds) into milliseconds since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    match parse_wall(text)? {
        (wall, Some(m)) => Some(wall.naive_ms() - m * 60_000),
        (_, None) => None,
    }
}

/// The fields of `YYYY-MM-DDTHH:MM:SS[.fff]` and its offset in minutes
/// (`None` when the text ends without one).
fn parse_wall(text: &str) -> Option<(Wall, Option<i64>)> {
    let b = text.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &text[start..i];
        let first3: String = frac.chars().chain("000".chars()).take(3).collect();
        millis = first3.parse::<i64>().ok()?;
    }
    let offset_min = match b.get(i) {
        None => None,
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(0),
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            Some(if *sign == b'-' { -m } else { m })
        }
        _ => return None,
    };
    let wall = Wall {
        year,
        month,
        day,
        hour,
        minute,
        second,
        millis,
    };
    Some((wall, offset_min))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_reject() {
        assert_eq!(Window::parse("7d").map(|w| w.hours()), Ok(168));
        assert_eq!(Window::parse("12h").map(|w| w.hours()), Ok(12));
        assert_eq!(Window::parse("400d").map(|w| w.hours()), Ok(9600));
        assert_eq!(
            Window::parse("7x"),
            Err("invalid window `7x`: expected a whole number followed by h or d, e.g. 7d or 12h".into())
        );
        assert_eq!(
            Window::parse("0d"),
            Err("invalid window `0d`: must be at least 1h".into())
        );
        assert_eq!(
            Window::parse("401d"),
            Err("invalid window `401d`: longer than the maximum of 400d".into())
        );
        assert_eq!(
            Window::parse("9601h"),
            Err("invalid window `9601h`: longer than the maximum of 400d".into())
        );
        assert!(Window::parse("d").is_err());
        assert!(Window::parse("-1d").is_err());
        assert!(Window::parse("99999999999d").is_err());
    }

    #[test]
    fn window_ranges_cover_whole_buckets() {
        let now = 20_000 * DAY_MS + 5 * HOUR_MS + 17;
        let day = Window::parse("7d").unwrap_or(Window {
            amount: 0,
            unit: Unit::Days,
        });
        let r = day.range(now);
        assert_eq!(r.days(), (19_994, 20_000));
        assert!(r.whole_days());
        let hours = Window {
            amount: 12,
            unit: Unit::Hours,
        }
        .range(now);
        assert_eq!(hours.last, hour_of(now));
        assert_eq!(hours.last - hours.first + 1, 12);
        assert!(!hours.whole_days());
    }

    /// Regression (hardening #16): a window at a far-future instant
    /// (`now_ms` >= 2^62, `i64::MAX`) overflowed `now_hour + 1` and
    /// `today * 24 + 23`; the range saturates instead.
    #[test]
    fn window_ranges_at_far_future_instants_do_not_overflow() {
        for now in [1_i64 << 62, i64::MAX, MAX_NOW_MS] {
            for w in ["1h", "12h", "1d", "400d"] {
                let r = Window::parse(w).map(|w| w.range(now));
                let r = r.unwrap_or(HourRange { first: 1, last: 0 });
                assert!(r.first <= r.last, "{w} at {now}: {r:?}");
            }
        }
        let last_day = Window::parse("1d").map(|w| w.range(MAX_NOW_MS));
        assert_eq!(last_day.map(|r| r.last), Ok(hour_of(MAX_NOW_MS)));
    }

    #[test]
    fn instants_are_checked() {
        assert_eq!(check_instant(0), Ok(0));
        assert_eq!(check_instant(MAX_NOW_MS), Ok(MAX_NOW_MS));
        assert!(check_instant(MAX_NOW_MS + 1).is_err());
        assert!(check_instant(-1).is_err());
        assert!(check_instant(i64::MAX).is_err());
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59.999Z"), Some(MAX_NOW_MS));
    }

    fn zone(name: &str) -> Zone {
        Zone::get(name).unwrap_or_else(|| panic!("zone {name}"))
    }

    #[test]
    fn zones_are_looked_up_by_iana_name() {
        assert_eq!(zone("Asia/Shanghai").name(), "Asia/Shanghai");
        assert!(zone("UTC").is_utc());
        assert_eq!(Zone::default(), Zone::utc());
        assert!(!zone("Asia/Kathmandu").is_utc());
        assert!(Zone::get("Mars/Base").is_none());
        assert!(Zone::get("").is_none());
        assert!(Zone::get(&"A/".repeat(100)).is_none());
        assert_eq!(zone("Asia/Shanghai"), zone("Asia/Shanghai"));
        assert_ne!(zone("Asia/Shanghai"), Zone::utc());
    }

    #[test]
    fn clock_hours_follow_the_offset_minutes_included() {
        // 2026-11-10T15:59:00Z is 23:59 in Shanghai, 21:44 in Kathmandu.
        let ts = parse_rfc3339("2026-11-10T15:59:00Z").unwrap_or(0);
        assert_eq!(zone("Asia/Shanghai").offset_ms(ts), 8 * HOUR_MS);
        assert_eq!(zone("Asia/Kathmandu").offset_ms(ts), 5 * HOUR_MS + 45 * 60_000);
        assert_eq!(Zone::utc().clock_ms(ts), ts);
        let shanghai = zone("Asia/Shanghai");
        assert_eq!(shanghai.clock_hour(ts) % 24, 23);
        assert_eq!(shanghai.clock_hour(ts + 60_000) % 24, 0);
        assert_eq!(zone("Asia/Kathmandu").clock_hour(ts) % 24, 21);
        // New York across fall back (2026-11-01 06:00Z): two real hours, one clock hour.
        let ny = zone("America/New_York");
        let fold = parse_rfc3339("2026-11-01T05:30:00Z").unwrap_or(0);
        assert_eq!(ny.clock_hour(fold), ny.clock_hour(fold + HOUR_MS));
        assert_eq!(ny.offset_ms(fold + HOUR_MS), -5 * HOUR_MS);
    }

    #[test]
    fn local_timestamps_resolve_gaps_late_and_folds_early() {
        let ny = zone("America/New_York");
        let at = |text: &str, zone: &Zone| parse_timestamp_in(text, zone);
        assert_eq!(
            at("2026-11-11T00:00:00", &zone("Asia/Shanghai")),
            parse_rfc3339("2026-11-10T16:00:00Z")
        );
        assert_eq!(
            at("2026-11-11T00:00:00.250", &Zone::utc()),
            parse_rfc3339("2026-11-11T00:00:00.250Z")
        );
        // With an offset, the zone does not matter.
        assert_eq!(
            at("2026-11-11T00:00:00+01:00", &ny),
            parse_rfc3339("2026-11-10T23:00:00Z")
        );
        // 02:30 on 2026-03-08 does not exist in New York: the later instant (03:30 EDT).
        assert_eq!(at("2026-03-08T02:30:00", &ny), parse_rfc3339("2026-03-08T07:30:00Z"));
        // 01:30 on 2026-11-01 happens twice: the earlier (EDT).
        assert_eq!(at("2026-11-01T01:30:00", &ny), parse_rfc3339("2026-11-01T05:30:00Z"));
        assert_eq!(at("2026-11-11T00:00", &ny), None);
        assert_eq!(at("2026-11-31T00:00:00", &ny), None);
        assert_eq!(at("2026-11-11T00:00:00+", &ny), None);
        // A leap second is the next second, as with an offset.
        assert_eq!(
            at("2026-12-31T23:59:60", &Zone::utc()),
            parse_rfc3339("2027-01-01T00:00:00Z")
        );
        assert_eq!(at("2026-12-31T23:59:60", &ny), parse_rfc3339("2027-01-01T05:00:00Z"));
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T08:00:00+08:00"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-10T23:30:00+08:00"), Some(1_794_324_600_000));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00.250Z"), Some(1_709_164_800_250));
        assert_eq!(parse_rfc3339("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-11-10 23:30"), None);
        assert_eq!(parse_rfc3339("2026-11-10T23:30:00"), None);
        assert_eq!(parse_rfc3339("2026-13-10T23:30:00Z"), None);
    }
}
