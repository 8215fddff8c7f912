//! The Nomad event stream, from raw bytes to observations: NDJSON line splitting
//! ([`LineSplitter`]) under every chunking of [`crate::chunkings`], frame decoding
//! ([`Frame::from_json`]) and the [`AllocationTracker`].
//!
//! Properties:
//! - with a bound above the input's length, every chunking yields exactly the non-blank lines of
//!   a naive split (`\n`, one trailing `\r` removed), never an error;
//! - with a small bound, no line longer than the bound comes out, the lines that do are the naive
//!   ones in order (none invented, none dropped if its raw bytes, `\r` included, fit the bound),
//!   and each over-long line is reported at most once;
//! - the tracker never tracks more jobs than its bound (a small bound, so inputs reach it, and
//!   the default), and its own invariant check (debug builds) holds after every event.
//!
//! A first line that decodes as a JSON array of allocations seeds the trackers, as the backend
//! does from `GET /v1/allocations` before it follows the stream.

use trident_backends::nomad::events::{LineSplitter, LineTooLong};
use trident_backends::nomad::model::{Allocation, Frame};
use trident_backends::nomad::tracker::AllocationTracker;

/// The small line bound; lines of the seeds are longer, so both paths are taken.
const LINE_BYTES_MAX_SMALL: usize = 256;
/// The small tracker bound.
const TRACKED_JOBS_MAX_SMALL: usize = 2;

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let expected = naive_lines(data);
    for chunks in crate::chunkings(data) {
        let lines = split(&chunks, data.len() + 1);
        assert_eq!(
            lines,
            expected,
            "a chunking changed the lines (chunk lengths {:?})",
            chunks.iter().map(|chunk| chunk.len()).collect::<Vec<_>>()
        );
        check_bounded(
            &split(&chunks, LINE_BYTES_MAX_SMALL),
            data,
            LINE_BYTES_MAX_SMALL,
        );
    }

    let mut small = AllocationTracker::with_capacity(TRACKED_JOBS_MAX_SMALL);
    let mut default = AllocationTracker::new();
    for (number, line) in expected.iter().flatten().enumerate() {
        if number == 0
            && let Ok(allocations) = serde_json::from_slice::<Vec<Allocation>>(line)
        {
            small.seed(0, allocations.clone());
            default.seed(0, allocations);
            continue;
        }
        let Ok(frame) = Frame::from_json(line) else {
            continue;
        };
        for tracker in [&mut small, &mut default] {
            let observations = tracker.apply_frame(&frame);
            assert!(tracker.tracked_jobs() <= tracker.tracked_jobs_max());
            // An event reports at most a replacement's down and its up.
            assert!(observations.len() <= 2 * frame.events.len());
        }
    }
}

/// The lines the splitter must produce for a stream that ends after `data`: complete lines only
/// (the tail after the last `\n` is still incomplete), blank ones skipped.
fn naive_lines(data: &[u8]) -> Vec<Result<Vec<u8>, ()>> {
    let mut lines: Vec<&[u8]> = data.split(|&byte| byte == b'\n').collect();
    lines.pop(); // The incomplete tail (empty if `data` ends with a newline).
    lines
        .into_iter()
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(|line| Ok(line.to_vec()))
        .collect()
}

/// Checks what a splitter bounded at `bytes_max` gave for `data` (see the module docs).
///
/// A line whose stripped length fits the bound but whose raw length (with its `\r`) does not is
/// accepted when its `\n` arrives in the same chunk and refused when the bound is crossed before
/// (the splitter checks incomplete lines by their raw length): such lines may go either way.
fn check_bounded(lines: &[Result<Vec<u8>, ()>], data: &[u8], bytes_max: usize) {
    let mut segments: Vec<&[u8]> = data.split(|&byte| byte == b'\n').collect();
    let tail = segments.pop().unwrap_or_default();
    let raw_too_long = segments.iter().filter(|raw| raw.len() > bytes_max).count()
        + usize::from(tail.len() > bytes_max);
    let errors = lines.iter().filter(|line| line.is_err()).count();
    assert!(
        errors <= raw_too_long,
        "{errors} errors for {raw_too_long} long lines"
    );
    // (line, whether it must come out)
    let allowed: Vec<(&[u8], bool)> = segments
        .iter()
        .map(|raw| {
            (
                raw.strip_suffix(b"\r").unwrap_or(raw),
                raw.len() <= bytes_max,
            )
        })
        .filter(|(line, _)| line.len() <= bytes_max && !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let required = allowed.iter().filter(|(_, required)| *required).count();
    let mut candidates = allowed.iter();
    let mut out = 0;
    for line in lines.iter().flatten() {
        assert!(line.len() <= bytes_max);
        assert!(
            candidates.any(|(candidate, _)| candidate == line),
            "a line out of order or never sent"
        );
        out += 1;
    }
    assert!(out >= required, "{out} lines out, {required} fit the bound");
}

fn split(chunks: &[&[u8]], bytes_max: usize) -> Vec<Result<Vec<u8>, ()>> {
    let mut splitter = LineSplitter::new(bytes_max);
    let mut lines = Vec::new();
    for chunk in chunks {
        splitter.push(chunk);
        loop {
            match splitter.next_line() {
                Ok(None) => break,
                Ok(Some(line)) => lines.push(Ok(line.to_vec())),
                Err(LineTooLong) => lines.push(Err(())),
            }
        }
    }
    lines
}
