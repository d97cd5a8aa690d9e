//! Helpers shared by the unit tests of the streaming parsers.

use proptest::sample::Index;

/// `text` cut at the character boundaries `cuts` pick, as the deltas of a stream.
pub fn cut_at<'a>(text: &'a str, cuts: &[Index]) -> Vec<&'a str> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|i| i.index(text.len() + 1))
        .filter(|&p| text.is_char_boundary(p))
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        chunks.push(&text[start..p]);
        start = p;
    }
    chunks.push(&text[start..]);
    chunks
}
