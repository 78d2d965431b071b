//! Property tests of the BFD control packet view and representation.
#![allow(clippy::unwrap_used)]

use pop_wire::bfd::{BfdControl, BfdDiag, BfdError, BfdPacket, BfdState, BFD_CONTROL_LEN};
use proptest::prelude::*;

fn valid_control() -> impl Strategy<Value = BfdControl> {
    (
        0u8..32,
        0u8..4,
        any::<(bool, bool, bool, bool)>(),
        1u8..=255,
        1u32..,
        any::<u32>(),
        any::<[u32; 3]>(),
    )
        .prop_map(|(diag, state, flags, mult, my, your, t)| {
            let state = BfdState::from_bits(state);
            let (poll, fin, cpi, demand) = flags;
            BfdControl {
                diag: BfdDiag::from_bits(diag),
                state,
                poll,
                final_: fin && !poll,
                control_plane_independent: cpi,
                demand,
                auth_type: None,
                detect_mult: mult,
                my_discriminator: my,
                // Zero is only allowed in Down/AdminDown.
                your_discriminator: if matches!(state, BfdState::Init | BfdState::Up) {
                    your.max(1)
                } else {
                    your
                },
                desired_min_tx_us: t[0],
                required_min_rx_us: t[1],
                required_min_echo_rx_us: t[2],
            }
        })
}

proptest! {
    #[test]
    fn every_valid_control_round_trips(c in valid_control(), trailing in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut buf = vec![0u8; BFD_CONTROL_LEN];
        prop_assert_eq!(c.emit(&mut buf).unwrap(), c.buffer_len());
        buf.extend_from_slice(&trailing);
        let p = BfdPacket::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(p.as_bytes(), &buf[..BFD_CONTROL_LEN]);
        prop_assert_eq!(BfdControl::from_packet(&p), c);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_ones_satisfy_rfc_5880_rules(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        match BfdPacket::new_checked(&data[..]) {
            Ok(p) => {
                let c = BfdControl::from_packet(&p);
                prop_assert!(data[0] >> 5 == 1);
                prop_assert!(c.detect_mult != 0);
                prop_assert!(c.my_discriminator != 0);
                prop_assert!(usize::from(p.length()) <= data.len());
                prop_assert!(usize::from(p.length()) >= BFD_CONTROL_LEN);
                prop_assert!(data[1] & 1 == 0, "multipoint accepted");
                prop_assert!(!(c.poll && c.final_));
                prop_assert!(c.your_discriminator != 0 || matches!(c.state, BfdState::Down | BfdState::AdminDown));
                if let Some(a) = p.auth_section() {
                    prop_assert!(a.len() >= 2 && BFD_CONTROL_LEN + a.len() <= usize::from(p.length()));
                }
                if c.auth_type.is_none() {
                    // Re-emitting reproduces the mandatory section, except the length byte.
                    let mut out = [0u8; BFD_CONTROL_LEN];
                    c.emit(&mut out).unwrap();
                    prop_assert_eq!(&out[..3], &data[..3]);
                    prop_assert_eq!(&out[4..], &data[4..BFD_CONTROL_LEN]);
                }
            }
            Err(BfdError::Truncated { len }) => prop_assert!(len < BFD_CONTROL_LEN),
            Err(_) => {}
        }
    }
}
