"""rlcore.convert_model: sources resolve to the right place, a conversion is a loadable HF
directory, and an interrupted one leaves nothing behind. The GGUF path itself runs on the real
SmolLM2 file in tests/integration/test_real_model.py."""
import json
from pathlib import Path

import pytest
import torch

from rlcore.convert_model import ConvertError, Source, convert, ensure_converted, resolve_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rlcore.tiny_model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=1, num_heads=2,
                             num_kv_heads=1, intermediate_size=64)


def test_package_resource_is_found_without_importing_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "shipped_weights"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing me needs a dependency you lack')\n")
    (pkg / "sub" / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_source("shipped_weights:sub/m.gguf") == Source(str(pkg / "sub"), "m.gguf")
    with pytest.raises(ConvertError, match="has no file 'other.gguf'"):
        resolve_source("shipped_weights:other.gguf")
    with pytest.raises(ConvertError, match="'no_such_package_here' is not installed"):
        resolve_source("no_such_package_here:m.gguf")


def test_files_dirs_and_hub_ids(tmp_path, tiny):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert resolve_source(str(tmp_path / "a.gguf")) == Source(str(tmp_path), "a.gguf")
    assert resolve_source(str(tmp_path)) == Source(str(tmp_path), "a.gguf")  # the one .gguf in a dir
    assert resolve_source(str(tiny)) == Source(str(tiny))
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct") == Source("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ConvertError, match="no such GGUF file"):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ConvertError, match="exactly one .gguf"):
        resolve_source(str(tmp_path))
    with pytest.raises(ConvertError, match="not a model directory"):
        resolve_source("./no/such/dir")


def test_converted_directory_loads_and_computes_the_same(tmp_path, tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert(str(tiny), tmp_path / "out")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= names
    tok = AutoTokenizer.from_pretrained(out)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] is not None
    ids = torch.tensor([tok("3+4+5=")["input_ids"]])
    a = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
    b = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.equal(a, b)
    with pytest.raises(ConvertError, match="already holds a model"):
        convert(str(tiny), out)
    assert ensure_converted(out, "never/read") == out  # an existing model is reused, not converted


def test_interrupted_conversion_leaves_nothing(tmp_path, tiny, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_tokenizer_that_does_not_survive_saving_is_refused(tmp_path, tiny, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    save = PreTrainedTokenizerBase.save_pretrained

    def save_and_lose_the_template(self, directory, *a, **k):
        files = save(self, directory, *a, **k)
        (Path(directory) / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
        return files

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_and_lose_the_template)
    with pytest.raises(ConvertError, match="chat template did not survive"):
        convert(str(tiny), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_output_is_readable_by_others(tmp_path, tiny):
    out = convert(str(tiny), tmp_path / "out")
    assert out.stat().st_mode & 0o755 == 0o755
