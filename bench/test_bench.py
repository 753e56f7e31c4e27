"""Checks of the measuring instruments themselves (no network, a few seconds).

Run with ``python -m pytest -q bench/test_bench.py``. A splitter that miscounts or a
Cedar policy that is not equivalent would make every figure meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import rawmqtt as mq
from bench.decisions import (
    CEDAR_POLICY,
    active_agents,
    agent_name,
    cedar_entities,
    cedar_requests,
    compiled_calls,
    expected,
    floor_tables,
    policy_document,
    requests,
    time_compiled,
    time_floor,
)
from bench.procs import REPO
from bench.report import Row, table
from bench.workers import shadow_update_payload, telemetry_payload
from iot_guard.mqtt import Connect, Publish, StreamParser, Subscribe
from iot_guard.mqtt.wire import encode_varint


def test_encoded_packets_parse_as_valid_mqtt() -> None:
    # The guard's own parser (server side) must accept what the bench clients send.
    parser = StreamParser(side="server")
    data = (
        mq.connect("bench-client", "ops-agent", "tok", keepalive=120)
        + mq.subscribe(1, ["tenants/acme/devices/+/telemetry"], 0)
        + mq.publish("tenants/acme/devices/therm-001/shadow/update", b"{}", 1, 7)
    )
    packets = parser.feed(data)
    assert isinstance(packets[0], Connect)
    assert packets[0].client_id == "bench-client"
    assert packets[0].username == "ops-agent"
    assert isinstance(packets[1], Subscribe)
    assert isinstance(packets[2], Publish)
    assert packets[2].qos == 1 and packets[2].packet_id == 7
    assert packets[2].payload == b"{}"


def test_varint_uses_the_shortest_form() -> None:
    assert encode_varint(0) == b"\x00"
    assert encode_varint(127) == b"\x7f"
    assert encode_varint(128) == b"\x80\x01"
    assert encode_varint(16_383) == b"\xff\x7f"
    assert encode_varint(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError):
        encode_varint(268_435_456)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000])
def test_splitter_counts_packets_cut_anywhere(step: int) -> None:
    # Payload sizes on both sides of the one/two-byte Remaining Length boundary.
    packets = [mq.publish("t/x", b"a" * size) for size in (0, 1, 100, 122, 123, 124, 300, 20_000)]
    packets.insert(3, mq.puback(9))
    stream = b"".join(packets)
    counter, splitter = mq.Splitter(), mq.Splitter()
    counted, others, frames = 0, [], []
    for off in range(0, len(stream), step):
        n, rest = counter.count(stream[off : off + step])
        counted += n
        others += rest
        frames += splitter.feed(stream[off : off + step])
    assert counted == 8
    assert others == [(mq.PUBACK << 4, b"\x00\x09")]
    assert [first >> 4 for first, _ in frames] == [3, 3, 3, 4, 3, 3, 3, 3, 3]
    assert frames[-1][1].endswith(b"a" * 20_000)
    assert counter.buf == b"" and splitter.buf == b""


def test_payloads_are_the_documented_shapes() -> None:
    assert 80 <= len(telemetry_payload(123_456)) <= 120  # "~100 B JSON"
    doc = json.loads(shadow_update_payload(5))
    assert doc == {"state": {"desired": {"target_temp_c": 21.5}}, "clientToken": "bench-00000005"}


def test_cedar_and_compiled_policy_agree_with_the_intended_answers() -> None:
    import cedarpy

    from iot_guard.policy.compiler import CompiledPolicy

    n = 30
    reqs = requests(n, 2_000)
    policy = CompiledPolicy(policy_document(n))
    policies = cedarpy.PolicySet.from_str(CEDAR_POLICY)
    entities = cedarpy.Entities.from_json_str(cedar_entities(n))
    truth = [expected(r, n) for r in reqs]
    # Every kind of request appears, allowed and denied.
    assert 0.4 < sum(truth) / len(truth) < 0.8
    assert {r.tool for r in reqs} == {"read_telemetry", "read_status", "shadow_get"}
    compiled = []
    for r in reqs:
        handle = policy.for_agent(agent_name(r.agent))
        assert handle is not None
        d = (handle.decide_publish(r.topic, b"", 0, False) if r.verb == "publish"
             else handle.decide_receive(r.topic))
        compiled.append(d.allowed)
    cedar = [cedarpy.is_authorized(q, policies, entities).allowed for q in cedar_requests(reqs)]
    assert compiled == truth
    assert cedar == truth


def test_requests_never_repeat_an_agents_previous_topic() -> None:
    # The uncached timing relies on it (see time_compiled).
    last: dict[tuple[int, str], str] = {}
    denied: dict[tuple[int, str], str] = {}
    for r in requests(10, 5_000):
        assert r.topic not in (last.get((r.agent, r.verb)), denied.get((r.agent, r.verb)))
        last[(r.agent, r.verb)] = r.topic
        if not expected(r, 10):
            denied[(r.agent, r.verb)] = r.topic


@pytest.mark.parametrize("n_tenants", [3, 2_000])
def test_uncached_timing_computes_every_decision(
    monkeypatch: pytest.MonkeyPatch, n_tenants: int
) -> None:
    # Few tenants: an agent sees many requests; many tenants: most agents see one, so a
    # topic left in an agent's cache by one pass could be hit by the next.
    from iot_guard.policy.compiler import AgentPolicy, CompiledPolicy

    computed = {"n": 0}
    for name in ("_receive_decision", "_publish_entry"):
        original = getattr(AgentPolicy, name)

        def counting(self: AgentPolicy, topic: str, _original: Any = original) -> Any:
            computed["n"] += 1
            return _original(self, topic)

        monkeypatch.setattr(AgentPolicy, name, counting)
    policy = CompiledPolicy(policy_document(n_tenants))
    handles = [policy.for_agent(agent_name(i)) for i in range(n_tenants)]
    reqs = requests(n_tenants, 600)
    _, allowed = time_compiled(handles, reqs, cached=False, passes=3)  # type: ignore[arg-type]
    # Uncached: each request is decided on demand, or answered from the agent's topic map
    # precomputed at CONNECT (for_agent above), never from the per-topic cache.
    in_map = sum(
        r.topic in (h._decided_recv if r.verb == "receive" else h._decided_pub)
        for r in reqs
        if (h := handles[r.agent]) is not None
    )
    assert 0 < in_map < len(reqs)
    assert computed["n"] == 3 * (len(reqs) - in_map)
    assert allowed == [expected(r, n_tenants) for r in reqs]
    computed["n"] = 0
    time_compiled(handles, reqs, cached=True, passes=3)  # type: ignore[arg-type]
    assert computed["n"] <= len(reqs)  # only the fill pass computes


def test_each_call_brings_its_own_topic_string() -> None:
    # As a packet does: the guard hashes it and compares it with a stored key by content,
    # so a timed call must not reuse a str whose hash is cached or that a cache holds.
    from iot_guard.policy.compiler import CompiledPolicy

    policy = CompiledPolicy(policy_document(3))
    handles = [policy.for_agent(agent_name(i)) for i in range(3)]
    reqs = requests(3, 50)
    first = compiled_calls(handles, reqs)  # type: ignore[arg-type]
    second = compiled_calls(handles, reqs)  # type: ignore[arg-type]
    for r, a, b in zip(reqs, first, second, strict=True):
        assert a.args[0] == b.args[0] == r.topic  # type: ignore[attr-defined]
        assert a.args[0] is not r.topic and a.args[0] is not b.args[0]  # type: ignore[attr-defined]


def test_table_marks_missed_goals() -> None:
    out = table([
        Row("a", "1", "2", "2.00", ">= 0.9", True),
        Row("b", "1", "0.1", "0.10", ">= 0.5", False),
        Row("c", "1", "1", "", "(info)", None),
    ])
    lines = out.splitlines()
    assert lines[2].endswith("met") and lines[3].endswith("MISSED")
    assert not lines[4].endswith(("met", "MISSED"))


def test_ack_and_suback_readers() -> None:
    assert mq.ack_reason(b"\x00\x07") == 0  # 3.1.1, or 5.0 success with nothing after
    assert mq.ack_reason(b"\x00\x07\x87\x00") == 0x87
    assert mq.suback_codes(b"\x00\x01\x00\x01", 4) == [0, 1]
    # 5.0: packet id, a property length of 3 (a reason string ""... here one byte), codes.
    assert mq.suback_codes(b"\x00\x01\x03\x1f\x00\x00\x87", 5) == [0x87]
    assert mq.connack_code(b"\x00\x86") == 0x86


def test_load_schedule_mixes_allowed_and_refused_on_every_session() -> None:
    from bench.crowd import load_schedule
    from bench.load import ALLOWED, REFUSED

    args = {"sessions": 4, "rate": 100, "warmup_s": 0.5, "duration_s": 1.5,
            "allowed": ALLOWED, "refused": REFUSED}
    schedule = load_schedule(args)
    assert len(schedule) == 200
    per_session: dict[int, list[bool]] = {}
    ids: dict[int, list[int]] = {}
    for k, packet_id, refused, packet in schedule:
        per_session.setdefault(k, []).append(refused)
        ids.setdefault(k, []).append(packet_id)
        assert packet[0] >> 4 == mq.PUBLISH and (packet[0] >> 1) & 3 == 1  # QoS 1
    # Every session sends both kinds, half and half; packet ids never repeat in a session.
    assert all(sum(v) == len(v) // 2 for v in per_session.values())
    assert all(len(set(v)) == len(v) and 0 not in v for v in ids.values())
    refused_packets = [p for _, _, r, p in schedule if r]
    for topic, payload in REFUSED:  # every kind of refusal is sent
        assert any(p.endswith(payload.encode()) and topic.encode() in p for p in refused_packets)


def test_refused_load_messages_are_refused_by_the_example_policy() -> None:
    # The load bench counts a wrong answer when the guard allows one of REFUSED (or
    # refuses one of ALLOWED): the lists must match what the example policy decides.
    from bench.load import ALLOWED, REFUSED
    from bench.procs import REPO
    from iot_guard.policy.compiler import CompiledPolicy

    handle = CompiledPolicy.load(REPO / "device_policies").for_agent("ops-agent")
    assert handle is not None
    for topic, payload in ALLOWED:
        assert handle.decide_publish(topic, payload.encode(), 1, False).allowed, topic
    for topic, payload in REFUSED:
        assert not handle.decide_publish(topic, payload.encode(), 1, False).allowed, topic


def test_percentile_is_nearest_rank_in_microseconds() -> None:
    from bench.crowd import percentile

    sample = sorted(range(1000, 101_000, 1000))  # 1..100 us in ns
    assert percentile(sample, 50) == 51.0
    assert percentile(sample, 99) == 100.0
    assert percentile([], 99) == 0.0


def test_fd_limit_is_raised_to_the_hard_limit_and_rss_is_read() -> None:
    import os
    import resource

    from bench.procs import raise_fd_limit, rss_bytes

    soft = raise_fd_limit()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft
    assert hard == resource.RLIM_INFINITY or now_soft == hard
    assert rss_bytes(os.getpid()) > 1 << 20
    assert rss_bytes(2**22 + 7) == 0  # no such process


def test_crowd_workers_run_against_a_real_broker(tmp_path: Any) -> None:
    # The load and idle workers end to end on a small scale, direct to an open broker.
    from bench.broker import bench_broker
    from bench.load import ALLOWED, REFUSED
    from bench.procs import Worker

    with bench_broker(tmp_path) as broker:
        endpoint = {"host": broker.host, "port": broker.port}
        load = Worker("load", {
            "endpoint": endpoint, "client_prefix": "t-load", "sessions": 4, "rate": 200,
            "warmup_s": 0.1, "duration_s": 0.2, "allowed": ALLOWED, "refused": REFUSED,
            "expect_refusals": False,
        }, tmp_path, "load")
        idle = Worker("idle", {"endpoint": endpoint, "client_prefix": "t-idle",
                               "sessions": 20, "warmup": 2}, tmp_path, "idle")
        try:
            assert load.line(30)["sessions"] == 4
            load.go()
            result = load.line(30)
            assert result["sent"] == result["acked"] == 60
            assert result["lost"] == result["wrong"] == 0
            assert result["samples"] == 40 and 0 < result["p50_us"] <= result["p99_us"]
            assert idle.line(30) == {"warm": 2}
            idle.go()
            assert idle.line(30)["ready"] == 20
            idle.go()
            assert idle.line(30) == {"alive": 20}
        finally:
            load.finish()
            idle.finish()


def test_approvals_bench_policy_loads_with_a_ten_device_group_and_the_pace(
    tmp_path: Any,
) -> None:
    from bench.approvals import ALL, bench_policy
    from bench.procs import REPO
    from iot_guard.policy.loader import load_policy

    doc = load_policy(bench_policy(REPO / "device_policies", tmp_path / "p", 600.0))
    assert doc.tenants["acme"].groups["all"] == ALL
    rollout = doc.tools["group_config_push"].rollout
    assert rollout is not None
    assert (rollout.max_per_minute, rollout.canary, rollout.bake_s) == (600.0, 0, 0)
    assert {lv.timeout_s for c in doc.approvals.chains.values() for lv in c.levels} == {3600}
    # The timing pushes ten times in a minute: the example's push limit is lifted, no other.
    assert "group_config_push" not in doc.limits.tools
    assert "identify_device" in doc.limits.tools


def test_the_benches_get_a_policy_that_admits_their_sessions_and_pushes(
    tmp_path: Path,
) -> None:
    from bench.__main__ import policy_for_benches
    from iot_guard.policy.loader import load_policy

    source = Path(__file__).parents[1] / "device_policies"
    copy = policy_for_benches(source, tmp_path, 5000)
    limits = load_policy(copy).limits
    assert limits.connections is not None and limits.connections.burst >= 5000
    assert "group_config_push" not in limits.tools  # 1,000 pushes are parked
    assert "identify_device" in limits.tools
    # Everything else is the example policy as it is.
    assert load_policy(copy).tools.keys() == load_policy(source).tools.keys()


def test_in_process_harness_forwards_and_audits_every_update() -> None:
    """bench.inproc's figure is only worth something if the guard did the whole job:
    every update forwarded byte for byte (measure raises otherwise) and audited."""
    import asyncio

    from bench.inproc import measure
    from iot_guard.proxy.server import new_event_loop

    loop = new_event_loop()
    try:
        r = loop.run_until_complete(measure(REPO / "device_policies", 300, 30, None))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    assert r["publish_us"] > 0 and r["puback_us"] > 0
    assert r["records"] == 300


def test_check_pipeline_stream_exercises_every_rule_of_the_example_policy() -> None:
    """bench.checks times the pipeline on a stream that must reach the paths a guard
    really takes: limits refused, quotas counted, holds, and each anomaly rule the example
    policy turns on; and two replays answer alike (the digest compares versions)."""
    from bench.checks import decide, digest, replay, stream
    from iot_guard.policy.compiler import CompiledPolicy
    from iot_guard.policy.decision import Verdict

    policy_dir = REPO / "device_policies"
    policy = CompiledPolicy.load(policy_dir)
    steps = stream(3000)
    decisions = decide(policy, steps)
    assert {d.verdict for d in decisions} == {Verdict.ALLOW, Verdict.DENY, Verdict.HOLD}
    _cpu, answers = replay(policy, steps, decisions)
    hits, raised = dict(answers[-4]), dict(answers[-3])
    assert hits.get("tool identify_device per agent", 0) > 0
    assert {rule for rule, _mode in raised} >= {
        "rate_limit", "repeated_denials", "outside_tenants", "repeated_action", "first_use"}
    assert answers[-1], "no counts for the baselines"
    assert digest(answers, policy_dir) == digest(replay(policy, steps, decisions)[1], policy_dir)


def test_audit_path_bench_writes_every_record_and_times_a_checkpoint(tmp_path: Path) -> None:
    import asyncio

    from bench.audit_path import audit_cost, checkpoint_cost

    build, write, count = audit_cost(3, 35, tmp_path)
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    decisions = [line for line in lines if b'"packet":"publish"' in line]
    assert len(decisions) == 105 and all(b'"result_status":"success"' in d for d in decisions)
    assert min(build, write, count) > 0
    sign, store = asyncio.run(checkpoint_cost(tmp_path, 3))
    assert sign > 0 and store > 0


def test_a_fixed_working_set_draws_the_same_mix_from_its_agents_only() -> None:
    assert active_agents(10) == list(range(10))
    spread = active_agents(10_000)
    assert len(spread) == len(set(spread)) == 100 and spread[0] == 0 and spread[-1] == 9_901
    assert sum(i % 2 for i in spread) == 50 and max(active_agents(150)) < 150
    reqs = requests(2_000, 3_000, agents=active_agents(2_000))
    assert {r.agent for r in reqs} == set(active_agents(2_000))
    truth = [expected(r, 2_000) for r in reqs]
    assert 0.4 < sum(truth) / len(truth) < 0.8  # allowed and refused, as the main stream
    assert {r.tool for r in reqs} == {"read_telemetry", "read_status", "shadow_get"}
    # The goal rows' stream is what it was without the parameter.
    assert requests(50, 500) == requests(50, 500, agents=None)


def test_the_floor_looks_up_the_guards_own_answers() -> None:
    from iot_guard.policy.compiler import CompiledPolicy

    n = 40
    policy = CompiledPolicy(policy_document(n))
    handles = [policy.for_agent(agent_name(i)) for i in range(n)]
    reqs = requests(n, 800)
    tables = floor_tables(handles, reqs)  # type: ignore[arg-type]
    for r in reqs:
        h = handles[r.agent]
        assert h is not None
        answer = (h.decide_publish(r.topic, b"", 0, False) if r.verb == "publish"
                  else h.decide_receive(r.topic))
        assert tables[r.agent][r.topic] is answer
        # Every topic decided at CONNECT is in the agent's table (same size of dict).
        assert h._decided_recv.keys() <= tables[r.agent].keys()
    seconds, allowed = time_floor(handles, reqs, passes=2)  # type: ignore[arg-type]
    assert seconds > 0 and allowed == [expected(r, n) for r in reqs]


def test_the_passthrough_carries_a_session_both_ways_unchanged(tmp_path: Path) -> None:
    # The reference process must be a faithful pipe: the broker answers through it as it
    # answers direct (CONNACK, SUBACK, PUBACK) and a message comes back byte for byte.
    import socket

    from bench.broker import bench_broker
    from bench.procs import PassthroughProcess

    with bench_broker(tmp_path) as broker:
        through = PassthroughProcess(broker.port, tmp_path)
        try:
            assert through.port != broker.port
            with socket.create_connection((through.host, through.port), timeout=10) as sock:
                sock.settimeout(10)
                topic = "tenants/acme/devices/therm-001/telemetry"
                message = mq.publish(topic, telemetry_payload(7), 1, 9)
                sock.sendall(mq.connect("t-through") + mq.subscribe(1, [topic], 1) + message)
                splitter = mq.Splitter()
                frames: list[tuple[int, bytes]] = []
                while len(frames) < 4:  # CONNACK, SUBACK, PUBACK and the delivery
                    data = sock.recv(65536)
                    assert data, f"the passthrough closed after {frames}"
                    frames += splitter.feed(data)
            kinds = {first >> 4: body for first, body in frames}
            assert mq.connack_code(kinds[mq.CONNACK]) == 0
            assert mq.suback_codes(kinds[mq.SUBACK]) == [1]
            assert kinds[mq.PUBACK] == b"\x00\x09"
            delivered = kinds[mq.PUBLISH]
            assert delivered.endswith(telemetry_payload(7)) and topic.encode() in delivered
        finally:
            through.stop()
        assert through.proc.returncode is not None


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "argument --repeat: 0 is less than 1"),
    (["--window", "-3"], "argument --window: -3 is less than 1"),
    (["--subscribers", "many"], "argument --subscribers: 'many' is not a whole number"),
    (["--rate", "0"], "argument --rate: 0 is not a number above 0"),
    (["--load-s", "nan"], "argument --load-s: nan is not a number above 0"),
    (["--sizes", "10,x"], "argument --sizes: 'x' is not a whole number"),
    (["--sizes", ","], "argument --sizes: no sizes given"),
])
def test_a_bad_bench_argument_is_one_error_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each of these ran before: a traceback (--repeat 0, --rate 0, --sizes 10,x), a run
    # that waited for acks a window of 0 never sends, or a negative count "measured".
    from bench.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"python -m bench: error: {message}"
    assert "Traceback" not in err


def test_bench_arguments_parse_to_numbers() -> None:
    from bench.__main__ import parse_args

    args = parse_args(["--sizes", "10, 1000", "--load-rate", "500", "--repeat", "2"])
    assert (args.sizes, args.load_rate, args.repeat) == ([10, 1000], 500.0, 2)
    assert parse_args([]).sizes == [10, 100, 1000, 10000]
    assert parse_args(["--quick"]).sizes == [10, 1000]


def test_evict_writes_every_cache_line_of_the_buffer() -> None:
    # A cold run is only cold if every 64-byte line of the buffer is written.
    from bench.inproc import evict

    buffer = bytearray(b"\xff" * (64 * 1000))
    evict(buffer, bytes(len(buffer[::64])))
    assert buffer[::64] == bytes(1000)
    assert buffer.count(0) == 1000  # one byte per line, the rest untouched
