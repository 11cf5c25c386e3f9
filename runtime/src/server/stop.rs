//! Stop strings over streamed text. Text arrives in pieces (one per token, whole UTF-8
//! characters from the runtime's `StreamDecoder`); a stop string may straddle pieces.
//! The matcher holds back the longest tail that could still begin a stop string,
//! releases it as soon as it cannot, and on a match returns exactly the text before
//! the stop string — nothing of the tail is lost, nothing of the stop string leaks.

/// Matches stop strings across pieces of text.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string was matched.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a piece; returns the text now safe to emit and whether a stop string ended
    /// the text (then the returned text is everything before it, and later pieces are
    /// ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        let hold = self.held_tail();
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The text still held back (generation ended without a match).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Bytes at the end of `pending` that begin some stop string (longest such tail,
    /// on a character boundary).
    fn held_tail(&self) -> usize {
        let p = &self.pending;
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let most = longest.saturating_sub(1).min(p.len());
        (1..=most)
            .rev()
            .find(|&k| {
                let at = p.len() - k;
                p.is_char_boundary(at) && self.stops.iter().any(|s| s.starts_with(&p[at..]))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, done) = m.push(p);
            out.push_str(&t);
            if done {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn partial_match_is_released_not_lost() {
        assert_eq!(
            run(&["END"], &["abE", "Nx", "yz"]),
            ("abENxyz".into(), false)
        );
        assert_eq!(run(&["END"], &["abEN"]), ("abEN".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
        assert_eq!(run(&["xyz", "yq"], &["axy", "q"]), ("ax".into(), true));
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        // "é" is two bytes; a stop string starting with its first byte cannot exist
        // (strings are UTF-8), and held tails always start on a character boundary.
        let (out, stopped) = run(&["ée"], &["caf", "é", "!", "é", "e"]);
        assert_eq!((out.as_str(), stopped), ("café!", true));
        let mut m = StopMatcher::new(vec!["日本語".into()]);
        let (t, _) = m.push("x日本");
        assert_eq!(t, "x");
        let (t, _) = m.push("人");
        assert_eq!(t, "日本人");
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }
}
