//! Rates (`"10/m"`): the shape of every token bucket the configuration describes, the
//! relay's per-address limits (`[relay]`) and the routes' per-user `rate_limit`.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::keyword::keyword_enum;

keyword_enum! {
    /// The unit of a rate, by the short spelling the effective configuration prints.
    pub enum RateUnit {
        Second = "s",
        Minute = "m",
        Hour = "h",
    }
}

impl RateUnit {
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            RateUnit::Second => 1,
            RateUnit::Minute => 60,
            RateUnit::Hour => 3600,
        })
    }

    /// The unit spelled `s`: its printed spelling, or a longer one (`sec`, `minute`,
    /// `hours`, …).
    fn read(s: &str) -> Option<RateUnit> {
        let short = match s {
            "sec" | "second" | "seconds" => "s",
            "min" | "minute" | "minutes" => "m",
            "hour" | "hours" => "h",
            other => other,
        };
        RateUnit::parse(short)
    }
}

/// `"10/m"`: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: RateUnit,
}

impl Rate {
    /// Time between two tokens.
    pub fn interval(self) -> Duration {
        self.per.duration() / self.count.get()
    }
}

/// As written in the configuration (`10/m`), which [`parse_rate`] reads back.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per)
    }
}

/// `"10/s"`, `"10/m"`, `"10/h"` (also `sec`, `min`, `hour` and plurals), at least 1.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("{s:?} is not a rate like \"10/s\", \"10/m\" or \"100/h\"");
    let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let count = NonZeroU32::new(count)
        .ok_or_else(|| format!("{s:?}: the rate must be at least 1 (\"off\" turns a limit off)"))?;
    let per = RateUnit::read(unit.trim()).ok_or_else(bad)?;
    Ok(Rate { count, per })
}
