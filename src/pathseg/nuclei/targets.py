"""AIS training targets from an instance label image: foreground, centre distance, boundary distance.

Both distances are normalised per object to [0, 1]: ~0 at the object's centre (centre distance) or deepest point
(boundary distance), 1 at its rim, and 1 outside any object (as PathoSAM / torch-em define them).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def distance_targets(labels: np.ndarray) -> np.ndarray:
    """(3, H, W) float32: foreground, normalised centre distance, normalised boundary distance."""
    labels = np.asarray(labels)
    out = np.ones((3,) + labels.shape, dtype=np.float32)
    out[0] = labels > 0
    for index, sl in enumerate(ndi.find_objects(labels)):
        if sl is None:
            continue
        # pad by one pixel so that the object's rim counts as boundary even at the crop edge
        sl_pad = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[sl_pad] == index + 1
        edt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        out[2][sl_pad][mask] = 1.0 - edt[mask] / edt[mask].max()
        yy, xx = np.nonzero(mask)
        cy, cx = yy.mean(), xx.mean()
        d = np.hypot(yy - cy, xx - cx)
        out[1][sl_pad][yy, xx] = d / max(d.max(), 1e-6)
    return out
