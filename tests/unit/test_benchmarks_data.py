"""Shipped benchmark files and their registry, the Hugging Face / parquet loaders, prompt rendering."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlcore.data import benchmarks as bm
from rlcore.data.loader import DataError, load_hf_dataset, load_records

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_ROWS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "gsm8k": 1319, "minerva": 272,
                 "olympiadbench": 675}


# ------------------------------------------------------------------------------------ shipped files


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_every_shipped_benchmark_loads(name):
    records = bm.load_benchmark(name)
    assert len(records) == EXPECTED_ROWS[name]
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert r["prompt"].strip() and str(r["answer"]).strip()
        assert r["metadata"]["benchmark"] == name and "solution" not in r["metadata"]
    assert bm.load_benchmark(name, limit=3) == records[:3]


def test_registry_covers_the_files_and_sources():
    root = bm.benchmarks_dir()
    assert root == ROOT / "data" / "benchmarks"
    assert sorted(bm.list_benchmarks()) == sorted(EXPECTED_ROWS)
    shipped = {p.name for p in root.glob("*.jsonl")}
    assert shipped == {bm.get_benchmark(n).file for n in EXPECTED_ROWS}  # every file registered, nothing else
    assert not any("train" in f for f in shipped)
    sources = (root / "SOURCES.md").read_text()
    for f in shipped:
        assert f in sources
    assert "MIT" in sources and "Licence caveat" in sources


def test_benchmark_details():
    assert bm.get_benchmark("gsm8k").answer_format == "gsm8k"
    assert bm.get_benchmark("MATH-500").name == "math500"  # aliases, case-insensitive
    assert bm.get_benchmark("minerva_math").name == "minerva"
    assert all("\\boxed{}" in bm.get_benchmark(n).instruction for n in EXPECTED_ROWS)
    math = bm.load_benchmark("math500", limit=5)
    assert all(r["group"] in {"1", "2", "3", "4", "5"} for r in math)
    assert bm.load_benchmark("aime24", limit=1)[0]["answer"] == "204"
    assert [b.name for b in bm.parse_benchmark_list("aime24, gsm8k,aime24")] == ["aime24", "gsm8k"]
    assert len(bm.parse_benchmark_list("all")) == len(EXPECTED_ROWS)
    with pytest.raises(KeyError, match="available"):
        bm.parse_benchmark_list("math500,nope")


def test_pick_reward_prefers_the_gsm8k_reward(monkeypatch):
    from rewards import registry

    gsm8k = bm.get_benchmark("gsm8k")
    assert bm.pick_reward(bm.get_benchmark("math500")) == "math_answer"
    assert bm.pick_reward(gsm8k, "my_reward") == "my_reward"
    monkeypatch.setattr(registry, "registered_rewards", lambda: ["gsm8k_answer", "math_answer"])
    assert bm.pick_reward(gsm8k) == "gsm8k_answer"
    monkeypatch.setattr(registry, "registered_rewards", lambda: ["math_answer"])
    assert bm.pick_reward(gsm8k) == "math_answer"


def test_benchmarks_dir_lookup(tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "SOURCES.md").write_text("x")
    (copy / "aime25.jsonl").write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n")
    monkeypatch.setenv(bm.ENV_DIR, str(copy))
    assert bm.benchmarks_dir() == copy
    assert bm.load_benchmark("aime25")[0]["answer"] == "2"
    monkeypatch.delenv(bm.ENV_DIR)
    assert bm.benchmarks_dir() == ROOT / "data" / "benchmarks"
    with pytest.raises(FileNotFoundError, match="benchmark files not found"):
        bm.benchmarks_dir(tmp_path / "nowhere")  # an explicit directory is not silently replaced
    with pytest.raises(FileNotFoundError, match="missing"):
        bm.load_benchmark("math500", data_dir=copy)


# ------------------------------------------------------------------------------------ loaders


ROWS = [{"question": f"q{i}?", "final": i, "uid": f"u{i}", "level": i % 2} for i in range(4)]
FIELDS = {"prompt": "question", "answer": "final", "id": "uid"}


def _parquet(path: Path, rows=ROWS) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_jsonl_and_parquet_with_field_mapping(tmp_path):
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq_path = _parquet(tmp_path / "d.parquet")
    for path in (jl, pq_path):
        recs = load_records(path, fields={**FIELDS, "difficulty": "level"})
        assert [r["id"] for r in recs] == ["u0", "u1", "u2", "u3"]
        assert recs[2]["prompt"] == "q2?" and recs[2]["answer"] == "2" and recs[2]["difficulty"] == 0
        assert recs[0]["metadata"] == {}


@pytest.fixture
def no_datasets(monkeypatch):
    """Make `import datasets` fail whether or not the package is installed."""
    monkeypatch.setitem(sys.modules, "datasets", None)


def test_hub_id_without_datasets_package_is_a_clear_error(no_datasets):
    with pytest.raises(DataError, match=r"optional `datasets` package.*pip install datasets"):
        load_hf_dataset("openai/gsm8k", split="test", config_name="main", fields={"prompt": "question"})


def test_local_hf_snapshot_of_parquet_shards(tmp_path, no_datasets):
    snap = tmp_path / "gsm8k"
    _parquet(snap / "main" / "test-00000-of-00002.parquet", ROWS[:2])
    _parquet(snap / "main" / "test-00001-of-00002.parquet", ROWS[2:])
    _parquet(snap / "main" / "train-00000-of-00001.parquet", ROWS[:1])
    recs = load_hf_dataset(snap, split="test", config_name="main", fields=FIELDS)
    assert [r["id"] for r in recs] == ["u0", "u1", "u2", "u3"]
    assert len(load_hf_dataset(snap / "main", split="train", fields=FIELDS)) == 1
    with pytest.raises(DataError, match="no file for split 'validation'"):
        load_hf_dataset(snap, split="validation", config_name="main", fields=FIELDS)


def _saved_dataset(path: Path, rows) -> Path:
    """What `Dataset.save_to_disk` writes: Arrow stream shards listed in state.json."""
    import pyarrow as pa

    path.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (path / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                 "_split": None}))
    (path / "dataset_info.json").write_text("{}")
    return path


def test_save_to_disk_directories_without_datasets(tmp_path, no_datasets):
    single = _saved_dataset(tmp_path / "single", ROWS)
    assert [r["answer"] for r in load_hf_dataset(single, fields=FIELDS)] == ["0", "1", "2", "3"]
    dd = tmp_path / "dict"
    _saved_dataset(dd / "train", ROWS[:3])
    _saved_dataset(dd / "test", ROWS[3:])
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert [r["id"] for r in load_hf_dataset(dd, split="test", fields=FIELDS)] == ["u3"]
    with pytest.raises(DataError, match="splits"):
        load_hf_dataset(dd, split="validation", fields=FIELDS)
    with pytest.raises(DataError, match=r"single\[row 1\]: missing field 'nope'"):
        load_hf_dataset(single, fields={"prompt": "question", "answer": "nope"})


def test_load_datasets_task_hf_and_file_directories(tmp_path, no_datasets):
    from rlcore.config import config_from_dict
    from rlcore.prompts import load_datasets

    snap = tmp_path / "snap"
    _parquet(snap / "data" / "train-00000-of-00001.parquet")
    _parquet(snap / "data" / "test-00000-of-00001.parquet", ROWS[:2])
    base = {"model": {"path": "x/y"}}
    for task in ("hf", "file"):
        cfg = config_from_dict({**base, "data": {"task": task, "train_path": str(snap), "eval_path": str(snap),
                                                 "fields": FIELDS}})
        train, evals = load_datasets(cfg)
        assert len(train) == 4 and len(evals) == 2
    cfg = config_from_dict({**base, "data": {"task": "hf", "train_path": "org/remote", "fields": FIELDS}})
    with pytest.raises(DataError, match="pip install datasets"):
        load_datasets(cfg)


# ------------------------------------------------------------------------------------ prompts


@pytest.fixture(scope="module")
def tokenizer():
    from rlcore.tiny_model import build_tokenizer

    return build_tokenizer()


def test_prompt_renderer_instruction_system_prompt_and_chat_template(tokenizer, tmp_path):
    from rlcore.config import DataConfig
    from rlcore.prompts import PromptRenderer

    rec = {"prompt": "What is 1+1?"}
    plain = PromptRenderer(tokenizer, DataConfig(instruction="Box it.", chat_template="none"))
    assert plain.text(rec) == "What is 1+1?\n\nBox it.\n"
    placed = DataConfig(prompt_template="{instruction}\nQ: {prompt}", instruction="Box it.", chat_template="none",
                        system_prompt="Be brief.")
    assert PromptRenderer(tokenizer, placed).text(rec) == "Be brief.\nBox it.\nQ: What is 1+1?\n"
    chat = PromptRenderer(tokenizer, DataConfig(system_prompt="S"))
    assert chat.text(rec) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n" \
                             "<|im_start|>assistant\n"
    assert PromptRenderer(tokenizer, DataConfig()).text(rec).endswith("<|im_start|>assistant\n")  # default unchanged
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}A:")
    assert PromptRenderer(tokenizer, DataConfig(chat_template=str(jinja))).text(rec) == "[user] What is 1+1?\nA:"
    with pytest.raises(FileNotFoundError, match="chat_template"):
        PromptRenderer(tokenizer, DataConfig(chat_template="missing.jinja"))


def test_eval_config_benchmark_keys():
    from rlcore.config import ConfigError, config_from_dict

    cfg = config_from_dict({"model": {"path": "x/y"}, "eval": {"benchmarks": ["math500", "gsm8k"], "benchmark_n": 4,
                                                               "benchmark_k": [1, 4], "benchmark_limit": 10}})
    assert cfg.eval.benchmarks == ["math500", "gsm8k"] and cfg.eval.benchmark_k == [1, 4]
    assert config_from_dict({"model": {"path": "x/y"}}).eval.benchmarks == []  # off by default
    with pytest.raises(ConfigError, match="unknown benchmark 'math5'"):
        config_from_dict({"model": {"path": "x/y"}, "eval": {"benchmarks": ["math5"]}})
    with pytest.raises(ConfigError, match="benchmark_k"):
        config_from_dict({"model": {"path": "x/y"}, "eval": {"benchmarks": ["math500"], "benchmark_k": [8]}})
