"""Sources of a video synopsis (VSP): K visual-state prompts for one video prompt.

- :func:`user_synopsis`: a list, or a JSON / YAML / plain-text file;
- :func:`llm_synopsis`: an OpenAI-compatible ``/v1/chat/completions`` endpoint over HTTP
  (arguments or ``VSTAR_LLM_URL`` / ``VSTAR_LLM_MODEL`` / ``VSTAR_LLM_API_KEY``);
- :func:`local_lm_synopsis`: a transformers causal LM from a local directory (no download).

All LLM replies go through :func:`parse_states`; fewer than 2 states is a
:class:`SynopsisError`.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import pathlib
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Iterable, Sequence

import yaml

from vstar_jax import configs  # the project's configs package (the repository's configs/): the template's folder

ENV_URL, ENV_MODEL, ENV_KEY = "VSTAR_LLM_URL", "VSTAR_LLM_MODEL", "VSTAR_LLM_API_KEY"
DEFAULT_TEMPLATE = "synopsis_prompt.txt"
_SYSTEM = "You are a precise assistant that writes visual descriptions for video generation."


class SynopsisError(ValueError):
    """A synopsis could not be obtained or parsed."""


# ----------------------------------------------------------------------------- template
def _configs_dir() -> pathlib.Path:
    return pathlib.Path(configs.__file__).resolve().parent


def load_template(path: str | os.PathLike | None = None) -> str:
    """The prompt template (``configs/synopsis_prompt.txt`` by default)."""
    p = pathlib.Path(path) if path is not None else _configs_dir() / DEFAULT_TEMPLATE
    if not p.is_file():
        raise SynopsisError(f"synopsis prompt template not found: {p}")
    text = p.read_text(encoding="utf-8")
    if "{prompt}" not in text or "{num_states}" not in text:
        raise SynopsisError(f"template {p} must contain {{prompt}} and {{num_states}}")
    return text


def render_prompt(prompt: str, num_states: int, template: str | None = None) -> str:
    """Fill ``{prompt}`` and ``{num_states}`` of the template (plain replacement)."""
    if not prompt or not prompt.strip():
        raise SynopsisError("empty video prompt")
    if num_states < 2:
        raise SynopsisError(f"a synopsis needs at least 2 states, asked for {num_states}")
    tmpl = load_template() if template is None else template
    return tmpl.replace("{num_states}", str(int(num_states))).replace("{prompt}", prompt.strip())


def build_messages(prompt: str, num_states: int, template: str | None = None) -> list[dict]:
    """Chat messages for an LLM: a short system message and the rendered template."""
    return [{"role": "system", "content": _SYSTEM},
            {"role": "user", "content": render_prompt(prompt, num_states, template)}]


# ------------------------------------------------------------------------------ parsing
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_NUMBERED = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|\d{1,3}\s*-)\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*\u2022+]\s+(.*)$")
_LABEL = re.compile(r"^(?:\*\*)?(?:state|step|frame|scene)\s*\d+\s*(?:\*\*)?\s*[:.)-]\s*(?:\*\*)?\s*",
                    re.IGNORECASE)
_JSON_KEYS = ("states", "subprompts", "synopsis", "prompts", "visual_states")


def _clean(s: str) -> str:
    s = _LABEL.sub("", s.strip())
    s = s.strip()
    if s.startswith("**") and s.endswith("**") and len(s) > 4:
        s = s[2:-2].strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s.rstrip(",").strip()


def _states_from_json(obj) -> list[str] | None:
    if isinstance(obj, dict):
        for key in _JSON_KEYS:
            if key in obj:
                return _states_from_json(obj[key])
        return None
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return [_clean(x) for x in obj if _clean(x)]
    if isinstance(obj, list) and all(isinstance(x, dict) for x in obj):
        out = [next((d[k] for k in ("state", "description", "prompt", "text") if k in d), None) for d in obj]
        if all(isinstance(x, str) for x in out):
            return [_clean(x) for x in out if _clean(x)]
    return None


def _try_json(text: str) -> list[str] | None:
    candidates = [text]
    for open_c, close_c in (("[", "]"), ("{", "}")):
        i, j = text.find(open_c), text.rfind(close_c)
        if 0 <= i < j:
            candidates.append(text[i:j + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        states = _states_from_json(obj)
        if states is not None:
            return states
    return None


def parse_states(text: str, min_states: int = 2) -> list[str]:
    """Visual states from an LLM reply or a text file.

    Understands code fences, a JSON list or ``{"states": [...]}`` (also "subprompts"),
    numbered lines ("1." "1)" "(1)"), bullets ("-", "*", "•") and plain lines; a preamble
    before a numbered/bulleted list is ignored.
    """
    if not isinstance(text, str):
        raise SynopsisError(f"expected text, got {type(text).__name__}")
    body = text.strip()
    fences = _FENCE.findall(body)
    if fences:
        body = max(fences, key=len).strip()
    states = _try_json(body)
    if states is None:
        lines = [ln for ln in body.splitlines() if ln.strip()]
        listed = []
        for ln in lines:
            m = _NUMBERED.match(ln) or _BULLET.match(ln)
            if m:
                listed.append(m.group(1))
        if listed:
            states = [_clean(s) for s in listed]
        else:
            states = [_clean(ln) for ln in lines
                      if not ln.strip().endswith(":") and not ln.lstrip().startswith("#")]
        states = [s for s in states if s]
    if len(states) < min_states:
        snippet = " ".join(text.split())[:120]
        raise SynopsisError(f"unusable synopsis: found {len(states)} state(s), need at least "
                            f"{min_states} (reply: {snippet!r})")
    return states


def ensure_suffix(states: Sequence[str], suffix: str | None) -> list[str]:
    """Append a style suffix to every state that does not already end with it."""
    if not suffix:
        return list(states)
    suf = suffix.strip().lstrip(",").strip()
    return [s if s.rstrip(" .").endswith(suf.rstrip(" .")) else f"{s.rstrip()}, {suf}" for s in states]


# --------------------------------------------------------------------------- user given
def load_synopsis_file(path: str | os.PathLike, prompt: str | None = None) -> list[str]:
    """States from a .json / .yaml / .yml / text file.

    JSON/YAML: a list of strings, ``{"states": [...]}`` / ``{"subprompts": [...]}``, or
    VSTAR's ``prompt_list.json`` (a list of ``{"prompt", "subprompts"}``; ``prompt``
    selects the entry, or the file must hold exactly one). Text: one state per line.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise SynopsisError(f"synopsis file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        if suffix == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise SynopsisError(f"synopsis file {p} is not valid JSON: {e}") from None
        else:
            try:
                obj = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise SynopsisError(f"synopsis file {p} is not valid YAML: {e}") from None
        if isinstance(obj, list) and obj and all(isinstance(d, dict) and "subprompts" in d for d in obj):
            entries = obj
            if prompt is not None:
                entries = [d for d in obj if str(d.get("prompt", "")).strip() == prompt.strip()]
            if len(entries) != 1:
                raise SynopsisError(f"synopsis file {p} has {len(entries)} entries for prompt {prompt!r}; "
                                    "give the exact prompt of one entry")
            obj = entries[0]
        states = _states_from_json(obj)
        if states is None:
            raise SynopsisError(f"synopsis file {p}: expected a list of strings or {{\"states\": [...]}}")
        return _check(states, str(p))
    return parse_states(text)


def _check(states: Iterable, where: str) -> list[str]:
    out = [str(s).strip() for s in states]
    if any(not s for s in out):
        raise SynopsisError(f"{where}: empty visual state")
    if len(out) < 2:
        raise SynopsisError(f"{where}: a synopsis needs at least 2 states, got {len(out)}")
    return out


def user_synopsis(states: Sequence[str] | str | os.PathLike, prompt: str | None = None) -> list[str]:
    """A user-given synopsis: a sequence of strings or a path to a file."""
    if isinstance(states, (str, os.PathLike)):
        return load_synopsis_file(states, prompt)
    return _check(states, "user synopsis")


# ------------------------------------------------------------------------------ HTTP LLM
MAX_REPLY_BYTES = 16 << 20  # a chat completion is a few kB


def _response_socket(resp):
    """The socket under an http.client response (to unblock a read from another thread), or None."""
    try:
        return resp.fp.raw._sock  # noqa: SLF001 - http.client keeps no public handle
    except AttributeError:
        return None


def chat_completions_url(url: str) -> str:
    """Normalise a base URL to its ``/v1/chat/completions`` endpoint."""
    u = url.strip().rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if u.endswith("/v1"):
        return u + "/chat/completions"
    return u + "/v1/chat/completions"


def chat_completion(messages: list[dict], *, url: str, model: str, api_key: str | None = None,
                    timeout: float = 60.0, temperature: float = 0.0, max_tokens: int = 1024) -> str:
    """POST to an OpenAI-compatible chat endpoint; returns the first choice's content."""
    endpoint = chat_completions_url(url)
    body = json.dumps({"model": model, "messages": messages, "temperature": temperature,
                       "max_tokens": max_tokens}).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    timeout = float(timeout)
    # --llm-timeout bounds the whole reply: a server that trickles a byte a second never trips a
    # per-read socket timeout, so the request runs in a worker thread that gets ``timeout`` seconds in all.
    box: dict = {}
    done = threading.Event()

    def fetch():
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-chosen URL
                box["sock"] = _response_socket(resp)
                box["status"] = resp.status
                chunks, size = [], 0
                while True:
                    chunk = resp.read(65536)
                    if not chunk:
                        if resp.length:  # EOF before the Content-Length promised (read(n) does not raise)
                            raise http.client.IncompleteRead(b"".join(chunks), resp.length)
                        break
                    size += len(chunk)
                    if size > MAX_REPLY_BYTES:
                        raise SynopsisError(f"LLM endpoint {endpoint} sent more than {MAX_REPLY_BYTES >> 20} MiB")
                    chunks.append(chunk)
                box["raw"] = b"".join(chunks)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=fetch, name="vstar-llm", daemon=True).start()
    if not done.wait(timeout):
        sock = box.get("sock")
        if sock is not None:  # unblock the worker's read
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        raise SynopsisError(f"LLM endpoint {endpoint} timed out: no complete reply within {timeout:g} s "
                            f"(raise it with --llm-timeout)")
    e = box.get("error")
    if isinstance(e, SynopsisError):
        raise e
    if isinstance(e, urllib.error.HTTPError):
        detail = e.read()[:300].decode("utf-8", "replace") if e.fp is not None else ""
        raise SynopsisError(f"LLM endpoint {endpoint} returned HTTP {e.code}: {detail.strip()}") from None
    if isinstance(e, (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError)):
        reason = getattr(e, "reason", e)
        if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(e, (socket.timeout, TimeoutError)):
            raise SynopsisError(f"LLM endpoint {endpoint} timed out: no reply within {timeout:g} s "
                                f"(raise it with --llm-timeout)") from None
        raise SynopsisError(f"LLM endpoint {endpoint} unreachable: {reason}") from None
    if isinstance(e, http.client.IncompleteRead):
        got = len(e.partial or b"")
        raise SynopsisError(f"LLM endpoint {endpoint} closed the connection in the middle of its reply "
                            f"(got {got} bytes{f', {e.expected} more expected' if e.expected else ''})") from None
    if isinstance(e, (http.client.HTTPException, OSError)):
        raise SynopsisError(f"LLM endpoint {endpoint} broke off its reply: {type(e).__name__}: {e}") from None
    if e is not None:
        raise e
    raw, status = box["raw"], box["status"]
    if status != 200:
        raise SynopsisError(f"LLM endpoint {endpoint} returned HTTP {status}")
    try:
        data = json.loads(raw.decode("utf-8"))
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SynopsisError(f"LLM endpoint {endpoint} sent no chat completion "
                            f"(body: {raw[:200].decode('utf-8', 'replace')!r})") from None
    if not isinstance(content, str):
        raise SynopsisError(f"LLM endpoint {endpoint} sent a non-text message content")
    return content


def llm_synopsis(prompt: str, num_states: int = 5, *, url: str | None = None,
                 model: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 template: str | None = None, temperature: float = 0.0,
                 style_suffix: str | None = None) -> list[str]:
    """Ask an OpenAI-compatible chat endpoint for ``num_states`` visual states."""
    url = url or os.environ.get(ENV_URL)
    model = model or os.environ.get(ENV_MODEL)
    api_key = api_key if api_key is not None else os.environ.get(ENV_KEY)
    if not url:
        raise SynopsisError(f"no LLM endpoint: pass url= or set {ENV_URL}")
    if not model:
        raise SynopsisError(f"no LLM model name: pass model= or set {ENV_MODEL}")
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise SynopsisError(f"LLM timeout must be a number of seconds, got {timeout!r}") from None
    if not timeout > 0 or timeout != timeout:
        raise SynopsisError(f"LLM timeout must be > 0 seconds, got {timeout!r}")
    reply = chat_completion(build_messages(prompt, num_states, template), url=url, model=model,
                            api_key=api_key, timeout=timeout, temperature=temperature)
    return ensure_suffix(_as_many(parse_states(reply), num_states, "the LLM"), style_suffix)


def _as_many(states: list[str], num_states: int, who: str) -> list[str]:
    """The states a model wrote, refused unless there are exactly as many as asked for."""
    if len(states) != int(num_states):
        raise SynopsisError(f"{who} wrote {len(states)} visual states, asked for {num_states}: "
                            f"{'; '.join(s[:40] for s in states)}")
    return states


# ----------------------------------------------------------------------------- local LM
def local_lm_synopsis(prompt: str, num_states: int = 5, *, model_path: str | os.PathLike,
                      max_new_tokens: int = 512, template: str | None = None,
                      style_suffix: str | None = None) -> list[str]:
    """Generate the synopsis with a local transformers causal LM (greedy, no download)."""
    p = pathlib.Path(model_path)
    if not p.is_dir():
        raise SynopsisError(f"local LM directory not found: {p}")
    try:
        import torch  # noqa: PLC0415
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415
    except ImportError as e:
        raise SynopsisError(f"local LM synopsis needs torch and transformers: {e}") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise SynopsisError(f"cannot load a causal LM from {p}: {str(e).splitlines()[0]}") from None
    lm.eval()
    messages = build_messages(prompt, num_states, template)
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = messages[-1]["content"] + "\n"
    enc = tok(text, return_tensors="pt")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return ensure_suffix(_as_many(parse_states(reply), num_states, "the local LM"), style_suffix)
