"""RL prompts (abscot_plugin.rl.rl_data) and rewards (abscot_plugin.rl.rewards): MATH and GSM8K rows,
bad rows named, rewards read the rollout's answer text and the row's gold answer."""

from __future__ import annotations

import pytest
from datasets import Dataset

from abscot_plugin.rl.rewards import format_reward, length_reward, math_reward
from abscot_plugin.rl.rl_data import prompt_and_gold, rl_prompts
from abscot_plugin.testing.fixtures import data_path


def test_math_and_gsm8k_rows_give_prompt_and_gold():
    assert prompt_and_gold({"problem": "What is $2+3$?", "answer": "5"}, 0) == {"prompt": "What is $2+3$?", "gold": "5"}
    row = {"question": "Ann has 3 apples and buys 5.", "answer": "3 + 5 = 8\n#### 8"}
    assert prompt_and_gold(row, 1) == {"prompt": "Ann has 3 apples and buys 5.", "gold": "8"}


def test_the_shipped_rl_prompts_load_as_axolotl_maps_them():
    fn, kwargs = rl_prompts(cfg=None)
    assert kwargs == {"with_indices": True, "remove_columns": "__all__"}
    ds = Dataset.from_json(str(data_path("rl_tiny.jsonl")))
    out = ds.map(fn, with_indices=True, remove_columns=ds.column_names)
    assert out.column_names == ["prompt", "gold"] and len(out) == 8
    assert "#" not in "".join(out["gold"])  # GSM8K golds reduced to their final number


@pytest.mark.parametrize(
    "row,message",
    [
        ({"id": "p-3", "problem": "What is 1+1?"}, r"RL prompts row 7 \(id 'p-3'\): no gold answer"),
        ({"problem": "What is 1+1?", "answer": ""}, "RL prompts row 7: no gold answer"),
        ({"problem": "What is 1+1?", "answer": "\\frac{"}, "RL prompts row 7: math-verify reads no mathematical"),
        ({"problem": "What is 1+1?", "answer": "$$"}, "RL prompts row 7: math-verify cannot parse the gold"),
        ({"question": "How many?", "answer": "eight"}, "RL prompts row 7: GSM8K answer has no '#### <number>'"),
        ({"prompt": "What is 1+1?", "answer": "2"}, r"RL prompts row 7: needs 'problem' \(MATH\) or 'question'"),
        ({"problem": "  ", "answer": "2"}, "RL prompts row 7: the problem is empty"),
    ],
)
def test_bad_rows_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        prompt_and_gold(row, 7)


def test_a_bad_row_is_named_by_its_index_through_map():
    fn, _ = rl_prompts(cfg=None)
    ds = Dataset.from_list([{"problem": "What is 1+1?", "answer": "2"}] * 2 + [{"problem": "x", "answer": None}])
    with pytest.raises(ValueError, match="RL prompts row 2: no gold answer"):
        ds.map(fn, with_indices=True, remove_columns=ds.column_names)


def test_math_reward_scores_the_rollouts_answer_text_against_gold():
    # TRL's completions text (special tokens skipped) is not what is scored: the rollout's answer is
    completions = ["", "", ""]
    answers = ["so \\boxed{\\frac{3}{4}}", "\\boxed{0.75}", "\\boxed{4}"]
    golds = ["\\frac{3}{4}", "\\frac{3}{4}", "5"]
    assert math_reward([""] * 3, completions, gold=golds, abscot_answer=answers) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="abscot_answer column"):
        math_reward([""], ["\\boxed{5}"], gold=["5"])
    with pytest.raises(ValueError, match="'gold' column"):
        math_reward([""], [""], abscot_answer=["\\boxed{5}"])


def test_format_and_length_rewards():
    answers = ["\\boxed{5}", "\\boxed{5}", "five"]
    stopped = [True, False, True]
    assert format_reward([""] * 3, [""] * 3, abscot_answer=answers, abscot_stopped=stopped) == [1.0, 0.0, 0.0]
    assert length_reward([""] * 2, [""] * 2, abscot_length=[0.25, 1.0]) == [0.75, 0.0]
    with pytest.raises(ValueError, match="abscot_length: 1 values for 2 completions"):
        length_reward([""] * 2, [""] * 2, abscot_length=[0.5])
