"""Generated problems: the worked solution and the answer agree with an independent reading of the question."""

import random
import re

import pytest

from verl_commeff.presets.gsm8k_synth import DIFFICULTIES, Difficulty, make_problem


def solve_from_question(question: str) -> int:
    """Independent solver: the asked-about person's opening count, then their gets/gives, in order."""
    person = re.search(r"How many \w+ does (\w+) have\?", question).group(1)
    total = None
    for sentence in question.split(". "):
        if (m := re.match(rf"{person} has (\d+) \w+", sentence)) and total is None:
            total = int(m.group(1))
        elif m := re.match(rf"Then {person} gets (\d+) more", sentence):
            total += int(m.group(1))
        elif m := re.match(rf"Then {person} gives away (\d+)", sentence):
            total -= int(m.group(1))
    return total


@pytest.mark.parametrize("level", sorted(DIFFICULTIES))
def test_answers_match_the_question_and_the_worked_solution(level):
    difficulty = DIFFICULTIES[level]
    rng = random.Random(7)
    for _ in range(300):
        question, solution, answer = make_problem(rng, difficulty)
        assert answer == solve_from_question(question) >= 0
        assert solution.endswith(f"\n#### {answer}")
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", solution)
        assert difficulty.min_ops <= len(equations) <= difficulty.max_ops
        for a, op, b, result in equations:  # every written step is right arithmetic
            assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(result)
            assert 1 <= int(b) <= difficulty.max_number
        assert int(equations[-1][3]) == answer


def test_distractors_follow_the_knob():
    rng = random.Random(0)
    none = [make_problem(rng, Difficulty(distractor_p=0.0))[0] for _ in range(100)]
    many = [make_problem(rng, Difficulty(distractor_p=1.0))[0] for _ in range(100)]
    assert all(q.count(" has ") == 1 for q in none)
    assert all(q.count(" has ") == 3 for q in many)  # two distractors, each about somebody else


@pytest.mark.parametrize("kwargs, field", [({"max_number": 0}, "max_number"), ({"min_ops": 3, "max_ops": 2}, "min_ops"),
                                           ({"distractor_p": 1.5}, "distractor_p")])
def test_bad_difficulty_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Difficulty(**kwargs)
