"""Tests for jaxmetrics_ad.synthetic: deterministic MVTec-like masks, realistic metric levels."""

import time

import numpy as np
import pytest
import scipy.ndimage as ndi
from sklearn.metrics import roc_auc_score

from jaxmetrics_ad.io import iter_batches
from jaxmetrics_ad.synthetic import DEFECT_TYPES, make_category

EIGHT_CONNECTED = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def category():
    return make_category(num_normal=30, num_anomalous=60, seed=0)


def mvtec_aupro(anomaly_maps: np.ndarray, gt_masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO as the MVTec AD evaluation script computes it, transcribed with NumPy and SciPy."""
    region_weights = np.zeros(gt_masks.shape)
    num_regions = 0
    for image_index, mask in enumerate(gt_masks):
        regions, count = ndi.label(mask, structure=EIGHT_CONNECTED)
        sizes = np.bincount(regions.ravel())
        region_weights[image_index] = np.where(regions > 0, 1.0 / sizes[regions], 0.0)
        num_regions += count
    negatives = (~gt_masks).ravel().astype(np.float64)
    order = np.argsort(-anomaly_maps.ravel(), kind="stable")
    sorted_scores = anomaly_maps.ravel()[order]
    fpr = np.cumsum(negatives[order]) / negatives.sum()
    pro = np.cumsum(region_weights.ravel()[order]) / num_regions
    last_of_ties = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    fpr, pro = np.r_[0.0, fpr[last_of_ties]], np.r_[0.0, pro[last_of_ties]]
    inside = fpr <= fpr_limit
    fpr_cut = np.r_[fpr[inside], fpr_limit]
    pro_cut = np.r_[pro[inside], np.interp(fpr_limit, fpr, pro)]
    return float(np.trapezoid(pro_cut, fpr_cut) / fpr_limit)


def test_same_seed_gives_identical_arrays():
    first = make_category(num_normal=4, num_anomalous=8, size=(64, 64), seed=7)
    second = make_category(num_normal=4, num_anomalous=8, size=(64, 64), seed=7)
    for field in ("anomaly_maps", "gt_masks", "gt_labels", "pred_scores"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert first.defect_types == second.defect_types


def test_different_seeds_give_different_data():
    first = make_category(num_normal=4, num_anomalous=8, size=(64, 64), seed=1)
    second = make_category(num_normal=4, num_anomalous=8, size=(64, 64), seed=2)
    assert not np.array_equal(first.anomaly_maps, second.anomaly_maps)
    assert not np.array_equal(first.gt_masks, second.gt_masks)


def test_shapes_dtypes_and_fields_agree(category):
    assert category.anomaly_maps.shape == category.gt_masks.shape == (90, 256, 256)
    assert category.anomaly_maps.dtype == np.float32
    assert category.gt_masks.dtype == bool
    assert category.gt_labels.dtype == np.int32 and category.gt_labels.shape == (90,)
    assert category.pred_scores.dtype == np.float32
    np.testing.assert_array_equal(category.pred_scores, category.anomaly_maps.max(axis=(1, 2)))
    assert len(category) == len(category.defect_types) == 90
    assert np.isfinite(category.anomaly_maps).all()
    assert category.anomaly_maps.min() > 0 and category.anomaly_maps.max() < 1


def test_labels_match_masks_and_defect_types(category):
    defect_types = np.array(category.defect_types)
    np.testing.assert_array_equal(category.gt_labels, category.gt_masks.any(axis=(1, 2)))
    np.testing.assert_array_equal(category.gt_labels, defect_types != "good")
    assert category.gt_labels.sum() == 60
    assert set(defect_types[category.gt_labels == 1]) == set(DEFECT_TYPES)


def test_images_are_shuffled_so_batches_mix_normal_and_anomalous(category):
    first_batch = category.gt_labels[:16]
    assert 0 < first_batch.sum() < 16


def test_defective_images_often_have_several_regions(category):
    region_counts = np.array(
        [ndi.label(mask, structure=EIGHT_CONNECTED)[1] for mask in category.gt_masks]
    )
    anomalous_counts = region_counts[category.gt_labels == 1]
    assert (anomalous_counts >= 1).all()
    assert (anomalous_counts >= 2).mean() >= 0.5
    assert anomalous_counts.max() >= 4


def test_some_regions_touch_only_diagonally(category):
    # Diagonal-only contact joins regions under 8-connectivity but splits them under 4-connectivity.
    split_when_four_connected = [
        ndi.label(mask)[1] > ndi.label(mask, structure=EIGHT_CONNECTED)[1]
        for mask in category.gt_masks
    ]
    assert sum(split_when_four_connected) >= 5


def test_scratches_are_thin(category):
    scratch_masks = category.gt_masks[np.array(category.defect_types) == "scratch"]
    # Every pixel of a line at most 3 px thick lies within √5 px of the background; only where
    # two scratches cross can a pixel lie deeper.
    depths = np.concatenate(
        [ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][mask] for mask in scratch_masks]
    )
    assert (depths > np.sqrt(5) + 1e-9).mean() < 0.005
    assert all(mask.mean() < 0.02 for mask in scratch_masks)


def test_metric_levels_are_realistic_not_perfect(category):
    pixel_auroc = roc_auc_score(category.gt_masks.ravel(), category.anomaly_maps.ravel())
    aupro = mvtec_aupro(category.anomaly_maps, category.gt_masks)
    image_auroc = roc_auc_score(category.gt_labels, category.pred_scores)
    assert 0.9 <= pixel_auroc <= 0.98
    assert 0.7 <= aupro <= 0.9
    assert 0.85 <= image_auroc < 1.0


def test_other_sizes_keep_realistic_levels():
    small = make_category(num_normal=10, num_anomalous=20, size=(96, 128), seed=3)
    assert small.gt_masks.shape == (30, 96, 128)
    assert 0.88 <= roc_auc_score(small.gt_masks.ravel(), small.anomaly_maps.ravel()) <= 0.99


def test_full_size_category_generates_in_a_few_seconds():
    start = time.perf_counter()
    full = make_category()
    elapsed = time.perf_counter() - start
    assert full.anomaly_maps.shape == (300, 256, 256)
    assert elapsed < 10.0


def test_category_streams_through_iter_batches(category):
    batches = list(iter_batches(category, 32))
    assert [len(batch.gt_label) for batch in batches] == [32, 32, 26]
    np.testing.assert_array_equal(
        np.concatenate([batch.anomaly_map for batch in batches]), category.anomaly_maps
    )
    np.testing.assert_array_equal(
        np.concatenate([batch.pred_score for batch in batches]), category.pred_scores
    )


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"num_normal": -1}, "num_normal"),
        ({"num_anomalous": 2.5}, "num_anomalous"),
        ({"num_normal": 0, "num_anomalous": 0}, "num_normal"),
        ({"size": (8, 256)}, "size"),
        ({"size": (64, 64, 3)}, "size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        make_category(**kwargs)
