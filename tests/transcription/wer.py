#!/usr/bin/env python3
"""Word error rate: Levenshtein distance over normalized words / reference word count.

    wer.py REF_TEXT HYP_TEXT          prints the WER (e.g. 0.1250)
    wer.py --files REF_FILE HYP_FILE  the same, reading both texts from files
    wer.py --json ...                 prints {"wer", "substitutions", "deletions", ...}
    wer.py --self-test                runs the unit tests

Normalization: lowercase; apostrophes dropped ("it's" -> "its"); every other character
that is not a letter or digit becomes a space (so "well-oiled" -> "well oiled");
whole numbers written in digits below one million become words ("50" -> "fifty",
"1,200" -> "one thousand two hundred"). Two adjacent words matching the other side's
single word ("drug store"/"drugstore", "half way"/"halfway") count as correct; other
spelling variants ("busses"/"buses") count as errors.

As a module: wer(reference, hypothesis) -> float, errors(reference, hypothesis) -> Counts,
corpus_wer([(reference, hypothesis), ...]) -> float (total edits / total reference words).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Iterable, NamedTuple

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (_number_words(n % 100) if n % 100 else [])
    return _number_words(n // 1000) + ["thousand"] + (_number_words(n % 1000) if n % 1000 else [])


def normalize(text: str) -> list[str]:
    """The words that are compared: see the module docstring."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,200 -> 1200
    text = text.replace("'", "")
    text = re.sub(r"[^\w]|_", " ", text)
    words = []
    for w in text.split():
        if w.isdigit() and len(w) <= 6 and (w == "0" or not w.startswith("0")):
            words.extend(_number_words(int(w)))
        else:
            words.append(w)
    return words


class Counts(NamedTuple):
    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        if self.reference_words == 0:
            return 0.0 if self.edits == 0 else 1.0
        return self.edits / self.reference_words


def _align(ref: list[str], hyp: list[str]) -> Counts:
    # Levenshtein over words, keeping (cost, subs, dels, ins) per cell; a cheaper path wins,
    # ties keep the first candidate (match/substitution, then deletion, then insertion).
    # Two adjacent words that spell the other side's one word ("drug store"/"drugstore",
    # "half way"/"halfway") match at no cost.
    prev2: list[tuple[int, int, int, int]] = []
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            if ref[i - 1] == hyp[j - 1]:
                best = prev[j - 1]
            else:
                c, s, d, n = prev[j - 1]
                best = (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, n + 1)
            if i >= 2 and ref[i - 2] + ref[i - 1] == hyp[j - 1] and prev2[j - 1][0] < best[0]:
                best = prev2[j - 1]
            if j >= 2 and hyp[j - 2] + hyp[j - 1] == ref[i - 1] and prev[j - 2][0] < best[0]:
                best = prev[j - 2]
            cur.append(best)
        prev2, prev = prev, cur
    _, s, d, n = prev[-1]
    return Counts(s, d, n, len(ref))


def errors(reference: str, hypothesis: str) -> Counts:
    """Substitutions, deletions and insertions turning reference into hypothesis."""
    return _align(normalize(reference), normalize(hypothesis))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of hypothesis against reference (0.0 = perfect; can exceed 1.0).
    An empty reference gives 0.0 for an empty hypothesis and 1.0 otherwise."""
    return errors(reference, hypothesis).wer


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """WER over a corpus: total edits / total reference words (not a mean of per-pair WERs)."""
    s = d = n = r = 0
    for ref, hyp in pairs:
        c = errors(ref, hyp)
        s, d, n, r = s + c.substitutions, d + c.deletions, n + c.insertions, r + c.reference_words
    return Counts(s, d, n, r).wer


def _self_test() -> None:
    close = lambda a, b: abs(a - b) < 1e-9  # noqa: E731
    assert wer("the cat sat", "the cat sat") == 0.0
    assert wer("The cat, sat!", "the CAT sat") == 0.0
    assert close(wer("the cat sat", "the bat sat"), 1 / 3)
    assert close(wer("the cat sat", "the sat"), 1 / 3)
    assert close(wer("the cat sat", "the cat sat down"), 1 / 3)
    assert close(wer("a b c d", ""), 1.0)
    assert close(wer("a", "b c d"), 3.0)  # insertions can push WER past 1
    assert wer("", "") == 0.0 and wer("", "x") == 1.0
    assert errors("a b c d e f g", "a x c e f g h") == Counts(1, 1, 1, 7)
    assert errors("abc", "xyz abc") == Counts(0, 0, 1, 1)
    assert normalize("It's easy: well-oiled wheels.") == ["its", "easy", "well", "oiled", "wheels"]
    assert normalize("The man\u2019s fall") == ["the", "mans", "fall"]
    assert normalize("sold 50 bonds") == ["sold", "fifty", "bonds"]
    assert normalize("1,200 and 7 and 305") == "one thousand two hundred and seven and three hundred five".split()
    assert wer("The girl at the booth sold fifty bonds.", " The girl at the booth sold 50 bonds.") == 0.0
    assert normalize("  ") == []
    assert close(wer("The birch canoe slid on the smooth planks.",
                     " The merch can be slid on the smooth planks."), 3 / 8)
    assert close(corpus_wer([("a b", "a b"), ("c d e f", "c x e f")]), 1 / 6)
    assert corpus_wer([]) == 0.0
    assert wer("He ran half way to the drug store.", "He ran halfway to the drugstore.") == 0.0
    assert wer("the snowdrifts", "the snow drifts") == 0.0
    assert errors("half way home", "halfway") == Counts(0, 1, 0, 3)
    assert errors("a b", "ab c") == Counts(0, 0, 1, 2)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", nargs="?")
    ap.add_argument("hypothesis", nargs="?")
    ap.add_argument("--files", action="store_true", help="the arguments are file paths")
    ap.add_argument("--json", action="store_true", help="print the edit counts as JSON")
    ap.add_argument("--self-test", action="store_true", help="run the unit tests")
    a = ap.parse_args(argv)
    if a.self_test:
        _self_test()
        print("wer.py self-test: 1 passed, 0 failed")
        return 0
    if a.reference is None or a.hypothesis is None:
        ap.error("REF_TEXT and HYP_TEXT are required")
    ref, hyp = a.reference, a.hypothesis
    if a.files:
        with open(ref, encoding="utf-8") as f:
            ref = f.read()
        with open(hyp, encoding="utf-8") as f:
            hyp = f.read()
    c = errors(ref, hyp)
    if a.json:
        print(json.dumps({"wer": round(c.wer, 4), "substitutions": c.substitutions,
                          "deletions": c.deletions, "insertions": c.insertions,
                          "reference_words": c.reference_words}))
    else:
        print(f"{c.wer:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
