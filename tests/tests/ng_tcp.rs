//! NG over TCP: the same `cookie SP bencode` messages on a stream, several per segment or one
//! split over segments, each answered in order; garbage closes the connection but the relay
//! keeps serving others.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use pop_system_tests::{binaries, ports, ChildGuard, TestDir};
use pop_wire::bencode::{self, Value};

fn message(cookie: &str, body: &Value) -> Vec<u8> {
    let mut out = format!("{cookie} ").into_bytes();
    body.encode(&mut out);
    out
}

/// Reads one `cookie SP value` reply from the stream (bounded by a deadline).
fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(space) = buf.iter().position(|&b| b == b' ') {
            if let Ok((value, used)) = bencode::decode_prefix(&buf[space + 1..]) {
                let cookie = String::from_utf8_lossy(&buf[..space]).into_owned();
                buf.drain(..space + 1 + used);
                return (cookie, value);
            }
        }
        assert!(Instant::now() < deadline, "no complete NG reply within 5 s");
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("read reply");
        assert!(n > 0, "relay closed the NG TCP connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn ng_over_tcp_answers_pipelined_and_split_messages() {
    let dir = TestDir::new("popd-ng-tcp").unwrap_or_else(|e| panic!("{e:#}"));
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let udp = ports::free_udp_port(localhost).unwrap_or_else(|e| panic!("{e:#}"));
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free TCP port")
        .port();
    let range = ports::free_udp_port_range(&[localhost], 64).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(binaries::popd().unwrap_or_else(|e| panic!("{e:#}")));
    cmd.args(["relay", "--ng-listen", &format!("127.0.0.1:{udp}")])
        .args(["--ng-listen-tcp", &format!("127.0.0.1:{tcp}")])
        .args(["--port-min", &range.start().to_string()])
        .args(["--port-max", &range.end().to_string()]);
    let mut relay = ChildGuard::spawn("popd", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    relay
        .wait_for_line("relay ready", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut stream = TcpStream::connect(("127.0.0.1", tcp)).expect("connect NG TCP");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let ping = Value::dict([("command", Value::str("ping"))]);
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\n";
    let offer = Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str("tcp-call")),
        ("from-tag", Value::str("a")),
        ("sdp", Value::str(sdp)),
    ]);
    // Two messages in one write, then one split across two writes.
    let mut both = message("c1", &ping);
    both.extend(message("c2", &offer));
    stream.write_all(&both).expect("write");
    let query = message(
        "c3",
        &Value::dict([
            ("command", Value::str("query")),
            ("call-id", Value::str("tcp-call")),
        ]),
    );
    let (first, second) = query.split_at(query.len() / 2);
    let mut buf = Vec::new();
    let (cookie, reply) = read_reply(&mut stream, &mut buf);
    assert_eq!(cookie, "c1");
    assert_eq!(
        reply.dict_get("result").and_then(Value::as_str),
        Some("pong")
    );
    let (cookie, reply) = read_reply(&mut stream, &mut buf);
    assert_eq!(cookie, "c2");
    assert_eq!(reply.dict_get("result").and_then(Value::as_str), Some("ok"));
    let rewritten = reply.dict_get("sdp").and_then(Value::as_str).unwrap_or("");
    assert!(rewritten.contains("c=IN IP4 127.0.0.1"), "{rewritten}");
    stream.write_all(first).expect("write");
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(second).expect("write");
    let (cookie, reply) = read_reply(&mut stream, &mut buf);
    assert_eq!(cookie, "c3");
    assert_eq!(reply.dict_get("result").and_then(Value::as_str), Some("ok"));

    // Garbage closes that connection only; a new one is served.
    let mut bad = TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    bad.write_all(b"zz x\r\n").expect("write");
    let mut sink = [0u8; 16];
    assert_eq!(
        bad.read(&mut sink).unwrap_or(0),
        0,
        "garbage must close the stream"
    );
    let mut again = TcpStream::connect(("127.0.0.1", tcp)).expect("reconnect");
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    again.write_all(&message("c4", &ping)).expect("write");
    let mut buf = Vec::new();
    let (cookie, reply) = read_reply(&mut again, &mut buf);
    assert_eq!(cookie, "c4");
    assert_eq!(
        reply.dict_get("result").and_then(Value::as_str),
        Some("pong")
    );
    relay.ensure_running().unwrap_or_else(|e| panic!("{e:#}"));
}
