"""Prompts for repeated matrix games: the rules, the payoffs in words, the history, a question.

Follows the layout of Akata et al. (2023) and the recommendations collected for Riemer et al.
(2024): every payoff spelled out as a sentence, one sentence per past round with both actions and
both payoffs, the option order shuffled (seeded) to control position bias, and optionally the
action names replaced by arbitrary letters (Akata's J/F) to control label bias. The exact prompt
text of Riemer et al. is not public; these prompts are ours.

Three strategies (Riemer et al.'s families, reduced to the ones that need no extra machinery):
``plain`` asks for the action; ``cot`` asks to reason step by step first; ``social`` asks for a
prediction of the partner's action and then the agent's own action in one answer. For ``plain``
and ``cot`` the prediction (literal theory of mind) is a separate probe question whose answer
never enters the acting context, so measuring it does not change how the agent acts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.llm.parsing import tagged

__all__ = [
    "STRATEGIES",
    "Query",
    "Round",
    "GameText",
    "make_labels",
    "build_queries",
]

STRATEGIES = ("plain", "cot", "social")
LETTERS = "BCDFGHJKLMNPQRSTVWXZ"  # consonants: no one-letter English words ('A', 'I')

SYSTEM = (
    "You are a player in a repeated two-player game. Your goal is to win as many points as "
    "possible over all rounds. Always end your reply in the exact format you are asked for."
)


@dataclass(frozen=True)
class Query:
    """One question to a backend: chat messages plus what a valid answer looks like.

    tags: the answer fields, in order (``("action",)``, ``("prediction",)`` or both).
    labels: per tag, action id -> label (what parsing maps an answer back to).
    choices: every complete valid answer, for backends that can constrain decoding to them.
    reason_first: free text (chain of thought) is wanted before the tagged answer.
    """

    kind: str  # act | predict | social
    messages: tuple[dict[str, str], ...]
    tags: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    choices: tuple[str, ...]
    reason_first: bool = False

    def with_messages(self, messages: Sequence[dict[str, str]]) -> Query:
        return Query(
            self.kind, tuple(messages), self.tags, self.labels, self.choices, self.reason_first
        )


@dataclass(frozen=True)
class Round:
    """A finished round from the agent's point of view (indices into the game's actions)."""

    action: int
    partner_action: int
    reward: float
    partner_reward: float


@dataclass(frozen=True)
class GameText:
    """What the prompt needs to know about the game."""

    labels: tuple[str, ...]  # displayed label of each agent action (index = action id)
    partner_labels: tuple[str, ...]  # the same for the partner (equal in symmetric games)
    payoffs: np.ndarray  # [n_actions, n_partner_actions, 2]: (agent, partner) points
    rounds: int  # rounds per game

    @property
    def symmetric(self) -> bool:
        return self.labels == self.partner_labels

    def labels_for(self, tag: str) -> tuple[str, ...]:
        return self.partner_labels if tag == "prediction" else self.labels


def make_labels(
    actions: Sequence[str], partner_actions: Sequence[str], mode: str, rng: np.random.Generator
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(agent, partner) labels: the game's own names, or distinct random letters (seeded).

    Letters are shared where the two players' action names are the same, so a symmetric game
    stays symmetric in the prompt.
    """
    if mode == "names":
        return tuple(map(str, actions)), tuple(map(str, partner_actions))
    if mode != "letters":
        raise ValueError(f"labels={mode!r}: expected 'names' or 'letters'")
    names = list(dict.fromkeys([*actions, *partner_actions]))
    if len(names) > len(LETTERS):
        raise ValueError(f"labels=letters supports at most {len(LETTERS)} distinct actions")
    picked = rng.choice(len(LETTERS), size=len(names), replace=False)
    letter = {n: LETTERS[i] for n, i in zip(names, picked)}
    return tuple(letter[a] for a in actions), tuple(letter[a] for a in partner_actions)


def _points(x: float) -> str:
    x = float(x)
    return f"{int(x)}" if x.is_integer() else f"{x:g}"


def _or_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def rules_text(game: GameText, order: Sequence[int], partner_order: Sequence[int]) -> str:
    """The rules and the full payoff matrix in words, options listed in the given orders."""
    names = [game.labels[i] for i in order]
    lines = [
        f"You are playing a game repeatedly with another player, {game.rounds} rounds in total."
    ]
    if game.symmetric:
        lines.append(
            "In each round you and the other player each choose one action, at the same time, "
            f"from: {', '.join(names)}."
        )
    else:
        theirs = [game.partner_labels[i] for i in partner_order]
        lines.append(
            "In each round you and the other player each choose one action, at the same time. "
            f"You choose from: {', '.join(names)}. The other player chooses from: "
            f"{', '.join(theirs)}."
        )
    lines.append("The points of one round:")
    for a in order:
        for b in partner_order:
            mine, theirs = game.payoffs[a, b]
            lines.append(
                f"- If you choose {game.labels[a]} and the other player chooses "
                f"{game.partner_labels[b]}, you win {_points(mine)} points and the other player wins "
                f"{_points(theirs)} points."
            )
    return "\n".join(lines)


def history_text(game: GameText, history: Sequence[Round], window: int) -> str:
    """One sentence per past round (the last `window` rounds if window > 0)."""
    if not history:
        return "No rounds have been played yet."
    start = max(0, len(history) - window) if window > 0 else 0
    lines = []
    if start > 0:
        lines.append(f"(Rounds 1 to {start} are not shown; these are the last {window}.)")
    total = sum(r.reward for r in history)
    for t in range(start, len(history)):
        r = history[t]
        lines.append(
            f"In round {t + 1}, you chose {game.labels[r.action]} and the other player chose "
            f"{game.partner_labels[r.partner_action]}. You won {_points(r.reward)} points and the other "
            f"player won {_points(r.partner_reward)} points."
        )
    lines.append(f"Your total so far: {_points(total)} points.")
    return "\n".join(lines)


def _question(kind: str, mine: str, theirs: str, cot: bool) -> str:
    if kind == "act":
        ask = f"Which action do you choose in this round: {mine}?"
        fmt = f"Answer with {tagged('action', 'X')}, where X is your action."
    elif kind == "predict":
        ask = f"Which action will the other player choose in this round: {theirs}?"
        fmt = f"Answer with {tagged('prediction', 'X')}, where X is their action."
    else:  # social: predict, then act, in one context
        ask = (
            "First predict which action the other player will choose in this round "
            f"({theirs}), then choose your own action ({mine})."
        )
        fmt = (
            f"Answer with {tagged('prediction', 'X')}{tagged('action', 'Y')}, where X is "
            "their predicted action and Y is your action."
        )
    if cot:
        return f"{ask}\nThink step by step, then end your reply with your final answer. {fmt}"
    return f"{ask}\n{fmt}"


def _choices(kind: str, mine: Sequence[str], theirs: Sequence[str]) -> tuple[str, ...]:
    if kind == "act":
        return tuple(tagged("action", x) for x in mine)
    if kind == "predict":
        return tuple(tagged("prediction", x) for x in theirs)
    return tuple(tagged("prediction", x) + tagged("action", y) for x in theirs for y in mine)


_TAGS = {"act": ("action",), "predict": ("prediction",), "social": ("prediction", "action")}


def build_queries(
    game: GameText,
    history: Sequence[Round],
    strategy: str,
    order: Sequence[int],
    partner_order: Sequence[int] | None = None,
    window: int = 0,
    system: bool = True,
) -> list[Query]:
    """This round's questions: [act, predict] for plain/cot, [social] for social."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {', '.join(STRATEGIES)}")
    partner_order = order if partner_order is None else partner_order
    mine = [game.labels[i] for i in order]
    theirs = [game.partner_labels[i] for i in partner_order]
    context = (
        f"{rules_text(game, order, partner_order)}\n\n{history_text(game, history, window)}\n\n"
        f"You are now playing round {len(history) + 1} of {game.rounds}."
    )
    kinds = ["social"] if strategy == "social" else ["act", "predict"]
    cot = strategy == "cot"
    queries = []
    for kind in kinds:
        user = f"{context}\n{_question(kind, _or_list(mine), _or_list(theirs), cot)}"
        messages = ([{"role": "system", "content": SYSTEM}] if system else []) + [
            {"role": "user", "content": user}
        ]
        queries.append(
            Query(
                kind,
                tuple(messages),
                _TAGS[kind],
                tuple(game.labels_for(t) for t in _TAGS[kind]),
                _choices(kind, mine, theirs),
                cot,
            )
        )
    return queries
