//! The one timestamp format of the bus: UTC `YYYY-MM-DDTHH:MM:SS.sssZ`.

use ::time::{format_description::FormatItem, macros::format_description, OffsetDateTime};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn format(at: OffsetDateTime) -> String {
    at.to_offset(::time::UtcOffset::UTC)
        .format(FORMAT)
        .expect("the timestamp format has only numeric fields")
}

/// The current time in the bus format.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// Milliseconds since the Unix epoch, used as the floor of order `seq` numbers.
pub fn unix_ms() -> u64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_milliseconds_and_z() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(format(at), "2023-11-14T22:13:20.000Z");
        assert_eq!(now().len(), 24);
    }
}
