//! RFC 3339 timestamps in UTC, without a date-time crate.
//!
//! The gateway stamps jobs, events and metadata rows with times such as
//! `2026-11-25T16:22:56.123Z`. Formatting a Unix time as a calendar date only needs the
//! "days to civil date" conversion for the proleptic Gregorian calendar, which is a few lines of
//! integer arithmetic, so no `chrono` or `time` dependency is needed.

use std::time::{SystemTime, UNIX_EPOCH};

const MILLIS_PER_DAY: u64 = 86_400_000;

/// The current time in UTC as RFC 3339 with millisecond precision, e.g. `2026-11-25T16:22:56.123Z`.
///
/// A system clock set before 1970 yields `1970-01-01T00:00:00.000Z` rather than failing.
pub fn now_rfc3339() -> String {
    rfc3339_from_unix_millis(unix_millis())
}

/// Milliseconds since 1970-01-01T00:00:00Z now; 0 for a clock set before 1970.
pub fn unix_millis() -> u64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since_epoch| since_epoch.as_millis())
        .unwrap_or(0);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

/// Formats `ms` milliseconds after 1970-01-01T00:00:00Z as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
///
/// Never panics. Years beyond 9999 (from absurdly large inputs) are printed with more digits.
pub fn rfc3339_from_unix_millis(ms: u64) -> String {
    let days = ms / MILLIS_PER_DAY;
    let millis_of_day = ms % MILLIS_PER_DAY;
    let (year, month, day) = civil_from_days(days);
    let seconds_of_day = millis_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60,
        millis_of_day % 1000,
    )
}

/// Converts a count of days since 1970-01-01 to a (year, month 1..=12, day 1..=31) date.
///
/// The calendar repeats every 400 years (146,097 days). Within an era the arithmetic is simplest
/// when years start on 1 March, so that the leap day falls at the very end of the year and
/// months have a regular 153-days-per-5-months rhythm; the result is shifted back to January
/// years at the end.
fn civil_from_days(days_since_epoch: u64) -> (u64, u64, u64) {
    const DAYS_PER_ERA: u64 = 146_097;
    // 1970-01-01 is day 719,468 counted from 0000-03-01, the start of a March-based era.
    let days = days_since_epoch + 719_468;
    let era = days / DAYS_PER_ERA;
    let day_of_era = days % DAYS_PER_ERA; // 0..=146_096
    // Leap years add a day every 4 years, except every 100th year, except every 400th year.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let march_year = era * 400 + year_of_era;
    // January and February belong to the next calendar year in a March-based count.
    let year = if month <= 2 {
        march_year + 1
    } else {
        march_year
    };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds since the epoch for a UTC date, counted naively day by day, so the test does
    /// not reuse the arithmetic under test.
    fn millis_for(year: u64, month: u64, day: u64) -> u64 {
        let is_leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for y in 1970..year {
            days += if is_leap(y) { 366 } else { 365 };
        }
        let month_lengths = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        for m in 1..month {
            days += month_lengths[(m - 1) as usize];
            if m == 2 && is_leap(year) {
                days += 1;
            }
        }
        (days + day - 1) * MILLIS_PER_DAY
    }

    #[test]
    fn the_epoch_is_1970_01_01() {
        assert_eq!(rfc3339_from_unix_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn known_instants_format_exactly() {
        assert_eq!(rfc3339_from_unix_millis(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(
            rfc3339_from_unix_millis(86_399_999),
            "1970-01-01T23:59:59.999Z"
        );
        // 2001-09-09T01:46:40Z is Unix time 1,000,000,000.
        assert_eq!(
            rfc3339_from_unix_millis(1_000_000_000_000),
            "2001-09-09T01:46:40.000Z"
        );
        // 2038-01-19T03:14:07Z is the last second of signed 32-bit Unix time.
        assert_eq!(
            rfc3339_from_unix_millis(2_147_483_647_000),
            "2038-01-19T03:14:07.000Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(1_795_623_776_123),
            "2026-11-25T16:22:56.123Z"
        );
    }

    #[test]
    fn leap_days_are_real_dates() {
        // 2000 is a leap year because it is divisible by 400.
        assert_eq!(
            rfc3339_from_unix_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(951_868_800_000),
            "2000-03-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(millis_for(2024, 2, 29) + 12 * 3_600_000),
            "2024-02-29T12:00:00.000Z"
        );
        // 2100 is not a leap year: the day after 28 February is 1 March.
        assert_eq!(
            rfc3339_from_unix_millis(millis_for(2100, 2, 28) + MILLIS_PER_DAY),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn year_boundaries_roll_over() {
        assert_eq!(
            rfc3339_from_unix_millis(millis_for(2025, 1, 1) - 1),
            "2024-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_from_unix_millis(millis_for(2025, 1, 1)),
            "2025-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn every_day_for_five_centuries_matches_a_naive_calendar() {
        let mut expected = (1970, 1, 1);
        let is_leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for days in 0..(500 * 366) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            let month_length = match m {
                2 if is_leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            expected = match (m, d) {
                (12, 31) => (y + 1, 1, 1),
                (_, d) if d == month_length => (y, m + 1, 1),
                _ => (y, m, d + 1),
            };
        }
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let far_future = rfc3339_from_unix_millis(u64::MAX);
        assert!(far_future.ends_with('Z'), "{far_future}");
    }

    #[test]
    fn now_has_the_documented_shape() {
        let now = now_rfc3339();
        let bytes = now.as_bytes();
        assert_eq!(now.len(), 24, "{now}");
        assert_eq!((bytes[4], bytes[7], bytes[10]), (b'-', b'-', b'T'), "{now}");
        assert_eq!(
            (bytes[13], bytes[16], bytes[19]),
            (b':', b':', b'.'),
            "{now}"
        );
        assert!(now.ends_with('Z') && now.as_str() > "2024", "{now}");
    }
}
