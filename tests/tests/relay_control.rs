//! The relay's control socket, on a real `popd relay`: status, call records of ended calls, and
//! limits applied while it runs (what `popd agent` relies on for configuration pushes and CDRs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pop_system_tests::{binaries, ports, ChildGuard, NgClient, TestDir};
use pop_wire::bencode::Value;
use serde_json::{json, Value as Json};

fn control(path: &Path, request: Json) -> Json {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect control socket");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    writeln!(s, "{request}").expect("write request");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

fn offer(ng: &NgClient, call: &str, metadata: &str) -> Value {
    let mut v = Value::dict(vec![]);
    v.dict_insert("command", Value::str("offer"));
    v.dict_insert("call-id", Value::str(call));
    v.dict_insert("from-tag", Value::str("caller-tag"));
    v.dict_insert("sdp", Value::str(&sdp(40000)));
    v.dict_insert("metadata", Value::str(metadata));
    v.dict_insert("supports", Value::list([Value::str("load limit")]));
    ng.request(&v).expect("offer answered")
}

fn result(v: &Value) -> &str {
    v.dict_get("result").and_then(Value::as_str).unwrap_or("?")
}

#[test]
fn status_records_and_live_limits_over_the_control_socket() {
    let dir = TestDir::new("relay-control").unwrap_or_else(|e| panic!("{e:#}"));
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ng_port = ports::free_udp_port(localhost).unwrap_or_else(|e| panic!("{e:#}"));
    let range = ports::free_udp_port_range(&[localhost], 64).unwrap_or_else(|e| panic!("{e:#}"));
    let socket = dir.file("relay.sock");
    let mut cmd = Command::new(binaries::popd().unwrap_or_else(|e| panic!("{e:#}")));
    cmd.args(["relay", "--ng-listen", &format!("127.0.0.1:{ng_port}")])
        .args(["--port-min", &range.start().to_string()])
        .args(["--port-max", &range.end().to_string()])
        .arg("--control-socket")
        .arg(&socket);
    let mut relay = ChildGuard::spawn("popd", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    relay
        .wait_for_line("relay ready", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ng = NgClient::new(SocketAddr::new(localhost, ng_port)).expect("client");

    let status = control(&socket, json!({"op": "status"}));
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["sessions"], 0);
    assert_eq!(status["workers_alive"], true);
    assert_eq!(status["limits"]["max_sessions"], 4000, "default limit");
    let epoch = status["epoch"].clone();

    // A call that ends leaves one record with its metadata, readable after seq 0 only once.
    assert_eq!(
        result(&offer(&ng, "ctl-call-1", "from:+15550001|to:+15550002")),
        "ok"
    );
    let mut del = Value::dict(vec![]);
    del.dict_insert("command", Value::str("delete"));
    del.dict_insert("call-id", Value::str("ctl-call-1"));
    del.dict_insert("from-tag", Value::str("caller-tag"));
    assert_eq!(result(&ng.request(&del).expect("delete answered")), "ok");
    let records = control(&socket, json!({"op": "records", "after": 0}));
    assert_eq!(records["epoch"], epoch);
    let list = records["records"].as_array().expect("records array");
    assert_eq!(list.len(), 1, "{records}");
    assert_eq!(list[0]["call_id"], "ctl-call-1");
    assert_eq!(list[0]["metadata"], "from:+15550001|to:+15550002");
    assert_eq!(list[0]["reason"], "deleted");
    let seq = list[0]["seq"].as_u64().expect("seq");
    let again = control(&socket, json!({"op": "records", "after": seq}));
    assert_eq!(again["records"].as_array().map(Vec::len), Some(0));

    // A bad limit is refused with the field named and changes nothing.
    let bad = control(
        &socket,
        json!({"op": "apply", "limits": {"max_sessions": 0, "no_media_secs": 60,
               "max_duration_secs": 0, "unanswered_offer_secs": 60}}),
    );
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["field"], "max_sessions", "{bad}");
    assert_eq!(
        control(&socket, json!({"op": "status"}))["limits"]["max_sessions"],
        4000
    );

    // A good one applies at once: a second concurrent call is refused.
    let ok = control(
        &socket,
        json!({"op": "apply", "limits": {"max_sessions": 1, "no_media_secs": 30,
               "max_duration_secs": 3600, "unanswered_offer_secs": 90}}),
    );
    assert_eq!(ok["ok"], true, "{ok}");
    let status = control(&socket, json!({"op": "status"}));
    assert_eq!(status["limits"]["max_sessions"], 1);
    assert_eq!(status["limits"]["max_duration_secs"], 3600);
    assert_eq!(result(&offer(&ng, "ctl-call-2", "")), "ok");
    assert_eq!(result(&offer(&ng, "ctl-call-3", "")), "load limit");

    // Garbage on the socket is answered, not fatal.
    let garbage = control(&socket, json!({"op": "reboot"}));
    assert_eq!(garbage["ok"], false);
    relay.ensure_running().unwrap_or_else(|e| panic!("{e:#}"));
    let status = relay.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "{status:?}");
}
