"""one_hot(labels, 0): the error names num_classes, not the first label (issue 15, item 7).

Before the fix the message was "labels holds class index 0 at position (0,), outside [0, 0)": true, but it
blamed the label when the mistake is the class count.
"""

import numpy as np
import pytest

import softxent as sx


@pytest.mark.parametrize("labels", [[0, 1], np.array([[2]], dtype=np.int32), 0])
def test_one_hot_with_no_classes_names_num_classes(labels):
    with pytest.raises(ValueError, match=r"^num_classes must be >= 1; got 0$"):
        sx.one_hot(labels, 0)


def test_one_hot_with_no_classes_and_no_labels_is_an_empty_class_axis():
    # nothing to index, so C = 0 is no mistake: the class axis is simply empty
    out = sx.one_hot(np.zeros((2, 0), dtype=np.int64), 0)
    assert out.shape == (2, 0, 0) and out.dtype == np.float64


def test_one_hot_label_out_of_range_still_names_the_label():
    # the control: with classes to index, a bad label is the label's fault and the message says where
    with pytest.raises(ValueError, match=r"labels holds class index 3 at position \(1,\)"):
        sx.one_hot([0, 3], 3)
