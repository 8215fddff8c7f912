//! The parser of GNU `ls -l` output ([`LsParser`], [`parse_ls`]) on arbitrary bytes in every
//! chunking of [`crate::chunkings`].
//!
//! Properties: nothing panics; every chunking gives the very headers [`parse_ls`] gives for the
//! whole; at most one header per line; every header has a
//! known entry type character and nine permission characters (ten with an ACL's `+`).

use trident_backends::nomad::commands::{LsParser, parse_ls};

/// Runs the target on `data`.
pub fn run(data: &[u8]) {
    let whole = parse_ls(data);
    let lines = data.split(|&byte| byte == b'\n').count();
    assert!(
        whole.len() <= lines,
        "{} headers from {lines} lines",
        whole.len()
    );
    for header in &whole {
        assert!("-aAbcCdDlMnpPsw?".contains(header.entry_type));
        assert!(matches!(header.permissions.len(), 9 | 10));
    }
    for chunks in crate::chunkings(data) {
        let mut parser = LsParser::new();
        let mut headers = Vec::new();
        for chunk in &chunks {
            parser.feed(chunk, &mut headers);
        }
        parser.finish(&mut headers);
        assert_eq!(
            headers,
            whole,
            "chunk lengths {:?}",
            chunks.iter().map(|chunk| chunk.len()).collect::<Vec<_>>()
        );
    }
}
