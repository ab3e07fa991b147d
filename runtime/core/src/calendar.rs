//! Business time: working days and hours, holidays, in a time zone. "Two business days
//! from Friday 15:00" is Tuesday 15:00; "four business hours from Friday 15:00" is
//! Monday 11:00 with the default 09:00-17:00.
//!
//! Pure: a workflow computes a deadline from `ctx.now()` (recorded) and a calendar, and
//! waits for it with `ctx.sleep_until(..)`; the result is the same on every replay.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use cairn_core::calendar::{BusinessCalendar, BusinessTime};
//!
//! let calendar = BusinessCalendar::new("Europe/Berlin")?.holiday("2026-12-25")?;
//! // Thursday 2026-12-24 10:00 in Berlin (09:00 UTC).
//! let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_102_800);
//! let due = calendar.after(from, BusinessTime::days(2))?;
//! // Christmas and the weekend are skipped: Tuesday 2026-12-29 10:00 in Berlin.
//! assert_eq!(due, SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_534_800));
//! # Ok::<(), cairn_core::calendar::CalendarError>(())
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

pub use chrono::Weekday;

/// The longest a computation looks ahead for working time before it gives up (a
/// calendar that never opens, or an amount larger than this span holds).
const HORIZON_DAYS: u32 = 366 * 20;

/// A calendar that does not check, or a deadline it cannot give.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The time zone is not an IANA name.
    #[error("`{0}` is not a time zone name like \"Europe/Berlin\" or \"America/New_York\"")]
    Zone(String),
    /// A time of day does not read as `HH:MM`, or closes before it opens.
    #[error("working hours `{open}`-`{close}` do not read as HH:MM to a later HH:MM")]
    Hours {
        /// The opening time given.
        open: String,
        /// The closing time given.
        close: String,
    },
    /// A holiday does not read as `YYYY-MM-DD`.
    #[error("holiday `{0}` does not read as a date like 2026-12-25")]
    Date(String),
    /// No working time within the horizon.
    #[error("the calendar has no working time in the {HORIZON_DAYS} days after the start; give it working days")]
    NeverOpen,
    /// The instant is outside what the calendar can represent.
    #[error("the instant is out of the calendar's range")]
    OutOfRange,
}

/// An amount of business time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusinessTime {
    /// Working days: the same time of day on the n-th next working day.
    Days(u32),
    /// Working minutes, counted only inside working hours.
    Minutes(u64),
}

impl BusinessTime {
    /// `n` working days.
    pub fn days(n: u32) -> Self {
        BusinessTime::Days(n)
    }

    /// `n` working hours.
    pub fn hours(n: u32) -> Self {
        BusinessTime::Minutes(u64::from(n) * 60)
    }

    /// `n` working minutes.
    pub fn minutes(n: u64) -> Self {
        BusinessTime::Minutes(n)
    }
}

/// Working hours per weekday and holidays, in one time zone. New calendars work Monday to
/// Friday, 09:00 to 17:00.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusinessCalendar {
    zone: Tz,
    /// Monday first; `None` for a day off.
    hours: [Option<(NaiveTime, NaiveTime)>; 7],
    holidays: BTreeSet<NaiveDate>,
}

fn time(text: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M").ok()
}

impl BusinessCalendar {
    /// A calendar in `zone` (an IANA name), open Monday to Friday 09:00-17:00.
    ///
    /// # Errors
    /// [`CalendarError::Zone`] for an unknown zone.
    pub fn new(zone: &str) -> Result<Self, CalendarError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| CalendarError::Zone(zone.to_owned()))?;
        let day = NaiveTime::from_hms_opt(9, 0, 0).zip(NaiveTime::from_hms_opt(17, 0, 0));
        Ok(Self {
            zone,
            hours: [day, day, day, day, day, None, None],
            holidays: BTreeSet::new(),
        })
    }

    /// Works `day` from `open` to `close` (`"HH:MM"`, local time).
    ///
    /// # Errors
    /// [`CalendarError::Hours`] when they do not read, or `close` is not after `open`.
    pub fn hours(mut self, day: Weekday, open: &str, close: &str) -> Result<Self, CalendarError> {
        match (time(open), time(close)) {
            (Some(o), Some(c)) if o < c => {
                self.hours[day.num_days_from_monday() as usize] = Some((o, c));
                Ok(self)
            }
            _ => Err(CalendarError::Hours {
                open: open.to_owned(),
                close: close.to_owned(),
            }),
        }
    }

    /// Does not work on `day`.
    pub fn closed(mut self, day: Weekday) -> Self {
        self.hours[day.num_days_from_monday() as usize] = None;
        self
    }

    /// Does not work on `date` (`"YYYY-MM-DD"`, local).
    ///
    /// # Errors
    /// [`CalendarError::Date`] when it does not read.
    pub fn holiday(mut self, date: &str) -> Result<Self, CalendarError> {
        let day = NaiveDate::parse_from_str(date.trim(), "%Y-%m-%d")
            .map_err(|_| CalendarError::Date(date.to_owned()))?;
        self.holidays.insert(day);
        Ok(self)
    }

    /// The working window of local `date` as instants, if it is a working day.
    fn window(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        if self.holidays.contains(&date) {
            return None;
        }
        let (open, close) = self.hours[date.weekday().num_days_from_monday() as usize]?;
        Some((
            self.instant(date.and_time(open)),
            self.instant(date.and_time(close)),
        ))
    }

    /// A local time as an instant. A time skipped by a clock change (spring forward) is
    /// taken as the first instant after the gap; a repeated one as its first occurrence.
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let mut probe = local;
        for _ in 0..4 {
            match self.zone.from_local_datetime(&probe) {
                LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                    return at.with_timezone(&Utc)
                }
                LocalResult::None => probe += chrono::Duration::minutes(30),
            }
        }
        // No zone has a gap of two hours; keep the wall time read as UTC rather than fail.
        Utc.from_utc_datetime(&local)
    }

    /// The instant `amount` of business time after `from`.
    ///
    /// # Errors
    /// [`CalendarError::NeverOpen`] when the calendar has too little working time ahead;
    /// [`CalendarError::OutOfRange`] for an instant it cannot represent.
    pub fn after(
        &self,
        from: SystemTime,
        amount: BusinessTime,
    ) -> Result<SystemTime, CalendarError> {
        let since = from
            .duration_since(UNIX_EPOCH)
            .map_err(|_| CalendarError::OutOfRange)?;
        let from: DateTime<Utc> = DateTime::from_timestamp(
            i64::try_from(since.as_secs()).map_err(|_| CalendarError::OutOfRange)?,
            since.subsec_nanos(),
        )
        .ok_or(CalendarError::OutOfRange)?;
        let start_day = from.with_timezone(&self.zone).date_naive();
        let due = match amount {
            BusinessTime::Minutes(minutes) => self.after_minutes(from, start_day, minutes)?,
            BusinessTime::Days(days) => self.after_days(from, start_day, days)?,
        };
        let secs = u64::try_from(due.timestamp()).map_err(|_| CalendarError::OutOfRange)?;
        Ok(UNIX_EPOCH + Duration::new(secs, due.timestamp_subsec_nanos()))
    }

    fn days_from(start: NaiveDate) -> impl Iterator<Item = NaiveDate> {
        start.iter_days().take(HORIZON_DAYS as usize)
    }

    fn after_minutes(
        &self,
        from: DateTime<Utc>,
        start: NaiveDate,
        minutes: u64,
    ) -> Result<DateTime<Utc>, CalendarError> {
        let mut left = chrono::Duration::minutes(
            i64::try_from(minutes).map_err(|_| CalendarError::OutOfRange)?,
        );
        for day in Self::days_from(start) {
            let Some((open, close)) = self.window(day) else {
                continue;
            };
            let begin = open.max(from);
            if begin >= close {
                continue;
            }
            let available = close - begin;
            if left <= available {
                return Ok(begin + left);
            }
            left -= available;
        }
        Err(CalendarError::NeverOpen)
    }

    fn after_days(
        &self,
        from: DateTime<Utc>,
        start: NaiveDate,
        days: u32,
    ) -> Result<DateTime<Utc>, CalendarError> {
        // First the working instant the count starts from: `from` itself inside working
        // hours, else the next opening.
        let mut working =
            Self::days_from(start).filter_map(|day| self.window(day).map(|w| (day, w)));
        let (first_day, begin) = loop {
            let (day, (open, close)) = working.next().ok_or(CalendarError::NeverOpen)?;
            if from < close {
                break (day, open.max(from));
            }
        };
        let time_of_day = begin.with_timezone(&self.zone).time();
        let mut target = first_day;
        for _ in 0..days {
            target = Self::days_from(target.succ_opt().ok_or(CalendarError::OutOfRange)?)
                .find(|day| self.window(*day).is_some())
                .ok_or(CalendarError::NeverOpen)?;
        }
        let (open, close) = self.window(target).ok_or(CalendarError::NeverOpen)?;
        // The same time of day, kept inside that day's hours (a shorter day closes earlier).
        Ok(self
            .instant(target.and_time(time_of_day))
            .clamp(open, close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant from a local Berlin wall time.
    fn berlin(text: &str) -> SystemTime {
        let local = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        let at = chrono_tz::Europe::Berlin
            .from_local_datetime(&local)
            .earliest()
            .unwrap();
        UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).unwrap())
    }

    fn local(at: SystemTime) -> String {
        let secs = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
        DateTime::from_timestamp(i64::try_from(secs).unwrap(), 0)
            .unwrap()
            .with_timezone(&chrono_tz::Europe::Berlin)
            .format("%a %Y-%m-%d %H:%M")
            .to_string()
    }

    fn calendar() -> BusinessCalendar {
        BusinessCalendar::new("Europe/Berlin").unwrap()
    }

    #[test]
    fn business_days_skip_weekends_and_holidays() {
        let c = calendar();
        // Friday 2026-11-27 15:00 + 2 days: Tuesday, same time.
        assert_eq!(
            local(
                c.after(berlin("2026-11-27 15:00"), BusinessTime::days(2))
                    .unwrap()
            ),
            "Tue 2026-12-01 15:00"
        );
        // After hours: counted from Monday's opening.
        assert_eq!(
            local(
                c.after(berlin("2026-11-27 18:30"), BusinessTime::days(1))
                    .unwrap()
            ),
            "Tue 2026-12-01 09:00"
        );
        // Saturday: as after hours.
        assert_eq!(
            local(
                c.after(berlin("2026-11-28 12:00"), BusinessTime::days(0))
                    .unwrap()
            ),
            "Mon 2026-11-30 09:00"
        );
        let c = c
            .holiday("2026-12-25")
            .unwrap()
            .holiday("2026-12-28")
            .unwrap();
        assert_eq!(
            local(
                c.after(berlin("2026-12-24 10:00"), BusinessTime::days(2))
                    .unwrap()
            ),
            "Wed 2026-12-30 10:00"
        );
    }

    #[test]
    fn business_hours_count_only_working_time() {
        let c = calendar();
        assert_eq!(
            local(
                c.after(berlin("2026-11-27 15:00"), BusinessTime::hours(4))
                    .unwrap()
            ),
            "Mon 2026-11-30 11:00"
        );
        assert_eq!(
            local(
                c.after(berlin("2026-11-30 07:00"), BusinessTime::hours(8))
                    .unwrap()
            ),
            "Mon 2026-11-30 17:00"
        );
        assert_eq!(
            local(
                c.after(berlin("2026-11-30 07:00"), BusinessTime::minutes(481))
                    .unwrap()
            ),
            "Tue 2026-12-01 09:01"
        );
        let short_friday = calendar().hours(Weekday::Fri, "09:00", "13:00").unwrap();
        assert_eq!(
            local(
                short_friday
                    .after(berlin("2026-11-26 16:00"), BusinessTime::days(1))
                    .unwrap()
            ),
            "Fri 2026-11-27 13:00",
            "kept inside Friday's hours"
        );
        assert_eq!(
            local(
                short_friday
                    .after(berlin("2026-11-27 12:00"), BusinessTime::hours(2))
                    .unwrap()
            ),
            "Mon 2026-11-30 10:00"
        );
    }

    #[test]
    fn a_clock_change_keeps_local_working_hours() {
        // Berlin moves to summer time on Sunday 2027-03-28: Friday 09:00 is 08:00 UTC,
        // Monday 09:00 is 07:00 UTC; one business day is still "the next day at 09:00".
        let c = calendar();
        let due = c
            .after(berlin("2027-03-26 09:00"), BusinessTime::days(1))
            .unwrap();
        assert_eq!(local(due), "Mon 2027-03-29 09:00");
        let gap = c
            .after(berlin("2027-03-26 09:00"), BusinessTime::hours(8))
            .unwrap();
        assert_eq!(local(gap), "Fri 2027-03-26 17:00");
    }

    #[test]
    fn calendars_that_do_not_check_are_refused() {
        assert_eq!(
            BusinessCalendar::new("Mars/Olympus").unwrap_err(),
            CalendarError::Zone("Mars/Olympus".into())
        );
        assert!(matches!(
            calendar().hours(Weekday::Mon, "17:00", "09:00"),
            Err(CalendarError::Hours { .. })
        ));
        assert!(matches!(
            calendar().hours(Weekday::Mon, "9am", "5pm"),
            Err(CalendarError::Hours { .. })
        ));
        assert_eq!(
            calendar().holiday("25/12/2026").unwrap_err(),
            CalendarError::Date("25/12/2026".into())
        );
        let never = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ]
        .into_iter()
        .fold(calendar(), BusinessCalendar::closed);
        assert_eq!(
            never.after(berlin("2026-11-27 15:00"), BusinessTime::days(1)),
            Err(CalendarError::NeverOpen)
        );
        assert_eq!(
            never.after(berlin("2026-11-27 15:00"), BusinessTime::hours(1)),
            Err(CalendarError::NeverOpen)
        );
    }
}
