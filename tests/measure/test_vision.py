"""The pure parts of measuring an image-text-to-text model: the image in the prefill only, the answers as scored
windows, the image inputs of a batch of windows, the language part's bytes."""

from __future__ import annotations

import torch

from pytest_quant.measure.vision import ImagePrefill, answer_windows, language_part, language_part_bytes, stacked_inputs


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.device = torch.device("cpu")

    def forward(self, input_ids, **kwargs):
        self.calls.append((tuple(input_ids.shape), {k: tuple(v.shape) for k, v in kwargs.items() if torch.is_tensor(v)}))
        return input_ids


def test_the_image_goes_into_every_prefill_and_no_decode_step() -> None:
    model = _Recorder()
    wrapped = ImagePrefill(model, {"pixel_values": torch.zeros(1, 3, 4, 4)})
    wrapped(torch.zeros(1, 5, dtype=torch.long), use_cache=True)
    wrapped(torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    wrapped(input_ids=torch.zeros(3, 5, dtype=torch.long))  # a batch of 3 copies: one image each
    assert model.calls == [((1, 5), {"pixel_values": (1, 3, 4, 4)}), ((1, 1), {}), ((3, 5), {"pixel_values": (3, 3, 4, 4)})]
    assert wrapped.device == model.device  # the model's attributes


def test_answers_become_windows_that_score_every_answer_token() -> None:
    found = answer_windows([(7, 8, 9), (7, 9)], [(1, 2, 3), (4,)], "images.jsonl")
    first, second = found.windows.windows
    assert (first.input_ids, first.target_ids) == ((7, 8, 9, 1, 2), (1, 2, 3))  # the last prompt token predicts 1
    assert (second.input_ids, second.target_ids) == ((7, 9), (4,))
    assert found.windows.tokens_scored == 4 and found.windows.context_tokens == 5
    assert found.answers == ((1, 2, 3), (4,))


def test_a_batch_of_windows_gets_its_prompts_images_stacked() -> None:
    images = [{"pixel_values": torch.full((1, 2), float(i))} for i in range(3)]
    batch = stacked_inputs(images)(1, 2)
    assert batch["pixel_values"].tolist() == [[1.0, 1.0], [2.0, 2.0]]


def test_the_language_part_counts_each_storage_once() -> None:
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = torch.nn.Linear(10, 10)
            self.language_model = torch.nn.Embedding(6, 4)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = torch.nn.Linear(4, 6, bias=False)
            self.lm_head.weight = self.model.language_model.weight  # tied: one storage

        def get_output_embeddings(self):
            return self.lm_head

    model = Model()
    assert language_part(model) == [model.model.language_model, model.lm_head]
    assert language_part_bytes(model) == 6 * 4 * 4  # the tied head is the embedding; the tower is not counted
    assert language_part_bytes(torch.nn.Linear(2, 2)) is None  # a text model: no language part of its own
