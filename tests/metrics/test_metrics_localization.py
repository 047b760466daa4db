"""Pointing game, energy-based pointing game, CAM box, IoU, localisation accuracy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcam.errors import InvalidArgumentError, NonFiniteError, ShapeError
from refcam.metrics import (
    box_iou,
    boxes_to_masks,
    cam_box,
    energy_pointing_game,
    localization_accuracy,
    pointing_game,
)


def test_boxes_to_masks_half_open_union_and_fractional():
    m = boxes_to_masks([np.array([[0, 0, 1, 1], [2, 1, 3, 3]]), [0.4, 0.6, 2.6, 1.4]], (3, 3))
    np.testing.assert_array_equal(m[0].astype(int), [[1, 0, 0], [0, 0, 1], [0, 0, 1]])
    # x: centres 0.5, 1.5, 2.5 all in [0.4, 2.6); y in [0.6, 1.4): no row centre (0.5, 1.5) inside
    assert not m[1].any()
    with pytest.raises(InvalidArgumentError, match=r"boxes\[1\]"):
        pointing_game(np.ones((2, 3, 3)), boxes=[[0, 0, 1, 1], [0.4, 0.6, 2.6, 1.4]])
    m = boxes_to_masks([[0.4, 0.4, 2.6, 1.6]], (3, 3))
    np.testing.assert_array_equal(m[0].astype(int), [[1, 1, 1], [1, 1, 1], [0, 0, 0]])


def test_pointing_game_tolerance_hand_computed():
    m = np.zeros((3, 20, 20))
    m[0, 5, 5] = 1.0  # inside box
    m[1, 5, 17] = 1.0  # 17 - 9 = 8 px right of the last in-box column 9 -> hit at tol 8, miss at 7
    m[2, 19, 19] = 1.0  # nearest in-box pixel (9, 9): sqrt(200) = 14.14 -> hit at 15, miss at 14
    boxes = [[0, 0, 10, 10]] * 3
    np.testing.assert_array_equal(pointing_game(m, boxes=boxes).hits, [True, True, True])
    np.testing.assert_array_equal(
        pointing_game(m, boxes=boxes, tolerance=8).hits, [True, True, False]
    )
    np.testing.assert_array_equal(
        pointing_game(m, boxes=boxes, tolerance=7).hits, [True, False, False]
    )
    r = pointing_game(m, boxes=boxes, tolerance=14.1)
    assert r.accuracy == pytest.approx(2 / 3)
    np.testing.assert_array_equal(r.points, [[5, 5], [5, 17], [19, 19]])


def test_pointing_game_ties_first_in_raster_order_and_3d_masks():
    m = np.ones((1, 3, 3))  # constant -> point (0, 0)
    mask = np.zeros((1, 3, 3), bool)
    mask[0, 2, 2] = True
    r = pointing_game(m, masks=mask, tolerance=2.0)  # distance sqrt(8) = 2.83 > 2
    np.testing.assert_array_equal(r.points, [[0, 0]])
    assert not r.hits[0]
    assert pointing_game(m, masks=mask, tolerance=2.9).hits[0]
    v = np.zeros((1, 2, 3, 3))
    v[0, 1, 2, 2] = 5.0
    mv = np.zeros((1, 2, 3, 3), bool)
    mv[0, 0, 2, 2] = True  # one voxel away along depth
    assert not pointing_game(v, masks=mv, tolerance=0.5).hits[0]
    assert pointing_game(v, masks=mv, tolerance=1.0).hits[0]


def test_energy_pointing_game_hand_computed_and_zero_guard():
    m = np.array([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=np.float32)
    # box column 1 of sample 0: (2 + 4) / 10 = 0.6 ; sample 1 has zero energy -> 0 by the guard
    e = energy_pointing_game(m, boxes=[[1, 0, 2, 2], [0, 0, 1, 1]])
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, [0.6, 0.0], rtol=1e-7)
    mask = np.array([[[True, False], [False, True]], [[True, True], [True, True]]])
    np.testing.assert_allclose(energy_pointing_game(m, masks=mask), [0.5, 0.0], rtol=1e-7)


@given(st.integers(0, 2**31 - 1))
def test_energy_in_unit_interval_and_full_mask_is_one(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((3, 4, 5))
    mask = rng.random((3, 4, 5)) > 0.5
    mask[:, 0, 0] = True
    e = energy_pointing_game(m, masks=mask)
    assert ((0 <= e) & (e <= 1)).all()
    np.testing.assert_allclose(energy_pointing_game(m, masks=np.ones_like(mask)), 1.0)
    assert pointing_game(m, masks=np.ones_like(mask), tolerance=0).accuracy == 1.0


def test_cam_box_largest_component_8_connectivity_and_ties():
    m = np.array(
        [
            [
                [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                [0.5, 0.0, 0.0, 0.0, 0.0, 0.3],
                [0.3, 0.1, 0.0, 0.0, 0.0, 0.3],
            ]
        ]
    )
    # threshold 0.2 -> > 0.2: {(1,0),(2,0)} size 2 and {(0,5),(1,5),(2,5)} size 3 -> right column
    np.testing.assert_array_equal(cam_box(m), [[5, 0, 6, 3]])
    # threshold 0.4 -> > 0.4: (1,0) and (0,5), both size 1 -> first in raster order is (0,5)
    np.testing.assert_array_equal(cam_box(m, 0.4), [[5, 0, 6, 1]])
    # 0.05: (2,1) joins the left part diagonally? (1,0)-(2,1) are 8-neighbours -> size 3 vs 3 -> tie;
    # left component's first pixel (1,0) comes after (0,5) -> right column wins
    np.testing.assert_array_equal(cam_box(m, 0.05), [[5, 0, 6, 3]])
    # non-positive maps: nothing above the threshold -> the empty box
    np.testing.assert_array_equal(cam_box(-np.ones((2, 2, 2))), [[0, 0, 0, 0]] * 2)
    # per-sample independence in a batch: the components never connect across samples
    b = cam_box(np.concatenate([m, m[:, ::-1]]))
    np.testing.assert_array_equal(b, [[5, 0, 6, 3], [5, 0, 6, 3]])


def test_box_iou_hand_computed():
    np.testing.assert_allclose(
        box_iou([[0, 0, 2, 2], [0, 0, 1, 1]], [[1, 1, 3, 3], [2, 2, 3, 3]]), [1 / 7, 0.0]
    )  # inter 1, union 4 + 4 - 1 ; disjoint
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # union 0 -> guard
    with pytest.raises(ShapeError, match="boxes_a"):
        box_iou([0, 0, 1], [0, 0, 1, 1])


def test_localization_accuracy_hand_computed():
    m = np.zeros((2, 4, 4))
    m[0, 0:2, 0:2] = 1.0  # box (0,0,2,2)
    m[1, 2:4, 2:4] = 1.0  # box (2,2,4,4)
    gt = [np.array([[0, 0, 2, 4], [3, 3, 4, 4]]), [0, 0, 2, 2]]
    r = localization_accuracy(m, gt)
    # sample 0: IoU with (0,0,2,4) = 4/8 = 0.5 -> correct (>=) ; sample 1: disjoint -> 0
    np.testing.assert_allclose(r.iou, [0.5, 0.0])
    np.testing.assert_array_equal(r.correct, [True, False])
    assert r.accuracy == 0.5
    assert localization_accuracy(m, gt, classified=[False, True]).accuracy == 0.0


def test_errors_name_argument():
    m = np.ones((1, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"boxes\[0\]"):
        pointing_game(m, boxes=[[2, 0, 2, 3]])  # empty box
    with pytest.raises(InvalidArgumentError, match=r"boxes\[0\]"):
        pointing_game(m, boxes=[[0, 0, 5, 3]])  # outside the image
    with pytest.raises(InvalidArgumentError, match=r"boxes\[0\]"):
        pointing_game(m, boxes=[[5, 5, 9, 9]], clip=True)  # empty after clipping
    assert pointing_game(m, boxes=[[-3, -3, 1, 1]], clip=True).hits[0]
    with pytest.raises(ShapeError, match="boxes"):
        pointing_game(m, boxes=[[0, 0, 1, 1], [0, 0, 1, 1]])  # 2 entries for 1 map
    with pytest.raises(ShapeError, match=r"boxes\[0\]"):
        pointing_game(m, boxes=[[0, 0, 1]])
    with pytest.raises(InvalidArgumentError, match="masks"):
        pointing_game(m, masks=np.zeros((1, 4, 4), bool))  # empty mask
    with pytest.raises(ShapeError, match="masks"):
        pointing_game(m, masks=np.ones((1, 3, 4), bool))
    with pytest.raises(InvalidArgumentError, match="masks/boxes"):
        pointing_game(m)
    with pytest.raises(NonFiniteError, match="maps"):
        pointing_game(np.full((1, 2, 2), np.nan), masks=np.ones((1, 2, 2), bool))
    with pytest.raises(InvalidArgumentError, match="maps"):
        energy_pointing_game(-m, boxes=[[0, 0, 1, 1]])
    with pytest.raises(InvalidArgumentError, match="tolerance"):
        pointing_game(m, boxes=[[0, 0, 1, 1]], tolerance=-1)
    with pytest.raises(ShapeError, match="maps"):
        cam_box(np.ones((1, 2, 2, 2)))
    with pytest.raises(InvalidArgumentError, match="threshold"):
        cam_box(m, 1.5)
    with pytest.raises(ShapeError, match="classified"):
        localization_accuracy(m, [[0, 0, 1, 1]], classified=[True, False])


boxes_st = st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(1, 10), st.integers(1, 10)).map(
    lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3])
)


@given(boxes_st, boxes_st)
def test_iou_properties_and_raster_agreement(a, b):
    iou = float(box_iou(a, b))
    assert 0.0 <= iou <= 1.0 and iou == float(box_iou(b, a))
    assert float(box_iou(a, a)) == 1.0
    # on integer boxes the IoU equals the IoU of the rasterised masks
    ma, mb = boxes_to_masks([a, b], (20, 20))
    inter = np.logical_and(ma, mb).sum()
    union = np.logical_or(ma, mb).sum()
    assert iou == pytest.approx(inter / union, abs=1e-12)


@given(st.integers(0, 2**31 - 1), st.floats(0, 20), st.floats(0, 20))
def test_pointing_tolerance_monotonic(seed, t1, t2):
    rng = np.random.default_rng(seed)
    m = rng.random((4, 12, 12))
    mask = rng.random((4, 12, 12)) > 0.9
    mask[:, 6, 6] = True
    lo, hi = sorted((t1, t2))
    a = pointing_game(m, masks=mask, tolerance=lo).hits
    b = pointing_game(m, masks=mask, tolerance=hi).hits
    assert np.all(b[a])   # a hit stays a hit with a larger tolerance
