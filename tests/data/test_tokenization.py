import pytest
import torch

from alignkit.data import (
    IGNORE_INDEX,
    PreferenceCollator,
    PreferenceExample,
    PromptCollator,
    PromptExample,
    SFTCollator,
    SFTExample,
    encode_pair,
    pack_sequences,
    tokenize_preference,
    tokenize_prompt,
    tokenize_records,
    tokenize_sft,
)
from alignkit.models.tiny import tiny_tokenizer

# Like SmolLM2's template: injects a default system message when there is none.
SYSTEM_DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tok_system():
    t = tiny_tokenizer()
    t.chat_template = SYSTEM_DEFAULT_TEMPLATE
    return t


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def full_ids(tokenizer, messages):
    return enc(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))


# ----------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("which", ["tok", "tok_system"])
def test_chat_prompt_plus_response_is_the_whole_conversation(request, which):
    tokenizer = request.getfixturevalue(which)
    prompt = [user("Hi"), assistant("Hello! How can I help?"), user("What is 2 + 2? Ünïcödé ✓")]
    response = [assistant("4.")]
    prompt_ids, response_ids = encode_pair(prompt, response, tokenizer)
    assert prompt_ids + response_ids == full_ids(tokenizer, prompt + response)
    generation_prompt = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=False
    )
    assert prompt_ids == enc(tokenizer, generation_prompt)
    assert tokenizer.decode(response_ids) == "4.<|im_end|>\n"


def test_chat_concatenation_holds_in_tokenized_preference_and_sft(tok_system):
    prompt = [user("Name a colour.")]
    ex = PreferenceExample(prompt, [assistant("Blue.")], [assistant("I can't say.")])
    out = tokenize_preference(ex, tok_system)
    assert out["chosen_input_ids"] == full_ids(tok_system, prompt + ex.chosen)
    assert out["rejected_input_ids"] == full_ids(tok_system, prompt + ex.rejected)
    sft = tokenize_sft(SFTExample(prompt, [assistant("Blue.")]), tok_system)
    assert sft["input_ids"] == out["chosen_input_ids"]


def test_plain_text_is_prompt_plus_response_plus_eos(tok):
    prompt_ids, response_ids = encode_pair("Q: 2+2?\nA:", " 4", tok)
    assert prompt_ids == enc(tok, "Q: 2+2?\nA:")
    assert response_ids == [*enc(tok, " 4"), tok.eos_token_id]


# ----------------------------------------------------------------------------- labels


def test_labels_mask_the_prompt(tok):
    out = tokenize_sft(SFTExample("Question?", "Answer."), tok)
    n = out["prompt_length"]
    assert n == len(enc(tok, "Question?"))
    assert out["labels"][:n] == [IGNORE_INDEX] * n
    assert out["labels"][n:] == out["input_ids"][n:]
    assert out["labels"][-1] == tok.eos_token_id

    everything = tokenize_sft(SFTExample("Question?", "Answer."), tok, train_on_prompt=True)
    assert everything["labels"] == everything["input_ids"]


def test_preference_labels_and_metadata(tok):
    ex = PreferenceExample("P", "good", "bad!", group="g", margin=1.5)
    out = tokenize_preference(ex, tok)
    n = out["prompt_length"]
    assert out["prompt_input_ids"] == out["chosen_input_ids"][:n] == out["rejected_input_ids"][:n]
    for side in ("chosen", "rejected"):
        assert out[f"{side}_labels"][:n] == [IGNORE_INDEX] * n
        assert out[f"{side}_labels"][n:] == out[f"{side}_input_ids"][n:]
    assert (out["group"], out["margin"]) == ("g", 1.5)


# ----------------------------------------------------------------------------- truncation


def test_truncation_keeps_the_end_of_the_prompt_and_cuts_the_response_tail(tok):
    prompt = "BEGINNING " + "x" * 50 + " END?"
    response = "y" * 40
    full_prompt = enc(tok, prompt)
    full_response = [*enc(tok, response), tok.eos_token_id]

    out = tokenize_sft(SFTExample(prompt, response), tok, max_length=30)
    assert len(out["input_ids"]) == 30
    # the prompt keeps max(30 - 41, 30 // 2) = 15 tokens from its END
    assert out["prompt_length"] == 15
    assert out["input_ids"][:15] == full_prompt[-15:]
    assert tok.decode(out["input_ids"][:15]).endswith(" END?")
    assert out["input_ids"][15:] == full_response[:15]

    # a short response leaves more room for the prompt
    short = tokenize_sft(SFTExample(prompt, "ok"), tok, max_length=30)
    assert short["prompt_length"] == 27
    assert short["input_ids"] == [*full_prompt[-27:], *enc(tok, "ok"), tok.eos_token_id]


def test_max_prompt_length_caps_the_prompt_end(tok):
    out = tokenize_sft(SFTExample("abcdefghij", "k"), tok, max_prompt_length=4)
    assert tok.decode(out["input_ids"][: out["prompt_length"]]) == "ghij"
    assert tokenize_prompt(PromptExample("abcdefghij"), tok, max_prompt_length=3)["input_ids"] == (
        enc(tok, "hij")
    )


def test_chat_prompt_truncation_keeps_the_generation_prompt(tok):
    prompt = [user("long " * 40 + "final question?")]
    out = tokenize_preference(
        PreferenceExample(prompt, [assistant("Yes.")], [assistant("No, never.")]),
        tok,
        max_length=40,
    )
    kept = tok.decode(out["prompt_input_ids"])
    assert kept.endswith("final question?<|im_end|>\n<|im_start|>assistant\n")
    assert len(out["chosen_input_ids"]) <= 40 and len(out["rejected_input_ids"]) <= 40
    # both sides share the same (truncated) prompt
    n = out["prompt_length"]
    assert out["chosen_input_ids"][:n] == out["rejected_input_ids"][:n]


def test_preference_truncation_uses_the_longer_response(tok):
    ex = PreferenceExample("p" * 20, "c" * 5, "r" * 30)
    out = tokenize_preference(ex, tok, max_length=24)
    assert out["prompt_length"] == 12  # max(24 - 31, 12)
    assert len(out["rejected_input_ids"]) == 24
    assert out["chosen_input_ids"] == enc(tok, "p" * 12) + enc(tok, "c" * 5) + [tok.eos_token_id]


# ----------------------------------------------------------------------------- collators


def test_preference_collator_concatenates_chosen_then_rejected(tok):
    examples = [
        PreferenceExample("Q1", "a", "bbbbbb", group="concise", margin=2.0),
        PreferenceExample("Question two", "cc", "d", group="detailed"),
    ]
    feats = [tokenize_preference(e, tok) for e in examples]
    batch = PreferenceCollator(tok.pad_token_id)(feats)
    seqs = [f["chosen_input_ids"] for f in feats] + [f["rejected_input_ids"] for f in feats]
    labels = [f["chosen_labels"] for f in feats] + [f["rejected_labels"] for f in feats]
    length = max(map(len, seqs))
    assert batch["input_ids"].shape == (4, length)
    for row, (seq, lab) in enumerate(zip(seqs, labels, strict=True)):
        n = len(seq)
        assert batch["input_ids"][row, :n].tolist() == seq
        assert batch["input_ids"][row, n:].eq(tok.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (length - n)
        assert batch["labels"][row].tolist() == lab + [IGNORE_INDEX] * (length - n)
    assert batch["group"] == ["concise", "detailed"]
    assert batch["margin"].tolist() == [2.0, 0.0]
    assert batch["has_margin"].tolist() == [True, False]
    assert batch["prompt_lengths"].tolist() == [f["prompt_length"] for f in feats]


def test_preference_batch_runs_one_forward_pass(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    feats = [
        tokenize_preference(
            PreferenceExample([user("Hi")], [assistant("Yo")], [assistant("No")]), tok
        )
    ] * 3
    batch = PreferenceCollator(tok.pad_token_id)(feats)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_sft_collator_right_pads(tok):
    feats = [tokenize_sft(SFTExample("a", "b"), tok), tokenize_sft(SFTExample("long", "x"), tok)]
    batch = SFTCollator(tok.pad_token_id, pad_to_multiple_of=8)(feats)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, :3].tolist() == feats[0]["input_ids"]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 5
    assert batch["labels"][0].tolist() == feats[0]["labels"] + [IGNORE_INDEX] * 5
    assert "position_ids" not in batch


def test_prompt_collator_left_pads(tok):
    examples = [PromptExample("hi", group="a", extra={"answer": "1"}), PromptExample("hello")]
    feats = [tokenize_prompt(e, tok) for e in examples]
    batch = PromptCollator(tok.pad_token_id)(feats)
    assert batch["input_ids"].tolist() == [
        [tok.pad_token_id] * 3 + enc(tok, "hi"),
        enc(tok, "hello"),
    ]
    assert batch["attention_mask"].tolist() == [[0, 0, 0, 1, 1], [1] * 5]
    assert batch["prompt"] == ["hi", "hello"]
    assert batch["group"] == ["a", None]
    assert batch["extra"] == [{"answer": "1"}, {}]


def test_prompt_collator_chat_prompts_end_with_generation_prompt(tok):
    feats = [tokenize_prompt(PromptExample([user("2+2?")]), tok)]
    batch = PromptCollator(tok.pad_token_id)(feats)
    assert tok.decode(batch["input_ids"][0]).endswith("<|im_start|>assistant\n")
    assert batch["prompt_text"][0] == tok.decode(batch["input_ids"][0])


def test_collators_reject_missing_pad_id():
    with pytest.raises(ValueError, match="pad_token_id is None"):
        PreferenceCollator(None)


# ----------------------------------------------------------------------------- packing


def test_pack_sequences(tok):
    feats = [tokenize_sft(SFTExample("p" * n, "r"), tok) for n in (3, 4, 10, 2)]
    lengths = [len(f["input_ids"]) for f in feats]  # 5, 6, 12, 4
    blocks = pack_sequences(feats, max_length=12)
    assert [len(b["input_ids"]) for b in blocks] == [11, 12, 4]
    first = blocks[0]
    assert first["input_ids"] == feats[0]["input_ids"] + feats[1]["input_ids"]
    assert first["position_ids"] == list(range(lengths[0])) + list(range(lengths[1]))
    # the first label of every example is masked: no learning across the seam
    assert first["labels"][lengths[0]] == IGNORE_INDEX
    batch = SFTCollator(tok.pad_token_id)(blocks)
    assert batch["position_ids"].shape == batch["input_ids"].shape
    assert batch["position_ids"][2].tolist() == [0, 1, 2, 3] + [0] * 8


def test_tokenize_records_dispatches(tok):
    out = tokenize_records(
        [PreferenceExample("q", "a", "b"), SFTExample("q", "a"), PromptExample("q")], tok
    )
    assert "chosen_input_ids" in out[0] and "labels" in out[1] and "prompt_text" in out[2]
    assert torch.is_tensor(PromptCollator(tok.pad_token_id)([out[2]])["input_ids"])


def test_token_merged_across_the_seam_goes_to_the_response():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alignkit.models.tiny import CHATML_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(["assistant\n4.", "user\nhi"] * 50, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    prompt, response = [user("hi")], [assistant("4.")]
    whole = full_ids(tokenizer, prompt + response)
    # the BPE merged "assistant\n4." into one token, across the seam
    assert "assistantĊ4." in tokenizer.convert_ids_to_tokens(whole)
    prompt_ids, response_ids = encode_pair(prompt, response, tokenizer)
    assert prompt_ids + response_ids == whole
    assert "4." in tokenizer.decode(response_ids)


@pytest.mark.parametrize("which", ["tok", "tok_system"])
def test_sft_all_assistant_turns(request, which):
    tokenizer = request.getfixturevalue(which)
    msgs = [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4.")]
    ex = SFTExample(msgs[:3], msgs[3:])

    def trained_text(out):
        return tokenizer.decode([t for t in out["labels"] if t != IGNORE_INDEX])

    assert trained_text(tokenize_sft(ex, tokenizer)) == "4.<|im_end|>\n"
    both = tokenize_sft(ex, tokenizer, all_assistant_turns=True)
    assert trained_text(both) == "Hello!<|im_end|>\n4.<|im_end|>\n"
    assert both["input_ids"] == full_ids(tokenizer, msgs)
    # truncation drops the first turns from the prompt and their mask with them
    cut = tokenize_sft(ex, tokenizer, max_prompt_length=8, all_assistant_turns=True)
    assert trained_text(cut) == "4.<|im_end|>\n"
