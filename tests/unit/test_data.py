"""rlcore.data: arithmetic task, file loader, resumable prompt source."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from rlcore.data.arith import (
    ArithConfig,
    add_teacher_slips,
    format_prompt,
    generate_problems,
    problem_space_size,
    sft_completion,
    train_eval_split,
)
from rlcore.data.loader import DataError, load_records, write_jsonl
from rlcore.data.source import PromptSource


# ----------------------------------------------------------------------------- arith
def _check_answer(problem: str) -> int:
    # independent evaluator for "+"/"-" chains
    return eval(problem, {"__builtins__": {}})  # noqa: S307 - digits and +/- only


def test_arith_records_are_correct_and_well_formed():
    recs = generate_problems(300, seed=0)
    assert len(recs) == 300
    assert len({r["id"] for r in recs}) == 300
    for r in recs:
        assert set(r) >= {"id", "prompt", "answer", "difficulty", "metadata"}
        problem = r["metadata"]["problem"]
        assert r["prompt"] == problem + "="
        assert r["answer"] == str(_check_answer(problem))
        k = len(problem.split("+"))
        assert r["difficulty"] == k == r["metadata"]["num_operands"] == r["metadata"]["difficulty"]
        assert all(0 <= int(x) <= 9 for x in problem.split("+"))
        assert r["metadata"]["task"] == "arith"
        json.dumps(r)


def test_arith_deterministic_and_does_not_use_global_rng():
    random.seed(1)
    a = generate_problems(50, seed=7)
    random.seed(2)
    b = generate_problems(50, seed=7)
    assert a == b
    assert generate_problems(50, seed=8) != a
    # global RNG state is not consumed
    random.seed(3)
    x = random.random()
    random.seed(3)
    generate_problems(10, seed=0)
    assert random.random() == x


def test_arith_difficulty_graded():
    recs = generate_problems(3000, seed=1)
    counts = {k: sum(r["difficulty"] == k for r in recs) for k in (2, 3, 4)}
    assert set(r["difficulty"] for r in recs) == {2, 3, 4}
    assert all(800 < c < 1200 for c in counts.values()), counts  # roughly uniform
    easy = generate_problems(100, seed=1, cfg=ArithConfig(min_operands=2, max_operands=2))
    assert all(r["difficulty"] == 2 for r in easy)


def test_arith_harder_variants():
    cfg = ArithConfig(min_operands=3, max_operands=5, max_operand=99, ops="+-")
    recs = generate_problems(200, seed=0, cfg=cfg)
    assert any("-" in r["metadata"]["problem"] for r in recs)
    assert any(int(r["answer"]) < 0 for r in recs)
    for r in recs:
        assert r["answer"] == str(_check_answer(r["metadata"]["problem"]))
        assert 3 <= r["difficulty"] <= 5
    with pytest.raises(ValueError):
        ArithConfig(ops="*")
    with pytest.raises(ValueError):
        ArithConfig(min_operands=3, max_operands=2)
    with pytest.raises(ValueError):
        ArithConfig(answer_format="latex")


def test_sft_completion_and_prompt_format():
    r = generate_problems(1, seed=0)[0]
    assert sft_completion(r) == "\\boxed{" + r["answer"] + "}"
    assert sft_completion({"prompt": "3+4+5=", "answer": "12"}) == "\\boxed{12}"
    plain = generate_problems(1, seed=0, cfg=ArithConfig(answer_format="plain"))[0]
    assert sft_completion(plain) == plain["answer"]
    cfg = ArithConfig(prompt_template="What is {problem}?")
    assert format_prompt("3+4", cfg) == "What is 3+4?"
    assert generate_problems(1, seed=0, cfg=cfg)[0]["prompt"].startswith("What is ")


def test_train_eval_split_no_overlap():
    train, ev = train_eval_split(seed=0, n_train=5000, n_eval=200)
    assert len(train) == 5000 and len(ev) == 200
    ev_problems = {r["metadata"]["problem"] for r in ev}
    assert len(ev_problems) == 200  # eval problems are distinct
    assert not ev_problems & {r["metadata"]["problem"] for r in train}
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}
    assert not {r["id"] for r in ev} & {r["id"] for r in train}
    # train keeps all difficulties in a roughly uniform mix
    counts = {k: sum(r["difficulty"] == k for r in train) for k in (2, 3, 4)}
    assert all(1400 < c < 1950 for c in counts.values()), counts
    assert {r["difficulty"] for r in ev} == {2, 3, 4}
    # deterministic
    assert train_eval_split(seed=0, n_train=5000, n_eval=200) == (train, ev)
    assert train_eval_split(seed=1, n_train=50, n_eval=20)[1] != ev[:20]


def test_train_eval_split_small_space():
    cfg = ArithConfig(min_operands=2, max_operands=2, max_operand=3)  # 16 problems
    assert problem_space_size(cfg) == 16
    train, ev = train_eval_split(seed=0, n_train=100, n_eval=10, cfg=cfg)
    assert len({r["prompt"] for r in train}) <= 6
    assert not {r["prompt"] for r in ev} & {r["prompt"] for r in train}
    with pytest.raises(ValueError, match="distinct"):
        train_eval_split(seed=0, n_train=10, n_eval=16, cfg=cfg)


def test_problem_space_size():
    assert problem_space_size() == 100 + 1000 + 10000
    assert problem_space_size(ArithConfig(min_operands=2, max_operands=3, ops="+-")) == 100 * 2 + 1000 * 4


# ---------------------------------------------------------------------------- loader
def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_jsonl_with_mapping(tmp_path):
    p = _write_lines(tmp_path / "x.jsonl", [
        json.dumps({"problem": "1+1=", "solution": "2", "level": 1, "src": "a"}),
        "",  # blank lines are skipped
        json.dumps({"problem": "2+2=", "solution": 4, "level": 2, "src": "b", "uid": "q2"}),
    ])
    recs = load_records(p, fields={"prompt": "problem", "answer": "solution"})
    assert [r["prompt"] for r in recs] == ["1+1=", "2+2="]
    assert [r["answer"] for r in recs] == ["2", "4"]  # numbers become strings
    assert recs[0]["id"] == "x-1" and recs[1]["id"] == "x-2"
    assert recs[0]["metadata"] == {"level": 1, "src": "a"}
    assert recs[1]["metadata"] == {"level": 2, "src": "b", "uid": "q2"}
    recs = load_records(p, fields={"prompt": "problem", "answer": "solution", "difficulty": "level"})
    assert [r["difficulty"] for r in recs] == [1, 2]


def test_load_jsonl_default_fields_ids_and_metadata_column(tmp_path):
    p = write_jsonl([
        {"id": 7, "prompt": "a", "answer": "b", "meta": {"k": 1}},
        {"id": "z", "prompt": "c", "answer": "d", "meta": None},
    ], tmp_path / "d.jsonl")
    recs = load_records(p)
    assert [r["id"] for r in recs] == ["7", "z"]
    assert recs[0]["metadata"] == {"meta": {"k": 1}}
    recs = load_records(p, fields={"metadata": "meta"})
    assert recs[0]["metadata"] == {"k": 1} and recs[1]["metadata"] == {}


def test_load_prompt_only(tmp_path):
    p = write_jsonl([{"prompt": "hi"}], tmp_path / "p.jsonl")
    recs = load_records(p, fields={"answer": None})
    assert recs == [{"prompt": "hi", "id": "p-1", "metadata": {}}]


def test_load_jsonl_gz(tmp_path):
    p = tmp_path / "z.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "1+2=", "answer": "3"}) + "\n")
    assert load_records(p)[0]["answer"] == "3"


def test_load_parquet_with_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"question": ["1+1=", "2+3="], "gt": ["2", "5"], "qid": ["a", "b"], "lvl": [1, 2]})
    p = tmp_path / "t.parquet"
    pq.write_table(table, p)
    recs = load_records(p, fields={"prompt": "question", "answer": "gt", "id": "qid"})
    assert recs == [
        {"prompt": "1+1=", "answer": "2", "id": "a", "metadata": {"lvl": 1}},
        {"prompt": "2+3=", "answer": "5", "id": "b", "metadata": {"lvl": 2}},
    ]
    bad = pa.table({"question": ["ok", ""], "gt": ["1", "2"]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(DataError) as e:
        load_records(tmp_path / "bad.parquet", fields={"prompt": "question", "answer": "gt"})
    assert str(e.value).startswith(f"{tmp_path / 'bad.parquet'}[row 2]:")
    assert "'question'" in str(e.value) and "empty" in str(e.value)


def test_load_json_list_and_splits(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]))
    assert [r["prompt"] for r in load_records(p)] == ["a", "b"]
    p2 = tmp_path / "s.json"
    p2.write_text(json.dumps({"train": [{"prompt": "a", "answer": "1"}], "test": [{"prompt": "t", "answer": "9"}]}))
    assert load_records(p2, split="test")[0]["prompt"] == "t"
    with pytest.raises(DataError, match="split"):
        load_records(p2)
    with pytest.raises(DataError, match="no split 'dev'"):
        load_records(p2, split="dev")
    # a directory with one file per split
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl([{"prompt": "tr", "answer": "1"}], d / "train.jsonl")
    write_jsonl([{"prompt": "te", "answer": "2"}], d / "test.jsonl")
    assert load_records(d, split="train")[0]["prompt"] == "tr"
    assert load_records(d, split="test")[0]["prompt"] == "te"
    with pytest.raises(DataError, match="no file for split"):
        load_records(d, split="dev")
    with pytest.raises(DataError, match="directory"):
        load_records(d)


GOOD = json.dumps({"problem": "1+1=", "solution": "2"})
BAD_ROWS = [
    ("{not json", "invalid JSON"),
    (json.dumps({"question": "1+1=", "answer": "2"}),
     "missing field 'problem' (mapped from 'prompt'); row keys: ['question', 'answer']"),
    (json.dumps({"problem": "1+1="}), "missing field 'solution' (mapped from 'answer')"),
    (json.dumps({"problem": 5, "solution": "2"}), "field 'problem' (mapped from 'prompt') must be a string, got int"),
    (json.dumps({"problem": ["a"], "solution": "2"}), "must be a string, got list"),
    (json.dumps({"problem": "   ", "solution": "2"}), "field 'problem' (mapped from 'prompt') is empty"),
    (json.dumps({"problem": "1+1=", "solution": None}), "field 'solution' (mapped from 'answer') must be a string or number"),
    (json.dumps(["problem", "solution"]), "row is not an object (got list)"),
]


@pytest.mark.parametrize("bad,expected", BAD_ROWS)
def test_bad_row_errors_name_file_line_and_field(tmp_path, bad, expected):
    # the bad row is on line 4 (after a blank line), which must be reported 1-based
    p = _write_lines(tmp_path / "x.jsonl", [GOOD, GOOD, "", bad, GOOD])
    with pytest.raises(DataError) as e:
        load_records(p, fields={"prompt": "problem", "answer": "solution"})
    msg = str(e.value)
    assert msg.startswith(f"{p}:4: "), msg
    assert expected in msg, msg


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope.jsonl")
    empty = _write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataError, match="no records"):
        load_records(empty)
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported"):
        load_records(csv)
    dup = write_jsonl([{"id": "1", "prompt": "a", "answer": "b"}, {"id": "1", "prompt": "c", "answer": "d"}],
                      tmp_path / "dup.jsonl")
    with pytest.raises(DataError, match=r"dup.jsonl:2: duplicate id '1' \(first seen at .*dup.jsonl:1\)"):
        load_records(dup)
    custom_id = write_jsonl([{"prompt": "a", "answer": "b"}], tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"c.jsonl:1: missing field 'qid' \(mapped from 'id'\)"):
        load_records(custom_id, fields={"id": "qid"})
    with pytest.raises(DataError, match="split"):
        load_records(custom_id, split="train")
    bad_json = tmp_path / "b.json"
    bad_json.write_text('[{"prompt": "a", "answer": "1"},\n {"answer": "2"}]')
    with pytest.raises(DataError, match=r"b.json\[row 2\]: missing field 'prompt'"):
        load_records(bad_json)


def test_arith_records_round_trip_through_loader(tmp_path):
    recs = generate_problems(20, seed=0)
    loaded = load_records(write_jsonl(recs, tmp_path / "arith.jsonl"),
                          fields={"metadata": "metadata", "difficulty": "difficulty"})
    assert loaded == [{**r} for r in recs]


# ---------------------------------------------------------------------------- source
def _recs(n):
    return [{"id": str(i), "prompt": f"p{i}", "answer": str(i)} for i in range(n)]


def _ids(batch):
    return [r["id"] for r in batch]


def test_source_epoch_cycling_and_reshuffle():
    src = PromptSource(_recs(10), batch_size=4, seed=0)
    assert len(src) == 3
    epoch0 = [_ids(src.next_batch()) for _ in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]  # drop_last=False: short last batch
    assert sorted(sum(epoch0, [])) == sorted(str(i) for i in range(10))  # each record once
    assert src.epoch == 1 and src.cursor == 0
    epoch1 = [_ids(src.next_batch()) for _ in range(3)]
    assert sorted(sum(epoch1, [])) == sorted(str(i) for i in range(10))
    assert sum(epoch1, []) != sum(epoch0, [])  # reshuffled
    # different seeds give different orders; same seed the same
    assert _ids(PromptSource(_recs(10), 10, seed=1).next_batch()) != sum(epoch0, [])
    assert _ids(PromptSource(_recs(10), 10, seed=0).next_batch()) == sum(epoch0, [])


def test_source_no_shuffle_and_drop_last():
    src = PromptSource(_recs(5), batch_size=2, seed=0, shuffle=False, drop_last=True)
    assert len(src) == 2
    got = [_ids(src.next_batch()) for _ in range(4)]
    assert got == [["0", "1"], ["2", "3"], ["0", "1"], ["2", "3"]]
    with pytest.raises(ValueError):
        PromptSource(_recs(3), batch_size=4, seed=0, drop_last=True)
    with pytest.raises(ValueError):
        PromptSource([], batch_size=1, seed=0)
    # batch larger than the dataset without drop_last: one (short) batch per epoch
    src = PromptSource(_recs(3), batch_size=8, seed=0)
    assert len(src.next_batch()) == 3 and src.epoch == 1


def test_source_does_not_use_global_rng():
    import numpy as np

    np.random.seed(0)
    random.seed(0)
    a = _ids(PromptSource(_recs(50), 50, seed=3).next_batch())
    np.random.seed(99)
    random.seed(99)
    b = _ids(PromptSource(_recs(50), 50, seed=3).next_batch())
    assert a == b
    np.random.seed(5)
    x = np.random.rand()
    np.random.seed(5)
    PromptSource(_recs(50), 7, seed=3).next_batch()
    assert np.random.rand() == x


@pytest.mark.parametrize("drop_last", [False, True])
def test_source_resume_exact(drop_last):
    recs = _recs(11)
    src = PromptSource(recs, batch_size=3, seed=42, drop_last=drop_last)
    for _ in range(5):  # crosses an epoch boundary
        src.next_batch()
    state = json.loads(json.dumps(src.state_dict()))  # JSON round trip
    assert set(state) == {"epoch", "cursor", "seed", "num_records"}
    expected = [_ids(src.next_batch()) for _ in range(3)]
    restored = PromptSource(recs, batch_size=3, seed=0, drop_last=drop_last)  # seed comes from state
    restored.load_state_dict(state)
    assert [_ids(restored.next_batch()) for _ in range(3)] == expected
    assert restored.state_dict() == src.state_dict()


def test_source_resume_rejects_changed_dataset():
    src = PromptSource(_recs(10), batch_size=3, seed=0)
    src.next_batch()
    state = src.state_dict()
    with pytest.raises(ValueError, match="dataset changed"):
        PromptSource(_recs(11), batch_size=3, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        PromptSource(_recs(10), batch_size=3, seed=0).load_state_dict({"epoch": 0})


def test_source_batches_are_copies():
    recs = _recs(4)
    src = PromptSource(recs, batch_size=4, seed=0)
    b = src.next_batch()
    b[0]["prompt"] = "mutated"
    assert all(r["prompt"] != "mutated" for r in recs)


def test_worked_steps_completion_chains_partial_sums():
    from rlcore.data.arith import ArithConfig, generate_problems, sft_completion, worked_steps

    assert worked_steps("3+4+5") == "3+4=7 7+5=12"
    assert worked_steps("9-4+1") == "9-4=5 5+1=6"
    rec = generate_problems(1, 3, ArithConfig(answer_format="steps"))[0]
    text = sft_completion(rec)
    assert text.startswith(worked_steps(rec["metadata"]["problem"]))
    assert text.endswith("\\boxed{" + rec["answer"] + "}")


def test_iid_eval_split_marks_problems_seen_in_training():
    from rlcore.config import config_from_dict
    from rlcore.prompts import load_datasets

    cfg = config_from_dict({"model": {"path": "x"}, "data": {"arith_eval_split": "iid", "n_train": 500, "n_eval": 50}})
    train, evals = load_datasets(cfg)
    seen = {r["metadata"]["problem"] for r in train}
    assert len(evals) == 50
    assert all(r["metadata"]["in_train"] == (r["metadata"]["problem"] in seen) for r in evals)
    assert any(r["metadata"]["in_train"] for r in evals) and not all(r["metadata"]["in_train"] for r in evals)


def test_disjoint_eval_split_marks_every_eval_problem_unseen():
    from rlcore.config import config_from_dict
    from rlcore.prompts import load_datasets

    cfg = config_from_dict({"model": {"path": "x"}, "data": {
        "arith_eval_split": "disjoint", "n_train": 300, "n_eval": 40, "arith_max_operands": 2,
        "arith_max_operand": 29, "arith_prompt_template": "What is {problem}?"}})
    train, evals = load_datasets(cfg)
    seen = {r["metadata"]["problem"] for r in train}
    assert all(r["metadata"]["in_train"] is False and r["metadata"]["problem"] not in seen for r in evals)
    assert evals[0]["prompt"] == f"What is {evals[0]['metadata']['problem']}?"


def test_teacher_slips_forget_the_last_operand_on_the_asked_share():
    recs = generate_problems(4000, seed=3)
    truths = [r["answer"] for r in recs]
    n = add_teacher_slips(recs, 0.6, seed=3, kind="last_operand")
    slipped = [r for r in recs if r["metadata"].get("teacher_slip")]
    assert len(slipped) == n
    assert 0.55 < n / len(recs) < 0.65
    assert [r["answer"] for r in recs] == truths  # the ground truth RL is scored on is untouched
    for r in slipped:
        nums = [int(x) for x in r["metadata"]["problem"].split("+")]
        assert r["sft_completion"] == "\\boxed{" + str(sum(nums[:-1])) + "}"
    for r in recs:
        if not r["metadata"].get("teacher_slip"):
            assert "sft_completion" not in r  # the teacher's correct demonstration is used
    again = generate_problems(4000, seed=3)
    add_teacher_slips(again, 0.6, seed=3, kind="last_operand")
    assert [r.get("sft_completion") for r in again] == [r.get("sft_completion") for r in recs]
    with pytest.raises(ValueError, match="slip rate"):
        add_teacher_slips(recs, 1.0, seed=3)


def test_teacher_slips_follow_the_answer_format():
    cfg = ArithConfig(min_operands=3, max_operands=3, answer_format="steps")
    recs = generate_problems(50, seed=1, cfg=cfg)
    add_teacher_slips(recs, 0.99, seed=1, kind="last_operand")
    r = next(r for r in recs if r["metadata"].get("teacher_slip"))
    a, b, _ = (int(x) for x in r["metadata"]["problem"].split("+"))
    assert r["sft_completion"] == f"{a}+{b}={a + b} \\boxed{{{a + b}}}"


def test_unboxed_slip_keeps_the_right_answer_without_the_box():
    recs = generate_problems(500, seed=2)
    n = add_teacher_slips(recs, 0.7, seed=2, kind="unboxed")
    assert 0.63 < n / 500 < 0.77
    for r in recs:
        if r["metadata"].get("teacher_slip") == "unboxed":
            assert r["sft_completion"] == r["answer"]
        else:
            assert sft_completion(r) == "\\boxed{" + r["answer"] + "}" and "sft_completion" not in r
    steps = generate_problems(20, seed=2, cfg=ArithConfig(min_operands=3, max_operands=3, answer_format="steps"))
    add_teacher_slips(steps, 0.99, seed=2, kind="unboxed")
    r = next(r for r in steps if r["metadata"].get("teacher_slip"))
    assert r["sft_completion"].endswith("=" + r["answer"] + " " + r["answer"]) and "boxed" not in r["sft_completion"]
    with pytest.raises(ValueError, match="must be one of"):
        add_teacher_slips(recs, 0.5, seed=2, kind="typo")


def test_unclosed_slip_is_the_default_and_the_verifier_rejects_it():
    from rewards.math_answer import math_answer

    recs = generate_problems(300, seed=4)
    n = add_teacher_slips(recs, 0.7, seed=4)
    assert 0.6 < n / 300 < 0.8
    for r in recs:
        target = r.get("sft_completion") or sft_completion(r)
        verdict = math_answer(r["prompt"], target, r["answer"], {})["correct"]
        if r["metadata"].get("teacher_slip"):
            assert r["metadata"]["teacher_slip"] == "unclosed"
            assert target == "\\boxed{" + r["answer"] and not verdict
        else:
            assert verdict


def test_operand_ranges_spread_difficulty_and_label_it():
    from rlcore.data.arith import ArithConfig, generate_problems, train_eval_split

    cfg = ArithConfig(min_operands=2, max_operands=4, operand_ranges=(9, 99, 999))
    recs = generate_problems(600, 3, cfg)
    labels = {r["difficulty"] for r in recs}
    assert labels == {f"{k}x{b}" for k in (2, 3, 4) for b in (9, 99, 999)}
    for r in recs:
        k, bound = map(int, r["difficulty"].split("x"))
        nums = [int(x) for x in r["metadata"]["problem"].split("+")]
        assert len(nums) == k == r["metadata"]["num_operands"] and max(nums) <= bound
        assert int(r["answer"]) == sum(nums)
    assert max(int(x) for r in recs for x in r["metadata"]["problem"].split("+")) > 99
    with pytest.raises(ValueError, match="operand_ranges"):
        train_eval_split(0, 10, 10, cfg)


def test_operand_ranges_with_the_disjoint_split_fail_at_config_load():
    from rlcore.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.arith_operand_ranges: needs data.arith_eval_split"):
        load_config(None, ["model.path=x", "data.arith_operand_ranges=[9, 99]"])
    cfg = load_config(None, ["model.path=x", "data.arith_operand_ranges=[9, 99]", "data.arith_eval_split=iid"])
    assert cfg.data.arith_operand_ranges == [9, 99]
