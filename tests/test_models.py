"""The SAM2 proposer and DINOv2 encoder against direct calls of the transformers models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_sam2_config, trained_looking_sam2
from transformers import Dinov2Model, Dinov2WithRegistersModel, Sam2Config, Sam2Model

import refseg.models.sam2.fast_decoder as fast_decoder
from refseg.errors import InvalidInputError
from refseg.models import Encoder, Proposer
from refseg.models.dinov2 import Dinov2Encoder
from refseg.models.sam2 import IMAGENET_MEAN, IMAGENET_STD, Sam2Options, Sam2Proposer, lean_hiera, two_way

LOGIT_ATOL = 1e-5
IOU_ATOL = 1e-6


def grid_points(per_side: int, size: int = 1024) -> torch.Tensor:
    """(per_side**2, 2) (x, y) grid: evenly spaced over [0, size - 1], plus 0.5."""
    axis = torch.linspace(0, size - 1, per_side) + 0.5
    xs, ys = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def normalized(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="module")
def sam2_reference(tiny_sam2_dir: Path) -> Sam2Model:
    """The same tiny checkpoint, loaded directly with transformers."""
    return Sam2Model.from_pretrained(tiny_sam2_dir).eval()


@pytest.fixture(scope="module")
def stock_proposer(tiny_sam2_dir: Path) -> Sam2Proposer:
    return Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", decoder="stock")


@pytest.fixture(scope="module")
def direct_outputs(sam2_reference: Sam2Model, tiny_image: torch.Tensor):
    """Direct Sam2Model calls on a 6x6 grid: (points, multimask logits (P,3,256,256), iou (P,3))."""
    points = grid_points(6)
    with torch.no_grad():
        embeddings = sam2_reference.get_image_embeddings(normalized(tiny_image)[None])
        out = sam2_reference(
            image_embeddings=embeddings,
            input_points=points.view(1, -1, 1, 2),
            input_labels=torch.ones((1, len(points), 1), dtype=torch.int32),
            multimask_output=True,
        )
    return points, out.pred_masks[0], out.iou_scores[0]


# ---------------------------------------------------------------------------- proposer


def test_proposer_meets_protocol(tiny_models):
    proposer, encoder = tiny_models
    assert isinstance(proposer, Proposer)
    assert isinstance(encoder, Encoder)
    assert proposer.image_size == 1024
    assert proposer.decoder == "fast"


def test_embedding_equals_direct_image_encoder(tiny_models, sam2_reference, tiny_image):
    proposer, _ = tiny_models
    embedding = proposer.embed(tiny_image)
    with torch.no_grad():
        expected = sam2_reference.get_image_embeddings(normalized(tiny_image)[None])
    for ours, theirs in zip(embedding.as_list(), expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert embedding.image_embeddings.shape[-2:] == (64, 64)
    assert embedding.feat_s0.shape[-2:] == (256, 256)


@pytest.mark.parametrize("encoder", ["lean", "stock"])
def test_encoder_runs_once_per_image(tiny_sam2_dir, tiny_image, encoder):
    proposer = Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", encoder=encoder)
    calls = []
    hook = proposer.model.vision_encoder.backbone.patch_embed.register_forward_hook(
        lambda *args: calls.append(1)
    )
    try:
        proposer.propose(tiny_image, grid_points(5), batch_size=4, iou_threshold=0.0)
    finally:
        hook.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("decoder", ["stock", "fast"])
def test_propose_equals_direct_best_of_three(decoder, tiny_sam2_dir, tiny_image, direct_outputs):
    points, masks, iou = direct_outputs
    proposer = Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", decoder=decoder)
    proposals = proposer.propose(tiny_image, points, batch_size=16, iou_threshold=-1.0)

    best_iou, best = iou.max(dim=1)
    assert len(best.unique()) > 1, "the tiny model should not always pick the same mask"
    assert len(proposals) == len(points)
    assert proposals.low_res_logits.shape == (len(points), 256, 256)
    assert proposals.low_res_logits.dtype == proposals.predicted_iou.dtype == torch.float32
    torch.testing.assert_close(proposals.points, points, rtol=0, atol=0)
    torch.testing.assert_close(proposals.predicted_iou, best_iou, rtol=0, atol=IOU_ATOL)
    torch.testing.assert_close(
        proposals.low_res_logits, masks[torch.arange(len(points)), best], rtol=0, atol=LOGIT_ATOL
    )


@pytest.mark.parametrize("decoder", ["stock", "fast"])
def test_iou_threshold_keeps_strictly_greater(decoder, tiny_sam2_dir, tiny_image, direct_outputs):
    points, masks, iou = direct_outputs
    best_iou, best = iou.max(dim=1)
    proposer = Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", decoder=decoder)
    embedding = proposer.embed(tiny_image)

    ordered = best_iou.sort().values
    middle = len(ordered) // 2
    threshold = float(ordered[middle - 1] + ordered[middle]) / 2  # between two proposals
    proposals = proposer.decode_points(embedding, points, batch_size=7, iou_threshold=threshold)
    keep = best_iou > threshold
    assert 0 < int(keep.sum()) < len(points)
    assert len(proposals) == int(keep.sum())
    torch.testing.assert_close(proposals.points, points[keep], rtol=0, atol=0)
    torch.testing.assert_close(proposals.predicted_iou, best_iou[keep], rtol=0, atol=IOU_ATOL)
    expected = masks[torch.arange(len(points)), best][keep]
    torch.testing.assert_close(proposals.low_res_logits, expected, rtol=0, atol=LOGIT_ATOL)
    assert bool((proposals.predicted_iou > threshold).all())

    if decoder == "stock":  # bit-identical to the direct call: a tie with the threshold is dropped
        tied = proposer.decode_points(embedding, points, batch_size=7, iou_threshold=float(ordered[middle]))
        assert len(tied) == int((best_iou > ordered[middle]).sum()) == len(proposals) - 1

    none = proposer.decode_points(embedding, points, batch_size=7, iou_threshold=1.0)
    assert len(none) == 0
    assert none.low_res_logits.shape == (0, 256, 256)
    assert none.points.shape == (0, 2)


@pytest.mark.parametrize("decoder", ["stock", "fast"])
def test_prompt_order_and_batch_size(decoder, tiny_sam2_dir, tiny_image):
    proposer = Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", decoder=decoder)
    embedding = proposer.embed(tiny_image)
    points = grid_points(4)
    reference = proposer.decode_points(embedding, points, batch_size=64, iou_threshold=-1.0)
    for batch_size in (1, 5):
        other = proposer.decode_points(embedding, points, batch_size=batch_size, iou_threshold=-1.0)
        torch.testing.assert_close(other.low_res_logits, reference.low_res_logits, rtol=0, atol=LOGIT_ATOL)
        torch.testing.assert_close(other.predicted_iou, reference.predicted_iou, rtol=0, atol=IOU_ATOL)
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(1))
    shuffled = proposer.decode_points(embedding, points[order], batch_size=4, iou_threshold=-1.0)
    torch.testing.assert_close(shuffled.points, points[order], rtol=0, atol=0)
    torch.testing.assert_close(
        shuffled.low_res_logits, reference.low_res_logits[order], rtol=0, atol=LOGIT_ATOL
    )


def test_no_points_gives_empty_proposals(tiny_models, tiny_image):
    proposer, _ = tiny_models
    proposals = proposer.propose(tiny_image, torch.zeros((0, 2)), batch_size=8, iou_threshold=0.0)
    assert len(proposals) == 0
    assert proposals.low_res_logits.shape == (0, 256, 256)


def test_wrong_image_shape_is_refused(tiny_models):
    proposer, _ = tiny_models
    with pytest.raises(ValueError, match="1024"):
        proposer.embed(torch.zeros(3, 512, 512))


def test_decode_boxes_equal_direct_single_mask(tiny_models, sam2_reference, tiny_image):
    proposer, _ = tiny_models
    boxes = torch.tensor(
        [[100.0, 120.0, 400.0, 500.0], [0.0, 0.0, 1023.0, 1023.0], [600.0, 50.0, 900.0, 300.0]]
    )
    embedding = proposer.embed(tiny_image)
    masks = proposer.decode_boxes(embedding, boxes)
    assert masks.shape == (3, 256, 256)
    assert masks.dtype == torch.float32
    with torch.no_grad():
        embeddings = sam2_reference.get_image_embeddings(normalized(tiny_image)[None])
        out = sam2_reference(image_embeddings=embeddings, input_boxes=boxes[None], multimask_output=False)
    torch.testing.assert_close(masks, out.pred_masks[0, :, 0], rtol=0, atol=LOGIT_ATOL)
    assert proposer.decode_boxes(embedding, torch.zeros((0, 4))).shape == (0, 256, 256)


# ---------------------------------------------------------------------------- one object's prompts


@pytest.fixture(scope="module")
def prompted(tiny_image):
    """A proposer on a decoder with O(1) weights (the tiny init gives logits ~1e-5, which any
    tolerance would pass), its embedding of the tiny image and a direct ``Sam2Model`` call."""
    proposer = Sam2Proposer(trained_looking_sam2(2), device="cpu")
    embedding = proposer.embed(tiny_image)

    def direct(multimask_output: bool, **prompts: torch.Tensor):
        with torch.no_grad():
            return proposer.model(
                image_embeddings=embedding.as_list(), multimask_output=multimask_output, **prompts
            )

    return proposer, embedding, direct


def _assert_logits_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-5 * max(scale, 1.0))


def test_decode_prompts_single_positive_point_is_the_best_of_three(prompted):
    proposer, embedding, direct = prompted
    point = torch.tensor([[300.0, 420.0]])
    logits, iou = proposer.decode_prompts(embedding, point)
    out = direct(
        True, input_points=point.view(1, 1, 1, 2), input_labels=torch.ones((1, 1, 1), dtype=torch.int32)
    )
    assert out.pred_masks.shape[2] == 3
    best = int(out.iou_scores[0, 0].argmax())
    assert logits.shape == (256, 256) and logits.dtype == torch.float32
    _assert_logits_close(logits, out.pred_masks[0, 0, best])
    assert iou == pytest.approx(float(out.iou_scores[0, 0, best]), abs=IOU_ATOL)
    grid = proposer.decode_points(embedding, point, iou_threshold=-1.0)  # the grid's answer for it
    _assert_logits_close(logits, grid.low_res_logits[0])


def test_decode_prompts_positive_and_negative_points_give_the_single_mask(prompted):
    proposer, embedding, direct = prompted
    points = torch.tensor([[300.0, 420.0], [700.0, 650.0], [120.0, 900.0]])
    labels = torch.tensor([1, 0, 1])
    logits, iou = proposer.decode_prompts(embedding, points, labels)
    out = direct(False, input_points=points.view(1, 1, 3, 2), input_labels=labels.view(1, 1, 3).int())
    assert out.pred_masks.shape[2] == 1
    _assert_logits_close(logits, out.pred_masks[0, 0, 0])
    assert iou == pytest.approx(float(out.iou_scores[0, 0, 0]), abs=IOU_ATOL)
    flipped, _ = proposer.decode_prompts(embedding, points, torch.tensor([1, 1, 1]))
    assert not torch.allclose(flipped, logits)  # the negative point counts


def test_decode_prompts_box_and_points_as_sam2s_predictor(prompted):
    """transformers embeds the box's corners after the points, SAM2's predictor before them (as
    points labelled 2 and 3, with a padding point): the same mask either way."""
    proposer, embedding, direct = prompted
    box = torch.tensor([100.0, 120.0, 600.0, 700.0])
    points = torch.tensor([[300.0, 420.0], [500.0, 200.0]])
    labels = torch.tensor([1, 0])
    logits, iou = proposer.decode_prompts(embedding, points, labels, box)
    out = direct(
        False,
        input_points=points.view(1, 1, 2, 2),
        input_labels=labels.view(1, 1, 2).int(),
        input_boxes=box.view(1, 1, 4),
    )
    _assert_logits_close(logits, out.pred_masks[0, 0, 0])
    assert iou == pytest.approx(float(out.iou_scores[0, 0, 0]), abs=IOU_ATOL)
    corners_first = direct(
        False,
        input_points=torch.cat([box.view(2, 2), points]).view(1, 1, 4, 2),
        input_labels=torch.tensor([2, 3, 1, 0], dtype=torch.int32).view(1, 1, 4),
    )
    _assert_logits_close(logits, corners_first.pred_masks[0, 0, 0])


def test_decode_prompts_box_alone_equals_decode_boxes(prompted):
    proposer, embedding, direct = prompted
    box = torch.tensor([100.0, 120.0, 600.0, 700.0])
    logits, iou = proposer.decode_prompts(embedding, box=box)
    out = direct(False, input_boxes=box.view(1, 1, 4))
    _assert_logits_close(logits, out.pred_masks[0, 0, 0])
    assert iou == pytest.approx(float(out.iou_scores[0, 0, 0]), abs=IOU_ATOL)
    _assert_logits_close(logits, proposer.decode_boxes(embedding, box[None])[0])


def test_decode_prompts_refuses_what_is_not_one_prompt(prompted):
    proposer, embedding, _ = prompted
    with pytest.raises(ValueError, match="points or a box"):
        proposer.decode_prompts(embedding)
    with pytest.raises(ValueError, match="without points"):
        proposer.decode_prompts(embedding, labels=torch.tensor([1]), box=torch.zeros(4))
    with pytest.raises(ValueError, match="1 \\(object\\) or 0"):
        proposer.decode_prompts(embedding, torch.zeros((1, 2)), torch.tensor([2]))
    with pytest.raises(ValueError, match="labels must be"):
        proposer.decode_prompts(embedding, torch.zeros((2, 2)), torch.tensor([1]))
    with pytest.raises(ValueError, match="box must be"):
        proposer.decode_prompts(embedding, box=torch.zeros((1, 4)))


# ---------------------------------------------------------------------------- lean encoder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens_per_piece", [100, 8192])
def test_lean_hiera_equals_stock(tiny_sam2_dir, tiny_image, dtype, tokens_per_piece):
    """Window groups (100 tokens: one 8x8 window per piece, or several 4x4 ones, the last piece
    partial), padded windows (the tiny Hiera's 14 and 7 windows on 64 and 32 tokens), query
    pooling and the row-chunked MLP give the stock encoder's features: equal in float32; in
    bfloat16 (rounded in a different order) no further from float32 than the stock forward."""
    options = Sam2Options(tokens_per_piece=tokens_per_piece)
    model = Sam2Model.from_pretrained(tiny_sam2_dir)
    exact = Sam2Proposer(model, device="cpu", encoder="stock").embed(tiny_image)
    expected = Sam2Proposer(model, device="cpu", dtype=dtype, encoder="stock").embed(tiny_image)
    lean = Sam2Proposer(model, device="cpu", dtype=dtype, encoder="lean", options=options)
    assert lean.encoder == "lean" and _forwards_untouched(model)  # a function over the modules
    got = lean.embed(tiny_image)
    for name in ("image_embeddings", "feat_s0", "feat_s1"):
        a, b, reference = getattr(got, name), getattr(expected, name), getattr(exact, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        if dtype == torch.float32:
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * max(scale, 1.0))
        else:
            lean_error = (a.float() - reference).abs()
            stock_error = (b.float() - reference).abs()
            assert float(lean_error.mean()) <= 1.25 * float(stock_error.mean()) + 1e-6
            assert float(lean_error.max()) <= 1.5 * float(stock_error.max()) + 1e-6


def _forwards_untouched(model: torch.nn.Module) -> bool:
    """No module of ``model`` has a forward of its own instance (none was patched in place)."""
    return not any(
        "forward" in vars(module) or hasattr(module, "_stock_forward") for module in model.modules()
    )


def test_lean_and_stock_proposers_share_one_model(tiny_sam2_dir, tiny_image):
    """The lean encoder is a function over the model's modules: a lean and a stock proposer
    built on the same model, in either order, each run their own encoder and leave it as it was."""
    model = Sam2Model.from_pretrained(tiny_sam2_dir)
    lean = Sam2Proposer(model, device="cpu", encoder="lean")
    stock = Sam2Proposer(model, device="cpu", encoder="stock")
    assert (lean.encoder, stock.encoder) == ("lean", "stock")
    assert _forwards_untouched(model)
    calls: list[int] = []
    hook = model.vision_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        got = lean.embed(tiny_image)
        assert calls == []  # the lean forward never calls transformers' vision encoder
        expected = stock.embed(tiny_image)
        assert calls == [1]
    finally:
        hook.remove()
    torch.testing.assert_close(got.image_embeddings, expected.image_embeddings, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="encoder"):
        Sam2Proposer(model, device="cpu", encoder="fast")


def test_lean_encoder_that_differs_falls_back_to_stock(tiny_sam2_dir, tiny_image, monkeypatch):
    """On a transformers version where the lean forward no longer matches, the proposer warns,
    says encoder='stock' and gives the stock features."""
    model = Sam2Model.from_pretrained(tiny_sam2_dir)
    expected = Sam2Proposer(model, device="cpu", encoder="stock").embed(tiny_image)
    monkeypatch.setattr(lean_hiera, "_mlp_forward", lambda mlp, hidden, pieces: torch.zeros_like(hidden))
    with pytest.warns(RuntimeWarning, match="lean SAM2 image encoder does not match"):
        proposer = Sam2Proposer(model, device="cpu", encoder="lean")
    assert proposer.encoder == "stock"
    assert not any(hasattr(block, "_stock_forward") for block in model.modules())
    torch.testing.assert_close(proposer.embed(tiny_image).image_embeddings, expected.image_embeddings)


def test_fast_decoder_that_differs_or_fails_falls_back_to_stock(tiny_sam2_dir, monkeypatch):
    model = Sam2Model.from_pretrained(tiny_sam2_dir)
    assert Sam2Proposer(model, device="cpu").decoder == "fast"
    original = fast_decoder._upscale_masks
    monkeypatch.setattr(fast_decoder, "_upscale_masks", lambda *args: original(*args) + 1.0)
    with pytest.warns(RuntimeWarning, match="mask logits differ"):
        assert Sam2Proposer(model, device="cpu").decoder == "stock"

    def broken(*args):
        raise AttributeError("'Sam2MaskDecoder' object has no attribute 'iou_token'")

    monkeypatch.setattr(two_way, "run_transformer", broken)
    monkeypatch.setattr(two_way, "run_transformer_low_rank", broken)
    with pytest.warns(RuntimeWarning, match="AttributeError"):
        assert Sam2Proposer(model, device="cpu").decoder == "stock"
    assert Sam2Proposer(model, device="cpu", check=False).decoder == "fast"  # no check: as asked


# ---------------------------------------------------------------------------- fast decoder


def test_fast_decoder_equals_stock_across_chunks(tiny_models, stock_proposer, tiny_image):
    options = Sam2Options(prompt_chunk=5, upscale_chunk=2, pixel_tile=1000)  # 1000: not a divisor of 4096
    fast = Sam2Proposer(tiny_models[0].model, device="cpu", options=options)
    embedding = fast.embed(tiny_image)
    points = grid_points(7)
    for threshold in (-1.0, 0.5):
        expected = stock_proposer.decode_points(embedding, points, batch_size=64, iou_threshold=threshold)
        got = fast.decode_points(embedding, points, batch_size=64, iou_threshold=threshold)
        assert len(got) == len(expected) > 0
        torch.testing.assert_close(got.points, expected.points, rtol=0, atol=0)
        torch.testing.assert_close(got.predicted_iou, expected.predicted_iou, rtol=0, atol=IOU_ATOL)
        torch.testing.assert_close(got.low_res_logits, expected.low_res_logits, rtol=0, atol=LOGIT_ATOL)


def test_fast_decoder_equals_stock_with_more_heads(tiny_image):
    """A wider decoder (64 channels, 8 heads as in the released models)."""
    parts = tiny_sam2_config().to_dict()
    parts["vision_config"]["fpn_hidden_size"] = 64
    parts["prompt_encoder_config"]["hidden_size"] = 64
    parts["mask_decoder_config"].update(
        hidden_size=64, num_attention_heads=8, mlp_dim=128, iou_head_hidden_dim=64
    )
    torch.manual_seed(5)
    model = Sam2Model(
        Sam2Config(**{k: parts[k] for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config")})
    )
    stock = Sam2Proposer(model, device="cpu", decoder="stock")
    fast = Sam2Proposer(model, device="cpu", decoder="fast")
    assert fast.decoder == "fast"
    embedding = stock.embed(tiny_image)
    points = grid_points(3)
    expected = stock.decode_points(embedding, points, batch_size=4, iou_threshold=-1.0)
    got = fast.decode_points(embedding, points, batch_size=4, iou_threshold=-1.0)
    torch.testing.assert_close(got.predicted_iou, expected.predicted_iou, rtol=0, atol=IOU_ATOL)
    scale = float(expected.low_res_logits.abs().max())
    torch.testing.assert_close(
        got.low_res_logits, expected.low_res_logits, rtol=0, atol=1e-5 * max(scale, 1.0)
    )


def _assert_fast_equals_stock(
    model: Sam2Model, tiny_image, scale: float = 1.0, offset: float = 1.0, options: Sam2Options | None = None
) -> None:
    """Fast and stock decoders on features of size ``scale`` with a per-pixel offset of size
    ``offset`` (non-zero channel means, as real image features have)."""
    stock = Sam2Proposer(model, device="cpu", decoder="stock")
    fast = Sam2Proposer(model, device="cpu", decoder="fast", options=options)
    assert fast.decoder == "fast"  # its own check at load passed (no fallback to stock)
    embedding = stock.embed(tiny_image)
    generator = torch.Generator().manual_seed(4)
    embedding = dataclasses.replace(
        embedding,
        image_embeddings=scale * torch.randn(embedding.image_embeddings.shape, generator=generator)
        + offset * torch.randn((1, 1, *embedding.image_embeddings.shape[2:]), generator=generator),
        feat_s1=torch.randn(embedding.feat_s1.shape, generator=generator),
        feat_s0=torch.randn(embedding.feat_s0.shape, generator=generator),
    )
    points = grid_points(4)
    expected = stock.decode_points(embedding, points, batch_size=8, iou_threshold=-1.0)
    got = fast.decode_points(embedding, points, batch_size=8, iou_threshold=-1.0)
    torch.testing.assert_close(got.predicted_iou, expected.predicted_iou, rtol=0, atol=IOU_ATOL)
    largest = float(expected.low_res_logits.abs().max())
    assert largest > 0.1
    torch.testing.assert_close(
        got.low_res_logits, expected.low_res_logits, rtol=0, atol=1e-5 * max(largest, 1.0)
    )


@pytest.mark.parametrize(("chain", "low_rank"), [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("depth", [2, 3])
def test_fast_decoder_equals_stock_with_trained_looking_norms(tiny_image, depth, chain, low_rank):
    """Fresh models have LayerNorm weight 1 and bias 0, which would hide a wrong gamma or beta
    in the conv1 chain (see image_context.Conv1Chain) or the low-rank tokens: randomise every
    norm and bias, and also try a three-block decoder (both are written for any depth), with
    and without the low-rank tokens, with the chain and with the direct conv1 product."""
    options = Sam2Options(conv1_chain=chain, low_rank_tokens=low_rank)
    _assert_fast_equals_stock(trained_looking_sam2(depth), tiny_image, options=options)


@pytest.mark.parametrize(("scale", "offset"), [(0.1, 0.1), (30.0, 0.0), (1.0, 30.0)])
def test_low_rank_tokens_hold_for_small_large_and_offset_features(tiny_image, scale, offset):
    """The low-rank LayerNorm statistics are sums of expanded terms: features far from O(1), or
    with channel means far larger than their spread, must not lose what cancels."""
    _assert_fast_equals_stock(trained_looking_sam2(2), tiny_image, scale, offset)


def test_bfloat16_runs_and_stays_close(tiny_sam2_dir, tiny_image):
    points = grid_points(4)
    exact = Sam2Proposer(Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", decoder="stock")
    expected = exact.propose(tiny_image, points, batch_size=8, iou_threshold=-1.0)
    for decoder in ("stock", "fast"):
        proposer = Sam2Proposer(
            Sam2Model.from_pretrained(tiny_sam2_dir), device="cpu", dtype=torch.bfloat16, decoder=decoder
        )
        got = proposer.propose(tiny_image, points, batch_size=8, iou_threshold=-1.0)
        assert got.low_res_logits.dtype == got.predicted_iou.dtype == torch.float32
        assert got.low_res_logits.shape == expected.low_res_logits.shape
        torch.testing.assert_close(got.predicted_iou, expected.predicted_iou, rtol=0, atol=0.05)


def test_full_grid_on_the_tiny_model_gives_one_proposal_per_surviving_point(tiny_models, tiny_image):
    """A 16x16 grid with threshold 0 keeps every point, in prompt order (speed is measured by
    benchmarks/, never by a test)."""
    proposer, _ = tiny_models
    points = grid_points(16)
    proposals = proposer.propose(tiny_image, points, batch_size=64, iou_threshold=0.0)
    assert len(proposals) == len(points)
    torch.testing.assert_close(proposals.points, points)
    assert proposals.low_res_logits.shape == (len(points), 256, 256)


# ---------------------------------------------------------------------------- encoder


def test_encoder_output_equals_manual_forward(tiny_models, tiny_dinov2_dir):
    _, encoder = tiny_models
    images = torch.rand((2, 3, 518, 518), generator=torch.Generator().manual_seed(3))
    features = encoder.encode(images)
    assert features.shape == (2, 32, 37, 37)
    assert features.dtype == torch.float32
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    with torch.no_grad():
        tokens = model(pixel_values=normalized(images)).last_hidden_state
    assert tokens.shape[1] == 1 + 37 * 37
    expected = tokens[:, 1:].reshape(2, 37, 37, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    # Each image is encoded independently of its batch.
    torch.testing.assert_close(encoder.encode(images[1:]), features[1:], rtol=1e-5, atol=1e-5)


def test_encoder_drops_register_tokens(tiny_dinov2_registers_dir):
    model = Dinov2WithRegistersModel.from_pretrained(tiny_dinov2_registers_dir).eval()
    encoder = Dinov2Encoder(model, name="tiny", device="cpu")
    images = torch.rand((1, 3, 518, 518), generator=torch.Generator().manual_seed(4))
    features = encoder.encode(images)
    assert features.shape == (1, 32, 37, 37)
    with torch.no_grad():
        tokens = model(pixel_values=normalized(images)).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 37 * 37
    expected = tokens[:, 5:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)


def test_encoder_identity_and_other_sizes(tiny_models, tiny_dinov2_dir):
    _, encoder = tiny_models
    assert encoder.identity.name == tiny_dinov2_dir.name
    assert encoder.identity.revision == "local"
    assert encoder.identity.input_size == 518
    assert encoder.identity.feature_dim == 32
    small = Dinov2Encoder(encoder.model, name="tiny", input_size=224)
    assert small.encode(torch.rand(1, 3, 224, 224)).shape == (1, 32, 16, 16)
    with pytest.raises(InvalidInputError, match="multiple of the patch size 14"):
        Dinov2Encoder(encoder.model, name="tiny", input_size=500)
    with pytest.raises(ValueError, match="518"):
        encoder.encode(torch.rand(1, 3, 224, 224))


def test_encoder_bfloat16(tiny_models):
    _, encoder = tiny_models
    images = torch.rand((1, 3, 518, 518), generator=torch.Generator().manual_seed(6))
    half = Dinov2Encoder(encoder.model, name="tiny", dtype=torch.bfloat16)
    features = half.encode(images)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, encoder.encode(images), rtol=0.1, atol=0.1)
