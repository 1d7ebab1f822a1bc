"""Labellers: pool votes, the LLM labeller against a local chat-completions server, manual overrides."""

from __future__ import annotations

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from precompute.errors import InputError
from precompute.labels import (
    MIXED,
    HeadLabel,
    LabelFallbackWarning,
    Override,
    apply_overrides,
    label_pool,
    load_overrides,
    pool_vote,
)
from precompute.labels_llm import DEFAULT_EXAMPLES, build_messages, label_llm, llm_config, load_examples, prompt_sha256

VE = [0.30, 0.45, 0.55, 0.62, 0.66, 0.70]  # cumulative; increments 0.30 0.15 0.10 0.07 0.04 0.04


# ------------------------------------------------------------------------- pool


def test_pool_majority():
    label = label_pool(9, 3, ["colour", "shape", "colour", "colour", "size", "shape"], VE, pool="toyworld")
    assert (label.layer, label.head, label.property, label.labeller) == (9, 3, "colour", "pool")
    assert label.provenance["labeller"] == "pool" and label.provenance["pool"] == "toyworld"
    assert (label.provenance["top_k"], label.provenance["min_share"]) == (5, 0.4)
    assert label.provenance["share"] == pytest.approx(0.6)  # 3 of 5
    assert json.loads(label.provenance_json())["votes"] == {"colour": 3, "shape": 1, "size": 1}


def test_pool_tie_goes_to_the_property_that_explains_more_variance():
    # shape: picks 2 and 4 -> 0.15 + 0.07 = 0.22; colour: picks 3 and 5 -> 0.10 + 0.04 = 0.14
    assert pool_vote([None, "shape", "colour", "shape", "colour"], VE[:5])[0] == "shape"
    # colour: picks 1 and 5 -> 0.30 + 0.04 = 0.34 beats shape 0.22
    assert pool_vote(["colour", "shape", None, "shape", "colour"], VE[:5])[0] == "colour"


def test_pool_mixed_below_min_share_and_none_never_wins():
    # every property once: share 1/5 = 0.2 < 0.4
    assert pool_vote(["a", "b", "c", "d", "e"], VE[:5])[0] == MIXED
    # None four times still loses to the only tagged text, which has share 1/5 -> mixed
    assert pool_vote([None, None, "a", None, None], VE[:5])[0] == MIXED
    assert pool_vote([None] * 5, VE[:5])[0] == MIXED
    # 2 of 5 is exactly the 0.4 threshold -> labelled; with min_share 0.6 -> mixed
    assert pool_vote([None, "a", None, "a", None], VE[:5])[0] == "a"
    assert pool_vote([None, "a", None, "a", None], VE[:5], min_share=0.6)[0] == MIXED
    # only the top 5 vote: the 6th pick does not count
    assert pool_vote(["a", "b", "c", "d", "e", "a"], VE)[0] == MIXED


def test_pool_input_errors():
    with pytest.raises(InputError, match="one per pick"):
        pool_vote(["a", "b"], [0.1])
    with pytest.raises(InputError, match="min_share"):
        pool_vote(["a"], [0.1], min_share=0)


# -------------------------------------------------------------------------- LLM


class ChatServer:
    """A chat-completions endpoint on 127.0.0.1 that plays a script of replies, one per request."""

    def __init__(self):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                kind, *args = server.script.pop(0) if server.script else ("status", 500, b"script exhausted")
                if kind == "sleep":
                    time.sleep(args[0])
                    return
                if kind == "reply":
                    payload = {"choices": [{"message": {"role": "assistant", "content": args[0]}, "finish_reason": args[1] if len(args) > 1 else "stop"}]}
                    status, data = 200, json.dumps(payload).encode()
                else:
                    status, data = args
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


KEY = "sk-test-SECRET-123"
TEXTS = ["Image with a vivid red hue", "Photo in shades of green", "A blue object", "Yellow tones", "Photo taken in Paris"]
ALLOWED = ["colour", "location", "shape"]
POOL_LABEL = HeadLabel(10, 2, "colour", "pool", {"labeller": "pool", "pool": "toyworld", "top_k": 5})


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


def ask(server, *, timeout=5.0, retries=2):
    config = llm_config(server.base_url, "test-model", KEY, timeout=timeout, retries=retries, backoff=0.0, env={})
    return label_llm(10, 2, TEXTS, ALLOWED, POOL_LABEL, config, load_examples())


def test_llm_good_reply_and_request_format(server):
    server.script = [("reply", '{"property": "location"}')]
    label = ask(server)
    assert (label.property, label.labeller) == ("location", "llm")
    prov = label.provenance
    assert prov["model"] == "test-model" and prov["base_url"] == server.base_url
    assert prov["prompt_sha256"] == prompt_sha256(load_examples()) and len(prov["prompt_sha256"]) == 64
    assert prov["pool_property"] == "colour" and prov["attempts"] == 1
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0
    text = json.dumps(body["messages"])
    examples = load_examples()
    assert all(t in text for e in examples for t in e.texts)  # every few-shot head is in the prompt
    assert '{\\"property\\": \\"Colors\\"}' in text  # and its answer, as an assistant turn
    last = body["messages"][-1]["content"]
    assert "colour, location, shape, mixed" in last and TEXTS[0] in last
    assert KEY not in label.provenance_json()


def test_llm_reply_in_json_fences_and_case_is_canonicalised(server):
    server.script = [("reply", 'Sure!\n```json\n{"property": "Colour"}\n```')]
    assert ask(server).property == "colour"


def test_llm_timeout_falls_back_after_retries(server):
    server.script = [("sleep", 1.0), ("sleep", 1.0)]
    with pytest.warns(LabelFallbackWarning, match="no reply within 0.2 s"):
        label = ask(server, timeout=0.2, retries=1)
    assert (label.property, label.labeller) == ("colour", "pool")
    fell = label.provenance["llm_fallback"]
    assert fell["attempts"] == 2 and fell["model"] == "test-model"
    assert label.provenance["pool"] == "toyworld"  # the pool provenance is kept
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        (("reply", "I think the head is about colours, probably."), "malformed reply"),
        (("reply", '{"property": "weather"}'), "not one of the allowed"),
        (("reply", "", "content_filter"), "refused"),
        (("status", 200, b"<html>not json</html>"), "malformed reply body"),
    ],
)
def test_llm_bad_replies_fall_back_without_retry(server, step, reason):
    server.script = [step]
    with pytest.warns(LabelFallbackWarning, match=reason):
        label = ask(server)
    assert label.labeller == "pool" and reason in label.provenance["llm_fallback"]["reason"]
    assert len(server.requests) == 1


def test_llm_500_then_success_retries(server):
    server.script = [("status", 500, b'{"error": "overloaded"}'), ("reply", '{"property": "shape"}')]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a successful retry is not a fallback
        label = ask(server)
    assert (label.property, label.labeller, label.provenance["attempts"]) == ("shape", "llm", 2)


def test_llm_401_is_not_retried_and_the_key_never_leaks(server):
    server.script = [("status", 401, json.dumps({"error": f"bad key {KEY}"}).encode())]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        label = ask(server)
    assert len(server.requests) == 1
    assert "HTTP 401" in label.provenance["llm_fallback"]["reason"]
    assert all(KEY not in str(w.message) for w in caught) and len(caught) == 1
    assert KEY not in label.provenance_json() and KEY not in repr(llm_config(server.base_url, "m", KEY, env={}))


def test_llm_connection_refused_falls_back():
    config = llm_config("http://127.0.0.1:9/v1", "m", KEY, timeout=0.5, retries=1, backoff=0.0, env={})
    with pytest.warns(LabelFallbackWarning, match="connection failed"):
        label = label_llm(10, 2, TEXTS, ALLOWED, POOL_LABEL, config, load_examples())
    assert label.property == "colour" and label.provenance["llm_fallback"]["attempts"] == 2


def test_llm_config_from_env_and_errors():
    env = {"CLIP_INTERPRET_LLM_BASE_URL": "http://host:8000/v1/", "CLIP_INTERPRET_LLM_MODEL": "m", "OPENAI_API_KEY": "k"}
    config = llm_config(env=env)
    assert (config.base_url, config.model, config.api_key, config.timeout, config.retries) == ("http://host:8000/v1", "m", "k", 30.0, 2)
    assert llm_config(env={**env, "CLIP_INTERPRET_LLM_API_KEY": "k2"}).api_key == "k2"
    with pytest.raises(InputError, match="CLIP_INTERPRET_LLM_MODEL"):
        llm_config(env={"OPENAI_API_KEY": "k"})
    with pytest.raises(InputError, match="API key"):
        llm_config(model="m", env={})


def test_shipped_examples_and_prompt():
    examples = load_examples(DEFAULT_EXAMPLES)
    assert len(examples) >= 8 and all(len(e.texts) == 5 for e in examples)
    props = {e.property for e in examples}
    assert {"Colors", "Locations", "Animals", "Texture/Patterns", MIXED} <= props
    messages = build_messages(TEXTS, ALLOWED + [MIXED], examples)
    assert [m["role"] for m in messages[:3]] == ["system", "user", "assistant"]
    assert len(messages) == 2 + 2 * len(examples)
    assert prompt_sha256(examples) != prompt_sha256(examples[:-1])


# -------------------------------------------------------------------- overrides


def test_overrides_round_trip_and_apply(tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text("layer,head,property,author,note\n10,2,size,bo,\n11,0,shape,,\n")
    overrides = load_overrides(path)
    assert overrides == {(10, 2): Override("size", "bo", None), (11, 0): Override("shape")}
    labels = [POOL_LABEL, HeadLabel(11, 1, "colour", "pool", {"labeller": "pool"})]
    out = apply_overrides(labels, overrides, path)
    assert (out[0].property, out[0].labeller) == ("size", "manual")
    assert out[0].provenance == {"labeller": "manual", "file": str(path), "author": "bo", "replaced": {"labeller": "pool", "property": "colour"}}
    assert out[1] is labels[1]
    # a plain dict of strings works too
    assert apply_overrides(labels, {(11, 1): "mixed"}, "x.csv")[1].property == MIXED


def test_overrides_missing_and_minimal_columns(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text("layer,head,property\n9,1,colour\n9,1,colour\n")  # identical duplicate is fine
    assert load_overrides(path) == {(9, 1): Override("colour")}
    assert load_overrides(tmp_path / "none.csv", missing_ok=True) == {}
    with pytest.raises(InputError, match="does not exist"):
        load_overrides(tmp_path / "none.csv")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("layer,head\n9,1\n", "missing column(s) property; found layer, head"),
        ("layer,head,property\nnine,1,colour\n", "line 2: layer 'nine' is not an integer"),
        ("layer,head,property\n9,1.5,colour\n", "head '1.5' is not an integer"),
        ("layer,head,property\n9,1,colour\n9,1,shape\n", "'colour' on line 2 and 'shape' on line 3"),
        ("layer,head,property\n9,1,\n", "empty property"),
        ("layer,head,property\n-1,1,colour\n", "must be >= 0"),
    ],
)
def test_overrides_errors(tmp_path, text, needle):
    path = tmp_path / "o.csv"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_overrides(path)
    assert needle in str(info.value)


def test_llm_reply_echoing_the_key_is_redacted_in_provenance(server):
    server.script = [("reply", f'{{"property": "shape"}} (request signed with {KEY})')]
    label = ask(server)
    assert label.property == "shape" and "***" in label.provenance["reply"]
    assert KEY not in label.provenance_json()


def test_llm_names_the_property_freely_when_the_pool_has_no_tags(server):
    server.script = [("reply", '{"property": "Street signs"}'), ("reply", '{"property": "Mixed"}')]
    config = llm_config(server.base_url, "m", KEY, backoff=0.0, env={})
    label = label_llm(10, 2, TEXTS, [], POOL_LABEL, config, load_examples())
    assert (label.property, label.labeller) == ("Street signs", "llm")
    assert "any short property name" in server.requests[0]["body"]["messages"][-1]["content"]
    assert label_llm(10, 2, TEXTS, [], POOL_LABEL, config, load_examples()).property == MIXED
