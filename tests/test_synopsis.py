"""Synopsis sources: reply parsing, user files, a real local HTTP endpoint, a local LM."""
import http.server
import json
import socket
import threading

import pytest

from vstar_jax.tar_vsp import synopsis as SY

STATES = ["A seed in dark soil, watercolor", "A green sprout, watercolor", "A tall sunflower in bloom, watercolor"]


@pytest.mark.parametrize("reply", [
    "1. A seed in dark soil, watercolor\n2. A green sprout, watercolor\n3. A tall sunflower in bloom, watercolor",
    "Here are the states:\n\n1) A seed in dark soil, watercolor\n2) A green sprout, watercolor\n"
    "3) A tall sunflower in bloom, watercolor\n\nHope this helps!",
    "- A seed in dark soil, watercolor\n- A green sprout, watercolor\n- A tall sunflower in bloom, watercolor",
    "* A seed in dark soil, watercolor\n* A green sprout, watercolor\n* A tall sunflower in bloom, watercolor",
    json.dumps(STATES),
    json.dumps({"states": STATES}),
    "Sure!\n```json\n" + json.dumps({"states": STATES}, indent=2) + "\n```\n",
    "```\n1. A seed in dark soil, watercolor\n2. A green sprout, watercolor\n"
    "3. A tall sunflower in bloom, watercolor\n```",
    "**State 1:** A seed in dark soil, watercolor\n**State 2:** A green sprout, watercolor\n"
    "**State 3:** A tall sunflower in bloom, watercolor",
    "A seed in dark soil, watercolor\n\nA green sprout, watercolor\nA tall sunflower in bloom, watercolor\n",
    '1. "A seed in dark soil, watercolor"\n2. "A green sprout, watercolor"\n'
    '3. "A tall sunflower in bloom, watercolor"',
])
def test_parse_variants(reply):
    assert SY.parse_states(reply) == STATES


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", "1. only one state", "[]",
                                   json.dumps({"states": ["one"]})])
def test_parse_unusable(reply):
    with pytest.raises(SY.SynopsisError, match="unusable synopsis"):
        SY.parse_states(reply)


def test_template_and_messages():
    text = SY.render_prompt("A sunflower grows, watercolor", 4)
    assert "A sunflower grows, watercolor" in text and "exactly 4" in text and "{" not in text
    msgs = SY.build_messages("x", 3)
    assert [m["role"] for m in msgs] == ["system", "user"]
    with pytest.raises(SY.SynopsisError, match="at least 2"):
        SY.render_prompt("x", 1)
    assert SY.ensure_suffix(["a", "b, 4k"], "4k") == ["a, 4k", "b, 4k"]


def test_user_synopsis_sources(tmp_path):
    assert SY.user_synopsis(STATES) == STATES
    (tmp_path / "s.json").write_text(json.dumps({"states": STATES}))
    (tmp_path / "l.json").write_text(json.dumps(STATES))
    (tmp_path / "s.yaml").write_text("states:\n" + "".join(f"  - {s}\n" for s in STATES))
    (tmp_path / "s.txt").write_text("\n".join(STATES) + "\n")
    vstar = [{"prompt": "grow", "subprompts": STATES}, {"prompt": "other", "subprompts": ["a", "b"]}]
    (tmp_path / "prompt_list.json").write_text(json.dumps(vstar))
    for name in ["s.json", "l.json", "s.yaml", "s.txt"]:
        assert SY.user_synopsis(str(tmp_path / name)) == STATES, name
    with pytest.raises(SY.SynopsisError, match="entries"):
        SY.user_synopsis(str(tmp_path / "prompt_list.json"))
    with pytest.raises(SY.SynopsisError, match="at least 2"):
        SY.user_synopsis(["only one"])
    with pytest.raises(SY.SynopsisError, match="not found"):
        SY.user_synopsis(str(tmp_path / "missing.json"))


class _Handler(http.server.BaseHTTPRequestHandler):
    reply = "1. a\n2. b"
    status = 200
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        type(self).seen.append({"path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})
        if type(self).status != 200:
            payload = json.dumps({"error": {"message": "model overloaded"}}).encode()
        else:
            payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": type(self).reply},
                 "finish_reason": "stop"}]}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.seen = []
    _Handler.status = 200
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_llm_synopsis_over_http(server, monkeypatch):
    _Handler.reply = "Here you go:\n1. A seed in dark soil\n2. A green sprout\n3. A tall sunflower in bloom"
    monkeypatch.setenv(SY.ENV_URL, server)
    monkeypatch.setenv(SY.ENV_MODEL, "tiny-chat")
    monkeypatch.setenv(SY.ENV_KEY, "sk-test")
    states = SY.llm_synopsis("A sunflower grows", 3, style_suffix="watercolor")
    assert states == STATES
    req = _Handler.seen[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "tiny-chat"
    assert "A sunflower grows" in req["body"]["messages"][-1]["content"]
    # explicit arguments beat the environment; a full endpoint URL is kept as is
    monkeypatch.delenv(SY.ENV_KEY)
    SY.llm_synopsis("x", 3, url=server + "/v1/chat/completions", model="m2")
    assert _Handler.seen[-1]["body"]["model"] == "m2" and _Handler.seen[-1]["auth"] is None


def test_llm_bad_reply_and_http_error(server):
    _Handler.reply = "Sorry, I can't do that."
    with pytest.raises(SY.SynopsisError, match="unusable synopsis"):
        SY.llm_synopsis("x", 3, url=server, model="m")
    _Handler.status = 503
    with pytest.raises(SY.SynopsisError, match="HTTP 503.*overloaded"):
        SY.llm_synopsis("x", 3, url=server, model="m")


def test_llm_unreachable(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    with pytest.raises(SY.SynopsisError, match="unreachable"):
        SY.llm_synopsis("x", 3, url=f"http://127.0.0.1:{port}", model="m", timeout=5)
    monkeypatch.delenv(SY.ENV_URL, raising=False)
    with pytest.raises(SY.SynopsisError, match=SY.ENV_URL):
        SY.llm_synopsis("x", 3, model="m")


def _tiny_local_lm(path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["[UNK]", "[EOS]", "a", "seed", "sprout", "flower", "1.", "2.", "3."]
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(words), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=1, eos_token_id=1)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)


def test_local_lm_loads_offline_and_reports_unusable_reply(tmp_path):
    _tiny_local_lm(tmp_path / "lm")
    # a random 10-word LM cannot write a synopsis: the generated text reaches the parser
    with pytest.raises(SY.SynopsisError, match="unusable synopsis"):
        SY.local_lm_synopsis("a seed", 3, model_path=tmp_path / "lm", max_new_tokens=8)
    with pytest.raises(SY.SynopsisError, match="not found"):
        SY.local_lm_synopsis("a seed", 3, model_path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SY.SynopsisError, match="cannot load"):
        SY.local_lm_synopsis("a seed", 3, model_path=tmp_path / "empty")


def test_llm_fewer_states_than_asked_is_refused(server):
    _Handler.reply = "1. A seed\n2. A sunflower"
    with pytest.raises(SY.SynopsisError, match="wrote 2 visual states, asked for 3"):
        SY.llm_synopsis("x", 3, url=server, model="m")


def test_llm_timeout_is_reported_as_a_timeout():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts the connection (backlog) but never answers
    try:
        with pytest.raises(SY.SynopsisError, match="timed out.*1 s.*--llm-timeout"):
            SY.llm_synopsis("x", 3, url=f"http://127.0.0.1:{sock.getsockname()[1]}", model="m", timeout=1)
        with pytest.raises(SY.SynopsisError, match="timeout must be > 0"):
            SY.llm_synopsis("x", 3, url="http://127.0.0.1:9", model="m", timeout=0)
    finally:
        sock.close()
