"""Chat backends: an OpenAI-compatible HTTP endpoint and a local Hugging Face causal LM.

Both answer a `Query` (chat messages + the valid answers) with text. They differ in how they
keep answers valid:

- `OpenAIBackend` speaks ``POST {base_url}/chat/completions`` with the standard library only
  (OpenAI, vLLM, llama.cpp server, Ollama, LM Studio, ... all accept it). It cannot force a
  valid answer on a generic server, so the caller parses tagged text; with
  ``constrained=structured_outputs`` (vLLM >= 0.12) or ``guided_choice`` (older vLLM) it asks
  the server to restrict the reply to the valid answers. One call = one HTTP request: retries
  are the caller's job (`agents.llm.retry`), so that they are bounded and counted in one place.
  The API key comes from an environment variable named in the config and is only ever put in
  the ``Authorization`` header, never in a config, a log line or an exception message.
- `HFBackend` loads ``AutoModelForCausalLM`` from a local path (never downloads) and decodes the
  tagged answer greedily *restricted to the valid answers*: a token trie over the choices, one
  forward pass (with KV cache) per branching token, so every answer is valid by construction
  (Concordia's HF backend scores choices by log-likelihood; this is the greedy-constrained
  equivalent and costs one pass per decision instead of one per choice). Chain-of-thought text
  is sampled freely first, then the tagged answer is decoded the same constrained way.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agents.llm.prompts import Query

__all__ = [
    "Answer",
    "Backend",
    "TransientError",
    "FatalBackendError",
    "OpenAIConfig",
    "OpenAIBackend",
    "HFConfig",
    "HFBackend",
    "render_plain",
]


class TransientError(RuntimeError):
    """A failure worth retrying: timeout, connection error, HTTP 408/409/429/5xx, garbled JSON."""


class FatalBackendError(RuntimeError):
    """A failure no retry will fix (bad URL, no or wrong API key, unknown model): stop the run."""


class RejectedError(RuntimeError):
    """The server refused this one request (e.g. HTTP 400, prompt too long): fall back, go on."""


@dataclass
class Answer:
    """A backend's reply: the text plus what is worth logging (tokens, latency, choice probs)."""

    text: str
    info: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What the policy needs from a model."""

    name: str  # "openai" | "hf"
    model: str  # model id as reported in results (`llm:<name>:<model>`)
    concurrency: int  # how many questions may be in flight at once

    def answer(self, query: Query, timeout_s: float | None = None) -> Answer: ...


# ------------------------------------------------------------------------------------ OpenAI
@dataclass
class OpenAIConfig:
    """``backend=openai``: any server that speaks the OpenAI chat-completions API."""

    name: str = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key)
    timeout_s: float = 60.0  # one HTTP request
    max_tokens: int = 64  # answer length for plain/social questions
    cot_max_tokens: int = 512  # answer length when reasoning first
    temperature: float = 0.0
    seed: bool = True  # send the policy's seed (servers that support it are then repeatable)
    constrained: str = "none"  # none | structured_outputs (vLLM >= 0.12) | guided_choice
    concurrency: int = 8  # parallel requests (one per env)
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into the body; null drops

    def __post_init__(self) -> None:
        if self.constrained not in ("none", "structured_outputs", "guided_choice"):
            raise ValueError(
                f"backend.constrained={self.constrained!r}: expected none, "
                "structured_outputs or guided_choice"
            )


_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404, 405}


class OpenAIBackend:
    """One chat-completions request per `answer` call; errors classified for the retry policy."""

    name = "openai"

    def __init__(self, cfg: OpenAIConfig, model: str, seed: int | None = None) -> None:
        if not model:
            raise ValueError("backend=openai needs a model name: model=NAME")
        self.cfg = cfg
        self.model = model
        self.seed = seed
        self.concurrency = max(1, cfg.concurrency)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.__key = os.environ.get(cfg.key_env, "") if cfg.key_env else ""

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(url={self.url!r}, model={self.model!r})"

    def request_body(self, query: Query) -> dict[str, Any]:
        """The JSON body for `query` (exposed so tests and logs can see exactly what is sent)."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(query.messages),
            "temperature": cfg.temperature,
            "max_tokens": cfg.cot_max_tokens if query.reason_first else cfg.max_tokens,
        }
        if cfg.seed and self.seed is not None:
            body["seed"] = int(self.seed)
        if cfg.constrained != "none" and not query.reason_first:
            if cfg.constrained == "structured_outputs":
                body["structured_outputs"] = {"choice": list(query.choices)}
            else:
                body["guided_choice"] = list(query.choices)
        for key, value in cfg.extra_body.items():  # null removes a field (max_tokens on o1)
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def answer(self, query: Query, timeout_s: float | None = None) -> Answer:
        timeout = self.cfg.timeout_s if timeout_s is None else min(self.cfg.timeout_s, timeout_s)
        data = json.dumps(self.request_body(query)).encode()
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=max(timeout, 1e-3)) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = _error_detail(e)
            if e.code in _FATAL_STATUS:
                raise FatalBackendError(
                    f"{self.url} answered HTTP {e.code} ({detail}): check backend.base_url, "
                    f"the model name and the API key in ${self.cfg.key_env}"
                ) from None
            if e.code in _RETRY_STATUS or e.code >= 500:
                raise TransientError(f"HTTP {e.code}: {detail}") from None
            raise RejectedError(f"HTTP {e.code}: {detail}") from None
        except TimeoutError:
            raise TransientError(f"timeout after {timeout:.1f}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TransientError(f"timeout after {timeout:.1f}s") from None
            raise TransientError(f"connection error: {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:
            raise TransientError(f"connection error: {type(e).__name__}: {e}") from None
        latency = time.monotonic() - start
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise TransientError(f"malformed response body: {raw[:200]!r}") from None
        info: dict[str, Any] = {"latency_s": round(latency, 4)}
        if choice.get("finish_reason"):
            info["finish_reason"] = choice["finish_reason"]
        if isinstance(payload.get("usage"), dict):
            info["usage"] = {
                k: v for k, v in payload["usage"].items() if isinstance(v, (int, float))
            }
        return Answer(text=str(text), info=info)


def _error_detail(e: urllib.error.HTTPError) -> str:
    """A short reason from an error response (its JSON message if any), never the headers."""
    try:
        body = e.read(2000).decode("utf-8", "replace")
        msg = json.loads(body).get("error", body)
        if isinstance(msg, dict):
            msg = msg.get("message", str(msg))
        return str(msg)[:200]
    except Exception:
        return str(e.reason)[:200]


# ---------------------------------------------------------------------------------- HF local
@dataclass
class HFConfig:
    """``backend=hf model=/path``: a local `transformers` causal LM (nothing is downloaded)."""

    name: str = "hf"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 on CUDA, else fp32) | float32 | bfloat16 | float16
    temperature: float = 0.0  # 0: greedy among the valid answers; > 0: sample among them
    cot_max_tokens: int = 256  # free reasoning tokens before the answer (strategy=cot)
    chat_template: bool = True  # use the tokenizer's chat template when it has one
    trust_remote_code: bool = False


def render_plain(messages: Sequence[dict[str, str]]) -> str:
    """Chat messages as plain text, for tokenizers without a chat template (base models)."""
    parts = []
    for m in messages:
        role = {"system": "System", "user": "User", "assistant": "Assistant"}.get(
            m["role"], m["role"].title()
        )
        parts.append(f"{role}: {m['content']}")
    return "\n\n".join(parts) + "\n\nAssistant:"


class HFBackend:
    """Greedy (or sampled) decoding restricted to the valid answers, with a KV cache."""

    name = "hf"
    concurrency = 1  # one model, one forward pass at a time

    def __init__(self, cfg: HFConfig, model: str | Path, seed: int | None = None) -> None:
        path = Path(model)
        if not path.exists():  # checked before the slow imports
            raise FatalBackendError(
                f"backend=hf: model path {str(path)!r} does not exist (this backend loads local "
                "weights only; download them beforehand, e.g. with `hf download`)"
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rl_core.utils import resolve_device

        self.cfg = cfg
        self.model = path.name or str(path)
        self.device = resolve_device(cfg.device)
        dtype = {
            "auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[cfg.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code
        )
        self.lm = AutoModelForCausalLM.from_pretrained(
            str(path),
            local_files_only=True,
            dtype=dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        self.lm.to(self.device).eval()
        self.max_len = _max_positions(self.lm.config)
        self.generator = torch.Generator().manual_seed(int(seed or 0))
        self._torch = torch

    # -- text <-> tokens
    def _prompt_text(self, messages: Sequence[dict[str, str]]) -> str:
        tok = self.tokenizer
        if self.cfg.chat_template and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        return render_plain(messages) + " "

    def _encode(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    # -- decoding
    def answer(self, query: Query, timeout_s: float | None = None) -> Answer:
        torch = self._torch
        prompt = self._prompt_text(query.messages)
        with torch.inference_mode():
            reasoning = ""
            if query.reason_first and self.cfg.cot_max_tokens > 0:
                reasoning = self._generate(prompt, self.cfg.cot_max_tokens)
                cut = [reasoning.find(f"<{t}") for t in query.tags if f"<{t}" in reasoning]
                reasoning = reasoning[: min(cut)] if cut else reasoning
                reasoning = reasoning.rstrip() + "\n"
            idx, info = self._choose(prompt + reasoning, query.choices)
        return Answer(text=reasoning + query.choices[idx], info=info)

    def _truncate(self, ids: list[int], room: int) -> tuple[list[int], int]:
        """Keep the last tokens that fit the model's context, leaving `room` for the answer."""
        if self.max_len and len(ids) + room > self.max_len:
            keep = max(1, self.max_len - room)
            return ids[-keep:], len(ids) - keep
        return ids, 0

    def _generate(self, prompt: str, max_new: int) -> str:
        torch = self._torch
        ids, _ = self._truncate(self._encode(prompt, True), max_new + 64)
        x = torch.tensor([ids], device=self.device)
        sample = self.cfg.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": max_new}
        if sample:
            kwargs["temperature"] = self.cfg.temperature
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        out = self.lm.generate(x, attention_mask=torch.ones_like(x), pad_token_id=pad, **kwargs)
        return self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)

    def _choose(self, prefix: str, choices: Sequence[str]) -> tuple[int, dict[str, Any]]:
        """Index of the choice decoded greedily (or sampled) within the choices' token trie."""
        torch = self._torch
        cands = [self._encode(c, False) for c in choices]
        longest = max(len(c) for c in cands)
        pending, cut = self._truncate(self._encode(prefix, True), longest + 1)
        alive = list(range(len(cands)))
        past = None
        pos = 0
        branches: list[dict[str, float]] = []
        forwards = 0
        while len(alive) > 1:
            ended = [i for i in alive if len(cands[i]) <= pos]
            if ended:  # a choice is a token prefix of another: take the shortest
                alive = ended[:1]
                break
            nxt = sorted({cands[i][pos] for i in alive})
            if len(nxt) == 1:
                pending.append(nxt[0])
                pos += 1
                continue
            out = self.lm(
                input_ids=torch.tensor([pending], device=self.device),
                past_key_values=past,
                use_cache=True,
            )
            forwards += 1
            past = out.past_key_values
            logits = out.logits[0, -1].float()[nxt]
            logp = torch.log_softmax(logits, dim=-1).cpu()
            if self.cfg.temperature > 0:
                probs = torch.softmax(logits.cpu() / self.cfg.temperature, dim=-1)
                k = int(torch.multinomial(probs, 1, generator=self.generator))
            else:
                k = int(torch.argmax(logp))
            chosen = nxt[k]
            branches.append(
                {
                    self.tokenizer.decode([t]): round(float(np.exp(v)), 4)
                    for t, v in zip(nxt, logp.tolist())
                }
            )
            alive = [i for i in alive if cands[i][pos] == chosen]
            pending = [chosen]
            pos += 1
        info: dict[str, Any] = {"constrained": True, "forwards": forwards, "branch_probs": branches}
        if cut:
            info["truncated_tokens"] = cut
        return alive[0], info


def _max_positions(config: Any) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0
