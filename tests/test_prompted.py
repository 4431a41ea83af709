"""AMG / APG building blocks: box IoU and NMS, stability score, painting candidates into labels."""

import numpy as np
import torch

from pathseg.models.nucleus_sam import SamNucleusModel, compact_config
from pathseg.nuclei.boxes import box_iou, box_nms
from pathseg.nuclei.interactive import Predictor
from pathseg.nuclei.prompted import (
    AutomaticMaskGenerator,
    AutomaticPromptGenerator,
    Candidate,
    paint,
    stability_score,
)
from tests.conftest import synthetic_nuclei


def test_box_iou_and_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=float)
    # boxes 0 and 1 overlap in 9x10 = 90 of a union 110
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == 90 / 110
    keep = box_nms(boxes, np.array([0.5, 0.9, 0.1]), iou_threshold=0.7)
    assert keep.tolist() == [1, 2]  # box 0 suppressed by the higher-scoring box 1
    assert box_nms(boxes, np.array([0.5, 0.9, 0.1]), iou_threshold=0.9).tolist() == [1, 0, 2]


def test_stability_score_by_hand():
    logits = torch.tensor([[[2.0, 0.5, -0.5, -2.0]]])
    # > 1: 1 pixel; > -1: 3 pixels
    assert abs(float(stability_score(logits, 0.0, 1.0)[0]) - 1 / 3) < 1e-7


def test_paint_keeps_small_objects_on_top_and_filters_size():
    big = Candidate(np.array([0, 0, 4, 4]), np.ones((4, 4), bool), 0.9, 1.0)
    small = Candidate(np.array([1, 1, 3, 3]), np.ones((2, 2), bool), 0.9, 1.0)
    tiny = Candidate(np.array([5, 5, 6, 6]), np.ones((1, 1), bool), 0.9, 1.0)
    lab = paint([small, big, tiny], (6, 6), min_size=2)
    assert lab.max() == 2 and lab[2, 2] != lab[0, 0] and lab[5, 5] == 0


def test_amg_and_apg_run_end_to_end():
    cfg = compact_config(mpp=0.5, tile=128)
    cfg["halo"] = 16
    model = SamNucleusModel(cfg).eval()
    rgb, _ = synthetic_nuclei((150, 180), n=6, radius=12, seed=3)
    amg = AutomaticMaskGenerator(Predictor(model), points_per_side=4)
    amg.initialize(rgb, 0.5)
    assert amg.candidates  # random weights still give masks
    assert amg.generate(pred_iou_thresh=-1e9, stability_score_thresh=0.0).shape == rgb.shape[:2]
    assert amg.generate(pred_iou_thresh=1e9).max() == 0
    apg = AutomaticPromptGenerator(Predictor(model))
    apg.initialize(rgb, 0.5)
    labels = apg.generate(center_distance_threshold=1.1, boundary_distance_threshold=1.1, foreground_threshold=-1)
    assert labels.shape == rgb.shape[:2] and labels.dtype == np.uint32


def test_apg_prompts_each_seed_once_in_image_pixels():
    """With maps that hold the truth, APG prompts the predictor once inside every nucleus, in image pixels (the
    image at 0.25 µm/px, the model at 0.5), and paints what the prompt path answers."""
    from pathseg.nuclei.targets import distance_targets

    model = SamNucleusModel(compact_config(mpp=0.5, tile=128)).eval()
    rgb, gt = synthetic_nuclei((150, 180), n=6, radius=12, seed=3)
    apg = AutomaticPromptGenerator(Predictor(model))
    apg.initialize(rgb, 0.25)
    assert apg.maps.shape[1:] == rgb.shape[:2] and apg.scale == 2.0
    apg.maps = distance_targets(gt)  # foreground, centre and boundary distances of the truth, image pixels
    asked = []
    predict = apg.predictor.predict

    def recording(**kw):
        asked.append(kw["points"][0])
        return predict(**kw)

    apg.predictor.predict = recording
    labels = apg.generate(distance_smoothing=0.0, min_size=0)
    assert sorted(int(gt[int(y), int(x)]) for x, y in asked) == list(range(1, int(gt.max()) + 1))
    assert labels.shape == rgb.shape[:2] and labels.max() <= gt.max()
    # seeds start from the model's tuned thresholds (config ais_params), each overridable per call
    model.config["ais_params"] = {"foreground_threshold": 1.5, "distance_smoothing": 0.0, "min_size": 10**6}
    asked.clear()
    assert apg.generate(min_size=0).max() == 0 and not asked  # no foreground reaches 1.5: no seed
    apg.generate(foreground_threshold=0.5, min_size=0)
    assert len(asked) == int(gt.max())  # overridden per call, every nucleus is seeded again
