//! Writes the seed corpus of the `agent_frames` fuzz target: one file per typical message (a
//! frame as it travels), plus a stream of several frames.
//! `cargo run -p pop-agent-proto --example write-fuzz-seeds -- firmware/fuzz/corpus/agent_frames`

use pop_agent_proto::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: write-fuzz-seeds DIR")?;
    let up = [
        Uplink::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: "pop-ams-01".into(),
            firmware_version: "0.1.0".into(),
            board: "qemu-x86_64".into(),
            capabilities: vec!["relay".into(), "config".into()],
            config_version: 3,
            last_record_id: 42,
        }),
        Uplink::Heartbeat {
            seq: 9,
            sent_unix_ms: 1_700_000_000_000,
        },
        Uplink::Record(Record {
            id: 7,
            created_unix_ms: 1,
            body: RecordBody::Cdr(Cdr {
                call: [1; 16],
                caller: Some([2; 16]),
                callee: None,
                started_unix_ms: 10,
                ended_unix_ms: 20,
                packets: 3,
                end_reason: "deleted".into(),
            }),
        }),
        Uplink::Record(Record {
            id: 8,
            created_unix_ms: 2,
            body: RecordBody::Event(Event {
                at_unix_ms: 5,
                kind: EventKind::Failover {
                    from: "up1".into(),
                    to: "up2".into(),
                    reason: "carrier_down".into(),
                    switch_us: 210,
                },
            }),
        }),
        Uplink::ConfigResult(ConfigResult {
            version: 4,
            outcome: ConfigOutcome::Refused {
                field: "relay.max_sessions".into(),
                reason: "0".into(),
            },
            running_version: 3,
        }),
        Uplink::Enroll(EnrollRequest {
            protocol_version: 1,
            token: "T".into(),
            device_id: "d".into(),
            csr_der: vec![0x30, 0x82, 1, 2],
        }),
    ];
    let down = [
        Downlink::Welcome {
            protocol_version: 1,
            server_unix_ms: 1,
            heartbeat_interval_ms: 1000,
            acked_up_to: 6,
        },
        Downlink::Ack { up_to: 8 },
        Downlink::ConfigPush {
            version: 5,
            document: "version = 5\n[relay]\nmax_sessions = 100\n".into(),
        },
        Downlink::Command {
            id: 3,
            command: Command::EraseSubject {
                number: "+15550001111".into(),
            },
        },
        Downlink::Certificate {
            chain_der: vec![vec![0x30, 3, 1, 1, 0]],
            not_after_unix_s: 1_800_000_000,
        },
    ];
    let mut stream = Vec::new();
    let mut n = 0;
    for frame in up
        .iter()
        .map(encode_frame)
        .chain(down.iter().map(encode_frame))
    {
        let frame = frame?;
        std::fs::write(format!("{dir}/seed-{n:02}"), &frame)?;
        stream.extend_from_slice(&frame);
        n += 1;
    }
    std::fs::write(format!("{dir}/seed-stream"), &stream)?;
    std::fs::write(
        format!("{dir}/seed-huge-length"),
        [0xff, 0xff, 0xff, 0xff, 0],
    )?;
    println!("{} seeds in {dir}", n + 2);
    Ok(())
}
