"""HPCM model: sizes, the coding schedule, forward in both modes, the per-scale split, the s2
gathering option, checkpoints and the authors' name converter (tiny config unless stated)."""
from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from lic_core.errors import CheckpointError, ConfigError
from lic_core.models.blocks import Conv1x1, WindowCrossAttention
from lic_core.models.authors import authors_name, convert_authors_state_dict, load_authors_state_dict
from lic_core.models.hpcm import CONFIGS, HPCMConfig, count_parameters, hpcm, kmacs_per_pixel, save_checkpoint
from lic_core.models.loading import load_checkpoint
from lic_core.models.schedule import SCALE_OF_STEP, STEPS, geometry, scale_positions, s2_hyper_source


@pytest.fixture(scope="module")
def tiny():
    return hpcm("tiny")


@pytest.fixture(scope="module")
def full():
    """Base / Large, each built once for this module (their default init takes seconds)."""
    cache: dict = {}
    yield lambda name: cache[name] if name in cache else cache.setdefault(name, hpcm(name))
    cache.clear()


def image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("path", ["gemm", "conv"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_conv1x1_is_a_1x1_convolution(layout, path):
    """Each of the autotuner's paths gives nn.Conv2d's output and gradients (to float32 rounding)
    for either input layout, with the same state_dict."""
    from lic_core.models import autotune

    layer = Conv1x1(24, 40)
    conv = torch.nn.Conv2d(24, 40, 1)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(3, 24, 5, 7).contiguous(memory_format=layout)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    with autotune.forced(path):
        outs = [m(t) for m, t in zip((layer, conv), xs)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(outs[1])
    for out in outs:
        out.backward(grad)
    for a, b in [(xs[0].grad, xs[1].grad), (layer.weight.grad, conv.weight.grad), (layer.bias.grad, conv.bias.grad)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["gemm", "conv"])
def test_training_graph_has_no_in_place_ops_on_views(tiny, path):
    """Conv1x1's GEMM path returns views; an in-place op on one would put CopySlices nodes (a zeroed
    copy, a scatter and a clone of the base in every backward) into the training graph."""
    from lic_core.models import autotune

    with autotune.forced(path):
        out = tiny.train()(image(1, 128, 128))
    loss = out["x_hat"].sum() + sum(lik.log().sum() for lik in out["likelihoods"].values())
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [nxt for nxt, _ in node.next_functions]
    assert not [n for n in seen if type(n).__name__ in ("CopySlices", "AsStridedBackward0")]


def test_a_shape_first_seen_under_inference_mode_still_trains(tiny):
    """Solution 1's second forward runs under torch.inference_mode; the index maps it may build
    for a new latent size are cached and must stay usable by a later training forward."""
    geometry.cache_clear()
    x = image(1, 256, 128)
    with torch.inference_mode():
        first = tiny.train()(x)["x_hat"]
    cached = tiny._geometry(16, 8, torch.device("cpu"))  # y of a 256x128 image (stride 16)
    assert first.is_inference() and geometry.cache_info().currsize == 1
    assert not any(t.is_inference() for t in (cached.masks, *cached.pos, *cached.up, cached.hyper2))
    out = tiny.train()(x)
    (out["x_hat"].sum() + sum(lik.log().sum() for lik in out["likelihoods"].values())).backward()
    assert tiny.g_a[0].weight.grad is not None and tiny.adaptors[0].weight.grad is not None
    tiny.zero_grad(set_to_none=True)


def test_attention_windows_round_trip():
    """Splitting into windows and merging back is the identity (the merge writes channels-last)."""
    attn = WindowCrossAttention(16, heads=4, window=2)
    x = torch.randn(2, 16, 4, 6)
    merged = attn._merge(attn._windows(x), x.shape)
    assert torch.equal(merged, x) and merged.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name, count", [("base", 68_505_299), ("large", 89_718_803)])
def test_parameter_counts(full, name, count):
    assert count_parameters(full(name)) == count


def test_tiny_is_small_and_trains_on_128_crops(tiny):
    assert count_parameters(tiny) <= 3_000_000
    assert tiny.cfg.pad_multiple == 128
    assert CONFIGS["base"].pad_multiple == 256 == CONFIGS["large"].pad_multiple


def test_base_and_large_differ_only_by_config():
    diff = {k for k, v in asdict(CONFIGS["base"]).items() if asdict(CONFIGS["large"])[k] != v}
    assert diff == {"name", "depths", "prior_s12", "prior_s3"}


def test_seeded_init_is_deterministic(tiny):
    again = hpcm("tiny")
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), again.state_dict().values()))
    other = hpcm("tiny", seed=1)
    assert not torch.equal(other.g_a[0].weight, tiny.g_a[0].weight)


def test_bad_config_and_input(tiny):
    with pytest.raises(ConfigError, match="nope"):
        hpcm("nope")
    with pytest.raises(ConfigError, match="M=12"):
        HPCMConfig(M=12)
    with pytest.raises(ConfigError, match="bogus"):
        HPCMConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="multiples of 128"):
        tiny(image(1, 100, 128))


def test_kmacs_base_matches_paper(full):
    """Paper: 918.57 kMACs/pixel. We skip the last step's attention, whose output nothing uses:
    4 convs 640x640 plus the window matmuls on the y grid (1/256 of the pixels)."""
    base = full("base")
    skipped = (4 * 640 * 640 + 2 * 64 * 640) / 256 / 1e3
    assert kmacs_per_pixel(base, 256, 256) + skipped == pytest.approx(918.57, abs=0.05)


def test_step_masks_partition_and_scales(tiny):
    masks = tiny.step_masks(16, 24)
    assert masks.shape == (11, 64, 16, 24)
    assert (masks.sum(0) == 1).all()
    assert SCALE_OF_STEP == (0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2)
    per_scale = tiny.scale_masks(16, 24).sum((1, 2, 3)).tolist()
    assert per_scale == [64 * 16 * 24 // 16, 64 * 16 * 24 * 3 // 16, 64 * 16 * 24 * 3 // 4]


def test_context_model_calls_each_step_once_with_its_mask(tiny):
    params = torch.randn(1, 128, 8, 8)
    seen = []

    def code_step(k, scales, means, mask):
        seen.append(k)
        assert scales.shape == means.shape == (1, 64, 8, 8)
        assert torch.equal(mask, tiny.step_masks(8, 8)[k])
        return torch.full_like(means, float(k))

    with torch.no_grad():
        out = tiny.context_model(params, code_step)
    assert seen == list(range(len(STEPS)))
    steps = tiny.step_masks(8, 8).int().argmax(0).float()
    assert torch.equal(out["y_hat"][0], steps)
    # step 0 uses the hyper parameters alone: scales/means there are h_s's output at those positions
    m0 = tiny.step_masks(8, 8)[0]
    assert torch.equal(out["scales_hat"][0][m0], params[0, :64][m0])
    assert torch.equal(out["means_hat"][0][m0], params[0, 64:][m0])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_tiny(tiny, mode):
    tiny.train(mode == "train")
    x = image(2, 128, 256)
    out = tiny(x)
    tiny.eval()
    assert out["x_hat"].shape == x.shape
    y_lik, z_lik = out["likelihoods"]["y"], out["likelihoods"]["z"]
    assert y_lik.shape == (2, 64, 8, 16) and z_lik.shape == (2, 64, 2, 4)
    for t in (y_lik, z_lik):
        assert torch.isfinite(t).all() and (t > 0).all() and (t <= 1).all()
    if mode == "eval":
        assert torch.equal(out["y_hat"], out["y_q"] + out["means_hat"])
        assert torch.equal(out["y_q"], torch.round(out["y"] - out["means_hat"]))
        assert torch.equal(out["z_hat"], out["z_q"] + tiny.means_hyper)
    else:
        # straight-through: y_hat takes rounded values, gradients reach every part of the model
        assert torch.allclose(out["y_hat"], torch.round(out["y"] - out["means_hat"]) + out["means_hat"], atol=1e-5)
        loss = out["x_hat"].square().mean() - sum(t.log2().sum() for t in (y_lik, z_lik)) / x[0, 0].numel()
        loss.backward()
        for name in ("g_a.0.weight", "h_a.0.fc1.weight", "adaptors.9.weight", "quant.4", "priors.1.branch_2.1.weight",
                     "attns.2.q.weight", "transitions.1.weight", "scales_hyper", "g_s.0.weight"):
            grad = dict(tiny.named_parameters())[name].grad
            assert grad is not None and grad.abs().sum() > 0, name
        tiny.zero_grad(set_to_none=True)


def test_per_scale_bits_add_up(tiny):
    with torch.no_grad():
        out = tiny(image(1, 128, 128, seed=3))
    bits = -torch.log2(out["likelihoods"]["y"].double())[0]
    masks = out["scale_masks"]
    assert (masks.sum(0) == 1).all()
    parts = [bits[m].sum().item() for m in masks]
    assert sum(parts) == pytest.approx(bits.sum().item(), rel=1e-12)
    assert all(p > 0 for p in parts)


def test_authors_s2_gather_rule():
    """CONFORMANCE.md Sec. 8: groups 0-1 aligned; groups 2-3 aligned except s2 phase (0,0),
    which reads 2 columns to the right; groups 4-7 shifted by the flat scan."""
    m, h, w = 16, 16, 32  # 8 groups of 2 channels
    pos2, _ = scale_positions(m, h, w)
    quirk, aligned = s2_hyper_source(m, h, w, False), s2_hyper_source(m, h, w, True)
    assert torch.equal(aligned, pos2)
    coded = torch.zeros_like(pos2, dtype=torch.bool)
    coded.scatter_(1, geometry(m, h, w, False, torch.device("cpu")).up[0], True)
    used = ~coded
    assert torch.equal(quirk[:4][used[:4]], pos2[:4][used[:4]])
    r, c = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    phase00 = ((r % 2 == 0) & (c % 2 == 0)).flatten()
    for ch in range(4, 8):
        sel = used[ch] & phase00
        assert torch.equal(quirk[ch][sel], pos2[ch][sel] + 2)
        assert torch.equal(quirk[ch][used[ch] & ~phase00], pos2[ch][used[ch] & ~phase00])
    assert not torch.equal(quirk[8:][used[8:]], pos2[8:][used[8:]])


def test_aligned_option_changes_only_the_s2_gather(tiny):
    aligned = hpcm("tiny", aligned_s2_gather=True).eval()
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), aligned.state_dict().values()))
    x = image(1, 128, 128, seed=5)
    with torch.no_grad():
        a, b = tiny(x), aligned(x)
    s1 = tiny.scale_masks(8, 8)[0]
    for key in ("y_hat", "scales_hat", "means_hat"):
        assert torch.equal(a[key][0][s1], b[key][0][s1]), key  # s1 is coded before the gather
    assert not torch.equal(a["means_hat"], b["means_hat"])
    assert torch.equal(a["z_hat"], b["z_hat"])


def test_checkpoint_round_trip(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "ckpt" / "tiny.pt", step=7, lmbda=0.0067)
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 7 and raw["config"]["name"] == "tiny"
    loaded = load_checkpoint(path)
    assert loaded.cfg == tiny.cfg and not loaded.training
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = image(1, 128, 128)
    with torch.no_grad():
        assert torch.equal(tiny.eval()(x)["x_hat"], loaded(x)["x_hat"])


def test_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable"):
        load_checkpoint(junk)
    path = save_checkpoint(tiny, tmp_path / "t.pt")
    obj = torch.load(path, weights_only=True)
    del obj["state_dict"]["priors.0.branch_1.0.fc1.weight"]
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"missing tensor 'priors\.0\.branch_1\.0\.fc1\.weight'"):
        load_checkpoint(path)


def authors_view(model) -> dict[str, torch.Tensor]:
    return {authors_name(k): v.clone() for k, v in model.named_parameters()}


def test_converter_round_trip_and_optional_vectors(tiny):
    sd = authors_view(tiny)
    with torch.no_grad():
        sd["adaptive_params_list.3"].fill_(2.0)
    sd["quantized_cdf_y"] = torch.zeros(0)  # authors' buffers are accepted and ignored
    fresh = load_authors_state_dict(hpcm("tiny", seed=9), sd)
    assert torch.equal(fresh.g_s[0].weight, tiny.g_s[0].weight)
    assert torch.equal(fresh.quant[3], torch.full_like(fresh.quant[3], 2.0))
    for k in [k for k in sd if k.startswith("adaptive_params_list.")]:
        del sd[k]
    conv = convert_authors_state_dict(sd, tiny)
    assert all(torch.equal(conv[f"quant.{i}"], torch.ones(1, 192, 1, 1)) for i in range(10))


@pytest.mark.parametrize("edit, pattern", [
    ("missing", r"missing tensor 'attn_s2\.conv_k\.bias'"),
    ("unexpected", r"unexpected tensor 'attn_s4\.conv_q\.weight'"),
    ("shape", r"tensor 'context_net\.1\.weight' has shape \(3, 3\)"),
])
def test_converter_errors_name_the_tensor(tiny, edit, pattern):
    sd = authors_view(tiny)
    if edit == "missing":
        del sd["attn_s2.conv_k.bias"]
    elif edit == "unexpected":
        sd["attn_s4.conv_q.weight"] = torch.zeros(1)
    else:
        sd["context_net.1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=pattern):
        load_authors_state_dict(hpcm("tiny"), sd)


@pytest.mark.parametrize("name", ["base", "large"])
def test_converter_covers_the_authors_names(full, reference_dir, name):
    rows = (reference_dir / "hpcm" / f"state_dict_{name}.tsv").read_text().splitlines()[1:]
    theirs = {k: tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
              for k, shape, _ in (r.split("\t") for r in rows)}
    model = full(name)
    ours = {authors_name(k): tuple(v.shape) for k, v in model.named_parameters()}
    buffers = {k for k in theirs if k not in ours}
    assert len(buffers) == 10 and all(theirs[k] in {(0,), (1,)} for k in buffers)
    assert ours == {k: v for k, v in theirs.items() if k not in buffers}
    assert math.prod(theirs["g_a.branch.0.weight"]) == 4608


@pytest.mark.parametrize("block", ["pconv", "dwconv"])
def test_fused_eval_blocks_equal_the_plain_calls(block):
    """On the CPU without autograd, the residual blocks run LeakyReLU and the sum as oneDNN post-ops;
    the result equals the separate calls to float32 rounding, and the coder (deterministic
    algorithms asked for) keeps the separate calls bit for bit."""
    from lic_core.models import autotune, blocks

    if not blocks._onednn_fusion():
        from conftest import skip_or_fail

        skip_or_fail("this torch has no oneDNN fused convolution: the blocks always run the plain calls", "env")
    torch.manual_seed(0)
    layer = (blocks.PConvRB(32) if block == "pconv" else blocks.DWConvRB(32)).eval()
    x = torch.randn(2, 32, 12, 10).contiguous(memory_format=torch.channels_last)
    with autotune.forced("conv"), torch.no_grad():
        assert blocks._fusable(x, layer.fc1, layer.fc2)
        fused = layer(x)
        plain = blocks._residual(x, layer.fc2, layer.fc1(torch.cat((layer.pconv(x[:, :8]), x[:, 8:]), 1)
                                                         if block == "pconv" else layer.dw(x)), inplace=False)
        was, torch.backends.cudnn.deterministic = torch.backends.cudnn.deterministic, True
        try:
            assert not blocks._fusable(x, layer.fc1, layer.fc2)
            coder = layer(x)
        finally:
            torch.backends.cudnn.deterministic = was
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(coder, plain)
