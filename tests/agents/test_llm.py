"""The LLM agent adapter: parsing, prompts, retries, the OpenAI-compatible and HF backends,
full 100-round games through `agents.tom_eval`, and that the API key never leaks."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.llm.backends import (
    FatalBackendError,
    OpenAIBackend,
    OpenAIConfig,
    RejectedError,
    TransientError,
)
from agents.llm.parsing import parse_choice
from agents.llm.policy import LLMAgentConfig, LLMPolicy, matrix_obs_partner, partner_from_reward
from agents.llm.prompts import GameText, Round, build_queries, make_labels
from agents.llm.retry import RetryConfig, ask
from envs.matrix_games import GAMES
from tests.agents.openai_stub_server import Garbage, Reply, Slow, Status, StubServer

RPS = ("rock", "paper", "scissors")
SECRET = "sk-test-DO-NOT-LEAK-5f1c2a"
REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = RetryConfig(backoff_s=0.001, max_backoff_s=0.01, deadline_s=5.0)


def rps_text(labels=RPS) -> GameText:
    return GameText(tuple(labels), tuple(labels), GAMES["rps"].payoffs, rounds=100)


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<action>Paper</action>", 1),
        ("I like rock. <action> scissors </action>", 2),
        ("<action>rock</action> no wait <action>paper</action>", 1),  # last tag wins
        ("<ACTION>Option Rock</ACTION>", 0),
        ("Action: paper", 1),
        ("**Action**: scissors.", 2),
        ("<action>Rock", 0),  # unclosed tag
        ("Paper", 1),
        ("  'scissors'. ", 2),
        ("I will go with paper this time", 1),  # the only label named
        ("rock or paper?", None),  # two labels, no tag
        ("<action>lizard</action> paper", None),  # a tag with a wrong label is not an answer
        ("", None),
        ("papers", None),  # not a whole word
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text, "action", RPS) == expected


def test_parse_joint_answer_is_strict_per_tag():
    text = "<prediction>rock</prediction><action>paper</action>"
    assert parse_choice(text, "prediction", RPS, lenient=False) == 0
    assert parse_choice(text, "action", RPS, lenient=False) == 1
    # Without the tag, a joint answer's labels must not be taken for the missing field.
    assert parse_choice("<prediction>rock</prediction>", "action", RPS, lenient=False) is None


def test_parse_prefers_longest_label():
    labels = ("def", "defect")
    assert parse_choice("<action>defect</action>", "action", labels) == 1
    assert parse_choice("action: defect", "action", labels) == 1


# ------------------------------------------------------------------------------------ prompts
def test_prompt_has_rules_payoffs_and_history():
    game = GameText(("cooperate", "defect"), ("cooperate", "defect"), GAMES["pd"].payoffs, 100)
    history = [Round(0, 1, 0.0, 10.0), Round(1, 1, 5.0, 5.0)]
    (act, predict) = build_queries(game, history, "plain", [1, 0])
    user = act.messages[-1]["content"]
    assert "100 rounds" in user and "round 3 of 100" in user
    assert "If you choose cooperate and the other player chooses defect, you win 0 points" in user
    assert "If you choose defect and the other player chooses cooperate, you win 10 points" in user
    assert "In round 1, you chose cooperate and the other player chose defect." in user
    assert "You won 5 points and the other player won 5 points." in user
    assert user.index("defect, cooperate") >= 0  # the given option order
    assert act.tags == ("action",) and predict.tags == ("prediction",)
    assert "<prediction>X</prediction>" in predict.messages[-1]["content"]
    assert "<action>X</action>" not in predict.messages[-1]["content"]
    assert set(act.choices) == {"<action>cooperate</action>", "<action>defect</action>"}


def test_prompt_strategies_and_window():
    history = [Round(t % 3, (t + 1) % 3, 0.0, 0.0) for t in range(30)]
    (social,) = build_queries(rps_text(), history, "social", [0, 1, 2], window=5)
    user = social.messages[-1]["content"]
    assert social.tags == ("prediction", "action") and len(social.choices) == 9
    assert "In round 26," in user and "In round 25," not in user and "not shown" in user
    cot = build_queries(rps_text(), history, "cot", [0, 1, 2])
    assert all(q.reason_first and "step by step" in q.messages[-1]["content"] for q in cot)
    with pytest.raises(ValueError, match="strategy"):
        build_queries(rps_text(), history, "oracle", [0, 1, 2])


def test_letter_labels_are_seeded_and_distinct():
    a = make_labels(RPS, RPS, "letters", np.random.default_rng(3))
    b = make_labels(RPS, RPS, "letters", np.random.default_rng(3))
    assert a == b and a[0] == a[1] and len(set(a[0])) == 3
    mine, theirs = make_labels(("x", "y"), ("y", "z"), "letters", np.random.default_rng(0))
    assert mine[1] == theirs[0] and len({*mine, *theirs}) == 3


def test_partner_decoding():
    decode = matrix_obs_partner(3)
    assert decode(np.array([3, 3])) is None  # padding before the first round
    assert decode(np.array([0, 2, 1, 0])) == 0
    assert partner_from_reward(GAMES["rps"].payoffs, 0, 1.0) == 2  # rock beat scissors
    ambiguous = np.zeros((2, 2, 2))
    assert partner_from_reward(ambiguous, 0, 0.0) is None


# ---------------------------------------------------------------------------- OpenAI backend
def _query():
    return build_queries(rps_text(), [], "plain", [0, 1, 2])[0]


def test_openai_backend_request_and_errors(monkeypatch):
    monkeypatch.setenv("ICRL_TEST_KEY", SECRET)
    script = [None, Status(500), Status(429), Status(400), Status(401), Garbage(), Slow(2.0)]
    with StubServer(lambda n, body: script[n] if n < len(script) else None) as srv:
        cfg = OpenAIConfig(base_url=srv.url, key_env="ICRL_TEST_KEY", timeout_s=0.3)
        backend = OpenAIBackend(cfg, "stub-model", seed=7)
        ans = backend.answer(_query())
        assert parse_choice(ans.text, "action", RPS) is not None
        assert ans.info["usage"]["total_tokens"] == 15
        body = srv.requests[0]
        assert body["model"] == "stub-model" and body["seed"] == 7
        assert body["messages"][0]["role"] == "system" and body["temperature"] == 0.0
        assert srv.auth[0] == f"Bearer {SECRET}"
        for err in (TransientError, TransientError, RejectedError, FatalBackendError):
            with pytest.raises(err) as info:
                backend.answer(_query())
            assert SECRET not in str(info.value)
        with pytest.raises(TransientError, match="malformed"):
            backend.answer(_query())
        start = time.monotonic()
        with pytest.raises(TransientError, match="timeout"):
            backend.answer(_query())
        assert time.monotonic() - start < 1.5
        assert SECRET not in repr(backend)


def test_openai_constrained_choice_body():
    cfg = OpenAIConfig(base_url="http://127.0.0.1:1/v1", constrained="structured_outputs")
    act, _ = build_queries(rps_text(), [], "plain", [0, 1, 2])
    body = OpenAIBackend(cfg, "m").request_body(act)
    assert body["structured_outputs"]["choice"] == list(act.choices)
    cot = build_queries(rps_text(), [], "cot", [0, 1, 2])[0]
    assert "structured_outputs" not in OpenAIBackend(cfg, "m").request_body(cot)
    extra = {"max_tokens": None, "max_completion_tokens": 9, "top_k": 1}
    body = OpenAIBackend(OpenAIConfig(extra_body=extra), "m").request_body(act)
    assert "max_tokens" not in body and body["max_completion_tokens"] == 9 and body["top_k"] == 1
    with pytest.raises(ValueError, match="constrained"):
        OpenAIConfig(constrained="maybe")


# ------------------------------------------------------------------------------------- retries
def test_ask_reasks_unparseable_answers_with_feedback():
    script = [Reply("hmm, hard to say"), Reply("<action>banana</action>"), None]
    with StubServer(lambda n, body: script[n] if n < len(script) else None) as srv:
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url), "m")
        out = ask(backend, _query(), FAST_RETRY, rng=random.Random(0))
        assert out.values["action"] is not None
        assert (out.invalid, out.parse_retries, out.net_retries) == (2, 2, 0)
        last = srv.requests[-1]["messages"]
        assert [m["role"] for m in last[-4:]] == ["assistant", "user", "assistant", "user"]
        assert "could not be read" in last[-1]["content"] and "banana" in last[-2]["content"]


def test_ask_gives_up_within_budget():
    with StubServer(lambda n, body: Reply("no idea")) as srv:
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url), "m")
        out = ask(backend, _query(), FAST_RETRY)
        assert out.values == {"action": None} and out.invalid == 3 and not out.net_failed
    with StubServer(lambda n, body: Status(503)) as srv:
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url), "m")
        out = ask(backend, _query(), RetryConfig(net_retries=3, backoff_s=0.001))
        assert out.net_failed and out.net_retries == 3 and len(srv.requests) == 4
    with StubServer(lambda n, body: Slow(1.0)) as srv:  # every answer slower than the timeout
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url, timeout_s=0.1), "m")
        start = time.monotonic()
        out = ask(backend, _query(), RetryConfig(net_retries=10, backoff_s=0.01, deadline_s=0.5))
        assert out.net_failed and time.monotonic() - start < 1.0
        assert any("timeout" in a.get("error", "") for a in out.attempts)


# --------------------------------------------------------------------------------- HF backend
def build_tiny_lm(folder: Path, game_name: str = "rps", n_positions: int = 4096) -> Path:
    """A randomly initialised 2-layer GPT-2 and a word-level tokenizer, built offline."""
    pytest.importorskip("transformers")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    game = GAMES[game_name]
    text = GameText(game.actions, game.partner_actions, game.payoffs, 100)
    history = [Round(0, 0, 0.0, 0.0)] * 3
    corpus = ["System: User: Assistant: 0 1 2 3 4 5 6 7 8 9 - ."]
    for strategy in ("plain", "cot", "social"):
        for q in build_queries(text, history, strategy, list(range(game.n_actions)), window=2):
            corpus += [m["content"] for m in q.messages] + list(q.choices)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=n_positions, n_embd=32, n_layer=2,
        n_head=2, bos_token_id=1, eos_token_id=1,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_gpt2"))


def test_hf_backend_answers_are_always_valid(tiny_lm):
    from agents.llm.backends import HFBackend, HFConfig

    backend = HFBackend(HFConfig(cot_max_tokens=8), tiny_lm)
    assert backend.model == tiny_lm.name
    history = [Round(t % 3, (t + 2) % 3, 0.0, 0.0) for t in range(10)]
    for strategy in ("plain", "cot", "social"):
        for q in build_queries(rps_text(), history, strategy, [2, 0, 1]):
            ans = backend.answer(q)
            assert ans.text.endswith(tuple(q.choices)) and ans.info["constrained"]
            probs = ans.info["branch_probs"]
            assert len(probs) == len(q.tags)  # one branching forward pass per answer field
            assert all(abs(sum(p.values()) - 1) < 1e-3 for p in probs)
    # A tokenizer with a chat template (instruct models) renders the messages with it.
    backend.tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
    )
    q = build_queries(rps_text(), history, "plain", [0, 1, 2])[0]
    assert backend._prompt_text(q.messages).startswith("<|system|>You are a player")
    assert backend.answer(q).text in q.choices


def test_hf_backend_truncates_long_prompts(tmp_path):
    from agents.llm.backends import HFBackend, HFConfig

    backend = HFBackend(HFConfig(), build_tiny_lm(tmp_path / "short", n_positions=64))
    q = build_queries(rps_text(), [Round(0, 1, -1.0, 1.0)] * 50, "social", [0, 1, 2])[0]
    ans = backend.answer(q)
    assert ans.info["truncated_tokens"] > 0 and ans.text in q.choices


def test_hf_backend_missing_path_is_fatal(tmp_path):
    pytest.importorskip("transformers")
    from agents.llm.backends import HFBackend, HFConfig

    with pytest.raises(FatalBackendError, match="does not exist"):
        HFBackend(HFConfig(), tmp_path / "nope")


# --------------------------------------------------------------------- full games (tom_eval)
def _steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_log_matches_rows(log: list[dict], rows: list[dict], rounds: int) -> None:
    """The per-step log alone recomputes the table's reward and ToM accuracy."""
    for k, row in enumerate(rows):
        mine = [r for r in log if r["env"] == k]
        assert [r["round"] for r in mine] == list(range(1, rounds + 1))
        assert np.isclose(np.mean([r["reward"] for r in mine]), row["mean_reward"])
        correct = [r["prediction"] == r["partner_action"] for r in mine]
        assert np.isclose(np.mean(correct), row["tom_accuracy"])


def _script_with_failures(n: int, body: dict):
    """Round 7's action question never gets a readable answer, round 13's prediction question
    never gets through (HTTP 500); elsewhere a mix of valid, malformed, 500, garbage and slow."""
    last = body["messages"][-1]["content"]
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    if "playing round 7 of" in first_user and "<action>" in first_user:
        return Reply("I refuse to choose.")
    if "playing round 13 of" in first_user and "<prediction>" in first_user:
        return Status(500)
    if "could not be read" in last:
        return None  # a re-ask gets a good answer
    if n % 40 == 39:
        return Slow(0.3)  # beyond the client's timeout
    return [None, None, Reply("hmm"), Status(500), None, Garbage(), Slow(0.01), None][n % 8]


def test_openai_full_games_survive_failures(tmp_path, monkeypatch):
    from agents.tom_eval import COLUMNS, play_games

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    log_path = tmp_path / "steps.jsonl"
    retry = RetryConfig(invalid_retries=2, net_retries=2, backoff_s=0.001, deadline_s=3.0)
    cfg = LLMAgentConfig(strategy="plain", retry=retry)
    game = GAMES["rps"]
    with StubServer(_script_with_failures) as srv:
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url, timeout_s=0.1), "stub-model")
        policy = LLMPolicy(
            backend, game, cfg, rounds=100, seed=0, log_path=log_path,
            partner_of=matrix_obs_partner(game.n_partner_actions),
        )  # fmt: skip
        rows = play_games(lambda: policy, "rps", "tit_for_tat", [0, 1], 100, "llm:openai:stub")
        policy.close()
        assert set(srv.auth) == {f"Bearer {SECRET}"}
    assert len(rows) == 2 and all(tuple(r) == COLUMNS for r in rows)
    log = _steps(log_path)
    _check_log_matches_rows(log, rows, 100)
    for k, row in enumerate(rows):
        assert row["agent"] == "llm:openai:stub" and row["rounds"] == 100
        r7 = next(r for r in log if r["env"] == k and r["round"] == 7)
        r13 = next(r for r in log if r["env"] == k and r["round"] == 13)
        assert r7["action_fallback"] and r7["questions"][0]["invalid"] == 3
        assert r13["prediction"] == -1 and r13["questions"][1]["net_failed"]
        assert row["invalid_answers"] >= 2  # the two fallbacks above, at least
        assert row["retries"] > 10  # re-asks and network re-tries elsewhere
    assert policy.stats["net_retries"] > 0 and policy.stats["parse_retries"] > 0
    errors = [a.get("error", "") for r in log for q in r["questions"] for a in q["attempts"]]
    assert any("timeout" in e for e in errors) and any("HTTP 500" in e for e in errors)
    assert any("malformed" in e for e in errors)
    assert SECRET not in log_path.read_text()


def test_hf_full_games(tiny_lm, tmp_path):
    from agents.llm.backends import HFBackend, HFConfig
    from agents.tom_eval import COLUMNS, play_games

    game = GAMES["rps"]
    backend = HFBackend(HFConfig(), tiny_lm, seed=0)
    cfg = LLMAgentConfig(strategy="social", history_window=10)
    log_path = tmp_path / "steps.jsonl"

    def make():
        return LLMPolicy(
            backend, game, cfg, rounds=100, log_path=log_path,
            partner_of=matrix_obs_partner(game.n_partner_actions),
        )  # fmt: skip

    rows = play_games(make, "rps", "constant", [0, 1], 100, f"llm:hf:{backend.model}")
    assert len(rows) == 2 and all(tuple(r) == COLUMNS for r in rows)
    assert all(r["invalid_answers"] == 0 and r["retries"] == 0 for r in rows)
    assert all(r["tom_accuracy"] >= 0 for r in rows)
    _check_log_matches_rows(_steps(log_path), rows, 100)


def test_dead_server_stops_the_run_instead_of_playing_randomly(tmp_path):
    from agents.tom_eval import play_games

    with StubServer() as srv:
        url = srv.url  # closed at once: nothing listens there any more
    retry = RetryConfig(net_retries=1, backoff_s=0.001, max_failed_in_row=4)
    backend = OpenAIBackend(OpenAIConfig(base_url=url, timeout_s=0.5), "m")
    game = GAMES["pd"]
    policy = LLMPolicy(backend, game, LLMAgentConfig(retry=retry), rounds=10)
    with pytest.raises(FatalBackendError, match="in a row"):
        play_games(lambda: policy, "pd", "tit_for_tat", [0], 10, "llm:openai:m")
    with StubServer(lambda n, body: Status(401, "bad key")) as srv:
        backend = OpenAIBackend(OpenAIConfig(base_url=srv.url), "m")
        policy = LLMPolicy(backend, game, LLMAgentConfig(retry=retry), rounds=10)
        with pytest.raises(FatalBackendError, match="401"):
            play_games(lambda: policy, "pd", "tit_for_tat", [0], 10, "llm:openai:m")


# ------------------------------------------------------------------------------------- CLI
def run_llm(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": SECRET}
    cmd = [
        sys.executable, "-m", "agents.llm", *args, "logger.mode=disabled",
        f"results_dir={tmp / 'results'}", f"run_dir={tmp / 'run'}", "train.progress=false",
        "agent.retry.backoff_s=0.001",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_cli_eval_and_sweep_against_a_local_server(tmp_path):
    from agents.tom_eval import read_summary

    script = lambda n, body: Status(500) if n % 11 == 5 else (Reply("hm") if n % 7 == 3 else None)  # noqa: E731
    with StubServer(script) as srv:
        common = ("model=stub", f"backend.base_url={srv.url}", "env.games=2")
        proc = run_llm(tmp_path, "eval", *common, "game=rps", "partner=tit_for_tat")
        assert proc.returncode == 0, proc.stderr[-3000:]
        proc = run_llm(
            tmp_path, "sweep", *common, "env.rounds=10", "agent.strategy=social",
            "sweep.games=[pd]", "sweep.partners=[constant,wsls]",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert set(srv.auth) == {f"Bearer {SECRET}"}
    table = read_summary(tmp_path / "results" / "tom" / "summary.csv")
    assert sorted((r["game"], r["partner"], r["seed"], r["rounds"]) for r in table) == [
        ("pd", "constant", 0, 10), ("pd", "constant", 1, 10), ("pd", "wsls", 0, 10),
        ("pd", "wsls", 1, 10), ("rps", "tit_for_tat", 0, 100), ("rps", "tit_for_tat", 1, 100),
    ]  # fmt: skip
    assert {r["agent"] for r in table} == {"llm:openai:stub"}
    assert sum(r["retries"] for r in table) > 0
    page = (tmp_path / "results" / "tom" / "llm.md").read_text()
    assert "`llm:openai:stub`" in page
    log = _steps(tmp_path / "run" / "llm_steps_stub.jsonl")  # the sweep's log (eval's replaced)
    assert {(r["game"], r["partner"]) for r in log} == {("pd", "constant"), ("pd", "wsls")}
    assert SECRET not in _files_text(tmp_path) and SECRET not in proc.stdout + proc.stderr


def test_cli_hf_backend_and_clear_errors(tiny_lm, tmp_path):
    from agents.tom_eval import read_summary

    proc = run_llm(
        tmp_path, "eval", "backend=hf", f"model={tiny_lm}", "env.games=1",
        "agent.history_window=5", "game=rps", "partner=constant",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = read_summary(tmp_path / "results" / "tom" / "summary.csv")
    assert row["agent"] == f"llm:hf:{tiny_lm.name}" and row["rounds"] == 100
    assert row["invalid_answers"] == 0
    for args, message in [
        (("eval",), "no model given"),
        (("eval", "backend=hf", f"model={tmp_path / 'missing'}"), "does not exist"),
        (("eval", "model=m", "agent.strategy=telepathy"), "strategy"),
    ]:
        bad = run_llm(tmp_path, *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr
