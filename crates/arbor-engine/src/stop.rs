//! Stop strings (part of the update phase): finds the first stop string in a sequence's
//! text and holds back any tail that could still grow into one, so a stop string is
//! never streamed, not even partially, and never appears in the output text.

/// Text released by one `StopStrings::push`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet; this text is safe to emit (possibly empty).
    Continue(String),
    /// `matched` was found; `text` is what precedes it and is the last text to emit.
    Stopped {
        /// Text before the stop string.
        text: String,
        /// The stop string found.
        matched: String,
    },
}

/// The stop strings of one sequence and the text held back while it might match.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    /// A matcher for `stops` (non-empty strings).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds newly decoded text; returns what may be emitted now.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_string());
        }
        self.held.push_str(text);
        if let Some((pos, matched)) = self.first_match() {
            let text = self.held[..pos].to_string();
            self.held.clear();
            return StopOutcome::Stopped { text, matched };
        }
        let keep_from = self.partial_match_start();
        let released = self.held[..keep_from].to_string();
        self.held.replace_range(..keep_from, "");
        StopOutcome::Continue(released)
    }

    /// Text held back; emitted when the sequence ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Earliest stop string occurrence in the held text (longest on ties).
    fn first_match(&self) -> Option<(usize, String)> {
        self.stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()).map(|pos| (pos, stop)))
            .min_by_key(|(pos, stop)| (*pos, std::cmp::Reverse(stop.len())))
            .map(|(pos, stop)| (pos, stop.clone()))
    }

    /// Start of the longest tail of the held text that is a proper prefix of a stop
    /// string; the held text's length if none.
    fn partial_match_start(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let earliest = self.held.len().saturating_sub(longest.saturating_sub(1));
        (earliest..self.held.len())
            .filter(|&idx| self.held.is_char_boundary(idx))
            .find(|&idx| {
                let tail = &self.held[idx..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn continue_text(outcome: StopOutcome) -> String {
        match outcome {
            StopOutcome::Continue(text) => text,
            other => panic!("expected Continue, got {other:?}"),
        }
    }

    #[test]
    fn text_without_stop_strings_passes_through() {
        let mut stops = StopStrings::new(vec![]);
        assert_eq!(continue_text(stops.push("hello")), "hello");
    }

    #[test]
    fn a_possible_stop_prefix_is_held_back_until_it_is_decided() {
        let mut stops = StopStrings::new(vec!["END".into()]);
        assert_eq!(continue_text(stops.push("abc E")), "abc ");
        assert_eq!(continue_text(stops.push("N")), "");
        assert_eq!(continue_text(stops.push("x")), "ENx");
    }

    #[test]
    fn a_stop_string_split_over_pieces_stops_without_emitting_it() {
        let mut stops = StopStrings::new(vec!["END".into()]);
        assert_eq!(continue_text(stops.push("ab E")), "ab ");
        assert_eq!(
            stops.push("ND more"),
            StopOutcome::Stopped {
                text: String::new(),
                matched: "END".into()
            }
        );
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut stops = StopStrings::new(vec!["cd".into(), "b".into()]);
        assert_eq!(
            stops.push("abcd"),
            StopOutcome::Stopped {
                text: "a".into(),
                matched: "b".into()
            }
        );
    }

    #[test]
    fn held_text_is_released_by_flush() {
        let mut stops = StopStrings::new(vec!["éx".into()]);
        assert_eq!(continue_text(stops.push("aé")), "a");
        assert_eq!(stops.flush(), "é");
    }
}
