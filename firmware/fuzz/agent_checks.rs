//! The check the `agent_frames` fuzz target runs on one input, shared (via `#[path]`) with
//! `firmware/agent-proto/tests/fuzz_corpus.rs` so stable CI replays the seed corpus.
//!
//! The input is a byte stream as a peer could send it: the frame reader splits it, every frame
//! body is decoded as both directions, and whatever decodes must re-encode to a frame that
//! decodes to the same message. Nothing may panic; a hostile length prefix must be refused
//! before anything is buffered for it.

use pop_agent_proto::{decode_body, encode_frame, Downlink, FrameReader, Uplink, MAX_FRAME};

/// Splits `data` into frames at a few chunk sizes and checks every frame.
pub fn agent_frames(data: &[u8]) {
    for chunk in [1usize, 7, 4096] {
        let mut reader = FrameReader::new();
        for piece in data.chunks(chunk) {
            reader.push(piece);
            loop {
                match reader.next_frame() {
                    Ok(Some(body)) => {
                        assert!(body.len() <= MAX_FRAME);
                        check_body(&body);
                    }
                    Ok(None) => break,
                    Err(_) => return, // a protocol error closes the connection
                }
            }
        }
    }
    // Raw bodies too (no framing).
    check_body(data);
}

fn check_body(body: &[u8]) {
    if let Ok(m) = decode_body::<Uplink>(body) {
        let frame = encode_frame(&m).expect("a decoded message re-encodes");
        let again: Uplink = decode_body(&frame[4..]).expect("and decodes");
        assert_eq!(again, m);
    }
    if let Ok(m) = decode_body::<Downlink>(body) {
        let frame = encode_frame(&m).expect("a decoded message re-encodes");
        let again: Downlink = decode_body(&frame[4..]).expect("and decodes");
        assert_eq!(again, m);
    }
}
