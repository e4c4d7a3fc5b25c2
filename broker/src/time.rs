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

/// `ms` milliseconds after the Unix epoch in the bus format (the epoch itself if out of range).
pub fn from_unix_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    format(OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// Whether `s` has the bus format `YYYY-MM-DDTHH:MM:SS.sssZ`, in which comparing two
/// timestamps as strings compares them as times (the gateway orders statuses so).
pub fn is_timestamp(s: &str) -> bool {
    const SHAPE: &[u8; 24] = b"0000-00-00T00:00:00.000Z";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE).all(|(c, &shape)| match shape {
            b'0' => c.is_ascii_digit(),
            _ => c == shape,
        })
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
        assert!(is_timestamp(&now()));
        assert_eq!(from_unix_ms(1_700_000_000_001), "2023-11-14T22:13:20.001Z");
    }

    #[test]
    fn only_the_bus_format_is_a_timestamp() {
        for bad in [
            "",
            "2023-11-14T22:13:20Z",
            "2023-11-14T22:13:20.000+00:00",
            "2023-11-14 22:13:20.000Z",
            "2023-11-14T22:13:20.00xZ",
            "9999-99-99T99:99:99.999Z\n",
        ] {
            assert!(!is_timestamp(bad), "{bad:?}");
        }
    }
}
