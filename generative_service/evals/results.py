"""A study's results from its votes: win rates, strengths, agreement, position bias, raters.

Arm pairs are reported in arm order (first, second); a vote's `winner` is an arm index or None
for a tie. Attention checks (the same image twice) only grade raters: the right answer is a tie
(or a skip); a rater who picks a side on more than the study's `attention_fail_limit` share of
the checks they answered is flagged, and flagged raters' votes are left out unless asked for.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections import defaultdict

from generative_service.evals import stats
from generative_service.evals.study import StudyRecord

CSV_COLUMNS = ("at", "rater", "pair_id", "prompt_index", "prompt", "seed", "check", "left_arm",
               "right_arm", "choice", "winner_arm", "reason")  # fmt: skip
MIN_SHARED_FOR_COHEN = 2


def winner(vote: dict) -> int | None:
    """The arm index the vote picked; None for a tie or a skip."""
    if vote["choice"] == "left":
        return vote["left_arm"]
    if vote["choice"] == "right":
        return vote["right_arm"]
    return None


def rater_summary(record: StudyRecord, votes: list[dict]) -> dict[str, dict]:
    raters: dict[str, dict] = defaultdict(
        lambda: {"votes": 0, "skips": 0, "checks": 0, "checks_failed": 0, "flagged": False}
    )
    for vote in votes:
        rater = raters[vote["rater"]]
        rater["votes"] += 1
        rater["skips"] += vote["choice"] == "skip"
        if vote["check"] and vote["choice"] != "skip":
            rater["checks"] += 1
            rater["checks_failed"] += vote["choice"] in ("left", "right")
    for rater in raters.values():
        rater["flagged"] = (
            rater["checks"] > 0
            and rater["checks_failed"] / rater["checks"] > record.attention_fail_limit
        )
    return dict(raters)


def compute(
    record: StudyRecord,
    votes: list[dict],
    *,
    include_flagged: bool = False,
    difference: float = 0.1,
    bootstrap_samples: int = 200,
) -> dict:
    """Everything GET /v1/evals/{id}/results returns (see docs/evaluation.md)."""
    raters = rater_summary(record, votes)
    counted = [
        vote
        for vote in votes
        if not vote["check"]
        and vote["choice"] != "skip"
        and (include_flagged or not raters[vote["rater"]]["flagged"])
    ]
    arm_names = [arm.name for arm in record.arms]
    return {
        "study_id": record.id,
        "arms": arm_names,
        "votes": {
            "total": len(votes),
            "counted": len(counted),
            "skips": sum(vote["choice"] == "skip" for vote in votes),
            "attention_checks": sum(vote["check"] for vote in votes),
            "from_flagged_raters": sum(raters[v["rater"]]["flagged"] for v in votes),
            "include_flagged": include_flagged,
        },
        "pairs": _pairs(arm_names, counted, difference),
        "bradley_terry": _bradley_terry(arm_names, counted, bootstrap_samples),
        "per_prompt": [
            {
                "prompt_index": index,
                "prompt": prompt,
                "pairs": _pairs(arm_names, [v for v in counted if v["prompt"] == index], None),
            }
            for index, prompt in enumerate(record.prompts)
        ],
        "agreement": _agreement(counted),
        "position_bias": _position_bias(counted),
        "votes_needed": {
            "difference": difference,
            "decisive_votes": stats.votes_needed(difference),
            "note": "decisive votes per arm pair to tell a win rate of 0.5 + difference from 0.5 (alpha 0.05, power 0.8)",
        },
        "raters": [{"rater": name, **summary} for name, summary in sorted(raters.items())],
    }


def _pairs(arm_names: list[str], votes: list[dict], difference: float | None) -> list[dict]:
    out = []
    needed = stats.votes_needed(difference) if difference else None
    for first, second in itertools.combinations(range(len(arm_names)), 2):
        relevant = [v for v in votes if {v["left_arm"], v["right_arm"]} == {first, second}]
        wins = sum(winner(v) == first for v in relevant)
        losses = sum(winner(v) == second for v in relevant)
        decisive = wins + losses
        interval = stats.wilson_interval(wins, decisive)
        entry = {
            "arms": [arm_names[first], arm_names[second]],
            "wins": [wins, losses],
            "ties": len(relevant) - decisive,
            "decisive": decisive,
            "win_rate": wins / decisive if decisive else None,
            "win_rate_ci95": list(interval) if interval else None,
            "p_value": stats.binomial_p_value(wins, decisive),
        }
        if needed is not None:
            entry["more_votes_needed"] = max(0, needed - decisive)
        out.append(entry)
    return out


def _bradley_terry(arm_names: list[str], votes: list[dict], samples: int) -> dict | None:
    if len(arm_names) <= 2:
        return None
    outcomes = []
    for vote in votes:
        first, second = sorted((vote["left_arm"], vote["right_arm"]))
        picked = winner(vote)
        outcomes.append(
            (first, second, 1.0 if picked == first else 0.0 if picked == second else 0.5)
        )
    point, lower, upper = stats.bradley_terry_bootstrap(outcomes, len(arm_names), samples=samples)
    return {
        "note": "strengths sum to 1; P(i beats j) = s_i / (s_i + s_j); ties count half; percentile bootstrap over votes",
        "arms": [
            {"arm": name, "strength": float(point[i]), "ci95": [float(lower[i]), float(upper[i])]}
            for i, name in enumerate(arm_names)
        ],
    }


def _agreement(votes: list[dict]) -> dict:
    """Kappa over categories first-arm / second-arm / tie of the same pair, raters as coders."""
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for vote in votes:
        picked = winner(vote)
        first = min(vote["left_arm"], vote["right_arm"])
        by_pair[vote["pair_id"]][vote["rater"]] = (
            "tie" if picked is None else "first" if picked == first else "second"
        )
    shared = [ratings for ratings in by_pair.values() if len(ratings) >= 2]
    cohen = []
    raters = sorted({rater for ratings in by_pair.values() for rater in ratings})
    for a, b in itertools.combinations(raters, 2):
        common = [r for r in by_pair.values() if a in r and b in r]
        if len(common) >= MIN_SHARED_FOR_COHEN:
            kappa = stats.cohen_kappa([r[a] for r in common], [r[b] for r in common])
            cohen.append({"raters": [a, b], "items": len(common), "kappa": kappa})
    return {
        "fleiss_kappa": stats.fleiss_kappa([list(r.values()) for r in shared]),
        "items": len(shared),
        "raters": len(raters),
        "cohen": cohen,
    }


def _position_bias(votes: list[dict]) -> dict:
    left = sum(vote["choice"] == "left" for vote in votes)
    decisive = sum(vote["choice"] in ("left", "right") for vote in votes)
    interval = stats.wilson_interval(left, decisive)
    return {
        "left_wins": left,
        "decisive": decisive,
        "left_share": left / decisive if decisive else None,
        "left_share_ci95": list(interval) if interval else None,
        "p_value": stats.binomial_p_value(left, decisive),
    }


def to_csv(record: StudyRecord, votes: list[dict]) -> str:
    """Every vote as CSV (arm names revealed), oldest first."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for vote in votes:
        writer.writerow(export_row(record, vote))
    return buffer.getvalue()


def export_row(record: StudyRecord, vote: dict) -> dict:
    picked = winner(vote)
    return {
        "at": vote["at"],
        "rater": vote["rater"],
        "pair_id": vote["pair_id"],
        "prompt_index": vote["prompt"],
        "prompt": record.prompts[vote["prompt"]],
        "seed": record.seeds[vote["seed"]],
        "check": vote["check"],
        "left_arm": record.arms[vote["left_arm"]].name,
        "right_arm": record.arms[vote["right_arm"]].name,
        "choice": vote["choice"],
        "winner_arm": record.arms[picked].name if picked is not None else "",
        "reason": vote["reason"],
    }
