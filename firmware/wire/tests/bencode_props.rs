//! Property tests of the bencode codec: round trip, and no panic on arbitrary bytes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use pop_wire::bencode::{decode, decode_prefix, Value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..12),
                inner,
                0..8
            )
            .prop_map(|m: BTreeMap<Vec<u8>, Value>| Value::Dict(m)),
        ]
    })
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(v in value()) {
        let bytes = v.to_bytes();
        prop_assert_eq!(decode(&bytes).unwrap(), v.clone());
        let (again, used) = decode_prefix(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(again, v);
    }

    #[test]
    fn every_strict_prefix_is_incomplete(v in value()) {
        let bytes = v.to_bytes();
        for cut in 0..bytes.len() {
            let err = decode_prefix(&bytes[..cut]).unwrap_err();
            prop_assert!(err.is_incomplete(), "cut {} of {}: {:?}", cut, bytes.len(), err);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reencode_canonically(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = decode(&bytes) {
            prop_assert_eq!(decode(&v.to_bytes()).unwrap(), v);
        }
        if let Ok((_, used)) = decode_prefix(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn bencode_shaped_noise_decodes_to_a_fixed_point(bytes in proptest::collection::vec(
        prop_oneof![Just(b'i'), Just(b'l'), Just(b'd'), Just(b'e'), Just(b':'), Just(b'-'), b'0'..=b'9', any::<u8>()],
        0..128,
    )) {
        // Re-encoding only sorts dict keys, so a second decode/encode changes nothing.
        if let Ok(v) = decode(&bytes) {
            let once = v.to_bytes();
            prop_assert!(once.len() == bytes.len());
            let again = decode(&once).unwrap();
            prop_assert_eq!(again.to_bytes(), once);
            prop_assert_eq!(again, v);
        }
    }
}
