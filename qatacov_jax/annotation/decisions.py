"""Outcomes of a decision and how an image's votes settle it (pure logic, no files).

Paper 1's doctors pick the best candidate, or reject all and draw; paper 2's researchers
label a predicted lung mask accept / reject (then correct it) / unsure (a doctor decides) /
exclude (too poor to segment). Both are outcomes here (docs/annotation.md#post-apiannotatekey-a-decision).
Each annotator's latest non-skip decision is their vote; `resolve` turns the votes of an
image into its state: open, accepted (with the record whose mask is accepted), excluded, or
listed for adjudication.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PICK, CORRECT, DRAW, NO_INFECTION, EXCLUDE, SKIP = (
    "pick",
    "correct",
    "draw",
    "no_infection",
    "exclude",
    "skip",
)
ACCEPT, REJECT, UNSURE = "accept", "reject", "unsure"
OUTCOMES = {
    "infection": (PICK, CORRECT, DRAW, NO_INFECTION, EXCLUDE, SKIP),
    "lung": (ACCEPT, REJECT, UNSURE, EXCLUDE, PICK, CORRECT, DRAW, SKIP),
}
TAKES_CANDIDATE = (PICK, CORRECT, ACCEPT, REJECT)  # required (accept/reject: if several)
TAKES_MASK = (CORRECT, DRAW, REJECT)  # required, never empty
AS_IS = (PICK, ACCEPT)  # the candidate's mask, unchanged
MANUAL = "manual"  # `chosen` of a drawn mask (and the reference candidate's name)

OPEN, ACCEPTED, EXCLUDED, ADJUDICATION = "open", "accepted", "excluded", "adjudication"
STATES = (OPEN, ACCEPTED, EXCLUDED, ADJUDICATION)


class DecisionError(ValueError):
    """A decision that cannot be taken as sent (HTTP 422); the message says why."""


def check(
    outcome: str, target: str, candidate: str | None, has_mask: bool, n_candidates: int
) -> None:
    """Refuses an outcome the target lacks, or a candidate / mask it must (not) have."""
    if outcome not in OUTCOMES[target]:
        raise DecisionError(
            f"outcome {outcome!r} is not one of the {target} outcomes {list(OUTCOMES[target])}"
        )
    single = outcome in (ACCEPT, REJECT) and n_candidates == 1
    if outcome in TAKES_CANDIDATE and candidate is None and not single:
        raise DecisionError(f"outcome {outcome!r} needs the candidate it is about")
    if outcome not in TAKES_CANDIDATE and outcome != UNSURE and candidate is not None:
        raise DecisionError(f"outcome {outcome!r} takes no candidate (got {candidate!r})")
    if outcome in TAKES_MASK and not has_mask:
        raise DecisionError(f"outcome {outcome!r} needs the final mask")
    if outcome not in TAKES_MASK and outcome != UNSURE and has_mask:
        raise DecisionError(f"outcome {outcome!r} takes no mask")


def legacy_outcome(no_infection: bool, candidate: str | None, has_mask: bool) -> str:
    """The outcome of an earlier page's body (`no_infection`, `source`, `mask`)."""
    if no_infection:
        return NO_INFECTION
    if has_mask:
        return DRAW if candidate in (None, MANUAL) else CORRECT
    return PICK


def from_legacy_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A provenance line of the earlier store (`decision`: mask | no_infection, `chosen`)
    as a decision record."""
    if "outcome" in rec:
        return dict(rec)
    chosen = rec.get("chosen") or MANUAL
    outcome = (
        NO_INFECTION
        if rec.get("decision") == "no_infection"
        else (DRAW if chosen == MANUAL else CORRECT)
    )
    return {
        **rec,
        "outcome": outcome,
        "annotator": rec.get("annotator") or "unknown",
        "legacy": True,
    }


def choice(rec: Mapping[str, Any]) -> str:
    """What a vote chose, as compared between annotators: `candidate:<name>` (also when the
    annotator corrected it), `draw:<annotator>`, `no_infection`, `exclude` or `unsure`."""
    outcome = rec["outcome"]
    if outcome in TAKES_CANDIDATE:
        return f"candidate:{rec.get('chosen')}"
    if outcome == DRAW:
        return f"draw:{rec.get('annotator')}"
    return outcome


@dataclasses.dataclass(frozen=True)
class Resolution:
    """An image's state from its decisions.

    Attributes:
      state: one of `STATES`.
      record: the decision whose mask is accepted (accepted) or that excluded the image.
      votes: each annotator's vote, in the order they first voted.
      tally: choice -> votes.
      reason: for adjudication: `tie`, `no majority` or `unsure`.
    """

    state: str
    record: dict[str, Any] | None
    votes: tuple[dict[str, Any], ...]
    tally: dict[str, int]
    reason: str | None = None

    @property
    def outcome(self) -> str | None:
        return None if self.record is None else self.record["outcome"]


def current_votes(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each annotator's latest non-skip, non-adjudicating decision, in first-vote order."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["outcome"] != SKIP and not rec.get("adjudicate"):
            latest[str(rec.get("annotator"))] = dict(rec)  # keeps the first insertion order
    return list(latest.values())


def resolve(records: Sequence[Mapping[str, Any]], votes_needed: int) -> Resolution:
    """The state of one image from all its decisions, oldest first."""
    votes = current_votes(records)
    tally = dict(collections.Counter(choice(v) for v in votes))
    adjudications = [dict(r) for r in records if r.get("adjudicate") and r["outcome"] != SKIP]
    if adjudications:
        return _settled(adjudications[-1], votes, tally)
    if not votes or len(votes) < votes_needed:
        return Resolution(OPEN, None, tuple(votes), tally)
    ranked = collections.Counter(tally).most_common()
    top, count = ranked[0]
    if count * 2 <= len(votes):
        reason = "tie" if len(ranked) > 1 and ranked[1][1] == count else "no majority"
        return Resolution(ADJUDICATION, None, tuple(votes), tally, reason)
    first = next(v for v in votes if choice(v) == top)
    return _settled(first, votes, tally)


def _settled(rec: dict[str, Any], votes: list[dict[str, Any]], tally: dict[str, int]) -> Resolution:
    if rec["outcome"] == UNSURE:
        return Resolution(ADJUDICATION, None, tuple(votes), tally, "unsure")
    state = EXCLUDED if rec["outcome"] == EXCLUDE else ACCEPTED
    return Resolution(state, rec, tuple(votes), tally)
