//! Reading what a part logged, where a flood is summed up: one line for the first event, then
//! one line every so often saying `count=N` more (as the agent logs refused orders).

/// The lines of `log` that say `level` and contain `what`, and how many events they account
/// for: a line with `count=N` stands for N, any other for one.
pub fn tally(log: &str, level: &str, what: &str) -> (Vec<String>, u64) {
    let lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains(level) && l.contains(what))
        .map(str::to_owned)
        .collect();
    let events = lines
        .iter()
        .map(|l| match l.split("count=").nth(1) {
            Some(n) => n
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            None => 1,
        })
        .sum();
    (lines, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_line_counts_its_events() {
        let log = "WARN order refused reason=x\n\
                   INFO order refused (not a warning)\n\
                   WARN more orders refused since the last line count=38 kind=\"signature\"\n\
                   WARN something else\n";
        let (lines, events) = tally(log, "WARN", "refused");
        assert_eq!(lines.len(), 2);
        assert_eq!(events, 39);
    }
}
