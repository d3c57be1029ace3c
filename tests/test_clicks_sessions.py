"""Simulated clicks and the bounded session cache (fast, no model)."""

import threading
import time

import numpy as np
import pytest

from medsam2.clicks import bounding_box, corrective_click, interior_point, largest_slice
from medsam2.sessions import SessionCache


def test_interior_point_is_the_centre_of_a_rectangle():
    m = np.zeros((20, 30), bool)
    m[4:15, 10:21] = True  # rows 4..14, cols 10..20
    assert interior_point(m) == (15, 9)
    assert interior_point(np.zeros((3, 3), bool)) is None


def test_bounding_box_is_exclusive_on_the_far_side():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert bounding_box(m) == (3.0, 2.0, 8.0, 5.0)


def test_corrective_click_goes_to_the_largest_error_with_the_right_sign():
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    pred = truth.copy()
    pred[5:25, 5:10] = False  # missed strip: 100 px
    pred[30:35, 30:35] = True  # false positive: 25 px
    x, y, positive = corrective_click(pred, truth)
    assert positive == 1 and 5 <= x < 10 and 5 <= y < 25
    pred[5:25, 5:10] = True
    assert corrective_click(pred, truth)[2] == 0
    assert corrective_click(truth, truth) is None


def test_largest_slice():
    m = np.zeros((5, 5, 4), bool)
    m[:2, :2, 1] = True
    m[:3, :3, 2] = True
    assert largest_slice(m) == 2


class Entry:
    def __init__(self, nbytes):
        self.nbytes = nbytes


def test_cache_evicts_least_recently_used_by_count_and_bytes():
    c = SessionCache(max_bytes=100, max_entries=3)
    for k in "abc":
        c.put(k, Entry(10))
    c.get("a")  # a is now the most recent
    c.put("d", Entry(10))
    assert c.keys() == ["c", "a", "d"]  # b was the least recently used
    c.put("e", Entry(95))  # over the byte budget: everything older goes
    assert c.keys() == ["e"] and c.nbytes == 95


def test_one_key_is_opened_once_even_when_asked_concurrently():
    c = SessionCache()
    calls = []

    def opener():
        calls.append(1)
        time.sleep(0.2)  # long enough for all threads to be waiting
        return Entry(1)

    results = []
    threads = [threading.Thread(target=lambda: results.append(c.get_or_open("img", opener))) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1
    assert sorted(cached for _, cached in results) == [False, True, True, True]


def test_entries_that_grew_after_they_were_put_are_trimmed_to_the_budget():
    c = SessionCache(max_bytes=100)
    a, b = Entry(40), Entry(40)
    c.put("a", a)
    c.put("b", b)
    b.nbytes = 90  # b's slices were encoded on demand after it was opened
    c.trim(keep=b)
    assert c.keys() == ["b"]


def test_an_open_that_fails_leaves_nothing_behind_and_can_be_retried():
    c = SessionCache()

    def broken():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        c.get_or_open("img", broken)
    assert c.keys() == [] and c._opening == {}
    assert c.get_or_open("img", lambda: Entry(1))[1] is False
