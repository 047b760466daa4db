"""The error hierarchy and the shared argument validation."""

import numpy as np
import pytest

from refcam import _validate as v
from refcam.errors import (
    DTypeError, InvalidArgumentError, LayerNotFoundError, NonFiniteError, RefcamError, ShapeError,
)


def test_shape_error_message_names_argument_got_and_expected():
    err = ShapeError("gradients", (2, 3, 4), (2, 3, 5, 5), "must match activations")
    assert isinstance(err, RefcamError) and isinstance(err, ValueError)
    assert str(err) == "gradients: got shape (2, 3, 4), expected (2, 3, 5, 5) (must match activations)"


def test_one_axis_shape_is_written_as_a_tuple():
    assert "got shape (3,)" in str(ShapeError("maps", (3,), "(N, *S)"))


def test_layer_not_found_prints_plainly():
    assert str(LayerNotFoundError("unknown layer 'x'; did you mean 'y'?")) == "unknown layer 'x'; did you mean 'y'?"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floats_keep_their_dtype_without_copy(dtype):
    a = np.ones((1, 2, 3), dtype=dtype)
    out = v.as_float_array(a, "a")
    assert out.dtype == dtype and out is a


@pytest.mark.parametrize("value", [[1, 2], [True, False], np.arange(3, dtype=np.int8)])
def test_ints_and_bools_compute_in_float64(value):
    out = v.as_float_array(value, "a")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.asarray(value, dtype=np.float64))


@pytest.mark.parametrize("value", [np.array([1j]), np.array(["a"]), np.array([None], dtype=object)])
def test_non_real_dtypes_are_refused(value):
    with pytest.raises(DTypeError, match="^x: got dtype"):
        v.as_float_array(value, "x")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(NonFiniteError, match=r"^x: got 1 non-finite value\(s\)"):
        v.as_float_array([0.0, bad, 1.0], "x")


def test_feature_maps_require_a_spatial_axis():
    with pytest.raises(ShapeError, match=r"^activations: got shape \(2, 3\), expected \(N, K, \*S\)"):
        v.feature_maps(np.zeros((2, 3)))


def test_feature_maps_refuse_empty_axes():
    with pytest.raises(ShapeError, match="non-empty"):
        v.feature_maps(np.zeros((1, 0, 3)))


def test_choice_lists_the_options():
    with pytest.raises(InvalidArgumentError, match=r"^mode: got 'cubic', expected one of 'linear', 'nearest'$"):
        v.choice("cubic", "mode", ("linear", "nearest"))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_positive_int_refuses(bad):
    with pytest.raises(InvalidArgumentError):
        v.positive_int(bad, "n_steps")
