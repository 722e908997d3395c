"""One case's prediction as every surface shows it (page, report, CLI, JSON): the class probabilities, what was
synthesized and how confidently, what the input guard found, and "which test next" in words, with the
checkpoint's evidence for its ranking rule (core/calibration/next_test.py measures it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Prediction:
    prediction: str
    probabilities: dict[str, float]
    present: list[str]
    synthesized: dict[str, dict]
    device: str
    latency_ms: float
    warnings: list[str] = field(default_factory=list)
    ood: dict[str, dict] = field(default_factory=dict)  # per present modality: score, threshold, flagged, reason
    domain: list[str] = field(default_factory=list)  # "modality: contradiction" the user chose to override
    next_test_evidence: dict = field(default_factory=dict)  # the checkpoint's measure of its ranking (next_test_evidence)

    def to_dict(self) -> dict:
        return {**asdict(self), "outside_training": self.outside_training, "next_test": self.next_test,
                "next_test_text": self.next_test_text()}

    @property
    def outside_training(self) -> bool:
        """Whether any input is unlike what the model was trained on: the answer then means little."""
        return bool(self.domain) or any(o["flagged"] for o in self.ood.values())

    def guard_messages(self) -> list[str]:
        """One line per reason the answer may not hold (empty when every input looks like training data)."""
        return list(self.domain) + [f"{m}: {o['reason']}" for m, o in self.ood.items() if o["flagged"]]

    def assumed_text(self, modality: str, top: int = 3) -> str:
        """What the synthesis of a missing modality assumed, in a line: abnormal assumed labs first
        ("assumed CRP 120 mg/L (80–160) H, …"), or the concepts a synthesized note leans on. Labs whose given
        value was refused are named as refused, never given an assumed value."""
        s = self.synthesized.get(modality, {})
        refused = "; not used, the value given was refused: " + ", ".join(r["label"] for r in s["refused"].values()) \
            if s.get("refused") else ""
        if s.get("expected_values"):
            vals = sorted(s["expected_values"].values(), key=lambda v: v["flag"] == "")[:top]
            return "assumed " + ", ".join(" ".join(filter(None, (v["label"], f"{v['median']:g}", v["unit"],
                                                                f"({v['low']:g}–{v['high']:g})", v["flag"])))
                                          for v in vals) + refused  # (a unitless value: no double space)
        if s.get("implied_concepts"):
            return "implies " + ", ".join(c["concept"] for c in s["implied_concepts"][:top])
        return refused.removeprefix("; ")

    def chance_of_change(self, modality: str) -> float:
        """The calibrated chance that acquiring a synthesized modality changes the predicted class: 1 − its
        synthesis confidence (the number the page, the report and the CLI show for each missing modality)."""
        return 1.0 - self.synthesized[modality]["confidence"]

    def next_test_score(self, modality: str) -> float:
        """A synthesized modality's score under the checkpoint's 'which test next' rule (1 − confidence when the
        checkpoint recorded none)."""
        key = NEXT_TEST_RULES[self.next_test_evidence.get("rule", "probability_of_change")][0]
        return self.chance_of_change(modality) if key is None else self.synthesized[modality][key]

    def ranked_missing(self) -> list[str]:
        """The synthesized modalities in the order of the checkpoint's 'which test next' rule (ties by the chance of
        change): the order of the page's and the report's tables, whose first row is the one the sentence names."""
        return sorted(self.synthesized, key=lambda n: (self.next_test_score(n), self.chance_of_change(n)), reverse=True)

    def next_test_column(self) -> tuple[str, dict[str, str]] | None:
        """The chosen rule's score per synthesized modality as a table column (title, text per modality), where the
        rule is not the chance of change, which the tables show anyway."""
        rule = self.next_test_evidence.get("rule", "probability_of_change")
        if NEXT_TEST_RULES[rule][0] is None:
            return None
        title, text = RULE_COLUMNS[rule]
        return title, {m: text(self.next_test_score(m)) for m in self.synthesized}

    @property
    def next_test(self) -> str | None:
        """The synthesized modality to acquire next: the only one, or the one the checkpoint's chosen rule ranks
        first where that rule beat chance on test views; otherwise None (no modality is singled out)."""
        if len(self.synthesized) == 1:
            return next(iter(self.synthesized))
        if not self.synthesized or not self.next_test_evidence.get("above_chance"):
            return None
        return self.ranked_missing()[0]

    def next_test_text(self) -> str:
        """'Which test next' in words, the one wording of every surface (page, report, CLI). One modality is
        named first only where the checkpoint's ranking rule beat chance on test views (the lower bound of its
        95 % interval above the chance level); otherwise each missing modality's chance of changing the answer
        is listed, with the evidence that the ranking did not beat chance, or that none was measured."""
        if not self.synthesized:
            return ""
        ev, chance = self.next_test_evidence, self.chance_of_change
        n = self.next_test
        if len(self.synthesized) == 1:
            return (f"Which test next: {n}, the only missing modality, with a {chance(n):.0%} chance that acquiring "
                    "it changes the answer.")
        measured = ""
        if ev:
            interval = f", 95 % interval {ev['interval'][0]:.0%}–{ev['interval'][1]:.0%}" if ev.get("interval") else ""
            measured = (f"agrees with the modality whose real value moves the answer most in {ev['agreement']:.0%} of "
                        f"{ev['n_views']} test views missing two or more modalities{interval}, chance {ev['chance']:.0%}")
        if n is not None:
            return (f"Which test next: {n}, with a {chance(n):.0%} chance that acquiring it changes the answer; ranked "
                    f"first of the {len(self.synthesized)} missing modalities by {NEXT_TEST_RULES[ev['rule']][1]} "
                    f"({measured}).")
        each = ", ".join(f"{m} {chance(m):.0%}" for m in sorted(self.synthesized, key=chance, reverse=True))
        why = (f"Ranking them by {NEXT_TEST_RULES[ev['rule']][1]} was not shown to beat chance: it {measured}."
               if ev else "No ranking of them has been measured on test views for this model.")
        return (f"Which test next: no missing modality is singled out. Chance that acquiring each changes the "
                f"answer: {each}. {why}")


# 'Which test next': the rankings a calibration report compares (core/calibration/next_test.py), each with the key of
# its score in `Prediction.synthesized` (None: 1 − synthesis confidence) and its description in words
NEXT_TEST_RULES: dict[str, tuple[str | None, str]] = {
    "probability_of_change": (None, "the calibrated chance of changing the answer (1 − synthesis confidence)"),
    "expected_change": ("expected_change", "the expected change of the probabilities over the diffusion samples"),
    "information_gain": ("expected_information_gain", "the expected information gain over the diffusion samples"),
    "decision_change": ("decision_change", "the share of diffusion samples in which the predicted class changes"),
}

# the same scores as a table column: its title and how one value reads
RULE_COLUMNS = {
    "expected_change": ("expected change of the probabilities if acquired", lambda v: f"{v:.0%}"),
    "information_gain": ("expected information gain if acquired", lambda v: f"{v:.2f} nats"),
    "decision_change": ("samples in which the class changes", lambda v: f"{v:.0%}"),
}


def next_test_evidence(meta: dict) -> dict:
    """What a checkpoint's calibration report measured of its 'which test next' rule on test views: rule, top-1
    agreement, its 95 % interval, chance level, views, and whether the interval lies above chance. A report
    from before the rule was chosen on validation (no `chosen_rule`) measured 1 − confidence without an
    interval: never shown to beat chance. {} where nothing was measured."""
    nt = (meta.get("calibration") or {}).get("next_test") or {}
    if not nt.get("n_views"):
        return {}
    if "chosen_rule" in nt:
        rule = nt["chosen_rule"]
        return {"rule": rule, "agreement": nt["test"][rule]["agreement"], "interval": list(nt["test"][rule]["interval"]),
                "chance": nt["top1_chance"], "n_views": nt["n_views"], "above_chance": bool(nt["above_chance"])}
    return {"rule": "probability_of_change", "agreement": nt["top1_agreement_probability_of_change"], "interval": None,
            "chance": nt["top1_chance"], "n_views": nt["n_views"], "above_chance": False}
