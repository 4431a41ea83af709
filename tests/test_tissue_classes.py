"""Class maps for tissue masks: presets, files, ignored codes."""

import json

import numpy as np
import pytest

from pathseg.errors import PathsegError
from pathseg.tissue.classes import BCSS5, GLAS, IGNORE, load_class_map


def test_bcss_grouping_and_ignore():
    mask = np.array([[0, 1, 2, 3], [4, 7, 10, 20], [21, 19, 11, 9]], dtype=np.uint8)
    out = BCSS5.apply(mask)
    # 0 outside ROI and 7 exclude are ignored; 1/19/20 tumour; 2 stroma; 3/10/11 inflammatory; 4 necrosis
    assert out.tolist() == [[IGNORE, 0, 1, 2], [3, IGNORE, 2, 0], [4, 0, 2, 4]]


def test_glas_binary_and_unknown_codes():
    assert GLAS.apply(np.array([[0, 1, 5]])).tolist() == [[0, 1, IGNORE]]


def test_class_map_file(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(
        json.dumps(
            {
                "classes": [{"name": "bg", "codes": [0]}, {"name": "tissue", "codes": [1, 2], "color": [1, 2, 3]}],
                "ignore": [9],
            }
        )
    )
    cm = load_class_map(f)
    assert cm.names == ("bg", "tissue") and cm.colors[1] == (1, 2, 3)
    assert cm.apply(np.array([0, 2, 9, 4])).tolist() == [0, 1, IGNORE, IGNORE]
    f.write_text(json.dumps({"classes": [{"name": "a", "codes": [1]}, {"name": "b", "codes": [1]}]}))
    with pytest.raises(PathsegError, match="assigned twice"):
        load_class_map(f)
    assert load_class_map("bcss5") is BCSS5
    with pytest.raises(PathsegError, match="neither a class map preset"):
        load_class_map("nope")
