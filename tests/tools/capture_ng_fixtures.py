#!/usr/bin/env python3
"""Capture rtpengine's NG replies for the corpus under tests/fixtures/ng/.

Each case directory holds numbered steps: NN-<command>.request.json (the NG
dictionary we send, hand-written) and NN-<command>.reply.json (what a real
rtpengine answered). This script (re)writes the replies; with --write-requests
it first (re)writes the requests from the CASES table below, which is the
source of truth for the corpus.

Usage (as root or any user; needs /usr/bin/rtpengine, see scripts/setup):
    python3 tests/tools/capture_ng_fixtures.py --write-requests
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "fixtures" / "ng"

# The port range rtpengine allocates from during capture. Fixed so that the
# stored replies are reproducible run to run (rtpengine allocates randomly
# inside it, so ports still differ; consumers must mask them).
PORT_MIN = 40000
PORT_MAX = 40999


# --------------------------------------------------------------------------
# bencode (just enough for NG)
# --------------------------------------------------------------------------
def bencode(v) -> bytes:
    if isinstance(v, bool):
        raise TypeError("bool has no bencode form")
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        out = b"d"
        for k in sorted(v, key=lambda k: k.encode()):
            out += bencode(k) + bencode(v[k])
        return out + b"e"
    raise TypeError(type(v))


def bdecode(b: bytes):
    def dec(i):
        c = b[i : i + 1]
        if c == b"i":
            j = b.index(b"e", i)
            return int(b[i + 1 : j]), j + 1
        if c == b"l":
            i += 1
            out = []
            while b[i : i + 1] != b"e":
                x, i = dec(i)
                out.append(x)
            return out, i + 1
        if c == b"d":
            i += 1
            out = {}
            while b[i : i + 1] != b"e":
                k, i = dec(i)
                x, i = dec(i)
                out[k] = x
            return out, i + 1
        j = b.index(b":", i)
        n = int(b[i:j])
        s = b[j + 1 : j + 1 + n]
        try:
            return s.decode(), j + 1 + n
        except UnicodeDecodeError:
            return s.decode("latin-1"), j + 1 + n

    v, end = dec(0)
    if end != len(b):
        raise ValueError("trailing bytes after bencode value")
    return v


# --------------------------------------------------------------------------
# SDP bodies
# --------------------------------------------------------------------------
def sdp(lines):
    return "\r\n".join(lines) + "\r\n"


def audio_offer(ip="192.0.2.10", port=10000, direction=None, extra_media=(), conn=None, ver=1,
                origin_ip=None, fam="IP4", extra_session=()):
    conn = conn or ip
    media = [
        f"m=audio {port} RTP/AVP 0 8 101",
        f"c=IN {fam} {conn}",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        *extra_media,
    ]
    if direction:
        media.append(f"a={direction}")
    media.append("a=ptime:20")
    return sdp([
        "v=0",
        f"o=alice 2890844526 {ver} IN {fam} {origin_ip or ip}",
        "s=-",
        f"c=IN {fam} {conn}",
        "t=0 0",
        *extra_session,
        *media,
    ])


def audio_answer(ip="198.51.100.20", port=20000, direction=None, extra_media=(), ver=1, fam="IP4",
                 conn=None):
    conn = conn or ip
    media = [
        f"m=audio {port} RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        *extra_media,
    ]
    if direction:
        media.append(f"a={direction}")
    media.append("a=ptime:20")
    return sdp([
        "v=0",
        f"o=bob 2808844564 {ver} IN {fam} {ip}",
        "s=-",
        f"c=IN {fam} {conn}",
        "t=0 0",
        *media,
    ])


def offer(call, sdp_body, **extra):
    return {"command": "offer", "call-id": call, "from-tag": "tag-a", "sdp": sdp_body, **extra}


def answer(call, sdp_body, **extra):
    return {"command": "answer", "call-id": call, "from-tag": "tag-a", "to-tag": "tag-b",
            "sdp": sdp_body, **extra}


def delete(call):
    return {"command": "delete", "call-id": call, "from-tag": "tag-a"}


def hold_case(call, hold_offer, hold_answer_dir):
    return [
        offer(call, audio_offer()),
        answer(call, audio_answer()),
        offer(call, hold_offer),
        answer(call, audio_answer(direction=hold_answer_dir, ver=2)),
        delete(call),
    ]


AV_OFFER = sdp([
    "v=0",
    "o=alice 2890844526 1 IN IP4 192.0.2.10",
    "s=-",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "m=audio 10000 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "m=video 10002 RTP/AVP 96",
    "a=rtpmap:96 H264/90000",
    "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
])

AV_ANSWER = sdp([
    "v=0",
    "o=bob 2808844564 1 IN IP4 198.51.100.20",
    "s=-",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "m=audio 20000 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "m=video 20002 RTP/AVP 96",
    "a=rtpmap:96 H264/90000",
    "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1",
])

ICE_MEDIA = [
    "a=ice-ufrag:F7gI",
    "a=ice-pwd:x9cml/YzichV2+XlhiMu8g",
    "a=candidate:1 1 UDP 2130706431 192.0.2.10 10000 typ host",
    "a=candidate:1 2 UDP 2130706430 192.0.2.10 10001 typ host",
]

# Case name -> list of NG request dicts, in order. Call-ids are per case so
# that one relay instance can take the whole corpus.
CASES = {
    "plain_audio": [
        offer("plain-audio", audio_offer()),
        answer("plain-audio", audio_answer()),
        delete("plain-audio"),
    ],
    "rtcp_mux_accept": [
        offer("rtcp-mux-accept", audio_offer(extra_media=["a=rtcp-mux"]), **{"rtcp-mux": ["accept"]}),
        answer("rtcp-mux-accept", audio_answer(extra_media=["a=rtcp-mux"])),
        delete("rtcp-mux-accept"),
    ],
    "rtcp_mux_demux": [
        offer("rtcp-mux-demux", audio_offer(extra_media=["a=rtcp-mux"]), **{"rtcp-mux": ["demux"]}),
        answer("rtcp-mux-demux", audio_answer()),
        delete("rtcp-mux-demux"),
    ],
    "hold_sendonly": hold_case("hold-sendonly", audio_offer(direction="sendonly", ver=2), "recvonly"),
    "hold_inactive": hold_case("hold-inactive", audio_offer(direction="inactive", ver=2), "inactive"),
    "hold_zero_connection": hold_case(
        "hold-zero-conn", audio_offer(direction="sendonly", conn="0.0.0.0", ver=2), "recvonly"),
    "ipv6": [
        offer("ipv6", audio_offer(ip="2001:db8::10", fam="IP6")),
        answer("ipv6", audio_answer(ip="2001:db8::20", fam="IP6")),
        delete("ipv6"),
    ],
    "audio_video": [
        offer("audio-video", AV_OFFER),
        answer("audio-video", AV_ANSWER),
        delete("audio-video"),
    ],
    "ice_remove": [
        offer("ice-remove", audio_offer(extra_media=ICE_MEDIA), ICE="remove"),
        answer("ice-remove", audio_answer(), ICE="remove"),
        delete("ice-remove"),
    ],
    "replace_origin_session_connection": [
        offer("replace-origin", audio_offer(), replace=["origin", "session-connection"]),
        answer("replace-origin", audio_answer(), replace=["origin", "session-connection"]),
        delete("replace-origin"),
    ],
    "reinvite": [
        offer("reinvite", audio_offer()),
        answer("reinvite", audio_answer()),
        # Re-INVITE: new SDP version, new media port, codec list narrowed.
        offer("reinvite", audio_offer(port=10010, ver=2)),
        answer("reinvite", audio_answer(port=20010, ver=2)),
        delete("reinvite"),
    ],
}


# --------------------------------------------------------------------------
# rtpengine
# --------------------------------------------------------------------------
def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_rtpengine(workdir: Path, ng_port: int):
    exe = shutil.which("rtpengine") or "/usr/bin/rtpengine"
    if not os.path.exists(exe):
        sys.exit("rtpengine not found: run scripts/setup (Debian package rtpengine-daemon)")
    log = open(workdir / "rtpengine.log", "wb")
    cmd = [
        exe, "--config-file=none", "--foreground", "--table=-1", "--no-fallback",
        "--interface=127.0.0.1", "--interface=::1",
        f"--listen-ng=127.0.0.1:{ng_port}",
        f"--port-min={PORT_MIN}", f"--port-max={PORT_MAX}",
        "--log-stderr", f"--pidfile={workdir / 'rtpengine.pid'}",
        "--delete-delay=0",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"rtpengine exited early ({proc.returncode}); log: {workdir / 'rtpengine.log'}")
        if b"Startup complete" in (workdir / "rtpengine.log").read_bytes():
            return proc, cmd
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("rtpengine did not report 'Startup complete' within 10 s")


def ng_call(sock, addr, msg: dict) -> dict:
    cookie = "%08x" % random.getrandbits(32)
    payload = cookie.encode() + b" " + bencode(msg)
    for _ in range(5):
        sock.sendto(payload, addr)
        sock.settimeout(1.0)
        try:
            while True:
                data, _ = sock.recvfrom(65535)
                c, _, body = data.partition(b" ")
                if c.decode() == cookie:
                    return bdecode(body)
        except socket.timeout:
            continue
    raise TimeoutError(f"no NG reply to {msg['command']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-requests", action="store_true",
                    help="(re)write the *.request.json files from the CASES table first")
    args = ap.parse_args()

    if args.write_requests:
        for name, steps in CASES.items():
            d = CORPUS / name
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            for i, req in enumerate(steps, 1):
                (d / f"{i:02d}-{req['command']}.request.json").write_text(
                    json.dumps(req, indent=2) + "\n")

    workdir = Path(tempfile.mkdtemp(prefix="ng-capture-"))
    ng_port = free_udp_port()
    proc, cmd = start_rtpengine(workdir, ng_port)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for d in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
            for req_file in sorted(d.glob("*.request.json")):
                req = json.loads(req_file.read_text())
                reply = ng_call(sock, ("127.0.0.1", ng_port), req)
                if reply.get("result") != "ok":
                    raise SystemExit(f"{req_file}: rtpengine answered {reply}")
                out = req_file.with_name(req_file.name.replace(".request.", ".reply."))
                out.write_text(json.dumps(reply, indent=2, sort_keys=True) + "\n")
                print(f"captured {out.relative_to(CORPUS)}")
        version = subprocess.run([cmd[0], "--version"], capture_output=True, text=True)
        (CORPUS / "CAPTURED_WITH.txt").write_text(
            (version.stdout or version.stderr).strip() + "\n" + " ".join(
                c if not c.startswith(("--listen-ng", "--pidfile")) else c.split("=")[0] + "=..."
                for c in cmd) + "\n")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
