"""hmedit.toy.train_clip: seeded, resumable to the bit, safetensors only; the export loads as a CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hmedit.errors import HmeditError
from hmedit.toy import train_clip as tc
from hmedit.toy import world


def _run(run_dir: Path, *extra: str) -> None:
    torch.set_num_threads(1)
    tc.main(
        ["--arch", "tiny", "--run-dir", str(run_dir), "--dataset", "6", "--batch", "4", "--save-every", "1"]
        + ["--aux-warmup", "1"]  # one step of the image tower's shape loss alone, then the contrastive one
        + list(extra)
    )


@pytest.mark.slow
def test_three_steps_straight_equal_two_plus_one_resumed(tmp_path):
    _run(tmp_path / "a", "--stages", "data,train", "--steps", "3")
    _run(tmp_path / "b", "--stages", "data,train", "--steps", "3", "--until", "2")
    two = load_file(tmp_path / "b" / tc.CKPT)
    _run(tmp_path / "b", "--stages", "train", "--steps", "3")
    a, b = load_file(tmp_path / "a" / tc.CKPT), load_file(tmp_path / "b" / tc.CKPT)
    assert a.keys() == b.keys()
    assert any(k.startswith("opt.") for k in a) and any(k.startswith("ema.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # the resumed session really trained: step 3 differs from step 2
    assert not all(torch.equal(two[k], b[k]) for k in two if k.startswith("model."))
    assert (tmp_path / "a" / tc.DATA).exists() and not list((tmp_path / "a").glob("*.pt"))


@pytest.mark.slow
def test_export_loads_as_an_fp32_clip_with_its_processor(tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    out = tmp_path / "out"
    _run(tmp_path / "run", "--steps", "1", "--out", str(out))
    stored = load_file(out / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    model, proc = CLIPModel.from_pretrained(out), CLIPProcessor.from_pretrained(out)
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in tc.build_clip("tiny").parameters()
    )
    # the processor normalises a world image exactly as training does
    image = world.sample(3).image
    got = proc(images=[image], return_tensors="pt")["pixel_values"]
    want = tc.pixels(torch.from_numpy(image[None]), tc.ARCH["tiny"]["image_size"])
    assert got.shape[-1] == tc.ARCH["tiny"]["image_size"] and torch.allclose(got, want, atol=1e-5)
    assert (out / "training.json").is_file()


def test_data_records_what_each_image_shows(tmp_path):
    class A:
        run_dir, dataset, log, arch, workers = tmp_path, 5, None, "full", 2

    tc.make_data(A)
    data = tc.load_data(tmp_path / tc.DATA)
    assert data["images"].shape == (5, world.SIZE, world.SIZE, 3)
    for s in range(5):
        w = world.sample(s)
        assert torch.equal(data["images"][s], torch.from_numpy(w.image))
        got = [tuple(o) for o in data["objects"][s].tolist() if o[0] >= 0]
        want = [
            (world.COLOURS.index(o.colour), world.SHAPES.index(o.shape), world.TEXTURES.index(o.texture))
            for o in w.objects
        ]
        assert got == want


def test_data_of_a_smaller_tower_is_stored_resized_as_the_processor_resizes(tmp_path):
    class A:
        run_dir, dataset, log, arch = tmp_path, 3, None, "p8"

    tc.make_data(A)
    data = tc.load_data(tmp_path / tc.DATA)
    size = tc.ARCH["p8"]["image_size"]
    assert data["images"].shape == (3, size, size, 3)
    full = torch.from_numpy(world.sample(2).image[None])
    # training normalises the stored image exactly as it would have resized and normalised the full one
    assert torch.equal(tc.pixels(data["images"][2:3], size), tc.pixels(full, size))


def test_captions_name_an_object_of_the_image_and_negatives_another_shape():
    objects = torch.full((2, tc.MAX_OBJECTS, 3), -1)
    objects[0, 0] = torch.tensor([0, 1, 0])  # a red square
    objects[1, :2] = torch.tensor([[5, 3, 1], [2, 0, 0]])  # a striped blue star, a yellow circle
    data = {"objects": objects, "outlined": torch.tensor([0, 1])}
    g = torch.Generator().manual_seed(0)
    caps, negs, targets, present = tc.draw_captions(data, torch.tensor([0, 1] * 20), g, 0.0, 0.5)
    assert set(caps[0::2]) <= {"a red square"} and set(caps[1::2]) <= {
        "a blue star",
        "a yellow circle",
        "an outlined striped blue star",
        "an outlined yellow circle",
    }
    assert targets[0::2] == [tc.class_of(0, 1)] * 20 and present[1] == [tc.class_of(5, 3), tc.class_of(2, 0)]
    assert negs and all(n.split()[-1] != "square" for n in negs if n.startswith("a red"))
    assert len(tc.class_captions()) == len(world.COLOURS) * len(world.SHAPES)
    assert tc.class_captions()[tc.class_of(5, 3)] == "a blue star"


def test_a_damaged_checkpoint_is_an_error_naming_it(tmp_path):
    path = tmp_path / tc.CKPT
    path.write_bytes(b"\x00" * 64)
    model = torch.nn.Linear(2, 2)
    opt, names = tc.make_optimizer(model, 1e-3)
    with pytest.raises(HmeditError) as info:
        tc.load_state(path, model, opt, names)
    assert info.value.location.file == path


@pytest.mark.slow
def test_the_auxiliary_shape_head_trains_and_stays_out_of_the_export(tmp_path):
    from transformers import CLIPModel

    out = tmp_path / "out"
    _run(tmp_path / "run", "--steps", "2", "--aux-shape", "1", "--out", str(out))
    state = load_file(tmp_path / "run" / tc.CKPT)
    assert "model.aux_shape.weight" in state and "ema.aux_shape.weight" in state
    assert not any("aux" in k for k in load_file(out / "model.safetensors"))
    CLIPModel.from_pretrained(out)  # loads without unexpected keys


def test_the_auxiliary_loss_asks_which_shapes_the_image_holds():
    torch.manual_seed(0)
    model = tc.build_clip("tiny")
    tc.attach_aux(model)
    pix = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 1], [0, 6, 1]])
    present = [[tc.class_of(0, 1)], [tc.class_of(2, 3), tc.class_of(4, 1)]]
    plain, _ = tc.clip_loss(model, pix, ids, 2, present=present)
    with_aux, fig = tc.clip_loss(model, pix, ids, 2, present=present, aux_weight=2.0)
    # the difference is exactly twice the multi-label loss of the head on the pooled image features
    pooled = model.vision_model(pixel_values=pix).pooler_output
    want = torch.zeros(2, len(world.SHAPES))
    want[0, 1] = want[1, 3] = want[1, 1] = 1
    bce = torch.nn.functional.binary_cross_entropy_with_logits(model.aux_shape(pooled), want)
    assert torch.allclose(with_aux - plain, 2 * bce, atol=1e-5)
    assert 0 <= fig["aux"] <= 1
    with_aux.backward()
    assert model.aux_shape.weight.grad is not None and model.aux_shape.weight.grad.abs().sum() > 0
