//! The bodies of Trident's fuzz targets, one module each, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and the corpus replay (`tests/replay.rs`).
//!
//! Every target is `pub fn run(data: &[u8])`: it must accept any bytes and panics only when
//! Trident breaks a property (an assertion here, or one of Trident's own invariant checks, which
//! run in debug builds and under `cargo fuzz`, which enables debug assertions).
//!
//! Targets that read a byte stream in chunks (`event_stream`, `ls_parser`) take the stream
//! itself as input, so that seeds are readable NDJSON or `ls` output, and derive the chunk
//! boundaries from the bytes ([`chunkings`]): whole, byte by byte, and two pseudo-random
//! splits. Targets with structured input (`manager`, `tracker`, `exec_frames`,
//! `client_frames`) decode it with [`arbitrary::Unstructured`]; `command_argv` splits it into
//! text fields.

pub mod api_bodies;
pub mod client_frames;
pub mod command_argv;
pub mod event_stream;
pub mod exec_frames;
pub mod ls_parser;
pub mod manager;
pub mod tracker;
pub mod workspace_paths;

/// The chunkings a streamed input is fed in: the whole at once, one byte at a time, and two
/// pseudo-random splits seeded by the bytes themselves (so a corpus file always replays the same).
pub fn chunkings(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![data], data.chunks(1).collect()];
    let mut state = fnv1a(data);
    for chunk_len_max in [7, 97] {
        let mut chunks = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            state = splitmix(state);
            let len = 1 + (state % chunk_len_max) as usize;
            let (chunk, tail) = rest.split_at(len.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        all.push(chunks);
    }
    all
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
