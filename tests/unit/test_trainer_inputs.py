"""Bad data and bad reward specs fail in Trainer(), before Ray or any worker starts."""
import pytest

from rlcore.config import config_from_dict
from rlcore.data.loader import DataError
from rlcore.trainer import Trainer
from rewards import RewardError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlcore.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model(tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=1, num_heads=2,
                                 num_kv_heads=1, intermediate_size=64))


def _cfg(tmp_path, tiny, **data):
    return config_from_dict({
        "output_dir": str(tmp_path / "runs"), "model": {"path": tiny},
        "data": {"task": "file", **data}, "tracking": {"progress": False},
    })


def test_bad_dataset_row_names_file_and_line(tmp_path, tiny):
    import ray

    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2", "answer": "4"}\n{"q": "3+3"}\n')
    cfg = _cfg(tmp_path, tiny, train_path=str(data), fields={"prompt": "question"})
    ray_was_up = ray.is_initialized()  # other test modules may hold a session cluster
    with pytest.raises(DataError, match=r"train.jsonl:3: missing field 'question'"):
        Trainer(cfg)
    assert ray.is_initialized() == ray_was_up  # failed before connecting to Ray


def test_invalid_json_line(tmp_path, tiny):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": \n')
    with pytest.raises(DataError, match=r"train.jsonl:2"):
        Trainer(_cfg(tmp_path, tiny, train_path=str(data)))


def test_loads_good_file_with_field_mapping(tmp_path, tiny):
    data = tmp_path / "train.jsonl"
    data.write_text('{"problem": "1+1=", "solution": "2"}\n{"problem": "2+2=", "solution": "4"}\n')
    cfg = _cfg(tmp_path, tiny, train_path=str(data), fields={"prompt": "problem", "answer": "solution"})
    cfg.rollout.prompts_per_step = 2
    trainer = Trainer(cfg)
    assert [r["answer"] for r in trainer.train_records] == ["2", "4"]
    ids = trainer.renderer.ids(trainer.train_records[0])
    assert trainer.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_unknown_reward_fails_early(tmp_path, tiny):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    cfg = _cfg(tmp_path, tiny, train_path=str(data))
    cfg.reward.fn = "no_such_reward"
    with pytest.raises(RewardError, match="no_such_reward"):
        Trainer(cfg)


def test_fresh_run_refuses_to_clobber_checkpoints(tmp_path, tiny):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    cfg = _cfg(tmp_path, tiny, train_path=str(data))
    cfg.rollout.prompts_per_step = 1
    old = cfg.run_dir / "checkpoints" / "step_3"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match="resume=latest"):
        Trainer(cfg)
    cfg.resume = "step_7"
    with pytest.raises(FileNotFoundError, match="step_7"):
        Trainer(cfg)
    cfg.resume, cfg.overwrite = "", True
    Trainer(cfg)  # explicit opt-in


class _ScoreOnlyPool:
    """Scores like a reward that returns only a score (no `correct`): 1.0 when the completion
    text equals the ground truth."""

    def score(self, items):
        from rewards.schema import RewardResult

        return [RewardResult(score=1.0 if it.completion.strip() == it.ground_truth else 0.0) for it in items]

    def pop_metrics(self):
        return {}


def test_in_training_eval_uses_the_acceptance_rule_and_samples_with_fixed_seeds(tmp_path, tiny):
    from types import SimpleNamespace

    from rollout.engine import Completion

    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "p{i}", "answer": "{i}"}}\n' for i in range(6)))
    cfg = _cfg(tmp_path, tiny, train_path=str(data), eval_path=str(data))
    cfg.rollout.prompts_per_step = 2
    cfg.eval.sampled_k = 4
    trainer = Trainer(cfg)
    trainer.pool = _ScoreOnlyPool()
    trainer.progress = SimpleNamespace(eval_done=lambda *a: None)
    answers = [r["answer"] for r in trainer.eval_records]
    calls = []

    def generate(requests, sampling):
        """Greedy answers the first 3 prompts right; sampling answers every other sample right."""
        calls.append(([r.seed for r in requests], sampling.temperature))
        per_prompt = 1 if sampling.temperature == 0 else cfg.eval.sampled_k
        out = []
        for k in range(len(requests)):
            right = k < 3 if sampling.temperature == 0 else k % 2 == 1
            text = answers[k // per_prompt] if right else "wrong"
            out.append(Completion(trainer.tokenizer(text, add_special_tokens=False)["input_ids"], [], "stop"))
        return out

    trainer.generate = generate
    m = trainer._evaluate()
    assert m["eval/accuracy"] == pytest.approx(0.5)  # 3 of 6: a score-only reward counts (it gave 0 before)
    assert m["eval/accuracy_sampled"] == pytest.approx(0.5) and m["eval/sampled_k"] == 4
    (greedy_seeds, greedy_t), (sampled_seeds, sampled_t) = calls
    assert greedy_t == cfg.eval.temperature == 0 and sampled_t == cfg.rollout.temperature
    assert len(sampled_seeds) == 6 * 4 and len(set(sampled_seeds)) == 24
    trainer.step = 7
    trainer._evaluate()
    assert calls[3][0] == sampled_seeds  # the same random numbers at every evaluation
    assert trainer.eval_history[-1]["accuracy_sampled"] == pytest.approx(0.5)
