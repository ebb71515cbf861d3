"""kvq's corpus BLEU-4 (src/data/bleu.cpp, through the hidden `kvq bleu` command) against an
independent implementation, nltk.translate.bleu_score.corpus_bleu (Debian's python3-nltk), on the
same tokenised hypotheses and references: random corpora over small vocabularies (so that n-grams
match at every order), one and several references per hypothesis.

Conventions that agree: clipped n-gram counts against the largest count in any one reference;
corpus-level sums of matches and totals; the reference length closest to the hypothesis length,
ties to the shorter; BP = 1 if c > r else exp(1 - r / c); uniform weights 1/4; no smoothing (NLTK's
default SmoothingFunction().method0): a corpus with no 1-gram match is exactly 0 in both.

Conventions that differ, checked as such:
- NLTK counts a hypothesis without any n-gram of order n (fewer than n tokens) as one n-gram in
  the denominator of p_n (modified_precision returns matches / max(1, count)); kvq, like the paper
  and sacreBLEU, counts the n-grams there are. The corpora of the agreement tests have hypotheses
  of at least 4 tokens; test_short_hypotheses checks the difference is exactly those extra ones.
- With some order n > 1 without a match, NLTK replaces p_n by the smallest float and returns
  about 1e-77 instead of 0; kvq returns 0. Both are below the tolerance.

Tolerance: 1e-12 absolute on scores in [0, 1] (both compute in binary64; the sums differ only in
rounding order).

Usage: python3 test_bleu_nltk.py path/to/kvq
"""
import json
import math
import random
import subprocess
import sys
import unittest
import warnings
from fractions import Fraction

from nltk.translate.bleu_score import corpus_bleu, modified_precision

KVQ = sys.argv.pop(1) if len(sys.argv) > 1 else "build/kvq"
TOL = 1e-12


def kvq_bleu(hypotheses, references, max_n=4):
    corpus = {"hypotheses": hypotheses, "references": references, "max_n": max_n}
    out = subprocess.run([KVQ, "bleu"], input=json.dumps(corpus), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def random_corpus(rng, sentences, vocab, min_len, max_len, refs_per_hyp):
    words = [f"w{i}" for i in range(vocab)]

    def sentence(lo, hi):
        return [rng.choice(words) for _ in range(rng.randint(lo, hi))]

    hypotheses = [sentence(min_len, max_len) for _ in range(sentences)]
    references = [[sentence(1, max_len + 4) for _ in range(rng.randint(*refs_per_hyp))]
                  for _ in range(sentences)]
    # Make some hypotheses close copies of a reference, so high orders match too.
    for i in range(0, sentences, 3):
        ref = list(references[i][0])
        if len(ref) >= min_len:
            j = rng.randrange(len(ref))
            ref[j] = rng.choice(words)
            hypotheses[i] = ref
    return hypotheses, references


def nltk_bleu(hypotheses, references):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns on orders without a match
        return corpus_bleu(references, hypotheses)


class BleuAgainstNltk(unittest.TestCase):
    def test_random_corpora_one_reference(self):
        rng = random.Random(0)
        for trial in range(20):
            hyps, refs = random_corpus(rng, rng.randint(1, 30), rng.randint(3, 12), 4, 18, (1, 1))
            got = kvq_bleu(hyps, refs)["bleu"]
            want = nltk_bleu(hyps, refs)
            self.assertLessEqual(abs(got - want), TOL, f"trial {trial}: kvq {got!r} nltk {want!r}")

    def test_random_corpora_several_references(self):
        rng = random.Random(1)
        nonzero = 0
        for trial in range(20):
            hyps, refs = random_corpus(rng, rng.randint(1, 30), rng.randint(3, 12), 4, 18, (1, 4))
            got = kvq_bleu(hyps, refs)["bleu"]
            want = nltk_bleu(hyps, refs)
            nonzero += want > 1e-6
            self.assertLessEqual(abs(got - want), TOL, f"trial {trial}: kvq {got!r} nltk {want!r}")
        self.assertGreater(nonzero, 10, "the corpora should mostly score above 0")

    def test_identical_and_disjoint(self):
        hyps = [["a", "b", "c", "d", "e"], ["f", "g", "h", "i"]]
        self.assertLessEqual(abs(kvq_bleu(hyps, [[h] for h in hyps])["bleu"] - 1.0), TOL)
        self.assertEqual(nltk_bleu(hyps, [[["x", "y", "z", "u"]]] * 2), 0)
        self.assertEqual(kvq_bleu(hyps, [[["x", "y", "z", "u"]]] * 2)["bleu"], 0)

    def test_short_hypotheses(self):
        # Hypotheses of 1..6 tokens: kvq's totals are NLTK's denominators less one per hypothesis
        # with fewer than n tokens; its matches are NLTK's numerators; BLEU follows from them.
        rng = random.Random(2)
        for trial in range(10):
            hyps, refs = random_corpus(rng, rng.randint(2, 20), 4, 1, 6, (1, 3))
            got = kvq_bleu(hyps, refs)
            for n in range(1, 5):
                num = den = 0
                for h, r in zip(hyps, refs):
                    p = modified_precision(r, h, n)
                    num += p.numerator
                    den += p.denominator - (1 if len(h) < n else 0)
                self.assertEqual(got["matches"][n - 1], num, f"trial {trial}, n {n}")
                self.assertEqual(got["totals"][n - 1], den, f"trial {trial}, n {n}")
            p = [Fraction(m, t) if t else Fraction(0) for m, t in zip(got["matches"], got["totals"])]
            bp = got["brevity_penalty"]
            want = 0.0 if min(p) == 0 else bp * math.exp(math.fsum(0.25 * math.log(x) for x in p))
            self.assertLessEqual(abs(got["bleu"] - want), TOL, f"trial {trial}")


if __name__ == "__main__":
    unittest.main()
