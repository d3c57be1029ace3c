"""Property-based fuzzing of the infer params: whatever a client sends, the prompt parser either
returns prompts inside the volume or refuses with a PromptError (a 4xx for the user), never crashes."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from medsam2.prompts import PromptError, parse_objects

SHAPE = (40, 30, 12)
EXAMPLES = 600

numbers = st.one_of(st.integers(-100, 100), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                    st.none(), st.booleans())
points = st.one_of(st.lists(st.lists(numbers, max_size=4), max_size=4), numbers, st.text(max_size=5))
rois = st.one_of(st.lists(numbers, max_size=7), numbers)
objects = st.lists(st.fixed_dictionaries({}, optional={"label": st.text(max_size=8), "foreground": points,
                                                       "background": points, "roi": rois}), max_size=3)
params = st.fixed_dictionaries({}, optional={"foreground": points, "background": points, "roi": rois,
                                             "label": st.one_of(st.text(max_size=8), numbers),
                                             "objects": st.one_of(objects, numbers)})


@settings(max_examples=EXAMPLES, deadline=None)
@given(params)
def test_any_params_give_valid_prompts_or_a_prompt_error(p):
    try:
        objs = parse_objects(p, SHAPE)
    except PromptError:
        return
    assert objs
    for obj in objs:
        assert obj.frames and all(0 <= k < SHAPE[2] for k in obj.frames)
        for k in obj.frames:
            pts, labels, box = obj.frame_inputs(k)
            if pts is not None:
                assert all(0 <= x <= SHAPE[0] and 0 <= y <= SHAPE[1] for x, y in pts)
                assert all(math.isfinite(v) for v in pts.flatten())
            if box is not None:
                assert 0 <= box[0] < box[2] <= SHAPE[0] and 0 <= box[1] < box[3] <= SHAPE[1]
