"""BatchNorm folded into convolutions for inference: same numbers, the trained modules untouched, never stale."""

import numpy as np
import torch
from torch import nn


def _random_batchnorm_statistics(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine weights (fresh ones fold to the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _model():
    from pathseg.models.nucleus_sam import SamNucleusModel, compact_config

    torch.manual_seed(0)
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["semantic_decoder"] = {**cfg["ais_decoder"], "out_channels": 5}
    model = SamNucleusModel(cfg)
    _random_batchnorm_statistics(model)
    return model.eval()


def test_folded_copy_computes_the_same_maps_and_leaves_the_module_trainable():
    from pathseg.models.compact import CompactEncoder
    from pathseg.models.fuse import fold_batchnorm

    torch.manual_seed(0)
    enc = CompactEncoder(widths=(8, 16, 24, 32, 48), blocks=(1, 1, 1, 1, 1), out_chans=32)
    _random_batchnorm_statistics(enc)
    enc.eval()
    folded = fold_batchnorm(enc)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 16  # the original keeps all of them
    assert all(p.requires_grad for p in enc.parameters()) and not any(p.requires_grad for p in folded.parameters())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        (e0, s0), (e1, s1) = enc.forward_features(x), folded.forward_features(x)
    assert e0.abs().max() > 0.1  # the statistics matter: a real comparison
    for a, b in zip([e0, *s0], [e1, *s1], strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_model_inference_uses_folded_nets_that_follow_every_weight_change():
    model = _model()
    rgb = np.random.default_rng(0).integers(0, 255, (96, 112, 3), dtype=np.uint8)
    model.fold_batchnorm = False
    plain, plain_classes = model.predict_maps(rgb), model.predict_class_maps(rgb)
    model.fold_batchnorm = True
    encoder, ais, semantic = model.inference_nets()
    assert encoder is not model.sam.image_encoder and semantic is not model.semantic
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ais.modules())
    np.testing.assert_allclose(model.predict_maps(rgb), plain, atol=1e-5)
    np.testing.assert_allclose(model.predict_class_maps(rgb), plain_classes, atol=1e-5)
    assert model.inference_nets()[0] is encoder  # cached while the weights stay

    with torch.no_grad():  # as an optimiser step would: in place
        model.ais.out_conv.bias.add_(0.7)
        next(model.sam.image_encoder.parameters()).mul_(1.3)
    assert model.inference_nets()[0] is not encoder
    changed = model.predict_maps(rgb)
    model.fold_batchnorm = False
    np.testing.assert_allclose(changed, model.predict_maps(rgb), atol=1e-5)
    assert np.abs(changed - plain).max() > 1e-3

    model.fold_batchnorm = True
    model.train()  # training runs the modules themselves
    assert model.inference_nets()[0] is model.sam.image_encoder
