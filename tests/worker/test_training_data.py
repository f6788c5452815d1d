"""Examples, prompt rendering, tokenization and hyperparameter presets (no training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker.taskspec import TaskSpec
from worker.training import (
    TrainingConfigError,
    TrainSpec,
    cpu_has_native_bf16,
    resolve_hyperparameters,
    split_eval,
)
from worker.training_data import (
    TrainExample,
    build_examples,
    student_messages,
    template_injects_default_system,
    tokenize_example,
)
from worker.training_loop import CPU_EAGER_ATTENTION_MAX_TOKENS, cpu_attention

# SmolLM2-135M-Instruct's own template: a default system prompt when none is given.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LABELS = TaskSpec(
    instruction_template="Message: {{text}}",
    output_kind="label",
    input_fields=("text",),
    label_set=("card_arrival", "pending_transfer"),
)


@pytest.fixture
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def smollm2_like(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = SMOLLM2_TEMPLATE
    return tok


def test_build_examples_renders_the_task_prompt_and_canonical_output() -> None:
    task = TaskSpec(
        instruction_template="Receipt: {{text}}",
        output_kind="json",
        input_fields=("text",),
        system_prompt="Extract fields.",
        json_schema={"type": "object"},
    )
    [example] = build_examples(task, [{"text": "TOTAL 3.50", "output": {"total": 3.5, "a": 1}}])
    assert example.messages[0] == {"role": "system", "content": "Extract fields."}
    assert example.messages[1]["content"].startswith("Receipt: TOTAL 3.50")
    assert example.completion == '{"a": 1, "total": 3.5}'
    with pytest.raises(ValueError, match="row 1: no 'output'"):
        build_examples(LABELS, [{"text": "a", "output": "card_arrival"}, {"text": "b"}])


def test_the_models_default_system_prompt_is_never_used(tokenizer, smollm2_like) -> None:  # type: ignore[no-untyped-def]
    [example] = build_examples(LABELS, [{"text": "where is my card", "output": "card_arrival"}])
    assert not template_injects_default_system(tokenizer)
    assert student_messages(example.messages, tokenizer) == example.messages

    assert template_injects_default_system(smollm2_like)
    messages = student_messages(example.messages, smollm2_like)
    assert messages[0] == {"role": "system", "content": ""}
    rendered = smollm2_like.apply_chat_template(messages, tokenize=False)
    assert "SmolLM" not in rendered
    with_task_prompt = [{"role": "system", "content": "Classify."}, *example.messages]
    assert student_messages(with_task_prompt, smollm2_like) == with_task_prompt


def test_loss_is_on_the_completion_and_the_prompt_matches_inference(smollm2_like) -> None:  # type: ignore[no-untyped-def]
    [example] = build_examples(LABELS, [{"text": "where is my card", "output": "card_arrival"}])
    tok = tokenize_example(example, smollm2_like, max_length=512)
    n_prompt = sum(1 for label in tok.labels if label == -100)
    assert tok.labels[:n_prompt] == [-100] * n_prompt
    assert tok.labels[n_prompt:] == tok.input_ids[n_prompt:]
    completion = smollm2_like.decode(tok.input_ids[n_prompt:])
    assert completion == "card_arrival<|im_end|>\n"  # learns to stop
    inference_ids = smollm2_like.apply_chat_template(
        student_messages(example.messages, smollm2_like), add_generation_prompt=True
    )
    inference_ids = inference_ids["input_ids"] if hasattr(inference_ids, "keys") else inference_ids
    assert tok.input_ids[:n_prompt] == list(inference_ids)
    assert not tok.truncated


def test_too_long_examples_keep_the_answer_and_the_assistant_header(tokenizer) -> None:  # type: ignore[no-untyped-def]
    long = TrainExample(
        messages=[
            {"role": "system", "content": "Classify."},
            {"role": "user", "content": "my card " * 200},
        ],
        completion="card_arrival",
    )
    tok = tokenize_example(long, tokenizer, max_length=64)
    assert tok.truncated and len(tok.input_ids) <= 64
    n_prompt = tok.labels.count(-100)
    assert tokenizer.decode(tok.input_ids[n_prompt:]).startswith("card_arrival<|im_end|>")
    prompt = tokenizer.decode(tok.input_ids[:n_prompt])
    assert prompt.startswith("<|im_start|>system\nClassify.")
    assert prompt.endswith("<|im_start|>assistant\n")


def _spec(n: int = 100, **kw) -> TrainSpec:  # type: ignore[no-untyped-def]
    example = TrainExample(messages=[{"role": "user", "content": "x"}], completion="y")
    return TrainSpec(base_model="m", output_dir="o", train_examples=[example] * n, **kw)


def test_presets_follow_dataset_size_and_hardware() -> None:
    quick_small = resolve_hyperparameters(_spec(preset="quick"), n_train=200, device="cpu")
    quick_big = resolve_hyperparameters(_spec(preset="quick"), n_train=5000, device="cpu")
    assert quick_small.epochs > quick_big.epochs
    assert quick_small.total_steps == 50  # 2 epochs x 200 rows / batch 8
    assert quick_big.total_steps == 150  # capped on CPU
    on_gpu = resolve_hyperparameters(_spec(preset="quick"), n_train=5000, device="cuda")
    assert on_gpu.total_steps == 313 and on_gpu.bf16 and on_gpu.batch_size == 16
    cpu = resolve_hyperparameters(_spec(), n_train=5000, device="cpu")
    assert cpu.preset is None and not cpu.gradient_checkpointing
    assert cpu.bf16 is cpu_has_native_bf16()  # autocast only where the CPU does bf16 natively
    thorough = resolve_hyperparameters(_spec(preset="thorough"), n_train=5000, device="cpu")
    balanced = resolve_hyperparameters(_spec(preset="balanced"), n_train=5000, device="cpu")
    assert thorough.lora_r and balanced.lora_r and thorough.lora_r > balanced.lora_r


def test_explicit_hyperparameters_win_over_the_preset() -> None:
    hp = resolve_hyperparameters(
        _spec(
            preset="quick",
            epochs=3,
            learning_rate=1e-3,
            batch_size=4,
            grad_accum=2,
            lora_r=4,
            lora_alpha=8,
            lora_target_modules=["q_proj", "v_proj"],
            max_length=128,
        ),
        n_train=1000,
        device="cpu",
    )
    assert (hp.epochs, hp.learning_rate, hp.batch_size, hp.grad_accum) == (3, 1e-3, 4, 2)
    assert hp.total_steps == 375  # explicit epochs are not capped
    assert (hp.lora_r, hp.lora_alpha, hp.lora_target_modules, hp.max_length) == (
        4,
        8,
        ["q_proj", "v_proj"],
        128,
    )
    assert resolve_hyperparameters(_spec(max_steps=7), n_train=1000, device="cpu").total_steps == 7
    full = resolve_hyperparameters(_spec(method="full"), n_train=1000, device="cpu")
    assert full.learning_rate == 2e-5 and full.lora_r is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "qlora"}, "QLoRA needs a CUDA GPU"),
        ({"method": "dora"}, "method: must be one of lora, qlora, full"),
        ({"preset": "fast"}, "preset: must be one of quick, balanced, thorough"),
        ({"batch_size": -1}, "batch_size: must be at least 1"),
        ({"learning_rate": 5.0}, "learning_rate: must be between 0 and 1"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(overrides, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TrainingConfigError, match=message) as caught:
        resolve_hyperparameters(_spec(**overrides), n_train=100, device="cpu")
    # The field is data, not text to parse: "field: message" is only how str() shows it.
    field, _, rest = message.partition(": ")
    if rest:
        assert caught.value.field == field and caught.value.message == rest
    else:
        assert caught.value.field is None and caught.value.message.startswith(message)


def test_hyperparameter_fields_are_the_spec_settings_a_user_may_choose() -> None:
    from worker.training import HYPERPARAMETER_FIELDS

    assert set(HYPERPARAMETER_FIELDS) == {
        "epochs",
        "max_steps",
        "learning_rate",
        "batch_size",
        "grad_accum",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "max_length",
        "checkpoint_every_steps",
        "eval_every_steps",
        "seed",
        "label_list_in_prompt",
        "rationale_training",
        "soft_label_weight",
        "soft_label_temperature",
    }
    assert set(HYPERPARAMETER_FIELDS) <= set(_spec().settings_json())


def test_eval_fraction_holds_out_a_seeded_disjoint_share() -> None:
    examples = [
        TrainExample(messages=[{"role": "user", "content": str(i)}], completion="y")
        for i in range(50)
    ]
    spec = TrainSpec(base_model="m", output_dir="o", train_examples=examples, eval_fraction=0.2)
    train, evals = split_eval(spec)
    assert len(evals) == 10 and len(train) == 40
    assert {e.messages[0]["content"] for e in train}.isdisjoint(
        e.messages[0]["content"] for e in evals
    )
    assert split_eval(spec) == (train, evals)
    hp = resolve_hyperparameters(spec, n_train=len(train), device="cpu")
    assert hp.eval_every_steps is not None


def test_the_label_list_is_dropped_and_nothing_else() -> None:
    from worker.taskspec import build_messages, without_label_list

    task = dataclasses.replace(
        LABELS, instruction_template="Ticket:\n\n{{ text }}", system_prompt="You sort tickets."
    )
    # A message that itself contains blank lines and the word "labels" keeps all of it.
    text = "My card is late.\n\nAnswer with labels please"
    full = build_messages(task, {"text": text})
    compact = without_label_list(full)
    assert compact[0] == {"role": "system", "content": "You sort tickets."}
    assert compact[1] == {"role": "user", "content": f"Ticket:\n\n{text}"}
    assert "card_arrival" in full[1]["content"]  # the input is not changed in place
    assert without_label_list(compact) == compact
    # JSON and text tasks have no label list: unchanged.
    text_task = TaskSpec(
        instruction_template="{{ text }}", output_kind="text", input_fields=("text",)
    )
    assert without_label_list(build_messages(text_task, {"text": text})) == build_messages(
        text_task, {"text": text}
    )


def test_a_small_student_gets_a_higher_lora_learning_rate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import json as json_

    # The parameter count comes from the safetensors headers: it equals the loaded model's.
    from transformers import AutoModelForCausalLM

    from worker.training import count_parameters

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert count_parameters(tiny_model_dir) == sum(p.numel() for p in loaded.parameters())
    assert count_parameters(tmp_path / "no-such-model") is None

    example = TrainExample(messages=[{"role": "user", "content": "x"}], completion="y")

    def lr(**kw) -> float:  # type: ignore[no-untyped-def]
        spec = TrainSpec(output_dir="o", train_examples=[example], preset="quick", **kw)
        return resolve_hyperparameters(spec, n_train=600, device="cpu").learning_rate

    assert lr(base_model=str(tiny_model_dir)) == pytest.approx(2e-3)  # 10x the preset's 2e-4
    assert lr(base_model="") == 2e-4  # unknown size: the preset's rate
    assert lr(base_model=str(tiny_model_dir), learning_rate=3e-4) == 3e-4  # asked for: kept
    assert lr(base_model=str(tiny_model_dir), method="full") == 2e-5  # full fine-tuning: kept

    # A folder whose tensors add up to half a billion parameters or more keeps the preset's rate.
    big = tmp_path / "big-header-only"
    big.mkdir()
    header = json_.dumps({"w": {"dtype": "F32", "shape": [50_000, 10_000], "data_offsets": [0, 0]}})
    blob = header.encode()
    (big / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)
    assert count_parameters(big) == 500_000_000
    assert lr(base_model=str(big)) == 2e-4


def test_cpu_attention_is_eager_only_for_short_sequences() -> None:
    assert cpu_attention(CPU_EAGER_ATTENTION_MAX_TOKENS) == "eager"
    assert cpu_attention(CPU_EAGER_ATTENTION_MAX_TOKENS + 1) is None
